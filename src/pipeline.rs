//! [`OodDetector`]: a detector and a fitted scorer together, the one object a perception stack
//! holds. Load both once, then call [`OodDetector::detect`] per image.

use candle_core::Device;
use image::RgbImage;
use serde::Serialize;
use std::path::Path;

pub mod extraction;

use crate::core::settings::DetectOptions;
use crate::core::sources::missing_message;
use crate::core::BoxRecord;
use crate::data::boxset::BoxSet;
use crate::detect::{load_detector, Detector};
use crate::error::{Error, Result, ScorerFault};
use crate::ood::fitted::{BoxOod, FittedScorer};

/// One detection with its OOD verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    #[serde(flatten)]
    pub record: BoxRecord,
    pub class_name: String,
    pub ood: BoxOod,
}

/// A detector with a scorer fitted for it. `Send + Sync`: share one across threads.
pub struct OodDetector {
    detector: Box<dyn Detector>,
    scorer: FittedScorer,
    /// How to detect: by default as the scorer's fit boxes were detected (when the scorer file
    /// records it), since the p-values hold for boxes detected that way; see
    /// [`OodDetector::settings_warning`] after changing it. Its `roi` must include the scorer's
    /// ROI sources.
    pub options: DetectOptions,
    /// Significance level for `is_ood`; the scorer file's unless changed.
    pub alpha: f64,
}

impl OodDetector {
    /// Pairs a detector with a scorer, refusing a scorer fitted for another model.
    pub fn new(detector: Box<dyn Detector>, scorer: FittedScorer) -> Result<Self> {
        if !scorer.fingerprint().is_empty() && scorer.fingerprint() != detector.fingerprint() {
            return Err(Error::Scorer {
                scorer: scorer.name(),
                fault: ScorerFault::Mismatch,
                reason: format!(
                    "fitted for model {}, not for this model ({})",
                    scorer.fingerprint(),
                    detector.fingerprint()
                ),
            });
        }
        let layers = detector.feature_layers();
        let missing = scorer.feature_sources().missing_from(&layers);
        if !missing.is_empty() {
            return Err(Error::Scorer {
                scorer: scorer.name(),
                fault: ScorerFault::Mismatch,
                reason: missing_message(&missing, detector.family(), &layers),
            });
        }
        let alpha = scorer.alpha();
        let mut options = scorer
            .detect_options()
            .map(|used| used.options())
            .unwrap_or_default();
        // Only the maps the scorer reads are ROI-aligned: they cost time.
        options.roi = scorer.feature_sources().roi();
        Ok(OodDetector {
            detector,
            scorer,
            options,
            alpha,
        })
    }

    /// Loads a model (a YOLOv8 safetensors file or a DETR folder) and a scorer file.
    pub fn load(model: &Path, scorer: &Path, device: &Device) -> Result<Self> {
        let detector = load_detector(model, device)?;
        Self::new(detector, FittedScorer::load(scorer)?)
    }

    pub fn detector(&self) -> &dyn Detector {
        self.detector.as_ref()
    }

    pub fn scorer(&self) -> &FittedScorer {
        &self.scorer
    }

    /// Why the p-values may not hold for boxes detected with [`OodDetector::options`]: the
    /// settings that differ from those the scorer's fit boxes were detected with, among those
    /// this detector reads. `None` when they agree, or when the scorer file does not record
    /// them.
    pub fn settings_warning(&self) -> Option<String> {
        let fitted = self.scorer.detect_options()?;
        let now = self.options.used_by(&self.detector.settings_use());
        let differences = fitted.differences(&now);
        (!differences.is_empty()).then(|| {
            format!(
                "the scorer was calibrated on boxes detected otherwise: {}; its p-values may \
                 not hold",
                differences.join(", ")
            )
        })
    }

    /// Detects, then scores every box.
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Detection>> {
        let records = self.detector.detect(image, &self.options)?;
        self.score(records)
    }

    /// Detects on several images, then scores all their boxes in one call: the detections of
    /// `images[i]` are at index `i`, the same as [`OodDetector::detect`] gives for that image.
    pub fn detect_batch(&self, images: &[RgbImage]) -> Result<Vec<Vec<Detection>>> {
        let per_image = self.detector.detect_batch(images, &self.options)?;
        let counts: Vec<usize> = per_image.iter().map(Vec::len).collect();
        let records = per_image
            .into_iter()
            .enumerate()
            .flat_map(|(i, boxes)| boxes.into_iter().map(move |b| (i, b)))
            .collect();
        let mut scored = self.score_indexed(records)?.into_iter();
        Ok(counts
            .into_iter()
            .map(|n| scored.by_ref().take(n).collect())
            .collect())
    }

    /// Scores boxes this detector produced.
    pub fn score(&self, records: Vec<BoxRecord>) -> Result<Vec<Detection>> {
        self.score_indexed(records.into_iter().map(|r| (0, r)).collect())
    }

    /// Scores boxes this detector produced, each with the index of its image.
    fn score_indexed(&self, records: Vec<(usize, BoxRecord)>) -> Result<Vec<Detection>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let d = self.detector.as_ref();
        let set = BoxSet::from_records(
            records.iter().map(|(i, r)| (*i, r)),
            d.head(),
            d.class_names(),
            d.fingerprint(),
            "",
        )?;
        let verdicts = self.scorer.score(&set, Some(self.alpha))?;
        Ok(records
            .into_iter()
            .zip(verdicts)
            .map(|((_, record), ood)| Detection {
                class_name: d.class_names()[record.class_id].clone(),
                record,
                ood,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<OodDetector>();
    }
}
