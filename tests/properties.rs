//! Property tests (proptest) of the invariants the metrics, NMS, letterbox geometry, conformal
//! calibration and the video tracker promise, each checked on many generated inputs against a brute-force or exact
//! statement of the property.

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use oodbox::core::geometry::iou;
use oodbox::detect::letterbox::{letterbox, LetterboxGeometry};
use oodbox::detect::nms::{non_max_suppression, Candidate};
use oodbox::eval::metrics::{fpr_at_tpr, ood_metrics, roc_curve};
use oodbox::ood::calibration::{conformal_p_value, Calibrator};

/// Scores on a small integer grid, so that ties are common.
fn grid_scores() -> impl Strategy<Value = Vec<i32>> {
    prop::collection::vec(-20i32..20, 1..60)
}

fn as_f64(v: &[i32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

/// P(OOD score > ID score) + ½ P(tie), counted over every pair.
fn mann_whitney(id: &[f64], ood: &[f64]) -> f64 {
    let mut wins = 0.0;
    for i in id {
        for o in ood {
            wins += if o > i {
                1.0
            } else if o == i {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (id.len() * ood.len()) as f64
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every metric is a function of the ranks only: any strictly increasing map of the scores
    /// leaves it unchanged, and a decreasing one turns AUROC into 1 − AUROC.
    #[test]
    fn auroc_is_invariant_under_monotone_maps(
        id in grid_scores(),
        ood in grid_scores(),
        steps in prop::collection::vec(1e-3f64..10.0, 40),
        offset in -1e3f64..1e3,
    ) {
        // A strictly increasing map of the grid: a cumulative sum of positive steps.
        let level: Vec<f64> = steps
            .iter()
            .scan(offset, |at, s| {
                *at += s;
                Some(*at)
            })
            .collect();
        let map = |v: &[i32]| -> Vec<f64> { v.iter().map(|&x| level[(x + 20) as usize]).collect() };
        let (id_raw, ood_raw) = (as_f64(&id), as_f64(&ood));
        let base = ood_metrics(&id_raw, &ood_raw).unwrap();
        prop_assert!((base.auroc - mann_whitney(&id_raw, &ood_raw)).abs() < 1e-12);

        let mapped = ood_metrics(&map(&id), &map(&ood)).unwrap();
        let exp = |v: &[f64]| -> Vec<f64> { v.iter().map(|x| (x / 4.0).exp()).collect() };
        let exped = ood_metrics(&exp(&id_raw), &exp(&ood_raw)).unwrap();
        for other in [&mapped, &exped] {
            prop_assert!((other.auroc - base.auroc).abs() < 1e-12);
            prop_assert!((other.fpr95 - base.fpr95).abs() < 1e-12);
            prop_assert!((other.aupr_in - base.aupr_in).abs() < 1e-12);
            prop_assert!((other.aupr_out - base.aupr_out).abs() < 1e-12);
        }
        let negate = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|x| -x).collect() };
        let flipped = ood_metrics(&negate(map(&id)), &negate(map(&ood))).unwrap();
        prop_assert!((flipped.auroc - (1.0 - base.auroc)).abs() < 1e-12);
    }

    /// FPR at a TPR level is a rate, never decreases as the level rises, and its conservative
    /// form is the FPR of the first score threshold accepting that share of ID boxes.
    #[test]
    fn fpr_at_tpr_is_a_rate_and_monotone(
        id in grid_scores(),
        ood in grid_scores(),
        q1 in 0.0f64..=1.0,
        q2 in 0.0f64..=1.0,
    ) {
        let (id, ood) = (as_f64(&id), as_f64(&ood));
        let roc = roc_curve(&id, &ood);
        prop_assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        prop_assert_eq!(roc.last(), Some(&(1.0, 1.0)));
        // Raising the threshold admits more of both sets: the ROC never goes back.
        for w in roc.windows(2) {
            prop_assert!(w[0].0 <= w[1].0 && w[0].1 <= w[1].1);
        }
        let (lo, hi) = (q1.min(q2), q1.max(q2));
        let (lo_i, lo_c) = fpr_at_tpr(&roc, lo).unwrap();
        let (hi_i, hi_c) = fpr_at_tpr(&roc, hi).unwrap();
        for v in [lo_i, lo_c, hi_i, hi_c] {
            prop_assert!((0.0..=1.0).contains(&v), "{v} is not a rate");
        }
        prop_assert!(lo_i <= hi_i + 1e-12 && lo_c <= hi_c);
        prop_assert!(lo_i <= lo_c + 1e-12 && hi_i <= hi_c + 1e-12);

        let m = ood_metrics(&id, &ood).unwrap();
        prop_assert!((0.0..=1.0).contains(&m.fpr95) && m.fpr95 <= m.fpr95_conservative + 1e-12);
        // Brute force: the lowest threshold accepting (score ≤ t) 95% of ID boxes.
        let share = |v: &[f64], t: f64| v.iter().filter(|&&s| s <= t).count() as f64 / v.len() as f64;
        let mut thresholds: Vec<f64> = id.iter().chain(&ood).copied().collect();
        thresholds.sort_by(f64::total_cmp);
        let t = thresholds.into_iter().find(|&t| share(&id, t) >= 0.95).unwrap();
        prop_assert_eq!(m.fpr95_conservative, share(&ood, t));
    }
}

fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
    let one = (0u8..100, 0u8..100, 1u8..60, 1u8..60, 0u8..10, 0usize..3);
    prop::collection::vec(one, 0..40).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(source, (x, y, w, h, c, class_id))| {
                let (x, y) = (f32::from(x), f32::from(y));
                Candidate {
                    bbox: [x, y, x + f32::from(w), y + f32::from(h)],
                    confidence: f32::from(c) / 10.0,
                    class_id,
                    source,
                }
            })
            .collect()
    })
}

