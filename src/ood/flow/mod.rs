//! Feature likelihood under a normalizing flow (RealNVP-style; cf. TMNF, Feng et al. CoRL'23,
//! and the feature flows of Kumar et al. CVPR'23), fitted post hoc on ID box features.
//!
//! **Model** (per group): features are standardised per coordinate (`x = (f − m) / s` with the
//! fit set's mean and standard deviation; a constant coordinate keeps `s = 1`), then `blocks`
//! blocks each apply a fixed seeded permutation of the coordinates, an actnorm
//! `(x + b) · exp(a)` initialised from the data (zero mean, unit variance of its input, Glow's
//! init) and an affine coupling: the first ⌊d/2⌋ coordinates `x_a` pass unchanged, the others
//! become `x_b · exp(s) + t` with `(s_raw, t) = MLP(x_a)` (two SiLU hidden layers of `hidden`
//! units, last layer zero at init so each block starts as its actnorm) and the log-scale bounded
//! as `s = 2 tanh(s_raw / 2)`. The base is class-conditional: `z | c ~ N(μ_c, diag σ²)` with a
//! mean per fit class and one diagonal `σ` shared by all classes (initialised from the class
//! means and pooled within-class spread of the initial output). A shared `σ` keeps a class with
//! few fit boxes from getting its own, badly estimated scale (as Mahalanobis ties its
//! covariance); the shared flow body carries each class's shape.
//!
//! **Fit:** maximum likelihood of the standardised features given their fit labels (`label`
//! where ≥ 0, else `class_id`), AdamW (Candle's defaults, weight decay 0.01) on shuffled
//! mini-batches of `batch` for `epochs` epochs, learning rate `lr` with cosine decay to 0, in f32.
//! Seeded (`seed`; each group draws from its own stream): the same boxes and parameters give
//! the same scorer file, byte for byte.
//!
//! **Score:** the negative log-likelihood of the raw feature given the predicted class
//! (`class_id`): `−log p(f | c) = ½‖(z − μ_c)/σ‖² + Σ log σ + (d/2) log 2π − log|det ∂z/∂x| +
//! Σ log s`, evaluated in f64 (the bounded log-scales keep every term finite) by plain loops over
//! the stored weights (plain.rs), not Candle, whose per-operation overhead would dominate the
//! handful of boxes of one image. A predicted class with no fit boxes in the group scores against
//! its best class (the smallest NLL).
//!
//! **Per level (YOLO):** `per_level=true` (default) fits one flow per level; `per_level=false`
//! pools all boxes.

mod net;
mod plain;
#[cfg(test)]
mod tests;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use self::net::{block_shapes, Model, Training, BLOCK_TENSORS, HALF_LN_2PI};
use self::plain::Forward;
use super::common::{distinct, err, fit_labels, gather_features, TensorMap, TensorsOut, Uses};
use super::grouped::{GroupInfo, PerLevel};
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};

pub(crate) const FLOW: KindEntry = KindEntry {
    name: "flow",
    summary: "negative log-likelihood of the feature given `class_id`, under a RealNVP flow with a class-conditional Gaussian base",
    inputs: Flow::USES,
    shapeable: false,
    params: infos::<FlowParams>,
    build: |p, _| Ok(Box::new(Flow::with_params(p.typed()?))),
};

/// The flow's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowParams {
    pub blocks: usize,
    pub hidden: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub seed: u64,
    pub per_level: bool,
}

impl Default for FlowParams {
    fn default() -> Self {
        FlowParams {
            blocks: 4,
            hidden: 128,
            epochs: 15,
            lr: 3e-3,
            batch: 256,
            seed: 0,
            per_level: true,
        }
    }
}

impl ParamSet for FlowParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "blocks",
            expected: "an integer >= 1",
            doc: "coupling blocks (each: permutation, actnorm, affine coupling)",
        },
        ParamDoc {
            name: "hidden",
            expected: "an integer >= 1",
            doc: "units of each of the two hidden layers of a coupling network",
        },
        ParamDoc {
            name: "epochs",
            expected: "an integer >= 1",
            doc: "passes over the fit boxes",
        },
        ParamDoc {
            name: "lr",
            expected: "a number > 0",
            doc: "AdamW learning rate (cosine decay to 0)",
        },
        ParamDoc {
            name: "batch",
            expected: "an integer >= 1",
            doc: "mini-batch size",
        },
        ParamDoc {
            name: "seed",
            expected: "an integer >= 0",
            doc: "seed of the initialisation, permutations and batch order",
        },
        PER_LEVEL,
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        if self.blocks < 1 {
            Some("blocks")
        } else if self.hidden < 1 {
            Some("hidden")
        } else if self.epochs < 1 {
            Some("epochs")
        } else if !(self.lr > 0.0 && self.lr.is_finite()) {
            Some("lr")
        } else if self.batch < 1 {
            Some("batch")
        } else {
            None
        }
    }
}

