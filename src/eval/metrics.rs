//! OOD metrics from two score lists: AUROC, FPR at 95% TPR, AUPR-In and AUPR-Out.
//!
//! Scores follow the crate's sign rule: **higher = more OOD**. The default convention is the
//! one of ODIN, OpenOOD and the VOS detection benchmark: **ID boxes are the positive class**
//! (a box is accepted as ID when its score is low). Every curve is built on tie-collapsed
//! thresholds (one point per distinct score), so tied scores never produce an order-dependent
//! result. Everything is O(n log n): one sort per set, then linear sweeps.
//!
//! [`oodeel`] reproduces Oodeel 0.4's own, different, discrete conventions for parity checks.

use serde::Serialize;

use crate::error::{Error, Result};

/// The convention behind [`OodMetrics`], to be written next to the numbers in JSON and reports.
pub const CONVENTION: &str = "higher score = more OOD; ID boxes are the positive class: fpr95 is \
the fraction of OOD boxes accepted at the score threshold that accepts 95% of ID boxes, linearly \
interpolated on the tie-collapsed ROC (fpr95_conservative: the first ROC point reaching 95%); \
AUROC counts ties as 1/2; aupr_in / aupr_out are step-wise average precision (scikit-learn \
average_precision_score) with ID boxes positive on -score / OOD boxes positive on score";

/// The headline OOD metrics of one (ID set, OOD set) pair; see [`CONVENTION`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OodMetrics {
    /// Area under the ROC: P(OOD score > ID score) + ½ P(tie) (Mann–Whitney U / (n_id·n_ood)).
    pub auroc: f64,
    /// Fraction of OOD boxes accepted when 95% of ID boxes are accepted, interpolated linearly
    /// between the two ROC points around 95% ID acceptance.
    pub fpr95: f64,
    /// The same at the first ROC point accepting at least 95% of ID boxes (never optimistic).
    pub fpr95_conservative: f64,
    /// Average precision with ID boxes positive, ranked by low score.
    pub aupr_in: f64,
    /// Average precision with OOD boxes positive, ranked by high score.
    pub aupr_out: f64,
    pub n_id: usize,
    pub n_ood: usize,
}

/// Computes [`OodMetrics`]. Errors when either set is empty or holds a NaN (infinities are
/// fine: they sort).
pub fn ood_metrics(id_scores: &[f64], ood_scores: &[f64]) -> Result<OodMetrics> {
    check_scores("ID scores", id_scores)?;
    check_scores("OOD scores", ood_scores)?;
    // ID-positive curves rank by −s: negating once lets every sweep below rank "high first".
    let id_neg: Vec<f64> = id_scores.iter().map(|s| -s).collect();
    let ood_neg: Vec<f64> = ood_scores.iter().map(|s| -s).collect();
    let id_sweep = Sweep::new(&id_neg, &ood_neg);
    let roc = id_sweep.roc();
    let (fpr95, fpr95_conservative) =
        fpr_at_tpr(&roc, 0.95).expect("a non-empty ROC always reaches TPR 1");
    Ok(OodMetrics {
        // AUROC is symmetric in the convention (swap classes and flip the sign), so the
        // ID-positive sweep gives the same number as the OOD-positive one.
        auroc: id_sweep.auc(),
        fpr95,
        fpr95_conservative,
        aupr_in: id_sweep.average_precision(),
        aupr_out: Sweep::new(ood_scores, id_scores).average_precision(),
        n_id: id_scores.len(),
        n_ood: ood_scores.len(),
    })
}

/// The ID-positive ROC for plots: `(fpr, tpr)` points from (0, 0) to (1, 1), one per distinct
/// score, where TPR is the fraction of ID boxes and FPR the fraction of OOD boxes with
/// score ≤ threshold. Empty when either set is empty or holds a NaN ([`ood_metrics`] reports
/// those as errors).
pub fn roc_curve(id: &[f64], ood: &[f64]) -> Vec<(f64, f64)> {
    if check_scores("", id).is_err() || check_scores("", ood).is_err() {
        return Vec::new();
    }
    let id_neg: Vec<f64> = id.iter().map(|s| -s).collect();
    let ood_neg: Vec<f64> = ood.iter().map(|s| -s).collect();
    Sweep::new(&id_neg, &ood_neg).roc()
}

