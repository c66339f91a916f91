use anyhow::Context;
use oodbox::data::boxset::BoxSet;
use oodbox::data::dataset;
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::common::{extract_dataset, parse_param, DetectFlags};

/// Fit an OOD scorer on in-distribution boxes and calibrate it on held-out ID boxes.
///
/// Fit boxes come from a box set (--boxes) or from running --model on --data. Where ground truth
/// exists (a `label` tensor, or a dataset with labels), only boxes matched to a known object
/// are used, labelled by that object's class; otherwise the detector's own predictions. The
/// calibration boxes never enter the fit: --calibration-boxes, or a held-out
/// --calibration-fraction of the images.
#[derive(clap::Args)]
pub struct Args {
    /// Scorer: msp, maxlogit, energy, joint_energy, entropy, gen, odin, mahalanobis, rmds, knn,
    /// vim, she, ... (an unknown name lists them all).
    #[arg(long)]
    scorer: String,
    /// Activation shaping before a logit scorer: react, ash, scale or dice.
    #[arg(long)]
    shaping: Option<String>,
    /// Scorer parameter, with Oodeel's names: --param nearest=50 --param princ_dims=0.99 ...
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// ID box set to fit on (from `oodbox extract`, or written from Python).
    #[arg(long, conflicts_with_all = ["model", "data"], required_unless_present = "data")]
    boxes: Option<PathBuf>,
    /// Model to run on --data.
    #[arg(long, requires = "data")]
    model: Option<PathBuf>,
    /// ID data to run the model on: an ultralytics data.yaml, a COCO json or an image folder.
    #[arg(long, requires = "model")]
    data: Option<PathBuf>,
    /// The data.yaml split to fit on.
    #[arg(long, default_value = "train")]
    split: String,
    /// ID box set to calibrate on.
    #[arg(long)]
    calibration_boxes: Option<PathBuf>,
    /// Without --calibration-boxes: the share of images held out for calibration.
    #[arg(long, default_value_t = 0.2, conflicts_with = "calibration_boxes")]
    calibration_fraction: f64,
    /// Seed of the hold-out split.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Default significance level: a box is OOD when its p-value ≤ alpha.
    #[arg(long, default_value_t = 0.05)]
    alpha: f64,
    /// A class with fewer calibration boxes than this is calibrated on all classes pooled.
    #[arg(long, default_value_t = 100)]
    min_class_calibration: usize,
    /// The scorer file to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    flags: DetectFlags,
}

fn load_boxes(path: &Path) -> anyhow::Result<BoxSet> {
    BoxSet::load(path).with_context(|| format!("reading the box set {}", path.display()))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.calibration_fraction > 0.0 && args.calibration_fraction < 1.0,
        "--calibration-fraction must lie in (0, 1)"
    );
    let all = match (&args.boxes, &args.model, &args.data) {
        (Some(path), _, _) => load_boxes(path)?,
        (None, Some(model), Some(data)) => {
            let detector = args.flags.load(model)?;
            let set = dataset::open(data, &args.split)
                .with_context(|| format!("reading {}", data.display()))?;
            let source = format!(
                "oodbox fit --model {} --data {} --split {}",
                model.display(),
                data.display(),
                args.split
            );
            let extraction = extract_dataset(
                &detector,
                &set,
                &args.flags.options(Some(detector.as_ref()), false),
                args.flags.quiet,
                &source,
            )?;
            if !extraction.failed.is_empty() {
                eprintln!(
                    "warning: {} images could not be read and were skipped",
                    extraction.failed.len()
                );
            }
            extraction.boxes
        }
        _ => anyhow::bail!("give --boxes, or --model with --data"),
    };
    let all = all.known_objects();
    let (fit, calibration) = match &args.calibration_boxes {
        Some(path) => (all, load_boxes(path)?.known_objects()),
        None => all.split_holdout(args.calibration_fraction, args.seed),
    };
    anyhow::ensure!(!fit.is_empty(), "no ID boxes to fit on");
    let options = FitOptions {
        alpha: args.alpha,
        min_class_boxes: args.min_class_calibration,
    };
    let start = Instant::now();
    let fitted = FittedScorer::fit(
        &args.scorer,
        args.shaping.as_deref(),
        &args.params,
        &fit,
        &calibration,
        &options,
    )?;
    let seconds = start.elapsed().as_secs_f64();
    fitted
        .save(&args.out)
        .with_context(|| format!("writing the scorer to {}", args.out.display()))?;
    if !args.flags.quiet {
        let pooled: Vec<String> = fitted
            .calibration_summary()
            .iter()
            .filter(|c| c.pooled_fallback)
            .map(|c| {
                fitted
                    .class_names()
                    .get(c.class_id)
                    .cloned()
                    .unwrap_or_else(|| c.class_id.to_string())
            })
            .collect();
        eprintln!(
            "fitted {} on {} boxes, calibrated on {} boxes in {seconds:.2} s; wrote {}",
            fitted.name(),
            fit.len(),
            calibration.len(),
            args.out.display()
        );
        if !pooled.is_empty() {
            eprintln!(
                "note: classes with fewer than {} calibration boxes use the pooled calibration: {}",
                args.min_class_calibration,
                pooled.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
