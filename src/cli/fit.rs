use anyhow::Context;
use oodbox::data::boxset::BoxSet;
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::ood::tail::{TailOptions, TailStatus};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::common::{
    check_output_file, check_sources, extract_dataset, load_boxes, open_dataset, parse_features,
    parse_param, DetectFlags,
};
use oodbox::core::sources::FeatureSources;

/// Fit an OOD scorer on in-distribution boxes and calibrate it on held-out ID boxes.
///
/// Fit boxes come from a box set (--boxes) or from running --model on --data. Where ground truth
/// exists (a `label` tensor, or a dataset with labels), only boxes matched to a known object
/// are used, labelled by that object's class; otherwise the detector's own predictions. The
/// calibration boxes never enter the fit: --calibration-boxes, or a held-out
/// --calibration-fraction of the images.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, help = scorer_help())]
    scorer: String,
    #[arg(long, help = shaping_help())]
    shaping: Option<String>,
    /// Scorer parameter, with Oodeel's names: --param nearest=50 --param princ_dims=0.99 ...
    /// (`oodbox scorers` lists every kind's parameters and defaults).
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
    /// Extrapolate p-values beyond the largest calibration score with a generalized Pareto tail
    /// fitted to the calibration scores above --tail-quantile (peaks over threshold), so that
    /// boxes can get p-values below 1/(n+1). Inside the calibration range the p-values stay
    /// the conformal ones; beyond it they hold under the tail model, not by exchangeability
    /// alone. A calibration set with fewer than --tail-min-points scores above the threshold,
    /// or whose fit fails, keeps plain conformal p-values; the output and the file say which.
    #[arg(long)]
    tail: bool,
    /// With --tail: the threshold of the tail is this quantile of the calibration scores.
    #[arg(long, requires = "tail", default_value_t = 0.95)]
    tail_quantile: f64,
    /// With --tail: the fewest calibration scores above the threshold to fit a tail on.
    #[arg(long, requires = "tail", default_value_t = 10)]
    tail_min_points: usize,
    /// With --tail: keep a negative fitted shape ξ (a tail with an upper end). By default a
    /// negative ξ gives way to the exponential tail (ξ = 0), since on the few points of a
    /// tail a negative ξ is often fitted too low, which gives ID boxes p-values near 0.
    #[arg(long, requires = "tail")]
    tail_bounded: bool,
    /// Outlier boxes to train against, for `safe` and `ocsdf` (alone or in a `combine`). With `--param
    /// surrogate=fgsm`: the FGSM box set of the fit images (`extract --fgsm-out`; with
    /// --calibration-fraction, only those of the fit images are used). With `--param surrogate=unknown` (outlier exposure): a box set
    /// of other images with objects the detector should not know (`extract --data`: its boxes
    /// on unknown objects are the outliers, those on known objects train as ID; every box of
    /// an unlabelled set is an outlier, alone or beside labelled sets); `ocsdf --param exposure=true` takes such sets too. Repeat the flag to train against several box sets of
    /// the same detector and feature sources.
    #[arg(long)]
    outliers: Vec<PathBuf>,
    /// The scorer file to write.
    #[arg(long)]
    out: PathBuf,
    /// Feature sources the scorer reads, concatenated per box: cls (the class-branch feature)
    /// and roi:<layer>[@k] (a layer's map ROI-aligned on the box, k×k bins). With --boxes, among
    /// those the box set recorded (`extract --features`). Scorers that read the class head
    /// (vim, shaping) need cls alone. A `combine` component may read some of them
    /// (`features=[...]` in its spec). The scorer file records them.
    #[arg(long, value_parser = parse_features, default_value = "cls")]
    features: FeatureSources,
    #[command(flatten)]
    flags: DetectFlags,
}

fn scorer_help() -> String {
    format!("Scorer: {}", oodbox::ood::kinds().join(", "))
}

