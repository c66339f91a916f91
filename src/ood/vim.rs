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
//! **Differences from Oodeel 0.4:** all in one place, `docs/scorers.md` ("Differences from
//! Oodeel 0.4").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::{
    err, gather_features, logits_f64, Head, Heads, TensorMap, TensorsOut, Uses,
};
use super::grouped::{GroupInfo, PerLevel};
use super::linalg::{logsumexp, matmul_nt, scaled_gram, sym_eigh, sym_pinv};
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};

pub(crate) const VIM: KindEntry = KindEntry {
    name: "vim",
    summary: "`α‖Rᵀ(f − u)‖ − logsumexp(l)`, residual off the principal subspace (the head too with `pca_origin=pseudo`)",
    inputs: Vim::USES,
    shapeable: false,
    params: infos::<VimParams>,
    build: |p, _| Ok(Box::new(Vim::with_params(p.typed()?))),
};

/// How many principal dimensions ViM removes before measuring the residual: an integer count,
/// or an explained-variance ratio (a number written with a decimal point).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PrincDims {
    Count(usize),
    ExplainedVariance(f64),
}

impl PrincDims {
    fn valid(self) -> bool {
        match self {
            PrincDims::Count(k) => k >= 1,
            PrincDims::ExplainedVariance(r) => r > 0.0 && r < 1.0,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PcaOrigin {
    Center,
    Pseudo,
}

/// ViM's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VimParams {
    pub princ_dims: PrincDims,
    pub pca_origin: PcaOrigin,
    pub per_level: bool,
}

impl Default for VimParams {
    fn default() -> Self {
        VimParams {
            princ_dims: PrincDims::ExplainedVariance(0.99),
            pca_origin: PcaOrigin::Center,
            per_level: true,
        }
    }
}

impl ParamSet for VimParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "princ_dims",
            expected: "an integer count >= 1 or a ratio in (0, 1) written with a decimal point",
            doc: "principal dimensions removed: a count, or the explained-variance ratio to exceed",
        },
        ParamDoc {
            name: "pca_origin",
            expected: "one of center, pseudo",
            doc: "origin u: the mean fit feature, or the paper's `−pinv(W) b`",
        },
        PER_LEVEL,
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        (!self.princ_dims.valid()).then_some("princ_dims")
    }
}

