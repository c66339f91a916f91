//! OOD evidence over a track: when does a track become an unknown object?
//!
//! **The rule.** Each box has a conformal p-value `p` (small = unusual for its class). A track's
//! boxes are taken in blocks of `m` boxes (`m` = the minimum duration in frames): block `j`
//! holds its boxes `j·m .. (j+1)·m − 1`. With `r = ⌈q·m⌉` (q = 1/2: half the block), block `j`
//! gives the p-value
//!
//! ```text
//! P_j = min(1, p_(r) · m / (r · w_j)),   w_0 = 0.8,  w_j = 0.2 · 2^−j for j ≥ 1
//! ```
//!
//! where `p_(r)` is the r-th smallest p-value of the block (1 while it has fewer than r boxes).
//! The track's p-value is the smallest `P_j` so far, and the track is unknown once that is
//! `≤ alpha`. In words: at least half of a block of boxes must be unusual at a level that
//! tightens block after block. One odd frame raises no alarm; a persistent unknown does.
//!
//! **Why the false-alarm rate holds.** For an in-distribution track every box p-value is
//! super-uniform (`P(p ≤ t) ≤ t`, the per-box calibration), however strongly the frames of one
//! object are correlated. The number `N` of a block's (at most m) p-values that are `≤ t` then
//! has `E[N] ≤ m·t`, so by Markov's inequality `P(p_(r) ≤ t) = P(N ≥ r) ≤ m·t / r`, that is
//! `P(P_j ≤ alpha) ≤ alpha·w_j`. Summed over blocks (a union bound, which needs no
//! independence either): `P(an ID track is ever called unknown) ≤ alpha · Σ w_j ≤ alpha`, for
//! tracks of any length. The price of needing no independence assumption is power. Block 0
//! gets 80% of alpha (`w_0 = 0.8`), and Markov's factor `m/r ≈ 2` halves that, so at
//! least half of block 0's boxes need `p ≤ 0.4·alpha` (exactly so for even `m`). The other 20%
//! is spread over later blocks (`Σ_{j≥1} w_j = 0.2`; block 1's boxes need `p ≤ 0.05·alpha`), so
//! that an object whose first second is ambiguous (it is still entering, or occluded) can still
//! be called unknown later.
//!
//! A block is checked as each box arrives: `p_(r)` of a partial block can only fall as the block
//! fills, so an alarm on a partial block is one the full block would raise.
//!
//! **With tail p-values** (a scorer fitted with a tail, [`crate::ood::tail`]), a box beyond
//! the largest calibration score of its class gets a p-value below `1/(n+1)`, and later blocks
//! (whose boxes need p ≤ 0.05·alpha and below) can fire at all on per-class calibrations of a
//! few hundred boxes. Those p-values are super-uniform under the tail model, not by
//! exchangeability alone, and so is then the false-alarm bound above.
//!
//! **With a track calibration** ([`super::calibration`], fitted on footage of known objects),
//! the rule is calibrated instead. The track statistic is the largest running mean surprisal
//! `(1/n) Σ −ln p_i` over the track's first `n` boxes, taken over `n ≥ m` (0 before `m` boxes):
//! a persistent unknown with mildly small p-values adds up, while a known object that is
//! hidden for a while falls back once it is seen whole. The track's p-value is that statistic's
//! conformal p-value among the calibration's tracks; the statistic only grows, so the p-value
//! only falls, and a track is unknown once it is `≤ alpha`.

use std::sync::Arc;

use super::calibration::TrackCalibration;

/// The track-level decision rule. See the module documentation.
#[derive(Clone, Debug)]
pub struct TrackRule {
    /// The bound on the share of in-distribution tracks called unknown.
    pub alpha: f64,
    /// Boxes per block (the minimum duration, in frames); at least 3, so that two boxes are
    /// needed.
    pub block: usize,
    /// Calibrates the rule on footage of known objects (see the module documentation).
    pub calibration: Option<Arc<TrackCalibration>>,
}

