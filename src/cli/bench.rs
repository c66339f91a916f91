use anyhow::Context;
use oodbox::detect::image_io::load_rgb;
use oodbox::detect::Detector;
use oodbox::nn::MapLayout;
use oodbox::pipeline::OodDetector;
use oodbox::synth::world::{render_scene, Split};
use oodbox::RgbImage;
use oodbox::{DetectOptions, InputSize};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use super::common::{check_sources, device, parse_features};
use oodbox::core::sources::FeatureSources;

/// Time each stage of detection (median, min and max over --iters runs, after warm-up).
///
/// Without --image, a shapes-world scene of --imgsz × --imgsz is used. With --scorer, the boxes
/// are also scored and `detect_ms` is the whole detection with its OOD verdicts.
#[derive(clap::Args)]
pub struct Args {
    /// An ultralytics YOLOv8, YOLO11 or YOLO26 detector (best.pt, last.pt or .safetensors), or
    /// a Hugging Face DETR folder.
    #[arg(long)]
    model: PathBuf,
    /// Image to run on (default: a generated scene).
    #[arg(long)]
    image: Option<PathBuf>,
    #[arg(long, default_value_t = 640)]
    imgsz: u32,
    /// Timed runs.
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Write the timings as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Device: cpu, or cuda / cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A scorer fitted for this model: also time OOD scoring of the boxes.
    #[arg(long)]
    scorer: Option<PathBuf>,
    /// Run Candle's own channels-first ops instead of the fused CPU convolutions (the
    /// reference path, for comparison).
    #[arg(long)]
    plain: bool,
    /// Also time detection with these ROI feature sources (e.g. roi:4,roi:6,roi:9), each
    /// iteration right after the plain one: `forward_with_features_ms` and
    /// `postprocess_with_features_ms` (where the ROI features are made) beside the plain ones.
    #[arg(long, value_parser = parse_features)]
    features: Option<FeatureSources>,
}

fn stats(ms: &mut [f64]) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    json!({"median": ms[ms.len() / 2], "min": ms[0], "max": ms[ms.len() - 1], "runs": ms})
}

/// Milliseconds per run of each stage, warm-up runs left out.
#[derive(Default)]
struct Timings {
    pre: Vec<f64>,
    fwd: Vec<f64>,
    post: Vec<f64>,
    score: Vec<f64>,
    total: Vec<f64>,
    /// (forward, postprocess) ms with the sources: the ROI features are made in postprocess.
    featured: Vec<(f64, f64)>,
}

/// Runs the detector (and scorer) --warmup + --iters times on `image`; with `with_features`,
/// each run is repeated with the feature sources.
fn measure(
    detector: &dyn Detector,
    scorer: Option<&OodDetector>,
    image: &RgbImage,
    (options, with_features): (&DetectOptions, Option<&DetectOptions>),
    args: &Args,
) -> anyhow::Result<Timings> {
    let mut t = Timings::default();
    for i in 0..args.warmup + args.iters {
        let (boxes, times) = detector.detect_timed(image, options)?;
        let t3 = Instant::now();
        if let Some(scorer) = scorer {
            std::hint::black_box(scorer.score(boxes)?);
        } else {
            std::hint::black_box(boxes);
        }
        let score_ms = t3.elapsed().as_secs_f64() * 1e3;
        if let Some(options) = with_features {
            let (boxes, times) = detector.detect_timed(image, options)?;
            std::hint::black_box(boxes);
            if i >= args.warmup {
                t.featured.push((times.forward_ms, times.postprocess_ms));
            }
        }
        if i >= args.warmup {
            t.pre.push(times.preprocess_ms);
            t.fwd.push(times.forward_ms);
            t.post.push(times.postprocess_ms);
            t.score.push(score_ms);
            t.total
                .push(times.preprocess_ms + times.forward_ms + times.postprocess_ms + score_ms);
        }
    }
    Ok(t)
}

/// Prints each stage's median, min and max.
fn print_stats(report: &serde_json::Value) {
    for key in [
        "preprocess_ms",
        "forward_ms",
        "postprocess_ms",
        "score_ms",
        "detect_ms",
        "forward_with_features_ms",
        "postprocess_with_features_ms",
    ] {
        let s = &report[key];
        if s.is_null() {
            continue;
        }
        eprintln!(
            "{key:>15}: median {:8.2}  min {:8.2}  max {:8.2}",
            s["median"].as_f64().unwrap(),
            s["min"].as_f64().unwrap(),
            s["max"].as_f64().unwrap()
        );
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.iters > 0, "--iters must be at least 1");
    if let Some(path) = &args.json {
        super::common::check_output_file(path, "--json")?;
    }
    let dev = device(&args.device)?;
    let load = || {
        oodbox::detect::load_detector(&args.model, &dev)
            .with_context(|| format!("loading the model {}", args.model.display()))
    };
    let mut detector = load()?;
    if args.plain {
        detector.set_layout(MapLayout::Nchw).context("--plain")?;
    }
    let scorer = match &args.scorer {
        Some(path) => {
            let scorer = super::common::load_scorer(path)?;
            Some(OodDetector::new(load()?, scorer)?)
        }
        None => None,
    };
    // Checked before a scene of that size is drawn. With a scorer, detection makes the ROI
    // features it reads, as `detect --scorer` does: their cost is part of scoring a box.
    let options = super::common::checked(DetectOptions {
        imgsz: InputSize::square(args.imgsz),
        roi: scorer
            .as_ref()
            .map(|s| s.options.roi.clone())
            .unwrap_or_default(),
        ..DetectOptions::default()
    })?;
    let image = match &args.image {
        Some(path) => load_rgb(path)?,
        None => render_scene(0, Split::TestMixed, 0, args.imgsz, args.imgsz).image,
    };
    if let Some(features) = &args.features {
        check_sources(detector.as_ref(), features)?;
    }
    let with_features = args.features.as_ref().map(|f| DetectOptions {
        roi: f.roi(),
        ..options.clone()
    });
    let mut t = measure(
        detector.as_ref(),
        scorer.as_ref(),
        &image,
        (&options, with_features.as_ref()),
        &args,
    )?;
    let report = json!({
        "model": args.model,
        "imgsz": args.imgsz,
        "threads": candle_core::utils::get_num_threads(),
        "preprocess_ms": stats(&mut t.pre),
        "forward_ms": stats(&mut t.fwd),
        "postprocess_ms": stats(&mut t.post),
        "score_ms": stats(&mut t.score),
        "detect_ms": stats(&mut t.total),
        "features": args.features.as_ref().map(|f| f.to_string()),
        "forward_with_features_ms": (!t.featured.is_empty())
            .then(|| stats(&mut t.featured.iter().map(|f| f.0).collect::<Vec<_>>())),
        "postprocess_with_features_ms": (!t.featured.is_empty())
            .then(|| stats(&mut t.featured.iter().map(|f| f.1).collect::<Vec<_>>())),
        "scorer": args.scorer,
        "path": if args.plain { "candle" } else { "fused" },
    });
    print_stats(&report);
    if let Some(path) = &args.json {
        oodbox::core::write_atomically(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
