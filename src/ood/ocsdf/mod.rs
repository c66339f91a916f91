//! One-class signed distance with a 1-Lipschitz network, OCSDF (Béthune et al., "Robust
//! One-Class Classification with Signed Distance Function using 1-Lipschitz Neural Networks",
//! ICML 2023).
//!
//! **Fit** (per group): standardise the features (the group's mean and standard deviation), then
//! train a 1-Lipschitz network `f` (`lipschitz.rs`: `depth` dense layers of `width` units made
//! 1-Lipschitz by power iteration + Björck orthonormalisation or by the column-norm bound,
//! GroupSort2 or FullSort, a unit-norm output row) with the hinge-Kantorovich-Rubinstein loss
//! `relu(m − y) − y/λ` on ID points (`y = f(x)`) and on negatives (`y = −f(q)`). Negatives are
//! drawn fresh at every step: uniform in the L2 ball of radius ‖hi − lo‖/2 (the standardised
//! fit data's bounding box), moved by `newton_steps` Newton–Raphson steps of random length
//! towards the current network's zero level set, and clipped to the box (the paper's algorithm).
//! `per_class=true` trains one network per fit class of the group, `per_class=false` one network
//! whose input is the features plus the class as a one-hot scaled by the ball radius.
//! With `exposure=true` the outlier boxes given to the fit (`fit --outliers`, sorted as for
//! `safe`'s outlier exposure) are negatives too, a batch of them with each step, and its boxes
//! on known objects train as ID: no longer one-class, but the network stays 1-Lipschitz.
//! Training is in f32 with Candle on the CPU, seeded: the same boxes, parameters and seed give a
//! byte-identical scorer file. The stored weights are normalised once more to convergence in f64,
//! so scoring is plain matmuls.
//!
//! **Score:** `−f(z)`, z the standardised feature, with the network of the box's predicted class
//! (`class_id`); a class without a fit network (per class) scores `−max_c f_c(z)`, the distance
//! to the union of the fitted classes' supports.
//!
//! **Certified radius:** every stored layer has spectral norm ≤ 1, so `f` is 1-Lipschitz: a
//! perturbation of L2 size ε of the *standardised* feature moves the score by at most ε (for a
//! raw feature perturbation δ: by at most ‖δ / std‖₂).

mod lipschitz;
mod train;

#[cfg(test)]
mod tests;

pub use lipschitz::{Activation, Normalisation};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use self::lipschitz::{Matrix, Net};
use self::train::{train, TrainSet};
use super::common::{
    check_boxes, check_dim, distinct, err, fit_labels, gather_features, TensorMap, TensorsOut, Uses,
};
use super::grouped::{GroupInfo, PerLevel};
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::safe::surrogate::{Given, Surrogate};
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};

pub(crate) const OCSDF: KindEntry = KindEntry {
    name: "ocsdf",
    summary: "`−f(z)`, f a 1-Lipschitz signed distance to the ID features (z standardised); certified: an L2 change ε of z moves the score by ≤ ε",
    inputs: Ocsdf::USES,
    shapeable: false,
    params: infos::<OcsdfParams>,
    build: |p, _| Ok(Box::new(Ocsdf::with_params(p.typed()?))),
};

/// OCSDF's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcsdfParams {
    pub width: usize,
    pub depth: usize,
    pub activation: Activation,
    pub normalisation: Normalisation,
    pub power_steps: usize,
    pub bjorck_steps: usize,
    pub epochs: usize,
    pub warmup_epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub margin: f64,
    pub lambda: f64,
    pub newton_steps: usize,
    pub domain: f64,
    pub seed: u64,
    pub per_class: bool,
    pub exposure: bool,
    pub per_level: bool,
}

impl Default for OcsdfParams {
    fn default() -> Self {
        OcsdfParams {
            width: 64,
            depth: 3,
            activation: Activation::GroupSort2,
            normalisation: Normalisation::Bjorck,
            power_steps: 2,
            bjorck_steps: 15,
            epochs: 10,
            warmup_epochs: 1,
            batch: 128,
            lr: 1e-3,
            margin: 0.5,
            lambda: 100.0,
            newton_steps: 4,
            domain: 2.0,
            seed: 0,
            per_class: true,
            exposure: false,
            per_level: true,
        }
    }
}

