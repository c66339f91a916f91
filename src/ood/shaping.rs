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
//! **Differences from Oodeel:** percentiles use linear interpolation (torch's `quantile`; Oodeel's
//! TF backend uses nearest rank); ASH/SCALE return an error naming the box when `Σ f·m ≤ 0` or the
//! scale overflows (signed features), where Oodeel returns inf/NaN; logits are recomputed in f64.

use rayon::prelude::*;
use std::collections::BTreeMap;

use super::common::{err, feature_f64, Grouping, Heads, Params, TensorMap, TensorsOut};
use super::linalg::quantile_linear;
use crate::data::boxset::BoxSet;
use crate::error::Result;

/// The shaping names accepted by [`super::build`].
pub const SHAPINGS: &[&str] = &["react", "ash", "scale", "dice"];

#[derive(Clone, Debug, PartialEq)]
pub enum Shaping {
    React { quantile: f64, per_level: bool },
    Ash { percentile: f64 },
    Scale { percentile: f64 },
    Dice { percentile: f64 },
}

impl Shaping {
    pub fn name(&self) -> &'static str {
        match self {
            Shaping::React { .. } => "react",
            Shaping::Ash { .. } => "ash",
            Shaping::Scale { .. } => "scale",
            Shaping::Dice { .. } => "dice",
        }
    }

    /// Parameter names of a shaping, for the registry.
    pub(crate) fn param_names(name: &str) -> &'static [&'static str] {
        match name {
            "react" => &["react_quantile", "per_level"],
            "ash" => &["ash_percentile"],
            "scale" => &["scale_percentile"],
            "dice" => &["dice_percentile"],
            _ => &[],
        }
    }

    pub(crate) fn from_params(name: &str, p: &Params) -> Result<Shaping> {
        let unit = |v: f64| (0.0..1.0).contains(&v);
        Ok(match name {
            "react" => Shaping::React {
                quantile: p.f64("react_quantile", 0.8, "in (0, 1]", |v| v > 0.0 && v <= 1.0)?,
                per_level: p.bool("per_level", true)?,
            },
            "ash" => Shaping::Ash {
                percentile: p.f64("ash_percentile", 0.90, "in [0, 1)", unit)?,
            },
            "scale" => Shaping::Scale {
                percentile: p.f64("scale_percentile", 0.85, "in [0, 1)", unit)?,
            },
            "dice" => Shaping::Dice {
                percentile: p.f64("dice_percentile", 0.9, "in [0, 1)", unit)?,
            },
            other => {
                return Err(err(
                    p.scorer(),
                    format!(
                        "unknown shaping `{other}`; valid shapings: {}",
                        SHAPINGS.join(", ")
                    ),
                ))
            }
        })
    }

    pub(crate) fn params(&self, out: &mut BTreeMap<String, serde_json::Value>) {
        match self {
            Shaping::React {
                quantile,
                per_level,
            } => {
                out.insert("react_quantile".into(), (*quantile).into());
                out.insert("per_level".into(), (*per_level).into());
            }
            Shaping::Ash { percentile } => {
                out.insert("ash_percentile".into(), (*percentile).into());
            }
            Shaping::Scale { percentile } => {
                out.insert("scale_percentile".into(), (*percentile).into());
            }
            Shaping::Dice { percentile } => {
                out.insert("dice_percentile".into(), (*percentile).into());
            }
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
            Shaping::React {
                quantile,
                per_level,
            } => {
                let (grouping, members) = Grouping::fit(boxes, *per_level);
                for idx in &members {
                    let mut values: Vec<f64> = idx
                        .iter()
                        .flat_map(|&i| boxes.feature(i).iter().map(|&v| v as f64))
                        .collect();
                    fitted
                        .thresholds
                        .push(quantile_linear(&mut values, *quantile));
                }
                fitted.grouping = grouping;
            }
            Shaping::Dice { percentile } => {
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
                    let tau = quantile_linear(&mut contrib.clone(), *percentile);
                    fitted
                        .masks
                        .push(contrib.iter().map(|&v| v > tau).collect());
                }
            }
            Shaping::Ash { .. } | Shaping::Scale { .. } => {}
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
            Shaping::React { .. } => fitted.grouping.assign(scorer, boxes)?,
            _ => Vec::new(),
        };
        (0..boxes.len())
            .into_par_iter()
            .map(|i| {
                let head = &fitted.heads.heads[head_of[i]];
                let mut f = feature_f64(boxes, i);
                match self {
                    Shaping::React { .. } => {
                        let c = fitted.thresholds[group_of[i]];
                        f.iter_mut().for_each(|v| *v = v.min(c));
                        Ok(head.logits(&f))
                    }
                    Shaping::Ash { percentile } | Shaping::Scale { percentile } => {
                        let q = quantile_linear(&mut f.clone(), *percentile);
                        let total: f64 = f.iter().sum();
                        let kept: f64 = f.iter().filter(|&&v| v > q).sum();
                        let log_s = total / kept;
                        if kept <= 0.0 || !log_s.is_finite() || log_s > 700.0 {
                            return Err(err(
                                scorer,
                                format!(
                                    "{}: box {i}: the activations above the {percentile} percentile sum to {kept} (all activations: {total}), so the scale exp({total}/{kept}) is undefined or overflows; {} assumes non-negative (post-ReLU) features",
                                    self.name(),
                                    self.name()
                                ),
                            ));
                        }
                        let s = log_s.exp();
                        let prune = matches!(self, Shaping::Ash { .. });
                        f.iter_mut().for_each(|v| {
                            *v = if prune && *v <= q { 0.0 } else { *v * s };
                        });
                        Ok(head.logits(&f))
                    }
                    Shaping::Dice { .. } => {
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
            Shaping::React { .. } => {
                self.grouping.write(out);
                out.push(
                    "react.thresholds",
                    vec![self.thresholds.len()],
                    self.thresholds.clone(),
                );
            }
            Shaping::Dice { .. } => {
                for (h, m) in self.masks.iter().enumerate() {
                    let head = &self.heads.heads[h];
                    out.push(
                        &format!("dice.{h}.mask"),
                        vec![head.classes, head.dim],
                        m.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect(),
                    );
                }
            }
            Shaping::Ash { .. } | Shaping::Scale { .. } => {}
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
            Shaping::React { .. } => {
                fitted.grouping = Grouping::read(t)?;
                fitted.thresholds = t.take("react.thresholds", &[fitted.grouping.len()])?;
            }
            Shaping::Dice { .. } => {
                for h in 0..fitted.heads.heads.len() {
                    let m = t.take(&format!("dice.{h}.mask"), &[classes, dim])?;
                    if m.iter().any(|&v| v != 0.0 && v != 1.0) {
                        return Err(t.bad(format!("tensor `dice.{h}.mask` is not 0/1")));
                    }
                    fitted.masks.push(m.iter().map(|&v| v == 1.0).collect());
                }
            }
            Shaping::Ash { .. } | Shaping::Scale { .. } => {}
        }
        Ok(fitted)
    }
}
