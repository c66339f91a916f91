//! From raw OOD scores to calibrated p-values (split conformal; Bates et al., *Testing for
//! outliers with conformal p-values*, Ann. Statist. 2023).
//!
//! For a box with score `s` and predicted class `c`, `p = (1 + #{i : s_i ≥ s}) / (n + 1)` over the
//! calibration scores `s_i` of class `c` (Mondrian calibration), or over all calibration scores
//! when class `c` has fewer than `min_class_boxes` of them. For an ID box exchangeable with the
//! calibration boxes, `P(p ≤ α) ≤ α`: flagging `p ≤ α` keeps at least 1 − α of ID boxes. Ties
//! count fully (the conservative, deterministic p-value).
//!
//! With a tail ([`super::tail`]), a score above the largest calibration score gets a p-value
//! below `1/(n+1)` from a generalized Pareto tail fitted to the calibration scores; every other
//! p-value stays the conformal one. That extrapolated part holds under the tail model only.
//!
//! What this does not promise: boxes of one image are not exchangeable with each other, the
//! guarantee breaks under covariate shift (recalibrate on the new conditions), and it bounds
//! false alarms on ID boxes only, saying nothing about how many OOD boxes are caught.

use super::tail::{fit_tail, tail_p_value, Gpd, TailOptions, TailStatus};
use crate::error::{Error, Result};

/// Calibration scores, sorted ascending, pooled and per predicted class.
#[derive(Clone, Debug, PartialEq)]
pub struct Calibrator {
    pooled: Vec<f64>,
    /// `None` for a class with too few boxes: it uses the pooled scores.
    per_class: Vec<Option<Vec<f64>>>,
    min_class_boxes: usize,
    tails: Option<Tails>,
}

/// The tail fits of a calibrator: one per calibration set (pooled, and each class with its own).
#[derive(Clone, Debug, PartialEq)]
pub struct Tails {
    pub options: TailOptions,
    pub pooled: TailStatus,
    /// `Some` exactly for the classes with their own calibration scores.
    pub per_class: Vec<Option<TailStatus>>,
}

/// A p-value and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PValue {
    pub p: f64,
    /// Beyond the largest calibration score, from the fitted tail: it holds under the tail
    /// model, not by exchangeability alone.
    pub extrapolated: bool,
}

/// Per-class calibration counts, for reports and the scorer file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassCalibration {
    pub class_id: usize,
    pub boxes: usize,
    /// The class had fewer than `min_class_boxes` calibration boxes and uses the pooled set.
    pub pooled_fallback: bool,
    /// Fit boxes that the class's own statistics rest on, for a class-conditional scorer
    /// ([`crate::ood::Scorer::fit_classes`]); 0 for other scorers and in older files.
    #[serde(default)]
    pub fit_boxes: usize,
    /// With a tail: the tail fit of the calibration set the class uses (its own, or the pooled
    /// one), or why its p-values stay plain conformal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<TailStatus>,
}

impl Calibrator {
    /// `classes[i]` is the predicted class of calibration box `i`.
    pub fn fit(
        scores: &[f64],
        classes: &[usize],
        num_classes: usize,
        min_class_boxes: usize,
    ) -> Result<Self> {
        if scores.len() != classes.len() {
            return Err(Error::Calibration(format!(
                "{} calibration scores but {} classes",
                scores.len(),
                classes.len()
            )));
        }
        if scores.is_empty() {
            return Err(Error::Calibration("no calibration boxes".into()));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(Error::Calibration(format!(
                "calibration box {i} has score {}",
                scores[i]
            )));
        }
        if let Some(i) = classes.iter().position(|&c| c >= num_classes) {
            return Err(Error::Calibration(format!(
                "calibration box {i} has class {} but there are {num_classes} classes",
                classes[i]
            )));
        }
        let mut pooled = scores.to_vec();
        pooled.sort_by(f64::total_cmp);
        let per_class = (0..num_classes)
            .map(|c| {
                let mut own: Vec<f64> = scores
                    .iter()
                    .zip(classes)
                    .filter(|(_, &k)| k == c)
                    .map(|(s, _)| *s)
                    .collect();
                own.sort_by(f64::total_cmp);
                (own.len() >= min_class_boxes.max(1)).then_some(own)
            })
            .collect();
        Ok(Calibrator {
            pooled,
            per_class,
            min_class_boxes,
            tails: None,
        })
    }

