//! Mapping a safetensors weight file, with errors that name it.

use candle_core::safetensors::MmapedSafetensors;
use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// Maps the file read-only and lists its tensors' shapes by name.
pub fn map(path: &Path) -> Result<(MmapedSafetensors, HashMap<String, Vec<usize>>)> {
    std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is mapped read-only; like every mmap, it must not be modified while the
    // model loads (the weights are copied out by then).
    let file = unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::NotSafetensors {
        path: path.to_path_buf(),
        reason: match e {
            candle_core::Error::WithPath { inner, .. } => inner.to_string(),
            e => e.to_string(),
        },
    })?;
    let shapes = file
        .tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect();
    Ok((file, shapes))
}