impl TrackRule {
    /// A rule whose blocks last `min_duration_s` at `fps`.
    pub fn new(alpha: f64, min_duration_s: f64, fps: f64) -> Self {
        TrackRule {
            alpha,
            block: ((min_duration_s * fps).round() as usize).max(3),
            calibration: None,
        }
    }

    /// How many of a block's boxes must be unusual.
    pub fn needed(&self) -> usize {
        self.block.div_ceil(2)
    }

    /// The p-value of block `j` from its (partial or full) box p-values.
    pub fn block_p_value(&self, j: usize, p_values: &[f64]) -> f64 {
        let r = self.needed();
        if p_values.len() < r {
            return 1.0;
        }
        let mut sorted = p_values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let weight = match j {
            0 => 0.8,
            _ => 0.2 * 0.5f64.powi(j.min(1000) as i32),
        };
        (sorted[r - 1] * self.block as f64 / (r as f64 * weight)).min(1.0)
    }
}

/// The evidence gathered on one track.
#[derive(Clone, Debug)]
pub struct TrackEvidence {
    block_index: usize,
    block: Vec<f64>,
    boxes: usize,
    surprisal: f64,
    statistic: f64,
    p_value: f64,
}

impl Default for TrackEvidence {
    fn default() -> Self {
        TrackEvidence {
            block_index: 0,
            block: Vec::new(),
            boxes: 0,
            surprisal: 0.0,
            statistic: 0.0,
            p_value: 1.0,
        }
    }
}

impl TrackEvidence {
    /// Adds one box's p-value.
    pub fn push(&mut self, p_value: f64, rule: &TrackRule) {
        self.boxes += 1;
        // A p-value of 0 cannot come from a conformal calibration, only from beyond the end of
        // a bounded tail; the floor keeps the surprisal finite.
        self.surprisal -= p_value.max(f64::MIN_POSITIVE).ln();
        if self.boxes >= rule.block {
            self.statistic = self.statistic.max(self.surprisal / self.boxes as f64);
        }
        let p = match &rule.calibration {
            Some(calibration) => calibration.p_value(self.statistic),
            None => {
                self.block.push(p_value);
                let p = rule.block_p_value(self.block_index, &self.block);
                if self.block.len() == rule.block {
                    self.block.clear();
                    self.block_index += 1;
                }
                p
            }
        };
        self.p_value = self.p_value.min(p);
    }

    /// The largest running mean surprisal over at least a block of boxes (0 before): what a
    /// track calibration ranks.
    pub fn statistic(&self) -> f64 {
        self.statistic
    }

    /// The track's p-value: how plausible its boxes are for an in-distribution object.
    pub fn p_value(&self) -> f64 {
        self.p_value
    }

