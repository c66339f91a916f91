//! DETR (`DetrForObjectDetection`, Hugging Face transformers) in Candle: ResNet-50/101 trunk
//! (timm or HF ResNet tensor names, frozen BN folded, optional DC5), encoder-decoder
//! transformer, `DetrImageProcessor` preprocessing and `post_process_object_detection`.
//!
//! Per box, the feature is the query's last decoder hidden state after the decoder's final
//! LayerNorm (the input of `class_labels_classifier`), the logits are every class plus
//! no-object, pre-softmax, and the anchor is the query index.
//!
//! For OOD scoring, no-object is one more class: the class names end with [`NO_OBJECT`], the
//! head is all of `class_labels_classifier` (no-object row last) and the logits keep the
//! no-object logit, so logit scorers see DETR's "nothing here" evidence as DETR's own softmax
//! does. No box is ever assigned to no-object, so per-class statistics have no boxes for it.

mod config;
mod detector;
mod model;
mod preprocess;
mod resnet;
mod transformer;
mod weights;

pub use config::{BackboneConfig, BackboneNaming, DetrConfig};
pub use detector::{DetrDetector, NO_OBJECT};
pub use model::{DetrModel, DetrOutput};
pub use preprocess::{DetrImageProcessor, Size};
pub use transformer::sine_position_embedding;
pub use weights::{open as open_weights, WeightIndex};

use candle_core::Device;

use crate::detect::{Detector, Family, ModelSource};
use crate::error::Result;

/// Hugging Face DETR folders (`config.json`, `model.safetensors`).
pub const FAMILY: Family = Family {
    name: "detr",
    describes: "DETR (a Hugging Face folder with config.json and model.safetensors)",
    probe: |source| matches!(source, ModelSource::Folder(_)),
    load,
};

fn load(source: ModelSource, device: &Device) -> Result<Box<dyn Detector>> {
    Ok(Box::new(DetrDetector::load(source.path(), device)?))
}
