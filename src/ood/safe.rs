//! `safe`: a small MLP trained on ID boxes against surrogate outliers, the detector frozen
//! (after SAFE, Wilson et al. ICCV'23, and VOS, Du et al. ICLR'22).
//!
//! **Input** per box: its feature `f` (`features`), optionally followed by its logits
//! (`use_logits`), standardised per group (mean and standard deviation of the fit boxes), then a
//! one-hot of its level when the fit has more than one group.
//!
//! **Fit:** surrogate outliers are made from the standardised ID rows of each group
//! ([`Surrogate`]: `vos` samples the low-likelihood region of class-conditional Gaussians with a
//! shared covariance, keeping the least likely 1 of [`VOS_POOL`]; `mix` mixes two boxes of
//! different classes; `noise` adds unit Gaussian noise to an ID box), as many in all as
//! `surrogates` (0 = one per fit box, so both targets weigh the same), shared among groups by
//! size. With `fgsm` (SAFE's own) they are not made here: they are outlier boxes given to the fit
//! ([`Scorer::fit_with_outliers`], [`crate::ood::fitted::FitOptions::outliers`]), the FGSM boxes
//! of the fit images ([`crate::detect::fgsm`]: the input nudged by ε · sign of the gradient of
//! the detector's classification loss, each box read again at its anchor), standardised with
//! their level's ID statistics; all of them, or a seeded sample of `surrogates`. ε is chosen at
//! extraction; the scorer file records the outlier set's source, which names it. With `unknown`
//! (outlier exposure, Hendrycks et al. ICLR'19) they are boxes of real objects the detector
//! should not know, from other images: the boxes labelled unknown of a box set extracted with
//! ground truth (every box of an unlabelled one); the known objects of that set train as ID
//! beside the fit boxes (repeated to weigh about as much), so that the scene around an unknown (which ROI features of deep layers
//! see) is not what it learns. It learns the unknowns it is shown: on the
//! shapes world it meets the learned-scorer goals when those are of the kinds met at test time,
//! and alone does not carry over to unknowns of another kind (BENCHMARKS.md, "Outlier
//! exposure"). `also` adds generated surrogates (each kind as many again) beside the given
//! or generated ones: with outlier exposure, `also=vos,mix` marks the space around the known
//! classes as outlying too, not only where the shown unknowns lie, and carries it over to
//! unknowns of kinds not shown (BENCHMARKS.md, "Generated surrogates beside the outliers").
//! The MLP `in → hidden → hidden → 1` (ReLU) is trained with AdamW on binary cross-entropy,
//! ID = 0 and surrogate = 1, in mini-batches of 256, on the CPU in f32. With `members` > 1,
//! that many MLPs are trained on the same rows, each from its own initial weights and batch
//! order (a deep ensemble, Lakshminarayanan et al. NeurIPS'17).
//!
//! **Score:** the MLP's output logit (higher = more OOD), the mean of the members' logits for an
//! ensemble, evaluated from the stored f32 weights with products in f32 and sums in f64. One
//! MLP's ranking of boxes it was not shown moves with its seed; the mean of several moves less
//! and ranks better (BENCHMARKS.md, "Finer ROI cells and an ensemble").
//!
//! **Determinism:** the initial weights, the surrogates and the batch order all come from one
//! ChaCha8 generator seeded with `seed`, so the same fit boxes and parameters give the same
//! weights and a byte-identical scorer file on one machine (the unit test fits twice and
//! compares the files' bytes).
//!
//! | parameter | default | why |
//! |---|---|---|
//! | `hidden` | 64 | small next to the 80-d shapes feature (not tuned) |
//! | `epochs` | 50 | about 2,800 AdamW steps on the 7k shapes train boxes and their surrogates (not tuned) |
//! | `lr` | 0.001 | Adam's usual rate |
//! | `weight_decay` | 0.01 | torch's AdamW default |
//! | `surrogates` | 0 (= fit boxes) | balanced targets |
//! | `surrogate` | `mix` | the lowest FPR95 of the three on both shapes worlds measured (docs/experiments.md, "safe: every surrogate") |
//! | `also` | none | keeps `surrogate`'s measured figures; `vos,mix` with `unknown` when the unknowns met may be of kinds the outliers lack |
//! | `use_logits` | true | with `mix`, higher far-OOD AUROC on both worlds (docs/experiments.md) |
//! | `per_level` | true | levels have their own feature spaces |
//! | `members` | 1 | one MLP, as measured throughout BENCHMARKS.md; 5 ranks better at 5× the fit and score time |
//! | `seed` | 0 | |
//!
//! It reads the box set's feature, so SAFE's multi-layer ROI features reach it through the box
//! set's feature sources (`fit --features`); the FGSM boxes carry the same sources.

