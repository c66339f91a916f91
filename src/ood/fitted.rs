//! A fitted scorer with its calibration, as stored in a scorer file, and what it says per box.
//!
//! The scorer file is a safetensors file (loading it never runs code): the scorer's state
//! tensors under `scorer.<name>`, the sorted calibration scores under `calibration.pooled` and
//! `calibration.class.<c>`, and a metadata entry `oodbox` holding JSON: format version, scorer
//! kind, shaping and parameters, feature and logit dimensions, class names, the model
//! fingerprint, the default alpha and the calibration summary.

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::calibration::{minimum_calibration_size, Calibrator, ClassCalibration};
use super::{build, from_state, Scorer, ScorerState};
use crate::data::boxset::BoxSet;
use crate::detect::DetectOptions;
use crate::error::{Error, Result};

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
    detect_options: Option<DetectOptions>,
}

/// Settings of a fit.
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// Default significance level for `is_ood`.
    pub alpha: f64,
    /// A class with fewer calibration boxes than this uses the pooled calibration set.
    pub min_class_boxes: usize,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            alpha: 0.05,
            min_class_boxes: 100,
        }
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

fn check_alpha(alpha: f64) -> Result<()> {
    if alpha > 0.0 && alpha < 1.0 {
        Ok(())
    } else {
        Err(Error::Calibration(format!(
            "alpha must lie in (0, 1), got {alpha}"
        )))
    }
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
        scorer.fit(fit)?;
        if calibration.len() < minimum_calibration_size(options.alpha) {
            return Err(Error::Calibration(format!(
                "{} calibration boxes: at least {} are needed before any box can be flagged at alpha = {}",
                calibration.len(),
                minimum_calibration_size(options.alpha),
                options.alpha
            )));
        }
        if calibration.feature_dim != fit.feature_dim || calibration.num_classes != fit.num_classes
        {
            return Err(Error::Calibration(format!(
                "calibration boxes are {}-d with {} classes, fit boxes {}-d with {} classes",
                calibration.feature_dim, calibration.num_classes, fit.feature_dim, fit.num_classes
            )));
        }
        let scores = scorer.score(calibration)?;
        let classes: Vec<usize> = calibration.class_id.iter().map(|&c| c as usize).collect();
        let calibrator =
            Calibrator::fit(&scores, &classes, fit.num_classes, options.min_class_boxes)?;
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
            calibration: calibrator.summary(Some(&classes)),
            fit_boxes: fit.len(),
            calibration_boxes: calibration.len(),
            source: fit.source.clone(),
            detect_options: fit.detect_options.clone(),
        };
        Ok(FittedScorer {
            scorer,
            calibrator,
            header,
        })
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
    pub fn detect_options(&self) -> Option<&DetectOptions> {
        self.header.detect_options.as_ref()
    }

    pub fn calibration_summary(&self) -> &[ClassCalibration] {
        &self.header.calibration
    }

    /// Refuses boxes from another model: other dimensions, or another weights fingerprint.
    pub fn check_compatible(&self, boxes: &BoxSet) -> Result<()> {
        let h = &self.header;
        let mismatch = |reason: String| Error::Scorer {
            scorer: self.name(),
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
        self.check_compatible(boxes)?;
        let scores = self.scorer.score(boxes)?;
        Ok(scores
            .iter()
            .zip(&boxes.class_id)
            .map(|(&score, &class)| {
                let p_value = self.calibrator.p_value(score, class as usize);
                BoxOod {
                    score,
                    p_value,
                    confidence: 1.0 - p_value,
                    is_ood: p_value <= alpha,
                }
            })
            .collect())
    }

    /// Raw scores only (no calibration), e.g. for metrics.
    pub fn raw_scores(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        self.check_compatible(boxes)?;
        self.scorer.score(boxes)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let state = self.scorer.to_state();
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = state
            .tensors
            .iter()
            .map(|(name, shape, data)| (format!("scorer.{name}"), shape.clone(), f64_bytes(data)))
            .collect();
        let pooled = self.calibrator.pooled();
        tensors.push((
            "calibration.pooled".into(),
            vec![pooled.len()],
            f64_bytes(pooled),
        ));
        for (c, own) in self.calibrator.per_class().iter().enumerate() {
            if let Some(own) = own {
                tensors.push((
                    format!("calibration.class.{c}"),
                    vec![own.len()],
                    f64_bytes(own),
                ));
            }
        }
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(Dtype::F64, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| invalid(path, format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let header = serde_json::to_string(&self.header).expect("the header serialises");
        let bytes =
            safetensors::serialize(views, Some(HashMap::from([("oodbox".to_string(), header)])))
                .map_err(|e| invalid(path, e.to_string()))?;
        crate::data::write_atomically(path, &bytes)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let not_safetensors = |reason: String| Error::NotSafetensors {
            path: path.to_path_buf(),
            reason,
        };
        let file = SafeTensors::deserialize(&bytes).map_err(|e| not_safetensors(e.to_string()))?;
        let (_, meta) =
            SafeTensors::read_metadata(&bytes).map_err(|e| not_safetensors(e.to_string()))?;
        let json = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("oodbox"))
            .ok_or_else(|| {
                invalid(
                    path,
                    "not an oodbox scorer file (no `oodbox` metadata; is it a model or a box set?)",
                )
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
        // A file oodbox writes summarises every class; the check also keeps an absurd
        // `num_classes` from sizing the per-class table below.
        if header.calibration.len() != header.num_classes {
            return Err(invalid(
                path,
                format!(
                    "the header says {} classes but summarises the calibration of {}",
                    header.num_classes,
                    header.calibration.len()
                ),
            ));
        }
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>)> {
            let t = file
                .tensor(name)
                .map_err(|e| invalid(path, format!("tensor `{name}`: {e}")))?;
            if t.dtype() != Dtype::F64 {
                return Err(invalid(
                    path,
                    format!("tensor `{name}` is {:?}, expected F64", t.dtype()),
                ));
            }
            let data = t
                .data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            Ok((t.shape().to_vec(), data))
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
        let calibrator = Calibrator::from_parts(pooled, per_class, header.min_class_boxes)
            .map_err(|e| invalid(path, e.to_string()))?;
        Ok(FittedScorer {
            scorer,
            calibrator,
            header,
        })
    }
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