/// The tie-collapsed ROC of `positives` against `negatives`, a sample being called positive
/// when its score is ≥ the threshold: `(fpr, tpr)` from (0, 0) to (1, 1). This is the
/// OOD-positive ROC when called with (OOD, ID) scores. Same validity rule as [`roc_curve`].
pub fn roc_points(positives: &[f64], negatives: &[f64]) -> Vec<(f64, f64)> {
    if check_scores("", positives).is_err() || check_scores("", negatives).is_err() {
        return Vec::new();
    }
    Sweep::new(positives, negatives).roc()
}

/// FPR at the first ROC point whose TPR reaches `q`: `(interpolated, conservative)`. The
/// conservative value is that point's FPR; the interpolated one moves linearly along the
/// segment from the previous point, i.e. it is the FPR of a randomised threshold that hits
/// TPR = `q` exactly. `None` when no point reaches `q` (only for an empty curve or q > 1).
pub fn fpr_at_tpr(roc: &[(f64, f64)], q: f64) -> Option<(f64, f64)> {
    let i = roc.iter().position(|&(_, tpr)| tpr >= q)?;
    let (f1, t1) = roc[i];
    if i == 0 {
        return Some((f1, f1));
    }
    // t0 < q <= t1 because i is the first point reaching q, so t1 > t0.
    let (f0, t0) = roc[i - 1];
    Some((f0 + (q - t0) / (t1 - t0) * (f1 - f0), f1))
}

/// Step-wise average precision (scikit-learn `average_precision_score`):
/// `AP = Σ_k (R_k − R_{k−1}) P_k` over distinct thresholds, positives ranked by high score.
/// NaN when either set is empty or holds a NaN.
pub fn average_precision(positives: &[f64], negatives: &[f64]) -> f64 {
    if check_scores("", positives).is_err() || check_scores("", negatives).is_err() {
        return f64::NAN;
    }
    Sweep::new(positives, negatives).average_precision()
}

fn check_scores(item: &str, scores: &[f64]) -> Result<()> {
    if scores.is_empty() {
        return Err(Error::Eval {
            item: item.to_string(),
            reason: "no scores".into(),
        });
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(Error::Eval {
            item: item.to_string(),
            reason: format!("score {i} is NaN"),
        });
    }
    Ok(())
}

/// Cumulative (true positive, false positive) counts at every distinct threshold, from the
/// highest score down: the one pass every curve and area here is read from.
struct Sweep {
    n_pos: usize,
    n_neg: usize,
    /// `(tp, fp)` after admitting all samples with score ≥ each distinct score, descending.
    steps: Vec<(usize, usize)>,
}

impl Sweep {
    /// `positives` and `negatives` must be NaN-free (checked by the callers).
    fn new(positives: &[f64], negatives: &[f64]) -> Self {
        let pos = sorted_descending(positives);
        let neg = sorted_descending(negatives);
        let (mut i, mut j) = (0, 0);
        let mut steps = Vec::new();
        while i < pos.len() || j < neg.len() {
            // The next threshold is the larger of the two heads; `==` (not total order)
            // groups -0.0 with 0.0, as a comparison `score >= threshold` would.
            let v = match (pos.get(i), neg.get(j)) {
                (Some(&a), Some(&b)) => a.max(b),
                (Some(&a), None) => a,
                (None, Some(&b)) => b,
                (None, None) => unreachable!(),
            };
            while i < pos.len() && pos[i] == v {
                i += 1;
            }
            while j < neg.len() && neg[j] == v {
                j += 1;
            }
            steps.push((i, j));
        }
        Self {
            n_pos: pos.len(),
            n_neg: neg.len(),
            steps,
        }
    }

    fn roc(&self) -> Vec<(f64, f64)> {
        let (np, nn) = (self.n_pos as f64, self.n_neg as f64);
        std::iter::once((0.0, 0.0))
            .chain(
                self.steps
                    .iter()
                    .map(|&(tp, fp)| (fp as f64 / nn, tp as f64 / np)),
            )
            .collect()
    }

    /// Trapezoidal area under the tie-collapsed ROC, which equals the Mann–Whitney statistic
    /// with ties counted ½. Summed in integers (twice the area times n_pos·n_neg) so the result
    /// is exact up to the final division, whatever the set sizes.
    fn auc(&self) -> f64 {
        let mut twice_area: u128 = 0;
        let (mut tp0, mut fp0) = (0usize, 0usize);
        for &(tp, fp) in &self.steps {
            twice_area += ((fp - fp0) as u128) * ((tp + tp0) as u128);
            (tp0, fp0) = (tp, fp);
        }
        twice_area as f64 / (2.0 * self.n_pos as f64 * self.n_neg as f64)
    }

