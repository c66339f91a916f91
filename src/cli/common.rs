//! What several subcommands share: model loading, detection flags, and the image loop.

use anyhow::Context;
use candle_core::Device;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use oodbox::core::kind::FileKind;
use oodbox::core::settings::{Applies, InputSize, Nms};
use oodbox::core::sources::{missing_message, FeatureSources, RoiSource};
use oodbox::data::boxset::BoxSet;
use oodbox::data::dataset::Dataset;
use oodbox::detect::image_io::load_rgb;
use oodbox::detect::{load_detector, Detector};
use oodbox::ood::fitted::FittedScorer;
use oodbox::pipeline::extraction::{extract_with_fgsm, Extraction};
use oodbox::BoxRecord;
use oodbox::DetectOptions;
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
    #[arg(long, default_value_t = 0.25)]
    pub conf: f32,
    /// NMS IoU threshold [default: 0.7] (YOLO with NMS; refused for DETR and --nms-free).
    #[arg(long)]
    pub iou: Option<f32>,
    /// Input size: one number for a square target, or HEIGHT,WIDTH, height first as in
    /// ultralytics (rounded up to multiples of 32, as ultralytics does; at most 4096, or
    /// OODBOX_MAX_IMGSZ). Default: the size the model was trained at when its file records it
    /// (a best.pt does), else 640; with a scorer, the size its fit boxes were detected at.
    /// YOLO only: DETR sizes its input with its image processor.
    #[arg(long, value_parser = parse_imgsz)]
    pub imgsz: Option<InputSize>,
    /// At most this many boxes per image.
    #[arg(long, default_value_t = 300)]
    pub max_det: usize,
    /// Class-agnostic NMS (YOLO only).
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

/// `--features`: a comma-separated list of feature sources (`cls`, `roi:<layer>[@k]`).
pub fn parse_features(s: &str) -> Result<FeatureSources, String> {
    s.parse().map_err(|e: oodbox::error::Error| e.to_string())
}

/// Refuses sources whose layer the model lacks before any image is read, naming them.
pub fn check_sources(detector: &dyn Detector, sources: &FeatureSources) -> anyhow::Result<()> {
    let layers = detector.feature_layers();
    let missing = sources.missing_from(&layers);
    anyhow::ensure!(
        missing.is_empty(),
        "--features: {}",
        missing_message(&missing, detector.family(), &layers)
    );
    Ok(())
}

