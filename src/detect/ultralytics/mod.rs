//! What the ultralytics detection families (YOLOv8, YOLO11, YOLO26) share: the network's raw
//! outputs, the interface every family's network offers, and the detector around it.

mod detector;
mod fgsm;

pub use detector::{YoloDetector, MAX_BATCH};

use candle_core::Tensor;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;

use crate::core::sources::FeatureLayer;
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
    /// The maps of the layers asked to be kept (ultralytics YAML index), `(B, H, W, C)`.
    pub kept: Vec<(usize, Tensor)>,
}

impl YoloOutput {
    /// Image `i` of a batched output, as an output of batch size 1.
    pub fn item(&self, i: usize) -> candle_core::Result<YoloOutput> {
        let one = |t: &Tensor| t.narrow(0, i, 1);
        let all = |ts: &[Tensor]| ts.iter().map(one).collect::<candle_core::Result<Vec<_>>>();
        Ok(YoloOutput {
            box_logits: one(&self.box_logits)?,
            cls_logits: one(&self.cls_logits)?,
            cls_features: all(&self.cls_features)?,
            neck: all(&self.neck)?,
            level_shapes: self.level_shapes.clone(),
            reg_max: self.reg_max,
            kept: self
                .kept
                .iter()
                .map(|(layer, t)| Ok((*layer, one(t)?)))
                .collect::<candle_core::Result<_>>()?,
        })
    }
}

/// The maps of chosen layers, kept channels-last as the forward pass computes them.
pub struct Taps<'a> {
    wanted: &'a [usize],
    layout: MapLayout,
    kept: Vec<(usize, Tensor)>,
}

impl<'a> Taps<'a> {
    pub fn new(wanted: &'a [usize], layout: MapLayout) -> Self {
        Taps {
            wanted,
            layout,
            kept: Vec::new(),
        }
    }

    /// Keeps `x` when layer `layer` is wanted; hands it back.
    pub fn tap(&mut self, layer: usize, x: Tensor) -> candle_core::Result<Tensor> {
        if self.wanted.contains(&layer) {
            self.kept.push((layer, self.layout.to_nhwc(&x)?));
        }
        Ok(x)
    }

    pub fn into_kept(self) -> Vec<(usize, Tensor)> {
        self.kept
    }
}

/// `(YAML index, stride)` of layers 0–9, the same in `yolov8.yaml`, `yolo11.yaml` and
/// `yolo26.yaml`: convolutions and blocks down to P5 and SPPF.
const BACKBONE_LAYERS: [(usize, usize); 10] = [
    (0, 2),
    (1, 4),
    (2, 4),
    (3, 8),
    (4, 8),
    (5, 16),
    (6, 16),
    (7, 32),
    (8, 32),
    (9, 32),
];

/// Layers 0–9 and a family's `(YAML index, stride)` after them, as [`FeatureLayer`]s.
pub fn layer_list(after_backbone: &[(usize, usize)]) -> Vec<FeatureLayer> {
    BACKBONE_LAYERS
        .iter()
        .chain(after_backbone)
        .map(|&(index, stride)| FeatureLayer {
            name: index.to_string(),
            stride,
        })
        .collect()
}

/// What [`YoloDetector`] needs of a family's network.
pub trait YoloNetwork: Send + Sync {
    /// `x`: `(B, 3, H, W)` F32, H and W multiples of 32. The head outputs are the one-to-one
    /// head's when `one2one` (only asked of a network that has one).
    fn forward(&self, x: &Tensor, one2one: bool) -> Result<YoloOutput> {
        self.forward_keeping(x, one2one, &[])
    }
    /// [`YoloNetwork::forward`], also keeping the maps of layers `keep` (YAML indices among
    /// [`YoloNetwork::feature_layers`]) in [`YoloOutput::kept`].
    fn forward_keeping(&self, x: &Tensor, one2one: bool, keep: &[usize]) -> Result<YoloOutput>;
    /// [`YoloNetwork::forward`] through Candle's channels-first ops only, whatever the layout
    /// set, with every op differentiable with respect to `x` (for FGSM).
    fn forward_nchw(&self, x: &Tensor, one2one: bool) -> Result<YoloOutput>;
    /// The layers whose maps can be kept: those the network materialises (no Upsample or
    /// Concat layer: the concatenations are folded into the convolutions that read them).
    fn feature_layers(&self) -> Vec<FeatureLayer>;
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

/// What identifies a weight file's model: the SHA-256 of its bytes, or the fingerprint that
/// `oodbox convert` recorded (that of the checkpoint it converted, so that a scorer fitted
/// with either file serves both).
pub fn fingerprint(file: &crate::detect::WeightFile) -> Result<String> {
    if let Some(recorded) = file.metadata.get("fingerprint") {
        return Ok(recorded.clone());
    }
    let bytes = std::fs::read(&file.path).map_err(|e| Error::io(&file.path, e))?;
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

/// What an ultralytics checkpoint says of itself, beside its tensors.
pub struct CheckpointFacts {
    names: Option<Vec<String>>,
    /// The family its architecture names (`yolo11` for `yolo11n.yaml`), when it names one.
    family: Option<String>,
    task: Option<String>,
    imgsz: Option<u32>,
}

/// Families named by ultralytics' YAML file names, most specific first.
const YAML_FAMILIES: [(&str, &str); 7] = [
    ("yolov8", "yolov8"),
    ("yolo11", "yolo11"),
    ("yolo26", "yolo26"),
    ("yolov10", "YOLOv10"),
    ("yolo12", "YOLO12"),
    ("rtdetr", "RT-DETR"),
    ("yoloe", "YOLOE"),
];

impl CheckpointFacts {
    pub fn of(checkpoint: &crate::detect::checkpoint::Checkpoint) -> Self {
        let yaml_file = checkpoint
            .yaml
            .as_ref()
            .and_then(|y| y.get("yaml_file"))
            .and_then(|f| f.as_str())
            .map(|f| f.rsplit('/').next().unwrap_or(f).to_ascii_lowercase());
        let family = yaml_file.and_then(|file| {
            let family = YAML_FAMILIES
                .iter()
                .find(|(prefix, _)| file.starts_with(prefix));
            family.map(|(_, name)| name.to_string())
        });
        let imgsz = checkpoint
            .train_args
            .as_ref()
            .and_then(|a| a.get("imgsz"))
            .and_then(|s| s.as_u64())
            .and_then(|s| u32::try_from(s).ok());
        CheckpointFacts {
            names: checkpoint.names.clone(),
            family,
            task: checkpoint.task.clone(),
            imgsz,
        }
    }

    /// The task or family, when oodbox does not run it.
    pub fn unsupported(&self) -> Option<String> {
        if let Some(task) = self.task.as_deref().filter(|t| *t != "detect") {
            return Some(format!("a `{task}` model (task `{task}`)"));
        }
        let family = self.family.as_deref()?;
        let known = ["yolov8", "yolo11", "yolo26"].contains(&family);
        (!known).then(|| format!("a {family} model"))
    }

    /// The facts as safetensors-style metadata, as `oodbox convert` writes them.
    pub fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::new();
        if let Some(names) = &self.names {
            let names = serde_json::to_string(names).unwrap_or_default();
            metadata.insert("names".to_string(), names);
        }
        if let Some(family) = &self.family {
            metadata.insert("family".to_string(), family.clone());
        }
        if let Some(task) = &self.task {
            metadata.insert("task".to_string(), task.clone());
        }
        if let Some(imgsz) = self.imgsz {
            metadata.insert("imgsz".to_string(), imgsz.to_string());
        }
        metadata
    }
}
