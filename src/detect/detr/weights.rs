//! A Hugging Face DETR `model.safetensors` read through the checkpoint's tensor names (the
//! checked reading itself is `safetensors_file`'s, shared with YOLOv8).
//!
//! Checkpoints on the Hub (and `save_pretrained` of every transformers version) use the names
//! `model.backbone.conv_encoder.model.…`, `self_attn.out_proj`, `layers.N.fc1`; transformers 5.x
//! renames them in memory to `model.backbone.model.…`, `o_proj`, `layers.N.mlp.fc1`. A file
//! written from a 5.x `state_dict` therefore carries the second set; both load.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use candle_nn::VarBuilder;

use crate::detect::safetensors_file;
pub use crate::detect::safetensors_file::WeightIndex;
use crate::error::Result;

/// The transformers 5.x in-memory name of a tensor known by its checkpoint name.
fn in_memory_name(name: &str) -> String {
    name.replace("model.backbone.conv_encoder.", "model.backbone.")
        .replace(".out_proj.", ".o_proj.")
        .replace(".fc1.", ".mlp.fc1.")
        .replace(".fc2.", ".mlp.fc2.")
}

/// Maps the file and returns its index and a `VarBuilder` over it (checkpoint names, f32).
pub fn open(path: &Path, device: &Device) -> Result<(Arc<WeightIndex>, VarBuilder<'static>)> {
    let (file, shapes) = safetensors_file::map(path)?;
    let in_memory_names = shapes
        .keys()
        .any(|n| n.starts_with("model.backbone.model.") || n.contains(".o_proj."));
    let rename: safetensors_file::Rename = if in_memory_names {
        Box::new(in_memory_name)
    } else {
        Box::new(str::to_string)
    };
    Ok(safetensors_file::var_builder(
        path, file, shapes, rename, device,
    ))
}
