//! Logit scorers: MSP, MaxLogit, Energy, Entropy, GEN, ODIN (temperature only) and the
//! sigmoid-aware JointEnergy, optionally behind an activation [`Shaping`].
//!
//! All are computed from the box's logits in f64 with stable forms (`logsumexp` with the max
//! subtracted, `1 − p` as `−expm1(l − logsumexp)`). Scores, higher = more OOD, with `p = softmax(l)`:
//!
//! | kind | score | parameters (Oodeel 0.4 defaults) |
//! |---|---|---|
//! | `msp` | `−max_c p_c` | — |
//! | `maxlogit` | `−max_c l_c` (Oodeel `MLS`) | — |
//! | `energy` | `−logsumexp(l)` | — |
//! | `entropy` | `−Σ p_c ln p_c`, as `logsumexp(l) − Σ p_c l_c` | — |
//! | `gen` | `Σ_{top-k p} p^γ (1−p)^γ` | `gamma=0.1` in (0, 1], `k=100` (all classes when k ≥ C) |
//! | `odin` | `−max_c softmax(l/T)_c` | `temperature=1000` |
//! | `joint_energy` | `−Σ_c softplus(l_c)` (Wang et al., NeurIPS'21) | — |
//!
//! **ODIN is temperature scaling only.** ODIN's input perturbation `x̃ = x − ε·sign(∇ₓ CE)` needs
//! the image and gradients through the detector; a box set has neither, so it is not done
//! (equivalent to Oodeel's `ODIN(eps=0)`, which Oodeel itself cannot run).
//!
//! **Sigmoid heads (YOLO).** YOLO's classes are independent sigmoids: softmax-based scores (MSP,
//! energy, entropy, GEN, ODIN) have no likelihood meaning there. `joint_energy` sums the binary
//! energies `softplus(l_c)` of the {c, not c} pairs and is the recommended energy for YOLO;
//! `maxlogit` is rank-equivalent to `−max_c σ(l_c)`.
//!
//! **Per level.** Without shaping these scorers have no fit statistics; `fit` records the class
//! count (and feature dimension) so that a mismatching box set is rejected at score time. With a
//! shaping, see [`super::shaping`] for what is fitted per level.
//!
//! **Differences from Oodeel 0.4:** all in one place, `docs/scorers.md` ("Differences from
//! Oodeel 0.4").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::{
    check_boxes, check_dim, check_fit_set, logits_f64, not_fitted, TensorMap, TensorsOut, Uses,
};
use super::linalg::logsumexp;
use super::params::{infos, to_json, NoParams, ParamDoc, ParamSet};
use super::registry::KindEntry;
use super::shaping::{FittedShaping, Shaping};
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::Result;

const LOGITS: Uses = Uses {
    features: false,
    logits: true,
};

/// A logit kind's table entry: `method` from its typed parameters.
macro_rules! logit_kind {
    ($name:literal, $summary:literal, $params:ty, $method:expr) => {
        KindEntry {
            name: $name,
            summary: $summary,
            inputs: LOGITS,
            shapeable: true,
            params: infos::<$params>,
            build: |p, shaping| {
                let method: fn($params) -> LogitMethod = $method;
                Ok(Box::new(LogitScorer::new(method(p.typed()?), shaping)))
            },
        }
    };
}

pub(crate) const MSP: KindEntry =
    logit_kind!("msp", "`−max softmax(l)`", NoParams, |_| LogitMethod::Msp);
pub(crate) const MAXLOGIT: KindEntry =
    logit_kind!("maxlogit", "`−max l` (Oodeel `MLS`)", NoParams, |_| {
        LogitMethod::MaxLogit
    });
pub(crate) const ENERGY: KindEntry =
    logit_kind!("energy", "`−logsumexp(l)`", NoParams, |_| LogitMethod::Energy);
pub(crate) const ENTROPY: KindEntry =
    logit_kind!("entropy", "`−Σ p ln p`, `p = softmax(l)`", NoParams, |_| {
        LogitMethod::Entropy
    });
pub(crate) const GEN: KindEntry = logit_kind!(
    "gen",
    "`Σ_{top k} p^γ (1−p)^γ` (GEN)",
    GenParams,
    LogitMethod::Gen
);
pub(crate) const ODIN: KindEntry = logit_kind!(
    "odin",
    "`−max softmax(l/T)` (temperature only, no input perturbation)",
    OdinParams,
    LogitMethod::Odin
);
pub(crate) const JOINT_ENERGY: KindEntry = logit_kind!(
    "joint_energy",
    "`−Σ softplus(l_c)` (for sigmoid heads: YOLO)",
    NoParams,
    |_| LogitMethod::JointEnergy
);

/// GEN's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenParams {
    pub gamma: f64,
    pub k: usize,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams { gamma: 0.1, k: 100 }
    }
}

impl ParamSet for GenParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "gamma",
            expected: "a number in (0, 1]",
            doc: "GEN's exponent γ",
        },
        ParamDoc {
            name: "k",
            expected: "an integer >= 1",
            doc: "the number of top classes summed (all classes when k >= C)",
        },
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        if !(self.gamma > 0.0 && self.gamma <= 1.0) {
            Some("gamma")
        } else if self.k < 1 {
            Some("k")
        } else {
            None
        }
    }
}

/// ODIN's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OdinParams {
    pub temperature: f64,
}

impl Default for OdinParams {
    fn default() -> Self {
        OdinParams {
            temperature: 1000.0,
        }
    }
}

