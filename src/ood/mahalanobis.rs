//! Mahalanobis (Lee et al., NeurIPS'18) and Relative Mahalanobis, RMDS (Ren et al., 2021).
//!
//! **Fit** (per group, f64): class means `μ_c` over the fit labels; tied covariance
//! `Σ = (1/N) Σ_i (f_i − μ_{y_i})(f_i − μ_{y_i})ᵀ` (biased, `= Σ_c (n_c/N) Cov_c`, as Oodeel
//! after PR #93); precision `P = pinv(Σ)`. RMDS adds a class-agnostic Gaussian over all fit
//! boxes of the group: `μ_0 = mean f`, `Σ_0 = (1/N)(F − μ_0)ᵀ(F − μ_0)`, `P_0 = pinv(Σ_0)`.
//!
//! **Score:** `mahalanobis`: `½ min_c d²_c`, `d²_c = (f − μ_c)ᵀ P (f − μ_c)` (Oodeel's scale; the
//! paper's confidence is `max_c −d²_c`, same ranking). `rmds`: `½ min_c (d²_c − d²_0)`.
//!
//! **Pseudo-inverse cut-off.** `P` is computed from the eigendecomposition of `Σ` (faer
//! `self_adjoint_eigen`), keeping the eigenpairs with `λ > pinv_rtol · λ_max` and discarding the
//! rest (no regularisation). Default `pinv_rtol=auto` = `D · ε_f32` (`D · 1.19e-7`), the same
//! relative cut-off as torch's `linalg.pinv` on a float32 `D×D` matrix (Oodeel's), chosen because
//! the features themselves are float32: directions with less relative variance than that are
//! rounding noise. A singular covariance (fewer boxes than dimensions, collinear or constant
//! features) therefore works: its null directions are ignored, as with any pseudo-inverse. A
//! group whose covariance is exactly zero (e.g. one box) keeps no direction and scores 0.
//! Quadratic forms are evaluated row by row as `‖A (f − μ_c)‖²` with the whitening
//! `A = diag(λ^{-1/2}) Vᵀ` (never Oodeel's `B×B` matrix of which only the diagonal is used).
//!
//! **Classes.** Only classes with fit boxes in the group exist in that group; a class with a single
//! box has its mean and contributes nothing to `Σ` (works). Labels: `label` where ≥ 0, else
//! `class_id`.
//!
//! **Per level (YOLO):** `per_level=true` (default) fits means and covariance separately on each
//! level: YOLO's levels have separate class branches (`cv3[i]`), so their features live in
//! different spaces. `per_level=false` pools all boxes into one fit.
//!
//! **Differences from Oodeel:** no input perturbation (Oodeel's default `eps=0.0014`; box sets
//! carry no image: equals Oodeel with `eps=0`); statistics in f64 instead of f32; row-wise
//! quadratic forms; an explicit, recorded pinv cut-off.

use rayon::prelude::*;
use std::collections::BTreeMap;

use super::common::{
    check_boxes, check_dim, check_fit_set, distinct, err, fit_labels, gather_features, not_fitted,
    Grouping, Params, TensorMap, TensorsOut, Uses,
};
use super::linalg::{matmul_nt, pinv_whitening, scaled_gram};
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::Result;

/// The relative eigenvalue cut-off of the pseudo-inverse.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PinvRtol {
    /// `D · f32::EPSILON`, torch's float32 default.
    Auto,
    Value(f64),
}

impl PinvRtol {
    pub(crate) fn parse(p: &Params) -> Result<PinvRtol> {
        match p.string("pinv_rtol") {
            None => Ok(PinvRtol::Auto),
            Some(s) if s.eq_ignore_ascii_case("auto") => Ok(PinvRtol::Auto),
            Some(_) => Ok(PinvRtol::Value(p.f64(
                "pinv_rtol",
                0.0,
                "in [0, 1) or `auto`",
                |v| (0.0..1.0).contains(&v),
            )?)),
        }
    }

    pub fn resolve(&self, dim: usize) -> f64 {
        match self {
            PinvRtol::Auto => dim as f64 * f32::EPSILON as f64,
            PinvRtol::Value(v) => *v,
        }
    }

    pub(crate) fn to_json(self) -> serde_json::Value {
        match self {
            PinvRtol::Auto => "auto".into(),
            PinvRtol::Value(v) => v.into(),
        }
    }
}

