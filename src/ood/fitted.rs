//! A fitted scorer with its calibration, as stored in a scorer file, and what it says per box.
//!
//! The scorer file is a safetensors file (loading it never runs code): the scorer's state
//! tensors under `scorer.<name>`, the sorted calibration scores under `calibration.pooled` and
//! `calibration.class.<c>`, and a metadata entry `oodbox` holding JSON: format version, scorer
//! kind, shaping and parameters, the feature sources and dimension, the logit dimension, class
//! names, the model fingerprint, the default alpha and the calibration summary. A file without
//! `feature_sources` (written before they existed) reads the `cls` feature. A file fitted with a
//! tail ([`FitOptions::tail`]) holds `tail` (its setting and the pooled set's fit) and each
//! class's tail in its calibration summary; the p-values beyond the calibration range use those
//! stored parameters.

use safetensors::tensor::Dtype;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::calibration::{
    flagged_share_spread, minimum_calibration_size, Calibrator, ClassCalibration, PValue, Tails,
};
use super::tail::{TailOptions, TailStatus};
use super::{build, from_state, Scorer, ScorerState};
use crate::core::kind::FileKind;
use crate::core::settings::UsedOptions;
use crate::core::sources::FeatureSources;
use crate::core::tensor_file::{self, f64_bytes, Entry, TensorFile};
use crate::data::boxset::BoxSet;
use crate::error::{Error, Result, ScorerFault};

pub const FORMAT: &str = "oodbox-scorer";
pub const VERSION: u32 = 1;

/// The OOD verdict on one box.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BoxOod {
    /// Raw scorer output; higher means more OOD.
    pub score: f64,
    /// Conformal p-value against ID calibration boxes of the same predicted class.
    pub p_value: f64,
    /// `1 − p_value`: the share of calibration boxes that looked less unusual.
    pub confidence: f64,
    /// `p_value ≤ alpha`.
    pub is_ood: bool,
    /// The score lies beyond the largest calibration score and its p-value comes from the
    /// scorer's generalized Pareto tail: it holds under that tail model, not by exchangeability
    /// alone. Written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub p_value_extrapolated: bool,
}

/// The tail setting of a scorer file and the pooled calibration set's tail fit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailSummary {
    #[serde(flatten)]
    pub options: TailOptions,
    pub pooled: TailStatus,
}