fn sources(boxes: &[Candidate]) -> Vec<usize> {
    boxes.iter().map(|c| c.source).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// NMS keeps no two boxes (of one class, or any two when agnostic) overlapping above the
    /// threshold, drops only boxes such a kept box suppresses, and changes nothing when run on
    /// its own output.
    #[test]
    fn nms_is_idempotent_and_keeps_no_overlap(
        boxes in candidates(),
        threshold in 0.05f32..0.95,
        agnostic in any::<bool>(),
    ) {
        let n = boxes.len();
        let rivals = |a: &Candidate, b: &Candidate| agnostic || a.class_id == b.class_id;
        let kept = non_max_suppression(boxes.clone(), threshold, agnostic, n, n);
        for (i, a) in kept.iter().enumerate() {
            for b in &kept[i + 1..] {
                prop_assert!(a.confidence >= b.confidence);
                prop_assert!(!(rivals(a, b) && iou(&a.bbox, &b.bbox) > threshold));
            }
        }
        let kept_sources = sources(&kept);
        for dropped in boxes.iter().filter(|c| !kept_sources.contains(&c.source)) {
            let suppressor = kept.iter().find(|k| {
                rivals(k, dropped)
                    && k.confidence >= dropped.confidence
                    && iou(&k.bbox, &dropped.bbox) > threshold
            });
            prop_assert!(suppressor.is_some(), "box {} was dropped for nothing", dropped.source);
        }
        let again = non_max_suppression(kept.clone(), threshold, agnostic, n, n);
        prop_assert_eq!(sources(&again), kept_sources);
    }

    /// A box mapped into the letterboxed input (scale, then pad) maps back to itself, and the
    /// padded input is the target size (or, with `rect`, the resized image padded to less than
    /// a stride).
    #[test]
    fn letterbox_round_trips_boxes(
        original in (1u32..4000, 1u32..4000),
        target in (32u32..1280, 32u32..1280),
        rect in any::<bool>(),
        corners in (0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0, 0.0f32..1.0),
    ) {
        let g = LetterboxGeometry::new(original, target, 32, rect);
        prop_assert!(g.resized.0 <= target.0 && g.resized.1 <= target.1);
        prop_assert!(g.left + g.resized.0 <= g.input.0 && g.top + g.resized.1 <= g.input.1);
        if rect {
            prop_assert!(g.input.0 - g.resized.0 < 32 && g.input.1 - g.resized.1 < 32);
        } else {
            prop_assert_eq!(g.input, target);
        }
        let (w, h) = (original.0 as f32, original.1 as f32);
        let b = [
            corners.0.min(corners.2) * w,
            corners.1.min(corners.3) * h,
            corners.0.max(corners.2) * w,
            corners.1.max(corners.3) * h,
        ];
        let (gx, gy) = (g.resized.0 as f32 / w, g.resized.1 as f32 / h);
        let (px, py) = (g.left as f32, g.top as f32);
        let there = [b[0] * gx + px, b[1] * gy + py, b[2] * gx + px, b[3] * gy + py];
        let back = g.to_original(there);
        for (a, r) in back.iter().zip(&b) {
            prop_assert!((a - r).abs() <= 1e-6 * w.max(h) + 1e-3, "{b:?} came back as {back:?}");
        }
    }

    /// The letterboxed image has the geometry's size, its padding is grey 114, and a flat image
    /// stays flat where it lands.
    #[test]
    fn letterbox_places_the_image_inside_the_padding(
        original in (1u32..48, 1u32..48),
        target in (8u32..64, 8u32..64),
        rect in any::<bool>(),
        colour in any::<[u8; 3]>(),
    ) {
        let g = LetterboxGeometry::new(original, target, 8, rect);
        let image = image::RgbImage::from_pixel(original.0, original.1, image::Rgb(colour));
        let out = letterbox(&image, &g);
        prop_assert_eq!(out.dimensions(), g.input);
        for (x, y, p) in out.enumerate_pixels() {
            let inside = (g.left..g.left + g.resized.0).contains(&x)
                && (g.top..g.top + g.resized.1).contains(&y);
            prop_assert_eq!(p.0, if inside { colour } else { [114; 3] }, "at ({}, {})", x, y);
        }
    }
}