fn shaping_help() -> String {
    format!(
        "Activation shaping before a logit scorer: {}",
        oodbox::ood::shapings().join(", ")
    )
}

/// Checks fit boxes before they are subset and shuffled, so that a bad box is named by its
/// index in the file.
pub fn finite(boxes: BoxSet, path: &std::path::Path) -> anyhow::Result<BoxSet> {
    boxes.check_finite(path)?;
    Ok(boxes)
}

/// A box set's boxes, checked, with the feature sources the scorer is to fit on.
pub(super) fn load_fit_boxes(path: &Path, features: &FeatureSources) -> anyhow::Result<BoxSet> {
    let boxes = finite(load_boxes(path)?, path)?;
    select(boxes, features, path)
}

/// The box set with only `features` as its feature sources.
pub fn select(boxes: BoxSet, features: &FeatureSources, path: &Path) -> anyhow::Result<BoxSet> {
    boxes
        .select(features)
        .with_context(|| format!("reading the box set {}", path.display()))
}

/// Names the classes whose own statistics rest on a few fit boxes but that are calibrated
/// pooled: their known objects may be flagged far more often than --alpha.
fn warn_thin_classes(fitted: &FittedScorer, min_class_calibration: usize) {
    use oodbox::ood::fitted::MIN_CLASS_FIT_BOXES;
    for class in fitted.thin_classes() {
        let name = fitted
            .class_names()
            .get(class.class_id)
            .cloned()
            .unwrap_or_else(|| class.class_id.to_string());
        eprintln!(
            "warning: class `{name}` has {} fit boxes (fewer than {MIN_CLASS_FIT_BOXES}) and {} \
             calibration boxes (fewer than --min-class-calibration {min_class_calibration}, so \
             it is calibrated with all classes pooled); {} scores a box against its own class's \
             statistics, so this class's known objects may be flagged far more often than \
             alpha. Give more boxes of this class, or use a scorer that does not condition on \
             the class (energy, knn, vim)",
            class.fit_boxes,
            class.boxes,
            fitted.name()
        );
    }
}