/// Mahalanobis (`relative=false`) or RMDS (`relative=true`).
#[derive(Clone, Debug)]
pub struct Mahalanobis {
    pub relative: bool,
    pub per_level: bool,
    pub pinv_rtol: PinvRtol,
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
    /// [n_classes, D]
    means: Vec<f64>,
    /// Mean of all fit boxes of the group [D]; the origin of the projections (and RMDS's μ_0).
    center: Vec<f64>,
    /// [rank, D]
    whitening: Vec<f64>,
    rank: usize,
    /// RMDS: [rank0, D]
    bg_whitening: Vec<f64>,
    bg_rank: usize,
    /// Derived: A (μ_c − center), [n_classes, rank].
    white_means: Vec<f64>,
}

impl Group {
    fn derive(&mut self, dim: usize) {
        let n = self.classes.len();
        let centred: Vec<f64> = self
            .means
            .chunks_exact(dim)
            .flat_map(|m| m.iter().zip(&self.center).map(|(a, c)| a - c))
            .collect();
        self.white_means = matmul_nt(&centred, n, dim, &self.whitening, self.rank);
    }
}

impl Mahalanobis {
    pub fn new(relative: bool, per_level: bool, pinv_rtol: PinvRtol) -> Self {
        Mahalanobis {
            relative,
            per_level,
            pinv_rtol,
            fitted: None,
        }
    }

    const USES: Uses = Uses {
        features: true,
        logits: false,
    };

    /// The rank kept by the pseudo-inverse in each group (class covariance; background for RMDS).
    pub fn ranks(&self) -> Option<Vec<(usize, usize)>> {
        self.fitted
            .as_ref()
            .map(|f| f.groups.iter().map(|g| (g.rank, g.bg_rank)).collect())
    }
}

