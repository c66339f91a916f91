//! What several subcommands share: model loading, detection flags, and the image loop.

use anyhow::Context;
use candle_core::Device;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use oodbox::data::dataset::Dataset;
use oodbox::data::extraction::{extract, Extraction};
use oodbox::detect::image_io::load_rgb;
use oodbox::detect::{load_detector, BoxRecord, DetectOptions, Detector};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The model flag and the detection flags, for commands that always run a detector.
#[derive(clap::Args)]
pub struct DetectorArgs {
    /// An ultralytics YOLOv8, YOLO11 or YOLO26 detector (best.pt, last.pt, or .safetensors),
    /// or a Hugging Face DETR folder (config.json, model.safetensors).
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub flags: DetectFlags,
}

/// How to run a detector: class names, thresholds, input size, device.
#[derive(clap::Args)]
pub struct DetectFlags {
    /// Class names: an ultralytics data.yaml or a text file with one name a line
    /// (default: the model file's metadata, else class0, class1, ...).
    #[arg(long)]
    pub names: Option<PathBuf>,
    /// Keep boxes whose confidence is above this.
    #[arg(long, default_value_t = 0.25, allow_negative_numbers = true)]
    pub conf: f32,
    /// NMS IoU threshold.
    #[arg(long, default_value_t = 0.7, allow_negative_numbers = true)]
    pub iou: f32,
    /// Input size: one number for a square target, or HEIGHT,WIDTH (rounded up to multiples of
    /// 32, as ultralytics does; at most 4096, or OODBOX_MAX_IMGSZ).
    /// Default: the size the model was trained at when its file records it (a best.pt does),
    /// else 640; with a scorer, the size its fit boxes were detected at.
    #[arg(long, value_parser = parse_imgsz)]
    pub imgsz: Option<(u32, u32)>,
    /// At most this many boxes per image.
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Class-agnostic NMS.
    #[arg(long)]
    pub agnostic_nms: bool,
    /// YOLO26: run the NMS-free one-to-one head with top-k, as ultralytics' `nms=False` does
    /// (default: the one-to-many head with NMS, as ultralytics runs it).
    #[arg(long)]
    pub nms_free: bool,
    /// Device: cpu, or cuda / cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_imgsz(s: &str) -> Result<(u32, u32), String> {
    let parts: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>().map_err(|e| format!("`{p}`: {e}")))
        .collect::<Result<_, _>>()?;
    // The range is checked with the other detection settings.
    match parts[..] {
        [n] => Ok((n, n)),
        [h, w] => Ok((w, h)),
        _ => Err("expected N or HEIGHT,WIDTH".into()),
    }
}

/// Refuses settings out of range, and prints the library's warnings about them.
pub fn checked(options: DetectOptions) -> anyhow::Result<DetectOptions> {
    let warnings = options
        .check()
        .context("the detection settings (--conf, --iou, --imgsz, --max-det)")?;
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    Ok(options)
}

pub fn device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let ordinal = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .with_context(|| format!("unknown device `{name}`: use cpu, cuda or cuda:N"))?,
                None => anyhow::bail!("unknown device `{name}`: use cpu, cuda or cuda:N"),
            };
            Device::new_cuda(ordinal).with_context(|| format!("opening device `{name}`"))
        }
    }
}

impl DetectorArgs {
    pub fn load(&self) -> anyhow::Result<Box<dyn Detector>> {
        self.flags.load(&self.model)
    }
}

impl DetectFlags {
    /// The detection settings of these flags. Without --imgsz, the size `detector` was trained
    /// at when its file records one (as ultralytics `predict` does on a checkpoint), else 640.
    /// Settings out of range are refused; the library's warnings (an input size rounded up to a
    /// multiple of 32) are printed.
    pub fn options(
        &self,
        detector: Option<&dyn Detector>,
        roi_features: bool,
    ) -> anyhow::Result<DetectOptions> {
        let trained = detector.and_then(|d| d.trained_imgsz()).map(|s| (s, s));
        let options = DetectOptions {
            conf: self.conf,
            iou: self.iou,
            max_det: self.max_det,
            agnostic: self.agnostic_nms,
            imgsz: self
                .imgsz
                .or(trained)
                .unwrap_or(DetectOptions::default().imgsz),
            roi_features,
        };
        checked(options)
    }

    pub fn load(&self, model: &Path) -> anyhow::Result<Box<dyn Detector>> {
        let device = device(&self.device)?;
        let mut detector = load_detector(model, &device)
            .with_context(|| format!("loading the model {}", model.display()))?;
        if self.nms_free {
            detector.set_nms_free(true).context("--nms-free")?;
        }
        if let Some(path) = &self.names {
            let names = oodbox::data::read_class_names(path)?;
            detector
                .set_class_names(names)
                .with_context(|| path.display().to_string())?;
        }
        Ok(detector)
    }
}