    /// Fits a generalized Pareto tail to each calibration set (see [`super::tail`]); a set whose
    /// tail has too few points or whose fit fails keeps plain conformal p-values.
    pub fn with_tail(self, options: TailOptions) -> Result<Self> {
        options.check()?;
        let tails = Tails {
            options,
            pooled: fit_tail(&self.pooled, &options),
            per_class: self
                .per_class
                .iter()
                .map(|own| own.as_ref().map(|s| fit_tail(s, &options)))
                .collect(),
        };
        self.with_tails(tails)
    }

    /// Sets tails fitted before (read from a scorer file), checking they match the sets.
    pub fn with_tails(mut self, tails: Tails) -> Result<Self> {
        tails.options.check()?;
        let statuses = std::iter::once(&tails.pooled).chain(tails.per_class.iter().flatten());
        if let Some(e) = statuses
            .filter_map(|t| t.gpd())
            .find_map(|g| g.check().err())
        {
            return Err(Error::Calibration(e));
        }
        let shapes_match = tails.per_class.len() == self.per_class.len()
            && (tails.per_class.iter())
                .zip(&self.per_class)
                .all(|(t, s)| t.is_some() == s.is_some());
        if !shapes_match {
            return Err(Error::Calibration(
                "the tails do not match the classes with their own calibration scores".into(),
            ));
        }
        self.tails = Some(tails);
        Ok(self)
    }

    pub fn tails(&self) -> Option<&Tails> {
        self.tails.as_ref()
    }

    /// Rebuilds a calibrator from stored scores (already sorted or not).
    pub fn from_parts(
        mut pooled: Vec<f64>,
        per_class: Vec<Option<Vec<f64>>>,
        min_class_boxes: usize,
    ) -> Result<Self> {
        if pooled.is_empty() || pooled.iter().any(|s| !s.is_finite()) {
            return Err(Error::Calibration(
                "the pooled calibration scores are empty or not finite".into(),
            ));
        }
        let class_scores = per_class.iter().enumerate();
        if let Some((c, _)) = class_scores
            .filter_map(|(c, s)| s.as_ref().map(|s| (c, s)))
            .find(|(_, s)| s.is_empty() || s.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::Calibration(format!(
                "the calibration scores of class {c} are empty or not finite"
            )));
        }
        pooled.sort_by(f64::total_cmp);
        let per_class = per_class
            .into_iter()
            .map(|c| {
                c.map(|mut v| {
                    v.sort_by(f64::total_cmp);
                    v
                })
            })
            .collect();
        Ok(Calibrator {
            pooled,
            per_class,
            min_class_boxes,
            tails: None,
        })
    }

    /// The sorted calibration scores a box of `class_id` is compared with.
    pub fn scores_for(&self, class_id: usize) -> &[f64] {
        match self.per_class.get(class_id) {
            Some(Some(own)) => own,
            _ => &self.pooled,
        }
    }

    /// The tail of the calibration set that class `class_id` uses, when one was fitted.
    fn tail_for(&self, class_id: usize) -> Option<&TailStatus> {
        let tails = self.tails.as_ref()?;
        match tails.per_class.get(class_id) {
            Some(Some(own)) => Some(own),
            _ => Some(&tails.pooled),
        }
    }

    /// The p-value of a box: small means unusual for its class.
    pub fn p_value(&self, score: f64, class_id: usize) -> f64 {
        self.p_value_with_source(score, class_id).p
    }

    /// The p-value of a box and whether it was extrapolated by the tail: conformal up to the
    /// largest calibration score (and for NaN), the fitted tail beyond it.
    pub fn p_value_with_source(&self, score: f64, class_id: usize) -> PValue {
        let tail = self.tail_for(class_id).and_then(TailStatus::gpd);
        p_value_with_tail(self.scores_for(class_id), tail, score)
    }

    pub fn pooled(&self) -> &[f64] {
        &self.pooled
    }

    pub fn per_class(&self) -> &[Option<Vec<f64>>] {
        &self.per_class
    }

    pub fn min_class_boxes(&self) -> usize {
        self.min_class_boxes
    }

    pub fn summary(&self, classes_of_calibration_boxes: Option<&[usize]>) -> Vec<ClassCalibration> {
        (0..self.per_class.len())
            .map(|c| ClassCalibration {
                class_id: c,
                boxes: match (&self.per_class[c], classes_of_calibration_boxes) {
                    (Some(own), _) => own.len(),
                    (None, Some(classes)) => classes.iter().filter(|&&k| k == c).count(),
                    (None, None) => 0,
                },
                pooled_fallback: self.per_class[c].is_none(),
                fit_boxes: 0,
                tail: self.tail_for(c).cloned(),
            })
            .collect()
    }
}

