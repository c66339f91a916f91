use anyhow::Context;

use super::common::{check_output_file, load_boxes, load_scorer};
use oodbox::ood::calibration::flagged_share_spread;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Score a box set with a fitted scorer: raw score, p-value, OOD confidence and verdict per box.
///
/// With a labelled box set (from `extract --data`) of images the scorer was not fitted or
/// calibrated on, also reports the share of the boxes on known objects that are flagged: the
/// calibration check, which should be close to alpha.
#[derive(clap::Args)]
pub struct Args {
    /// The scorer file from `oodbox fit`.
    #[arg(long)]
    scorer: PathBuf,
    /// The box set to score.
    #[arg(long)]
    boxes: PathBuf,
    /// Significance level (default: the one stored at fit time, usually 0.05).
    #[arg(long)]
    alpha: Option<f64>,
    /// Write the scores here.
    #[arg(long)]
    json: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_output_file(&args.json, "--json")?;
    let scorer = load_scorer(&args.scorer)?;
    let boxes = load_boxes(&args.boxes)?;
    let results = scorer.score(&boxes, args.alpha).with_context(|| {
        format!(
            "scoring {} with {}",
            args.boxes.display(),
            args.scorer.display()
        )
    })?;
    let flagged = results.iter().filter(|r| r.is_ood).count();
    let alpha = args.alpha.unwrap_or(scorer.alpha());
    let known = boxes.label.as_ref().map(|labels| {
        let on_known: Vec<bool> = (labels.iter().zip(&results))
            .filter(|(&label, _)| label >= 0)
            .map(|(_, r)| r.is_ood)
            .collect();
        KnownObjects::of(&on_known)
    });
    let mut doc = json!({
        "scorer": scorer.name(),
        "alpha": alpha,
        "boxes": results,
    });
    if let Some(tail) = super::common::tail_json(&scorer) {
        doc["p_value_tail"] = tail;
    }
    if let Some(known) = &known {
        doc["known_objects"] = serde_json::to_value(known)?;
    }
    oodbox::core::write_atomically(
        &args.json,
        (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
    )
    .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!(
        "{} boxes, {flagged} flagged OOD; wrote {}",
        results.len(),
        args.json.display()
    );
    if let Some(k) = known.filter(|k| k.boxes > 0) {
        eprintln!(
            "of the {} boxes on known objects, {} flagged: {:.4} (alpha {alpha}; close to alpha \
             when these images were held out of the fit and calibration: within ±{:.4}, two \
             standard deviations of calibration sets of the scorer's sizes, for 19 calibration \
             sets in 20, beside this set's own sampling error)",
            k.boxes,
            k.flagged,
            k.share,
            2.0 * flagged_share_spread(scorer.calibration_summary(), alpha)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// How many of the boxes matched to a known object were flagged OOD.
#[derive(serde::Serialize)]
struct KnownObjects {
    boxes: usize,
    flagged: usize,
    /// `flagged / boxes`; 0 without boxes.
    share: f64,
}

impl KnownObjects {
    fn of(is_ood: &[bool]) -> Self {
        let flagged = is_ood.iter().filter(|&&f| f).count();
        KnownObjects {
            boxes: is_ood.len(),
            flagged,
            share: flagged as f64 / is_ood.len().max(1) as f64,
        }
    }
}
