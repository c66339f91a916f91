//! Deep nearest neighbours, KNN (Sun et al., ICML'22; Oodeel `DKNN`).
//!
//! **Fit:** a bank of L2-normalised fit features `z = f / (‖f‖₂ + 1e-10)` per group.
//! **Score:** the Euclidean distance (not squared) from the normalised box feature to its
//! `nearest`-th nearest bank vector (default `nearest=50`, Oodeel's). A zero feature normalises to
//! the zero vector and sits at distance ≈ 1 from every bank vector.
//!
//! **Search:** exact brute force. Query and bank blocks are multiplied in f32 with faer's GEMM
//! (`‖q − z‖² = ‖q‖² + ‖z‖² − 2 q·z`), query blocks in parallel with rayon, and a running
//! per-query candidate list keeps the `k` best; the `k` candidates' distances are then recomputed
//! exactly in f64 and the k-th of those is returned, so the value is f64-accurate and only the
//! choice among near-tied neighbours depends on the f32 products. The bank is stored as f32
//! (`N · D · 4` bytes; 1M boxes × 256-d ≈ 1 GB).
//!
//! **Small groups:** when a group has fewer than `nearest` fit boxes, its k is the group size
//! (the distance to its farthest bank vector) instead of failing; with YOLO per-level fits a
//! sparse level can hit this.
//!
//! **Fit data:** [`Scorer::score`] on the fit boxes themselves finds each box at distance 0
//! (it is in the bank). [`Scorer::score_in_sample`] scores the fit set leave-one-out instead (each
//! box ignores its own bank entry); better still, calibrate on boxes disjoint from the fit set.
//!
//! **Per level (YOLO):** `per_level=true` (default) keeps one bank per level (levels have separate
//! class branches, so their features are not comparable); `per_level=false` pools all boxes.
//!
//! **Differences from Oodeel 0.4:** all in one place, `docs/scorers.md` ("Differences from
//! Oodeel 0.4").

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::{err, TensorMap, TensorsOut, Uses};
use super::grouped::{GroupInfo, PerLevel};
use super::linalg::matmul_nt_f32;
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};

pub(crate) const KNN: KindEntry = KindEntry {
    name: "knn",
    summary: "distance to the k-th nearest normalised fit feature",
    inputs: Knn::USES,
    shapeable: false,
    params: infos::<KnnParams>,
    build: |p, _| Ok(Box::new(Knn::with_params(p.typed()?))),
};

const QUERY_BLOCK: usize = 128;
const BANK_BLOCK: usize = 2048;

/// KNN's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnnParams {
    pub nearest: usize,
    pub per_level: bool,
}

impl Default for KnnParams {
    fn default() -> Self {
        KnnParams {
            nearest: 50,
            per_level: true,
        }
    }
}

impl ParamSet for KnnParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "nearest",
            expected: "an integer >= 1",
            doc: "k: the score is the distance to the k-th nearest fit feature (clamped to the bank size)",
        },
        PER_LEVEL,
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        (self.nearest < 1).then_some("nearest")
    }
}

#[derive(Clone, Debug)]
pub struct Knn {
    pub params: KnnParams,
    banks: PerLevel<Bank>,
}

#[derive(Clone, Debug)]
struct Bank {
    n: usize,
    /// Normalised features, row-major [n, D].
    data: Vec<f32>,
    norms2: Vec<f32>,
}

impl Bank {
    fn new(data: Vec<f32>, d: usize) -> Bank {
        let norms2 = data
            .chunks_exact(d)
            .map(|r| r.iter().map(|v| v * v).sum())
            .collect();
        Bank {
            n: data.len() / d,
            data,
            norms2,
        }
    }
}

/// `f / (‖f‖₂ + 1e-10)` in f64.
fn normalise(f: &[f32]) -> Vec<f64> {
    let norm = f
        .iter()
        .map(|&v| (v as f64) * (v as f64))
        .sum::<f64>()
        .sqrt();
    f.iter().map(|&v| v as f64 / (norm + 1e-10)).collect()
}

impl Knn {
    pub fn new(nearest: usize, per_level: bool) -> Self {
        Self::with_params(KnnParams { nearest, per_level })
    }

    pub fn with_params(params: KnnParams) -> Self {
        Knn {
            params,
            banks: PerLevel::default(),
        }
    }

    const USES: Uses = Uses {
        features: true,
        logits: false,
    };

    fn run(&self, boxes: &BoxSet, leave_one_out: bool) -> Result<Vec<f64>> {
        let kind = self.kind();
        self.banks.score(kind, boxes, Self::USES, |bank, idx, info| {
            let queries: Vec<f64> = idx
                .iter()
                .flat_map(|&i| normalise(boxes.feature(i)))
                .collect();
            if leave_one_out {
                check_fit_set_group(kind, bank, &queries, idx.len(), info)?;
            }
            Ok(kth_distances(
                bank,
                info.dim,
                &queries,
                self.params.nearest,
                leave_one_out,
            ))
        })
    }
}

