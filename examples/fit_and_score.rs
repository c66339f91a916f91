//! Fit an OOD scorer on in-distribution detections, then score new boxes with it: the library
//! calls behind `oodbox extract`, `oodbox fit` and `oodbox score`, without files in between.
//!
//! cargo run --release --example fit_and_score -- models/shapes.safetensors [energy]
//!
//! The in-distribution images are shapes-world scenes rendered in memory (the train split holds
//! known shapes only). The scorer is then asked about test scenes of known shapes and about
//! scenes of shapes the model never saw (near-OOD), on which it still reports boxes.

use oodbox::data::boxset::BoxSet;
use oodbox::detect::{load_detector, Detector};
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::synth::world::{render_scene, Split};
use oodbox::{DetectOptions, InputSize};

/// Shapes-world scenes are 256×256, the size the fixture model was trained at.
const SIZE: u32 = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, method) = match args.as_slice() {
        [model] => (model, "energy"),
        [model, method] => (model, method.as_str()),
        _ => return Err("usage: fit_and_score MODEL [METHOD]".into()),
    };
    for (name, boxes, flagged) in fit_and_score(model.as_ref(), method)? {
        println!(
            "{name}: {boxes} boxes, {flagged} flagged OOD ({:.1}%)",
            100.0 * flagged as f64 / boxes.max(1) as f64
        );
    }
    Ok(())
}

/// Fits `method` on the detections of 120 training scenes (a fifth of the scenes held out for
/// calibration), then scores 40 scenes of known and 40 of unknown shapes: for each, the number of
/// boxes and how many were flagged at alpha 0.05.
pub fn fit_and_score(
    model: &std::path::Path,
    method: &str,
) -> oodbox::error::Result<Vec<(&'static str, usize, usize)>> {
    let detector = load_detector(model, &candle_core::Device::Cpu)?;
    let options = DetectOptions {
        imgsz: InputSize::square(SIZE),
        ..DetectOptions::default()
    };
    let (fit, calibration) =
        boxes(detector.as_ref(), &options, Split::Train, 120)?.split_holdout(0.2, 0);
    let scorer = FittedScorer::fit(
        method,
        None,
        &[],
        &fit,
        &calibration,
        &FitOptions::default(),
    )?;
    let mut report = Vec::new();
    for (name, split) in [
        ("known shapes", Split::TestId),
        ("unknown shapes", Split::TestOodNear),
    ] {
        let verdicts = scorer.score(&boxes(detector.as_ref(), &options, split, 40)?, None)?;
        let flagged = verdicts.iter().filter(|v| v.is_ood).count();
        report.push((name, verdicts.len(), flagged));
    }
    Ok(report)
}

/// The detections on `count` scenes of `split`, as a box set (logits, features, class head).
fn boxes(
    detector: &dyn Detector,
    options: &DetectOptions,
    split: Split,
    count: usize,
) -> oodbox::error::Result<BoxSet> {
    let mut records = Vec::new();
    for index in 0..count {
        let scene = render_scene(0, split, index, SIZE, SIZE);
        records.extend(
            detector
                .detect(&scene.image, options)?
                .into_iter()
                .map(|r| (index, r)),
        );
    }
    Ok(BoxSet::from_records(
        records.iter().map(|(i, r)| (*i, r)),
        detector.head(),
        detector.class_names(),
        detector.fingerprint(),
        "fit_and_score example",
    ))
}
