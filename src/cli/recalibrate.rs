use anyhow::Context;

use super::common::{check_output_file, load_scorer};
use super::fit::{load_fit_boxes, report_spread};
use std::path::PathBuf;
use std::process::ExitCode;

/// Calibrate a fitted scorer anew on other ID boxes, keeping its fit.
///
/// For new conditions (another camera, other lighting: the p-values hold only for boxes
/// exchangeable with the calibration boxes), or for more calibration boxes, without refitting.
/// The boxes must come from the scorer's model, with its feature sources, from images it was not
/// fitted on; only those matched to a known object are used when the set has labels. Alpha, the
/// per-class minimum and the tail setting stay as fitted.
#[derive(clap::Args)]
pub struct Args {
    /// The scorer file from `oodbox fit`.
    #[arg(long)]
    scorer: PathBuf,
    /// ID box set to calibrate on (`oodbox extract`).
    #[arg(long)]
    calibration_boxes: PathBuf,
    /// The recalibrated scorer file to write.
    #[arg(long)]
    out: PathBuf,
    /// No summary on stderr.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_output_file(&args.out, "--out")?;
    let mut scorer = load_scorer(&args.scorer)?;
    let boxes = load_fit_boxes(&args.calibration_boxes, scorer.feature_sources())?.known_objects();
    let before = scorer
        .calibration_summary()
        .iter()
        .map(|c| c.boxes)
        .sum::<usize>();
    scorer.recalibrate(&boxes).with_context(|| {
        format!(
            "recalibrating {} on {}",
            args.scorer.display(),
            args.calibration_boxes.display()
        )
    })?;
    scorer
        .save(&args.out)
        .with_context(|| format!("writing the scorer to {}", args.out.display()))?;
    if !args.quiet {
        eprintln!(
            "recalibrated {} on {} boxes (before: {before}); wrote {}",
            scorer.name(),
            boxes.len(),
            args.out.display()
        );
        report_spread(&scorer);
    }
    Ok(ExitCode::SUCCESS)
}
