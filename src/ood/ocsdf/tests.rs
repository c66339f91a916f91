//! OCSDF: every stored layer is 1-Lipschitz, so is the network, fits are deterministic and the
//! scorer file round-trips. Tiny models and data: each test trains in well under a second.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::lipschitz::{spectral_norm, Matrix};
use super::*;
use crate::ood::fitted::{FitOptions, FittedScorer};

const D: usize = 8;

/// Three Gaussian classes in 8-d, 60 boxes each, on one level.
fn boxes(seed: u64) -> BoxSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut set = crate::data::boxset::BoxParts {
        feature_dim: D,
        num_classes: 3,
        ..Default::default()
    };
    for i in 0..180 {
        let c = i % 3;
        set.features
            .extend((0..D).map(|j| (if j % 3 == c { 2.0 } else { 0.0 }) + rng.random::<f32>()));
        set.logits.extend([0.0f32; 3]);
        set.class_id.push(c);
    }
    BoxSet::new(set).unwrap()
}

fn small(extra: &[(&str, &str)]) -> Ocsdf {
    let mut pairs = vec![("width", "16"), ("depth", "2"), ("epochs", "3")];
    pairs.extend_from_slice(extra);
    let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    let given = crate::ood::params::Given::from_text("ocsdf", &pairs, &infos::<OcsdfParams>()).unwrap();
    Ocsdf::with_params(given.typed().unwrap())
}

fn fitted(extra: &[(&str, &str)]) -> Ocsdf {
    let mut s = small(extra);
    s.fit(&boxes(1)).unwrap();
    s
}

const VARIANTS: [&[(&str, &str)]; 4] = [
    &[],
    &[("activation", "groupsort2")],
    &[("normalisation", "column_norm")],
    &[("per_class", "false")],
];

#[test]
fn every_stored_layer_has_spectral_norm_at_most_one() {
    for extra in VARIANTS {
        let state = fitted(extra).to_state();
        let mut layers = 0;
        for (name, shape, data) in &state.tensors {
            if name.ends_with(".weight") && shape.len() == 2 {
                let w = Matrix { rows: shape[0], cols: shape[1], data: data.clone() };
                let start: Vec<f64> = (0..w.cols).map(|j| 1.0 + 0.1 * j as f64).collect();
                let sigma = spectral_norm(&w, &start, 500);
                assert!(sigma <= 1.0 + 1e-3, "{extra:?} {name}: spectral norm {sigma}");
                layers += 1;
            } else if name.ends_with("out.weight") {
                let n = data.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!((n - 1.0).abs() < 1e-9, "{extra:?} {name}: norm {n}");
            }
        }
        // 2 hidden layers per network: 3 class networks, or 1 shared one.
        assert!(layers == 6 || layers == 2, "{extra:?}: {layers} layers");
    }
}

#[test]
fn the_network_is_1_lipschitz_on_random_pairs() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for extra in VARIANTS {
        let s = fitted(extra);
        for net in s.nets() {
            let input = net.hidden[0].0.cols;
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..1000 {
                let scale = 10f64.powf(rng.random_range(-3.0..1.0));
                for _ in 0..input {
                    let x = rng.random_range(-4.0..4.0);
                    a.push(x);
                    b.push(x + scale * rng.random_range(-1.0..1.0));
                }
            }
            let (fa, fb) = (net.forward(&a, 1000), net.forward(&b, 1000));
            for i in 0..1000 {
                let dist = a[i * input..(i + 1) * input]
                    .iter()
                    .zip(&b[i * input..(i + 1) * input])
                    .map(|(x, y)| (x - y).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let df = (fa[i] - fb[i]).abs();
                assert!(df <= dist * (1.0 + 1e-4), "{extra:?} pair {i}: |Δf| {df} > ‖Δx‖ {dist}");
            }
        }
    }
}

/// Inside the negatives' domain (every feature at 1.5: between the classes, inside the fit
/// data's bounding box). Far outside the domain no negative is ever drawn, and the network is not
/// trained there (docs/scorers.md says so).
#[test]
fn the_score_is_certified_in_standardised_units_and_ranks_an_outlier_highest() {
    let s = fitted(&[]);
    let test = boxes(2);
    let scores = s.score(&test).unwrap();
    let between = test
        .clone()
        .edit(|b| b.features.iter_mut().for_each(|v| *v = 1.5))
        .unwrap();
    let between_scores = s.score(&between).unwrap();
    let max_id = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(between_scores.iter().all(|&f| f > max_id), "{max_id} {between_scores:?}");
    // The score moves by at most the standardised distance ‖Δf / std‖.
    let std = &s.groups.groups().unwrap()[0].std;
    for (i, (a, b)) in scores.iter().zip(&between_scores).enumerate() {
        let bound = test.feature(i)
            .iter()
            .zip(std)
            .map(|(&v, s)| ((v as f64 - 1.5) / s).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!((a - b).abs() <= bound * (1.0 + 1e-9), "box {i}: {a} {b} {bound}");
    }
}

#[test]
fn the_same_boxes_and_seed_give_a_byte_identical_file_and_another_seed_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let (fit, calibration) = (boxes(1), boxes(2));
    let params = |seed: &str| -> Vec<(String, String)> {
        [("width", "16"), ("depth", "2"), ("epochs", "3"), ("seed", seed)]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    let file = |seed: &str, name: &str| {
        let s = FittedScorer::fit("ocsdf", None, &params(seed), &fit, &calibration, &FitOptions::default()).unwrap();
        let path = dir.path().join(name);
        s.save(&path).unwrap();
        std::fs::read(path).unwrap()
    };
    let (a, b, c) = (file("3", "a"), file("3", "b"), file("4", "c"));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn states_round_trip_to_the_same_scores() {
    let test = boxes(3);
    for extra in VARIANTS {
        let s = fitted(extra);
        let state = s.to_state();
        let again = crate::ood::from_state(&state).unwrap();
        assert_eq!(again.to_state(), state, "{extra:?}");
        assert_eq!(again.score(&test).unwrap(), s.score(&test).unwrap(), "{extra:?}");
    }
}
