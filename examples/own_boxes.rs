//! Score the boxes of any detector: build a box set from your own arrays (one feature row and
//! one logit row per box), fit a scorer on in-distribution boxes, and score new ones. A box set
//! is checked when it is built, so parts that disagree (here a logit missing) are refused
//! with an error kind a program can match (`Error::BadBoxSet`), before any scorer sees them.
//!
//! cargo run --release --example own_boxes

use oodbox::data::boxset::BoxParts;
use oodbox::{BoxSet, Error, FitOptions, FittedScorer};

const DIM: usize = 8;
const CLASSES: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let report = own_boxes()?;
    println!(
        "a box like the fit boxes: OOD confidence {:.2}; a box far from them: {:.2} (flagged: {})",
        report.known_confidence, report.far_confidence, report.far_flagged
    );
    println!("inconsistent parts refused: {}", report.refused);
    Ok(())
}

pub struct Report {
    pub known_confidence: f64,
    pub far_confidence: f64,
    pub far_flagged: bool,
    /// The message of the `BadBoxSet` error for parts that disagree.
    pub refused: String,
}

pub fn own_boxes() -> oodbox::Result<Report> {
    let fit = boxes(0, 600, 0.0)?;
    let calibration = boxes(600, 400, 0.0)?;
    let scorer = FittedScorer::fit(
        "mahalanobis",
        None,
        &[],
        &fit,
        &calibration,
        &FitOptions::default(),
    )?;
    let known = boxes(1000, 1, 0.0)?;
    let far = boxes(1001, 1, 6.0)?;
    let known = scorer.score(&known, None)?[0];
    let far = scorer.score(&far, None)?[0];

    let mut parts = parts(2000, 10, 0.0);
    parts.logits.pop();
    let refused = match BoxSet::new(parts) {
        Err(Error::BadBoxSet { reason }) => reason,
        Err(other) => return Err(other),
        Ok(_) => panic!("a box set with a logit missing was accepted"),
    };
    Ok(Report {
        known_confidence: known.confidence,
        far_confidence: far.confidence,
        far_flagged: far.is_ood,
        refused,
    })
}

/// `n` boxes numbered from `first`: class `i % 2`, features around that class's centre (each
/// coordinate moved by `shift`), and logits from a fixed linear head, as a detector gives them.
fn boxes(first: usize, n: usize, shift: f32) -> oodbox::Result<BoxSet> {
    BoxSet::new(parts(first, n, shift))
}

fn parts(first: usize, n: usize, shift: f32) -> BoxParts {
    let mut parts = BoxParts {
        feature_dim: DIM,
        num_classes: CLASSES,
        source: "own detector".into(),
        ..BoxParts::default()
    };
    for i in first..first + n {
        let class = i % CLASSES;
        let centre = if class == 0 { 1.0 } else { -1.0 };
        let row: Vec<f32> = (0..DIM)
            .map(|j| centre + shift + 0.3 * wobble(i * DIM + j))
            .collect();
        let sum: f32 = row.iter().sum();
        parts.logits.extend([sum, -sum]);
        parts.features.extend(row);
        parts.class_id.push(class);
    }
    parts
}

/// A deterministic value in [−1, 1] (no random generator needed for an example).
fn wobble(k: usize) -> f32 {
    ((k as f32 * 12.9898).sin() * 43_758.547).fract().abs() * 2.0 - 1.0
}
