//! Which globals a checkpoint's pickle may call. Nothing is ever called here: the rules exist so
//! that a file which *would* run code when loaded in Python (a `REDUCE` of `os.system`,
//! `builtins.eval`, `subprocess.Popen`...) is refused and the user learns it is suspicious,
//! instead of being read as if it were harmless.

use std::fmt;

/// A global named by a `GLOBAL` or `STACK_GLOBAL` opcode, only ever kept as a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    pub module: String,
    pub name: String,
}

impl Global {
    /// Python 3 reads protocol-2 pickles with Python 2 module names mapped to their new
    /// names (`_compat_pickle`); the two torch writes are mapped the same way here.
    pub fn new(module: &str, name: &str) -> Global {
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            other => other,
        };
        Global {
            module: module.to_string(),
            name: name.to_string(),
        }
    }

    pub fn is(&self, module: &str, name: &str) -> bool {
        self.module == module && self.name == name
    }
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// What a `REDUCE` (`callable(*args)`) of a global builds.
#[derive(Debug, PartialEq, Eq)]
pub enum Call {
    /// An empty dict (`OrderedDict`, `defaultdict`): its items follow as `SETITEMS`.
    Dict,
    /// A set from an iterable argument.
    Set,
    /// A value kept as the call's name and arguments, read later by the walker.
    Data,
}

/// torch's tensor rebuilders (`torch._weights_only_unpickler._tensor_rebuild_functions`).
pub const TENSOR_REBUILDERS: &[&str] = &[
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_wrapper_subclass",
];

/// The globals that may be called. Each builds plain data in Python: torch's own tensor
/// rebuilders (torch's `weights_only` loader allows the same), containers, and the value
/// types ultralytics stores in its metadata (paths, namespaces, devices, numpy scalars).
pub fn call(global: &Global) -> Option<Call> {
    let (module, name) = (global.module.as_str(), global.name.as_str());
    Some(match (module, name) {
        ("collections", "OrderedDict" | "defaultdict") => Call::Dict,
        ("builtins", "set" | "frozenset") => Call::Set,
        ("torch._utils", rebuild) if TENSOR_REBUILDERS.contains(&rebuild) => Call::Data,
        ("torch._tensor", "_rebuild_from_type_v2")
        | ("torch", "Size" | "device")
        | ("torch.serialization", "_get_layout")
        | ("torch.nn.parameter", "Parameter")
        | ("_codecs", "encode")
        | ("builtins", "bytearray" | "complex" | "slice")
        | ("copyreg", "_reconstructor")
        | ("types", "SimpleNamespace")
        | ("argparse", "Namespace")
        | ("ultralytics.utils" | "ultralytics.yolo.utils", "IterableSimpleNamespace")
        | ("numpy", "dtype")
        | ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar" | "_reconstruct") => {
            Call::Data
        }
        ("pathlib" | "pathlib._local", path) if path.ends_with("Path") => Call::Data,
        _ => return None,
    })
}

/// Whether `cls.__new__(cls)` (`NEWOBJ`, or `copyreg._reconstructor`) may make an instance of
/// this class: ultralytics' and torch's modules, whose state then comes from `BUILD`.
/// `__new__` does not run `__init__`; other classes are refused all the same, since a class
/// of a foreign package could define a `__new__` with side effects.
pub fn instantiate(global: &Global) -> bool {
    let module = global.module.as_str();
    module == "ultralytics"
        || module.starts_with("ultralytics.")
        || module == "torch"
        || module.starts_with("torch.")
        || matches!(
            (module, global.name.as_str()),
            ("builtins", "object")
                | ("collections", "OrderedDict")
                | ("types", "SimpleNamespace")
                | ("argparse", "Namespace")
        )
}

/// Why a call of `global` is refused, for the user.
pub fn refusal(global: &Global, how: &str) -> String {
    format!(
        "refused: the pickle {how} `{global}`, which would run code when the checkpoint is \
         loaded in Python (oodbox runs nothing from a checkpoint, but a model file that does \
         this is suspicious; do not load it with torch.load)"
    )
}
