//! Reading a parsed checkpoint pickle: the tensors of a pickled `nn.Module` (or of a state
//! dict) under `state_dict()` names, and plain values converted to JSON. Every walk is bounded
//! in depth (which also stops cycles) and in the number of values it visits (which stops a
//! small pickle of shared values from unfolding into an exponential tree).

use std::cell::Cell;

use super::pickle::{Fault, Id, Object, Pickle, Value};
use super::policy::Global;

/// The deepest nesting of modules or of plain values that is read.
pub const MAX_DEPTH: usize = 64;
/// The most values one JSON conversion may visit.
const MAX_NODES: usize = 1 << 22;

/// An element type of a torch storage or tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDType {
    F16,
    BF16,
    F32,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDType {
    /// From a legacy storage class name (`HalfStorage`) or a dtype name (`float16`).
    fn from_name(name: &str) -> Option<TorchDType> {
        use TorchDType::*;
        Some(match name.trim_end_matches("Storage") {
            "Half" | "float16" | "half" => F16,
            "BFloat16" | "bfloat16" => BF16,
            "Float" | "float32" | "float" => F32,
            "Double" | "float64" | "double" => F64,
            "Long" | "int64" | "long" => I64,
            "Int" | "int32" | "int" => I32,
            "Short" | "int16" | "short" => I16,
            "Char" | "int8" => I8,
            "Byte" | "uint8" | "Untyped" => U8,
            "Bool" | "bool" => Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        use TorchDType::*;
        match self {
            F64 | I64 => 8,
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 | U8 | Bool => 1,
        }
    }

    /// torch's name (`float16`).
    pub fn name(self) -> &'static str {
        use TorchDType::*;
        match self {
            F16 => "float16",
            BF16 => "bfloat16",
            F32 => "float32",
            F64 => "float64",
            I64 => "int64",
            I32 => "int32",
            I16 => "int16",
            I8 => "int8",
            U8 => "uint8",
            Bool => "bool",
        }
    }
}

/// Where a tensor's elements are: a storage of the zip, viewed with an offset and strides
/// (in elements of `dtype`).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// The storage's key: its entry is `<archive>/data/<key>`.
    pub key: String,
    /// The storage's size in bytes, as the pickle declares it.
    pub storage_bytes: u64,
    pub dtype: TorchDType,
    pub offset: u64,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

pub struct Walker<'p> {
    pickle: &'p Pickle,
    nodes: Cell<usize>,
}

impl<'p> Walker<'p> {
    pub fn new(pickle: &'p Pickle) -> Walker<'p> {
        Walker {
            pickle,
            nodes: Cell::new(0),
        }
    }

    pub fn get(&self, id: Id) -> &'p Value {
        self.pickle.get(id)
    }

    pub fn str(&self, id: Id) -> Option<&'p str> {
        match self.get(id) {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a dict (the last of equal keys wins when looked up).
    pub fn dict(&self, id: Id) -> Option<&'p [(Id, Id)]> {
        match self.get(id) {
            Value::Dict(pairs) => Some(pairs),
            _ => None,
        }
    }

    /// The value of string key `key` in the dict `id`.
    pub fn lookup(&self, id: Id, key: &str) -> Option<Id> {
        let pairs = self.dict(id)?;
        pairs
            .iter()
            .rev()
            .find(|(k, _)| self.str(*k) == Some(key))
            .map(|(_, v)| *v)
    }