mod mlp;
pub(crate) mod surrogate;

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use serde::{Deserialize, Serialize};

use super::common::{
    check_boxes, check_dim, check_fit_set, err, fit_labels, not_fitted, Grouping, TensorMap,
    TensorsOut, Uses,
};
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};
pub use mlp::{Layer, Mlp, Training};
pub use surrogate::{Given, Surrogate, VOS_POOL};

pub(crate) const SAFE: KindEntry = KindEntry {
    name: "safe",
    summary: "OOD logit of an MLP trained on the fit boxes against surrogate outliers (learned, not Oodeel)",
    inputs: Uses {
        features: true,
        logits: true,
    },
    shapeable: false,
    params: infos::<SafeParams>,
    build: |p, _| Ok(Box::new(Safe::new(p.typed()?))),
};

/// The parameters of a `safe` scorer, with the defaults of the table above.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafeParams {
    pub hidden: usize,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Surrogate outliers in all; 0 = as many as fit boxes.
    pub surrogates: usize,
    pub surrogate: Surrogate,
    /// Generated surrogates trained against beside `surrogate`'s, as many again each.
    pub also: Vec<Surrogate>,
    pub use_logits: bool,
    pub per_level: bool,
    /// MLPs trained from their own initial weights and batch order; the score is the mean of
    /// their logits.
    pub members: usize,
    pub seed: u64,
}

impl Default for SafeParams {
    fn default() -> Self {
        SafeParams {
            hidden: 64,
            epochs: 50,
            lr: 1e-3,
            weight_decay: 1e-2,
            surrogates: 0,
            surrogate: Surrogate::Mix,
            also: Vec::new(),
            use_logits: true,
            per_level: true,
            members: 1,
            seed: 0,
        }
    }
}

impl ParamSet for SafeParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "hidden",
            expected: "an integer >= 1",
            doc: "width of the MLP's two hidden layers",
        },
        ParamDoc {
            name: "epochs",
            expected: "an integer >= 1",
            doc: "passes over the ID boxes and their surrogates",
        },
        ParamDoc {
            name: "lr",
            expected: "a number > 0",
            doc: "AdamW learning rate",
        },
        ParamDoc {
            name: "weight_decay",
            expected: "a number >= 0",
            doc: "AdamW weight decay",
        },
        ParamDoc {
            name: "surrogates",
            expected: "an integer >= 0",
            doc: "surrogate outliers in all (0: as many as fit boxes)",
        },
        ParamDoc {
            name: "surrogate",
            expected: "vos, mix, noise, fgsm or unknown",
            doc: "how surrogate outliers are made: VOS low-likelihood Gaussian samples, mixes of two classes' boxes, Gaussian noise; or given to the fit as outlier boxes: FGSM boxes of the fit images, or boxes of real unknown objects (outlier exposure)",
        },
        ParamDoc {
            name: "also",
            expected: "a list of vos, mix and noise (empty: none)",
            doc: "generated surrogates to train against beside those of `surrogate`, as many again of each: with outlier exposure they keep the ID region tight where the given outliers do not reach",
        },
        ParamDoc {
            name: "use_logits",
            expected: "true or false",
            doc: "append the box's logits to its feature as the MLP's input",
        },
        PER_LEVEL,
        ParamDoc {
            name: "members",
            expected: "an integer >= 1",
            doc: "MLPs trained on the same boxes from their own initial weights and batch order, their logits averaged (a deep ensemble): steadier and better ranked, at members times the fit and score time",
        },
        ParamDoc {
            name: "seed",
            expected: "an integer >= 0",
            doc: "seed of the initial weights, the surrogates and the batch order",
        },
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        if self.hidden < 1 {
            Some("hidden")
        } else if self.epochs < 1 {
            Some("epochs")
        } else if self.members < 1 {
            Some("members")
        } else if !(self.lr > 0.0 && self.lr.is_finite()) {
            Some("lr")
        } else if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            Some("weight_decay")
        } else if self.also.iter().any(|s| s.is_given()) {
            Some("also")
        } else {
            None
        }
    }
}

