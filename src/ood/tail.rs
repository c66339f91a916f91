//! Tail p-values: conformal inside the calibration range, a generalized Pareto tail beyond it.
//!
//! A conformal p-value from `n` calibration scores is never below `1/(n+1)`. Peaks over
//! threshold (Pickands–Balkema–de Haan) model the excesses `y = s − t` of the scores over a high
//! threshold `t` (the `quantile` of the calibration scores, 0.95 by default) as a generalized
//! Pareto distribution GPD(ξ, σ), whose survival function is
//! `G(y) = (1 + ξy/σ)^(−1/ξ)` (`exp(−y/σ)` when ξ = 0; for ξ < 0 it reaches 0 at `y = σ/|ξ|`).
//! ξ and σ are fitted by maximum likelihood with Grimshaw's one-dimensional root search (as in
//! SPOT, Siffer et al., KDD 2017).
//!
//! The p-value of a score `s` above the largest calibration score `s_max` is
//! `p = 1/(n+1) · G(s − t) / G(s_max − t)`: the conformal p-value just above `s_max`, carried
//! down the fitted tail. Anchoring at `s_max` rather than at `t` (the textbook
//! `N_t/n · G(s − t)`) keeps the p-value continuous and monotone in the score where it leaves
//! the calibration range, and leaves every p-value inside that range exactly the conformal one;
//! only the decay beyond `s_max` rests on the GPD. That part holds under the tail model, not
//! under exchangeability alone.
//!
//! A fitted ξ < 0 (a tail with an upper end) is replaced by the exponential (ξ = 0) unless
//! [`TailOptions::bounded`] says otherwise: see there why.
//!
//! The tail falls back to plain conformal when fewer than `min_points` scores exceed the
//! threshold (10 by default, as the `nonconform` package does) or when the likelihood has no
//! usable maximum (the excesses are all equal, or too large for finite arithmetic). The likelihood
//! is unbounded as ξ → −∞, so the maximum sought is the largest stationary point with ξ > −1;
//! the exponential (ξ = 0) is always one.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The tail setting of a calibration.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TailOptions {
    /// The threshold `t` is this quantile of the calibration scores.
    pub quantile: f64,
    /// Below this many scores above `t`, p-values stay plain conformal.
    pub min_points: usize,
    /// Keep a negative fitted ξ (a tail with an upper end). Off by default: on the few points
    /// of a tail (13 for 264 calibration boxes) the MLE of a negative ξ is biased low and noisy,
    /// and an upper end placed just above the largest calibration score gives the ID boxes
    /// beyond it p-values near 0. Off, a negative ξ̂ gives way to the exponential tail (ξ = 0,
    /// σ the mean excess: its maximum-likelihood fit), which decays more slowly than any
    /// bounded tail: conservative.
    #[serde(default)]
    pub bounded: bool,
}

impl Default for TailOptions {
    fn default() -> Self {
        TailOptions {
            quantile: 0.95,
            min_points: 10,
            bounded: false,
        }
    }
}

impl TailOptions {
    pub fn check(&self) -> Result<()> {
        if !(self.quantile > 0.0 && self.quantile < 1.0) {
            return Err(Error::Calibration(format!(
                "the tail quantile must lie in (0, 1), got {}",
                self.quantile
            )));
        }
        if self.min_points < 2 {
            return Err(Error::Calibration(format!(
                "a tail needs at least 2 points to fit, got min_points {}",
                self.min_points
            )));
        }
        Ok(())
    }
}

/// A generalized Pareto distribution of the excesses over `threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gpd {
    pub threshold: f64,
    /// ξ: > 0 a heavy tail, 0 exponential, < 0 a tail with an upper end.
    pub shape: f64,
    /// σ > 0.
    pub scale: f64,
    /// The excesses it was fitted on.
    pub points: usize,
    /// The maximum-likelihood ξ̂; `shape` is 0 where ξ̂ < 0 and bounded tails are off.
    pub mle_shape: f64,
}

impl Gpd {
    /// `P(Y > y)` for an excess `y ≥ 0`.
    pub fn survival(&self, y: f64) -> f64 {
        let z = y.max(0.0) / self.scale;
        if self.shape == 0.0 {
            return (-z).exp();
        }
        let inner = self.shape * z;
        if inner <= -1.0 {
            return 0.0;
        }
        // ln_1p keeps (1 + ξz)^(−1/ξ) accurate as ξ → 0.
        (-inner.ln_1p() / self.shape).exp()
    }

