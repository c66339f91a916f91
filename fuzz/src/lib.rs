//! One function per parser of outside bytes, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/`) and by the stable replay of the corpus and the crash inputs
//! (`tests/fuzz_regressions.rs`, which includes this file as a module).
//!
//! Each function writes the bytes where oodbox would find them (a fresh temporary folder, on
//! tmpfs when there is one) and calls the entry point the CLI calls: the code under test is
//! exactly the code a user's file reaches, mmap and file layout included. A function returns
//! the library's verdict; any panic or abort is the defect being looked for.

use std::path::{Path, PathBuf};

use candle_core::Device;
use oodbox::error::Result;

/// A target: the library's verdict on one input.
pub type Target = fn(&[u8]) -> Result<()>;

/// Every target: its name (the folder under `fuzz/corpus/` and `fuzz/regressions/`) and its
/// function.
pub const TARGETS: &[(&str, Target)] = &[
    ("model", model),
    ("checkpoint", checkpoint),
    ("checkpoint_pickle", checkpoint_pickle),
    ("boxset", boxset),
    ("scorer", scorer),
    ("track_calibration", track_calibration),
    ("data_yaml", data_yaml),
    ("yolo_labels", yolo_labels),
    ("coco_json", coco_json),
    ("detr_config", detr_config),
    ("detr_preprocessor", detr_preprocessor),
    ("image", image),
];

/// A fresh folder for one input, removed when dropped.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("oodbox-fuzz")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("oodbox-fuzz").tempdir()
    };
    dir.expect("a temporary folder")
}

fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("a scratch folder");
    }
    std::fs::write(&path, bytes).expect("a scratch file");
    path
}

/// A weight file given as `--model`: safetensors, or a checkpoint when it starts like a zip.
pub fn model(data: &[u8]) -> Result<()> {
    let dir = scratch();
    let path = put(dir.path(), "model.safetensors", data);
    oodbox::detect::load_detector(&path, &Device::Cpu).map(drop)
}

/// A `torch.save` checkpoint (`best.pt`), listed and then loaded as a model.
pub fn checkpoint(data: &[u8]) -> Result<()> {
    let dir = scratch();
    let path = put(dir.path(), "best.pt", data);
    load_checkpoint(&path)
}

fn load_checkpoint(path: &Path) -> Result<()> {
    oodbox::detect::checkpoint::list(path)?;
    oodbox::detect::load_detector(path, &Device::Cpu).map(drop)
}

/// A checkpoint's `data.pkl`, wrapped in a stored zip with sixteen storages `data/0` to
/// `data/15` of 256 bytes each: the zip's CRCs would reject almost every mutation of a pickle
/// inside a whole checkpoint, so the pickle machine gets a target of its own.
pub fn checkpoint_pickle(data: &[u8]) -> Result<()> {
    let dir = scratch();
    let path = dir.path().join("best.pt");
    write_checkpoint_zip(&path, data);
    load_checkpoint(&path)
}

fn write_checkpoint_zip(path: &Path, pickle: &[u8]) {
    use std::io::Write;
    let file = std::fs::File::create(path).expect("a scratch file");
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut entry = |name: &str, bytes: &[u8]| {
        zip.start_file(format!("archive/{name}"), stored)
            .and_then(|_| zip.write_all(bytes).map_err(Into::into))
            .expect("a zip entry");
    };
    entry("data.pkl", pickle);
    entry("byteorder", b"little");
    for key in 0..16u8 {
        let storage: Vec<u8> = (0..=255u8).map(|i| i.wrapping_mul(key + 1)).collect();
        entry(&format!("data/{key}"), &storage);
    }
    zip.finish().expect("a zip");
}

/// A box set (`fit`, `score`, `eval` inputs), then every box's row read back.
pub fn boxset(data: &[u8]) -> Result<()> {
    let dir = scratch();
    let path = put(dir.path(), "boxes.safetensors", data);
    let set = oodbox::data::boxset::BoxSet::load(&path)?;
    for i in 0..set.len() {
        std::hint::black_box((set.feature(i), set.logit_row(i)));
    }
    Ok(())
}

/// A scorer file (`--scorer`), then scoring 24 boxes of the detector its seeds were fitted for
/// (`fuzz/seeds/score_boxes.safetensors`): what a file's state holds is used only there.
pub fn scorer(data: &[u8]) -> Result<()> {
    let dir = scratch();
    let path = put(dir.path(), "scorer.safetensors", data);
    let scorer = oodbox::ood::fitted::FittedScorer::load(&path)?;
    std::hint::black_box((scorer.name(), scorer.alpha(), scorer.calibration_summary()));
    std::hint::black_box(scorer.score(score_boxes(), Some(0.05))?);
    Ok(())
}