impl SafeParams {
    fn training(&self) -> Training {
        Training {
            hidden: self.hidden,
            epochs: self.epochs,
            lr: self.lr,
            weight_decay: self.weight_decay,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Safe {
    pub params: SafeParams,
    fitted: Option<Fit>,
}

/// Mean and scale of every raw input column of one group.
type Standardiser = (Vec<f64>, Vec<f64>);

#[derive(Clone, Debug)]
struct Fit {
    feature_dim: usize,
    /// Logits per box in the input (0 without `use_logits`).
    classes: usize,
    grouping: Grouping,
    /// Per group.
    standardise: Vec<Standardiser>,
    /// One MLP, or the members of an ensemble.
    members: Vec<Mlp>,
}

impl Fit {
    /// One-hot level columns, only when there is more than one group.
    fn onehot_dim(&self) -> usize {
        one_hot_dim(self.grouping.len())
    }

    fn input(&self, boxes: &BoxSet, i: usize, g: usize) -> Vec<f64> {
        let (mean, scale) = &self.standardise[g];
        let mut x: Vec<f64> = raw_row(boxes, i, self.classes > 0)
            .zip(mean.iter().zip(scale))
            .map(|(v, (m, s))| (v - m) / s)
            .collect();
        push_one_hot(&mut x, g, self.onehot_dim());
        x
    }

    /// The mean of the members' OOD logits for each input row (row-major, f32).
    fn logits(&self, x: &[f32]) -> Vec<f64> {
        let mut sum = self.members[0].logits(x);
        for member in &self.members[1..] {
            sum.iter_mut().zip(member.logits(x)).for_each(|(s, v)| *s += v);
        }
        let k = self.members.len() as f64;
        sum.into_iter().map(|s| s / k).collect()
    }
}

fn one_hot_dim(groups: usize) -> usize {
    if groups > 1 {
        groups
    } else {
        0
    }
}

fn push_one_hot(x: &mut Vec<f64>, g: usize, width: usize) {
    x.extend((0..width).map(|k| f64::from(u8::from(k == g))));
}

fn raw_row(boxes: &BoxSet, i: usize, use_logits: bool) -> impl Iterator<Item = f64> + '_ {
    let logits: &[f32] = if use_logits { boxes.logit_row(i) } else { &[] };
    boxes.feature(i).iter().chain(logits).map(|&v| v as f64)
}

/// Column means and scales (standard deviation; 1 for a constant column) of `rows × d`.
fn standardiser(x: &[f64], d: usize) -> Standardiser {
    let n = (x.len() / d) as f64;
    let mut mean = vec![0.0; d];
    for row in x.chunks(d) {
        mean.iter_mut().zip(row).for_each(|(m, v)| *m += v / n);
    }
    let mut var = vec![0.0; d];
    for row in x.chunks(d) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (v - m) * (v - m) / n;
        }
    }
    let scale = var
        .into_iter()
        .map(|v| if v > 1e-12 { v.sqrt() } else { 1.0 })
        .collect();
    (mean, scale)
}

