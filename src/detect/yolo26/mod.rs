//! YOLO26 (ultralytics `yolo26.yaml`, the default of ultralytics 8.4): the YOLO11 graph with an
//! unactivated, residual SPPF, one box bin per side (no DFL) and a one-to-one head beside the
//! one-to-many one. Both inference paths run: the one-to-many head with NMS (ultralytics'
//! default since 8.4.142) and, with [`Detector::set_nms_free`](crate::detect::Detector),
//! the NMS-free one-to-one head with top-k (`nms=False`).

use crate::detect::yolo11::{is_family, load};
use crate::detect::{Family, WeightFile};

/// YOLO26 weight files (checkpoints, or safetensors in ultralytics names).
pub const FAMILY: Family = Family {
    name: "yolo26",
    describes: "YOLO26 (best.pt, last.pt or .safetensors)",
    probe: |source| is_family(source, "yolo26", looks_like_yolo26),
    load: |source, device| load(source, device, true),
};

/// A one-to-one head at layer 23 and no DFL (YOLOv10 has both); any one-to-one tensor tells.
fn looks_like_yolo26(file: &WeightFile) -> bool {
    let under = |prefix: &str| file.names().any(|n| n.starts_with(prefix));
    under("model.23.one2one_") && !under("model.23.dfl.")
}
