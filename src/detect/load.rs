//! Loading a detector from a path through a table of families. The file is read once into a
//! [`ModelSource`]; the first family whose probe recognises it loads it. Adding a family is
//! one module and one line in [`FAMILIES`].

use candle_core::Device;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{detr, safetensors_file, ultralytics, yolo11, yolo26, yolov8, Detector};
use crate::error::{Error, Result};

/// A detector family: how to recognise its files and how to load them.
pub struct Family {
    pub name: &'static str,
    /// What it loads, for messages that list what is supported.
    pub describes: &'static str,
    pub probe: fn(&ModelSource) -> bool,
    pub load: fn(&ModelSource, &Device) -> Result<Box<dyn Detector>>,
}

/// Every family, most specific probe first.
pub const FAMILIES: &[Family] = &[yolo26::FAMILY, yolo11::FAMILY, yolov8::FAMILY, detr::FAMILY];

/// What the families that oodbox runs load, for error messages.
pub fn supported() -> String {
    let all: Vec<&str> = FAMILIES.iter().map(|f| f.describes).collect();
    all.join(", ")
}

/// What a model path holds, read once so that every family can probe it.
pub enum ModelSource {
    /// A folder (the Hugging Face layout).
    Folder(PathBuf),
    /// A weight file, by its tensors' names and shapes and its metadata.
    Weights(WeightFile),
}

/// A safetensors weight file's table of contents.
pub struct WeightFile {
    pub path: PathBuf,
    pub shapes: HashMap<String, Vec<usize>>,
    /// The safetensors `__metadata__`.
    pub metadata: HashMap<String, String>,
}

impl WeightFile {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
    }
}

impl ModelSource {
    /// Reads what `path` holds, telling the formats apart by their contents.
    pub fn read(path: &Path) -> Result<ModelSource> {
        if path.is_dir() {
            return Ok(ModelSource::Folder(path.to_path_buf()));
        }
        let mut magic = [0u8; 4];
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let read = file.read(&mut magic).map_err(|e| Error::io(path, e))?;
        if read == 4 && &magic == b"PK\x03\x04" {
            return Err(Error::BadModel {
                path: path.to_path_buf(),
                reason: "a zip file (a PyTorch checkpoint?): convert it to .safetensors first"
                    .into(),
            });
        }
        let (_, shapes) = safetensors_file::map(path).map_err(|e| match e {
            Error::NotSafetensors { reason, .. } => Error::BadModel {
                path: path.to_path_buf(),
                reason: format!("not a model ({reason}); oodbox loads {}", supported()),
            },
            e => e,
        })?;
        let metadata = safetensors_file::metadata(path)?;
        Ok(ModelSource::Weights(WeightFile {
            path: path.to_path_buf(),
            shapes,
            metadata,
        }))
    }

    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Folder(path) => path,
            ModelSource::Weights(file) => &file.path,
        }
    }
}

/// Loads the detector at `path`, whichever supported family it is.
pub fn load_detector(path: &Path, device: &Device) -> Result<Box<dyn Detector>> {
    let source = ModelSource::read(path)?;
    if let ModelSource::Weights(file) = &source {
        if let Some(found) = ultralytics::unsupported_layout(&file.shapes) {
            return Err(Error::UnsupportedModel {
                path: path.to_path_buf(),
                found,
            });
        }
    }
    match FAMILIES.iter().find(|family| (family.probe)(&source)) {
        Some(family) => (family.load)(&source, device),
        None => Err(Error::BadModel {
            path: path.to_path_buf(),
            reason: format!(
                "not a model: its tensors match no supported family; oodbox loads {}",
                supported()
            ),
        }),
    }
}
