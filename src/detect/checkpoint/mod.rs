//! A reader of PyTorch `torch.save` checkpoints (ultralytics `best.pt` / `last.pt`) that runs
//! nothing from the file.
//!
//! A checkpoint is a zip: `<archive>/data.pkl`, a pickle, and `<archive>/data/<key>`, the raw
//! tensor storages. In an ultralytics file the pickle holds a dict whose `model` (or, in a
//! mid-training `last.pt`, `ema`) is a pickled `DetectionModel`: an object whose state nests
//! `_parameters`, `_buffers` and `_modules`, next to plain attributes (`names`, `yaml`,
//! `stride`). [`read`] returns its tensors under the names `model.state_dict()` gives, as F32
//! on the CPU, and those attributes; a plain state dict is read too.
//!
//! # Approach: a pickle machine of our own
//!
//! Three ways were weighed:
//! - `candle_core::pickle::Stack` copies the top value into the memo at `BINPUT` time, so a
//!   dict that is memoized and then filled (every pickled module's `_parameters`, `_modules`)
//!   reads back empty from a later `BINGET`, and every `BINGET` deep-copies (shared values
//!   unfold exponentially). It reads the `DICT` opcode as `EMPTY_DICT`, lacks
//!   `SHORT_BINUNICODE`, `MEMOIZE`, `FRAME`, `STACK_GLOBAL`, `BINBYTES` and `EMPTY_SET`, allocates
//!   a string's declared length (up to 4 GiB) before reading it, has no bounds, and its errors
//!   give no offset. Unknown opcodes are an error and globals stay names, so it is safe, but a
//!   walker over its `Object` tree would inherit those faults.
//! - `pytorch-reader` (Burn) reads full-model saves under `state_dict()` names but drops the
//!   plain attributes (`names`, `yaml`), keeps an unknown `REDUCE` (`os.system`) as an opaque
//!   value instead of refusing it, brings `tar`, `num-traits` and a deflate backend, and its
//!   current line is a pre-release.
//! - A small machine of our own (`pickle.rs`, about 750 lines): values in an arena referred to
//!   by index (Python's sharing, no copies), the opcodes of protocols 2 to 5 that torch and
//!   Python write, every length checked before allocating, and a call policy (`policy.rs`).
//!
//! The third was chosen: no new dependency, attribute access, exact sharing semantics, and
//! refusals that name the global.
//!
//! # Safety
//!
//! Nothing is executed: a global is only ever a name. Still, a file that *would* run code in
//! Python is refused, naming the global ([`Error::UnsafeCheckpoint`]), so users learn it is
//! suspicious: `REDUCE` may call only torch's tensor rebuilders, containers and the value
//! types ultralytics stores (`policy::call`); `NEWOBJ` may only make instances of torch
//! and ultralytics classes; `BUILD` may not set attributes of a class; `APPEND`/`SETITEM` may
//! not call an object's methods. Sizes: `data.pkl` at most 64 MiB,
//! bounded values, memo entries and nesting, every storage within its zip entry and the file,
//! every view within its storage, and all views together within the zip's uncompressed size,
//! all checked before a storage is read.

mod archive;
mod json;
mod pickle;
mod policy;
mod walk;

#[cfg(test)]
mod tests;

use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

use archive::Archive;
use pickle::{Fault, Id, Pickle, Value};
use walk::{TensorSpec, Walker};

use crate::error::{Error, Result};

/// What a checkpoint holds.
#[derive(Debug)]
pub struct Checkpoint {
    /// The module's tensors under `state_dict()` names, in its order: floats as F32 (from
    /// f16, bf16, f32, f64), integers as I64 (`num_batches_tracked`), I32, I16 or U8.
    pub tensors: Vec<(String, Tensor)>,
    /// Class names in class id order (the module's `names`).
    pub names: Option<Vec<String>>,
    /// The architecture dict (the module's `yaml`: `nc`, `scale`, `backbone`, `head`, ...).
    pub yaml: Option<serde_json::Value>,
    /// The module's `task`, else `train_args["task"]`.
    pub task: Option<String>,
    /// The module's `stride` (one per detection level).
    pub stride: Option<Vec<f32>>,
    /// The top-level `version`: the ultralytics release that wrote the file.
    pub ultralytics_version: Option<String>,
    /// The top-level `train_args`.
    pub train_args: Option<serde_json::Value>,
    /// The module's class, e.g. `ultralytics.nn.tasks.DetectionModel` (None for a state dict).
    pub module_class: Option<String>,
    /// The top-level key the tensors came from (`model`, `ema`, `state_dict`), None for the
    /// root itself.
    pub source_key: Option<String>,
    /// Every global the pickle names, in first-use order (all only recorded as names).
    pub globals: Vec<String>,
}

