//! Loading a detector from a path through a table of families. The file is read once into a
//! [`ModelSource`]; the first family whose probe recognises it loads it. Adding a family is
//! one module and one line in [`FAMILIES`].

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_nn::VarBuilder;

use super::checkpoint::{self, Checkpoint};
use super::safetensors_file::{self, Rename, Store, WeightIndex};
use super::{detr, ultralytics, yolo11, yolo26, yolov8, Detector};
use crate::core::kind::{self, FileKind};
use crate::core::tensor_file;
use crate::error::{Error, Result};

/// A detector family: how to recognise its files and how to load them.
pub struct Family {
    pub name: &'static str,
    /// What it loads, for messages that list what is supported.
    pub describes: &'static str,
    pub probe: fn(&ModelSource) -> bool,
    pub load: fn(ModelSource, &Device) -> Result<Box<dyn Detector>>,
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

/// A weight file: its tensors' names and shapes, its metadata, and the tensors themselves.
pub struct WeightFile {
    pub path: PathBuf,
    pub shapes: HashMap<String, Vec<usize>>,
    /// The safetensors `__metadata__` (`names`, a JSON list; `family`; `imgsz`), or the same
    /// facts read from a checkpoint.
    pub metadata: HashMap<String, String>,
    pub(crate) store: Store,
}

impl WeightFile {
    /// Maps a safetensors file.
    pub fn safetensors(path: &Path) -> Result<WeightFile> {
        let (store, shapes) = safetensors_file::map(path)?;
        Ok(WeightFile {
            path: path.to_path_buf(),
            shapes,
            metadata: tensor_file::metadata(path)?,
            store,
        })
    }

    /// A PyTorch checkpoint's tensors, with the facts it carries as metadata: `names`, the
    /// `family` its architecture names, `task` and the training `imgsz`. A task or family that
    /// oodbox does not run is refused here, by name.
    pub fn checkpoint(path: &Path, checkpoint: Checkpoint) -> Result<WeightFile> {
        let facts = ultralytics::CheckpointFacts::of(&checkpoint);
        if let Some(found) = facts.unsupported() {
            return Err(Error::UnsupportedModel {
                path: path.to_path_buf(),
                found,
            });
        }
        let tensors: HashMap<String, Tensor> = checkpoint.tensors.into_iter().collect();
        let store = Store::Loaded(tensors);
        Ok(WeightFile {
            path: path.to_path_buf(),
            shapes: store.shapes(),
            metadata: facts.metadata(),
            store,
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.shapes.keys().map(String::as_str)
    }

    /// A `VarBuilder` over its tensors (f32 on `device`, model names renamed to file names by
    /// `rename`) and the index that records what was read.
    pub(crate) fn var_builder(
        self,
        rename: Rename,
        device: &Device,
    ) -> (Arc<WeightIndex>, VarBuilder<'static>) {
        safetensors_file::var_builder(&self.path, self.store, self.shapes, rename, device)
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
            let checkpoint = checkpoint::read(path)?;
            return Ok(ModelSource::Weights(WeightFile::checkpoint(
                path, checkpoint,
            )?));
        }
        let wrong_kind = |found| Error::WrongKind {
            path: path.to_path_buf(),
            found,
            expected: FileKind::Model,
        };
        let file = WeightFile::safetensors(path).map_err(|e| match (e, kind::sniff(path)) {
            (_, Some(found)) if found != FileKind::Model => wrong_kind(found),
            (Error::NotSafetensors { reason, .. }, _) => Error::BadModel {
                path: path.to_path_buf(),
                reason: format!("not a model ({reason}); oodbox loads {}", supported()),
            },
            (e, _) => e,
        })?;
        match kind::of_metadata(&file.metadata) {
            FileKind::Model => Ok(ModelSource::Weights(file)),
            found => Err(wrong_kind(found)),
        }
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
        Some(family) => (family.load)(source, device),
        None => Err(Error::BadModel {
            path: path.to_path_buf(),
            reason: format!(
                "not a model: its tensors match no supported family; oodbox loads {}",
                supported()
            ),
        }),
    }
}