impl Scorer for Mahalanobis {
    fn kind(&self) -> &'static str {
        if self.relative {
            "rmds"
        } else {
            "mahalanobis"
        }
    }
    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        Some(fit_labels(boxes))
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let kind = self.kind();
        check_fit_set(kind, boxes, Self::USES)?;
        let d = boxes.feature_dim;
        let rtol = self.pinv_rtol.resolve(d);
        let labels = fit_labels(boxes);
        let (grouping, members) = Grouping::fit(boxes, self.per_level);
        let mut groups = Vec::with_capacity(members.len());
        for (g, idx) in members.iter().enumerate() {
            let n = idx.len();
            let feats = gather_features(boxes, idx);
            let classes = distinct(idx.iter().map(|&i| labels[i]));
            let mut means = vec![0.0; classes.len() * d];
            let mut counts = vec![0usize; classes.len()];
            let class_of: Vec<usize> = idx
                .iter()
                .map(|&i| classes.binary_search(&labels[i]).expect("fit class"))
                .collect();
            for (row, &c) in feats.chunks_exact(d).zip(&class_of) {
                counts[c] += 1;
                for (m, v) in means[c * d..(c + 1) * d].iter_mut().zip(row) {
                    *m += v;
                }
            }
            for (c, &cnt) in counts.iter().enumerate() {
                means[c * d..(c + 1) * d]
                    .iter_mut()
                    .for_each(|m| *m /= cnt as f64);
            }
            let mut center = vec![0.0; d];
            for row in feats.chunks_exact(d) {
                center.iter_mut().zip(row).for_each(|(c, v)| *c += v);
            }
            center.iter_mut().for_each(|c| *c /= n as f64);

            let within: Vec<f64> = feats
                .chunks_exact(d)
                .zip(&class_of)
                .flat_map(|(row, &c)| {
                    row.iter()
                        .zip(&means[c * d..(c + 1) * d])
                        .map(|(v, m)| v - m)
                })
                .collect();
            let cov = scaled_gram(&within, n, d, 1.0 / n as f64);
            let (whitening, rank) = pinv_whitening(&cov, d, rtol)
                .map_err(|e| err(kind, format!("{}: {e}", grouping.name(g))))?;
            let (bg_whitening, bg_rank) = if self.relative {
                let centred: Vec<f64> = feats
                    .chunks_exact(d)
                    .flat_map(|row| row.iter().zip(&center).map(|(v, c)| v - c))
                    .collect();
                let cov0 = scaled_gram(&centred, n, d, 1.0 / n as f64);
                pinv_whitening(&cov0, d, rtol)
                    .map_err(|e| err(kind, format!("{}: {e}", grouping.name(g))))?
            } else {
                (Vec::new(), 0)
            };
            let mut group = Group {
                classes,
                means,
                center,
                whitening,
                rank,
                bg_whitening,
                bg_rank,
                white_means: Vec::new(),
            };
            group.derive(d);
            groups.push(group);
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
        let d = fit.dim;
        check_dim(kind, "feature dimension", d, boxes.feature_dim)?;
        let members = fit.grouping.members(kind, boxes)?;
        let mut scores = vec![0.0; boxes.len()];
        for (group, idx) in fit.groups.iter().zip(&members) {
            if idx.is_empty() {
                continue;
            }
            let n = idx.len();
            let centred: Vec<f64> = gather_features(boxes, idx)
                .chunks_exact(d)
                .flat_map(|row| row.iter().zip(&group.center).map(|(v, c)| v - c))
                .collect();
            let r = group.rank;
            let white = matmul_nt(&centred, n, d, &group.whitening, r);
            let bg = if self.relative {
                Some(matmul_nt(
                    &centred,
                    n,
                    d,
                    &group.bg_whitening,
                    group.bg_rank,
                ))
            } else {
                None
            };
            let group_scores: Vec<f64> = (0..n)
                .into_par_iter()
                .map(|k| {
                    let w = &white[k * r..(k + 1) * r];
                    let min_d2 = if r == 0 {
                        0.0
                    } else {
                        group
                            .white_means
                            .chunks_exact(r)
                            .map(|m| w.iter().zip(m).map(|(a, b)| (a - b) * (a - b)).sum::<f64>())
                            .fold(f64::INFINITY, f64::min)
                    };
                    let bg_d2 = bg.as_ref().map_or(0.0, |bg| {
                        let r0 = group.bg_rank;
                        bg[k * r0..(k + 1) * r0].iter().map(|v| v * v).sum::<f64>()
                    });
                    0.5 * (min_d2 - bg_d2)
                })
                .collect();
            for (&i, s) in idx.iter().zip(group_scores) {
                scores[i] = s;
            }
        }
        Ok(scores)
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        params.insert("per_level".into(), self.per_level.into());
        params.insert("pinv_rtol".into(), self.pinv_rtol.to_json());
        let mut out = TensorsOut::default();
        if let Some(fit) = &self.fitted {
            let d = fit.dim;
            out.scalar("feature_dim", d as f64);
            fit.grouping.write(&mut out);
            for (g, group) in fit.groups.iter().enumerate() {
                let n = group.classes.len();
                out.push(
                    &format!("group{g}.classes"),
                    vec![n],
                    group.classes.iter().map(|&c| c as f64).collect(),
                );
                out.push(&format!("group{g}.means"), vec![n, d], group.means.clone());
                out.push(&format!("group{g}.center"), vec![d], group.center.clone());
                out.push(
                    &format!("group{g}.whitening"),
                    vec![group.rank, d],
                    group.whitening.clone(),
                );
                if self.relative {
                    out.push(
                        &format!("group{g}.bg_whitening"),
                        vec![group.bg_rank, d],
                        group.bg_whitening.clone(),
                    );
                }
            }
        }
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for Mahalanobis {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let d = t.feature_dim()?;
        let grouping = Grouping::read(t)?;
        let mut groups = Vec::new();
        for g in 0..grouping.len() {
            let classes = t.labels(&format!("group{g}.classes"))?;
            if classes.is_empty() {
                return Err(t.bad(format!("group {g} has no classes")));
            }
            let means = t.take(&format!("group{g}.means"), &[classes.len(), d])?;
            let center = t.take(&format!("group{g}.center"), &[d])?;
            let (shape, whitening) = t.take_rank(&format!("group{g}.whitening"), 2)?;
            if shape[1] != d || shape[0] > d {
                return Err(t.bad(format!(
                    "tensor `group{g}.whitening` has shape {shape:?}, expected [r <= {d}, {d}]"
                )));
            }
            let (bg_whitening, bg_rank) = if self.relative {
                let (s, w) = t.take_rank(&format!("group{g}.bg_whitening"), 2)?;
                if s[1] != d || s[0] > d {
                    return Err(t.bad(format!(
                        "tensor `group{g}.bg_whitening` has shape {s:?}, expected [r <= {d}, {d}]"
                    )));
                }
                (w, s[0])
            } else {
                (Vec::new(), 0)
            };
            let mut group = Group {
                classes,
                means,
                center,
                whitening,
                rank: shape[0],
                bg_whitening,
                bg_rank,
                white_means: Vec::new(),
            };
            group.derive(d);
            groups.push(group);
        }
        self.fitted = Some(Fit {
            dim: d,
            grouping,
            groups,
        });
        Ok(())
    }
}
