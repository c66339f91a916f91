//! Gram-matrix deviations (Sastry & Oore, ICML'20; Oodeel `Gram`) on a box's feature vector.
//!
//! **Statistic** per order `p`: Oodeel's Gram statistic of a feature map `F` is
//! `G = F^p (F^p)ᵀ`, `G ← sign(G)|G|^{1/p}`, lower triangle (diagonal included), row sums. A box
//! feature is a vector (one "pixel"), and then **the statistic degenerates**: `G_ij` is the outer
//! product and `sign(f_i^p f_j^p)|f_i^p f_j^p|^{1/p}` is `f_i f_j` for odd `p` and `|f_i||f_j|` for
//! even `p`, so the per-channel statistic is `f_i Σ_{j≤i} f_j` (odd orders) or
//! `|f_i| Σ_{j≤i} |f_j|` (even orders): every odd order gives the same values, every even order
//! too (and with non-negative features all orders coincide). It is computed in that closed form,
//! in f64 (no `f^p` overflow), and kept because it matches Oodeel's definition on vector features
//! (what Oodeel computes for a 2-D feature layer); with the default `orders=1,2,3,4,5` the odd
//! statistic is counted three times and the even one twice. For a real Gram statistic, give the
//! scorer a map feature (e.g. an ROI-aligned P×P neck map), which box sets do not carry yet.
//!
//! **Fit** (per group): per predicted class (`class_id`; Oodeel uses argmax of the logits, and the
//! bounds are looked up by the predicted class at score time, so they are fitted on it too, not on
//! the ground-truth label) and per (order, channel): `lo` = the `quantile` and `up` = the
//! `1 − quantile` quantile (linear interpolation; Oodeel's replacement for the paper's min/max).
//! The same bounds over all fit boxes of the group are kept as a fallback.
//!
//! **Score:** `Σ_{orders, channels} [(lo − x)/(|lo| + 1e-6)]·1[x < lo] + [(x − up)/(|up| + 1e-6)]·1[x > up]`,
//! with the bounds of the box's predicted class. Most ID boxes score exactly 0: metrics must handle
//! ties. Defaults: `orders=1,2,3,4,5`, `quantile=0.01` (Oodeel's).
//!
//! **Per level (YOLO):** `per_level=true` (default) fits bounds per level; `per_level=false` pools.
//!
//! **Differences from Oodeel 0.4:** all in one place, `docs/scorers.md` ("Differences from
//! Oodeel 0.4").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::{distinct, TensorMap, TensorsOut, Uses};
use super::grouped::PerLevel;
use super::linalg::quantile_linear;
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::Result;

pub(crate) const GRAM: KindEntry = KindEntry {
    name: "gram",
    summary: "Gram-statistic deviation from per-class bounds (degenerate on vectors: see `ood::gram`)",
    inputs: Gram::USES,
    shapeable: false,
    params: infos::<GramParams>,
    build: |p, _| Ok(Box::new(Gram::with_params(p.typed()?))),
};

const EPSILON: f64 = 1e-6;

/// Gram's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GramParams {
    pub orders: Vec<u32>,
    pub quantile: f64,
    pub per_level: bool,
}

impl Default for GramParams {
    fn default() -> Self {
        GramParams {
            orders: vec![1, 2, 3, 4, 5],
            quantile: 0.01,
            per_level: true,
        }
    }
}

impl ParamSet for GramParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "orders",
            expected: "integers >= 1 separated by commas",
            doc: "the powers p of the Gram statistics",
        },
        ParamDoc {
            name: "quantile",
            expected: "a number in [0, 0.5)",
            doc: "the bounds are the `quantile` and `1 − quantile` quantiles of the fit statistics",
        },
        PER_LEVEL,
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        if self.orders.is_empty() || self.orders.contains(&0) {
            Some("orders")
        } else if !(0.0..0.5).contains(&self.quantile) {
            Some("quantile")
        } else {
            None
        }
    }
}

#[derive(Clone, Debug)]
pub struct Gram {
    pub params: GramParams,
    groups: PerLevel<Group>,
}

#[derive(Clone, Debug)]
struct Group {
    classes: Vec<i64>,
    /// [n_classes, n_orders · D]
    lower: Vec<f64>,
    upper: Vec<f64>,
    /// [n_orders · D], over all boxes of the group.
    pooled_lower: Vec<f64>,
    pooled_upper: Vec<f64>,
}

impl Gram {
    pub fn new(orders: Vec<u32>, quantile: f64, per_level: bool) -> Self {
        Self::with_params(GramParams {
            orders,
            quantile,
            per_level,
        })
    }

    pub fn with_params(params: GramParams) -> Self {
        Gram {
            params,
            groups: PerLevel::default(),
        }
    }

    const USES: Uses = Uses {
        features: true,
        logits: false,
    };