impl ParamSet for OcsdfParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "width",
            expected: "an even integer >= 2",
            doc: "units of every hidden layer",
        },
        ParamDoc {
            name: "depth",
            expected: "an integer >= 1",
            doc: "number of hidden 1-Lipschitz layers",
        },
        ParamDoc {
            name: "activation",
            expected: "groupsort2 or fullsort",
            doc: "hidden activation: sort each pair, or sort the whole layer",
        },
        ParamDoc {
            name: "normalisation",
            expected: "bjorck or column_norm",
            doc: "how hidden weights are made 1-Lipschitz: power iteration + Björck, or the cheaper √(‖W‖₁‖W‖∞) bound",
        },
        ParamDoc {
            name: "power_steps",
            expected: "an integer >= 1",
            doc: "power iterations per training step (persistent vector) before Björck",
        },
        ParamDoc {
            name: "bjorck_steps",
            expected: "an integer >= 1",
            doc: "most Björck iterations per training step (stops when no entry moves by 1e-3)",
        },
        ParamDoc {
            name: "epochs",
            expected: "an integer >= 1",
            doc: "passes over each network's fit boxes (an epoch is at least 10 steps)",
        },
        ParamDoc {
            name: "warmup_epochs",
            expected: "an integer >= 0",
            doc: "first epochs with uniform negatives only (no Newton steps)",
        },
        ParamDoc {
            name: "batch",
            expected: "an integer >= 1",
            doc: "ID boxes per step (and as many negatives)",
        },
        ParamDoc {
            name: "lr",
            expected: "a number > 0",
            doc: "Adam learning rate, decayed linearly to lr/1000",
        },
        ParamDoc {
            name: "margin",
            expected: "a number > 0",
            doc: "hinge margin m of hinge-KR, in standardised feature units",
        },
        ParamDoc {
            name: "lambda",
            expected: "a number > 0",
            doc: "λ of hinge-KR: the KR term weighs 1/λ",
        },
        ParamDoc {
            name: "newton_steps",
            expected: "an integer >= 0",
            doc: "Newton–Raphson steps moving each negative towards the level set",
        },
        ParamDoc {
            name: "domain",
            expected: "a number >= 1",
            doc: "negatives live in the fit data's bounding box scaled by this factor about its centre",
        },
        ParamDoc {
            name: "seed",
            expected: "an integer >= 0",
            doc: "seed of the initialisation, batches and negatives",
        },
        ParamDoc {
            name: "per_class",
            expected: "true or false",
            doc: "one network per fit class (false: one network with the class as input)",
        },
        ParamDoc {
            name: "exposure",
            expected: "true or false",
            doc: "also train against the outlier boxes given to the fit (`fit --outliers`): boxes on unknown objects (every box of an unlabelled set) are negatives beside the generated ones, boxes on known objects train as ID",
        },
        PER_LEVEL,
    ];

    fn out_of_range(&self) -> Option<&'static str> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if self.width < 2 || !self.width.is_multiple_of(2) {
            Some("width")
        } else if self.depth < 1 {
            Some("depth")
        } else if self.power_steps < 1 {
            Some("power_steps")
        } else if self.bjorck_steps < 1 {
            Some("bjorck_steps")
        } else if self.epochs < 1 {
            Some("epochs")
        } else if self.batch < 1 {
            Some("batch")
        } else if !positive(self.lr) {
            Some("lr")
        } else if !positive(self.margin) {
            Some("margin")
        } else if !positive(self.lambda) {
            Some("lambda")
        } else if !(self.domain >= 1.0 && self.domain.is_finite()) {
            Some("domain")
        } else {
            None
        }
    }
}

/// A fitted group: the standardisation and its networks.
#[derive(Clone, Debug)]
struct Group {
    mean: Vec<f64>,
    std: Vec<f64>,
    models: Models,
}

#[derive(Clone, Debug)]
enum Models {
    /// One network per fit class (sorted labels).
    PerClass(Vec<i64>, Vec<Net>),
    /// One network reading `[z, scale · onehot(class)]` for `classes` classes.
    Shared {
        net: Net,
        classes: usize,
        scale: f64,
    },
}

#[derive(Clone, Debug)]
pub struct Ocsdf {
    pub params: OcsdfParams,
    groups: PerLevel<Group>,
}

impl Ocsdf {
    pub fn with_params(params: OcsdfParams) -> Self {
        Ocsdf {
            params,
            groups: PerLevel::default(),
        }
    }

