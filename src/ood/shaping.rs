//! Activation shaping in front of a logit scorer: ReAct, ASH-S, SCALE and DICE.
//!
//! Each reshapes the box's feature `f` (or the head's weights, for DICE), recomputes the logits
//! `l' = W f' + b` with the head of the box's level, in f64, and hands `l'` to the logit scorer.
//! The heads are taken from the fit set and stored in the fitted scorer; a box set scored later
//! that carries a head must carry the same one.
//!
//! All four assume non-negative (post-ReLU) features. YOLO's class-branch feature is SiLU
//! (minimum ≈ −0.278) and DETR's query is signed (post-LayerNorm): treat them as opt-in.
//!
//! | shaping | fit | per box | default (Oodeel 0.4 name) |
//! |---|---|---|---|
//! | ReAct (Sun et al., NeurIPS'21) | `c` = `react_quantile` of all fit feature values (linear interpolation) | `f' = min(f, c)` | `react_quantile=0.8` |
//! | ASH-S (Djurisic et al., ICLR'23) | — | `q` = percentile of `f` over units; `m = f > q`; `s = exp(Σf / Σ f·m)`; `f' = f·m·s` | `ash_percentile=0.90` |
//! | SCALE (Xu et al., ICLR'24) | — | same `s`, no pruning: `f' = f·s` | `scale_percentile=0.85` |
//! | DICE (Sun & Li, ECCV'22) | per head: `f̄ = mean f`, `V = W ⊙ f̄`, `τ` = `dice_percentile` of V, mask `M = V > τ` | `l' = (M ⊙ W) f + b` | `dice_percentile=0.9` (not in Oodeel; official CIFAR setting) |
//!
//! **Per level (YOLO).** The head is always the box's own level head. ReAct's clip value is fitted
//! per level by default (`per_level=true`: each level's feature has its own scale; `false` pools
//! all fit boxes into one threshold, Oodeel's single-model behaviour). DICE's mask is always per
//! head, its mean feature over the fit boxes of that head's level (over all fit boxes when that
//! level has none). ASH and SCALE have no fit statistics.
//!
//! **Differences from Oodeel 0.4:** all in one place, `docs/scorers.md` ("Differences from
//! Oodeel 0.4").

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::{err, feature_f64, Grouping, Heads, TensorMap, TensorsOut};
use super::linalg::quantile_linear;
use super::params::{infos, to_json, Given, ParamDoc, ParamInfo, ParamSet, PER_LEVEL};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};

/// One shaping: its name, what it does, its typed parameters and its constructor.
pub struct ShapingEntry {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: fn() -> Vec<ParamInfo>,
    pub(crate) build: fn(&Given) -> Result<Shaping>,
}

/// The shapings accepted by [`super::build`], in listing order.
pub(crate) const SHAPINGS: &[ShapingEntry] = &[
    ShapingEntry {
        name: "react",
        summary: "clips the feature at a fitted quantile (ReAct)",
        params: infos::<ReactParams>,
        build: |p| Ok(Shaping::React(p.typed()?)),
    },
    ShapingEntry {
        name: "ash",
        summary: "prunes below a per-box percentile and rescales (ASH-S)",
        params: infos::<AshParams>,
        build: |p| Ok(Shaping::Ash(p.typed()?)),
    },
    ShapingEntry {
        name: "scale",
        summary: "rescales by the ASH factor without pruning (SCALE)",
        params: infos::<ScaleParams>,
        build: |p| Ok(Shaping::Scale(p.typed()?)),
    },
    ShapingEntry {
        name: "dice",
        summary: "masks the head's weights by their mean contribution (DICE)",
        params: infos::<DiceParams>,
        build: |p| Ok(Shaping::Dice(p.typed()?)),
    },
];

fn unit_open(v: f64) -> bool {
    (0.0..1.0).contains(&v)
}

/// ReAct's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReactParams {
    pub react_quantile: f64,
    pub per_level: bool,
}

impl Default for ReactParams {
    fn default() -> Self {
        ReactParams {
            react_quantile: 0.8,
            per_level: true,
        }
    }
}

impl ParamSet for ReactParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "react_quantile",
            expected: "a number in (0, 1]",
            doc: "quantile of all fit feature values used as the clip value",
        },
        PER_LEVEL,
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        let q = self.react_quantile;
        (!(q > 0.0 && q <= 1.0)).then_some("react_quantile")
    }
}

/// ASH-S's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AshParams {
    pub ash_percentile: f64,
}

impl Default for AshParams {
    fn default() -> Self {
        AshParams {
            ash_percentile: 0.90,
        }
    }
}