    /// The items of a tuple or list.
    pub(super) fn items(&self, id: Id) -> Option<&'p [Id]> {
        match self.get(id) {
            Value::Tuple(items) | Value::List(items) => Some(items),
            _ => None,
        }
    }

    /// The state dict of an object: the `BUILD` dict, or the dict of a `(dict, slots)` pair.
    pub fn object_state(&self, id: Id) -> Option<Id> {
        let Value::Object(Object {
            state: Some(state), ..
        }) = self.get(id)
        else {
            return None;
        };
        match self.get(*state) {
            Value::Dict(_) => Some(*state),
            Value::Tuple(pair) => pair.first().copied().filter(|s| self.dict(*s).is_some()),
            _ => None,
        }
    }

    /// Whether `id` is a pickled `nn.Module`: an object whose state has `_modules`.
    pub fn is_module(&self, id: Id) -> bool {
        self.object_state(id)
            .and_then(|state| self.lookup(state, "_modules"))
            .is_some()
    }

    /// The class of an object (for `copyreg._reconstructor(cls, object, None)`, `cls`).
    pub fn class(&self, id: Id) -> Option<&'p Global> {
        let Value::Object(o) = self.get(id) else {
            return None;
        };
        if o.class.is("copyreg", "_reconstructor") {
            if let Some(Value::Global(class)) = self.items(o.args)?.first().map(|c| self.get(*c)) {
                return Some(class);
            }
        }
        Some(&o.class)
    }

    pub(super) fn int(&self, id: Id) -> Option<i64> {
        match self.get(id) {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// Counts one visited value against [`MAX_NODES`], and checks the depth.
    pub(super) fn visit(&self, depth: usize, what: &str) -> Result<(), Fault> {
        if depth > MAX_DEPTH {
            return Err(Fault::Corrupt(format!(
                "{what} nested deeper than {MAX_DEPTH} levels (or a cycle)"
            )));
        }
        let n = self.nodes.get() + 1;
        if n > MAX_NODES {
            return Err(Fault::Corrupt(format!(
                "{what} holds more than {MAX_NODES} values (shared values unfolded)"
            )));
        }
        self.nodes.set(n);
        Ok(())
    }
}

/// Tensors.
impl Walker<'_> {
    /// The tensor at `id`, when it is one; an error when it is a tensor of a kind not read.
    pub fn tensor(&self, id: Id) -> Result<Option<TensorSpec>, Fault> {
        self.tensor_at(id, 0)
    }

    fn tensor_at(&self, id: Id, depth: usize) -> Result<Option<TensorSpec>, Fault> {
        self.visit(depth, "a tensor")?;
        let Value::Object(o) = self.get(id) else {
            return Ok(None);
        };
        let args = self.items(o.args).unwrap_or_default();
        let arg = |i: usize| args.get(i).copied();
        let (module, name) = (o.class.module.as_str(), o.class.name.as_str());
        match (module, name) {
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state")
            | ("torch.nn.parameter", "Parameter") => match arg(0) {
                Some(data) => self.tensor_at(data, depth + 1),
                None => Err(bad_args(&o.class)),
            },
            ("torch._tensor", "_rebuild_from_type_v2") => {
                let (Some(func), Some(inner)) = (arg(0), arg(2)) else {
                    return Err(bad_args(&o.class));
                };
                let Value::Global(func) = self.get(func) else {
                    return Err(bad_args(&o.class));
                };
                let inner = self.items(inner).ok_or_else(|| bad_args(&o.class))?;
                self.rebuild(func, inner).map(Some)
            }
            ("torch._utils", _) if name.starts_with("_rebuild_") => {
                self.rebuild(&o.class, args).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// `_rebuild_tensor(storage, offset, size, stride)`, `_v2` (then `requires_grad`,
    /// `backward_hooks`, `metadata`) and `_v3` (with the dtype of an untyped storage).
    fn rebuild(&self, func: &Global, args: &[Id]) -> Result<TensorSpec, Fault> {
        let dtype_arg = match func.name.as_str() {
            "_rebuild_tensor" | "_rebuild_tensor_v2" => None,
            "_rebuild_tensor_v3" => Some(args.get(6).copied().ok_or_else(|| bad_args(func))?),
            other => {
                return Err(Fault::Corrupt(format!(
                    "a tensor rebuilt by `torch._utils.{other}` (quantized, sparse, on a \
                     device or without storage) is not read"
                )))
            }
        };
        let [storage, offset, size, stride] = match args.get(..4) {
            Some(&[a, b, c, d]) => [a, b, c, d],
            _ => return Err(bad_args(func)),
        };
        let (key, storage_dtype, storage_bytes) = self.storage(storage)?;
        let dtype = match dtype_arg {
            Some(id) => match self.get(id) {
                Value::Global(g) if g.module == "torch" => TorchDType::from_name(&g.name),
                _ => None,
            }
            .ok_or_else(|| bad_args(func))?,
            None => storage_dtype,
        };
        Ok(TensorSpec {
            key,
            storage_bytes,
            dtype,
            offset: self
                .int(offset)
                .and_then(|o| u64::try_from(o).ok())
                .ok_or_else(|| bad_args(func))?,
            size: self.dims(size).ok_or_else(|| bad_args(func))?,
            stride: self.dims(stride).ok_or_else(|| bad_args(func))?,
        })
    }

    /// A tuple (or `torch.Size`) of non-negative ints.
    fn dims(&self, id: Id) -> Option<Vec<usize>> {
        let items = match self.get(id) {
            Value::Object(o) if o.class.is("torch", "Size") => {
                self.items(*self.items(o.args)?.first()?)?
            }
            _ => self.items(id)?,
        };
        items
            .iter()
            .map(|i| self.int(*i).and_then(|v| usize::try_from(v).ok()))
            .collect()
    }

    /// `persistent_load(('storage', storage_type, key, location, numel))`: the storage's key,
    /// element type and declared size in bytes.
    fn storage(&self, id: Id) -> Result<(String, TorchDType, u64), Fault> {
        let bad = || Fault::Corrupt("a tensor's storage is not a torch storage reference".into());
        let Value::Persistent(pid) = self.get(id) else {
            return Err(bad());
        };
        let fields = self.items(*pid).ok_or_else(bad)?;
        let [tag, class, key, _location, numel] = match fields.get(..5) {
            Some(&[a, b, c, d, e]) => [a, b, c, d, e],
            _ => return Err(bad()),
        };
        if self.str(tag) != Some("storage") {
            return Err(bad());
        }
        let dtype = match self.get(class) {
            Value::Global(g) if g.module.starts_with("torch") => TorchDType::from_name(&g.name),
            _ => None,
        }
        .ok_or_else(|| Fault::Corrupt("a storage of an unknown element type".into()))?;
        let key = self.str(key).ok_or_else(bad)?;
        let bytes = self
            .int(numel)
            .and_then(|n| u64::try_from(n).ok())
            .and_then(|n| n.checked_mul(dtype.size() as u64))
            .ok_or_else(bad)?;
        Ok((key.to_string(), dtype, bytes))
    }

    /// The tensors of a pickled module under `state_dict()` names: its `_parameters`, its
    /// persistent `_buffers`, then each submodule's, skipping `None` entries.
    pub fn module_tensors(
        &self,
        module: Id,
        prefix: &str,
        depth: usize,
        out: &mut Vec<(String, TensorSpec)>,
    ) -> Result<(), Fault> {
        self.visit(depth, "modules")?;
        let state = self
            .object_state(module)
            .ok_or_else(|| Fault::Corrupt(format!("module `{prefix}` has no state dict")))?;
        let transient = self.names_in(self.lookup(state, "_non_persistent_buffers_set"));
        for field in ["_parameters", "_buffers"] {
            let Some(entries) = self.lookup(state, field).and_then(|d| self.dict(d)) else {
                continue;
            };
            for (name, value) in entries {
                let name = self.key(*name)?;
                if matches!(self.get(*value), Value::None)
                    || (field == "_buffers" && transient.contains(&name))
                {
                    continue;
                }
                let full = format!("{prefix}{name}");
                match self.tensor(*value)? {
                    Some(spec) => out.push((full, spec)),
                    None => return Err(not_a_tensor(&full, self.get(*value))),
                }
            }
        }
        let children = self.lookup(state, "_modules").and_then(|d| self.dict(d));
        for (name, child) in children.unwrap_or_default() {
            if !matches!(self.get(*child), Value::None) {
                let prefix = format!("{prefix}{}.", self.key(*name)?);
                self.module_tensors(*child, &prefix, depth + 1, out)?;
            }
        }
        Ok(())
    }

    /// The tensors of a state dict (a dict of name -> tensor), `None` when any value is not a
    /// tensor (then it is some other dict).
    pub fn state_dict(&self, id: Id) -> Result<Option<Vec<(String, TensorSpec)>>, Fault> {
        let Some(pairs) = self.dict(id) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(pairs.len());
        for (name, value) in pairs {
            match (self.str(*name), self.tensor(*value)?) {
                (Some(name), Some(spec)) => out.push((name.to_string(), spec)),
                _ => return Ok(None),
            }
        }
        Ok((!out.is_empty()).then_some(out))
    }

    fn key(&self, id: Id) -> Result<String, Fault> {
        self.str(id).map(str::to_string).ok_or_else(|| {
            Fault::Corrupt(format!("a module entry named by a {}", self.get(id).kind()))
        })
    }

    /// The strings of a set or list (absent: none).
    fn names_in(&self, id: Option<Id>) -> Vec<String> {
        match id.map(|id| self.get(id)) {
            Some(Value::Set(items) | Value::List(items) | Value::Tuple(items)) => items
                .iter()
                .filter_map(|i| self.str(*i).map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn bad_args(func: &Global) -> Fault {
    Fault::Corrupt(format!(
        "`{func}` is called with arguments torch never writes"
    ))
}

fn not_a_tensor(name: &str, value: &Value) -> Fault {
    Fault::Corrupt(format!("`{name}` is a {}, not a tensor", value.kind()))
}