/// One processed input.
pub struct Processed {
    pub path: PathBuf,
    pub image: RgbImage,
    pub boxes: Vec<BoxRecord>,
}

/// What a run over many images did.
pub struct RunSummary {
    pub images: usize,
    pub boxes: usize,
    pub failed: Vec<(PathBuf, String)>,
    pub seconds: f64,
}

impl RunSummary {
    pub fn report(&self) {
        eprintln!(
            "{} images, {} boxes in {:.2} s ({:.2} images/s){}",
            self.images,
            self.boxes,
            self.seconds,
            self.images as f64 / self.seconds.max(1e-9),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!("; {} failed", self.failed.len())
            }
        );
    }
}

/// Runs the detector on every path, reporting and skipping the ones that fail, with a progress
/// bar. `sink` receives each success in input order; an error from it stops the run.
pub fn run_images(
    detector: &dyn Detector,
    options: &DetectOptions,
    paths: &[PathBuf],
    quiet: bool,
    mut sink: impl FnMut(Processed) -> anyhow::Result<()>,
) -> anyhow::Result<RunSummary> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(paths.len() as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} images {per_sec} {elapsed} (eta {eta}) {msg}",
    )?);
    let start = Instant::now();
    let mut summary = RunSummary {
        images: 0,
        boxes: 0,
        failed: Vec::new(),
        seconds: 0.0,
    };
    for path in paths {
        bar.set_message(short_name(path));
        match detect_one(detector, options, path) {
            Ok(processed) => {
                summary.images += 1;
                summary.boxes += processed.boxes.len();
                sink(processed)?;
            }
            Err(e) => {
                bar.suspend(|| eprintln!("warning: skipped {}: {e:#}", path.display()));
                summary.failed.push((path.clone(), format!("{e:#}")));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// Runs the detector over a dataset with a progress bar, reporting the images that fail.
pub fn extract_dataset(
    detector: &dyn Detector,
    dataset: &Dataset,
    options: &DetectOptions,
    quiet: bool,
    source: &str,
) -> anyhow::Result<Extraction> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(dataset.images.len() as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} images {per_sec} {elapsed} (eta {eta}) {msg}",
    )?);
    let extraction = extract(detector, dataset, options, source, &mut |path, error| {
        if let Some(e) = error {
            bar.suspend(|| eprintln!("warning: skipped {}: {e}", path.display()));
        }
        bar.set_message(short_name(path));
        bar.inc(1);
    });
    bar.finish_and_clear();
    Ok(extraction)
}

fn detect_one(
    detector: &dyn Detector,
    options: &DetectOptions,
    path: &Path,
) -> anyhow::Result<Processed> {
    let image = load_rgb(path)?;
    let boxes = detector.detect(&image, options)?;
    Ok(Processed {
        path: path.to_path_buf(),
        image,
        boxes,
    })
}

fn short_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `name=value`, for --param.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("`{s}`: expected name=value")),
    }
}

/// Where annotated images go: one PNG per input, named after it, never over an input.
pub struct OutputFolder {
    dir: PathBuf,
    inputs: std::collections::HashSet<PathBuf>,
    used: std::collections::HashSet<PathBuf>,
}

impl OutputFolder {
    pub fn new(dir: &Path, inputs: &[PathBuf]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the output folder {}", dir.display()))?;
        let probe = dir.join(format!(".oodbox-write-test-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .with_context(|| format!("the output folder {} is not writable", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        let canonical = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        Ok(OutputFolder {
            dir: dir.to_path_buf(),
            inputs: inputs.iter().map(|p| canonical(p)).collect(),
            used: Default::default(),
        })
    }

    /// Writes `image` as `<input stem>.png`, adding `_1`, `_2`, ... when that name is taken by
    /// an earlier output or by an input.
    pub fn write(&mut self, input: &Path, image: &RgbImage) -> anyhow::Result<PathBuf> {
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let mut path = self.dir.join(format!("{stem}.png"));
        let mut n = 0;
        while self.used.contains(&path)
            || self
                .inputs
                .contains(&path.canonicalize().unwrap_or_else(|_| path.clone()))
        {
            n += 1;
            path = self.dir.join(format!("{stem}_{n}.png"));
        }
        let mut bytes = Vec::new();
        image
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .with_context(|| format!("encoding {}", path.display()))?;
        oodbox::data::write_atomically(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        self.used.insert(path.clone());
        Ok(path)
    }
}