/// Scores with many ties, or continuous ones.
fn exchangeable_sample() -> impl Strategy<Value = Vec<f64>> {
    prop_oneof![
        prop::collection::vec((0i32..6).prop_map(f64::from), 2..80),
        prop::collection::vec(-1e3f64..1e3, 2..80),
    ]
}

/// The share of a sample whose leave-one-out p-value is at most `t`: given the multiset of an
/// exchangeable sample, the test point is each of its members with equal probability, so this
/// is exactly P(p ≤ t | the multiset), and validity requires it to be ≤ t for every multiset.
fn held_out_share(n: usize, t: f64, p_of: impl Fn(usize) -> f64) -> f64 {
    (0..n).filter(|&j| p_of(j) <= t).count() as f64 / n as f64
}

fn without(v: &[f64], j: usize) -> Vec<f64> {
    let mut rest: Vec<f64> = v
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != j)
        .map(|(_, s)| *s)
        .collect();
    rest.sort_by(f64::total_cmp);
    rest
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Conformal p-values are valid conditionally on the sample: P(p ≤ t) ≤ t exactly, ties
    /// included, and equal to ⌊t(n+1)⌋/(n+1) when there are no ties.
    #[test]
    fn conformal_p_values_are_valid_on_every_sample(sample in exchangeable_sample(), t in 0.0f64..1.0) {
        let n = sample.len();
        let share = held_out_share(n, t, |j| conformal_p_value(&without(&sample, j), sample[j]));
        prop_assert!(share <= t + 1e-12, "P(p <= {t}) = {share}");
        let mut distinct = sample.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        if distinct.len() == n {
            prop_assert_eq!(share, (t * n as f64).floor() / n as f64);
        }
    }

    /// The same through the calibrator, per class (Mondrian, every class calibrated on its own
    /// boxes) and pooled (every class below `min_class_boxes`).
    #[test]
    fn calibrated_p_values_are_valid_per_class_and_pooled(
        sample in prop::collection::vec(((0i32..6).prop_map(f64::from), 0usize..3), 2..60),
        t in 0.0f64..1.0,
    ) {
        let scores: Vec<f64> = sample.iter().map(|s| s.0).collect();
        let classes: Vec<usize> = sample.iter().map(|s| s.1).collect();
        let p = |j: usize, min_class_boxes: usize| {
            let keep = |i: &usize| *i != j;
            let s: Vec<f64> = (0..scores.len()).filter(keep).map(|i| scores[i]).collect();
            let c: Vec<usize> = (0..scores.len()).filter(keep).map(|i| classes[i]).collect();
            Calibrator::fit(&s, &c, 3, min_class_boxes).unwrap().p_value(scores[j], classes[j])
        };
        let pooled = held_out_share(scores.len(), t, |j| p(j, usize::MAX));
        prop_assert!(pooled <= t + 1e-12, "pooled: P(p <= {t}) = {pooled}");
        for class in 0..3 {
            let members: Vec<usize> = (0..scores.len()).filter(|&i| classes[i] == class).collect();
            // With min_class_boxes 1, a class with another box is calibrated on its own boxes.
            if members.len() >= 2 {
                let share = held_out_share(members.len(), t, |k| p(members[k], 1));
                prop_assert!(share <= t + 1e-12, "class {class}: P(p <= {t}) = {share}");
            }
        }
    }
}