    fn average_precision(&self) -> f64 {
        let mut ap = 0.0;
        let mut tp0 = 0usize;
        for &(tp, fp) in &self.steps {
            if tp > tp0 {
                let recall_gain = (tp - tp0) as f64 / self.n_pos as f64;
                ap += recall_gain * tp as f64 / (tp + fp) as f64;
            }
            tp0 = tp;
        }
        ap
    }
}

fn sorted_descending(scores: &[f64]) -> Vec<f64> {
    let mut v = scores.to_vec();
    v.sort_unstable_by(|a, b| b.total_cmp(a));
    v
}

/// Oodeel 0.4 (`oodeel.eval.metrics`) conventions, reproduced for parity tests only.
///
/// Oodeel calls a sample OOD (positive) when `score ≥ threshold`, takes thresholds at the
/// sorted scores `sorted[1], sorted[1 + step], …` (index 0 never; default step 4), adds the end
/// points `(fpr, tpr) = (1, 1)` and `(0, 0)` by hand, integrates with `−trapz(1 − fpr, tpr)`,
/// and reads `"<a><XX><b>"` metrics at the **first** curve index where rate `b` drops below
/// XX/100 (tpr, fpr) or rises above it (tnr, fnr). Its `fpr95tpr` is therefore OOD-positive,
/// discrete and optimistic; oodbox's own [`ood_metrics`] does not use it.
pub mod oodeel {
    use super::check_scores;
    use crate::error::{Error, Result};