impl TailSummary {
    /// The calibrator's tail setting and pooled fit, when it has a tail.
    fn of(calibrator: &Calibrator) -> Option<TailSummary> {
        calibrator.tails().map(|t| TailSummary {
            options: t.options,
            pooled: t.pooled.clone(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    kind: String,
    shaping: Option<String>,
    params: BTreeMap<String, serde_json::Value>,
    feature_dim: usize,
    num_classes: usize,
    class_names: Vec<String>,
    fingerprint: String,
    alpha: f64,
    min_class_boxes: usize,
    calibration: Vec<ClassCalibration>,
    fit_boxes: usize,
    calibration_boxes: usize,
    source: String,
    /// How the fit boxes were detected, when known.
    #[serde(default)]
    detect_options: Option<UsedOptions>,
    /// What the scorer's features are made of.
    #[serde(default)]
    feature_sources: FeatureSources,
    /// With a tail: its setting and the pooled fit (each class's is in `calibration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail: Option<TailSummary>,
    /// The `source` of the outlier boxes the scorer was trained against ([`FitOptions::outliers`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outliers: Option<String>,
}

/// Settings of a fit. New settings may be added (hence `#[non_exhaustive]`): start from
/// `FitOptions::default()` and set the fields to change.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FitOptions {
    /// Default significance level for `is_ood`.
    pub alpha: f64,
    /// A class with fewer calibration boxes than this uses the pooled calibration set.
    pub min_class_boxes: usize,
    /// Extrapolate p-values beyond the largest calibration score with a generalized Pareto
    /// tail ([`super::tail`]); `None`: plain conformal p-values.
    pub tail: Option<TailOptions>,
    /// Outlier boxes to train against, for the scorers that take them (`safe` with
    /// `surrogate=fgsm`: the FGSM boxes of the fit images, from
    /// [`crate::pipeline::extraction::extract_with_fgsm`]); of the fit boxes' model and features.
    pub outliers: Option<BoxSet>,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            alpha: 0.05,
            min_class_boxes: 100,
            tail: None,
            outliers: None,
        }
    }
}

/// Outlier boxes must come from the fit boxes' model, with their features and classes.
fn check_outliers(kind: &str, fit: &BoxSet, outliers: &BoxSet) -> Result<()> {
    let mismatch = if outliers.fingerprint != fit.fingerprint {
        Some(format!(
            "are of the model {}, the fit boxes of {}",
            outliers.fingerprint, fit.fingerprint
        ))
    } else if outliers.feature_sources != fit.feature_sources {
        Some(format!(
            "hold features {}, the fit boxes {}",
            outliers.feature_sources, fit.feature_sources
        ))
    } else if outliers.feature_dim != fit.feature_dim || outliers.num_classes != fit.num_classes {
        Some(format!(
            "are {}-d with {} classes, the fit boxes {}-d with {} classes",
            outliers.feature_dim, outliers.num_classes, fit.feature_dim, fit.num_classes
        ))
    } else {
        None
    };
    match mismatch {
        Some(m) => Err(Error::Scorer {
            scorer: kind.to_string(),
            fault: ScorerFault::Mismatch,
            reason: format!("the outlier boxes {m}"),
        }),
        None => Ok(()),
    }
}

pub struct FittedScorer {
    scorer: Box<dyn Scorer>,
    calibrator: Calibrator,
    header: Header,
}

fn invalid(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadInput {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Below this many fit boxes, a class's own statistics (mean, quantile bounds, pattern) are too
/// noisy to put its scores on the scale of the other classes' (the expected squared distance of
/// a class's boxes to a mean from `n` boxes is `1 + 1/n` times the true one: 5% above at 20).
pub const MIN_CLASS_FIT_BOXES: usize = 20;

fn check_alpha(alpha: f64) -> Result<()> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(Error::Calibration(format!(
            "alpha must lie in (0, 1), got {alpha}"
        )))
    }
}

impl Header {
    /// What a file can get wrong beyond its tensors: settings out of range, class names of
    /// another count than the classes.
    fn check(&self) -> std::result::Result<(), String> {
        check_alpha(self.alpha).map_err(|e| e.to_string())?;
        // A file oodbox writes summarises every class; the check also keeps an absurd
        // `num_classes` from sizing the per-class table.
        if self.calibration.len() != self.num_classes {
            return Err(format!(
                "the header says {} classes but summarises the calibration of {}",
                self.num_classes,
                self.calibration.len()
            ));
        }
        if !self.class_names.is_empty() && self.class_names.len() != self.num_classes {
            return Err(format!(
                "{} class names for {} classes",
                self.class_names.len(),
                self.num_classes
            ));
        }
        if let Some(options) = &self.detect_options {
            options
                .check()
                .map_err(|e| format!("detect_options: {e}"))?;
        }
        Ok(())
    }
}

/// Scores `calibration` with a fitted `scorer` and builds its calibrator (with the tail of
/// `options`) and the per-class summary.
fn calibrate(
    scorer: &dyn Scorer,
    calibration: &BoxSet,
    num_classes: usize,
    options: &FitOptions,
) -> Result<(Calibrator, Vec<ClassCalibration>)> {
    if calibration.len() < minimum_calibration_size(options.alpha) {
        return Err(Error::Calibration(format!(
            "{} calibration boxes: at least {} are needed before any box can be flagged at alpha = {}",
            calibration.len(),
            minimum_calibration_size(options.alpha),
            options.alpha
        )));
    }
    let scores = scorer.score(calibration)?;
    let classes = &calibration.class_id;
    let mut calibrator = Calibrator::fit(&scores, classes, num_classes, options.min_class_boxes)?;
    if let Some(tail) = options.tail {
        calibrator = calibrator.with_tail(tail)?;
    }
    let summary = calibrator.summary(Some(classes));
    Ok((calibrator, summary))
}

impl FittedScorer {
    /// Fits `kind` on `fit` and calibrates it on `calibration`; both must be ID boxes of the
    /// same model, and no box may be in both.
    pub fn fit(
        kind: &str,
        shaping: Option<&str>,
        params: &[(String, String)],
        fit: &BoxSet,
        calibration: &BoxSet,
        options: &FitOptions,
    ) -> Result<Self> {
        check_alpha(options.alpha)?;
        let mut scorer = build(kind, shaping, params)?;
        match &options.outliers {
            Some(outliers) => {
                check_outliers(kind, fit, outliers)?;
                scorer.fit_with_outliers(fit, outliers)?;
            }
            None => scorer.fit(fit)?,
        }
        if calibration.feature_sources != fit.feature_sources {
            return Err(Error::Calibration(format!(
                "calibration boxes hold features {}, fit boxes {}",
                calibration.feature_sources, fit.feature_sources
            )));
        }
        if calibration.feature_dim != fit.feature_dim || calibration.num_classes != fit.num_classes
        {
            return Err(Error::Calibration(format!(
                "calibration boxes are {}-d with {} classes, fit boxes {}-d with {} classes",
                calibration.feature_dim, calibration.num_classes, fit.feature_dim, fit.num_classes
            )));
        }
        let calibration = scorer.reserve_calibration(calibration)?;
        let (calibrator, mut calibration_summary) =
            calibrate(scorer.as_ref(), &calibration, fit.num_classes, options)?;
        for label in scorer.fit_classes(fit).unwrap_or_default() {
            if let Some(class) = usize::try_from(label)
                .ok()
                .and_then(|c| calibration_summary.get_mut(c))
            {
                class.fit_boxes += 1;
            }
        }
        let state = scorer.to_state();
        let header = Header {
            format: FORMAT.into(),
            version: VERSION,
            kind: state.kind.clone(),
            shaping: state.shaping.clone(),
            params: state.params.clone(),
            feature_dim: fit.feature_dim,
            num_classes: fit.num_classes,
            class_names: fit.class_names.clone(),
            fingerprint: fit.fingerprint.clone(),
            alpha: options.alpha,
            min_class_boxes: options.min_class_boxes,
            calibration: calibration_summary,
            fit_boxes: fit.len(),
            calibration_boxes: calibration.len(),
            source: fit.source.clone(),
            detect_options: fit.detect_options.clone(),
            feature_sources: fit.feature_sources.clone(),
            tail: TailSummary::of(&calibrator),
            outliers: options.outliers.as_ref().map(|o| o.source.clone()),
        };
        Ok(FittedScorer {
            scorer,
            calibrator,
            header,
        })
    }

