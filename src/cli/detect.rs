use anyhow::Context;
use oodbox::data::inputs::collect_images;
use oodbox::data::write_atomically;
use oodbox::detect::Detector;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

use oodbox::render::{annotate, Annotation};

use super::common::{run_images, DetectorArgs, OutputFolder};

/// Detect objects and keep, for every box, its raw logits (and optionally its feature vector).
///
/// Defaults follow ultralytics `predict`, so the same weights give the same boxes. Writes the
/// detections as JSON to --json, or to standard output.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// Image files, folders (searched recursively) or glob patterns.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Write annotated images into this folder (PNG, named after the inputs).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the detections JSON here (default: standard output unless --out is given).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Include each box's feature vector (the input of the final classifier).
    #[arg(long)]
    with_features: bool,
    /// Include each box's neck feature, ROI-aligned on the box (7×7 bins, averaged).
    #[arg(long)]
    roi_features: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let paths = collect_images(&args.input)?;
    let detector = args.detector.load()?;
    let options = args.detector.flags.options(args.roi_features);
    let names = detector.class_names().to_vec();
    let mut outputs = match &args.out {
        Some(dir) => Some(OutputFolder::new(dir, &paths)?),
        None => None,
    };
    let mut images = Vec::new();
    let summary = run_images(
        &detector,
        &options,
        &paths,
        args.detector.flags.quiet,
        |p| {
            let detections: Vec<_> = p
                .boxes
                .iter()
                .map(|b| {
                    let mut d = json!({
                        "bbox": b.bbox,
                        "class_id": b.class_id,
                        "class_name": names[b.class_id],
                        "confidence": b.confidence,
                        "logits": b.logits,
                        "level": b.level,
                        "anchor": b.anchor,
                    });
                    if args.with_features {
                        d["feature"] = json!(b.feature);
                    }
                    if let Some(roi) = &b.roi_feature {
                        d["roi_feature"] = json!(roi);
                    }
                    d
                })
                .collect();
            if let Some(out) = outputs.as_mut() {
                let annotations: Vec<Annotation> = p
                    .boxes
                    .iter()
                    .map(|b| Annotation {
                        bbox: b.bbox,
                        label: format!("{} {:.2}", names[b.class_id], b.confidence),
                        class_id: b.class_id,
                        ood_confidence: None,
                        flagged: false,
                    })
                    .collect();
                out.write(&p.path, &annotate(&p.image, &annotations, false))?;
            }
            images.push(json!({
                "path": p.path,
                "width": p.image.width(),
                "height": p.image.height(),
                "detections": detections,
            }));
            Ok(())
        },
    )?;
    let document = json!({
        "model": args.detector.model,
        "class_names": names,
        "images": images,
        "failed": summary.failed.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&document)? + "\n";
    match (&args.json, &args.out) {
        (Some(path), _) => write_atomically(path, text.as_bytes())
            .with_context(|| format!("writing the detections to {}", path.display()))?,
        (None, None) => print!("{text}"),
        (None, Some(_)) => {}
    }
    if !args.detector.flags.quiet {
        summary.report();
    }
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