/// For leave-one-out: the group's boxes must be its bank, and it must hold a neighbour.
fn check_fit_set_group(
    kind: &str,
    bank: &Bank,
    queries: &[f64],
    n: usize,
    info: &GroupInfo,
) -> Result<()> {
    let same = n == bank.n && queries.iter().zip(&bank.data).all(|(&q, &b)| q as f32 == b);
    if !same {
        return Err(err(
            kind, ScorerFault::Mismatch,
            format!(
                "score_in_sample: {} of these boxes are not the fit set ({n} boxes here, {} in the bank)",
                info.name(),
                bank.n
            ),
        ));
    }
    if bank.n < 2 {
        return Err(err(
            kind, ScorerFault::CannotFit,
            format!(
                "score_in_sample: {} has a single fit box, which has no neighbour but itself",
                info.name()
            ),
        ));
    }
    Ok(())
}

/// Distance from every query (normalised, row-major [m, d], f64) to its k-th nearest bank row;
/// with `leave_one_out`, query j ignores bank row j.
fn kth_distances(
    bank: &Bank,
    d: usize,
    queries: &[f64],
    k: usize,
    leave_one_out: bool,
) -> Vec<f64> {
    let m = queries.len() / d;
    let available = bank.n - usize::from(leave_one_out);
    let k = k.min(available).max(1);
    let cap = (2 * k).max(k + 64);
    let q32: Vec<f32> = queries.iter().map(|&v| v as f32).collect();
    let mut out = vec![0.0; m];
    out.par_chunks_mut(QUERY_BLOCK)
        .enumerate()
        .for_each(|(blk, out_blk)| {
            let q0 = blk * QUERY_BLOCK;
            let qb = out_blk.len();
            let qrows = &q32[q0 * d..(q0 + qb) * d];
            let qn2: Vec<f32> = qrows
                .chunks_exact(d)
                .map(|r| r.iter().map(|v| v * v).sum())
                .collect();
            let mut cands: Vec<Vec<(f32, u32)>> =
                vec![Vec::with_capacity(cap + BANK_BLOCK.min(64)); qb];
            let mut thr = vec![f32::INFINITY; qb];
            let mut buf = vec![0.0f32; qb * BANK_BLOCK];
            for b0 in (0..bank.n).step_by(BANK_BLOCK) {
                let bb = BANK_BLOCK.min(bank.n - b0);
                let dots = &mut buf[..qb * bb];
                matmul_nt_f32(qrows, qb, d, &bank.data[b0 * d..(b0 + bb) * d], bb, dots);
                for (qi, row) in dots.chunks_exact(bb).enumerate() {
                    let own = q0 + qi;
                    let c = &mut cands[qi];
                    for (j, &dot) in row.iter().enumerate() {
                        let bj = b0 + j;
                        if leave_one_out && bj == own {
                            continue;
                        }
                        let d2 = qn2[qi] + bank.norms2[bj] - 2.0 * dot;
                        if d2 < thr[qi] || c.len() < k {
                            c.push((d2, bj as u32));
                            if c.len() >= cap {
                                c.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
                                c.truncate(k);
                                thr[qi] = c.iter().map(|x| x.0).fold(f32::NEG_INFINITY, f32::max);
                            }
                        }
                    }
                }
            }
            for (qi, c) in cands.iter_mut().enumerate() {
                if c.len() > k {
                    c.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
                    c.truncate(k);
                }
                let q = &queries[(q0 + qi) * d..(q0 + qi + 1) * d];
                let exact = c
                    .iter()
                    .map(|&(_, j)| {
                        let j = j as usize;
                        bank.data[j * d..(j + 1) * d]
                            .iter()
                            .zip(q)
                            .map(|(&b, &a)| {
                                let diff = a - b as f64;
                                diff * diff
                            })
                            .sum::<f64>()
                    })
                    .fold(f64::NEG_INFINITY, f64::max);
                out_blk[qi] = exact.max(0.0).sqrt();
            }
        });
    out
}

impl Scorer for Knn {
    fn kind(&self) -> &'static str {
        KNN.name
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let mut banks = PerLevel::default();
        banks.fit(self.kind(), boxes, Self::USES, self.params.per_level, |idx, info| {
            let data: Vec<f32> = idx
                .iter()
                .flat_map(|&i| normalise(boxes.feature(i)))
                .map(|v| v as f32)
                .collect();
            Ok(Bank::new(data, info.dim))
        })?;
        self.banks = banks;
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        self.run(boxes, false)
    }

    fn score_in_sample(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        self.run(boxes, true)
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        self.banks.write(&mut out, |bank, info, out| {
            out.push(
                &info.tensor("bank"),
                vec![bank.n, info.dim],
                bank.data.iter().map(|&v| v as f64).collect(),
            );
        });
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for Knn {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        self.banks = PerLevel::read(t, Self::USES, |t, info| {
            let (name, d) = (info.tensor("bank"), info.dim);
            let (shape, data) = t.take_rank(&name, 2)?;
            if shape[1] != d || shape[0] == 0 {
                return Err(t.bad(format!(
                    "tensor `{name}` has shape {shape:?}, expected [n >= 1, {d}]"
                )));
            }
            let data: Vec<f32> = data.iter().map(|&v| v as f32).collect();
            Ok(Bank::new(data, d))
        })?;
        Ok(())
    }
}
