//! Parity of the OOD scorers with Oodeel 0.4 on the same features and logits.
//!
//! `tests/fixtures/oodeel/{fit,test}.safetensors` are box sets (600 fit boxes, 200 test boxes,
//! D = 32, C = 4, one head) and `reference.json` holds Oodeel's scores of the test boxes after
//! fitting on the fit boxes; all made by `tests/fixtures/export_oodeel_reference.py`. Every method
//! must match within 1e-3 × std(reference scores), after the documented convention differences:
//!
//! - KNN: Oodeel returns the squared distance, so ours² is compared;
//! - ViM: Oodeel's float `princ_dims` is off by one, so the ratio run is compared with the count
//!   Oodeel actually used (and ours is checked to pick one more);
//! - Mahalanobis, RMDS, SHE: Oodeel with `eps=0` (no input perturbation);
//! - ODIN: Oodeel 0.4 cannot run with `eps=0`; the reference is temperature scaling in numpy.
//!
//! GEN, Mahalanobis and RMDS are also compared with float64 numpy re-implementations: their
//! residual against Oodeel (≈ 7e-4, 3.4e-4, 3.6e-4 of the std) is Oodeel's float32 arithmetic
//! (softmax tails below f32 precision; f32 covariance, pinv and `Z P Zᵀ`), since Oodeel differs
//! from the float64 numpy scores by the same amount while ours matches them.
//!
//! Run with `--nocapture` to see the measured errors.

use std::path::Path;

use oodbox::data::boxset::BoxSet;
use oodbox::ood::{build, Scorer};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/oodeel")
        .join(name)
}

struct Case {
    reference: &'static str,
    kind: &'static str,
    shaping: Option<&'static str>,
    params: Vec<(&'static str, String)>,
    /// Transform of our score before comparing (documented convention differences).
    transform: fn(f64) -> f64,
}

fn case(reference: &'static str, kind: &'static str) -> Case {
    Case {
        reference,
        kind,
        shaping: None,
        params: Vec::new(),
        transform: |v| v,
    }
}

#[test]
fn scorers_match_oodeel() {
    let fit = BoxSet::load(&fixture("fit.safetensors")).unwrap();
    let test = BoxSet::load(&fixture("test.safetensors")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference.json")).unwrap()).unwrap();
    let info = &json["info"];
    assert_eq!(info["oodeel_version"], "0.4.0");
    assert_eq!(fit.len(), info["n_fit"].as_u64().unwrap() as usize);
    assert_eq!(test.len(), info["n_test"].as_u64().unwrap() as usize);
    let oodeel_vim_k = info["vim_princ_dims_oodeel_for_0.99"].as_u64().unwrap() as usize;

    let squared = |v: f64| v * v;
    let mut cases = vec![
        case("maxlogit", "maxlogit"),
        case("msp", "msp"),
        case("energy", "energy"),
        case("entropy", "entropy"),
        case("gen", "gen"),
        Case {
            params: vec![("gamma", "0.5".into()), ("k", "2".into())],
            ..case("gen_gamma0.5_k2", "gen")
        },
        case("mahalanobis", "mahalanobis"),
        case("rmds", "rmds"),
        case("she", "she"),
        Case {
            transform: squared,
            ..case("knn_squared", "knn")
        },
        Case {
            transform: squared,
            params: vec![("nearest", "5".into())],
            ..case("knn_squared_k5", "knn")
        },
        Case {
            params: vec![("princ_dims", "12".into())],
            ..case("vim_k12", "vim")
        },
        Case {
            params: vec![("princ_dims", oodeel_vim_k.to_string())],
            ..case("vim_0.99", "vim")
        },
        case("gram", "gram"),
        Case {
            shaping: Some("react"),
            ..case("energy_react", "energy")
        },
        Case {
            shaping: Some("ash"),
            ..case("energy_ash", "energy")
        },
        Case {
            shaping: Some("scale"),
            ..case("energy_scale", "energy")
        },
        Case {
            shaping: Some("react"),
            params: vec![("react_quantile", "0.9".into())],
            ..case("maxlogit_react0.9", "maxlogit")
        },
        case("odin_numpy", "odin"),
        // Float64 numpy references of the methods where Oodeel's float32 shows (GEN's softmax
        // tails; Mahalanobis/RMDS covariance, pinv and quadratic forms): ours matches these to
        // ~1e-12, so the residual against Oodeel above is Oodeel's float32 rounding.
        case("gen_numpy_f64", "gen"),
        case("mahalanobis_numpy_f64", "mahalanobis"),
        case("rmds_numpy_f64", "rmds"),
    ];

    let mut failures = Vec::new();
    println!(
        "{:<20} {:>12} {:>12} {:>14}",
        "reference", "std(ref)", "max|diff|", "max|diff|/std"
    );
    for c in cases.drain(..) {
        let reference: Vec<f64> = json["scores"][c.reference]
            .as_array()
            .unwrap_or_else(|| panic!("no reference `{}`", c.reference))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let params: Vec<(String, String)> = c
            .params
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        let mut scorer = build(c.kind, c.shaping, &params).unwrap();
        scorer.fit(&fit).unwrap();
        let ours: Vec<f64> = scorer
            .score(&test)
            .unwrap()
            .into_iter()
            .map(c.transform)
            .collect();
        assert_eq!(ours.len(), reference.len());
        let mean = reference.iter().sum::<f64>() / reference.len() as f64;
        let std = (reference.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
            / reference.len() as f64)
            .sqrt();
        let max_diff = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let ratio = max_diff / std;
        println!(
            "{:<20} {:>12.5e} {:>12.5e} {:>14.3e}",
            c.reference, std, max_diff, ratio
        );
        if ratio.is_nan() || ratio > 1e-3 {
            failures.push(format!("{}: max|diff|/std = {ratio:.3e}", c.reference));
        }
    }
    assert!(failures.is_empty(), "parity failures: {failures:?}");
}

#[test]
fn vim_ratio_takes_one_component_more_than_oodeel() {
    let fit = BoxSet::load(&fixture("fit.safetensors")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference.json")).unwrap()).unwrap();
    let oodeel_k = json["info"]["vim_princ_dims_oodeel_for_0.99"]
        .as_u64()
        .unwrap() as usize;
    let mut vim = oodbox::ood::vim::Vim::new(
        oodbox::ood::vim::PrincDims::ExplainedVariance(0.99),
        oodbox::ood::vim::PcaOrigin::Center,
        true,
    );
    vim.fit(&fit).unwrap();
    assert_eq!(vim.princ_dims_used(), Some(vec![oodeel_k + 1]));
}

#[test]
fn react_threshold_matches_oodeel() {
    let fit = BoxSet::load(&fixture("fit.safetensors")).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference.json")).unwrap()).unwrap();
    let want = json["info"]["react_threshold_q0.8"].as_f64().unwrap();
    let mut s = build("energy", Some("react"), &[]).unwrap();
    s.fit(&fit).unwrap();
    let state = s.to_state();
    let (_, _, got) = state
        .tensors
        .iter()
        .find(|t| t.0 == "react.thresholds")
        .unwrap();
    assert!((got[0] - want).abs() < 1e-6, "{} vs {want}", got[0]);
}