    /// Confusion counts at one threshold, OOD positive (`score ≥ threshold`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Ftpn {
        pub fp: usize,
        pub tp: usize,
        pub fn_: usize,
        pub tn: usize,
    }

    /// Oodeel's `ftpn(scores, labels, threshold)` with the ID and OOD scores given apart.
    pub fn ftpn(id: &[f64], ood: &[f64], threshold: f64) -> Ftpn {
        let fp = id.iter().filter(|&&s| s >= threshold).count();
        let tp = ood.iter().filter(|&&s| s >= threshold).count();
        Ftpn {
            fp,
            tp,
            fn_: ood.len() - tp,
            tn: id.len() - fp,
        }
    }

    /// The rates Oodeel's `"<a><XX><b>"` metric names combine.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Rate {
        Fpr,
        Tpr,
        Fnr,
        Tnr,
    }

    impl Rate {
        fn parse(s: &str) -> Option<Self> {
            Some(match s {
                "fpr" => Rate::Fpr,
                "tpr" => Rate::Tpr,
                "fnr" => Rate::Fnr,
                "tnr" => Rate::Tnr,
                _ => return None,
            })
        }
    }

    /// Oodeel's `get_curve` output.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Curve {
        /// Raw counts at each threshold (no end points): Oodeel's `return_raw` part.
        pub counts: Vec<Ftpn>,
        /// Rates with Oodeel's hand-added end points: `fpr = [1, …, 0]`, `tpr = [1, …, 0]`,
        /// `fnr = [0, …, 1]`, `tnr = [0, …, 1]`.
        pub fpr: Vec<f64>,
        pub tpr: Vec<f64>,
        pub fnr: Vec<f64>,
        pub tnr: Vec<f64>,
        /// `(TP + TN) / N` at each threshold (no end points).
        pub acc: Vec<f64>,
    }

    /// Oodeel's `get_curve(scores, labels, step)`. Errors on empty sets, NaN or `step == 0`.
    pub fn get_curve(id: &[f64], ood: &[f64], step: usize) -> Result<Curve> {
        check_scores("ID scores", id)?;
        check_scores("OOD scores", ood)?;
        if step == 0 {
            return Err(Error::Eval {
                item: "step".into(),
                reason: "must be at least 1".into(),
            });
        }
        let sort = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_unstable_by(f64::total_cmp);
            v
        };
        let (id_s, ood_s) = (sort(id), sort(ood));
        let mut all: Vec<f64> = id_s.iter().chain(&ood_s).copied().collect();
        all.sort_unstable_by(f64::total_cmp);
        // Counting with binary searches keeps step = 1 at O(n log n) where Oodeel is O(n²).
        let at_least = |v: &[f64], t: f64| v.len() - v.partition_point(|&s| s < t);
        let counts: Vec<Ftpn> = (1..all.len())
            .step_by(step)
            .map(|i| {
                let (fp, tp) = (at_least(&id_s, all[i]), at_least(&ood_s, all[i]));
                Ftpn {
                    fp,
                    tp,
                    fn_: ood.len() - tp,
                    tn: id.len() - fp,
                }
            })
            .collect();
        let (n_id, n_ood) = (id.len() as f64, ood.len() as f64);
        let with_ends = |first: f64, f: &dyn Fn(&Ftpn) -> f64, last: f64| {
            std::iter::once(first)
                .chain(counts.iter().map(f))
                .chain(std::iter::once(last))
                .collect::<Vec<f64>>()
        };
        Ok(Curve {
            fpr: with_ends(1.0, &|c| c.fp as f64 / n_id, 0.0),
            tpr: with_ends(1.0, &|c| c.tp as f64 / n_ood, 0.0),
            fnr: with_ends(0.0, &|c| c.fn_ as f64 / n_ood, 1.0),
            tnr: with_ends(0.0, &|c| c.tn as f64 / n_id, 1.0),
            acc: counts
                .iter()
                .map(|c| (c.tp + c.tn) as f64 / (n_id + n_ood))
                .collect(),
            counts,
        })
    }

    impl Curve {
        fn rate(&self, r: Rate) -> &[f64] {
            match r {
                Rate::Fpr => &self.fpr,
                Rate::Tpr => &self.tpr,
                Rate::Fnr => &self.fnr,
                Rate::Tnr => &self.tnr,
            }
        }

        /// Oodeel's `auroc = −trapz(1 − fpr, tpr)`.
        pub fn auroc(&self) -> f64 {
            let x = &self.tpr;
            let y: Vec<f64> = self.fpr.iter().map(|f| 1.0 - f).collect();
            -(1..x.len())
                .map(|i| (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2.0)
                .sum::<f64>()
        }

        /// Oodeel's `detect_acc = max(acc)` (unbalanced accuracy). Two non-empty sets give at
        /// least one threshold, so `acc` is never empty.
        pub fn detect_acc(&self) -> f64 {
            self.acc.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        }

        /// Oodeel's `"<a><XX><b>"`: rate `a` at the first index where rate `b` is below
        /// `percent`/100 (b = tpr, fpr) or above it (b = tnr, fnr). Always defined for
        /// `percent` in 1..=99 because of the hand-added end points (tpr, fpr end at 0; tnr,
        /// fnr at 1); a larger `percent` falls back to the last point.
        pub fn rate_at(&self, a: Rate, percent: u32, b: Rate) -> f64 {
            let thr = percent as f64 / 100.0;
            let falls = matches!(b, Rate::Fpr | Rate::Tpr);
            let rates = self.rate(b);
            let i = rates
                .iter()
                .position(|&v| if falls { v < thr } else { v > thr })
                .unwrap_or(rates.len() - 1);
            self.rate(a)[i]
        }

        /// A metric by its Oodeel name: `auroc`, `detect_acc` or `<a><XX><b>` (XX = 1..99);
        /// an error for other names.
        pub fn metric(&self, name: &str) -> Result<f64> {
            match name {
                "auroc" => return Ok(self.auroc()),
                "detect_acc" => return Ok(self.detect_acc()),
                _ => {}
            }
            let parsed = (name.len() >= 7 && name.is_ascii())
                .then(|| {
                    let (a, rest) = name.split_at(3);
                    let (xx, b) = rest.split_at(rest.len() - 3);
                    let percent = xx
                        .parse::<u32>()
                        .ok()
                        .filter(|p| xx.len() <= 2 && (1..=99).contains(p))?;
                    Some((Rate::parse(a)?, percent, Rate::parse(b)?))
                })
                .flatten();
            match parsed {
                Some((a, p, b)) => Ok(self.rate_at(a, p, b)),
                None => Err(Error::Eval {
                    item: name.into(),
                    reason: "not an Oodeel metric (auroc, detect_acc, <a><XX><b>)".into(),
                }),
            }
        }
    }

    /// Oodeel 0.4's `fpr95tpr`: OOD-positive, ID false-positive rate at the first curve point
    /// where OOD TPR drops below 0.95.
    pub fn fpr95tpr(id: &[f64], ood: &[f64], step: usize) -> Result<f64> {
        Ok(get_curve(id, ood, step)?.rate_at(Rate::Fpr, 95, Rate::Tpr))
    }
}

#[cfg(test)]
mod tests {
    use super::oodeel::{self, Ftpn, Rate};
    use super::*;