#[derive(Clone, Debug)]
pub struct Flow {
    pub params: FlowParams,
    groups: PerLevel<Group>,
}

#[derive(Clone, Debug)]
struct Group {
    /// Standardisation: the fit mean and standard deviation of every coordinate.
    shift: Vec<f64>,
    scale: Vec<f64>,
    /// The fit classes; row `k` of the base means is class `classes[k]`.
    classes: Vec<i64>,
    model: Model,
    /// The model laid out for scoring.
    forward: Forward,
}

impl Group {
    /// The NLL of every row of `raw` ([n, d]) given its predicted class.
    fn nll(&self, raw: &[f64], predicted: &[i64]) -> Vec<f64> {
        let d = self.shift.len();
        let m = &self.model;
        let constant = m.base_log_scale.iter().sum::<f64>()
            + self.scale.iter().map(|s| s.ln()).sum::<f64>()
            + d as f64 * HALF_LN_2PI;
        let inv: Vec<f64> = m.base_log_scale.iter().map(|l| (-l).exp()).collect();
        let quad = |z: &[f64], k: usize| -> f64 {
            let mu = &m.base_mean[k * d..(k + 1) * d];
            0.5 * z
                .iter()
                .zip(mu)
                .zip(&inv)
                .map(|((z, mu), s)| ((z - mu) * s).powi(2))
                .sum::<f64>()
        };
        let mut z = standardise(raw, &self.shift, &self.scale);
        let logdet = self.forward.transform(&mut z);
        z.chunks_exact(d)
            .zip(logdet)
            .zip(predicted)
            .map(|((z, ld), c)| {
                let q = match self.classes.binary_search(c) {
                    Ok(k) => quad(z, k),
                    Err(_) => (0..self.classes.len())
                        .map(|k| quad(z, k))
                        .fold(f64::INFINITY, f64::min),
                };
                q + constant - ld
            })
            .collect()
    }
}

/// Per coordinate: the mean, and the standard deviation (1 where the coordinate is constant to
/// float32 precision, so that it is centred but not blown up).
fn standardisation(raw: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (raw.len() / d) as f64;
    let mut mean = vec![0.0; d];
    for row in raw.chunks_exact(d) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v / n);
    }
    let mut var = vec![0.0; d];
    for row in raw.chunks_exact(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v - m) * (v - m) / n;
        }
    }
    let scale = var
        .iter()
        .zip(&mean)
        .map(|(v, m)| {
            let s = v.sqrt();
            if s > 1e-7 * m.abs().max(1.0) {
                s
            } else {
                1.0
            }
        })
        .collect();
    (mean, scale)
}

/// `(raw − shift) / scale`, row by row.
fn standardise(raw: &[f64], shift: &[f64], scale: &[f64]) -> Vec<f64> {
    let d = shift.len();
    raw.iter()
        .enumerate()
        .map(|(i, v)| (v - shift[i % d]) / scale[i % d])
        .collect()
}

impl Flow {
    pub fn with_params(params: FlowParams) -> Self {
        Flow {
            params,
            groups: PerLevel::default(),
        }
    }

    const USES: Uses = Uses {
        features: true,
        logits: false,
    };

    fn fit_group(
        &self,
        boxes: &BoxSet,
        labels: &[i64],
        idx: &[usize],
        info: &GroupInfo,
    ) -> Result<Group> {
        let d = info.dim;
        if d < 2 {
            return Err(err(
                self.kind(), ScorerFault::CannotFit,
                "a coupling needs at least 2 feature dimensions",
            ));
        }
        let raw = gather_features(boxes, idx);
        let (shift, scale) = standardisation(&raw, d);
        let classes = distinct(idx.iter().map(|&i| labels[i]));
        let class_index: Vec<usize> = idx
            .iter()
            .map(|&i| classes.binary_search(&labels[i]).expect("a fit class"))
            .collect();
        let p = &self.params;
        let cfg = Training {
            blocks: p.blocks,
            hidden: p.hidden,
            epochs: p.epochs,
            lr: p.lr,
            batch: p.batch,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        rng.set_stream(info.g as u64);
        let x = standardise(&raw, &shift, &scale);
        let model = net::fit(&x, d, &class_index, classes.len(), &cfg, &mut rng)?;
        Ok(Group {
            shift,
            scale,
            classes,
            forward: Forward::new(&model),
            model,
        })
    }
}

impl Scorer for Flow {
    fn kind(&self) -> &'static str {
        FLOW.name
    }