/// The conformal p-value of `score` among ascending calibration scores (higher = more unusual):
/// (1 + those at least as large) / (1 + all). NaN counts as at least as unusual as everything.
pub fn conformal_p_value(sorted: &[f64], score: f64) -> f64 {
    let at_least = if score.is_nan() {
        0
    } else {
        sorted.len() - sorted.partition_point(|&s| s < score)
    };
    (1 + at_least) as f64 / (sorted.len() + 1) as f64
}

/// The p-value of `score` among ascending, non-empty calibration scores, with their tail when
/// one was fitted: conformal up to the largest calibration score (and for NaN), the tail beyond
/// it.
pub fn p_value_with_tail(sorted: &[f64], tail: Option<&Gpd>, score: f64) -> PValue {
    let max = *sorted.last().expect("calibration sets are not empty");
    match tail {
        Some(gpd) if score > max => PValue {
            p: tail_p_value(gpd, sorted.len(), max, score),
            extrapolated: true,
        },
        _ => PValue {
            p: conformal_p_value(sorted, score),
            extrapolated: false,
        },
    }
}

/// How much the share of ID boxes flagged at `alpha` varies from one calibration set to another
/// of the same size (one standard deviation), for the calibration `summary`. Given a class's n
/// calibration scores, the share of its exchangeable ID boxes with `p ≤ alpha` is distributed
/// Beta(l, n + 1 − l), l = ⌊alpha (n + 1)⌋ (Vovk 2012, *Conditional validity of inductive
/// conformal predictors*); classes weigh by their share of the calibration boxes, and the classes
/// calibrated pooled share the pooled set. The guarantee `≤ alpha` holds on average over
/// calibration sets; this says how far one set's rate strays from it.
pub fn flagged_share_spread(summary: &[ClassCalibration], alpha: f64) -> f64 {
    let total: usize = summary.iter().map(|c| c.boxes).sum();
    if total == 0 {
        return 0.0;
    }
    let weight = |boxes: usize| boxes as f64 / total as f64;
    let pooled_weight: f64 = summary
        .iter()
        .filter(|c| c.pooled_fallback)
        .map(|c| weight(c.boxes))
        .sum();
    let own: f64 = summary
        .iter()
        .filter(|c| !c.pooled_fallback)
        .map(|c| weight(c.boxes).powi(2) * beta_coverage_variance(c.boxes, alpha))
        .sum();
    (own + pooled_weight.powi(2) * beta_coverage_variance(total, alpha)).sqrt()
}

/// The variance of Beta(l, n + 1 − l), l = ⌊alpha (n + 1)⌋: the conditional false-alarm rate of
/// a conformal test on n calibration scores.
fn beta_coverage_variance(n: usize, alpha: f64) -> f64 {
    let m = (n + 1) as f64;
    let l = (alpha * m).floor();
    l * (m - l) / (m * m * (m + 1.0))
}