    const USES: Uses = Uses {
        features: true,
        logits: false,
    };

    fn fit_group(&self, boxes: &BoxSet, given: Option<&Given>, idx: &[usize], info: &GroupInfo) -> Result<Group> {
        let d = info.dim;
        let raw = gather_features(boxes, idx);
        let (mean, std) = standardisation(&raw, d);
        let mut fit = Rows::of(boxes, &fit_labels(boxes), idx, &mean, &std);
        let (lo, hi) = self.domain(&fit.z, d);
        let mut negatives = Rows::default();
        if let Some(given) = given {
            // An outlier box is a negative of the class the detector predicted for it.
            let predicted: Vec<i64> = given.outliers.class_id.iter().map(|&c| c as i64).collect();
            let members = info.members_of(OCSDF.name, &given.outliers)?;
            negatives = Rows::of(&given.outliers, &predicted, &members, &mean, &std);
            if let Some(inliers) = &given.inliers {
                fit.extend(Rows::of(inliers, &fit_labels(inliers), &info.members_of(OCSDF.name, inliers)?, &mean, &std));
            }
        }
        let classes = distinct(fit.labels.iter().copied());
        // Each network has its own seed, fixed by the group and class.
        let seed = |k: usize| self.params.seed.wrapping_mul(1_000_003).wrapping_add((info.g * 4096 + k) as u64);
        let fail = |e: candle_core::Error| err(OCSDF.name, ScorerFault::CannotFit, format!("training on {}: {e}", info.name()));
        let models = if self.params.per_class {
            let mut nets = Vec::with_capacity(classes.len());
            for (k, &c) in classes.iter().enumerate() {
                let set = TrainSet {
                    x: fit.of_class(c, d),
                    d,
                    classes: None,
                    negatives: negatives.of_class(c, d),
                    negative_classes: Vec::new(),
                    lo: lo.clone(),
                    hi: hi.clone(),
                };
                nets.push(train(&set, &self.params, seed(k)).map_err(fail)?);
            }
            Models::PerClass(classes, nets)
        } else {
            let count = boxes.num_classes.max(classes.last().map_or(0, |&c| c as usize + 1));
            let class_index = |labels: &[i64]| labels.iter().map(|&l| l.max(0) as usize).collect();
            let mut set = TrainSet {
                x: fit.z.iter().map(|&v| v as f32).collect(),
                d,
                classes: None,
                negatives: negatives.z.iter().map(|&v| v as f32).collect(),
                negative_classes: class_index(&negatives.labels),
                lo,
                hi,
            };
            let scale = set.radius();
            set.classes = Some((class_index(&fit.labels), count, scale));
            let net = train(&set, &self.params, seed(0)).map_err(fail)?;
            Models::Shared { net, classes: count, scale }
        };
        Ok(Group { mean, std, models })
    }

    /// The box negatives are drawn in: the bounding box of the standardised fit rows `z`,
    /// scaled by `domain` about its centre.
    fn domain(&self, z: &[f64], d: usize) -> (Vec<f32>, Vec<f32>) {
        let (mut lo, mut hi) = (vec![f32::INFINITY; d], vec![f32::NEG_INFINITY; d]);
        for row in z.chunks_exact(d) {
            for j in 0..d {
                lo[j] = lo[j].min(row[j] as f32);
                hi[j] = hi[j].max(row[j] as f32);
            }
        }
        let widen = 0.5 * (self.params.domain as f32 - 1.0);
        for (l, h) in lo.iter_mut().zip(hi.iter_mut()) {
            let pad = widen * (*h - *l);
            (*l, *h) = (*l - pad, *h + pad);
        }
        (lo, hi)
    }

    /// [`Scorer::fit`], against `outliers` with `exposure`.
    fn fit_against(&mut self, boxes: &BoxSet, outliers: Option<&BoxSet>) -> Result<()> {
        let given = match (self.params.exposure, outliers) {
            (true, None) => {
                return Err(err(
                    OCSDF.name,
                    ScorerFault::MissingInput,
                    "exposure=true trains against outlier boxes given beside the fit boxes (fit --outliers)",
                ))
            }
            (false, Some(_)) => {
                return Err(err(
                    OCSDF.name,
                    ScorerFault::BadParameter,
                    "outlier boxes are for exposure=true; without it the negatives are generated",
                ))
            }
            (true, Some(o)) => {
                check_boxes(OCSDF.name, o, Self::USES)?;
                check_dim(OCSDF.name, "outlier feature dimension", boxes.feature_dim, o.feature_dim)?;
                Some(Surrogate::Unknown.sort_given(o, boxes))
            }
            (false, None) => None,
        };
        let mut groups = PerLevel::default();
        groups.fit(self.kind(), boxes, Self::USES, self.params.per_level, |idx, info| {
            self.fit_group(boxes, given.as_ref(), idx, info)
        })?;
        self.groups = groups;
        Ok(())
    }