fn score_boxes() -> &'static oodbox::data::boxset::BoxSet {
    static BOXES: std::sync::OnceLock<oodbox::data::boxset::BoxSet> = std::sync::OnceLock::new();
    BOXES.get_or_init(|| {
        let dir = scratch();
        let bytes = include_bytes!("../seeds/score_boxes.safetensors");
        let path = put(dir.path(), "boxes.safetensors", bytes);
        oodbox::data::boxset::BoxSet::load(&path).expect("the committed box set")
    })
}

/// A track calibration (`video --track-calibration`), then checked against a setting and
/// asked for p-values.
pub fn track_calibration(data: &[u8]) -> Result<()> {
    use oodbox::video::calibration::{TrackCalibration, TrackSetting};
    let dir = scratch();
    let path = put(dir.path(), "tracks.json", data);
    let calibration = TrackCalibration::load(&path)?;
    std::hint::black_box((calibration.p_value(0.5), calibration.smallest_p_value()));
    let setting = TrackSetting {
        model: "sha256:m".into(),
        scorer: "sha256:s".into(),
        imgsz: oodbox::InputSize::square(640),
        conf: 0.25,
        fps: 30.0,
        block: 8,
    };
    calibration.check(&path, &setting)
}

/// The layout a `data.yaml` is read in: one image in `images/val` with its label.
const IMAGE: &str = "images/val/a.png";
const LABEL: &str = "labels/val/a.txt";

/// A `data.yaml`, in a folder with one image and its label. Inputs naming paths outside that
/// folder (absolute, `~`, `..`) are skipped: they would make the fuzzer walk this machine's
/// files, which a user's own `data.yaml` may rightly do.
pub fn data_yaml(data: &[u8]) -> Result<()> {
    if leaves_folder(data) {
        return Ok(());
    }
    let dir = scratch();
    put(dir.path(), IMAGE, b"");
    put(dir.path(), LABEL, b"0 0.5 0.5 0.25 0.25\n");
    let yaml = put(dir.path(), "data.yaml", data);
    read_dataset(&yaml)
}

fn leaves_folder(yaml: &[u8]) -> bool {
    fn any_string(value: &serde_yaml::Value, test: &dyn Fn(&str) -> bool) -> bool {
        use serde_yaml::Value;
        match value {
            Value::String(s) => test(s),
            Value::Sequence(items) => items.iter().any(|v| any_string(v, test)),
            Value::Mapping(map) => map
                .iter()
                .any(|(k, v)| any_string(k, test) || any_string(v, test)),
            Value::Tagged(tagged) => any_string(&tagged.value, test),
            _ => false,
        }
    }
    let escapes = |s: &str| s.starts_with(['/', '~']) || s.contains("..") || s.contains('\\');
    match serde_yaml::from_slice::<serde_yaml::Value>(yaml) {
        Ok(doc) => any_string(&doc, &escapes),
        Err(_) => false,
    }
}

/// Reads the `val` split and puts every box in pixels.
fn read_dataset(path: &Path) -> Result<()> {
    let dataset = oodbox::data::dataset::open(path, "val")?;
    for image in &dataset.images {
        for object in image.objects.iter().flatten() {
            std::hint::black_box(object.bbox.to_pixels(640, 480));
        }
    }
    Ok(())
}

/// A YOLO label file, read through a fixed `data.yaml` of four classes.
pub fn yolo_labels(data: &[u8]) -> Result<()> {
    let dir = scratch();
    put(dir.path(), IMAGE, b"");
    put(dir.path(), LABEL, data);
    let yaml = put(
        dir.path(),
        "data.yaml",
        b"val: images/val\nnames: [circle, square, triangle, star]\n",
    );
    read_dataset(&yaml)
}

/// A COCO json.
pub fn coco_json(data: &[u8]) -> Result<()> {
    let dir = scratch();
    put(dir.path(), "a.png", b"");
    let json = put(dir.path(), "instances_val.json", data);
    read_dataset(&json)
}

/// A Hugging Face DETR `config.json`.
pub fn detr_config(data: &[u8]) -> Result<()> {
    let dir = scratch();
    let path = put(dir.path(), "config.json", data);
    oodbox::detect::detr::DetrConfig::load(&path).map(drop)
}

/// A Hugging Face `preprocessor_config.json`, then the input size it gives a few images.
pub fn detr_preprocessor(data: &[u8]) -> Result<()> {
    let dir = scratch();
    let path = put(dir.path(), "preprocessor_config.json", data);
    let processor = oodbox::detect::detr::DetrImageProcessor::load(&path)?;
    for size in [(640, 480), (1, 1), (1, 100_000), (100_000, 3)] {
        std::hint::black_box(processor.output_size(size));
    }
    Ok(())
}

/// An image, decoded as every command decodes its inputs.
pub fn image(data: &[u8]) -> Result<()> {
    let dir = scratch();
    let path = put(dir.path(), "image.png", data);
    oodbox::detect::image_io::load_rgb(&path).map(drop)
}