impl Safe {
    pub fn new(params: SafeParams) -> Self {
        Safe {
            params,
            fitted: None,
        }
    }

    fn uses(&self) -> Uses {
        Uses {
            features: true,
            logits: self.params.use_logits,
        }
    }

    /// Standardised ID rows and surrogate rows (with level one-hots) of every group, stacked.
    /// The surrogates are generated, or with `fgsm` and `unknown` are the `given` outliers of
    /// the group; the given inliers join the group's ID rows.
    fn training_rows(
        &self,
        boxes: &BoxSet,
        given: Option<&Given>,
        grouping: &Grouping,
        members: &[Vec<usize>],
        rng: &mut ChaCha8Rng,
    ) -> Result<(Vec<f64>, Vec<f64>, Vec<Standardiser>)> {
        let kind = self.kind();
        let labels = fit_labels(boxes);
        let n = boxes.len();
        let total = if self.params.surrogates == 0 {
            n
        } else {
            self.params.surrogates
        };
        let outliers = given.map(|g| &g.outliers);
        let inliers = given.and_then(|g| g.inliers.as_ref());
        let outlier_groups = outliers.map(|o| grouping.assign(kind, o)).transpose()?;
        let inlier_groups = inliers.map(|b| grouping.assign(kind, b)).transpose()?;
        let width = one_hot_dim(members.len());
        let (mut id, mut made_all, mut standardise) = (Vec::new(), Vec::new(), Vec::new());
        for (g, idx) in members.iter().enumerate() {
            let mut x = Vec::new();
            for &i in idx {
                x.extend(raw_row(boxes, i, self.params.use_logits));
            }
            let d = x.len() / idx.len();
            let (mean, scale) = standardiser(&x, d);
            if let (Some(b), Some(groups)) = (inliers, &inlier_groups) {
                let own: Vec<usize> = (0..b.len()).filter(|&i| groups[i] == g).collect();
                // Repeated to weigh about as much as the group's fit boxes: the fewer ID rows
                // share the outlier scenes' context, the more that context pulls scores up.
                let repeats = (idx.len() / own.len().max(1)).max(1);
                for _ in 0..repeats {
                    for &i in &own {
                        x.extend(raw_row(b, i, self.params.use_logits));
                    }
                }
            }
            standardise_rows(&mut x, &mean, &scale);
            let count = (total * idx.len()).div_ceil(n);
            let group_labels: Vec<i64> = idx.iter().map(|&i| labels[i]).collect();
            let generate = |of: Surrogate, rows: &[f64], rng: &mut ChaCha8Rng| {
                surrogate::generate(of, rows, d, &group_labels, count, rng).map_err(|e| {
                    let of = serde_json::to_value(of).unwrap_or_default();
                    err(kind, ScorerFault::CannotFit, format!("{of} surrogates of {}: {e}", grouping.name(g)))
                })
            };
            let mut made = match (outliers, &outlier_groups) {
                (Some(o), Some(groups)) => {
                    let mut own: Vec<usize> = (0..o.len()).filter(|&i| groups[i] == g).collect();
                    if self.params.surrogates > 0 && own.len() > count {
                        own.shuffle(rng);
                        own.truncate(count);
                        own.sort_unstable();
                    }
                    let mut rows = Vec::new();
                    for i in own {
                        rows.extend(raw_row(o, i, self.params.use_logits));
                    }
                    standardise_rows(&mut rows, &mean, &scale);
                    rows
                }
                _ => generate(self.params.surrogate, &x, rng)?,
            };
            // From the group's own fit rows only, not the given inliers joined to them.
            for &also in &self.params.also {
                made.extend(generate(also, &x[..idx.len() * d], rng)?);
            }
            for (rows, out) in [(&x, &mut id), (&made, &mut made_all)] {
                for row in rows.chunks(d) {
                    out.extend_from_slice(row);
                    push_one_hot(out, g, width);
                }
            }
            standardise.push((mean, scale));
        }
        if made_all.is_empty() {
            return Err(err(
                kind,
                ScorerFault::MissingInput,
                "no outlier boxes to train against",
            ));
        }
        Ok((id, made_all, standardise))
    }