    pub fn is_unknown(&self, rule: &TrackRule) -> bool {
        self.p_value <= rule.alpha
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn one_odd_frame_raises_no_alarm_and_a_persistent_unknown_does() {
        let rule = TrackRule::new(0.05, 1.0, 10.0);
        assert_eq!((rule.block, rule.needed()), (10, 5));
        let mut odd = TrackEvidence::default();
        for i in 0..30 {
            odd.push(if i == 3 { 1e-6 } else { 0.5 }, &rule);
        }
        assert!(!odd.is_unknown(&rule));
        let mut unknown = TrackEvidence::default();
        for i in 0..5 {
            unknown.push(0.001, &rule);
            // 0.001 · 10 / (5 · 0.8) = 0.0025 once five boxes are in.
            assert_eq!(unknown.is_unknown(&rule), i == 4, "box {i}");
        }
        assert!((unknown.p_value() - 0.0025).abs() < 1e-12);
    }

    /// The guarantee needs no independence: check it where frames are perfectly correlated (one
    /// p-value repeated) and where they are independent, by simulation.
    #[test]
    fn in_distribution_tracks_are_called_unknown_at_most_alpha_of_the_time() {
        let rule = TrackRule::new(0.1, 1.0, 8.0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let trials = 20_000;
        for correlated in [true, false] {
            let mut alarms = 0;
            for _ in 0..trials {
                let length = rng.random_range(1..60);
                let shared: f64 = rng.random();
                let mut evidence = TrackEvidence::default();
                for _ in 0..length {
                    let p = if correlated { shared } else { rng.random() };
                    evidence.push(p, &rule);
                }
                alarms += evidence.is_unknown(&rule) as usize;
            }
            let rate = alarms as f64 / trials as f64;
            assert!(rate <= rule.alpha, "correlated {correlated}: {rate}");
        }
    }

    #[test]
    fn the_statistic_is_the_largest_running_mean_surprisal_after_a_block() {
        let rule = TrackRule::new(0.05, 1.0, 3.0);
        let mut evidence = TrackEvidence::default();
        let surprisal = |p: f64| -p.ln();
        evidence.push(1e-6, &rule);
        evidence.push(1e-6, &rule);
        assert_eq!(evidence.statistic(), 0.0, "not before a block of boxes");
        evidence.push(0.5, &rule);
        let three = (2.0 * surprisal(1e-6) + surprisal(0.5)) / 3.0;
        assert!((evidence.statistic() - three).abs() < 1e-12);
        evidence.push(1.0, &rule);
        assert!(
            (evidence.statistic() - three).abs() < 1e-12,
            "it never falls"
        );
    }

    /// Known-object tracks in which a run of frames looks unusual (an occlusion) at a random
    /// place: the calibrated rule, fitted on such tracks, calls at most alpha of fresh ones
    /// unknown.
    #[test]
    fn a_calibrated_rule_holds_alpha_on_exchangeable_tracks() {
        let fps = 10.0;
        let alpha = 0.05;
        let plain = TrackRule::new(alpha, 1.0, fps);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let known_track = |rng: &mut rand_chacha::ChaCha8Rng, rule: &TrackRule| {
            let length = rng.random_range(1..80);
            let run_start = rng.random_range(0..length);
            let run = run_start..run_start + rng.random_range(0..20);
            let mut evidence = TrackEvidence::default();
            for i in 0..length {
                let p: f64 = rng.random();
                evidence.push(if run.contains(&i) { 0.05 * p } else { p }, rule);
            }
            evidence
        };
        let (repeats, per_repeat) = (100, 1000);
        let mut rates = Vec::new();
        for _ in 0..repeats {
            let statistics = (0..199)
                .map(|_| known_track(&mut rng, &plain).statistic())
                .collect();
            let setting = crate::video::calibration::TrackSetting {
                model: String::new(),
                scorer: String::new(),
                imgsz: crate::core::settings::InputSize::square(256),
                conf: 0.25,
                fps,
                block: plain.block,
            };
            let calibrated = TrackRule {
                calibration: Some(Arc::new(
                    TrackCalibration::fit(setting, "simulation", statistics).unwrap(),
                )),
                ..plain.clone()
            };
            let alarms = (0..per_repeat)
                .filter(|_| known_track(&mut rng, &calibrated).is_unknown(&calibrated))
                .count();
            rates.push(alarms as f64 / per_repeat as f64);
        }
        // Over calibration sets the expected rate is exactly 10/200 here: the mean of the
        // repeats lies within four of its standard errors of it.
        let mean = rates.iter().sum::<f64>() / repeats as f64;
        let sd =
            (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (repeats - 1) as f64).sqrt();
        eprintln!("false-alarm rate {mean:.4} (sd over calibration sets {sd:.4})");
        assert!(
            mean <= alpha + 4.0 * sd / (repeats as f64).sqrt(),
            "{mean} ± {sd}"
        );
        assert!(mean >= 0.5 * alpha, "the rule should use its alpha: {mean}");
    }
}