/// `N` or `HEIGHT,WIDTH`; the range is checked with the other detection settings.
fn parse_imgsz(s: &str) -> Result<InputSize, String> {
    s.parse().map_err(|e: oodbox::error::Error| e.to_string())
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
        roi: Vec<RoiSource>,
    ) -> anyhow::Result<DetectOptions> {
        let trained = detector
            .and_then(|d| d.trained_imgsz())
            .map(InputSize::square);
        self.options_or(trained, roi)
    }

    /// As [`Self::options`], with `imgsz` (say, the size a scorer's fit boxes were detected at)
    /// used when --imgsz is not given.
    pub fn options_or(
        &self,
        imgsz: Option<InputSize>,
        roi: Vec<RoiSource>,
    ) -> anyhow::Result<DetectOptions> {
        let default = DetectOptions::default();
        let options = DetectOptions {
            conf: self.conf,
            max_det: self.max_det,
            roi,
            nms: Nms {
                iou: self.iou.unwrap_or(default.nms.iou),
                agnostic: self.agnostic_nms,
            },
            imgsz: self.imgsz.or(imgsz).unwrap_or(default.imgsz),
        };
        checked(options)
    }

    /// Refuses a flag for a setting that `detector` does not read (--iou for DETR, say), with
    /// the family's reason and the flags that do apply, rather than ignoring it.
    fn refuse_unread(&self, detector: &dyn Detector) -> anyhow::Result<()> {
        let uses = detector.settings_use();
        let flags = [
            ("--iou", self.iou.is_some(), uses.iou),
            ("--agnostic-nms", self.agnostic_nms, uses.agnostic),
            ("--imgsz", self.imgsz.is_some(), uses.imgsz),
        ];
        for (flag, given, applies) in flags {
            if let (true, Applies::No { why }) = (given, applies) {
                let read = flags.iter().filter(|f| f.2 == Applies::Yes).map(|f| f.0);
                let read: Vec<&str> = ["--conf", "--max-det"].into_iter().chain(read).collect();
                anyhow::bail!(
                    "{flag} does not apply to a {} model ({why}); the detection settings that \
                     apply to it are {}",
                    detector.family(),
                    read.join(", ")
                );
            }
        }
        Ok(())
    }

    pub fn load(&self, model: &Path) -> anyhow::Result<Box<dyn Detector>> {
        let device = device(&self.device)?;
        let mut detector = load_detector(model, &device)
            .with_context(|| format!("loading the model {}", model.display()))
            .map_err(with_kind_hint)?;
        if self.nms_free {
            detector.set_nms_free(true).context("--nms-free")?;
        }
        self.refuse_unread(detector.as_ref())?;
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
                bar.suspend(|| eprintln!("warning: {}", skipped(path, &format!("{e:#}"))));
                summary.failed.push((path.clone(), format!("{e:#}")));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// "skipped <path>: <why>", naming the path once: library errors usually name it already.
fn skipped(path: &Path, why: &str) -> String {
    let name = path.display().to_string();
    match why.strip_prefix(&name) {
        Some(rest) => format!("skipped {name}{rest}"),
        None => format!("skipped {name}: {why}"),
    }
}

/// Runs the detector over a dataset with a progress bar, reporting the images that fail.
pub fn extract_dataset(
    detector: &dyn Detector,
    dataset: &Dataset,
    options: &DetectOptions,
    quiet: bool,
    source: &str,
) -> anyhow::Result<Extraction> {
    extract_dataset_with_fgsm(detector, dataset, options, &[], quiet, source).map(|(e, _)| e)
}

/// [`extract_dataset`], also making the FGSM surrogate box set of every ε of `epsilons`.
pub fn extract_dataset_with_fgsm(
    detector: &dyn Detector,
    dataset: &Dataset,
    options: &DetectOptions,
    epsilons: &[f32],
    quiet: bool,
    source: &str,
) -> anyhow::Result<(Extraction, Vec<BoxSet>)> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(dataset.images.len() as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} images {per_sec} {elapsed} (eta {eta}) {msg}",
    )?);
    let progress = &mut |path: &Path, error: Option<&oodbox::error::Error>| {
        if let Some(e) = error {
            bar.suspend(|| eprintln!("warning: {}", skipped(path, &e.to_string())));
        }
        bar.set_message(short_name(path));
        bar.inc(1);
    };
    let extraction = extract_with_fgsm(detector, dataset, options, epsilons, source, progress);
    bar.finish_and_clear();
    Ok(extraction?)
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
        oodbox::core::write_atomically(&path, &bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        self.used.insert(path.clone());
        Ok(path)
    }
}

/// Where a file of `kind` goes, for an error about a file given to the wrong flag.
fn goes_to(kind: FileKind) -> &'static str {
    match kind {
        FileKind::Model => {
            "a detector model goes to --model (best.pt, a .safetensors model or a DETR folder)"
        }
        FileKind::BoxSet => {
            "a box set goes to `oodbox fit --boxes`, `oodbox score --boxes`, or `oodbox eval \
             --id/--ood/--mixed/--fit`; --model takes a detector (best.pt, a .safetensors model \
             or a DETR folder)"
        }
        FileKind::Scorer => "a scorer file goes to --scorer (of detect, score, eval, video, bench)",
        FileKind::TrackCalibration => {
            "a track calibration goes to `oodbox video --track-calibration`"
        }
        FileKind::Dataset => {
            "a data.yaml or a COCO annotation file goes to --data (of extract and fit), or \
             to --names for class names"
        }
        FileKind::Image => "images go to --input (of detect and extract)",
    }
}

