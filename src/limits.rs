//! Bounds on the sizes that come from outside (a decoded image, a requested input size), so that
//! no file or setting can make oodbox allocate without bound: past a limit, the item is refused
//! with an error naming it instead of aborting the process. Each limit has a default and an
//! environment variable that changes it (docs/limits.md). Tensor and storage sizes in model,
//! box-set and scorer files are bounded by the files' own sizes where they are read.

use std::path::Path;

use crate::error::{Error, Result};

/// Decoded images of more pixels are refused: Pillow's `DecompressionBombError` threshold
/// (2 × `Image.MAX_IMAGE_PIXELS`), which is what ultralytics users meet in Python.
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 2 * 89_478_485;
/// The most bytes an image decoder may allocate (a 16-bit RGBA image of the pixel limit needs
/// more than this; an 8-bit RGB one fits).
pub const DEFAULT_MAX_IMAGE_BYTES: u64 = 1 << 30;
/// The largest network input side: at 4096² a YOLO forward pass already needs a few GB.
pub const DEFAULT_MAX_IMGSZ: u32 = 4096;

/// The most classes a box set may declare. Its logits give the count, and with no boxes that
/// count is backed by no bytes, yet class names are made for each; no detector comes near
/// (LVIS has 1 203 classes, ImageNet-21k 21 841).
pub const MAX_CLASSES: usize = 1_000_000;

pub const MAX_IMAGE_PIXELS_VAR: &str = "OODBOX_MAX_IMAGE_PIXELS";
pub const MAX_IMAGE_BYTES_VAR: &str = "OODBOX_MAX_IMAGE_BYTES";
pub const MAX_IMGSZ_VAR: &str = "OODBOX_MAX_IMGSZ";

/// New limits may be added (hence `#[non_exhaustive]`): start from `Limits::default()` or
/// [`Limits::from_env`] and set the fields to change.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct Limits {
    pub max_image_pixels: u64,
    pub max_image_bytes: u64,
    pub max_imgsz: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_image_pixels: DEFAULT_MAX_IMAGE_PIXELS,
            max_image_bytes: DEFAULT_MAX_IMAGE_BYTES,
            max_imgsz: DEFAULT_MAX_IMGSZ,
        }
    }
}

/// A positive whole number from the environment variable `name`, if it is set.
fn from_env_var(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(Error::OutOfRange {
                item: name.to_string(),
                value: text,
                range: "whole numbers of at least 1".into(),
            }),
        },
    }
}

impl Limits {
    /// The defaults, each replaced by its environment variable when that is set.
    pub fn from_env() -> Result<Self> {
        let default = Limits::default();
        Ok(Limits {
            max_image_pixels: from_env_var(MAX_IMAGE_PIXELS_VAR)?
                .unwrap_or(default.max_image_pixels),
            max_image_bytes: from_env_var(MAX_IMAGE_BYTES_VAR)?.unwrap_or(default.max_image_bytes),
            max_imgsz: from_env_var(MAX_IMGSZ_VAR)?
                .map(|n| n.min(u32::MAX as u64) as u32)
                .unwrap_or(default.max_imgsz),
        })
    }

    /// Refuses an image of `width`×`height` pixels whose decoding takes `bytes`, before any of
    /// it is decoded.
    pub fn check_image(&self, path: &Path, width: u32, height: u32, bytes: u64) -> Result<()> {
        match self.image_excess(width, height, bytes) {
            None => Ok(()),
            Some(reason) => Err(Error::TooLarge {
                path: path.to_path_buf(),
                reason,
            }),
        }
    }

    /// Why an image of `width`×`height` pixels whose decoding takes `bytes` is over a limit,
    /// naming the way to raise it; `None` when it is within every limit.
    pub fn image_excess(&self, width: u32, height: u32, bytes: u64) -> Option<String> {
        let pixels = width as u64 * height as u64;
        if pixels > self.max_image_pixels {
            Some(format!(
                "the image declares {width}×{height} = {pixels} pixels, more than the limit of \
                 {} (set {MAX_IMAGE_PIXELS_VAR} to raise it)",
                self.max_image_pixels
            ))
        } else if bytes > self.max_image_bytes {
            Some(format!(
                "decoding the image takes {bytes} bytes, more than the limit of {} (set \
                 {MAX_IMAGE_BYTES_VAR} to raise it)",
                self.max_image_bytes
            ))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_over_a_limit_are_refused_naming_the_file_and_the_way_out() {
        let limits = Limits::default();
        let path = Path::new("big.png");
        assert!(limits
            .check_image(path, 8000, 6000, 8000 * 6000 * 3)
            .is_ok());
        let err = limits
            .check_image(path, 50000, 50000, 50000 * 50000 * 3)
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("big.png")
                && err.contains("50000×50000")
                && err.contains(MAX_IMAGE_PIXELS_VAR),
            "{err}"
        );
        let err = limits
            .check_image(path, 12000, 12000, 12000 * 12000 * 8)
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains(MAX_IMAGE_BYTES_VAR), "{err}");
    }
}
