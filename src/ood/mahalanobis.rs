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
//! **Differences from Oodeel 0.4:** all in one place, `docs/scorers.md` ("Differences from
//! Oodeel 0.4").

use rayon::prelude::*;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

use super::common::{distinct, err, fit_labels, gather_features, TensorMap, TensorsOut, Uses};
use super::grouped::{GroupInfo, PerLevel};
use super::linalg::{matmul_nt, pinv_whitening, scaled_gram};
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};

pub(crate) const MAHALANOBIS: KindEntry = KindEntry {
    name: "mahalanobis",
    summary: "`½ min_c d²_c`, class means and a tied covariance",
    inputs: Mahalanobis::USES,
    shapeable: false,
    params: infos::<MahalanobisParams>,
    build: |p, _| Ok(Box::new(Mahalanobis::with_params(false, p.typed()?))),
};

pub(crate) const RMDS: KindEntry = KindEntry {
    name: "rmds",
    summary: "`½ min_c (d²_c − d²_0)`, relative to a class-agnostic Gaussian",
    inputs: Mahalanobis::USES,
    shapeable: false,
    params: infos::<MahalanobisParams>,
    build: |p, _| Ok(Box::new(Mahalanobis::with_params(true, p.typed()?))),
};

/// The relative eigenvalue cut-off of the pseudo-inverse; written `auto` or as a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PinvRtol {
    /// `D · f32::EPSILON`, torch's float32 default.
    Auto,
    Value(f64),
}

impl PinvRtol {
    pub fn resolve(&self, dim: usize) -> f64 {
        match self {
            PinvRtol::Auto => dim as f64 * f32::EPSILON as f64,
            PinvRtol::Value(v) => *v,
        }
    }
}

impl Serialize for PinvRtol {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PinvRtol::Auto => s.serialize_str("auto"),
            PinvRtol::Value(v) => s.serialize_f64(*v),
        }
    }
}

impl<'de> Deserialize<'de> for PinvRtol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s.eq_ignore_ascii_case("auto") => Ok(PinvRtol::Auto),
            serde_json::Value::Number(n) if n.as_f64().is_some() => {
                Ok(PinvRtol::Value(n.as_f64().unwrap_or_default()))
            }
            other => Err(serde::de::Error::custom(format!(
                "expected a number or `auto`, got {other}"
            ))),
        }
    }
}

/// Mahalanobis's and RMDS's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MahalanobisParams {
    pub per_level: bool,
    pub pinv_rtol: PinvRtol,
}

impl Default for MahalanobisParams {
    fn default() -> Self {
        MahalanobisParams {
            per_level: true,
            pinv_rtol: PinvRtol::Auto,
        }
    }
}

impl ParamSet for MahalanobisParams {
    const DOCS: &'static [ParamDoc] = &[
        PER_LEVEL,
        ParamDoc {
            name: "pinv_rtol",
            expected: "a number in [0, 1) or `auto`",
            doc: "eigenvalues below this share of the largest are dropped by the pseudo-inverse (`auto` = D·ε_f32)",
        },
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        match self.pinv_rtol {
            PinvRtol::Value(v) if !(0.0..1.0).contains(&v) => Some("pinv_rtol"),
            _ => None,
        }
    }
}

/// Mahalanobis (`relative=false`) or RMDS (`relative=true`).
#[derive(Clone, Debug)]
pub struct Mahalanobis {
    pub relative: bool,
    pub params: MahalanobisParams,
    groups: PerLevel<Group>,
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
    /// A group from its stored statistics (whitenings with their ranks), deriving `white_means`.
    fn new(
        classes: Vec<i64>,
        means: Vec<f64>,
        center: Vec<f64>,
        (whitening, rank): (Vec<f64>, usize),
        (bg_whitening, bg_rank): (Vec<f64>, usize),
    ) -> Group {
        let (n, dim) = (classes.len(), center.len());
        let centred: Vec<f64> = means
            .chunks_exact(dim)
            .flat_map(|m| m.iter().zip(&center).map(|(a, c)| a - c))
            .collect();
        let white_means = matmul_nt(&centred, n, dim, &whitening, rank);
        Group {
            classes,
            means,
            center,
            whitening,
            rank,
            bg_whitening,
            bg_rank,
            white_means,
        }
    }
}

impl Mahalanobis {
    pub fn new(relative: bool, per_level: bool, pinv_rtol: PinvRtol) -> Self {
        Self::with_params(
            relative,
            MahalanobisParams {
                per_level,
                pinv_rtol,
            },
        )
    }

