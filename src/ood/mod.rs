//! Post-hoc OOD scorers on box sets: every scorer is fitted on ID boxes, then scores boxes;
//! a higher score always means more OOD.
//!
//! One kept detection is one row: a scorer reads the box's `features` (`[D]`, the input of its
//! level's classifier), `logits` (`[C]`), `class_id`, `label` and `level` from a
//! [`BoxSet`], and the head `(W, b)` when the method needs it. Fit
//! statistics and scores are computed in f64. Each family's module documents its formulas;
//! `docs/scorers.md` lists the defaults and, in one place, the differences from Oodeel 0.4.
//!
//! ```no_run
//! use oodbox::data::boxset::BoxSet;
//! let fit = BoxSet::load("fit.safetensors".as_ref())?;
//! let test = BoxSet::load("test.safetensors".as_ref())?;
//! let mut scorer = oodbox::ood::build("knn", None, &[("nearest".into(), "50".into())])?;
//! scorer.fit(&fit)?;
//! let scores = scorer.score(&test)?; // one per box, higher = more OOD
//! let again = oodbox::ood::from_state(&scorer.to_state())?; // what a scorer file holds
//! # Ok::<(), oodbox::error::Error>(())
//! ```
//!
//! # Scorers
//!
//! The kinds are the table [`entries`] (one [`KindEntry`] each: name, summary, inputs, typed
//! parameters with defaults, constructor); `docs/scorers.md` lists them with their parameters,
//! the per-level behaviour and every deliberate difference from Oodeel 0.4, and `oodbox scorers`
//! prints the same tables. Activation shaping ([`shaping`]) goes in front of any logit kind.
//! Parameters are typed ([`params`]): `name=value` text and a scorer file's JSON both read into
//! the kind's serde struct.
//!
//! **Fit labels** are `label` where present and ≥ 0, else `class_id`. The predicted class is
//! `class_id` (used by SHE's "correctly classified" filter and Gram's per-class bounds).
//!
//! # Per level (YOLO)
//!
//! YOLOv8 has one class branch and head per pyramid level, so features of different levels live
//! in different spaces. Every feature scorer therefore fits **per level by default**
//! (`per_level=true`: one set of statistics per `level` value; a box on a level with no fit boxes
//! is an error naming it) and pools all boxes with `per_level=false`. A box set without `level` is
//! one group. The plumbing is shared (`src/ood/grouped.rs`). Shaping always recomputes logits with the
//! box's own level head.
//!
//! # Bad input
//!
//! NaN/Inf in the features or logits a scorer reads is an error naming the box; so are an empty
//! fit set, a feature or class dimension different from the fit's, an unknown scorer, shaping or
//! parameter (the message lists the valid ones), scoring before fitting, and a bad state in
//! [`from_state`]. A singular covariance is handled by the pseudo-inverse cut-off; a class with a
//! single fit box works; a class with no (correctly classified) fit box is skipped.
//!
//! Parity with Oodeel 0.4 on the same features/logits is tested in `tests/ood_parity.rs` against
//! `tests/fixtures/oodeel/` (made by `tests/fixtures/export_oodeel_reference.py`).

mod common;
mod grouped;
mod linalg;
pub mod params;
mod registry;
pub mod shaping;

#[cfg(test)]
mod tests;

pub use common::Uses;
pub use registry::{build, entries, from_state, kinds, markdown, param_names, shapings, KindEntry};

/// Declares each kind module and lists the [`KindEntry`] constants it defines, in listing order.
macro_rules! kind_table {
    ($($module:ident => [$($entry:ident),+ $(,)?]),+ $(,)?) => {
        $(pub mod $module;)+
        /// The table of scorer kinds: the CLI's scorer lists, [`build`], [`from_state`], the
        /// contract tests and docs/scorers.md all read it.
        pub(crate) const KINDS: &[KindEntry] = &[$($($module::$entry),+),+];
    };
}

// The one table of scorer kinds. A new kind is one file, src/ood/<module>.rs, defining a
// `pub(crate) const NAME: KindEntry`, plus one line here: `<module> => [NAME],`.
kind_table! {
    logits => [MSP, MAXLOGIT, ENERGY, ENTROPY, GEN, ODIN, JOINT_ENERGY],
    mahalanobis => [MAHALANOBIS, RMDS],
    knn => [KNN],
    vim => [VIM],
    she => [SHE],
    gram => [GRAM],
    box_monitor => [BOX_MONITOR],
    flow => [FLOW],
    ocsdf => [OCSDF],
    safe => [SAFE],
    combine => [COMBINE],
}

use crate::data::boxset::BoxSet;
use crate::error::Result;

pub trait Scorer: Send + Sync {
    /// Registry name, e.g. "energy", "mahalanobis".
    fn kind(&self) -> &'static str;
    /// Fit on ID boxes. Fit labels: `label` where present and >= 0, else `class_id`. Uses `level`
    /// (per-level fits for YOLO: each level has its own head and feature statistics; a box set
    /// without `level` is one group) and `head` when the method needs W, b.
    fn fit(&mut self, boxes: &BoxSet) -> Result<()>;
    /// Fit on ID boxes against outlier boxes of the same model and features (e.g. FGSM
    /// surrogates, [`crate::detect::fgsm`]); only scorers trained on outliers take them.
    fn fit_with_outliers(&mut self, boxes: &BoxSet, outliers: &BoxSet) -> Result<()> {
        let _ = (boxes, outliers);
        Err(crate::error::Error::Scorer {
            scorer: self.kind().into(),
            fault: crate::error::ScorerFault::BadParameter,
            reason: "it is not trained against outlier boxes".into(),
        })
    }
    /// Called once after the fit with the calibration boxes, before they calibrate the scorer:
    /// a scorer that turns its parts' scores into p-values (`combine` with
    /// `reference=calibration`) keeps some of their images for that and returns the others,
    /// which then calibrate it. The others keep none.
    fn reserve_calibration<'a>(
        &mut self,
        calibration: &'a BoxSet,
    ) -> Result<std::borrow::Cow<'a, BoxSet>> {
        Ok(std::borrow::Cow::Borrowed(calibration))
    }
    /// Whether the scorer, as configured, is trained against outlier boxes
    /// ([`Scorer::fit_with_outliers`]).
    fn takes_outliers(&self) -> bool {
        false
    }
    /// One score per box, input order; higher = more OOD. Errors if not fitted, or on dimension
    /// mismatch.
    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>>;
    /// Everything needed to rebuild the fitted scorer (for the scorer file).
    fn to_state(&self) -> ScorerState;
    /// Scores the very boxes the scorer was fitted on, without letting a box see itself where
    /// that matters: KNN scores leave-one-out (and errors if `boxes` is not its fit set); every
    /// other scorer scores as [`Scorer::score`] (its in-sample scores stay mildly optimistic).
    fn score_in_sample(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        self.score(boxes)
    }
    /// For a scorer that scores a box against statistics of its own class (means, bounds,
    /// patterns): the class whose statistics each fit box enters (−1: none). A class with few
    /// fit boxes then scores on another scale than the rest. `None` for other scorers.
    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        let _ = boxes;
        None
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScorerState {
    pub kind: String,
    pub shaping: Option<String>,
    /// Resolved parameters (defaults filled in), Oodeel constructor names.
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    /// Named f64 tensors (name, shape, row-major data).
    pub tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
}

/// A scorer that can also load its fitted statistics from a state.
pub(crate) trait ScorerImpl: Scorer {
    fn restore(&mut self, tensors: &mut common::TensorMap) -> Result<()>;
}

pub mod calibration;
pub mod fitted;
pub mod tail;