    /// Every fit box enters its class's base mean.
    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        Some(fit_labels(boxes))
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let labels = fit_labels(boxes);
        let mut groups = PerLevel::default();
        groups.fit(self.kind(), boxes, Self::USES, self.params.per_level, |idx, info| {
            self.fit_group(boxes, &labels, idx, info)
        })?;
        self.groups = groups;
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        self.groups
            .score(self.kind(), boxes, Self::USES, |group, idx, _| {
                let predicted: Vec<i64> = idx.iter().map(|&i| boxes.class_id[i] as i64).collect();
                Ok(group.nll(&gather_features(boxes, idx), &predicted))
            })
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        self.groups.write(&mut out, |group, info, out| {
            let (d, m) = (info.dim, &group.model);
            let k = group.classes.len();
            out.push(&info.tensor("shift"), vec![d], group.shift.clone());
            out.push(&info.tensor("scale"), vec![d], group.scale.clone());
            let classes = group.classes.iter().map(|&c| c as f64).collect();
            out.push(&info.tensor("classes"), vec![k], classes);
            out.push(&info.tensor("base_mean"), vec![k, d], m.base_mean.clone());
            out.push(&info.tensor("base_log_scale"), vec![d], m.base_log_scale.clone());
            let shapes = block_shapes(d, m.hidden);
            for (b, (perm, w)) in m.perms.iter().zip(&m.weights).enumerate() {
                let perm = perm.iter().map(|&p| p as f64).collect();
                out.push(&info.tensor(&format!("block{b}.perm")), vec![d], perm);
                for ((name, shape), data) in BLOCK_TENSORS.iter().zip(&shapes).zip(w) {
                    out.push(
                        &info.tensor(&format!("block{b}.{name}")),
                        shape.clone(),
                        data.clone(),
                    );
                }
            }
        });
        out.into_state(self.kind(), None, params)
    }
}

/// Reads a permutation of `0..d`, refusing anything else.
fn read_perm(t: &mut TensorMap, name: &str, d: usize) -> Result<Vec<usize>> {
    let data = t.take(name, &[d])?;
    let mut perm = Vec::with_capacity(d);
    for v in data {
        perm.push(t.int(v, name)?);
    }
    let mut seen = vec![false; d];
    for &p in &perm {
        if p >= d || std::mem::replace(&mut seen[p], true) {
            return Err(t.bad(format!("tensor `{name}` is not a permutation of 0..{d}")));
        }
    }
    Ok(perm)
}

impl ScorerImpl for Flow {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let (blocks, hidden) = (self.params.blocks, self.params.hidden);
        self.groups = PerLevel::read(t, Self::USES, |t, info| {
            let d = info.dim;
            let shift = t.take(&info.tensor("shift"), &[d])?;
            let scale = t.take(&info.tensor("scale"), &[d])?;
            if scale.iter().any(|&s| s <= 0.0) {
                return Err(t.bad(format!("tensor `{}` has a value <= 0", info.tensor("scale"))));
            }
            let classes = t.labels(&info.tensor("classes"))?;
            if classes.is_empty() {
                return Err(t.bad(format!("group {} has no class", info.g)));
            }
            let k = classes.len();
            let base_mean = t.take(&info.tensor("base_mean"), &[k, d])?;
            let base_log_scale = t.take(&info.tensor("base_log_scale"), &[d])?;
            let shapes = block_shapes(d, hidden);
            let mut perms = Vec::with_capacity(blocks);
            let mut weights = Vec::with_capacity(blocks);
            for b in 0..blocks {
                perms.push(read_perm(t, &info.tensor(&format!("block{b}.perm")), d)?);
                let w = BLOCK_TENSORS
                    .iter()
                    .zip(&shapes)
                    .map(|(name, shape)| t.take(&info.tensor(&format!("block{b}.{name}")), shape))
                    .collect::<Result<Vec<_>>>()?;
                weights.push(w);
            }
            let model = Model {
                dim: d,
                hidden,
                perms,
                weights,
                base_mean,
                base_log_scale,
            };
            Ok(Group {
                shift,
                scale,
                classes,
                forward: Forward::new(&model),
                model,
            })
        })?;
        Ok(())
    }
}
