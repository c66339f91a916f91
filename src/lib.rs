//! oodbox: open-set recognition for object detectors.
//!
//! A trained detector (YOLOv8, YOLO11, YOLO26, or DETR from a Hugging Face folder) runs in
//! Candle and keeps, for every box, its raw class logits and the feature vector its classifier
//! saw. Post-hoc OOD scorers, fitted on in-distribution boxes,
//! score each box; a conformal calibrator turns the score into a p-value and an OOD confidence.
//!
//! # Data flow
//!
//! ```text
//! image (a path, encoded bytes or an image::DynamicImage)
//!   │  load_rgb / decode_rgb / rgb_from_image: 8-bit RGB, EXIF orientation applied
//!   ▼
//! Detector (detect/: YOLOv8, YOLO11, YOLO26, DETR)    ── DetectOptions: thresholds, NMS, size
//!   │  detect / detect_batch
//!   ▼
//! BoxRecord per box: bbox, class, confidence, logits, feature (+ ROI features)
//!   │  BoxSet::from_records (data/): many boxes, with their image index, as one set
//!   ▼
//! FittedScorer (ood/): a scorer fitted on in-distribution boxes and a conformal calibrator
//!   │  score
//!   ▼
//! BoxOod per box: score, p-value, OOD confidence, is_ood
//! ```
//!
//! [`OodDetector`] holds a detector and a scorer fitted for it and runs the whole chain; `eval/`
//! measures how well a scorer separates known from unknown boxes, `video/` runs the chain on a
//! stream with tracking, `render/` draws the verdicts.
//!
//! `synth/` (feature `synth`, on with the default `cli` feature) holds test fixtures, not part
//! of the detection API: the synthetic shapes world and its videos, for the `oodbox synth` and
//! `oodbox synth-video` commands, the tests and the examples.
//!
//! The types a user needs are re-exported here, and so are the [`candle_core`] and [`image`]
//! crates whose types the API takes ([`Device`], [`RgbImage`]), so that no version-matched
//! dependency is needed.
//!
//! # Example
//!
//! Load the model and a scorer fitted for it once, then call `detect` per image, or
//! `detect_batch` for several:
//!
//! ```
//! use oodbox::{decode_rgb, load_rgb, Device, OodDetector};
//!
//! // Detects as the scorer's fit boxes were detected (imgsz 256 for the shapes scorer).
//! let detector = OodDetector::load(
//!     "models/shapes.safetensors".as_ref(),
//!     "models/shapes-scorer.safetensors".as_ref(),
//!     &Device::Cpu,
//! )?;
//! let image = load_rgb("assets/images/test_mixed_00001.png".as_ref())?;
//! for d in detector.detect(&image)? {
//!     let verdict = if d.ood.is_ood { "unknown?" } else { "known" };
//!     println!("{} {:.2} at {:?}: OOD confidence {:.2} ({verdict})",
//!         d.class_name, d.record.confidence, d.record.bbox, d.ood.confidence);
//! }
//! // An image in memory, e.g. received over the network, decodes as a file does.
//! let bytes = std::fs::read("assets/images/test_mixed_00002.png")?;
//! let batch = detector.detect_batch(&[image, decode_rgb(&bytes)?])?;
//! println!("{} and {} boxes", batch[0].len(), batch[1].len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`OodDetector`] is `Send + Sync`: one instance can serve several threads.
//!
//! The calibration holds for boxes detected the way the fit and calibration boxes were: same
//! input size and thresholds. Box sets and scorer files record those settings (those the
//! detector's family reads: [`Detector::settings_use`]), [`OodDetector`] starts from them, and
//! [`OodDetector::settings_warning`] says which differ after a change.
//!
//! # Modules and their walls
//!
//! Each module uses only the modules listed for it (and itself); [`error`] and [`limits`] are
//! open to all. A unit test (`src/core/walls.rs`) reads the sources and names any import that
//! crosses a wall.
//!
//! | module | what it holds | may use |
//! |---|---|---|
//! | [`core`] | what every part shares: box geometry, [`BoxRecord`], class heads, detection settings ([`DetectOptions`]), feature sources, file kinds, atomic writes, safetensors helpers | nothing |
//! | [`nn`] | CPU kernels (convolutions, pooling) | nothing |
//! | [`data`] | box sets, datasets, input paths | core |
//! | [`detect`] | the detector families | core, nn |
//! | [`ood`] | scorers, calibration, fitted scorer files | core, data |
//! | [`eval`] | metrics, open-set matching, plots | core, data, ood |
//! | [`render`] | annotated images | all but pipeline and video |
//! | [`pipeline`] | [`OodDetector`], and extraction (a detector over a dataset into a box set) | all but video |
//! | [`video`] | streams, tracking, track evidence | core, data, detect, ood, pipeline, render |
//! | `synth` | test fixtures | core |
//!
//! Test code (`#[cfg(test)]`) is not part of the library and may use any module. One exception
//! remains: [`error`]'s unsupported-model message lists the families of [`detect::supported`].
//! The CLI (`src/cli`, in the binary) may use anything.

pub mod core;
pub mod data;
pub mod detect;
pub mod error;
pub mod eval;
pub mod limits;
pub mod nn;
pub mod ood;
pub mod pipeline;
pub mod render;
#[cfg(feature = "synth")]
pub mod synth;
pub mod video;

pub use crate::core::settings::{DetectOptions, InputSize, Nms, UsedOptions};
pub use crate::core::{BoxRecord, ClassHead, LinearHead};
pub use candle_core;
pub use candle_core::Device;
pub use data::boxset::{BoxParts, BoxSet};
pub use detect::image_io::{decode_rgb, load_rgb, rgb_from_image};
pub use detect::{load_detector, Detector};
pub use error::{Error, Result, ScorerFault};
pub use image;
pub use image::RgbImage;
pub use limits::Limits;
pub use ood::fitted::{BoxOod, FitOptions, FittedScorer};
pub use pipeline::{Detection, OodDetector};