    /// Oodeel's golden case: scores [0, .2, .2, .2, .2, .2, .2, 1, 1, 1], first 5 ID.
    const ID: [f64; 5] = [0.0, 0.2, 0.2, 0.2, 0.2];
    const OOD: [f64; 5] = [0.2, 0.2, 1.0, 1.0, 1.0];

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn golden_ftpn() {
        let c = |fp, tp, fn_, tn| Ftpn { fp, tp, fn_, tn };
        assert_eq!(oodeel::ftpn(&ID, &OOD, 0.5), c(0, 3, 2, 5));
        assert_eq!(oodeel::ftpn(&ID, &OOD, 0.1), c(4, 5, 0, 1));
    }

    #[test]
    fn golden_oodeel_curve_and_metrics() {
        let curve = oodeel::get_curve(&ID, &OOD, 1).unwrap();
        let col = |f: fn(&Ftpn) -> usize| curve.counts.iter().map(f).collect::<Vec<_>>();
        let six_three = |a: usize, b: usize| [vec![a; 6], vec![b; 3]].concat();
        assert_eq!(col(|c| c.fp), six_three(4, 0));
        assert_eq!(col(|c| c.tp), six_three(5, 3));
        assert_eq!(col(|c| c.fn_), six_three(0, 2));
        assert_eq!(col(|c| c.tn), six_three(1, 5));
        assert!(close(curve.auroc(), 0.84));
        assert!(close(curve.detect_acc(), 0.8));
        assert_eq!(curve.metric("tpr50fpr").unwrap(), 0.6);
        assert_eq!(curve.metric("fpr15tnr").unwrap(), 0.8);
        assert!(close(curve.metric("tnr90fpr").unwrap(), 0.2));
        assert_eq!(oodeel::fpr95tpr(&ID, &OOD, 1).unwrap(), 0.0);
        assert_eq!(curve.metric("fpr95tpr").unwrap(), 0.0);
        // Extreme levels land on the hand-added end points.
        assert_eq!(curve.rate_at(Rate::Fpr, 99, Rate::Fnr), 0.0);
        assert_eq!(curve.metric("tnr1tpr").unwrap(), 1.0);
        assert!(curve.metric("fpr100tpr").is_err());
        assert!(curve.metric("precision").is_err());
        assert!(oodeel::get_curve(&ID, &OOD, 0).is_err());
    }

    #[test]
    fn golden_oodbox_conventions() {
        let m = ood_metrics(&ID, &OOD).unwrap();
        assert!(close(m.auroc, 0.84));
        assert!(close(m.fpr95_conservative, 0.40));
        assert!(close(m.fpr95, 0.375));
        assert!(close(m.aupr_out, 37.0 / 45.0));
        assert!(close(m.aupr_in, 27.0 / 35.0));
        assert_eq!((m.n_id, m.n_ood), (5, 5));
        assert_eq!(
            roc_curve(&ID, &OOD),
            vec![(0.0, 0.0), (0.0, 0.2), (0.4, 1.0), (1.0, 1.0)]
        );
        // OOD-positive FPR@95TPR on ROC (0,0)(0,0.6)(0.8,1)(1,1): 0.80 / 0.70.
        let roc_out = roc_points(&OOD, &ID);
        assert_eq!(
            roc_out,
            vec![(0.0, 0.0), (0.0, 0.6), (0.8, 1.0), (1.0, 1.0)]
        );
        let (interp, conservative) = fpr_at_tpr(&roc_out, 0.95).unwrap();
        assert!(close(interp, 0.70) && close(conservative, 0.80));
    }

    // sklearn 1.9.1 reference values. Each constant comes from, with `i` and `o` set to the
    // ID and OOD arrays of its case:
    //   .venv/bin/python -c "from sklearn.metrics import roc_auc_score as r, \
    //     average_precision_score as a; i=[...]; o=[...]; y=[0]*len(i)+[1]*len(o); \
    //     s=i+o; print(r(y,s), a(y,s), a([1-t for t in y],[-t for t in s]))"
    // printing AUROC, AUPR-Out and AUPR-In in that order.
    const TIED_ID: [f64; 12] = [
        0.0, 0.3, -0.3, -0.9, -0.5, -1.0, 0.1, 1.3, -0.5, -0.6, 0.5, 0.4,
    ];
    const TIED_OOD: [f64; 9] = [0.9, -0.1, 0.8, 1.5, -0.5, 0.3, -1.1, -0.5, -1.0];
    const TIED_SKLEARN: [f64; 3] = [0.5277777777777778, 0.5638648388648388, 0.5679351013909837];
    const UNTIED_ID: [f64; 15] = [
        -0.235, -1.267, 0.271, 0.157, -0.187, -2.517, -0.539, -0.049, 0.113, -1.53, -0.478, -0.979,
        -0.809, 1.061, -0.808,
    ];
    const UNTIED_OOD: [f64; 11] = [
        0.767, 1.684, 0.216, 0.688, 0.91, 0.864, -0.425, 0.876, 2.159, -0.747, 1.659,
    ];
    const UNTIED_SKLEARN: [f64; 3] = [0.8606060606060606, 0.8373438356058678, 0.8974047156783729];