impl ParamSet for AshParams {
    const DOCS: &'static [ParamDoc] = &[ParamDoc {
        name: "ash_percentile",
        expected: "a number in [0, 1)",
        doc: "activations at or below this percentile of the box's feature are pruned",
    }];
    fn out_of_range(&self) -> Option<&'static str> {
        (!unit_open(self.ash_percentile)).then_some("ash_percentile")
    }
}

/// SCALE's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleParams {
    pub scale_percentile: f64,
}

impl Default for ScaleParams {
    fn default() -> Self {
        ScaleParams {
            scale_percentile: 0.85,
        }
    }
}

impl ParamSet for ScaleParams {
    const DOCS: &'static [ParamDoc] = &[ParamDoc {
        name: "scale_percentile",
        expected: "a number in [0, 1)",
        doc: "the percentile above which activations set SCALE's factor",
    }];
    fn out_of_range(&self) -> Option<&'static str> {
        (!unit_open(self.scale_percentile)).then_some("scale_percentile")
    }
}

/// DICE's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiceParams {
    pub dice_percentile: f64,
}

impl Default for DiceParams {
    fn default() -> Self {
        DiceParams {
            dice_percentile: 0.9,
        }
    }
}

impl ParamSet for DiceParams {
    const DOCS: &'static [ParamDoc] = &[ParamDoc {
        name: "dice_percentile",
        expected: "a number in [0, 1)",
        doc: "head weights whose mean contribution is at or below this percentile are masked",
    }];
    fn out_of_range(&self) -> Option<&'static str> {
        (!unit_open(self.dice_percentile)).then_some("dice_percentile")
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Shaping {
    React(ReactParams),
    Ash(AshParams),
    Scale(ScaleParams),
    Dice(DiceParams),
}

impl Shaping {
    pub fn name(&self) -> &'static str {
        match self {
            Shaping::React(_) => "react",
            Shaping::Ash(_) => "ash",
            Shaping::Scale(_) => "scale",
            Shaping::Dice(_) => "dice",
        }
    }

    pub(crate) fn params(&self, out: &mut BTreeMap<String, serde_json::Value>) {
        match self {
            Shaping::React(p) => to_json(p, out),
            Shaping::Ash(p) => to_json(p, out),
            Shaping::Scale(p) => to_json(p, out),
            Shaping::Dice(p) => to_json(p, out),
        }
    }

    pub(crate) fn fit(&self, scorer: &str, boxes: &BoxSet) -> Result<FittedShaping> {
        let heads = Heads::from_boxes(scorer, boxes)?;
        let head_of = heads.assign(scorer, boxes)?;
        let d = boxes.feature_dim;
        let mut fitted = FittedShaping {
            heads,
            grouping: Grouping { levels: None },
            thresholds: Vec::new(),
            masks: Vec::new(),
        };
        match self {
            Shaping::React(p) => {
                let (grouping, members) = Grouping::fit(boxes, p.per_level);
                for idx in &members {
                    let mut values: Vec<f64> = idx
                        .iter()
                        .flat_map(|&i| boxes.feature(i).iter().map(|&v| v as f64))
                        .collect();
                    fitted
                        .thresholds
                        .push(quantile_linear(&mut values, p.react_quantile));
                }
                fitted.grouping = grouping;
            }
            Shaping::Dice(p) => {
                let mean_of = |pick: &dyn Fn(usize) -> bool| {
                    let mut sum = vec![0.0f64; d];
                    let mut n = 0usize;
                    for i in (0..boxes.len()).filter(|&i| pick(i)) {
                        for (s, &v) in sum.iter_mut().zip(boxes.feature(i)) {
                            *s += v as f64;
                        }
                        n += 1;
                    }
                    (n > 0).then(|| sum.into_iter().map(|s| s / n as f64).collect::<Vec<_>>())
                };
                let pooled = mean_of(&|_| true).expect("fit set is not empty");
                for (h, head) in fitted.heads.heads.iter().enumerate() {
                    let mean = mean_of(&|i| head_of[i] == h).unwrap_or_else(|| pooled.clone());
                    let contrib: Vec<f64> = head
                        .weight
                        .chunks_exact(d)
                        .flat_map(|row| row.iter().zip(&mean).map(|(w, m)| w * m))
                        .collect();
                    let tau = quantile_linear(&mut contrib.clone(), p.dice_percentile);
                    fitted
                        .masks
                        .push(contrib.iter().map(|&v| v > tau).collect());
                }
            }
            Shaping::Ash(_) | Shaping::Scale(_) => {}
        }
        Ok(fitted)
    }

    /// The shaped logits of every box, row-major [N, C].
    pub(crate) fn logits(
        &self,
        scorer: &str,
        fitted: &FittedShaping,
        boxes: &BoxSet,
    ) -> Result<Vec<Vec<f64>>> {
        fitted.heads.check_same(scorer, boxes)?;
        let head_of = fitted.heads.assign(scorer, boxes)?;
        let group_of = match self {
            Shaping::React(_) => fitted.grouping.assign(scorer, boxes)?,
            _ => Vec::new(),
        };
        (0..boxes.len())
            .into_par_iter()
            .map(|i| {
                let head = &fitted.heads.heads[head_of[i]];
                let mut f = feature_f64(boxes, i);
                match self {
                    Shaping::React(_) => {
                        let c = fitted.thresholds[group_of[i]];
                        f.iter_mut().for_each(|v| *v = v.min(c));
                        Ok(head.logits(&f))
                    }
                    Shaping::Ash(AshParams {
                        ash_percentile: percentile,
                    })
                    | Shaping::Scale(ScaleParams {
                        scale_percentile: percentile,
                    }) => {
                        let q = quantile_linear(&mut f.clone(), *percentile);
                        let total: f64 = f.iter().sum();
                        let kept: f64 = f.iter().filter(|&&v| v > q).sum();
                        let log_s = total / kept;
                        if kept <= 0.0 || !log_s.is_finite() || log_s > 700.0 {
                            return Err(err(
                                scorer, ScorerFault::Unscorable,
                                format!(
                                    "{}: box {i}: the activations above the {percentile} percentile sum to {kept} (all activations: {total}), so the scale exp({total}/{kept}) is undefined or overflows; {} assumes non-negative (post-ReLU) features",
                                    self.name(),
                                    self.name()
                                ),
                            ));
                        }
                        let s = log_s.exp();
                        let prune = matches!(self, Shaping::Ash(_));
                        f.iter_mut().for_each(|v| {
                            *v = if prune && *v <= q { 0.0 } else { *v * s };
                        });
                        Ok(head.logits(&f))
                    }
                    Shaping::Dice(_) => {
                        let mask = &fitted.masks[head_of[i]];
                        let d = head.dim;
                        Ok(head
                            .weight
                            .chunks_exact(d)
                            .zip(mask.chunks_exact(d))
                            .zip(&head.bias)
                            .map(|((row, m), b)| {
                                row.iter()
                                    .zip(m)
                                    .zip(&f)
                                    .filter(|((_, &keep), _)| keep)
                                    .map(|((w, _), x)| w * x)
                                    .sum::<f64>()
                                    + b
                            })
                            .collect())
                    }
                }
            })
            .collect()
    }
}

