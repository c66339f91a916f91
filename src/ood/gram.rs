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
//! **Differences from Oodeel:** a predicted class never seen at fit uses the group's pooled
//! bounds (Oodeel raises `KeyError`); closed-form f64 statistic; no `val_split`.

use std::collections::BTreeMap;

use super::common::{
    check_boxes, check_dim, check_fit_set, distinct, err, not_fitted, Grouping, Params, TensorMap,
    TensorsOut, Uses,
};
use super::linalg::quantile_linear;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::Result;

const EPSILON: f64 = 1e-6;

#[derive(Clone, Debug)]
pub struct Gram {
    pub orders: Vec<u32>,
    pub quantile: f64,
    pub per_level: bool,
    fitted: Option<Fit>,
}

#[derive(Clone, Debug)]
struct Fit {
    dim: usize,
    grouping: Grouping,
    groups: Vec<Group>,
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
        Gram {
            orders,
            quantile,
            per_level,
            fitted: None,
        }
    }

    pub(crate) fn from_params(p: &Params) -> Result<Gram> {
        let orders = match p.string("orders") {
            None => vec![1, 2, 3, 4, 5],
            Some(s) => {
                let inner = s.trim().trim_start_matches('[').trim_end_matches(']');
                let parsed: std::result::Result<Vec<u32>, _> = inner
                    .split(',')
                    .map(|t| t.trim())
                    .filter(|t| !t.is_empty())
                    .map(str::parse::<u32>)
                    .collect();
                match parsed {
                    Ok(v) if !v.is_empty() && v.iter().all(|&o| o >= 1) => v,
                    _ => {
                        return Err(err(
                            p.scorer(),
                            format!(
                                "parameter `orders={s}`: expected integers >= 1 separated by commas"
                            ),
                        ))
                    }
                }
            }
        };
        Ok(Gram::new(
            orders,
            p.f64("quantile", 0.01, "in [0, 0.5)", |v| (0.0..0.5).contains(&v))?,
            p.bool("per_level", true)?,
        ))
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
        let mut out = Vec::with_capacity(self.orders.len() * d);
        for &p in &self.orders {
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
            lo.push(quantile_linear(&mut column, self.quantile));
            up.push(quantile_linear(&mut column, 1.0 - self.quantile));
        }
        (lo, up)
    }
}

impl Scorer for Gram {
    fn kind(&self) -> &'static str {
        "gram"
    }
    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        Some(boxes.class_id.clone())
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        check_fit_set(self.kind(), boxes, Self::USES)?;
        let d = boxes.feature_dim;
        let width = self.orders.len() * d;
        let (grouping, members) = Grouping::fit(boxes, self.per_level);
        let mut groups = Vec::new();
        for idx in &members {
            let stats: Vec<Vec<f64>> = idx.iter().map(|&i| self.stats(boxes.feature(i))).collect();
            let classes = distinct(idx.iter().map(|&i| boxes.class_id[i]));
            let mut lower = Vec::with_capacity(classes.len() * width);
            let mut upper = Vec::with_capacity(classes.len() * width);
            for &c in &classes {
                let of_class: Vec<Vec<f64>> = idx
                    .iter()
                    .zip(&stats)
                    .filter(|(&i, _)| boxes.class_id[i] == c)
                    .map(|(_, s)| s.clone())
                    .collect();
                let (lo, up) = self.bounds(&of_class, width);
                lower.extend(lo);
                upper.extend(up);
            }
            let (pooled_lower, pooled_upper) = self.bounds(&stats, width);
            groups.push(Group {
                classes,
                lower,
                upper,
                pooled_lower,
                pooled_upper,
            });
        }
        self.fitted = Some(Fit {
            dim: d,
            grouping,
            groups,
        });
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        let kind = self.kind();
        let fit = self.fitted.as_ref().ok_or_else(|| not_fitted(kind))?;
        check_boxes(kind, boxes, Self::USES)?;
        check_dim(kind, "feature dimension", fit.dim, boxes.feature_dim)?;
        let width = self.orders.len() * fit.dim;
        let group_of = fit.grouping.assign(kind, boxes)?;
        Ok((0..boxes.len())
            .map(|i| {
                let group = &fit.groups[group_of[i]];
                let (lo, up) = match group.classes.binary_search(&boxes.class_id[i]) {
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
            })
            .collect())
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        params.insert(
            "orders".into(),
            serde_json::Value::Array(self.orders.iter().map(|&o| o.into()).collect()),
        );
        params.insert("quantile".into(), self.quantile.into());
        params.insert("per_level".into(), self.per_level.into());
        let mut out = TensorsOut::default();
        if let Some(fit) = &self.fitted {
            let (o, d) = (self.orders.len(), fit.dim);
            out.scalar("feature_dim", d as f64);
            fit.grouping.write(&mut out);
            for (g, group) in fit.groups.iter().enumerate() {
                let n = group.classes.len();
                out.push(
                    &format!("group{g}.classes"),
                    vec![n],
                    group.classes.iter().map(|&c| c as f64).collect(),
                );
                out.push(
                    &format!("group{g}.lower"),
                    vec![n, o, d],
                    group.lower.clone(),
                );
                out.push(
                    &format!("group{g}.upper"),
                    vec![n, o, d],
                    group.upper.clone(),
                );
                out.push(
                    &format!("group{g}.pooled_lower"),
                    vec![o, d],
                    group.pooled_lower.clone(),
                );
                out.push(
                    &format!("group{g}.pooled_upper"),
                    vec![o, d],
                    group.pooled_upper.clone(),
                );
            }
        }
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for Gram {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let d = t.feature_dim()?;
        let o = self.orders.len();
        let grouping = Grouping::read(t)?;
        let mut groups = Vec::new();
        for g in 0..grouping.len() {
            let classes = t.labels(&format!("group{g}.classes"))?;
            let n = classes.len();
            groups.push(Group {
                lower: t.take(&format!("group{g}.lower"), &[n, o, d])?,
                upper: t.take(&format!("group{g}.upper"), &[n, o, d])?,
                pooled_lower: t.take(&format!("group{g}.pooled_lower"), &[o, d])?,
                pooled_upper: t.take(&format!("group{g}.pooled_upper"), &[o, d])?,
                classes,
            });
        }
        self.fitted = Some(Fit {
            dim: d,
            grouping,
            groups,
        });
        Ok(())
    }
}