    /// [`Scorer::fit`] against generated surrogates, or with `fgsm` and `unknown` against
    /// `outliers`.
    fn fit_against(&mut self, boxes: &BoxSet, outliers: Option<&BoxSet>) -> Result<()> {
        let kind = self.kind();
        check_fit_set(kind, boxes, self.uses())?;
        let surrogate = self.params.surrogate;
        let name = serde_json::to_value(surrogate).unwrap_or_default();
        let given = match (surrogate.is_given(), outliers) {
            (true, None) => {
                return Err(err(
                    kind,
                    ScorerFault::MissingInput,
                    format!(
                        "surrogate={name} trains against outlier boxes given beside the fit \
                         boxes (fgsm: the FGSM boxes of the fit images; unknown: boxes of real \
                         unknown objects)"
                    ),
                ))
            }
            (true, Some(o)) => {
                check_boxes(kind, o, self.uses())?;
                check_dim(kind, "outlier feature dimension", boxes.feature_dim, o.feature_dim)?;
                check_dim(kind, "outlier class count", boxes.num_classes, o.num_classes)?;
                Some(surrogate.sort_given(o, boxes))
            }
            (false, Some(_)) => {
                return Err(err(
                    kind,
                    ScorerFault::BadParameter,
                    format!(
                        "outlier boxes are for surrogate=fgsm or surrogate=unknown; \
                         surrogate={name} makes its own"
                    ),
                ))
            }
            (false, None) => None,
        };
        let (grouping, members) = Grouping::fit(boxes, self.params.per_level);
        let mut rng = ChaCha8Rng::seed_from_u64(self.params.seed);
        let (id, outliers, standardise) =
            self.training_rows(boxes, given.as_ref(), &grouping, &members, &mut rng)?;
        let classes = if self.params.use_logits {
            boxes.num_classes
        } else {
            0
        };
        let dim = boxes.feature_dim + classes + one_hot_dim(grouping.len());
        // Each member draws its initial weights and batch order from where the last one left
        // the generator, so the ensemble is as deterministic as one MLP.
        let members = (0..self.params.members)
            .map(|_| Mlp::train(&id, &outliers, dim, self.params.training(), &mut rng))
            .collect::<Result<Vec<_>>>()?;
        self.fitted = Some(Fit {
            feature_dim: boxes.feature_dim,
            classes,
            grouping,
            standardise,
            members,
        });
        Ok(())
    }
}

/// `(v − mean) / scale` per column of the rows of `x`, in place.
fn standardise_rows(x: &mut [f64], mean: &[f64], scale: &[f64]) {
    for row in x.chunks_mut(mean.len()) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(scale) {
            *v = (*v - m) / s;
        }
    }
}