/// Fit statistics of a shaping, and the heads it recomputes logits with.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FittedShaping {
    pub heads: Heads,
    /// ReAct's groups (pooled for the other shapings).
    pub grouping: Grouping,
    /// ReAct: one clip value per group.
    pub thresholds: Vec<f64>,
    /// DICE: one weight mask [C, D] per head.
    pub masks: Vec<Vec<bool>>,
}

impl FittedShaping {
    pub fn write(&self, shaping: &Shaping, out: &mut TensorsOut) {
        self.heads.write(out);
        match shaping {
            Shaping::React(_) => {
                self.grouping.write(out);
                out.push(
                    "react.thresholds",
                    vec![self.thresholds.len()],
                    self.thresholds.clone(),
                );
            }
            Shaping::Dice(_) => {
                for (h, m) in self.masks.iter().enumerate() {
                    let head = &self.heads.heads[h];
                    out.push(
                        &format!("dice.{h}.mask"),
                        vec![head.classes, head.dim],
                        m.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect(),
                    );
                }
            }
            Shaping::Ash(_) | Shaping::Scale(_) => {}
        }
    }

    pub fn read(
        shaping: &Shaping,
        t: &mut TensorMap,
        classes: usize,
        dim: usize,
    ) -> Result<FittedShaping> {
        let heads = Heads::read(t, classes, dim)?;
        let mut fitted = FittedShaping {
            heads,
            grouping: Grouping { levels: None },
            thresholds: Vec::new(),
            masks: Vec::new(),
        };
        match shaping {
            Shaping::React(_) => {
                fitted.grouping = Grouping::read(t)?;
                fitted.thresholds = t.take("react.thresholds", &[fitted.grouping.len()])?;
            }
            Shaping::Dice(_) => {
                for h in 0..fitted.heads.heads.len() {
                    let m = t.take(&format!("dice.{h}.mask"), &[classes, dim])?;
                    if m.iter().any(|&v| v != 0.0 && v != 1.0) {
                        return Err(t.bad(format!("tensor `dice.{h}.mask` is not 0/1")));
                    }
                    fitted.masks.push(m.iter().map(|&v| v == 1.0).collect());
                }
            }
            Shaping::Ash(_) | Shaping::Scale(_) => {}
        }
        Ok(fitted)
    }
}
