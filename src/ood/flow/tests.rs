//! The flow's own tests: its log-determinant, the plain scoring forward against Candle's, its
//! likelihood on Gaussian data, a deterministic scorer file. The table's contract tests
//! (src/ood/tests.rs) cover the rest.

use crate::ood::common::standard_normal;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::net::{fit, Model, Net, Training, HALF_LN_2PI};
use super::plain::Forward;
use super::{standardisation, standardise, Group};
use crate::data::boxset::BoxSet;
use crate::ood::fitted::{FitOptions, FittedScorer};

/// log |det m| of a square row-major matrix, by Gaussian elimination with partial pivoting.
fn log_abs_det(mut m: Vec<f64>, d: usize) -> f64 {
    let mut log = 0.0;
    for c in 0..d {
        let p = (c..d)
            .max_by(|&a, &b| m[a * d + c].abs().total_cmp(&m[b * d + c].abs()))
            .unwrap();
        for j in 0..d {
            m.swap(c * d + j, p * d + j);
        }
        let pivot = m[c * d + c];
        log += pivot.abs().ln();
        for r in c + 1..d {
            let f = m[r * d + c] / pivot;
            for j in c..d {
                m[r * d + j] -= f * m[c * d + j];
            }
        }
    }
    log
}

/// `(z, log|det ∂z/∂x|)` of rows `x` by the scoring forward.
fn transform(model: &Model, x: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut z = x.to_vec();
    let logdet = Forward::new(model).transform(&mut z);
    (z, logdet)
}

#[test]
fn log_determinant_equals_a_finite_difference_jacobians() {
    let (d, h) = (4, 1e-5);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut model = Model::new(d, 8, 3, 1, &mut rng);
    // Untrained couplings are the identity: give every tensor random values instead.
    for w in model.weights.iter_mut().flatten().flatten() {
        *w = 0.7 * standard_normal(&mut rng);
    }
    let mut spread = Vec::new();
    for _ in 0..5 {
        let x: Vec<f64> = (0..d).map(|_| standard_normal(&mut rng)).collect();
        let (_, logdet) = transform(&model, &x);
        let mut jac = vec![0.0; d * d];
        for j in 0..d {
            let (mut hi, mut lo) = (x.clone(), x.clone());
            hi[j] += h;
            lo[j] -= h;
            let (zh, _) = transform(&model, &hi);
            let (zl, _) = transform(&model, &lo);
            for i in 0..d {
                jac[i * d + j] = (zh[i] - zl[i]) / (2.0 * h);
            }
        }
        let fd = log_abs_det(jac, d);
        assert!(
            (fd - logdet[0]).abs() < 1e-4,
            "log det {} against finite differences {fd}",
            logdet[0]
        );
        spread.push(logdet[0]);
    }
    // The model is far from volume-preserving, so the comparison is not trivially 0 = 0.
    assert!(spread.iter().any(|v| v.abs() > 0.5), "{spread:?}");
}

#[test]
fn the_plain_forward_gives_the_nll_of_candles_forward() {
    let (d, n) = (8, 400);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let raw: Vec<f64> = (0..n * d)
        .map(|i| 2.0 * standard_normal(&mut rng) + (i % d) as f64)
        .collect();
    let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
    let (shift, scale) = standardisation(&raw, d);
    let cfg = Training {
        blocks: 3,
        hidden: 16,
        epochs: 3,
        lr: 0.01,
        batch: 64,
    };
    let x = standardise(&raw, &shift, &scale);
    let model = fit(&x, d, &labels, 2, &cfg, &mut rng).unwrap();
    // Trained couplings: no last layer is still its zero init.
    assert!(model.weights.iter().all(|w| w[6].iter().any(|&v| v != 0.0)));
    let group = Group {
        shift,
        scale,
        classes: vec![3, 5],
        forward: Forward::new(&model),
        model,
    };
    // Rows near the fit data and far from it (where the log-scales' tanh saturates).
    let rows = 60;
    let x: Vec<f64> = (0..rows * d)
        .map(|i| [0.5, 3.0, 30.0][i / d % 3] * standard_normal(&mut rng))
        .collect();
    let classes: Vec<usize> = (0..rows).map(|_| rng.random_range(0..2)).collect();
    let predicted: Vec<i64> = classes.iter().map(|&k| group.classes[k]).collect();
    let plain = group.nll(&x, &predicted);
    // The loops compiled for AVX-512 (where the CPU has it) give the very same values.
    let mut z = standardise(&x, &group.shift, &group.scale);
    let mut portable = z.clone();
    let logdet = group.forward.transform(&mut z);
    assert_eq!(group.forward.transform_portable(&mut portable), logdet);
    assert_eq!(portable, z);
    let net = Net::new(&group.model, DType::F64).unwrap();
    let log_scale: f64 = group.scale.iter().map(|s| s.ln()).sum();
    for ((row, &k), plain) in x.chunks_exact(d).zip(&classes).zip(plain) {
        let row = standardise(row, &group.shift, &group.scale);
        let row = Tensor::from_vec(row, (1, d), &Device::Cpu).unwrap();
        let label = Tensor::new(&[k as u32], &Device::Cpu).unwrap();
        // The training loss: the mean NLL per coordinate of standardised rows.
        let loss: f64 = net.loss(&row, &label).unwrap().to_scalar().unwrap();
        let candle = loss * d as f64 + log_scale;
        assert!(
            ((plain - candle) / candle).abs() < 1e-9,
            "plain {plain}, Candle {candle}"
        );
    }
}

