//! oodbox: open-set recognition for object detectors.
//!
//! A trained detector (YOLOv8, or DETR from a Hugging Face folder) runs in Candle and keeps, for every box, its raw class logits and
//! the feature vector its classifier saw. Post-hoc OOD scorers, fitted on in-distribution boxes,
//! score each box; a conformal calibrator turns the score into a p-value and an OOD confidence.
//!
//! Load the model and a scorer fitted for it once, then call `detect` per image:
//!
//! ```
//! use oodbox::detect::image_io::load_rgb;
//! use oodbox::pipeline::OodDetector;
//!
//! // Detects as the scorer's fit boxes were detected (imgsz 256 for the shapes scorer).
//! let detector = OodDetector::load(
//!     "models/shapes.safetensors".as_ref(),
//!     "models/shapes-scorer.safetensors".as_ref(),
//!     &candle_core::Device::Cpu,
//! )?;
//! let image = load_rgb("assets/images/test_mixed_00001.png".as_ref())?;
//! for d in detector.detect(&image)? {
//!     let verdict = if d.ood.is_ood { "unknown?" } else { "known" };
//!     println!("{} {:.2} at {:?}: OOD confidence {:.2} ({verdict})",
//!         d.class_name, d.record.confidence, d.record.bbox, d.ood.confidence);
//! }
//! # Ok::<(), oodbox::error::Error>(())
//! ```
//!
//! [`pipeline::OodDetector`] is `Send + Sync`: one instance can serve several threads.
//!
//! The calibration holds for boxes detected the way the fit and calibration boxes were: same
//! input size and thresholds. Box sets and scorer files record those settings, and
//! [`pipeline::OodDetector`] starts from them.

pub mod data;
pub mod detect;
pub mod error;
pub mod eval;
pub mod limits;
pub mod nn;
pub mod ood;
pub mod pipeline;
pub mod render;
pub mod video;
