//! YOLO11 (ultralytics `yolo11.yaml`) in Candle: C3k2, SPPF, C2PSA attention and the
//! depthwise Detect head. The same network runs YOLO26 (see [`crate::detect::yolo26`]).

mod blocks;
mod model;

pub use blocks::Weights;
pub use model::Yolo11;

use candle_core::Device;

use crate::detect::ultralytics::{fingerprint, names_from_metadata, YoloDetector, YoloNetwork};
use crate::detect::{Detector, Family, ModelSource, WeightFile};
use crate::error::{Error, Result};

/// YOLO11 weight files (checkpoints, or safetensors in ultralytics names).
pub const FAMILY: Family = Family {
    name: "yolo11",
    describes: "YOLO11 (best.pt, last.pt or .safetensors)",
    probe: |source| is_family(source, "yolo11", looks_like_yolo11),
    load: |source, device| load(source, device, false),
};

/// Whether `source` is a weight file of `family`: by its metadata when it names one, else by
/// its tensor names.
pub(crate) fn is_family(
    source: &ModelSource,
    family: &str,
    names: fn(&WeightFile) -> bool,
) -> bool {
    match source {
        ModelSource::Weights(file) => match file.metadata.get("family") {
            Some(f) => f == family,
            None => names(file),
        },
        ModelSource::Folder(_) => false,
    }
}

/// Depthwise class branches (`cv3.<level>.<j>.<k>`) in the Detect head at layer 23, and no
/// one-to-one head. Any of their tensors tells, so that a file missing one still probes as
/// YOLO11 and the missing tensor is named.
fn looks_like_yolo11(file: &WeightFile) -> bool {
    let dw_head = file.names().any(|n| {
        n.strip_prefix("model.23.cv3.")
            .is_some_and(|rest| rest.split('.').take(3).all(|p| p.parse::<usize>().is_ok()))
    });
    dw_head && !file.names().any(|n| n.starts_with("model.23.one2one_"))
}

/// Loads a YOLO11 or YOLO26 weight file.
pub(crate) fn load(
    source: ModelSource,
    device: &Device,
    yolo26: bool,
) -> Result<Box<dyn Detector>> {
    let ModelSource::Weights(file) = source else {
        return Err(Error::BadModel {
            path: source.path().to_path_buf(),
            reason: "a folder is not an ultralytics weight file".into(),
        });
    };
    let family = if yolo26 { "yolo26" } else { FAMILY.name };
    let (path, metadata) = (file.path.clone(), file.metadata.clone());
    let fingerprint = fingerprint(&file)?;
    let network = load_network(file, device, yolo26)?;
    let names = names_from_metadata(&path, &metadata, network.nc())?;
    let detector = YoloDetector::new(Box::new(network), family, device, names, fingerprint)?
        .with_trained_imgsz(&metadata);
    Ok(Box::new(detector))
}

/// The network of a weight file with ultralytics names; every tensor must be used.
pub fn load_network(file: WeightFile, device: &Device, yolo26: bool) -> Result<Yolo11> {
    let path = file.path.clone();
    let (index, vb) = file.var_builder(Box::new(str::to_string), device);
    let weights = Weights {
        vb,
        index: index.clone(),
    };
    let network = Yolo11::load(&weights, yolo26).map_err(|e| index.take_failure().unwrap_or(e))?;
    let unused = index.unused();
    if let Some(first) = unused.first() {
        return Err(Error::BadModel {
            path,
            reason: format!(
                "{} tensors are not part of the {} detection layout (first: `{first}`)",
                unused.len(),
                if yolo26 { "YOLO26" } else { "YOLO11" }
            ),
        });
    }
    Ok(network)
}
