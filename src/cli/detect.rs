use anyhow::Context;
use oodbox::core::write_atomically;
use oodbox::data::inputs::collect_images;
use oodbox::detect::Detector;
use oodbox::pipeline::OodDetector;
use oodbox::render::{annotate, verdict_text, Annotation};
use oodbox::DetectOptions;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::common::{
    check_output_file, check_sources, load_scorer, parse_features, run_images, DetectorArgs,
    OutputFolder, RunSummary,
};
use oodbox::core::sources::{FeatureSource, FeatureSources};

/// Detect objects and keep, for every box, its raw logits (and optionally its feature vector);
/// with --scorer, also its OOD score, p-value, confidence and verdict.
///
/// Defaults follow ultralytics `predict`, so the same weights give the same boxes. Writes the
/// detections as JSON to --json, or to standard output when neither --json nor --out is given.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// A scorer file from `oodbox fit`, fitted for this model.
    #[arg(long)]
    scorer: Option<PathBuf>,
    /// Significance level for `is_ood` (default: the scorer file's, usually 0.05).
    #[arg(long, requires = "scorer")]
    alpha: Option<f64>,
    /// Image files, folders (searched recursively) or glob patterns.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Write annotated images into this folder (PNG, named after the inputs).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the detections JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Include each box's feature vector (the input of the final classifier).
    #[arg(long)]
    with_features: bool,
    /// Include these feature sources of each box, comma-separated: cls (as --with-features)
    /// and roi:<layer>[@k], a layer's map ROI-aligned on the box in k×k bins (YOLO layers by
    /// their index in ultralytics' YAML, e.g. roi:6, roi:15@2; DETR's layer1..layer4, encoder).
    #[arg(long, value_parser = parse_features)]
    features: Option<FeatureSources>,
}

/// What a detection run writes, shared by `detect` and `demo`.
pub struct Outputs<'a> {
    pub model: &'a Path,
    pub out: Option<&'a Path>,
    pub json: Option<&'a Path>,
    pub with_features: bool,
    pub quiet: bool,
}

/// Detects (and scores, with `ood`) every image, writing annotated images and the JSON.
pub fn detect_images(
    detector: &dyn Detector,
    ood: Option<&OodDetector>,
    options: &DetectOptions,
    paths: &[PathBuf],
    outputs: &Outputs,
) -> anyhow::Result<(RunSummary, usize)> {
    let names = detector.class_names().to_vec();
    let mut folder = outputs
        .out
        .map(|dir| OutputFolder::new(dir, paths))
        .transpose()?;
    let mut images = Vec::new();
    let mut flagged = 0;
    let summary = run_images(detector, options, paths, outputs.quiet, |p| {
        let verdicts = match ood {
            Some(o) => o
                .score(p.boxes.clone())?
                .into_iter()
                .map(|d| Some(d.ood))
                .collect(),
            None => vec![None; p.boxes.len()],
        };
        flagged += verdicts.iter().flatten().filter(|v| v.is_ood).count();
        let mut detections = Vec::new();
        let mut annotations = Vec::new();
        for (b, verdict) in p.boxes.iter().zip(&verdicts) {
            let mut d = json!({
                "bbox": b.bbox,
                "class_id": b.class_id,
                "class_name": names[b.class_id],
                "confidence": b.confidence,
                "logits": b.logits,
                "level": b.level,
                "anchor": b.anchor,
            });
            if outputs.with_features {
                d["feature"] = json!(b.feature);
            }
            if !b.roi_features.is_empty() {
                let named = b
                    .roi_features
                    .iter()
                    .map(|f| (f.source.to_string(), json!(f.values)));
                d["roi_features"] = named.collect::<serde_json::Map<_, _>>().into();
            }
            let mut label = format!("{} {:.2}", names[b.class_id], b.confidence);
            if let Some(v) = verdict {
                d["ood"] = json!(v);
                label += &format!(" · {}", verdict_text(v.p_value, v.is_ood));
            }
            detections.push(d);
            annotations.push(Annotation {
                bbox: b.bbox,
                label,
                class_id: b.class_id,
                ood_confidence: verdict.map(|v| v.confidence),
                flagged: verdict.is_some_and(|v| v.is_ood),
            });
        }
        let mut image = json!({
            "path": p.path,
            "width": p.image.width(),
            "height": p.image.height(),
            "detections": detections,
        });
        if let Some(folder) = folder.as_mut() {
            let written =
                folder.write(&p.path, &annotate(&p.image, &annotations, ood.is_some()))?;
            image["annotated"] = json!(written);
        }
        images.push(image);
        Ok(())
    })?;
    let mut document = json!({
        "model": outputs.model,
        "class_names": names,
        "images": images,
        "failed": summary.failed.iter().map(|(p, e)| json!({"path": p, "error": e})).collect::<Vec<_>>(),
    });
    if let Some(o) = ood {
        document["scorer"] = json!(o.scorer().name());
        document["alpha"] = json!(o.alpha);
        if let Some(tail) = super::common::tail_json(o.scorer()) {
            document["p_value_tail"] = tail;
        }
    }
    let text = serde_json::to_string_pretty(&document)? + "\n";
    match (outputs.json, outputs.out) {
        (Some(path), _) => write_atomically(path, text.as_bytes())
            .with_context(|| format!("writing the detections to {}", path.display()))?,
        (None, None) => print!("{text}"),
        (None, Some(_)) => {}
    }
    Ok((summary, flagged))
}