    pub fn with_params(relative: bool, params: MahalanobisParams) -> Self {
        Mahalanobis {
            relative,
            params,
            groups: PerLevel::default(),
        }
    }

    const USES: Uses = Uses {
        features: true,
        logits: false,
    };

    /// The rank kept by the pseudo-inverse in each group (class covariance; background for RMDS).
    pub fn ranks(&self) -> Option<Vec<(usize, usize)>> {
        self.groups
            .groups()
            .map(|g| g.iter().map(|g| (g.rank, g.bg_rank)).collect())
    }

    fn fit_group(&self, boxes: &BoxSet, labels: &[i64], idx: &[usize], info: &GroupInfo) -> Result<Group> {
        let kind = self.kind();
        let (n, d) = (idx.len(), info.dim);
        let rtol = self.params.pinv_rtol.resolve(d);
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
            .map_err(|e| err(kind, ScorerFault::CannotFit, format!("{}: {e}", info.name())))?;
        let (bg_whitening, bg_rank) = if self.relative {
            let centred: Vec<f64> = feats
                .chunks_exact(d)
                .flat_map(|row| row.iter().zip(&center).map(|(v, c)| v - c))
                .collect();
            let cov0 = scaled_gram(&centred, n, d, 1.0 / n as f64);
            pinv_whitening(&cov0, d, rtol)
                .map_err(|e| err(kind, ScorerFault::CannotFit, format!("{}: {e}", info.name())))?
        } else {
            (Vec::new(), 0)
        };
        Ok(Group::new(
            classes,
            means,
            center,
            (whitening, rank),
            (bg_whitening, bg_rank),
        ))
    }

    fn score_group(&self, group: &Group, boxes: &BoxSet, idx: &[usize], d: usize) -> Vec<f64> {
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
        (0..n)
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
            .collect()
    }
}

impl Scorer for Mahalanobis {
    fn kind(&self) -> &'static str {
        if self.relative {
            RMDS.name
        } else {
            MAHALANOBIS.name
        }
    }
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
            .score(self.kind(), boxes, Self::USES, |group, idx, info| {
                Ok(self.score_group(group, boxes, idx, info.dim))
            })
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        self.groups.write(&mut out, |group, info, out| {
            let (n, d) = (group.classes.len(), info.dim);
            out.push(
                &info.tensor("classes"),
                vec![n],
                group.classes.iter().map(|&c| c as f64).collect(),
            );
            out.push(&info.tensor("means"), vec![n, d], group.means.clone());
            out.push(&info.tensor("center"), vec![d], group.center.clone());
            out.push(
                &info.tensor("whitening"),
                vec![group.rank, d],
                group.whitening.clone(),
            );
            if self.relative {
                out.push(
                    &info.tensor("bg_whitening"),
                    vec![group.bg_rank, d],
                    group.bg_whitening.clone(),
                );
            }
        });
        out.into_state(self.kind(), None, params)
    }
}

/// A whitening `[r <= D, D]` of the state.
fn read_whitening(t: &mut TensorMap, name: &str, d: usize) -> Result<(Vec<f64>, usize)> {
    let (shape, w) = t.take_rank(name, 2)?;
    if shape[1] != d || shape[0] > d {
        return Err(t.bad(format!(
            "tensor `{name}` has shape {shape:?}, expected [r <= {d}, {d}]"
        )));
    }
    Ok((w, shape[0]))
}

impl ScorerImpl for Mahalanobis {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let relative = self.relative;
        self.groups = PerLevel::read(t, Self::USES, |t, info| {
            let d = info.dim;
            let classes = t.labels(&info.tensor("classes"))?;
            if classes.is_empty() {
                return Err(t.bad(format!("group {} has no classes", info.g)));
            }
            let means = t.take(&info.tensor("means"), &[classes.len(), d])?;
            let center = t.take(&info.tensor("center"), &[d])?;
            let (whitening, rank) = read_whitening(t, &info.tensor("whitening"), d)?;
            let (bg_whitening, bg_rank) = if relative {
                read_whitening(t, &info.tensor("bg_whitening"), d)?
            } else {
                (Vec::new(), 0)
            };
            Ok(Group::new(
                classes,
                means,
                center,
                (whitening, rank),
                (bg_whitening, bg_rank),
            ))
        })?;
        Ok(())
    }
}
