//! Converting a PyTorch checkpoint (`best.pt`) into a safetensors file that loads without the
//! pickle walk: ultralytics tensor names, the stored precision, and the checkpoint's facts as
//! metadata (`names`, `family`, `task`, `imgsz`, and the checkpoint's `fingerprint`, so that a
//! scorer fitted with either file serves both).

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

use super::checkpoint;
use super::load::{load_detector, ModelSource};
use crate::error::{Error, Result};

/// What a conversion wrote.
#[derive(Clone, Debug)]
pub struct Converted {
    pub family: &'static str,
    pub tensors: usize,
    pub classes: usize,
}

/// Converts the checkpoint at `input` into `out`. The checkpoint is loaded as a detector first,
/// so that only a model oodbox runs is converted.
pub fn checkpoint_to_safetensors(input: &Path, out: &Path) -> Result<Converted> {
    let detector = load_detector(input, &Device::Cpu)?;
    let file = match ModelSource::read(input)? {
        ModelSource::Weights(file) if file.store.tensors().next().is_some() => file,
        _ => {
            return Err(Error::BadModel {
                path: input.to_path_buf(),
                reason: "not a PyTorch checkpoint: convert takes a best.pt or last.pt; \
                         this model loads as it is"
                    .into(),
            })
        }
    };
    let stored: HashMap<String, &str> = checkpoint::list(input)?
        .into_iter()
        .map(|entry| (entry.name, entry.dtype))
        .collect();
    let mut metadata = file.metadata.clone();
    metadata.insert("family".into(), detector.family().into());
    metadata.insert("fingerprint".into(), detector.fingerprint().into());
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, tensor) in file.store.tensors() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        // f16 and bf16 storage round-trips exactly through the f32 the reader decoded.
        let dtype = match stored.get(name.as_str()) {
            Some(&"float16") => DType::F16,
            Some(&"bfloat16") => DType::BF16,
            _ => DType::F32,
        };
        tensors.push((name.clone(), tensor.to_dtype(dtype)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let count = tensors.len();
    let bytes = safetensors::serialize(tensors, Some(metadata)).map_err(|e| Error::BadModel {
        path: out.to_path_buf(),
        reason: format!("cannot serialise: {e}"),
    })?;
    crate::core::write_atomically(out, &bytes)?;
    Ok(Converted {
        family: detector.family(),
        tensors: count,
        classes: detector.class_names().len(),
    })
}
