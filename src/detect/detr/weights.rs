//! A Hugging Face DETR `model.safetensors` read through the checkpoint's tensor names, which
//! records the first missing or misshapen tensor as a typed error and which tensors were used.
//!
//! Checkpoints on the Hub (and `save_pretrained` of every transformers version) use the names
//! `model.backbone.conv_encoder.model.…`, `self_attn.out_proj`, `layers.N.fc1`; transformers 5.x
//! renames them in memory to `model.backbone.model.…`, `o_proj`, `layers.N.mlp.fc1`. A file
//! written from a 5.x `state_dict` therefore carries the second set; both load.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::error::{Error, Result};

/// What is known about the file before and after the model is built from it.
pub struct WeightIndex {
    path: PathBuf,
    shapes: HashMap<String, Vec<usize>>,
    in_memory_names: bool,
    used: Mutex<HashSet<String>>,
    failure: Mutex<Option<Error>>,
}

impl WeightIndex {
    /// The name in the file of a tensor known by its checkpoint name.
    fn file_name(&self, name: &str) -> String {
        if !self.in_memory_names {
            return name.to_string();
        }
        name.replace("model.backbone.conv_encoder.", "model.backbone.")
            .replace(".out_proj.", ".o_proj.")
            .replace(".fc1.", ".mlp.fc1.")
            .replace(".fc2.", ".mlp.fc2.")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.shapes.contains_key(&self.file_name(name))
    }

    /// The shape of a tensor, or a missing-tensor error naming it.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        let name = self.file_name(name);
        match self.shapes.get(&name) {
            Some(shape) => Ok(shape),
            None => Err(Error::MissingTensor {
                path: self.path.clone(),
                name,
            }),
        }
    }

    /// Tensors of the file that the model did not load, sorted (BN's `num_batches_tracked`
    /// counters are not weights and are left out).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        let mut unused: Vec<String> = self
            .shapes
            .keys()
            .filter(|n| !used.contains(*n) && !n.ends_with("num_batches_tracked"))
            .cloned()
            .collect();
        unused.sort();
        unused
    }

    /// The typed error behind a failed load, when the file was at fault.
    pub fn take_failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    fn fail(&self, error: Error) -> candle_core::Error {
        let message = error.to_string();
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(error);
        }
        candle_core::Error::Msg(message)
    }
}

struct Backend {
    file: MmapedSafetensors,
    index: Arc<WeightIndex>,
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let index = &self.index;
        let found = index.shape(name).map_err(|e| index.fail(e))?;
        if found != shape.dims() {
            return Err(index.fail(Error::WrongShape {
                path: index.path.clone(),
                name: index.file_name(name),
                found: found.to_vec(),
                expected: format!("{:?}", shape.dims()),
            }));
        }
        self.get_unchecked(name, dtype, device)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let name = self.index.file_name(name);
        let tensor = self.file.load(&name, device)?.to_dtype(dtype)?;
        if let Ok(mut used) = self.index.used.lock() {
            used.insert(name);
        }
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains(name)
    }
}

/// Maps the file and returns its index and a `VarBuilder` over it (checkpoint names, f32).
pub fn open(path: &Path, device: &Device) -> Result<(Arc<WeightIndex>, VarBuilder<'static>)> {
    let (file, shapes) = crate::detect::safetensors_file::map(path)?;
    let in_memory_names = shapes
        .keys()
        .any(|n| n.starts_with("model.backbone.model.") || n.contains(".o_proj."));
    let index = Arc::new(WeightIndex {
        path: path.to_path_buf(),
        shapes,
        in_memory_names,
        used: Mutex::new(HashSet::new()),
        failure: Mutex::new(None),
    });
    let backend = Backend {
        file,
        index: index.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    Ok((index, vb))
}