impl Scorer for Safe {
    fn kind(&self) -> &'static str {
        SAFE.name
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        self.fit_against(boxes, None)
    }

    fn fit_with_outliers(&mut self, boxes: &BoxSet, outliers: &BoxSet) -> Result<()> {
        self.fit_against(boxes, Some(outliers))
    }

    fn takes_outliers(&self) -> bool {
        self.params.surrogate.is_given()
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        let kind = self.kind();
        let fit = self.fitted.as_ref().ok_or_else(|| not_fitted(kind))?;
        check_boxes(kind, boxes, self.uses())?;
        check_dim(
            kind,
            "feature dimension",
            fit.feature_dim,
            boxes.feature_dim,
        )?;
        if fit.classes > 0 {
            check_dim(kind, "class count", fit.classes, boxes.num_classes)?;
        }
        let group_of = fit.grouping.assign(kind, boxes)?;
        let rows: Vec<f32> = group_of
            .iter()
            .enumerate()
            .flat_map(|(i, &g)| fit.input(boxes, i, g))
            .map(|v| v as f32)
            .collect();
        // The boxes in one batch per core: even an image's few boxes are worth splitting.
        let width = rows.len() / group_of.len().max(1);
        let batch = group_of.len().div_ceil(rayon::current_num_threads()).max(1) * width;
        let logits: Vec<Vec<f64>> = rows.par_chunks(batch.max(1)).map(|r| fit.logits(r)).collect();
        Ok(logits.concat())
    }

    fn to_state(&self) -> ScorerState {
        let mut out = TensorsOut::default();
        if let Some(fit) = &self.fitted {
            out.scalar("feature_dim", fit.feature_dim as f64);
            out.scalar("classes", fit.classes as f64);
            fit.grouping.write(&mut out);
            for (g, (mean, scale)) in fit.standardise.iter().enumerate() {
                out.push(&format!("group{g}.mean"), vec![mean.len()], mean.clone());
                out.push(&format!("group{g}.scale"), vec![scale.len()], scale.clone());
            }
            for (m, mlp) in fit.members.iter().enumerate() {
                for (k, layer) in mlp.layers.iter().enumerate() {
                    let f = |v: &[f32]| v.iter().map(|&v| v as f64).collect();
                    let name = layer_name(m, k);
                    out.push(
                        &format!("{name}.weight"),
                        vec![layer.outputs, layer.inputs],
                        f(&layer.weight),
                    );
                    out.push(&format!("{name}.bias"), vec![layer.outputs], f(&layer.bias));
                }
            }
        }
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for Safe {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let feature_dim = t.feature_dim()?;
        let classes = t.scalar_usize("classes")?;
        if (classes > 0) != self.params.use_logits {
            return Err(t.bad(format!(
                "{classes} logit columns with use_logits={}",
                self.params.use_logits
            )));
        }
        let grouping = Grouping::read(t)?;
        let raw = feature_dim + classes;
        let mut standardise = Vec::with_capacity(grouping.len());
        for g in 0..grouping.len() {
            let mean = t.take(&format!("group{g}.mean"), &[raw])?;
            let scale = t.take(&format!("group{g}.scale"), &[raw])?;
            if scale.iter().any(|&s| s <= 0.0) {
                return Err(t.bad(format!("group{g}.scale has a value <= 0")));
            }
            standardise.push((mean, scale));
        }
        let inputs = raw + one_hot_dim(grouping.len());
        let members = (0..self.params.members)
            .map(|m| read_mlp(t, m, inputs, self.params.hidden))
            .collect::<Result<Vec<_>>>()?;
        self.fitted = Some(Fit {
            feature_dim,
            classes,
            grouping,
            standardise,
            members,
        });
        Ok(())
    }
}

/// The tensor name of layer `k` of member `m`: `layer{k}` for the first (the name files of a
/// single MLP have always used), `member{m}.layer{k}` for the others.
fn layer_name(m: usize, k: usize) -> String {
    if m == 0 {
        format!("layer{k}")
    } else {
        format!("member{m}.layer{k}")
    }
}

fn read_mlp(t: &mut TensorMap, m: usize, inputs: usize, hidden: usize) -> Result<Mlp> {
    let shapes = [(hidden, inputs), (hidden, hidden), (1, hidden)];
    let mut layers = Vec::with_capacity(3);
    for (k, &(outputs, inputs)) in shapes.iter().enumerate() {
        let name = layer_name(m, k);
        let f32s = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
        layers.push(Layer {
            weight: f32s(t.take(&format!("{name}.weight"), &[outputs, inputs])?),
            bias: f32s(t.take(&format!("{name}.bias"), &[outputs])?),
            inputs,
            outputs,
        });
    }
    let layers: [Layer; 3] = layers.try_into().expect("three layers");
    Ok(Mlp { layers })
}
