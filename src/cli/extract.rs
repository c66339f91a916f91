use anyhow::Context;
use oodbox::data::dataset::{Dataset, LabelledImage};
use oodbox::data::inputs::collect_images;
use std::path::PathBuf;
use std::process::ExitCode;

use super::common::{check_sources, extract_dataset_with_fgsm, parse_features, DetectorArgs};
use oodbox::core::sources::FeatureSources;
use oodbox::detect::fgsm::eps_from_levels;

/// Run the detector and write every kept box's feature, logits and class as a box set
/// (.safetensors), with the model's class heads, for fitting, scoring and evaluation.
///
/// With --data, boxes are labelled by the dataset's ground truth (IoU ≥ 0.5, greedy by
/// confidence): `label` is the matched object's class, -1 for an unknown object, -2 for none.
///
/// With --features, ROI features of the model's layers are recorded beside the class-branch
/// feature (`cls`, always recorded), for `fit --features` to choose from.
///
/// With --fgsm-out and --fgsm-eps, also writes FGSM surrogate boxes (SAFE): each image nudged
/// by ε · sign of the gradient of the detector's classification loss toward its own
/// predictions, every box read again at its anchor; the same boxes, in the same order, as
/// --out. `fit --scorer safe --param surrogate=fgsm --outliers FILE` trains against them.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// Image files, folders (searched recursively) or glob patterns.
    #[arg(long, num_args = 1.., required_unless_present = "data", conflicts_with = "data")]
    input: Vec<PathBuf>,
    /// A dataset with ground truth: an ultralytics data.yaml or a COCO json.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The data.yaml split to read.
    #[arg(long, default_value = "val")]
    split: String,
    /// The box set to write.
    #[arg(long)]
    out: PathBuf,
    /// Feature sources to record: cls (the class-branch feature, always recorded) and
    /// roi:<layer>[@k] (a layer's map ROI-aligned on the box, k×k bins), comma-separated.
    #[arg(long, value_parser = parse_features, default_value = "cls")]
    features: FeatureSources,
    /// FGSM surrogate box set(s) to write, one per --fgsm-eps, in the same order.
    #[arg(long, num_args = 1.., requires = "fgsm_eps")]
    fgsm_out: Vec<PathBuf>,
    /// FGSM step(s) in 8-bit pixel levels (8 = 8/255 of the [0, 1] input), one per --fgsm-out.
    #[arg(long, num_args = 1.., requires = "fgsm_out")]
    fgsm_eps: Vec<f32>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::common::check_output_file(&args.out, "--out")?;
    anyhow::ensure!(
        args.fgsm_out.len() == args.fgsm_eps.len(),
        "{} --fgsm-out files for {} --fgsm-eps values: give one file per value",
        args.fgsm_out.len(),
        args.fgsm_eps.len()
    );
    for out in &args.fgsm_out {
        super::common::check_output_file(out, "--fgsm-out")?;
    }
    if let Some(bad) = args.fgsm_eps.iter().find(|e| !(0.0..=255.0).contains(*e)) {
        anyhow::bail!("--fgsm-eps {bad}: expected pixel levels in [0, 255]");
    }
    let epsilons: Vec<f32> = args.fgsm_eps.iter().map(|&e| eps_from_levels(e)).collect();
    let data = match &args.data {
        Some(path) => super::common::open_dataset(path, &args.split)?,
        None => Dataset {
            class_names: None,
            images: collect_images(&args.input)?
                .into_iter()
                .map(|path| LabelledImage {
                    path,
                    objects: None,
                })
                .collect(),
        },
    };
    let detector = args.detector.load()?;
    check_sources(detector.as_ref(), &args.features)?;
    let options = args
        .detector
        .flags
        .options(Some(detector.as_ref()), args.features.roi())?;
    if !epsilons.is_empty() {
        // A family without FGSM refuses here, not once per image.
        let blank = image::RgbImage::from_pixel(32, 32, image::Rgb([114, 114, 114]));
        if let Err(e @ oodbox::error::Error::Unsupported(_)) =
            detector.detect_fgsm(&blank, &options, &epsilons)
        {
            return Err(anyhow::Error::new(e).context("--fgsm-out"));
        }
    }
    let source = match &args.data {
        Some(d) => format!(
            "oodbox extract --model {} --data {} --split {}",
            args.detector.model.display(),
            d.display(),
            args.split
        ),
        None => format!("oodbox extract --model {}", args.detector.model.display()),
    };
    let start = std::time::Instant::now();
    let (extraction, surrogates) = extract_dataset_with_fgsm(
        &detector,
        &data,
        &options,
        &epsilons,
        args.detector.flags.quiet,
        &source,
    )?;
    extraction
        .boxes
        .save(&args.out)
        .with_context(|| format!("writing the box set to {}", args.out.display()))?;
    for (boxes, out) in surrogates.iter().zip(&args.fgsm_out) {
        boxes
            .save(out)
            .with_context(|| format!("writing the FGSM box set to {}", out.display()))?;
    }
    if !args.detector.flags.quiet {
        eprintln!(
            "{} images ({} failed), {} boxes in {:.1} s; wrote {}",
            extraction.images.len(),
            extraction.failed.len(),
            extraction.boxes.len(),
            start.elapsed().as_secs_f64(),
            args.out.display()
        );
    }
    Ok(if extraction.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