/// The smallest number of calibration boxes for which `p ≤ alpha` can happen at all.
pub fn minimum_calibration_size(alpha: f64) -> usize {
    (1.0 / alpha - 1.0).ceil().max(1.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spread of the flagged share over calibration draws, by simulation: uniform ID scores,
    /// 2 000 calibration sets of 200 boxes of one class; then how classes combine.
    #[test]
    fn flagged_share_spread_matches_simulated_calibration_draws() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let alpha = 0.05;
        // For uniform scores the flagged share given a calibration set is exactly the
        // probability mass above its conformal threshold.
        let share = |cal: &mut Vec<f64>| {
            cal.sort_by(f64::total_cmp);
            let n = cal.len();
            let l = (alpha * (n + 1) as f64).floor() as usize;
            1.0 - cal[n - l]
        };
        let draws: Vec<f64> = (0..2000)
            .map(|_| share(&mut (0..200).map(|_| rng.random::<f64>()).collect()))
            .collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let sd = (draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / 1999.0).sqrt();
        let class = |boxes, pooled_fallback| ClassCalibration {
            class_id: 0,
            boxes,
            pooled_fallback,
            fit_boxes: 0,
            tail: None,
        };
        let predicted = flagged_share_spread(&[class(200, false)], alpha);
        assert!((predicted - 0.01530).abs() < 1e-5, "{predicted}");
        assert!(
            (sd / predicted - 1.0).abs() < 0.07,
            "simulated {sd}, predicted {predicted}"
        );
        // Two classes with their own sets average two independent rates; pooled ones share one.
        let two = flagged_share_spread(&[class(100, false), class(100, false)], alpha);
        let own = flagged_share_spread(&[class(100, false)], alpha);
        assert!((two - own / 2f64.sqrt()).abs() < 1e-12);
        let pooled = flagged_share_spread(&[class(100, true), class(100, true)], alpha);
        assert!((pooled - predicted).abs() < 1e-12);
        assert_eq!(flagged_share_spread(&[], alpha), 0.0);
    }

    #[test]
    fn p_values_count_ties_conservatively() {
        let cal = Calibrator::fit(&[1.0, 2.0, 2.0, 3.0], &[0, 0, 0, 0], 1, 1).unwrap();
        assert_eq!(cal.p_value(0.0, 0), 1.0);
        assert_eq!(cal.p_value(2.0, 0), 4.0 / 5.0);
        assert_eq!(cal.p_value(2.5, 0), 2.0 / 5.0);
        assert_eq!(cal.p_value(9.0, 0), 1.0 / 5.0);
        assert_eq!(cal.p_value(f64::NAN, 0), 1.0 / 5.0);
    }

    #[test]
    fn small_classes_fall_back_to_the_pooled_set() {
        let scores = [0.0, 1.0, 2.0, 10.0, 11.0];
        let cal = Calibrator::fit(&scores, &[0, 0, 0, 1, 1], 3, 3).unwrap();
        // Class 0 has its own three scores: 5.0 is above all of them.
        assert_eq!(cal.p_value(5.0, 0), 1.0 / 4.0);
        // Class 1 (two boxes) and class 2 (none) use all five.
        assert_eq!(cal.p_value(5.0, 1), 3.0 / 6.0);
        assert_eq!(cal.p_value(5.0, 2), 3.0 / 6.0);
        let summary = cal.summary(Some(&[0, 0, 0, 1, 1]));
        assert!(
            !summary[0].pooled_fallback && summary[1].pooled_fallback && summary[2].pooled_fallback
        );
        assert_eq!(summary[1].boxes, 2);
    }

    #[test]
    fn bad_calibration_sets_are_refused() {
        assert!(Calibrator::fit(&[], &[], 2, 1).is_err());
        assert!(Calibrator::fit(&[f64::INFINITY], &[0], 2, 1).is_err());
        assert!(Calibrator::fit(&[1.0], &[5], 2, 1).is_err());
        assert_eq!(minimum_calibration_size(0.05), 19);
    }

    #[test]
    fn flag_rate_on_exchangeable_scores_is_at_most_alpha() {
        // Scores 0..n shuffled deterministically: calibrate on even, test on odd positions.
        let n = 4000;
        let scores: Vec<f64> = (0..n).map(|i| ((i * 7919) % n) as f64).collect();
        let cal_scores: Vec<f64> = scores.iter().step_by(2).copied().collect();
        let cal = Calibrator::fit(&cal_scores, &vec![0; cal_scores.len()], 1, 1).unwrap();
        for alpha in [0.01, 0.05, 0.1] {
            let flagged = scores
                .iter()
                .skip(1)
                .step_by(2)
                .filter(|&&s| cal.p_value(s, 0) <= alpha)
                .count();
            let rate = flagged as f64 / (n / 2) as f64;
            assert!(
                rate <= alpha + 0.01 && rate >= alpha - 0.01,
                "alpha {alpha}: rate {rate}"
            );
        }
    }
}
