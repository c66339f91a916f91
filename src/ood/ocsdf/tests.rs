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

/// Boxes just beside the ID classes of [`boxes`]: predicted as class c, the dimensions of class
/// `c + 1` raised from [0, 1) to [1, 2).
fn beside(seed: u64) -> BoxSet {
    boxes(seed)
        .edit(|b| {
            for (i, row) in b.features.chunks_exact_mut(D).enumerate() {
                let next = (i % 3 + 1) % 3;
                row.iter_mut().enumerate().filter(|(j, _)| j % 3 == next).for_each(|(_, v)| *v += 1.0);
            }
        })
        .unwrap()
}

fn auroc(id: &[f64], ood: &[f64]) -> f64 {
    crate::eval::metrics::ood_metrics(id, ood).unwrap().auroc
}

#[test]
fn exposure_trains_against_the_given_outliers_and_keeps_the_network_1_lipschitz() {
    let (fit, id, outliers, fresh) = (boxes(1), boxes(2), beside(4), beside(5));
    for per_class in ["true", "false"] {
        let mut plain = small(&[("per_class", per_class)]);
        plain.params.epochs = 30;
        plain.fit(&fit).unwrap();
        let mut exposed = small(&[("per_class", per_class), ("exposure", "true")]);
        exposed.params.epochs = 30;
        exposed.fit_with_outliers(&fit, &outliers).unwrap();
        let before = auroc(&plain.score(&id).unwrap(), &plain.score(&fresh).unwrap());
        let after = auroc(&exposed.score(&id).unwrap(), &exposed.score(&fresh).unwrap());
        assert!(after > before && after > 0.99, "per_class={per_class}: AUROC {before} → {after}");
        for net in exposed.nets() {
            for (w, _) in &net.hidden {
                let start: Vec<f64> = (0..w.cols).map(|j| 1.0 + 0.1 * j as f64).collect();
                assert!(spectral_norm(w, &start, 500) <= 1.0 + 1e-3);
            }
        }
    }
}

#[test]
fn exposure_needs_outliers_and_outliers_need_exposure() {
    let message = |e: crate::error::Error| e.to_string();
    let e = message(small(&[("exposure", "true")]).fit(&boxes(1)).unwrap_err());
    assert!(e.contains("exposure=true") && e.contains("--outliers"), "{e}");
    let e = message(small(&[]).fit_with_outliers(&boxes(1), &beside(4)).unwrap_err());
    assert!(e.contains("exposure=true"), "{e}");
    assert!(small(&[("exposure", "true")]).takes_outliers() && !small(&[]).takes_outliers());
}

#[test]
fn an_exposed_fit_is_deterministic() {
    let (fit, outliers) = (boxes(1), beside(4));
    let state = |seed: &str| {
        let mut s = small(&[("exposure", "true"), ("seed", seed)]);
        s.fit_with_outliers(&fit, &outliers).unwrap();
        s.to_state()
    };
    assert_eq!(state("3").tensors, state("3").tensors);
    assert_ne!(state("3").tensors, state("4").tensors);
}

#[test]
fn an_exposed_scorer_file_records_its_outliers_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let outliers = beside(4).edit(|b| b.source = "beside the classes".into()).unwrap();
    let params: Vec<(String, String)> = [("width", "16"), ("depth", "2"), ("epochs", "3"), ("exposure", "true")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let options = FitOptions {
        outliers: Some(outliers),
        ..FitOptions::default()
    };
    let fitted = FittedScorer::fit("ocsdf", None, &params, &boxes(1), &boxes(2), &options).unwrap();
    let path = dir.path().join("exposed.safetensors");
    fitted.save(&path).unwrap();
    let loaded = FittedScorer::load(&path).unwrap();
    assert_eq!(loaded.outliers_source(), Some("beside the classes"));
    let test = beside(5);
    assert_eq!(loaded.raw_scores(&test).unwrap(), fitted.raw_scores(&test).unwrap());
}