/// Says, per calibration set, whether p-values beyond it come from a fitted tail or stay plain
/// conformal, and why.
fn report_tails(fitted: &FittedScorer) {
    let Some(tail) = fitted.tail() else { return };
    let describe = |status: &TailStatus| match status {
        TailStatus::Fitted(g) if g.shape != g.mle_shape => format!(
            "exponential tail over {:.4} (σ = {:.4}, {} points; the fitted ξ = {:.3} < 0 is \
             not kept without --tail-bounded)",
            g.threshold, g.scale, g.points, g.mle_shape
        ),
        TailStatus::Fitted(g) => format!(
            "GPD tail over {:.4} (ξ = {:.3}, σ = {:.4}, {} points)",
            g.threshold, g.shape, g.scale, g.points
        ),
        TailStatus::Plain { reason } => format!("plain conformal: {reason}"),
    };
    eprintln!("tail p-values, pooled: {}", describe(&tail.pooled));
    for class in fitted.calibration_summary() {
        if let (false, Some(status)) = (class.pooled_fallback, &class.tail) {
            let name = fitted.class_names().get(class.class_id).cloned();
            let name = name.unwrap_or_else(|| class.class_id.to_string());
            eprintln!("tail p-values, class `{name}`: {}", describe(status));
        }
    }
    eprintln!(
        "note: p-values beyond the largest calibration score hold under the fitted tail model, \
         not by exchangeability alone"
    );
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.calibration_fraction > 0.0 && args.calibration_fraction < 1.0,
        "--calibration-fraction must lie in (0, 1)"
    );
    check_output_file(&args.out, "--out")?;
    let all = match (&args.boxes, &args.model, &args.data) {
        (Some(path), _, _) => load_fit_boxes(path, &args.features)?,
        (None, Some(model), Some(data)) => {
            let detector = args.flags.load(model)?;
            check_sources(detector.as_ref(), &args.features)?;
            let set = open_dataset(data, &args.split)?;
            let source = format!(
                "oodbox fit --model {} --data {} --split {}",
                model.display(),
                data.display(),
                args.split
            );
            let extraction = extract_dataset(
                &detector,
                &set,
                &args
                    .flags
                    .options(Some(detector.as_ref()), args.features.roi())?,
                args.flags.quiet,
                &source,
            )?;
            if !extraction.failed.is_empty() {
                eprintln!(
                    "warning: {} images could not be read and were skipped",
                    extraction.failed.len()
                );
            }
            extraction.boxes.select(&args.features)?
        }
        _ => anyhow::bail!("give --boxes, or --model with --data"),
    };
    let all = all.known_objects();
    let (fit, calibration) = match &args.calibration_boxes {
        Some(path) => (all, load_fit_boxes(path, &args.features)?.known_objects()),
        None => all.split_holdout(args.calibration_fraction, args.seed),
    };
    anyhow::ensure!(!fit.is_empty(), "no ID boxes to fit on");
    // The scorer picks the boxes it trains against (see `safe`'s `surrogate`).
    let outliers = match args.outliers.as_slice() {
        [] => None,
        paths => {
            let sets = paths
                .iter()
                .map(|p| load_fit_boxes(p, &args.features))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            let names = names.join(", ");
            let set = BoxSet::concat_outliers(sets)
                .with_context(|| format!("gathering the outlier box sets {names}"))?;
            Some((names, set))
        }
    };
    let mut options = FitOptions::default();
    options.alpha = args.alpha;
    options.min_class_boxes = args.min_class_calibration;
    options.tail = args.tail.then_some(TailOptions {
        quantile: args.tail_quantile,
        min_points: args.tail_min_points,
        bounded: args.tail_bounded,
    });
    options.outliers = outliers.as_ref().map(|(_, o)| o.clone());
    let start = Instant::now();
    let fitted = FittedScorer::fit(
        &args.scorer,
        args.shaping.as_deref(),
        &args.params,
        &fit,
        &calibration,
        &options,
    )
    .with_context(|| match &outliers {
        Some((names, _)) => format!(
            "fitting on the features {} against the outlier boxes {names}",
            args.features
        ),
        None => format!("fitting on the features {}", args.features),
    })?;
    let seconds = start.elapsed().as_secs_f64();
    fitted
        .save(&args.out)
        .with_context(|| format!("writing the scorer to {}", args.out.display()))?;
    warn_thin_classes(&fitted, args.min_class_calibration);
    report_tails(&fitted);
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
        let calibrated: usize = fitted.calibration_summary().iter().map(|c| c.boxes).sum();
        let reference = match calibration.len().saturating_sub(calibrated) {
            0 => String::new(),
            n => format!(" (the other {n} calibration boxes make its components' reference)"),
        };
        eprintln!(
            "fitted {} on {} boxes, calibrated on {calibrated} boxes{reference} in {seconds:.2} s; wrote {}",
            fitted.name(),
            fit.len(),
            args.out.display()
        );
        if !pooled.is_empty() {
            eprintln!(
                "note: classes with fewer than {} calibration boxes use the pooled calibration: {}",
                args.min_class_calibration,
                pooled.join(", ")
            );
        }
        report_spread(&fitted);
    }
    Ok(ExitCode::SUCCESS)
}

/// Says how far the share of ID boxes flagged at alpha may stray with a calibration set of this
/// size: conformal validity is an average over calibration sets.
pub(super) fn report_spread(fitted: &FittedScorer) {
    eprintln!(
        "note: with calibration sets of these sizes, the share of ID boxes flagged at alpha {} \
         varies by ±{:.4} (one standard deviation) from one set to another; 4 times as many \
         calibration boxes halve that",
        fitted.alpha(),
        fitted.flagged_share_spread()
    );
}