/// Adds where the file goes to an error caused by a file of the wrong kind.
pub fn with_kind_hint(err: anyhow::Error) -> anyhow::Error {
    let found = err
        .chain()
        .find_map(|c| match c.downcast_ref::<oodbox::error::Error>() {
            Some(oodbox::error::Error::WrongKind { found, .. }) => Some(*found),
            _ => None,
        });
    match found {
        Some(kind) => anyhow::anyhow!("{err:#}; {}", goes_to(kind)),
        None => err,
    }
}

/// Loads the scorer file of --scorer. A scorer kind given instead of a file (`--scorer knn`)
/// is answered with how to fit one.
pub fn load_scorer(path: &Path) -> anyhow::Result<FittedScorer> {
    let name = path.to_string_lossy();
    if !path.exists() && oodbox::ood::kinds().contains(&name.as_ref()) {
        anyhow::bail!(
            "--scorer {name}: `{name}` is a scorer kind, and --scorer here takes a scorer file \
             fitted on ID boxes: `oodbox fit --scorer {name} --boxes ID.safetensors --out \
             {name}.safetensors` (or --model M --data data.yaml instead of --boxes), then \
             --scorer {name}.safetensors"
        );
    }
    FittedScorer::load(path)
        .with_context(|| format!("loading the scorer {}", path.display()))
        .map_err(with_kind_hint)
}

/// What a JSON output says about a scorer's tail p-values (`None` without a tail): the setting,
/// the pooled fit, and that the extrapolated p-values rest on the tail model.
pub fn tail_json(scorer: &FittedScorer) -> Option<serde_json::Value> {
    let tail = scorer.tail()?;
    let mut value = serde_json::to_value(tail).expect("a tail summary serialises");
    value["note"] = serde_json::json!(
        "p-values marked p_value_extrapolated lie beyond the largest calibration score and come \
         from a generalized Pareto tail fitted to the calibration scores: they hold under that \
         tail model, not by exchangeability alone; the others are conformal"
    );
    Some(value)
}

/// Refuses an output file before any work is done: a path that is a folder, or one whose
/// folder does not exist. `-` (standard output, where a flag takes it) passes.
pub fn check_output_file(path: &Path, flag: &str) -> anyhow::Result<()> {
    if path.as_os_str() == "-" {
        return Ok(());
    }
    anyhow::ensure!(
        !path.is_dir(),
        "{flag} {}: this is a folder; give a file name",
        path.display()
    );
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => anyhow::bail!(
            "{flag} {}: its folder {} does not exist; create it, or write elsewhere",
            path.display(),
            dir.display()
        ),
        _ => Ok(()),
    }
}

/// Creates an output folder before any work is done, so that a path that cannot be one fails
/// at once.
pub fn create_output_folder(dir: &Path, flag: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{flag} {}: cannot create this folder", dir.display()))
}

/// Reads a box set, saying where a file of another kind goes.
pub fn load_boxes(path: &Path) -> anyhow::Result<BoxSet> {
    BoxSet::load(path)
        .with_context(|| format!("reading the box set {}", path.display()))
        .map_err(with_kind_hint)
}

/// Opens a dataset; a data.yaml without the split asked for is answered with --split.
pub fn open_dataset(path: &Path, split: &str) -> anyhow::Result<Dataset> {
    oodbox::data::dataset::open(path, split).map_err(|e| match &e {
        oodbox::error::Error::MissingSplit { available, .. } if !available.is_empty() => {
            anyhow::anyhow!("{e}; choose one with --split")
        }
        _ => anyhow::Error::new(e).context(format!("reading the dataset {}", path.display())),
    })
}