    #[test]
    fn matches_sklearn() {
        for (id, ood, want) in [
            (&TIED_ID[..], &TIED_OOD[..], TIED_SKLEARN),
            (&UNTIED_ID[..], &UNTIED_OOD[..], UNTIED_SKLEARN),
        ] {
            let m = ood_metrics(id, ood).unwrap();
            for (got, want) in [m.auroc, m.aupr_out, m.aupr_in].into_iter().zip(want) {
                assert!((got - want).abs() < 1e-12, "{got} vs sklearn {want}");
            }
        }
    }

    /// Oodeel at its default step 4 on the untied case, from
    ///   .venv/bin/python -c "import numpy as np; from oodeel.eval.metrics import \
    ///     bench_metrics as b; print(b((np.array(i), np.array(o)), metrics=['auroc', \
    ///     'fpr95tpr', 'tnr90fpr', 'detect_acc'], step=4))"
    /// with `i`, `o` = UNTIED_ID, UNTIED_OOD (oodeel 0.4.0).
    #[test]
    fn matches_oodeel_at_step_4() {
        let curve = oodeel::get_curve(&UNTIED_ID, &UNTIED_OOD, 4).unwrap();
        assert_eq!(curve.counts.len(), 7); // thresholds at sorted[1, 5, 9, …, 25]
        assert!(close(curve.auroc(), 0.8666666666666667));
        assert!(close(curve.metric("fpr95tpr").unwrap(), 0.4666666666666667));
        assert!(close(curve.metric("tnr90fpr").unwrap(), 0.3333333333333333));
        assert!(close(curve.detect_acc(), 0.8461538461538461));
    }

    #[test]
    fn rejects_empty_and_nan() {
        assert!(ood_metrics(&[], &[1.0]).is_err());
        assert!(ood_metrics(&[1.0], &[]).is_err());
        assert!(ood_metrics(&[1.0, f64::NAN], &[2.0]).is_err());
        assert!(roc_curve(&[f64::NAN], &[1.0]).is_empty());
        assert!(average_precision(&[], &[1.0]).is_nan());
    }

    #[test]
    fn separable_and_identical_sets() {
        let m = ood_metrics(&[0.0, 1.0, 2.0], &[3.0, 4.0]).unwrap();
        assert_eq!((m.auroc, m.fpr95, m.fpr95_conservative), (1.0, 0.0, 0.0));
        assert_eq!((m.aupr_in, m.aupr_out), (1.0, 1.0));
        // All scores tied: a single diagonal step, AUROC ½, FPR95 0.95 interpolated.
        let m = ood_metrics(&[1.0; 4], &[1.0; 6]).unwrap();
        assert!(close(m.auroc, 0.5) && close(m.fpr95, 0.95));
        assert_eq!(m.fpr95_conservative, 1.0);
        assert!(close(m.aupr_out, 0.6) && close(m.aupr_in, 0.4));
        // -0.0 and 0.0 are one threshold.
        assert!(close(ood_metrics(&[-0.0], &[0.0]).unwrap().auroc, 0.5));
    }

    #[test]
    fn a_million_scores() {
        // A cheap deterministic stream; the check is speed (O(n log n)) and sanity.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let id: Vec<f64> = (0..1_000_000).map(|_| next()).collect();
        let ood: Vec<f64> = (0..1_000_000).map(|_| next() + 0.5).collect();
        let start = std::time::Instant::now();
        let m = ood_metrics(&id, &ood).unwrap();
        assert!(start.elapsed().as_secs_f64() < 5.0);
        // ID ~ U(0, 1), OOD ~ U(½, 3/2): P(OOD < ID) = ½·½² so AUROC = 0.875; accepting 95%
        // of ID means threshold 0.95, below which lies 0.45 of OOD.
        assert!((m.auroc - 0.875).abs() < 2e-3, "{}", m.auroc);
        assert!((m.fpr95 - 0.45).abs() < 2e-3, "{}", m.fpr95);
    }
}