    /// The mean log-likelihood of excesses `y` (−∞ outside the support).
    pub fn log_likelihood(&self, excesses: &[f64]) -> f64 {
        let k = excesses.len() as f64;
        let mut sum = 0.0;
        for &y in excesses {
            let z = y / self.scale;
            if self.shape == 0.0 {
                sum += z;
            } else {
                let inner = self.shape * z;
                if inner <= -1.0 {
                    return f64::NEG_INFINITY;
                }
                sum += (1.0 + 1.0 / self.shape) * inner.ln_1p();
            }
        }
        -self.scale.ln() - sum / k
    }

    /// Refuses parameters a fit cannot give (from a damaged file).
    pub fn check(&self) -> std::result::Result<(), String> {
        let ok = self.threshold.is_finite()
            && self.shape.is_finite()
            && self.shape > -1.0
            && self.mle_shape.is_finite()
            && self.scale.is_finite()
            && self.scale > 0.0
            && self.points >= 2;
        ok.then_some(())
            .ok_or_else(|| format!("invalid tail {self:?}"))
    }
}

/// What the tail fit of one calibration set gave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TailStatus {
    /// p-values beyond the largest calibration score come from this GPD.
    Fitted(Gpd),
    /// p-values stay plain conformal, for this reason.
    Plain { reason: String },
}

impl TailStatus {
    pub fn gpd(&self) -> Option<&Gpd> {
        match self {
            TailStatus::Fitted(gpd) => Some(gpd),
            TailStatus::Plain { .. } => None,
        }
    }
}

/// Fits the tail of ascending calibration scores, or says why it stays plain conformal.
pub fn fit_tail(sorted: &[f64], options: &TailOptions) -> TailStatus {
    let n = sorted.len();
    let above = ((1.0 - options.quantile) * n as f64).floor() as usize;
    if above < options.min_points || above >= n {
        return TailStatus::Plain {
            reason: format!(
                "{above} of {n} calibration scores lie above the {} quantile; the tail needs {}",
                options.quantile, options.min_points
            ),
        };
    }
    let threshold = sorted[n - above - 1];
    let excesses: Vec<f64> = sorted[n - above..]
        .iter()
        .map(|s| s - threshold)
        .filter(|&y| y > 0.0)
        .collect();
    if excesses.len() < options.min_points {
        return TailStatus::Plain {
            reason: format!(
                "{} calibration scores lie strictly above the threshold {threshold} (ties); the \
                 tail needs {}",
                excesses.len(),
                options.min_points
            ),
        };
    }
    match fit_gpd(&excesses) {
        Some((mle_shape, _)) if mle_shape < 0.0 && !options.bounded => TailStatus::Fitted(Gpd {
            threshold,
            shape: 0.0,
            scale: excesses.iter().sum::<f64>() / excesses.len() as f64,
            points: excesses.len(),
            mle_shape,
        }),
        Some((shape, scale)) => TailStatus::Fitted(Gpd {
            threshold,
            shape,
            scale,
            points: excesses.len(),
            mle_shape: shape,
        }),
        None => TailStatus::Plain {
            reason: format!(
                "the GPD likelihood of the {} excesses over {threshold} has no usable maximum",
                excesses.len()
            ),
        },
    }
}

/// Grid points per search interval of Grimshaw's root search.
const GRID: usize = 200;

/// Maximum-likelihood (ξ, σ) of positive excesses by Grimshaw's method: with θ = ξ/σ, the
/// likelihood's stationary points are the roots of `w(θ) = u(θ)·v(θ) − 1`, where
/// `u = mean 1/(1 + θy)` and `v = 1 + mean ln(1 + θy)`, and then `ξ = v − 1`, `σ = ξ/θ`. Roots
/// lie in `(−1/max y, 0)` and `(0, 2(ȳ − min y)/(min y)²)`; θ = 0 (the exponential, σ = ȳ) is
/// always a candidate. The candidate of largest likelihood wins. `None` when no candidate has
/// ξ > −1 and finite values, or the excesses are not positive, finite and of more than one
/// value.
pub fn fit_gpd(excesses: &[f64]) -> Option<(f64, f64)> {
    let k = excesses.len() as f64;
    let mean = excesses.iter().sum::<f64>() / k;
    let (min, max) = excesses
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &y| {
            (lo.min(y), hi.max(y))
        });
    // A point mass (all excesses equal) is no GPD.
    if !(mean.is_finite() && min > 0.0 && max > min) {
        return None;
    }
    let w = |theta: f64| {
        let (mut u, mut v) = (0.0, 0.0);
        for &y in excesses {
            u += 1.0 / (1.0 + theta * y);
            v += (theta * y).ln_1p();
        }
        (u / k) * (1.0 + v / k) - 1.0
    };
    // Stay clear of θ = 0 (always a root of w, the exponential candidate) and of the pole.
    let near_zero = 1e-8 / max;
    let negative = (-1.0 / max * (1.0 - 1e-9), -near_zero);
    let positive = (near_zero, 2.0 * (mean - min) / (min * min));
    let mut candidates = vec![Gpd {
        threshold: 0.0,
        shape: 0.0,
        scale: mean,
        points: excesses.len(),
        mle_shape: 0.0,
    }];
    for (lo, hi) in [negative, positive] {
        if hi <= lo || !hi.is_finite() {
            continue;
        }
        for theta in roots(&w, lo, hi) {
            let shape = excesses.iter().map(|&y| (theta * y).ln_1p()).sum::<f64>() / k;
            let scale = shape / theta;
            let gpd = Gpd {
                shape,
                scale,
                mle_shape: shape,
                ..candidates[0]
            };
            if gpd.check().is_ok() {
                candidates.push(gpd);
            }
        }
    }
    candidates
        .into_iter()
        .map(|g| (g.log_likelihood(excesses), g))
        .filter(|(l, _)| l.is_finite())
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, g)| (g.shape, g.scale))
}

