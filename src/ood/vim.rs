//! Virtual-logit Matching, ViM (Wang et al., CVPR'22; Oodeel `VIM`).
//!
//! **Fit** (per group, f64): origin `u` (`pca_origin=center`: the mean fit feature, Oodeel's
//! default; `pca_origin=pseudo`: the paper's `u = −pinv(W) b`, computed as `−Wᵀ pinv(W Wᵀ) b`
//! with the group's head); `Σ = (1/N)(F − u)ᵀ(F − u)`; eigendecomposition; `k` principal
//! dimensions; residual basis `R` = the eigenvectors of the `D − k` smallest eigenvalues;
//! `α = mean_i(max_c l_ic) / mean_i ‖Rᵀ(f_i − u)‖` over the fit boxes.
//!
//! **Score:** `α ‖Rᵀ(f − u)‖ − logsumexp(l)` (higher = more OOD; the logit of the virtual class's
//! softmax probability, rank-equivalent to the paper's score).
//!
//! **`princ_dims`** ([`PrincDims`]): an integer is the count `k` (`0 < k < D`); a number with a
//! decimal point is an explained-variance ratio `r` in (0, 1): `k` is the number of leading
//! components needed for the cumulative explained variance to exceed `r`, capped at `D − 1`.
//! Default `0.99` (Oodeel's). The `k` chosen per group is in the state (`group{g}.princ_dims`) and
//! from [`Vim::princ_dims_used`].
//!
//! **α must be positive**: it assumes positive max-logits on ID data (softmax heads). If the fit
//! boxes' mean max-logit is ≤ 0 (possible with sigmoid heads) or the residual is zero, `fit`
//! fails instead of producing a score whose residual term has the wrong sign.
//!
//! **Per level (YOLO):** `per_level=true` (default) fits origin, subspace and α per level (separate
//! heads and feature spaces); `per_level=false` pools (then `pca_origin=pseudo` needs a single
//! head).
//!
//! **Differences from Oodeel:** Oodeel's float ratio is off by one (it takes the 0-based index of
//! the first component whose cumulative ratio exceeds `r` as the count: one component fewer than
//! needed; 24 instead of 25 on the parity fixture); here `k` is the count. Oodeel's
//! `pca_origin="pseudo"` is dead code (gated on `layer_id == -1`); here it works. f64 statistics.

use std::collections::BTreeMap;

use super::common::{
    check_boxes, check_dim, check_fit_set, err, gather_features, logits_f64, not_fitted, Grouping,
    Heads, Params, TensorMap, TensorsOut, Uses,
};
use super::linalg::{logsumexp, matmul_nt, scaled_gram, sym_eigh, sym_pinv};
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::Result;

/// How many principal dimensions ViM removes before measuring the residual.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PrincDims {
    Count(usize),
    ExplainedVariance(f64),
}

impl PrincDims {
    pub(crate) fn parse(p: &Params) -> Result<PrincDims> {
        let Some(s) = p.string("princ_dims") else {
            return Ok(PrincDims::ExplainedVariance(0.99));
        };
        let bad = || {
            err(
                p.scorer(),
                format!(
                    "parameter `princ_dims={s}`: expected an integer count >= 1 or a ratio in (0, 1) written with a decimal point"
                ),
            )
        };
        if s.contains(['.', 'e', 'E']) {
            let r: f64 = s.parse().map_err(|_| bad())?;
            if !(r > 0.0 && r < 1.0) {
                return Err(bad());
            }
            Ok(PrincDims::ExplainedVariance(r))
        } else {
            let k: usize = s.parse().map_err(|_| bad())?;
            if k == 0 {
                return Err(bad());
            }
            Ok(PrincDims::Count(k))
        }
    }

    fn to_json(self) -> serde_json::Value {
        match self {
            PrincDims::Count(k) => k.into(),
            PrincDims::ExplainedVariance(r) => r.into(),
        }
    }