/// Pairs the model with a scorer file. Detection then runs at the input size the scorer's fit
/// boxes were detected at unless --imgsz says otherwise, with a warning when the settings
/// differ, since the p-values only hold for boxes detected the same way.
pub fn pair_with_scorer(
    detector: Box<dyn Detector>,
    args: &DetectorArgs,
    path: &Path,
    alpha: Option<f64>,
    options: &mut DetectOptions,
) -> anyhow::Result<OodDetector> {
    let scorer = load_scorer(path)?;
    let mut o = OodDetector::new(detector, scorer).with_context(|| {
        format!(
            "using the scorer {} with the model {}",
            path.display(),
            args.model.display()
        )
    })?;
    let fitted_imgsz = o.scorer().detect_options().and_then(|f| f.imgsz);
    if let (Some(imgsz), None) = (fitted_imgsz, args.flags.imgsz) {
        options.imgsz = imgsz;
    }
    if let Some(alpha) = alpha {
        anyhow::ensure!(alpha > 0.0 && alpha < 1.0, "--alpha must lie in (0, 1)");
        o.alpha = alpha;
    }
    // The scorer's ROI sources are read whatever else is asked for.
    for source in o.scorer().feature_sources().roi() {
        if !options.roi.contains(&source) {
            options.roi.push(source);
        }
    }
    o.options = options.clone();
    if let Some(warning) = o.settings_warning() {
        eprintln!("warning: {warning}");
    }
    Ok(o)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.json {
        check_output_file(path, "--json")?;
    }
    let paths = collect_images(&args.input)?;
    let detector = args.detector.load()?;
    let features = args.features.unwrap_or_default();
    check_sources(detector.as_ref(), &features)?;
    let mut options = args
        .detector
        .flags
        .options(Some(detector.as_ref()), features.roi())?;
    let ood = match &args.scorer {
        Some(path) => Ok(pair_with_scorer(
            detector,
            &args.detector,
            path,
            args.alpha,
            &mut options,
        )?),
        None => Err(detector),
    };
    let outputs = Outputs {
        model: &args.detector.model,
        out: args.out.as_deref(),
        json: args.json.as_deref(),
        with_features: args.with_features || features.list().contains(&FeatureSource::Cls),
        quiet: args.detector.flags.quiet,
    };
    let (summary, _) = match &ood {
        Ok(o) => detect_images(o.detector(), Some(o), &options, &paths, &outputs)?,
        Err(plain) => detect_images(plain.as_ref(), None, &options, &paths, &outputs)?,
    };
    if !args.detector.flags.quiet {
        summary.report();
    }
    Ok(if summary.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
