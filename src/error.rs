//! Typed errors of the library. Every variant names the file or the item at fault.

use std::path::PathBuf;

/// Match on a variant to tell the kinds apart; new kinds may be added (hence
/// `#[non_exhaustive]`: a match needs a `_` arm).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a safetensors file ({reason})")]
    NotSafetensors { path: PathBuf, reason: String },
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected}")]
    WrongShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: String,
    },
    #[error("{path}: {reason}")]
    BadModel { path: PathBuf, reason: String },
    /// An oodbox file of one kind where another is expected (a box set given as a model).
    #[error("{path}: this is {found}, not {expected}")]
    WrongKind {
        path: PathBuf,
        found: crate::core::kind::FileKind,
        expected: crate::core::kind::FileKind,
    },
    /// A data.yaml without the split asked for; `available` lists the splits it has.
    #[error(
        "{path}: no `{split}` split; its splits are: {}",
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    MissingSplit {
        path: PathBuf,
        split: String,
        available: Vec<String>,
    },
    /// A PyTorch checkpoint whose pickle would run code when loaded in Python (it calls a
    /// global such as `os.system`); `reason` names what it calls. Nothing of it was run.
    #[error("{path}: {reason}")]
    UnsafeCheckpoint { path: PathBuf, reason: String },
    /// A model of a family or task that oodbox does not run; `found` says which.
    #[error(
        "{path}: {found} is not supported; oodbox runs {}",
        crate::detect::supported()
    )]
    UnsupportedModel { path: PathBuf, found: String },
    /// Class names whose count does not match the model's head.
    #[error("{given} class names given, the model has {expected} classes")]
    ClassCount { given: usize, expected: usize },
    /// An operation the object at hand does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// A weight tensor that no model can use: not floating point, or holding NaN or ±inf.
    #[error("{path}: tensor `{name}` {reason}")]
    BadTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
    /// An input larger than a limit of [`crate::limits::Limits`]; `reason` says how to raise it.
    #[error("{path}: {reason}")]
    TooLarge { path: PathBuf, reason: String },
    /// A setting (a detection threshold, an input size, a limit) outside its valid range.
    #[error("{item} = {value} is outside {range}")]
    OutOfRange {
        item: String,
        value: String,
        range: String,
    },
    #[error("{path}: cannot decode image ({reason})")]
    BadImage { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    BadInput { path: PathBuf, reason: String },
    /// Evaluation input that no metric can be computed from (empty score set, NaN, a class id
    /// out of range); `item` names the argument at fault.
    #[error("{item}: {reason}")]
    Eval { item: String, reason: String },
    /// A plot that could not be drawn or written.
    #[error("{path}: cannot draw plot ({reason})")]
    Plot { path: PathBuf, reason: String },
    /// A video input or output that ffmpeg could not open, read or write; `item` names it.
    #[error("{item}: {reason}")]
    Video { item: String, reason: String },
    /// A stream stopped on request (`StreamOptions::stop`, set by a signal handler) after this
    /// many frames were detected; its output was abandoned.
    #[error("stopped on request after {frames} frames")]
    Interrupted { frames: u64 },
    #[error("calibration: {0}")]
    Calibration(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An OOD scorer could not be built, fitted, restored or applied: unknown name or
    /// parameter, bad input box (non-finite value, dimension mismatch), not fitted, bad state.
    #[error("scorer `{scorer}`: {reason}")]
    Scorer { scorer: String, reason: String },
    /// An image given in memory (encoded bytes or a decoded image) that cannot be used:
    /// undecodable, empty, or over a limit of [`crate::limits::Limits`] (`reason` says which).
    #[error("image in memory: {reason}")]
    BadImageData { reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