#[derive(Clone, Debug)]
pub struct Vim {
    pub params: VimParams,
    groups: PerLevel<Group>,
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
        Self::with_params(VimParams {
            princ_dims,
            pca_origin,
            per_level,
        })
    }

    pub fn with_params(params: VimParams) -> Self {
        Vim {
            params,
            groups: PerLevel::default(),
        }
    }

    /// The principal dimension count used by each group once fitted.
    pub fn princ_dims_used(&self) -> Option<Vec<usize>> {
        self.groups
            .groups()
            .map(|g| g.iter().map(|g| g.k).collect())
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

    /// The group's head for `pca_origin=pseudo`: its level's, or the single one.
    fn head<'h>(&self, heads: &'h Heads, info: &GroupInfo) -> Result<&'h Head> {
        if heads.heads.len() == 1 {
            return Ok(&heads.heads[0]);
        }
        let Some(level) = info.level() else {
            return Err(err(
                self.kind(), ScorerFault::MissingInput,
                "pca_origin=pseudo with per-level heads needs per_level=true and a box set with `level`",
            ));
        };
        heads.heads.get(level as usize).ok_or_else(|| {
            err(
                self.kind(), ScorerFault::MissingInput,
                format!("{}: no head for this level", info.name()),
            )
        })
    }

    /// `u = −Wᵀ pinv(W Wᵀ) b` (= `−pinv(W) b`).
    fn pseudo_origin(&self, h: &Head, info: &GroupInfo) -> Result<Vec<f64>> {
        let (c, d) = (h.classes, info.dim);
        let wwt = matmul_nt(&h.weight, c, d, &h.weight, c);
        let pinv = sym_pinv(&wwt, c, c.max(d) as f64 * f64::EPSILON)
            .map_err(|e| err(self.kind(), ScorerFault::CannotFit, format!("{}: {e}", info.name())))?;
        let y: Vec<f64> = (0..c)
            .map(|i| (0..c).map(|j| pinv[i * c + j] * h.bias[j]).sum())
            .collect();
        Ok((0..d)
            .map(|j| -(0..c).map(|i| h.weight[i * d + j] * y[i]).sum::<f64>())
            .collect())
    }

    fn fit_group(
        &self,
        boxes: &BoxSet,
        heads: Option<&Heads>,
        idx: &[usize],
        info: &GroupInfo,
    ) -> Result<Group> {
        let kind = self.kind();
        let (n, d, name) = (idx.len(), info.dim, info.name());
        let feats = gather_features(boxes, idx);
        let origin = match heads {
            None => {
                let mut m = vec![0.0; d];
                for row in feats.chunks_exact(d) {
                    m.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                }
                m.iter_mut().for_each(|a| *a /= n as f64);
                m
            }
            Some(heads) => self.pseudo_origin(self.head(heads, info)?, info)?,
        };
        let centred: Vec<f64> = feats
            .chunks_exact(d)
            .flat_map(|row| row.iter().zip(&origin).map(|(v, u)| v - u))
            .collect();
        let cov = scaled_gram(&centred, n, d, 1.0 / n as f64);
        let (values, vectors) = sym_eigh(&cov, d).map_err(|e| err(kind, ScorerFault::CannotFit, format!("{name}: {e}")))?;
        let k = self
            .params
            .princ_dims
            .resolve(&values)
            .map_err(|e| err(kind, ScorerFault::BadParameter, format!("{name}: {e}")))?;
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
                kind, ScorerFault::CannotFit,
                format!(
                    "{name}: alpha = mean max-logit {mean_max_logit} / mean residual norm {mean_norm} is not positive; ViM assumes positive max-logits on ID data and a non-zero residual"
                ),
            ));
        }
        group.alpha = alpha;
        Ok(group)
    }
}

impl Scorer for Vim {
    fn kind(&self) -> &'static str {
        VIM.name
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let kind = self.kind();
        let mut groups = PerLevel::default();
        let mut heads = None;
        groups.fit(kind, boxes, Self::USES, self.params.per_level, |idx, info| {
            if info.g == 0 {
                if info.dim < 2 {
                    return Err(err(kind, ScorerFault::CannotFit, "needs features of dimension >= 2"));
                }
                if self.params.pca_origin == PcaOrigin::Pseudo {
                    heads = Some(Heads::from_boxes(kind, boxes)?);
                }
            }
            self.fit_group(boxes, heads.as_ref(), idx, info)
        })?;
        self.groups = groups;
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        self.groups
            .score(self.kind(), boxes, Self::USES, |group, idx, info| {
                let feats = gather_features(boxes, idx);
                let norms = Self::residual_norms(group, &feats, idx.len(), info.dim);
                Ok(idx
                    .iter()
                    .zip(norms)
                    .map(|(&i, norm)| group.alpha * norm - logsumexp(&logits_f64(boxes, i)))
                    .collect())
            })
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        self.groups.write(&mut out, |group, info, out| {
            let d = info.dim;
            out.push(&info.tensor("origin"), vec![d], group.origin.clone());
            out.push(
                &info.tensor("residual"),
                vec![d - group.k, d],
                group.residual.clone(),
            );
            out.scalar(&info.tensor("princ_dims"), group.k as f64);
            out.scalar(&info.tensor("alpha"), group.alpha);
        });
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for Vim {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        self.groups = PerLevel::read(t, Self::USES, |t, info| {
            let d = info.dim;
            let k = t.scalar_usize(&info.tensor("princ_dims"))?;
            if d < 2 || k == 0 || k >= d {
                return Err(t.bad(format!(
                    "group {}: princ_dims {k} is not from 1 to {} (the feature dimension minus 1)",
                    info.g,
                    d.saturating_sub(1)
                )));
            }
            Ok(Group {
                origin: t.take(&info.tensor("origin"), &[d])?,
                residual: t.take(&info.tensor("residual"), &[d - k, d])?,
                k,
                alpha: t.scalar(&info.tensor("alpha"))?,
            })
        })?;
        Ok(())
    }
}
