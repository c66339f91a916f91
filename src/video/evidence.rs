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
//! only falls, and a track is unknown once it is `≤ alpha`. A track calibration with a tail
//! ([`TrackCalibration::with_tail`]) extrapolates that p-value beyond its largest statistic.
//!
//! **What rests on a tail.** A track's p-value rests on a tail model when the value that gives
//! it could change if every extrapolated p-value were replaced by its conformal counterpart
//! (which is larger). For a block of the distribution-free rule that is when one of the box
//! p-values at or below `p_(r)` came from a tail (the larger ones do not move `p_(r)`); for a
//! track calibration, when a box p-value of the prefix whose mean surprisal is the statistic
//! came from a tail, or the statistic lies beyond the calibration's largest and its p-value
//! comes from the calibration's own tail. [`TrackEvidence::rests_on_tail`] says so for the
//! smallest p-value so far (on a tie, the value that rests on none wins).

use std::sync::Arc;

use super::calibration::TrackCalibration;
use crate::ood::calibration::PValue;

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

    /// The p-value of block `j` from its (partial or full) box p-values; it rests on a tail
    /// when one of the box p-values at or below `p_(r)` does.
    pub fn block_p_value(&self, j: usize, p_values: &[PValue]) -> PValue {
        let r = self.needed();
        if p_values.len() < r {
            return NO_EVIDENCE;
        }
        let mut sorted: Vec<f64> = p_values.iter().map(|b| b.p).collect();
        sorted.sort_by(f64::total_cmp);
        let p_r = sorted[r - 1];
        let weight = match j {
            0 => 0.8,
            _ => 0.2 * 0.5f64.powi(j.min(1000) as i32),
        };
        PValue {
            p: (p_r * self.block as f64 / (r as f64 * weight)).min(1.0),
            extrapolated: p_values.iter().any(|b| b.extrapolated && b.p <= p_r),
        }
    }
}

/// The p-value of a track without evidence.
const NO_EVIDENCE: PValue = PValue {
    p: 1.0,
    extrapolated: false,
};

/// The evidence gathered on one track.
#[derive(Clone, Debug)]
pub struct TrackEvidence {
    block_index: usize,
    block: Vec<PValue>,
    boxes: usize,
    surprisal: f64,
    statistic: f64,
    /// The boxes of the prefix whose mean surprisal is the statistic (0 before a block).
    statistic_boxes: usize,
    /// The number of boxes at the first box p-value from a tail.
    first_tail_box: Option<usize>,
    /// The smallest track p-value so far; `extrapolated` says it rests on a tail.
    p_value: PValue,
}

impl Default for TrackEvidence {
    fn default() -> Self {
        TrackEvidence {
            block_index: 0,
            block: Vec::new(),
            boxes: 0,
            surprisal: 0.0,
            statistic: 0.0,
            statistic_boxes: 0,
            first_tail_box: None,
            p_value: NO_EVIDENCE,
        }
    }
}

