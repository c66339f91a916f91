//! What kind of oodbox file a path holds, told from its contents, so that a file given where
//! another kind is expected (a box set as a model, a model as a scorer) is named for what it is.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// The kinds of file oodbox reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A detector: a checkpoint, a safetensors model or a Hugging Face folder.
    Model,
    /// Per-box features and logits (`oodbox extract`).
    BoxSet,
    /// A fitted scorer with its calibration (`oodbox fit`).
    Scorer,
    /// A track calibration (fitted on footage of known objects).
    TrackCalibration,
    /// A dataset description: an ultralytics data.yaml or a COCO annotation file.
    Dataset,
    /// An image.
    Image,
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Model => "a detector model",
            FileKind::BoxSet => "an oodbox box set (per-box features and logits)",
            FileKind::Scorer => "an oodbox scorer file (a fitted scorer and its calibration)",
            FileKind::TrackCalibration => "an oodbox track calibration",
            FileKind::Dataset => "a dataset description (a data.yaml or a COCO annotation file)",
            FileKind::Image => "an image",
        })
    }
}

/// The file extensions treated as images when a folder is searched.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "pgm", "ppm",
];

pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Safetensors headers above this are not read here: no oodbox file comes near it.
const MAX_HEADER: u64 = 100 << 20;

/// The kind of oodbox file at `path`, when its contents say; `None` for anything else
/// (a missing file, a safetensors file of no known kind, text of no known shape).
pub fn sniff(path: &Path) -> Option<FileKind> {
    if path.is_dir() {
        return path.join("config.json").exists().then_some(FileKind::Model);
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut start = [0u8; 16];
    let read = file.read(&mut start).ok()?;
    let start = &start[..read];
    if start.starts_with(b"PK\x03\x04") {
        return Some(FileKind::Model);
    }
    if image::guess_format(start).is_ok() {
        return Some(FileKind::Image);
    }
    if let Some(kind) = of_text(path, start) {
        return kind;
    }
    let len = u64::from_le_bytes(start.get(..8)?.try_into().ok()?);
    if len > MAX_HEADER {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.seek(SeekFrom::Start(8)).ok()?;
    file.read_exact(&mut header).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&header).ok()?;
    Some(of_safetensors_header(&json))
}

/// Text files: JSON (a track calibration, a COCO file) or YAML (a data.yaml). `None` when the
/// file is not text of either shape, so that it is read as safetensors.
fn of_text(path: &Path, start: &[u8]) -> Option<Option<FileKind>> {
    let first = start.iter().find(|b| !b.is_ascii_whitespace())?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    if *first != b'{' && !yaml {
        return None;
    }
    if std::fs::metadata(path).ok()?.len() > MAX_HEADER {
        return Some(None);
    }
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = if *first == b'{' {
        serde_json::from_str(&text).ok()?
    } else {
        serde_yaml::from_str(&text).ok()?
    };
    let has = |key: &str| value.get(key).is_some();
    Some(
        if value
            .get("format")
            .and_then(|f| f.as_str())
            .is_some_and(|f| f.starts_with("oodbox track calibration"))
        {
            Some(FileKind::TrackCalibration)
        } else if (has("images") && has("annotations"))
            || has("names") && (has("train") || has("val") || has("test"))
        {
            Some(FileKind::Dataset)
        } else {
            None
        },
    )
}

/// `err`, or the file's kind when its contents show it is not `expected` at all: what a reader
/// returns when a file it was given fails to parse.
pub fn or_wrong_kind(
    path: &Path,
    expected: FileKind,
    err: crate::error::Error,
) -> crate::error::Error {
    match sniff(path) {
        Some(found) if found != expected => crate::error::Error::WrongKind {
            path: path.to_path_buf(),
            found,
            expected,
        },
        _ => err,
    }
}

/// The kind a safetensors header (its JSON) describes: oodbox's own files say so in their
/// metadata; any other safetensors file is taken for a model.
pub fn of_safetensors_header(header: &serde_json::Value) -> FileKind {
    let meta = header.get("__metadata__");
    let get = |key: &str| meta.and_then(|m| m.get(key)).and_then(|v| v.as_str());
    if get("format").is_some_and(|f| f.starts_with("oodbox-boxset")) {
        FileKind::BoxSet
    } else if get("oodbox").is_some() {
        FileKind::Scorer
    } else {
        FileKind::Model
    }
}

/// The kind the metadata of a safetensors file (its `__metadata__` map) describes.
pub fn of_metadata(metadata: &std::collections::HashMap<String, String>) -> FileKind {
    let header = serde_json::json!({ "__metadata__": metadata });
    of_safetensors_header(&header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_oodbox_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let boxes = dir.path().join("boxes.safetensors");
        crate::data::boxset::BoxSet::new(crate::data::boxset::BoxParts {
            class_id: vec![0],
            features: vec![1.0],
            feature_dim: 1,
            logits: vec![0.5],
            num_classes: 1,
            ..Default::default()
        })
        .unwrap()
        .save(&boxes)
        .unwrap();
        assert_eq!(sniff(&boxes), Some(FileKind::BoxSet));
        let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shapes.safetensors");
        assert_eq!(sniff(Path::new(model)), Some(FileKind::Model));
        let track = dir.path().join("track.json");
        std::fs::write(&track, r#"{"format": "oodbox track calibration 1"}"#).unwrap();
        assert_eq!(sniff(&track), Some(FileKind::TrackCalibration));
        assert_eq!(sniff(&dir.path().join("missing")), None);
        let scorer = std::collections::HashMap::from([("oodbox".into(), "{}".into())]);
        assert_eq!(of_metadata(&scorer), FileKind::Scorer);
    }
}
