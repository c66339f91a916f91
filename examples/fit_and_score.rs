//! Fit an OOD scorer on in-distribution detections, then score new boxes with it: the library
//! calls behind `oodbox extract`, `oodbox fit` and `oodbox score`, without files in between.
//!
//! cargo run --release --example fit_and_score -- models/shapes.safetensors [energy]
//!
//! The in-distribution images are shapes-world scenes rendered in memory (the train split holds
//! known shapes only). The scorer is then asked about test scenes of known shapes and about
//! scenes of shapes the model never saw (near-OOD), on which it still reports boxes. Last, it
//! is given boxes of another feature dimension: it refuses them with an error whose kind
//! (`ScorerFault::Mismatch`) a program can match, without reading the message.

use oodbox::data::boxset::BoxSet;
use oodbox::detect::{load_detector, Detector};
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::synth::world::{render_scene, Split};
use oodbox::{DetectOptions, Error, InputSize, ScorerFault};

/// Shapes-world scenes are 256×256, the size the fixture model was trained at.
const SIZE: u32 = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (model, method) = match args.as_slice() {
        [model] => (model, "energy"),
        [model, method] => (model, method.as_str()),
        _ => return Err("usage: fit_and_score MODEL [METHOD]".into()),
    };
    let (report, refusal) = fit_and_score(model.as_ref(), method)?;
    for (name, boxes, flagged) in report {
        println!(
            "{name}: {boxes} boxes, {flagged} flagged OOD ({:.1}%)",
            100.0 * flagged as f64 / boxes.max(1) as f64
        );
    }
    match refusal {
        ScorerFault::Mismatch => println!("boxes of another feature dimension: refused"),
        other => println!("boxes of another feature dimension: refused, but as {other:?}"),
    }
    Ok(())
}

/// Rows per scene kind (name, boxes, flagged), and why boxes of another dimension were refused.
pub type Report = (Vec<(&'static str, usize, usize)>, ScorerFault);

/// Fits `method` on the detections of 120 training scenes (a fifth of the scenes held out for
/// calibration), then scores 40 scenes of known and 40 of unknown shapes: for each, the number of
/// boxes and how many were flagged at alpha 0.05. Then offers it boxes of another dimension.
pub fn fit_and_score(model: &std::path::Path, method: &str) -> oodbox::error::Result<Report> {
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
    Ok((report, refusal(&scorer, calibration)?))
}

/// Scores `boxes` with their last feature dimension cut off: the scorer refuses them, and the
/// error's kind says why. Any other outcome is returned as an error.
fn refusal(scorer: &FittedScorer, boxes: BoxSet) -> oodbox::error::Result<ScorerFault> {
    // A box set checks its parts when built: the rows must have the new width.
    let narrow = boxes.edit(|parts| {
        let d = parts.feature_dim;
        parts.features = (parts.features.chunks(d))
            .flat_map(|row| &row[..d - 1])
            .copied()
            .collect();
        parts.feature_dim = d - 1;
        parts.head = None; // the class head reads the full feature
    })?;
    match scorer.score(&narrow, None) {
        Err(Error::Scorer { fault, .. }) => Ok(fault),
        Err(other) => Err(other),
        Ok(_) => Err(Error::Unsupported(
            "boxes of another dimension were scored".into(),
        )),
    }
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
    BoxSet::from_records(
        records.iter().map(|(i, r)| (*i, r)),
        detector.head(),
        detector.class_names(),
        detector.fingerprint(),
        "fit_and_score example",
    )
}