/// The deviation of a binomial frequency from its mean that is exceeded with probability at
/// most `delta` (two-sided Bernstein bound, with the variance bounded by `variance`).
fn bernstein(trials: usize, variance: f64, delta: f64) -> f64 {
    let l = (2.0 / delta).ln();
    let m = trials as f64;
    (2.0 * l / 3.0 + ((2.0 * l / 3.0).powi(2) + 8.0 * m * l * variance).sqrt()) / (2.0 * m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// Fresh calibration and test draws, iid (so exchangeable) from a continuous law: the
    /// frequency of p ≤ t is within a Bernstein bound (false-alarm probability 1e-9 per case)
    /// of its exact value ⌊t(n+1)⌋/(n+1), which is ≤ t.
    #[test]
    fn p_values_of_fresh_draws_are_valid(
        n in 5usize..40,
        t in 0.02f64..0.5,
        seed in any::<u64>(),
    ) {
        let trials = 20_000;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut hits = 0usize;
        for _ in 0..trials {
            let scores: Vec<f64> = (0..n).map(|_| rng.random::<f64>().powi(3)).collect();
            let calibrator = Calibrator::fit(&scores, &vec![0; n], 1, 1).unwrap();
            if calibrator.p_value(rng.random::<f64>().powi(3), 0) <= t {
                hits += 1;
            }
        }
        let exact = (t * (n + 1) as f64).floor() / (n + 1) as f64;
        prop_assert!(exact <= t);
        let frequency = hits as f64 / trials as f64;
        let tolerance = bernstein(trials, t * (1.0 - t), 1e-9);
        prop_assert!(
            (frequency - exact).abs() <= tolerance,
            "P(p <= {t}) ≈ {frequency}, exactly {exact} ± {tolerance}"
        );
    }
}

/// One frame of boxes in a 256² view, some reaching past its edges (as clipped boxes of objects
/// walking out do not, but a tracker must take any box).
fn frames() -> impl Strategy<Value = Vec<(u8, Vec<[f32; 4]>)>> {
    let bbox = (-40f32..280.0, -40f32..280.0, 2f32..120.0, 2f32..120.0)
        .prop_map(|(x, y, w, h)| [x, y, x + w, y + h]);
    // (frames skipped before this one, its boxes)
    prop::collection::vec((0u8..4, prop::collection::vec(bbox, 0..6)), 1..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The tracker's bookkeeping: in each frame every box gets a track and no two boxes share
    /// one; every track it started ends exactly once (by `update` or `finish`), after its last
    /// box and never before; an ended track gets no more boxes.
    #[test]
    fn every_track_is_one_object_at_a_time_and_ends_once(frames in frames()) {
        use oodbox::video::tracker::{Tracker, TrackerConfig};
        use std::collections::HashMap;
        let mut tracker = Tracker::new(TrackerConfig::default());
        let (mut frame, mut last_box) = (0u64, HashMap::new());
        let mut ended = HashMap::new();
        for (skip, boxes) in &frames {
            frame += u64::from(*skip);
            let (ids, gone) = tracker.update(frame, [256.0, 256.0], boxes);
            prop_assert_eq!(ids.len(), boxes.len());
            let mut seen = ids.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), ids.len(), "two boxes on one track in frame {}", frame);
            for id in &ids {
                prop_assert!(!ended.contains_key(id), "track {} continued after it ended", id);
                last_box.insert(*id, frame);
            }
            for t in gone {
                prop_assert_eq!(Some(&t.last_frame), last_box.get(&t.id));
                prop_assert!(t.first_frame <= t.last_frame);
                prop_assert!(ended.insert(t.id, t.last_frame).is_none(), "track {} ended twice", t.id);
            }
            frame += 1;
        }
        for t in tracker.finish() {
            prop_assert_eq!(Some(&t.last_frame), last_box.get(&t.id));
            prop_assert!(ended.insert(t.id, t.last_frame).is_none(), "track {} ended twice", t.id);
        }
        prop_assert_eq!(ended.len() as u64, tracker.started());
    }
}
