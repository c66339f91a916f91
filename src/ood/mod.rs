//! Post-hoc OOD scorers on box sets: every scorer is fitted on ID boxes, then scores boxes;
//! a higher score always means more OOD.
//!
//! One kept detection is one row: a scorer reads the box's `features` (`[D]`, the input of its
//! level's classifier), `logits` (`[C]`), `class_id`, `label` and `level` from a
//! [`BoxSet`], and the head `(W, b)` when the method needs it. Fit
//! statistics and scores are computed in f64. Formulas, defaults and the Oodeel 0.4 checks are in
//! `shared/reference/ood-methods.md`; each family's module documents its own.
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
//! # Scorers ([`kinds`])
//!
//! | kind | module | score (higher = OOD) | parameters, defaults = Oodeel 0.4's |
//! |---|---|---|---|
//! | `msp` | [`logits`] | `−max softmax(l)` | — |
//! | `maxlogit` | [`logits`] | `−max l` | — |
//! | `energy` | [`logits`] | `−logsumexp(l)` | — |
//! | `entropy` | [`logits`] | `−Σ p ln p` | — |
//! | `gen` | [`logits`] | `Σ_{top k} p^γ(1−p)^γ` | `gamma=0.1`, `k=100` |
//! | `odin` | [`logits`] | `−max softmax(l/T)` (**no input perturbation**) | `temperature=1000` |
//! | `joint_energy` | [`logits`] | `−Σ softplus(l_c)` (for sigmoid heads: YOLO) | — |
//! | `mahalanobis` | [`mahalanobis`] | `½ min_c d²_c` | `per_level=true`, `pinv_rtol=auto` |
//! | `rmds` | [`mahalanobis`] | `½ min_c (d²_c − d²_0)` | `per_level=true`, `pinv_rtol=auto` |
//! | `knn` | [`knn`] | distance to the k-th nearest normalised fit feature | `nearest=50`, `per_level=true` |
//! | `vim` | [`vim`] | `α‖Rᵀ(f − u)‖ − logsumexp(l)` | `princ_dims=0.99`, `pca_origin=center`, `per_level=true` |
//! | `she` | [`she`] | `−max_c ⟨f, m_c⟩ / D` | `per_level=true`, `class_select=max` |
//! | `gram` | [`gram`] | Gram-statistic deviation (degenerate on vectors: see module) | `orders=1,2,3,4,5`, `quantile=0.01`, `per_level=true` |
//!
//! Activation shaping ([`shaping`]: `react` | `ash` | `scale` | `dice`) goes in front of any logit
//! scorer: it reshapes the feature, recomputes `l' = W f' + b` with the box's level head, then
//! applies the logit scorer. Parameters `react_quantile=0.8` (+ `per_level=true`),
//! `ash_percentile=0.90`, `scale_percentile=0.85`, `dice_percentile=0.9`.
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
//! one group. Shaping always recomputes logits with the box's own level head; ReAct's clip value is
//! per level by default, DICE's mask per head. Plain logit scorers have no statistics to split.
//!
//! # Bad input
//!
//! NaN/Inf in the features or logits a scorer reads is an error naming the box; so are an empty
//! fit set, a feature or class dimension different from the fit's, an unknown scorer, shaping or
//! parameter (the message lists the valid ones), scoring before fitting, and a bad state in
//! [`from_state`]. A singular covariance is handled by the pseudo-inverse cut-off; a class with a
//! single fit box works; a class with no (correctly classified) fit box is skipped.
//!
//! # Deliberate differences from Oodeel 0.4
//!
//! - **No input perturbation** anywhere (box sets carry no image or gradient): `odin` is
//!   temperature scaling only; `mahalanobis`, `rmds`, `she` equal Oodeel with `eps=0` (Oodeel's
//!   default is `eps=0.0014`; its ODIN cannot even run with `eps=0`).
//! - **f64 statistics and stable forms** (Oodeel: float32 on device). Entropy never gives
//!   `0·log 0 = NaN`; MSP and GEN use `1 − p = −expm1(l − logsumexp)`.
//! - **KNN returns the distance, not its square**, and `score_in_sample` is leave-one-out where
//!   Oodeel counts a fit box as its own neighbour (and uses `k = max(nearest, 2)`); k is clamped to
//!   a group's bank size.
//! - **ViM's `princ_dims` ratio is the count of components needed** (Oodeel takes one fewer); the
//!   `pseudo` origin `−pinv(W) b` works (dead code in Oodeel); α ≤ 0 is a fit error.
//! - **SHE skips classes with no correctly classified fit box** (Oodeel: NaN mean, NaN scores);
//!   `class_select=predicted` offers the paper's definition.
//! - **Mahalanobis/RMDS**: explicit pinv cut-off `pinv_rtol` (default `D·ε_f32`, torch's float32
//!   default), row-wise quadratic forms instead of a `B×B` matrix.
//! - **Gram**: a predicted class unseen at fit uses the level's pooled bounds (Oodeel: `KeyError`);
//!   closed-form statistic for vector features.
//! - **ASH/SCALE**: an undefined or overflowing scale (`Σ f·mask ≤ 0`, signed features) is an error
//!   naming the box (Oodeel: inf/NaN); percentiles by linear interpolation (torch's).
//! - **Parameters**: unknown names are errors (Oodeel's `MLS` drops its `**kwargs`); GEN's
//!   `gamma ∈ (0, 1]` is checked; extra parameters `per_level`, `pinv_rtol`, `class_select`,
//!   `dice_percentile` (DICE and JointEnergy are not in Oodeel).
//! - **Fitted scorers are plain values**: refitting replaces the statistics; no hooks on a model.
//!
//! Parity with Oodeel 0.4 on the same features/logits is tested in `tests/ood_parity.rs` against
//! `tests/fixtures/oodeel/` (made by `tests/fixtures/export_oodeel_reference.py`).

mod common;
pub mod gram;
pub mod knn;
mod linalg;
pub mod logits;
pub mod mahalanobis;
mod registry;
pub mod shaping;
pub mod she;
pub mod vim;

#[cfg(test)]
mod tests;

pub use registry::{build, from_state, kinds, param_names};

use crate::data::boxset::BoxSet;
use crate::error::Result;

pub trait Scorer: Send + Sync {
    /// Registry name, e.g. "energy", "mahalanobis".
    fn kind(&self) -> &'static str;
    /// Fit on ID boxes. Fit labels: `label` where present and >= 0, else `class_id`. Uses `level`
    /// (per-level fits for YOLO: each level has its own head and feature statistics; a box set
    /// without `level` is one group) and `head` when the method needs W, b.
    fn fit(&mut self, boxes: &BoxSet) -> Result<()>;
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
