use anyhow::Context;
use candle_core::Device;
use oodbox::data::inputs::collect_images;
use oodbox::pipeline::OodDetector;
use std::path::PathBuf;
use std::process::ExitCode;

use super::detect::{detect_images, Outputs};

/// Zero configuration: the bundled shapes model and its best measured scorer (`safe` with outlier
/// exposure) on the bundled mixed scenes (known shapes next to unknown ones). Writes annotated
/// images and detections.json into --out.
#[derive(clap::Args)]
pub struct Args {
    /// Output folder.
    #[arg(long, default_value = "oodbox-demo")]
    out: PathBuf,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

/// A bundled file: relative to the working directory (a checkout), else to the source tree
/// this binary was built from.
fn bundled(relative: &str) -> PathBuf {
    let here = PathBuf::from(relative);
    if here.exists() {
        here
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (model, scorer) = (
        bundled("models/shapes.safetensors"),
        bundled("models/shapes-scorer-exposure.safetensors"),
    );
    // The scorer file says how its boxes were detected: at 256, the size of the bundled scenes.
    let ood = OodDetector::load(&model, &scorer, &Device::Cpu).with_context(|| {
        format!(
            "loading the bundled model {} and scorer {}",
            model.display(),
            scorer.display()
        )
    })?;
    let paths = collect_images(&[bundled("assets/images")])?;
    let json = args.out.join("detections.json");
    let outputs = Outputs {
        model: &model,
        out: Some(&args.out),
        json: Some(&json),
        with_features: false,
        quiet: args.quiet,
    };
    let (summary, flagged) =
        detect_images(ood.detector(), Some(&ood), &ood.options, &paths, &outputs)?;
    println!(
        "| images | boxes | flagged OOD (alpha {}) | ms per image |",
        ood.alpha
    );
    println!("|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.1} |",
        summary.images,
        summary.boxes,
        flagged,
        summary.seconds * 1e3 / summary.images.max(1) as f64
    );
    println!(
        "wrote {} annotated images and {} ({} scorer)",
        summary.images,
        json.display(),
        ood.scorer().name()
    );
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