impl ParamSet for OdinParams {
    const DOCS: &'static [ParamDoc] = &[ParamDoc {
        name: "temperature",
        expected: "a number > 0",
        doc: "the softmax temperature T",
    }];
    fn out_of_range(&self) -> Option<&'static str> {
        (!(self.temperature > 0.0 && self.temperature.is_finite())).then_some("temperature")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum LogitMethod {
    Msp,
    MaxLogit,
    Energy,
    Entropy,
    Gen(GenParams),
    Odin(OdinParams),
    JointEnergy,
}

impl LogitMethod {
    pub fn kind(&self) -> &'static str {
        match self {
            LogitMethod::Msp => "msp",
            LogitMethod::MaxLogit => "maxlogit",
            LogitMethod::Energy => "energy",
            LogitMethod::Entropy => "entropy",
            LogitMethod::Gen(_) => "gen",
            LogitMethod::Odin(_) => "odin",
            LogitMethod::JointEnergy => "joint_energy",
        }
    }

    fn params(&self, out: &mut BTreeMap<String, serde_json::Value>) {
        match self {
            LogitMethod::Gen(p) => to_json(p, out),
            LogitMethod::Odin(p) => to_json(p, out),
            _ => {}
        }
    }

    /// The score of one logit row (higher = more OOD).
    pub fn score(&self, l: &[f64]) -> f64 {
        let max = || l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        match self {
            LogitMethod::Msp => -(max() - logsumexp(l)).exp(),
            LogitMethod::MaxLogit => -max(),
            LogitMethod::Energy => -logsumexp(l),
            LogitMethod::Entropy => {
                let m = max();
                let shifted: Vec<f64> = l.iter().map(|v| v - m).collect();
                let lse = logsumexp(&shifted);
                let mean_l: f64 = shifted.iter().map(|v| (v - lse).exp() * v).sum();
                (lse - mean_l).max(0.0)
            }
            LogitMethod::Gen(GenParams { gamma, k }) => {
                let lse = logsumexp(l);
                let mut sorted = l.to_vec();
                sorted.sort_unstable_by(|a, b| b.total_cmp(a));
                sorted
                    .iter()
                    .take(*k)
                    .map(|&v| {
                        let p = (v - lse).exp();
                        let q = -(v - lse).exp_m1();
                        (p * q.max(0.0)).powf(*gamma)
                    })
                    .sum()
            }
            LogitMethod::Odin(OdinParams { temperature }) => {
                let scaled: Vec<f64> = l.iter().map(|v| v / temperature).collect();
                let m = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                -(m - logsumexp(&scaled)).exp()
            }
            LogitMethod::JointEnergy => -l
                .iter()
                .map(|&v| v.max(0.0) + (-v.abs()).exp().ln_1p())
                .sum::<f64>(),
        }
    }
}

/// A logit scorer, with an optional activation shaping.
#[derive(Clone, Debug)]
pub struct LogitScorer {
    pub method: LogitMethod,
    pub shaping: Option<Shaping>,
    fitted: Option<LogitFit>,
}

#[derive(Clone, Debug)]
struct LogitFit {
    classes: usize,
    dim: usize,
    shaping: Option<FittedShaping>,
}

impl LogitScorer {
    pub fn new(method: LogitMethod, shaping: Option<Shaping>) -> Self {
        LogitScorer {
            method,
            shaping,
            fitted: None,
        }
    }

    fn uses(&self) -> Uses {
        Uses {
            features: self.shaping.is_some(),
            logits: true,
        }
    }
}

impl Scorer for LogitScorer {
    fn kind(&self) -> &'static str {
        self.method.kind()
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let kind = self.kind();
        check_fit_set(kind, boxes, self.uses())?;
        let shaping = match &self.shaping {
            Some(s) => Some(s.fit(kind, boxes)?),
            None => None,
        };
        self.fitted = Some(LogitFit {
            classes: boxes.num_classes,
            dim: boxes.feature_dim,
            shaping,
        });
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        let kind = self.kind();
        let fit = self.fitted.as_ref().ok_or_else(|| not_fitted(kind))?;
        check_boxes(kind, boxes, self.uses())?;
        check_dim(kind, "class count", fit.classes, boxes.num_classes)?;
        match (&self.shaping, &fit.shaping) {
            (Some(shaping), Some(fitted)) => {
                check_dim(kind, "feature dimension", fit.dim, boxes.feature_dim)?;
                let logits = shaping.logits(kind, fitted, boxes)?;
                Ok(logits.iter().map(|l| self.method.score(l)).collect())
            }
            _ => Ok((0..boxes.len())
                .map(|i| self.method.score(&logits_f64(boxes, i)))
                .collect()),
        }
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        self.method.params(&mut params);
        if let Some(s) = &self.shaping {
            s.params(&mut params);
        }
        let mut out = TensorsOut::default();
        if let Some(fit) = &self.fitted {
            out.scalar("num_classes", fit.classes as f64);
            out.scalar("feature_dim", fit.dim as f64);
            if let (Some(s), Some(f)) = (&self.shaping, &fit.shaping) {
                f.write(s, &mut out);
            }
        }
        out.into_state(
            self.kind(),
            self.shaping.as_ref().map(|s| s.name().to_string()),
            params,
        )
    }
}

impl ScorerImpl for LogitScorer {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let classes = t.scalar_usize("num_classes")?;
        let dim = t.scalar_usize("feature_dim")?;
        let shaping = match &self.shaping {
            Some(s) => Some(FittedShaping::read(s, t, classes, dim)?),
            None => None,
        };
        self.fitted = Some(LogitFit {
            classes,
            dim,
            shaping,
        });
        Ok(())
    }
}
