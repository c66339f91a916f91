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
    /// An OOD scorer could not be built, fitted, restored or applied; `fault` says why (an
    /// unknown name or parameter, a box of another dimension, a non-finite value, not fitted,
    /// a bad state), `reason` says it in words.
    #[error("scorer `{scorer}`: {reason}")]
    Scorer {
        scorer: String,
        fault: ScorerFault,
        reason: String,
    },
    /// An image given in memory (encoded bytes or a decoded image) that cannot be used:
    /// undecodable, empty, or over a limit of [`crate::limits::Limits`] (`reason` says which).
    #[error("image in memory: {reason}")]
    BadImageData { reason: String },
    /// Box set parts that disagree ([`crate::data::boxset::BoxSet::new`]): a column of another
    /// length, a class id or label outside the classes, a head of another shape; `reason`
    /// names the field and the box.
    #[error("box set: {reason}")]
    BadBoxSet { reason: String },
}

/// Why a scorer failed ([`Error::Scorer`]): match on it to handle one failure and pass the
/// others on; new kinds may be added.
///
/// ```
/// use oodbox::error::{Error, ScorerFault};
/// let err = oodbox::ood::build("no-such-scorer", None, &[]).err().unwrap();
/// assert!(matches!(err, Error::Scorer { fault: ScorerFault::UnknownKind, .. }));
/// assert_eq!(err.scorer_fault(), Some(ScorerFault::UnknownKind));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScorerFault {
    /// No scorer, shaping or combined component of that name.
    UnknownKind,
    /// A parameter the scorer does not have, one given twice, a value it cannot take, or a
    /// combination it refuses (a shaping on a scorer that reads no logits).
    BadParameter,
    /// Scored before it was fitted.
    NotFitted,
    /// Boxes that differ from those the scorer was fitted on: another feature dimension,
    /// class count, head, level, feature source or model.
    Mismatch,
    /// A NaN or ±inf in a value the scorer reads; `reason` names the box.
    NonFinite,
    /// Boxes that lack what the scorer reads: no box at fit, no features or logits, no class
    /// head, no `level` for a per-level fit.
    MissingInput,
    /// Fit boxes from which this scorer cannot be made: degenerate statistics (no positive
    /// ViM alpha, no correctly classified box, too few boxes to split) or training that
    /// diverged.
    CannotFit,
    /// A box with finite values that the method still cannot score (ASH or SCALE shaping of
    /// activations that are not non-negative); `reason` names the box.
    Unscorable,
    /// A saved scorer state that does not decode (a scorer file's tensors or parameters).
    BadState,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// What is wrong, when a scorer refused: `Some(ScorerFault::Mismatch)` for boxes of another
    /// dimension, say; `None` for every other error.
    pub fn scorer_fault(&self) -> Option<ScorerFault> {
        match self {
            Error::Scorer { fault, .. } => Some(*fault),
            _ => None,
        }
    }
}