/// Roots of `f` in `(lo, hi)`: sign changes on a grid (geometric when the interval is on one
/// side of 0 and spans decades, so that roots near 0 are not missed), refined by bisection.
fn roots(f: &impl Fn(f64) -> f64, lo: f64, hi: f64) -> Vec<f64> {
    let grid: Vec<f64> = (0..=GRID)
        .map(|i| {
            let a = i as f64 / GRID as f64;
            if lo > 0.0 {
                lo * (hi / lo).powf(a)
            } else {
                // Negative side: dense near both the pole at lo and near 0.
                let t = 0.5 - 0.5 * (std::f64::consts::PI * a).cos();
                lo + (hi - lo) * t
            }
        })
        .collect();
    let mut found = Vec::new();
    for pair in grid.windows(2) {
        let (mut a, mut b) = (pair[0], pair[1]);
        let (mut fa, fb) = (f(a), f(b));
        if !(fa.is_finite() && fb.is_finite()) || fa.signum() == fb.signum() {
            continue;
        }
        for _ in 0..100 {
            let mid = 0.5 * (a + b);
            let fm = f(mid);
            if fm.signum() == fa.signum() {
                (a, fa) = (mid, fm);
            } else {
                b = mid;
            }
        }
        found.push(0.5 * (a + b));
    }
    found
}

