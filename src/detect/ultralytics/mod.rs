//! What the ultralytics detection families (YOLOv8, YOLO11, YOLO26) share: the network's raw
//! outputs, the interface every family's network offers, and the detector around it.

mod detector;

pub use detector::YoloDetector;

use candle_core::Tensor;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::nn::MapLayout;

/// Raw outputs of one forward pass, through one head.
#[derive(Debug, Clone)]
pub struct YoloOutput {
    /// `(B, 4·reg_max, A)` raw box outputs of the one-to-many head (DFL logits, or distances
    /// when `reg_max` is 1); levels concatenated P3, P4, P5, anchors row-major.
    pub box_logits: Tensor,
    /// `(B, nc, A)` pre-sigmoid class logits.
    pub cls_logits: Tensor,
    /// Per level `(B, H_i, W_i, c3)`: the input of the last 1×1 class conv; channels last, so
    /// that an anchor's feature is one contiguous row.
    pub cls_features: Vec<Tensor>,
    /// Per level the head inputs, `(B, H_i, W_i, C_i)`.
    pub neck: Vec<Tensor>,
    /// `(H_i, W_i)` per level.
    pub level_shapes: Vec<(usize, usize)>,
    /// Bins per box side: 16 with DFL, 1 without.
    pub reg_max: usize,
}

/// What [`YoloDetector`] needs of a family's network.
pub trait YoloNetwork: Send + Sync {
    /// `x`: `(B, 3, H, W)` F32, H and W multiples of 32. The head outputs are the one-to-one
    /// head's when `one2one` (only asked of a network that has one).
    fn forward(&self, x: &Tensor, one2one: bool) -> Result<YoloOutput>;
    fn nc(&self) -> usize;
    fn strides(&self) -> [usize; 3];
    /// Per level the last 1×1 class conv as `(W (nc, c3), b (nc))`, of the one-to-one head
    /// when `one2one` (`None` when there is none).
    fn class_head(&self, one2one: bool) -> Option<Vec<(Tensor, Tensor)>>;
    /// Switches between the fused channels-last CPU path and Candle's own ops.
    fn set_layout(&mut self, layout: MapLayout);
}

/// Class names from a safetensors `names` metadata entry (a JSON list), else `class0`, ….
pub fn names_from_metadata(
    path: &Path,
    metadata: &HashMap<String, String>,
    nc: usize,
) -> Result<Vec<String>> {
    let names = match metadata.get("names") {
        Some(json) => serde_json::from_str::<Vec<String>>(json).map_err(|e| Error::BadModel {
            path: path.to_path_buf(),
            reason: format!("metadata `names` is not a JSON list of strings: {e}"),
        })?,
        None => (0..nc).map(|i| format!("class{i}")).collect(),
    };
    if names.len() != nc {
        return Err(Error::BadModel {
            path: path.to_path_buf(),
            reason: format!(
                "metadata lists {} class names, the head has {nc} classes",
                names.len()
            ),
        });
    }
    Ok(names)
}

/// The SHA-256 of a file's bytes, as detectors fingerprint their weights.
pub fn file_fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("sha256:{:x}", Sha256::digest(&bytes)))
}

/// What an ultralytics checkpoint that oodbox does not run is, told from its tensor names and
/// shapes: another task's head or another family's blocks. `None` for a plain detector of a
/// supported family (or anything else, which the family probes then judge).
pub fn unsupported_layout(shapes: &HashMap<String, Vec<usize>>) -> Option<String> {
    let any = |part: &str| {
        shapes
            .keys()
            .any(|n| n.starts_with("model.") && n.contains(part))
    };
    let task = if any(".proto.") {
        Some("a segmentation model (task `segment`)")
    } else if any(".cv4_kpts.") || any(".flow_model.") {
        Some("a pose model (task `pose`)")
    } else if any(".cv4.0.") {
        // OBB's extra branch predicts one angle per anchor; pose's predicts the keypoints.
        let angle = shapes
            .iter()
            .any(|(n, s)| n.ends_with(".cv4.0.2.weight") && s.first() == Some(&1));
        Some(match angle {
            true => "an oriented-box model (task `obb`)",
            false => "a pose model (task `pose`), or another head with extra outputs",
        })
    } else if any(".linear.weight") {
        Some("a classification model (task `classify`)")
    } else {
        None
    };
    let family = if any(".dec_bbox_head.") || any(".enc_score_head.") {
        Some("an RT-DETR model")
    } else if any(".one2one_cv2.") && any(".dfl.") {
        Some("a YOLOv10 model")
    } else if any(".mlp.0.") && any(".attn.qkv.") {
        Some("a YOLO12 model (area attention, A2C2f)")
    } else if any(".cv2.3.") {
        Some("a model with four detection levels (P2 or P6)")
    } else {
        None
    };
    task.or(family).map(str::to_string)
}