    /// The statistic of one feature, [n_orders · D].
    fn stats(&self, f: &[f32]) -> Vec<f64> {
        let d = f.len();
        let mut odd = Vec::with_capacity(d);
        let mut even = Vec::with_capacity(d);
        let (mut cs, mut cs_abs) = (0.0f64, 0.0f64);
        for &v in f {
            let v = v as f64;
            cs += v;
            cs_abs += v.abs();
            odd.push(v * cs);
            even.push(v.abs() * cs_abs);
        }
        let mut out = Vec::with_capacity(self.params.orders.len() * d);
        for &p in &self.params.orders {
            out.extend_from_slice(if p % 2 == 1 { &odd } else { &even });
        }
        out
    }

    fn bounds(&self, stats: &[Vec<f64>], width: usize) -> (Vec<f64>, Vec<f64>) {
        let mut lo = Vec::with_capacity(width);
        let mut up = Vec::with_capacity(width);
        let mut column = Vec::with_capacity(stats.len());
        for j in 0..width {
            column.clear();
            column.extend(stats.iter().map(|s| s[j]));
            lo.push(quantile_linear(&mut column, self.params.quantile));
            up.push(quantile_linear(&mut column, 1.0 - self.params.quantile));
        }
        (lo, up)
    }

    fn fit_group(&self, boxes: &BoxSet, idx: &[usize], width: usize) -> Group {
        let stats: Vec<Vec<f64>> = idx.iter().map(|&i| self.stats(boxes.feature(i))).collect();
        let classes = distinct(idx.iter().map(|&i| boxes.class_id[i] as i64));
        let mut lower = Vec::with_capacity(classes.len() * width);
        let mut upper = Vec::with_capacity(classes.len() * width);
        for &c in &classes {
            let of_class: Vec<Vec<f64>> = idx
                .iter()
                .zip(&stats)
                .filter(|(&i, _)| (boxes.class_id[i] as i64) == c)
                .map(|(_, s)| s.clone())
                .collect();
            let (lo, up) = self.bounds(&of_class, width);
            lower.extend(lo);
            upper.extend(up);
        }
        let (pooled_lower, pooled_upper) = self.bounds(&stats, width);
        Group {
            classes,
            lower,
            upper,
            pooled_lower,
            pooled_upper,
        }
    }

    fn score_box(&self, group: &Group, boxes: &BoxSet, i: usize, width: usize) -> f64 {
        let (lo, up) = match group.classes.binary_search(&(boxes.class_id[i] as i64)) {
            Ok(c) => (
                &group.lower[c * width..(c + 1) * width],
                &group.upper[c * width..(c + 1) * width],
            ),
            Err(_) => (&group.pooled_lower[..], &group.pooled_upper[..]),
        };
        self.stats(boxes.feature(i))
            .iter()
            .zip(lo.iter().zip(up))
            .map(|(&x, (&lo, &up))| {
                if x < lo {
                    (lo - x) / (lo.abs() + EPSILON)
                } else if x > up {
                    (x - up) / (up.abs() + EPSILON)
                } else {
                    0.0
                }
            })
            .sum()
    }
}

impl Scorer for Gram {
    fn kind(&self) -> &'static str {
        GRAM.name
    }
    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        Some(boxes.class_id.iter().map(|&c| c as i64).collect())
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let mut groups = PerLevel::default();
        let orders = self.params.orders.len();
        groups.fit(self.kind(), boxes, Self::USES, self.params.per_level, |idx, info| {
            Ok(self.fit_group(boxes, idx, orders * info.dim))
        })?;
        self.groups = groups;
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        let orders = self.params.orders.len();
        self.groups
            .score(self.kind(), boxes, Self::USES, |group, idx, info| {
                Ok(idx
                    .iter()
                    .map(|&i| self.score_box(group, boxes, i, orders * info.dim))
                    .collect())
            })
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        let o = self.params.orders.len();
        self.groups.write(&mut out, |group, info, out| {
            let (n, d) = (group.classes.len(), info.dim);
            out.push(
                &info.tensor("classes"),
                vec![n],
                group.classes.iter().map(|&c| c as f64).collect(),
            );
            out.push(&info.tensor("lower"), vec![n, o, d], group.lower.clone());
            out.push(&info.tensor("upper"), vec![n, o, d], group.upper.clone());
            out.push(
                &info.tensor("pooled_lower"),
                vec![o, d],
                group.pooled_lower.clone(),
            );
            out.push(
                &info.tensor("pooled_upper"),
                vec![o, d],
                group.pooled_upper.clone(),
            );
        });
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for Gram {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let o = self.params.orders.len();
        self.groups = PerLevel::read(t, Self::USES, |t, info| {
            let d = info.dim;
            let classes = t.labels(&info.tensor("classes"))?;
            let n = classes.len();
            Ok(Group {
                lower: t.take(&info.tensor("lower"), &[n, o, d])?,
                upper: t.take(&info.tensor("upper"), &[n, o, d])?,
                pooled_lower: t.take(&info.tensor("pooled_lower"), &[o, d])?,
                pooled_upper: t.take(&info.tensor("pooled_upper"), &[o, d])?,
                classes,
            })
        })?;
        Ok(())
    }
}
