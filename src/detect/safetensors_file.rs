//! Mapping a safetensors weight file, with errors that name it, and reading a model from it (or
//! from tensors already decoded, e.g. from a PyTorch checkpoint) through a `VarBuilder` that
//! records the first missing or misshapen tensor as a typed error and which tensors were used.

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// Maps the file read-only and lists its tensors' shapes by name.
pub fn map(path: &Path) -> Result<(Store, HashMap<String, Vec<usize>>)> {
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
    let store = Store::Mapped(file);
    let shapes = store.shapes();
    Ok((store, shapes))
}

/// How a model's tensor names map to the names in its file.
pub type Rename = Box<dyn Fn(&str) -> String + Send + Sync>;

/// Where a model's tensors are read from.
pub enum Store {
    /// A mapped safetensors file, read tensor by tensor as the model asks.
    Mapped(MmapedSafetensors),
    /// Tensors already decoded (a PyTorch checkpoint), by file name.
    Loaded(HashMap<String, Tensor>),
}

impl Store {
    /// The shapes of its tensors, by name.
    pub fn shapes(&self) -> HashMap<String, Vec<usize>> {
        match self {
            Store::Mapped(file) => file
                .tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec()))
                .collect(),
            Store::Loaded(tensors) => tensors
                .iter()
                .map(|(name, t)| (name.clone(), t.dims().to_vec()))
                .collect(),
        }
    }

    /// The decoded tensors, by name (none for a mapped file, read lazily).
    pub fn tensors(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        let loaded = match self {
            Store::Mapped(_) => None,
            Store::Loaded(tensors) => Some(tensors.iter()),
        };
        loaded.into_iter().flatten()
    }

    fn load(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Store::Mapped(file) => file.load(name, device),
            Store::Loaded(tensors) => match tensors.get(name) {
                Some(t) => t.to_device(device),
                None => candle_core::bail!("no tensor `{name}`"),
            },
        }
    }
}

/// What is known about a weight file before and after a model is built from it.
pub struct WeightIndex {
    path: PathBuf,
    shapes: HashMap<String, Vec<usize>>,
    rename: Rename,
    used: Mutex<HashSet<String>>,
    failure: Mutex<Option<Error>>,
}

impl WeightIndex {
    /// The name in the file of a tensor known by the model's name.
    fn file_name(&self, name: &str) -> String {
        (self.rename)(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the file's tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
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

    /// The typed error behind a failed load, when the file was at fault (the `VarBuilder` API
    /// can only carry a `candle_core::Error`).
    pub fn take_failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }

    pub(crate) fn fail(&self, error: Error) -> candle_core::Error {
        let message = error.to_string();
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(error);
        }
        candle_core::Error::Msg(message)
    }
}

/// A `VarBuilder` over a store (a file from [`map`], or decoded tensors), computing in F32 on
/// `device`, and the index that records what it read.
pub fn var_builder(
    path: &Path,
    file: Store,
    shapes: HashMap<String, Vec<usize>>,
    rename: Rename,
    device: &Device,
) -> (Arc<WeightIndex>, VarBuilder<'static>) {
    let index = Arc::new(WeightIndex {
        path: path.to_path_buf(),
        shapes,
        rename,
        used: Mutex::new(HashSet::new()),
        failure: Mutex::new(None),
    });
    let backend = Backend {
        file,
        index: index.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
    (index, vb)
}

struct Backend {
    file: Store,
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
        let index = &self.index;
        index.shape(name).map_err(|e| index.fail(e))?;
        let name = index.file_name(name);
        let stored = self.file.load(&name, &Device::Cpu)?;
        let tensor = checked_weight(stored, dtype)
            .map_err(|reason| {
                index.fail(Error::BadTensor {
                    path: index.path.clone(),
                    name: name.clone(),
                    reason,
                })
            })?
            .to_device(device)?;
        if let Ok(mut used) = self.index.used.lock() {
            used.insert(name);
        }
        Ok(tensor)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains(name)
    }
}

/// A stored weight in `dtype`, after checking, in one pass on the CPU, that it is floating
/// point and finite: an integer or NaN weight would load and quietly give no boxes.
fn checked_weight(stored: Tensor, dtype: DType) -> std::result::Result<Tensor, String> {
    if !stored.dtype().is_float() {
        return Err(format!(
            "is {:?}: weights must be floating point (F16, BF16, F32 or F64)",
            stored.dtype()
        ));
    }
    let as_f32 = stored.to_dtype(DType::F32).map_err(|e| e.to_string())?;
    let values = as_f32
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "holds {} at flat index {i}: weights must be finite",
            values[i]
        ));
    }
    as_f32.to_dtype(dtype).map_err(|e| e.to_string())
}