/// `n` boxes of one class, `x = m + A ε` in `d` dimensions.
fn gaussian_boxes(n: usize, mean: &[f64], a: &[f64], rng: &mut ChaCha8Rng) -> BoxSet {
    let d = mean.len();
    let mut features = Vec::with_capacity(n * d);
    for _ in 0..n {
        let e: Vec<f64> = (0..d).map(|_| standard_normal(rng)).collect();
        for i in 0..d {
            let v = mean[i] + (0..d).map(|j| a[i * d + j] * e[j]).sum::<f64>();
            features.push(v as f32);
        }
    }
    BoxSet::new(crate::data::boxset::BoxParts {
        features,
        feature_dim: d,
        logits: vec![0.0; n],
        num_classes: 1,
        class_id: vec![0; n],
        ..Default::default()
    })
    .unwrap()
}

/// A random lower-triangular `A` with strong off-diagonal terms (so `Σ = A Aᵀ` is far from
/// diagonal) and a random mean.
fn random_gaussian(d: usize, rng: &mut ChaCha8Rng) -> (Vec<f64>, Vec<f64>) {
    let mean = (0..d).map(|_| 3.0 * standard_normal(rng)).collect();
    let mut a = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..i {
            a[i * d + j] = standard_normal(rng);
        }
        a[i * d + i] = rng.random_range(0.5..1.5);
    }
    (mean, a)
}

/// The exact NLL of `x` under `N(m, A Aᵀ)`, A lower triangular (forward substitution).
fn gaussian_nll(x: &[f32], mean: &[f64], a: &[f64]) -> f64 {
    let d = mean.len();
    let mut e = vec![0.0; d];
    for i in 0..d {
        let r = x[i] as f64 - mean[i] - (0..i).map(|j| a[i * d + j] * e[j]).sum::<f64>();
        e[i] = r / a[i * d + i];
    }
    let log_det: f64 = (0..d).map(|i| a[i * d + i].ln()).sum();
    0.5 * e.iter().map(|v| v * v).sum::<f64>() + log_det + d as f64 * HALF_LN_2PI
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn a_flow_fitted_to_a_gaussian_reaches_its_nll_on_fresh_samples() {
    let d = 6;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (m, a) = random_gaussian(d, &mut rng);
    let fit = gaussian_boxes(4000, &m, &a, &mut rng);
    let fresh = gaussian_boxes(4000, &m, &a, &mut rng);
    let truth: Vec<f64> = (0..fresh.len())
        .map(|i| gaussian_nll(fresh.feature(i), &m, &a))
        .collect();
    let truth = mean(&truth);
    // Blocks with no training are the standardisation alone: a diagonal Gaussian, which misses
    // the correlations by far more than the tolerance.
    let p = params(&[("blocks", "4"), ("hidden", "32"), ("epochs", "40")]);
    let untrained = params(&[("blocks", "1"), ("epochs", "1"), ("lr", "1e-12")]);
    let fitted_nll = |p: &[(String, String)]| {
        let mut s = crate::ood::build("flow", None, p).unwrap();
        s.fit(&fit).unwrap();
        mean(&s.score(&fresh).unwrap())
    };
    let diagonal = fitted_nll(&untrained);
    assert!(
        (diagonal - truth) / truth.abs() > 0.1,
        "diagonal {diagonal}, truth {truth}"
    );
    let flow = fitted_nll(&p);
    assert!(
        ((flow - truth) / truth.abs()).abs() < 0.02,
        "flow {flow}, truth {truth}"
    );
}

#[test]
fn the_fit_is_deterministic_and_the_scorer_file_round_trips() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (m, a) = random_gaussian(8, &mut rng);
    // Two classes, the second shifted.
    let fit = gaussian_boxes(600, &m, &a, &mut rng)
        .edit(|fit| {
            fit.num_classes = 2;
            fit.logits = vec![0.0; fit.class_id.len() * 2];
            for i in (0..fit.class_id.len()).step_by(2) {
                fit.class_id[i] = 1;
                fit.features[i * 8] += 4.0;
            }
        })
        .unwrap();
    let calibration = gaussian_boxes(100, &m, &a, &mut rng);
    let calibration = calibration
        .edit(|c| {
            c.num_classes = 2;
            c.logits = vec![0.0; 200];
            c.class_id[0] = 1;
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let save = |seed: &str, name: &str| {
        let p = params(&[("epochs", "3"), ("hidden", "16"), ("seed", seed)]);
        let s = FittedScorer::fit("flow", None, &p, &fit, &calibration, &FitOptions::default())
            .unwrap();
        let path = dir.path().join(name);
        s.save(&path).unwrap();
        (s, std::fs::read(&path).unwrap(), path)
    };
    let (first, bytes, path) = save("1", "a.safetensors");
    let (_, again, _) = save("1", "b.safetensors");
    assert!(bytes == again, "the same fit gave different scorer files");
    let (_, other, _) = save("2", "c.safetensors");
    assert!(bytes != other, "another seed gave the same scorer file");
    let loaded = FittedScorer::load(&path).unwrap();
    let scores = first.raw_scores(&calibration).unwrap();
    assert_eq!(loaded.raw_scores(&calibration).unwrap(), scores);
    assert!(scores.iter().all(|v| v.is_finite()));
}

#[test]
fn a_diverged_fit_is_an_error_not_a_nan_scorer() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let (m, a) = random_gaussian(4, &mut rng);
    let fit = gaussian_boxes(600, &m, &a, &mut rng);
    let p = params(&[("epochs", "2"), ("hidden", "8"), ("lr", "1e9")]);
    let mut s = crate::ood::build("flow", None, &p).unwrap();
    let e = s.fit(&fit).unwrap_err();
    assert!(
        matches!(
            e,
            crate::error::Error::Scorer {
                fault: crate::error::ScorerFault::CannotFit,
                ..
            }
        ),
        "{e}"
    );
    let e = e.to_string();
    assert!(e.contains("training diverged"), "{e}");
}