    /// The count for eigenvalues in ascending order.
    fn resolve(self, ascending: &[f64]) -> std::result::Result<usize, String> {
        let d = ascending.len();
        match self {
            PrincDims::Count(k) => {
                if k == 0 || k >= d {
                    Err(format!(
                        "princ_dims={k} must be a whole number from 1 to {} (the feature \
                         dimension minus 1)",
                        d.saturating_sub(1)
                    ))
                } else {
                    Ok(k)
                }
            }
            PrincDims::ExplainedVariance(r) => {
                let total: f64 = ascending.iter().sum();
                if total <= 0.0 {
                    return Err("the fit features have zero variance".into());
                }
                let mut cum = 0.0;
                let mut k = d;
                for (i, v) in ascending.iter().rev().enumerate() {
                    cum += v;
                    if cum / total > r {
                        k = i + 1;
                        break;
                    }
                }
                Ok(k.clamp(1, d - 1))
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PcaOrigin {
    Center,
    Pseudo,
}

#[derive(Clone, Debug)]
pub struct Vim {
    pub princ_dims: PrincDims,
    pub pca_origin: PcaOrigin,
    pub per_level: bool,
    fitted: Option<Fit>,
}

#[derive(Clone, Debug)]
struct Fit {
    dim: usize,
    classes: usize,
    grouping: Grouping,
    groups: Vec<Group>,
}

#[derive(Clone, Debug)]
struct Group {
    origin: Vec<f64>,
    /// Residual basis as rows, [D − k, D].
    residual: Vec<f64>,
    k: usize,
    alpha: f64,
}

impl Vim {
    pub fn new(princ_dims: PrincDims, pca_origin: PcaOrigin, per_level: bool) -> Self {
        Vim {
            princ_dims,
            pca_origin,
            per_level,
            fitted: None,
        }
    }

    pub(crate) fn from_params(p: &Params) -> Result<Vim> {
        let origin = match p.choice("pca_origin", "center", &["center", "pseudo"])? {
            "pseudo" => PcaOrigin::Pseudo,
            _ => PcaOrigin::Center,
        };
        Ok(Vim::new(
            PrincDims::parse(p)?,
            origin,
            p.bool("per_level", true)?,
        ))
    }

    /// The principal dimension count used by each group once fitted.
    pub fn princ_dims_used(&self) -> Option<Vec<usize>> {
        self.fitted
            .as_ref()
            .map(|f| f.groups.iter().map(|g| g.k).collect())
    }

    const USES: Uses = Uses {
        features: true,
        logits: true,
    };

    fn residual_norms(group: &Group, feats: &[f64], n: usize, d: usize) -> Vec<f64> {
        let centred: Vec<f64> = feats
            .chunks_exact(d)
            .flat_map(|row| row.iter().zip(&group.origin).map(|(v, u)| v - u))
            .collect();
        let r = d - group.k;
        let proj = matmul_nt(&centred, n, d, &group.residual, r);
        proj.chunks_exact(r)
            .map(|p| p.iter().map(|v| v * v).sum::<f64>().sqrt())
            .collect()
    }
}

impl Scorer for Vim {
    fn kind(&self) -> &'static str {
        "vim"
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let kind = self.kind();
        check_fit_set(kind, boxes, Self::USES)?;
        let d = boxes.feature_dim;
        if d < 2 {
            return Err(err(kind, "needs features of dimension >= 2"));
        }
        let (grouping, members) = Grouping::fit(boxes, self.per_level);
        let heads = match self.pca_origin {
            PcaOrigin::Pseudo => {
                let heads = Heads::from_boxes(kind, boxes)?;
                if grouping.levels.is_none() && heads.heads.len() > 1 {
                    return Err(err(
                        kind,
                        "pca_origin=pseudo with per-level heads needs per_level=true and a box set with `level`",
                    ));
                }
                Some(heads)
            }
            PcaOrigin::Center => None,
        };
        let mut groups = Vec::with_capacity(members.len());
        for (g, idx) in members.iter().enumerate() {
            let n = idx.len();
            let name = grouping.name(g);
            let feats = gather_features(boxes, idx);
            let origin = match &heads {
                None => {
                    let mut m = vec![0.0; d];
                    for row in feats.chunks_exact(d) {
                        m.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                    }
                    m.iter_mut().for_each(|a| *a /= n as f64);
                    m
                }
                Some(heads) => {
                    let h = match &grouping.levels {
                        Some(levels) if heads.heads.len() > 1 => {
                            let l = levels[g] as usize;
                            heads.heads.get(l).ok_or_else(|| {
                                err(kind, format!("{name}: no head for this level"))
                            })?
                        }
                        _ => &heads.heads[0],
                    };
                    // u = −Wᵀ pinv(W Wᵀ) b  (= −pinv(W) b)
                    let c = h.classes;
                    let wwt = matmul_nt(&h.weight, c, d, &h.weight, c);
                    let pinv = sym_pinv(&wwt, c, c.max(d) as f64 * f64::EPSILON)
                        .map_err(|e| err(kind, format!("{name}: {e}")))?;
                    let y: Vec<f64> = (0..c)
                        .map(|i| (0..c).map(|j| pinv[i * c + j] * h.bias[j]).sum())
                        .collect();
                    (0..d)
                        .map(|j| -(0..c).map(|i| h.weight[i * d + j] * y[i]).sum::<f64>())
                        .collect()
                }
            };
            let centred: Vec<f64> = feats
                .chunks_exact(d)
                .flat_map(|row| row.iter().zip(&origin).map(|(v, u)| v - u))
                .collect();
            let cov = scaled_gram(&centred, n, d, 1.0 / n as f64);
            let (values, vectors) =
                sym_eigh(&cov, d).map_err(|e| err(kind, format!("{name}: {e}")))?;
            let k = self
                .princ_dims
                .resolve(&values)
                .map_err(|e| err(kind, format!("{name}: {e}")))?;
            let residual = vectors[..(d - k) * d].to_vec();
            let mut group = Group {
                origin,
                residual,
                k,
                alpha: 0.0,
            };
            let norms = Self::residual_norms(&group, &feats, n, d);
            let mean_norm = norms.iter().sum::<f64>() / n as f64;
            let mean_max_logit = idx
                .iter()
                .map(|&i| {
                    boxes
                        .logit_row(i)
                        .iter()
                        .map(|&v| v as f64)
                        .fold(f64::NEG_INFINITY, f64::max)
                })
                .sum::<f64>()
                / n as f64;
            let alpha = mean_max_logit / mean_norm;
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(err(
                    kind,
                    format!(
                        "{name}: alpha = mean max-logit {mean_max_logit} / mean residual norm {mean_norm} is not positive; ViM assumes positive max-logits on ID data and a non-zero residual"
                    ),
                ));
            }
            group.alpha = alpha;
            groups.push(group);
        }
        self.fitted = Some(Fit {
            dim: d,
            classes: boxes.num_classes,
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
        check_dim(kind, "class count", fit.classes, boxes.num_classes)?;
        let members = fit.grouping.members(kind, boxes)?;
        let mut scores = vec![0.0; boxes.len()];
        for (group, idx) in fit.groups.iter().zip(&members) {
            if idx.is_empty() {
                continue;
            }
            let feats = gather_features(boxes, idx);
            let norms = Self::residual_norms(group, &feats, idx.len(), d);
            for (&i, norm) in idx.iter().zip(norms) {
                scores[i] = group.alpha * norm - logsumexp(&logits_f64(boxes, i));
            }
        }
        Ok(scores)
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        params.insert("princ_dims".into(), self.princ_dims.to_json());
        params.insert(
            "pca_origin".into(),
            match self.pca_origin {
                PcaOrigin::Center => "center",
                PcaOrigin::Pseudo => "pseudo",
            }
            .into(),
        );
        params.insert("per_level".into(), self.per_level.into());
        let mut out = TensorsOut::default();
        if let Some(fit) = &self.fitted {
            let d = fit.dim;
            out.scalar("feature_dim", d as f64);
            out.scalar("num_classes", fit.classes as f64);
            fit.grouping.write(&mut out);
            for (g, group) in fit.groups.iter().enumerate() {
                out.push(&format!("group{g}.origin"), vec![d], group.origin.clone());
                out.push(
                    &format!("group{g}.residual"),
                    vec![d - group.k, d],
                    group.residual.clone(),
                );
                out.scalar(&format!("group{g}.princ_dims"), group.k as f64);
                out.scalar(&format!("group{g}.alpha"), group.alpha);
            }
        }
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for Vim {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let d = t.scalar_usize("feature_dim")?;
        let classes = t.scalar_usize("num_classes")?;
        if d < 2 || classes == 0 {
            return Err(t.bad(format!("feature_dim {d} / num_classes {classes}")));
        }
        let grouping = Grouping::read(t)?;
        let mut groups = Vec::new();
        for g in 0..grouping.len() {
            let k = t.scalar_usize(&format!("group{g}.princ_dims"))?;
            if k == 0 || k >= d {
                return Err(t.bad(format!(
                    "group {g}: princ_dims {k} is not from 1 to {} (the feature dimension minus 1)",
                    d - 1
                )));
            }
            let origin = t.take(&format!("group{g}.origin"), &[d])?;
            let residual = t.take(&format!("group{g}.residual"), &[d - k, d])?;
            let alpha = t.scalar(&format!("group{g}.alpha"))?;
            groups.push(Group {
                origin,
                residual,
                k,
                alpha,
            });
        }
        self.fitted = Some(Fit {
            dim: d,
            classes,
            grouping,
            groups,
        });
        Ok(())
    }
}