    /// Calibrates the fitted scorer anew on `calibration`, ID boxes of its model and features
    /// that it was not fitted on: for new conditions (another camera, lighting), or for more
    /// calibration boxes. The fit, alpha, the per-class minimum and the tail setting stay.
    pub fn recalibrate(&mut self, calibration: &BoxSet) -> Result<()> {
        let calibration = self.with_sources(calibration)?;
        self.check_compatible(&calibration)?;
        let h = &self.header;
        let options = FitOptions {
            alpha: h.alpha,
            min_class_boxes: h.min_class_boxes,
            tail: h.tail.as_ref().map(|t| t.options),
            outliers: None,
        };
        let (calibrator, mut summary) =
            calibrate(self.scorer.as_ref(), &calibration, h.num_classes, &options)?;
        for (class, old) in summary.iter_mut().zip(&h.calibration) {
            class.fit_boxes = old.fit_boxes;
        }
        self.header.tail = TailSummary::of(&calibrator);
        self.header.calibration = summary;
        self.header.calibration_boxes = calibration.len();
        self.calibrator = calibrator;
        Ok(())
    }

    /// A copy, rebuilt from the scorer's state as loading its file would (kinds are not `Clone`).
    pub fn try_clone(&self) -> Result<Self> {
        Ok(FittedScorer {
            scorer: from_state(&self.scorer.to_state())?,
            calibrator: self.calibrator.clone(),
            header: self.header.clone(),
        })
    }

    /// One standard deviation of the share of ID boxes flagged at alpha from one calibration
    /// set to another of this one's per-class sizes ([`flagged_share_spread`]).
    pub fn flagged_share_spread(&self) -> f64 {
        flagged_share_spread(&self.header.calibration, self.header.alpha)
    }

    pub fn kind(&self) -> &str {
        &self.header.kind
    }

    /// The scorer's name with its shaping, e.g. `energy+react`.
    pub fn name(&self) -> String {
        match &self.header.shaping {
            Some(s) => format!("{}+{s}", self.header.kind),
            None => self.header.kind.clone(),
        }
    }

    pub fn alpha(&self) -> f64 {
        self.header.alpha
    }

    pub fn class_names(&self) -> &[String] {
        &self.header.class_names
    }

    pub fn fingerprint(&self) -> &str {
        &self.header.fingerprint
    }