impl TrackEvidence {
    /// Adds one box's p-value, and whether it came from a tail.
    pub fn push(&mut self, p_value: PValue, rule: &TrackRule) {
        self.boxes += 1;
        if p_value.extrapolated && self.first_tail_box.is_none() {
            self.first_tail_box = Some(self.boxes);
        }
        // A p-value of 0 cannot come from a conformal calibration, only from beyond the end of
        // a bounded tail; the floor keeps the surprisal finite.
        self.surprisal -= p_value.p.max(f64::MIN_POSITIVE).ln();
        let mean = self.surprisal / self.boxes as f64;
        // Strictly larger: on a tie the shorter prefix, which holds fewer boxes, decides.
        if self.boxes >= rule.block && mean > self.statistic {
            self.statistic = mean;
            self.statistic_boxes = self.boxes;
        }
        let p = match &rule.calibration {
            Some(calibration) => {
                let p = calibration.p_value(self.statistic);
                let boxes_on_tail = self
                    .first_tail_box
                    .is_some_and(|b| b <= self.statistic_boxes);
                PValue {
                    extrapolated: p.extrapolated || boxes_on_tail,
                    ..p
                }
            }
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
        if p.p < self.p_value.p || (p.p == self.p_value.p && !p.extrapolated) {
            self.p_value = p;
        }
    }

    /// The largest running mean surprisal over at least a block of boxes (0 before): what a
    /// track calibration ranks.
    pub fn statistic(&self) -> f64 {
        self.statistic
    }

    /// The track's p-value: how plausible its boxes are for an in-distribution object.
    pub fn p_value(&self) -> f64 {
        self.p_value.p
    }

    /// Whether the track's p-value rests on a tail model: on box p-values beyond their
    /// calibration range, or on the track calibration's tail (see the module documentation).
    pub fn rests_on_tail(&self) -> bool {
        self.p_value.extrapolated
    }

    pub fn is_unknown(&self, rule: &TrackRule) -> bool {
        self.p_value.p <= rule.alpha
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A conformal box p-value.
    fn conformal_p(p: f64) -> PValue {
        PValue {
            p,
            extrapolated: false,
        }
    }

    #[test]
    fn one_odd_frame_raises_no_alarm_and_a_persistent_unknown_does() {
        let rule = TrackRule::new(0.05, 1.0, 10.0);
        assert_eq!((rule.block, rule.needed()), (10, 5));
        let mut odd = TrackEvidence::default();
        for i in 0..30 {
            odd.push(conformal_p(if i == 3 { 1e-6 } else { 0.5 }), &rule);
        }
        assert!(!odd.is_unknown(&rule));
        let mut unknown = TrackEvidence::default();
        for i in 0..5 {
            unknown.push(conformal_p(0.001), &rule);
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
                    evidence.push(conformal_p(p), &rule);
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
        evidence.push(conformal_p(1e-6), &rule);
        evidence.push(conformal_p(1e-6), &rule);
        assert_eq!(evidence.statistic(), 0.0, "not before a block of boxes");
        evidence.push(conformal_p(0.5), &rule);
        let three = (2.0 * surprisal(1e-6) + surprisal(0.5)) / 3.0;
        assert!((evidence.statistic() - three).abs() < 1e-12);
        evidence.push(conformal_p(1.0), &rule);
        assert!(
            (evidence.statistic() - three).abs() < 1e-12,
            "it never falls"
        );
    }

    fn tail(p: f64) -> PValue {
        PValue {
            p,
            extrapolated: true,
        }
    }

    /// A block rests on a tail when a tail p-value lies at or below its `p_(r)`; one above it
    /// does not move `p_(r)`.
    #[test]
    fn a_block_rests_on_a_tail_when_a_tail_p_value_is_among_its_smallest() {
        let rule = TrackRule::new(0.05, 1.0, 10.0);
        let conformal = [conformal_p(0.001); 5];
        let above = [&conformal[..], &[tail(0.002)]].concat();
        let p = rule.block_p_value(0, &above);
        assert_eq!(
            (p.p, p.extrapolated),
            (rule.block_p_value(0, &conformal).p, false)
        );
        let among = [&conformal[..4], &[tail(1e-5)]].concat();
        let p = rule.block_p_value(0, &among);
        assert!((p.p - 0.0025).abs() < 1e-12 && p.extrapolated, "{p:?}");
        let mut evidence = TrackEvidence::default();
        for p in &among {
            evidence.push(*p, &rule);
        }
        assert!(evidence.is_unknown(&rule) && evidence.rests_on_tail());
        // The track keeps its smallest p-value's flag; an equal one resting on no tail wins.
        // Blocks of 3 (r = 2): block 0 gives 3·2⁻¹⁰/(2·0.8), block 1 3·2⁻¹³/(2·0.1), equal.
        let rule = TrackRule::new(0.05, 1.0, 3.0);
        let first = [
            tail(2f64.powi(-20)),
            conformal_p(2f64.powi(-10)),
            conformal_p(0.5),
        ];
        let mut evidence = TrackEvidence::default();
        for p in first {
            evidence.push(p, &rule);
        }
        let on_tail = evidence.p_value();
        assert!(evidence.rests_on_tail());
        for p in [
            conformal_p(2f64.powi(-13)),
            conformal_p(2f64.powi(-13)),
            conformal_p(0.5),
        ] {
            evidence.push(p, &rule);
        }
        assert_eq!(evidence.p_value(), on_tail);
        assert!(!evidence.rests_on_tail());
    }

    fn calibration(statistics: Vec<f64>) -> TrackCalibration {
        let setting = crate::video::calibration::TrackSetting {
            model: String::new(),
            scorer: String::new(),
            imgsz: crate::core::settings::InputSize::square(256),
            conf: 0.25,
            fps: 3.0,
            block: 3,
        };
        TrackCalibration::fit(setting, "test", statistics).unwrap()
    }

    /// With a track calibration, the statistic rests on a tail when its prefix holds a tail
    /// p-value, or when it lies beyond the calibration's statistics and their tail gives its
    /// p-value.
    #[test]
    fn a_calibrated_track_rests_on_a_tail_through_its_statistic_or_the_track_tail() {
        let base_rule = TrackRule::new(0.05, 1.0, 3.0);
        let rule = |calibration| TrackRule {
            calibration: Some(Arc::new(calibration)),
            ..base_rule.clone()
        };
        let conformal = rule(calibration((0..400).map(|i| i as f64 / 40.0).collect()));
        let run = |p_values: &[PValue], rule: &TrackRule| {
            let mut evidence = TrackEvidence::default();
            for p in p_values {
                evidence.push(*p, rule);
            }
            evidence
        };
        let early = [tail(1e-6), conformal_p(1e-3), conformal_p(1e-3)];
        assert!(run(&early, &conformal).rests_on_tail());
        // A tail p-value after the prefix of the largest mean (its surprisal lowers the mean).
        let late = [
            conformal_p(1e-3),
            conformal_p(1e-3),
            conformal_p(1e-3),
            tail(0.5),
        ];
        let evidence = run(&late, &conformal);
        assert_eq!(evidence.statistic(), -(1e-3f64).ln());
        assert!(!evidence.rests_on_tail());
        // The same statistic beyond a calibration with a fitted tail rests on it.
        let statistics = (0..400).map(|i| i as f64 / 400.0).collect();
        let tailed = calibration(statistics)
            .with_tail(crate::ood::tail::TailOptions::default())
            .unwrap();
        assert!(tailed.gpd().is_some());
        let evidence = run(&late, &rule(tailed));
        assert!(evidence.rests_on_tail() && evidence.p_value() < 1.0 / 401.0);
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
                evidence.push(
                    conformal_p(if run.contains(&i) { 0.05 * p } else { p }),
                    rule,
                );
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