/// A tensor's name, shape and stored dtype, listed without reading its storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    /// torch's name of the stored dtype (`float16`, `int64`, ...).
    pub dtype: &'static str,
}

/// Reads a checkpoint's tensors and metadata.
pub fn read(path: &Path) -> Result<Checkpoint> {
    let (mut archive, pickle) = open(path)?;
    let plan = Plan::make(&pickle).map_err(|f| fault(path, f))?;
    archive.check_views(&plan.tensors)?;
    let tensors = decode_all(&mut archive, &plan.tensors)?;
    let stride = match &plan.stride {
        Some(Stride::Tensor(spec)) => Some(decode_stride(&mut archive, spec)?),
        Some(Stride::Values(values)) => Some(values.clone()),
        None => None,
    };
    let meta = plan.meta;
    Ok(Checkpoint {
        tensors,
        names: meta.names,
        yaml: meta.yaml,
        task: meta.task,
        stride,
        ultralytics_version: meta.version,
        train_args: meta.train_args,
        module_class: meta.module_class,
        source_key: meta.source_key,
        globals: pickle.globals(),
    })
}

/// Lists a checkpoint's tensors (names, shapes, dtypes) without reading any storage; the
/// views are checked against their storages' declared sizes all the same.
pub fn list(path: &Path) -> Result<Vec<TensorEntry>> {
    let (archive, pickle) = open(path)?;
    let plan = Plan::make(&pickle).map_err(|f| fault(path, f))?;
    archive.check_views(&plan.tensors)?;
    Ok(plan
        .tensors
        .into_iter()
        .map(|(name, spec)| TensorEntry {
            name,
            shape: spec.size,
            dtype: spec.dtype.name(),
        })
        .collect())
}

fn open(path: &Path) -> Result<(Archive, Pickle)> {
    let mut archive = Archive::open(path)?;
    let data = archive.pickle()?;
    let pickle = Pickle::parse(&data).map_err(|f| fault(path, f))?;
    Ok((archive, pickle))
}

fn fault(path: &Path, fault: Fault) -> Error {
    match fault {
        Fault::Corrupt(reason) => Error::BadModel {
            path: path.to_path_buf(),
            reason,
        },
        Fault::Unsafe(reason) => Error::UnsafeCheckpoint {
            path: path.to_path_buf(),
            reason,
        },
    }
}

/// Reads each storage once, dropping it after the last view of it is cut.
fn decode_all(
    archive: &mut Archive,
    specs: &[(String, TensorSpec)],
) -> Result<Vec<(String, Tensor)>> {
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for (_, spec) in specs {
        *uses.entry(spec.key.as_str()).or_default() += 1;
    }
    let mut cache: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let key = spec.key.as_str();
        if !cache.contains_key(key) {
            let bytes = archive.storage(key, spec.storage_bytes)?;
            cache.insert(key, bytes);
        }
        let storage = cache.get(key).map(Vec::as_slice).unwrap_or_default();
        out.push((name.clone(), archive.decode(name, storage, spec)?));
        let left = uses.entry(key).or_default();
        *left = left.saturating_sub(1);
        if *left == 0 {
            cache.remove(key);
        }
    }
    Ok(out)
}

fn decode_stride(archive: &mut Archive, spec: &TensorSpec) -> Result<Vec<f32>> {
    let named = [("stride".to_string(), spec.clone())];
    archive.check_views(&named)?;
    let storage = archive.storage(&spec.key, spec.storage_bytes)?;
    let tensor = archive.decode("stride", &storage, spec)?;
    let values = tensor
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>());
    values.map_err(|e| Error::BadModel {
        path: archive.path().to_path_buf(),
        reason: format!("stride: {e}"),
    })
}

enum Stride {
    Tensor(TensorSpec),
    Values(Vec<f32>),
}

#[derive(Default)]
struct Meta {
    names: Option<Vec<String>>,
    yaml: Option<serde_json::Value>,
    task: Option<String>,
    version: Option<String>,
    train_args: Option<serde_json::Value>,
    module_class: Option<String>,
    source_key: Option<String>,
}

/// What to read from a parsed pickle: the tensors' views and the metadata.
struct Plan {
    tensors: Vec<(String, TensorSpec)>,
    stride: Option<Stride>,
    meta: Meta,
}