    /// How the fit boxes were detected: detect the same way for the p-values to hold.
    pub fn detect_options(&self) -> Option<&UsedOptions> {
        self.header.detect_options.as_ref()
    }

    /// The feature sources the scorer reads: a model must have them, boxes must carry them.
    pub fn feature_sources(&self) -> &FeatureSources {
        &self.header.feature_sources
    }

    /// `boxes` with the scorer's feature sources as their features (chosen among those they
    /// carry when they hold others).
    fn with_sources<'a>(&self, boxes: &'a BoxSet) -> Result<Cow<'a, BoxSet>> {
        boxes
            .view(&self.header.feature_sources)
            .map_err(|e| Error::Scorer {
                scorer: self.name(),
                fault: ScorerFault::Mismatch,
                reason: e.to_string(),
            })
    }

    pub fn calibration_summary(&self) -> &[ClassCalibration] {
        &self.header.calibration
    }

    /// With a tail: its setting and the pooled calibration set's fit.
    pub fn tail(&self) -> Option<&TailSummary> {
        self.header.tail.as_ref()
    }

    /// The `source` of the outlier boxes it was trained against, if any.
    pub fn outliers_source(&self) -> Option<&str> {
        self.header.outliers.as_deref()
    }

    /// Classes that a class-conditional scorer fitted on fewer than [`MIN_CLASS_FIT_BOXES`]
    /// boxes (but some) and that are calibrated with all classes pooled, for lack of calibration
    /// boxes of their own. Their scores rest on statistics of a few boxes, on another scale than
    /// the pooled calibration scores (a class mean from one box doubles the expected squared
    /// Mahalanobis distance of the class's other boxes): their ID boxes may be flagged far more
    /// often than alpha. Empty for scorers that do not condition on the class, and for files
    /// without fit counts.
    pub fn thin_classes(&self) -> Vec<&ClassCalibration> {
        self.header
            .calibration
            .iter()
            .filter(|c| c.pooled_fallback && c.fit_boxes > 0 && c.fit_boxes < MIN_CLASS_FIT_BOXES)
            .collect()
    }

    /// Refuses boxes from another model: other dimensions, or another weights fingerprint.
    pub fn check_compatible(&self, boxes: &BoxSet) -> Result<()> {
        let h = &self.header;
        let mismatch = |reason: String| Error::Scorer {
            scorer: self.name(),
            fault: ScorerFault::Mismatch,
            reason,
        };
        if boxes.feature_dim != h.feature_dim || boxes.num_classes != h.num_classes {
            return Err(mismatch(format!(
                "fitted on {}-d features with {} classes, given {}-d features with {} classes \
                 (boxes from another model?)",
                h.feature_dim, h.num_classes, boxes.feature_dim, boxes.num_classes
            )));
        }
        if !h.fingerprint.is_empty()
            && !boxes.fingerprint.is_empty()
            && h.fingerprint != boxes.fingerprint
        {
            return Err(mismatch(format!(
                "fitted for model {}, given boxes of model {}",
                h.fingerprint, boxes.fingerprint
            )));
        }
        Ok(())
    }

    /// Raw scores, p-values and verdicts for every box, in input order.
    pub fn score(&self, boxes: &BoxSet, alpha: Option<f64>) -> Result<Vec<BoxOod>> {
        let alpha = alpha.unwrap_or(self.header.alpha);
        check_alpha(alpha)?;
        let boxes = self.with_sources(boxes)?;
        self.check_compatible(&boxes)?;
        let scores = self.scorer.score(&boxes)?;
        Ok(scores
            .iter()
            .zip(&boxes.class_id)
            .map(|(&score, &class)| {
                let p = self.calibrator.p_value_with_source(score, class);
                BoxOod {
                    score,
                    p_value: p.p,
                    confidence: 1.0 - p.p,
                    is_ood: p.p <= alpha,
                    p_value_extrapolated: p.extrapolated,
                }
            })
            .collect())
    }

    /// The p-value of a raw score of a box of class `class_id`, and whether the tail gave it.
    pub fn p_value_of_score(&self, score: f64, class_id: usize) -> PValue {
        self.calibrator.p_value_with_source(score, class_id)
    }

    /// Raw scores only (no calibration), e.g. for metrics.
    pub fn raw_scores(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        let boxes = self.with_sources(boxes)?;
        self.check_compatible(&boxes)?;
        self.scorer.score(&boxes)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let state = self.scorer.to_state();
        let entry = |name: String, shape: Vec<usize>, data: &[f64]| -> Entry {
            (name, Dtype::F64, shape, f64_bytes(data))
        };
        let mut tensors: Vec<Entry> = state
            .tensors
            .iter()
            .map(|(name, shape, data)| entry(format!("scorer.{name}"), shape.clone(), data))
            .collect();
        let pooled = self.calibrator.pooled();
        tensors.push(entry(
            "calibration.pooled".into(),
            vec![pooled.len()],
            pooled,
        ));
        for (c, own) in self.calibrator.per_class().iter().enumerate() {
            if let Some(own) = own {
                tensors.push(entry(
                    format!("calibration.class.{c}"),
                    vec![own.len()],
                    own,
                ));
            }
        }
        let header = serde_json::to_string(&self.header).expect("the header serialises");
        tensor_file::write(
            path,
            &tensors,
            HashMap::from([("oodbox".to_string(), header)]),
        )
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let file = TensorFile::parse(path, &bytes, FileKind::Scorer)?;
        let json =
            file.metadata()
                .get("oodbox")
                .ok_or_else(|| match crate::core::kind::sniff(path) {
                    Some(found) if found != FileKind::Scorer => Error::WrongKind {
                        path: path.to_path_buf(),
                        found,
                        expected: FileKind::Scorer,
                    },
                    _ => invalid(path, "not an oodbox scorer file (no `oodbox` metadata)"),
                })?;
        let header: Header = serde_json::from_str(json)
            .map_err(|e| invalid(path, format!("unreadable scorer metadata: {e}")))?;
        if header.format != FORMAT || header.version != VERSION {
            return Err(invalid(
                path,
                format!(
                    "scorer file format {} v{}; this oodbox reads {FORMAT} v{VERSION}",
                    header.format, header.version
                ),
            ));
        }
        header.check().map_err(|reason| invalid(path, reason))?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            file.f64(name)?.ok_or_else(|| {
                invalid(
                    path,
                    format!(
                        "missing tensor `{name}`; the file is damaged or was not written by oodbox"
                    ),
                )
            })
        };
        let mut names: Vec<String> = file.names().into_iter().map(String::from).collect();
        names.sort();
        let mut tensors = Vec::new();
        for name in names.iter().filter_map(|n| n.strip_prefix("scorer.")) {
            let (shape, data) = read(&format!("scorer.{name}"))?;
            tensors.push((name.to_string(), shape, data));
        }
        let state = ScorerState {
            kind: header.kind.clone(),
            shaping: header.shaping.clone(),
            params: header.params.clone(),
            tensors,
        };
        let scorer = from_state(&state).map_err(|e| invalid(path, e.to_string()))?;
        let (_, pooled) = read("calibration.pooled")?;
        let per_class = (0..header.num_classes)
            .map(|c| {
                let name = format!("calibration.class.{c}");
                if names.contains(&name) {
                    read(&name).map(|(_, v)| Some(v))
                } else {
                    Ok(None)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let mut calibrator = Calibrator::from_parts(pooled, per_class, header.min_class_boxes)
            .map_err(|e| invalid(path, e.to_string()))?;
        if let Some(tail) = &header.tail {
            let tails = stored_tails(tail, &header.calibration, &calibrator)
                .map_err(|reason| invalid(path, reason))?;
            calibrator = calibrator
                .with_tails(tails)
                .map_err(|e| invalid(path, e.to_string()))?;
        }
        Ok(FittedScorer {
            scorer,
            calibrator,
            header,
        })
    }
}

/// The tails a scorer file stores: the pooled one in `tail`, each class with its own
/// calibration scores its own in its summary.
fn stored_tails(
    tail: &TailSummary,
    summary: &[ClassCalibration],
    calibrator: &Calibrator,
) -> std::result::Result<Tails, String> {
    let per_class = (calibrator.per_class().iter().zip(summary))
        .map(|(own, class)| match (own, &class.tail) {
            (None, _) => Ok(None),
            (Some(_), Some(t)) => Ok(Some(t.clone())),
            (Some(_), None) => Err(format!(
                "the file has a tail setting but no tail for class {}",
                class.class_id
            )),
        })
        .collect::<std::result::Result<_, _>>()?;
    Ok(Tails {
        options: tail.options,
        pooled: tail.pooled.clone(),
        per_class,
    })
}