/// The p-value of `score` beyond the largest of `n` calibration scores `max`, given the tail:
/// `1/(n+1) · G(score − t) / G(max − t)`.
pub fn tail_p_value(gpd: &Gpd, n: usize, max: f64, score: f64) -> f64 {
    let anchor = gpd.survival(max - gpd.threshold);
    let ratio = if anchor > 0.0 {
        gpd.survival(score - gpd.threshold) / anchor
    } else {
        0.0
    };
    ratio.min(1.0) / (n + 1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// GPD samples by the inverse survival function.
    fn sample(shape: f64, scale: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let u: f64 = rng.random::<f64>().max(1e-300);
                if shape == 0.0 {
                    -scale * u.ln()
                } else {
                    scale / shape * (u.powf(-shape) - 1.0)
                }
            })
            .collect()
    }

    /// The MLE's asymptotic standard errors are `(1 + ξ)/√n` for ξ and `√(2(1 + ξ)/n)` for
    /// σ̂/σ; each estimate lies within four of them (n = 4000: 0.016–0.025 for ξ, 1.9–2.8%
    /// for σ).
    #[test]
    fn the_fit_recovers_known_parameters() {
        let n = 4000;
        let cases = [(-0.3, 2.0), (0.0, 1.0), (0.25, 0.5), (0.6, 3.0)];
        for (i, &(shape, scale)) in cases.iter().enumerate() {
            let y = sample(shape, scale, n, i as u64);
            let (xi, sigma) = fit_gpd(&y).unwrap();
            let se_shape = (1.0 + shape) / (n as f64).sqrt();
            let se_scale = (2.0 * (1.0 + shape) / n as f64).sqrt();
            eprintln!("ξ {shape} σ {scale}: {xi:.4} {sigma:.4}");
            assert!((xi - shape).abs() < 4.0 * se_shape, "ξ {shape}: got {xi}");
            let relative = sigma / scale - 1.0;
            assert!(relative.abs() < 4.0 * se_scale, "σ {scale}: got {sigma}");
        }
    }

    /// The chosen root is the likelihood's maximum: no point of a fine grid around it is
    /// more likely.
    #[test]
    fn the_fit_is_the_likelihood_maximum() {
        for (shape, seed) in [(-0.2, 7), (0.0, 8), (0.4, 9)] {
            let y = sample(shape, 1.5, 60, seed);
            let (xi, sigma) = fit_gpd(&y).unwrap();
            let at = |shape, scale| {
                Gpd {
                    threshold: 0.0,
                    shape,
                    scale,
                    points: y.len(),
                    mle_shape: shape,
                }
                .log_likelihood(&y)
            };
            let best = at(xi, sigma);
            for i in -20..=20 {
                for j in -20..=20 {
                    let (s, c) = (xi + 0.01 * i as f64, sigma * (1.0 + 0.01 * j as f64));
                    if s > -1.0 {
                        assert!(at(s, c) <= best + 1e-12, "ξ {s} σ {c} beats {xi} {sigma}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_survival_is_continuous_in_the_shape_and_ends_for_negative_shapes() {
        let g = |shape| Gpd {
            threshold: 0.0,
            shape,
            scale: 2.0,
            points: 10,
            mle_shape: shape,
        };
        let exp = g(0.0).survival(3.0);
        assert_eq!(exp, (-1.5f64).exp());
        assert!((g(1e-12).survival(3.0) - exp).abs() < 1e-11);
        assert!((g(-1e-12).survival(3.0) - exp).abs() < 1e-11);
        // ξ = −0.5: the upper end is σ/|ξ| = 4.
        assert_eq!(g(-0.5).survival(4.0), 0.0);
        assert!((g(-0.5).survival(2.0) - 0.25).abs() < 1e-15);
    }

    #[test]
    fn too_few_points_or_ties_fall_back_to_plain_conformal() {
        let options = TailOptions::default();
        let sorted: Vec<f64> = (0..150).map(f64::from).collect();
        // 7 points above the 0.95 quantile of 150.
        match fit_tail(&sorted, &options) {
            TailStatus::Plain { reason } => assert!(reason.contains("7 of 150"), "{reason}"),
            s => panic!("{s:?}"),
        }
        let mut tied = vec![0.0; 180];
        tied.extend(vec![5.0; 20]);
        match fit_tail(&tied, &options) {
            TailStatus::Plain { reason } => assert!(reason.contains("ties"), "{reason}"),
            s => panic!("{s:?}"),
        }
        // 20 equal excesses: a point mass, not a GPD.
        let mut flat_tail: Vec<f64> = (0..380).map(f64::from).collect();
        flat_tail.extend(vec![1000.0; 20]);
        match fit_tail(&flat_tail, &options) {
            TailStatus::Plain { reason } => assert!(reason.contains("no usable"), "{reason}"),
            s => panic!("{s:?}"),
        }
        // Excesses too large to sum: the fit fails rather than give a non-finite tail.
        let mut huge: Vec<f64> = (0..380).map(f64::from).collect();
        huge.extend((0..20).map(|i| f64::MAX / (1.0 + i as f64)));
        assert!(fit_tail(&huge, &options).gpd().is_none());
        assert!(fit_gpd(&[0.0, 1.0, 2.0]).is_none(), "a zero excess");
        assert!(TailOptions {
            quantile: 1.0,
            ..options
        }
        .check()
        .is_err());
    }

    /// A tail with an upper end keeps its fitted ξ < 0 only when bounded tails are on;
    /// otherwise the exponential of the same excesses replaces it.
    #[test]
    fn negative_shapes_give_way_to_the_exponential_unless_bounded() {
        let mut scores = sample(-0.4, 1.0, 2000, 3);
        scores.sort_by(f64::total_cmp);
        let options = TailOptions::default();
        let plain = fit_tail(&scores, &options).gpd().copied().unwrap();
        let bounded = fit_tail(
            &scores,
            &TailOptions {
                bounded: true,
                ..options
            },
        );
        let bounded = bounded.gpd().copied().unwrap();
        assert_eq!(bounded.shape, bounded.mle_shape);
        assert!((bounded.shape + 0.4).abs() < 0.15, "{bounded:?}");
        assert_eq!((plain.shape, plain.mle_shape), (0.0, bounded.shape));
        assert_eq!(plain.points, 100);
        // The exponential's scale is the mean excess.
        let t = plain.threshold;
        let mean = scores
            .iter()
            .filter(|&&s| s > t)
            .map(|s| s - t)
            .sum::<f64>()
            / 100.0;
        assert!((plain.scale - mean).abs() < 1e-12);
    }

    #[test]
    fn tail_p_values_start_at_the_conformal_floor_and_fall() {
        let gpd = Gpd {
            threshold: 10.0,
            shape: 0.0,
            scale: 1.0,
            points: 20,
            mle_shape: 0.0,
        };
        let n = 99;
        assert_eq!(tail_p_value(&gpd, n, 12.0, 12.0), 0.01);
        assert!((tail_p_value(&gpd, n, 12.0, 13.0) - 0.01 * (-1.0f64).exp()).abs() < 1e-15);
        let bounded = Gpd {
            shape: -0.5,
            mle_shape: -0.5,
            ..gpd
        };
        assert_eq!(tail_p_value(&bounded, n, 12.0, 12.0 + 2.0), 0.0);
    }
}