    fn score_group(&self, group: &Group, boxes: &BoxSet, idx: &[usize], info: &GroupInfo) -> Result<Vec<f64>> {
        let d = info.dim;
        let z = standardise(&gather_features(boxes, idx), &group.mean, &group.std);
        let m = idx.len();
        match &group.models {
            Models::PerClass(classes, nets) => {
                // A box goes through its class's network only; a box of a class without one
                // through every network, for −max_c f_c.
                let own: Vec<Option<usize>> =
                    idx.iter().map(|&i| classes.binary_search(&(boxes.class_id[i] as i64)).ok()).collect();
                let mut f = vec![f64::NEG_INFINITY; m];
                for (k, net) in nets.iter().enumerate() {
                    let rows: Vec<usize> = (0..m).filter(|&r| own[r].is_none_or(|c| c == k)).collect();
                    if rows.is_empty() {
                        continue;
                    }
                    let x: Vec<f64> = rows.iter().flat_map(|&r| z[r * d..(r + 1) * d].iter().copied()).collect();
                    for (&r, v) in rows.iter().zip(net.forward(&x, rows.len())) {
                        f[r] = f[r].max(v);
                    }
                }
                Ok(f.into_iter().map(|v| -v).collect())
            }
            Models::Shared { net, classes, scale } => {
                let mut input = Vec::with_capacity(m * (d + classes));
                for (row, &i) in z.chunks_exact(d).zip(idx) {
                    let c = boxes.class_id[i];
                    if c >= *classes {
                        return Err(err(
                            OCSDF.name, ScorerFault::Mismatch,
                            format!("box {i} has class_id {c}, outside the {classes} fitted classes"),
                        ));
                    }
                    input.extend_from_slice(row);
                    input.extend((0..*classes).map(|k| if k == c { *scale } else { 0.0 }));
                }
                Ok(net.forward(&input, m).into_iter().map(|f| -f).collect())
            }
        }
    }

    /// The fitted networks' hidden weights, for checks.
    #[cfg(test)]
    fn nets(&self) -> Vec<&Net> {
        self.groups
            .groups()
            .unwrap_or_default()
            .iter()
            .flat_map(|g| match &g.models {
                Models::PerClass(_, nets) => nets.iter().collect::<Vec<_>>(),
                Models::Shared { net, .. } => vec![net],
            })
            .collect()
    }
}

/// Per-dimension mean and standard deviation (1 where a dimension is constant).
fn standardisation(x: &[f64], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = (x.len() / d).max(1) as f64;
    let mut mean = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v / n;
        }
    }
    let mut var = vec![0.0; d];
    for row in x.chunks_exact(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v - m).powi(2) / n;
        }
    }
    let std = var
        .into_iter()
        .map(|v| if v.sqrt() > 1e-12 { v.sqrt() } else { 1.0 })
        .collect();
    (mean, std)
}

fn standardise(x: &[f64], mean: &[f64], std: &[f64]) -> Vec<f64> {
    x.chunks_exact(mean.len())
        .flat_map(|row| row.iter().zip(mean).zip(std).map(|((v, m), s)| (v - m) / s))
        .collect()
}

/// Standardised feature rows of some boxes, with a label each.
#[derive(Default)]
struct Rows {
    z: Vec<f64>,
    labels: Vec<i64>,
}

impl Rows {
    /// The boxes `idx` of `boxes`, standardised, labelled from `labels`.
    fn of(boxes: &BoxSet, labels: &[i64], idx: &[usize], mean: &[f64], std: &[f64]) -> Rows {
        Rows {
            z: standardise(&gather_features(boxes, idx), mean, std),
            labels: idx.iter().map(|&i| labels[i]).collect(),
        }
    }

    fn extend(&mut self, other: Rows) {
        self.z.extend(other.z);
        self.labels.extend(other.labels);
    }