impl Plan {
    fn make(pickle: &Pickle) -> std::result::Result<Plan, Fault> {
        let w = Walker::new(pickle);
        let root = pickle.root();
        let mut meta = Meta::default();
        if w.dict(root).is_some() {
            meta.version = w
                .lookup(root, "version")
                .and_then(|v| w.str(v))
                .map(str::to_string);
            meta.train_args = w
                .lookup(root, "train_args")
                .map(|a| w.json(a))
                .transpose()?;
        }
        let (holder, key) = holder(&w, root)?;
        meta.source_key = key.map(str::to_string);
        let mut plan = Plan {
            tensors: Vec::new(),
            stride: None,
            meta,
        };
        if w.is_module(holder) {
            w.module_tensors(holder, "", 0, &mut plan.tensors)?;
            plan.module_attributes(&w, holder)?;
        } else if let Some(tensors) = w.state_dict(holder)? {
            plan.tensors = tensors;
        } else {
            return Err(Fault::Corrupt(format!(
                "no model: {} is a {} that is neither a module nor a dict of tensors",
                key.map_or("the pickle".to_string(), |k| format!("`{k}`")),
                kind_of(&w, holder)
            )));
        }
        if plan.meta.task.is_none() {
            let task = plan.meta.train_args.as_ref().and_then(|a| a.get("task"));
            plan.meta.task = task.and_then(|t| t.as_str()).map(str::to_string);
        }
        Ok(plan)
    }

    /// `names`, `yaml`, `task`, `stride` and the class of a pickled module.
    fn module_attributes(&mut self, w: &Walker, module: Id) -> std::result::Result<(), Fault> {
        self.meta.module_class = w.class(module).map(|c| c.to_string());
        let Some(state) = w.object_state(module) else {
            return Ok(());
        };
        let attr = |name: &str| w.lookup(state, name);
        self.meta.names = attr("names").and_then(|n| class_names(w, n));
        self.meta.yaml = attr("yaml").map(|y| w.json(y)).transpose()?;
        self.meta.task = attr("task").and_then(|t| w.str(t)).map(str::to_string);
        self.stride = match attr("stride") {
            Some(id) => match w.tensor(id)? {
                Some(spec) => Some(Stride::Tensor(spec)),
                None => numbers(w, id).map(Stride::Values),
            },
            None => None,
        };
        Ok(())
    }
}

/// The value holding the tensors: the root module or state dict, else `model` when it is not
/// None, else `ema`, else `state_dict`, else the root dict itself.
fn holder<'k>(w: &Walker, root: Id) -> std::result::Result<(Id, Option<&'k str>), Fault> {
    if w.is_module(root) || w.state_dict(root)?.is_some() {
        return Ok((root, None));
    }
    if w.dict(root).is_none() {
        return Err(Fault::Corrupt(format!(
            "the pickle holds a {}, not a dict or a module",
            kind_of(w, root)
        )));
    }
    for key in ["model", "ema", "state_dict"] {
        if let Some(id) = w.lookup(root, key) {
            if !matches!(w.get(id), Value::None) {
                return Ok((id, Some(key)));
            }
        }
    }
    Ok((root, None))
}

fn kind_of(w: &Walker, id: Id) -> String {
    match w.class(id) {
        Some(class) => format!("`{class}` object"),
        None => w.get(id).kind().to_string(),
    }
}

/// Class names in id order from a `{id: name}` dict (ids 0..n) or a list.
fn class_names(w: &Walker, id: Id) -> Option<Vec<String>> {
    let string = |v: Id| w.str(v).map(str::to_string);
    match w.get(id) {
        Value::List(items) | Value::Tuple(items) => items.iter().map(|i| string(*i)).collect(),
        Value::Dict(pairs) => {
            let mut named: Vec<(i64, String)> = pairs
                .iter()
                .map(|(k, v)| {
                    let key = w.int(*k).or_else(|| w.str(*k)?.parse().ok())?;
                    Some((key, string(*v)?))
                })
                .collect::<Option<_>>()?;
            named.sort_by_key(|(k, _)| *k);
            let dense = named.iter().enumerate().all(|(i, (k, _))| *k == i as i64);
            dense.then(|| named.into_iter().map(|(_, n)| n).collect())
        }
        _ => None,
    }
}

/// A list or tuple of numbers.
fn numbers(w: &Walker, id: Id) -> Option<Vec<f32>> {
    let (Value::List(items) | Value::Tuple(items)) = w.get(id) else {
        return None;
    };
    items
        .iter()
        .map(|i| match w.get(*i) {
            Value::Int(v) => Some(*v as f32),
            Value::Float(v) => Some(*v as f32),
            _ => None,
        })
        .collect()
}
