use anyhow::Context;
use oodbox::data::boxset::BoxSet;
use oodbox::data::inputs::collect_images;
use oodbox::detect::{BoxRecord, Detector};
use std::path::PathBuf;
use std::process::ExitCode;

use super::common::{run_images, DetectorArgs};

/// Run the detector and write every kept box's feature, logits and class as a box set
/// (.safetensors), with the model's class head, for fitting and scoring.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// Image files, folders (searched recursively) or glob patterns.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// The box set to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths = collect_images(&args.input)?;
    let detector = args.detector.load()?;
    let options = args.detector.options(false);
    let mut records: Vec<(usize, BoxRecord)> = Vec::new();
    let mut image_index = 0;
    let summary = run_images(&detector, &options, &paths, args.detector.quiet, |p| {
        records.extend(p.boxes.into_iter().map(|b| (image_index, b)));
        image_index += 1;
        Ok(())
    })?;
    let set = BoxSet::from_records(
        records.iter().map(|(i, r)| (*i, r)),
        detector.head(),
        detector.class_names(),
        detector.fingerprint(),
        &format!("oodbox extract --model {}", args.detector.model.display()),
    );
    set.save(&args.out)
        .with_context(|| format!("writing the box set to {}", args.out.display()))?;
    if !args.detector.quiet {
        summary.report();
        eprintln!("wrote {} boxes to {}", set.len(), args.out.display());
    }
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