    /// The rows labelled `class`, in f32.
    fn of_class(&self, class: i64, d: usize) -> Vec<f32> {
        self.z
            .chunks_exact(d)
            .zip(&self.labels)
            .filter(|(_, &l)| l == class)
            .flat_map(|(row, _)| row.iter().map(|&v| v as f32))
            .collect()
    }
}

impl Scorer for Ocsdf {
    fn kind(&self) -> &'static str {
        OCSDF.name
    }

    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        self.params.per_class.then(|| fit_labels(boxes))
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        self.fit_against(boxes, None)
    }

    fn fit_with_outliers(&mut self, boxes: &BoxSet, outliers: &BoxSet) -> Result<()> {
        self.fit_against(boxes, Some(outliers))
    }

    fn takes_outliers(&self) -> bool {
        self.params.exposure
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        self.groups.score(self.kind(), boxes, Self::USES, |g, idx, info| self.score_group(g, boxes, idx, info))
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        self.groups.write(&mut out, |g, info, out| {
            out.push(&info.tensor("mean"), vec![info.dim], g.mean.clone());
            out.push(&info.tensor("std"), vec![info.dim], g.std.clone());
            match &g.models {
                Models::PerClass(classes, nets) => {
                    out.push(&info.tensor("classes"), vec![classes.len()], classes.iter().map(|&c| c as f64).collect());
                    for (k, net) in nets.iter().enumerate() {
                        write_net(net, &info.tensor(&format!("net{k}")), out);
                    }
                }
                Models::Shared { net, classes, scale } => {
                    out.scalar(&info.tensor("class_count"), *classes as f64);
                    out.scalar(&info.tensor("class_scale"), *scale);
                    write_net(net, &info.tensor("net"), out);
                }
            }
        });
        out.into_state(self.kind(), None, params)
    }
}

fn write_net(net: &Net, prefix: &str, out: &mut TensorsOut) {
    for (i, (w, b)) in net.hidden.iter().enumerate() {
        out.push(&format!("{prefix}.layer{i}.weight"), vec![w.rows, w.cols], w.data.clone());
        out.push(&format!("{prefix}.layer{i}.bias"), vec![w.rows], b.clone());
    }
    out.push(&format!("{prefix}.out.weight"), vec![net.out.len()], net.out.clone());
    out.scalar(&format!("{prefix}.out.bias"), net.out_bias);
}

impl Ocsdf {
    fn read_net(&self, t: &mut TensorMap, prefix: &str, input: usize) -> Result<Net> {
        let p = &self.params;
        let mut hidden = Vec::with_capacity(p.depth);
        let mut cols = input;
        for i in 0..p.depth {
            let name = format!("{prefix}.layer{i}.weight");
            let data = t.take(&name, &[p.width, cols])?;
            let bias = t.take(&format!("{prefix}.layer{i}.bias"), &[p.width])?;
            hidden.push((Matrix { rows: p.width, cols, data }, bias));
            cols = p.width;
        }
        let out = t.take(&format!("{prefix}.out.weight"), &[p.width])?;
        let out_bias = t.scalar(&format!("{prefix}.out.bias"))?;
        Ok(Net { hidden, out, out_bias, activation: p.activation })
    }
}

impl ScorerImpl for Ocsdf {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let groups = PerLevel::read(t, Self::USES, |t, info| {
            let d = info.dim;
            let mean = t.take(&info.tensor("mean"), &[d])?;
            let std = t.take(&info.tensor("std"), &[d])?;
            if std.iter().any(|&s| s <= 0.0) {
                return Err(t.bad(format!("tensor `{}` has a value <= 0", info.tensor("std"))));
            }
            let models = if self.params.per_class {
                let classes = t.labels(&info.tensor("classes"))?;
                let nets = (0..classes.len())
                    .map(|k| self.read_net(t, &info.tensor(&format!("net{k}")), d))
                    .collect::<Result<Vec<_>>>()?;
                Models::PerClass(classes, nets)
            } else {
                let classes = t.scalar_usize(&info.tensor("class_count"))?;
                let scale = t.scalar(&info.tensor("class_scale"))?;
                let net = self.read_net(t, &info.tensor("net"), d + classes)?;
                Models::Shared { net, classes, scale }
            };
            Ok(Group { mean, std, models })
        })?;
        self.groups = groups;
        Ok(())
    }
}
