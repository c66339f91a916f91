//! Evaluation: OOD metrics, open-set metrics on mixed scenes, detection mAP, and reports.
//!
//! - [`metrics`]: AUROC, FPR@95%TPR, AUPR-In/Out from two score lists (ID-positive, stated in
//!   [`metrics::CONVENTION`]), plus Oodeel 0.4's conventions for parity.
//! - [`openset`]: ground-truth matching of detections ([`openset::MatchKind`]) and the open-set
//!   metrics WI, AOSE, unknown recall and precision.
//! - [`map`]: COCO mAP (AP@[.5:.95], AP50) through `hotcoco`.
//! - [`plots`]: ROC curves and score histograms as PNG.
//!
//! Detections and ground truth enter as one list per image ([`ImagePreds`], [`ImageGt`]), the
//! `i`-th list of predictions belonging to the `i`-th list of ground truth.

pub mod map;
pub mod metrics;
pub mod openset;
pub mod plots;

pub use metrics::{ood_metrics, roc_curve, OodMetrics, CONVENTION};

use serde::{Deserialize, Serialize};

/// One detection to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredBox {
    /// `[x1, y1, x2, y2]` in image pixels.
    pub bbox: [f32; 4],
    /// The class the detector predicted.
    pub class_id: usize,
    /// Ranking score: the detector confidence, or the OOD confidence for boxes relabelled
    /// "unknown" (say which in reports).
    pub confidence: f64,
    /// Whether the box is called unknown/OOD (e.g. the calibrator's `is_ood`). Open-set
    /// metrics treat such a box as a detection of the class "unknown" instead of `class_id`.
    pub is_unknown: bool,
}

/// One ground-truth object.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GtBox {
    /// `[x1, y1, x2, y2]` in image pixels.
    pub bbox: [f32; 4],
    /// The known class, or `None` for an unknown (OOD) object.
    pub class: Option<usize>,
}

/// The detections of one image.
pub type ImagePreds = Vec<PredBox>;
/// The ground truth of one image.
pub type ImageGt = Vec<GtBox>;

/// Checks that predictions and ground truth describe the same images.
fn check_same_images(gt: &[ImageGt], preds: &[ImagePreds]) -> crate::error::Result<()> {
    if gt.len() != preds.len() {
        return Err(crate::error::Error::Eval {
            item: "predictions".into(),
            reason: format!(
                "{} images of predictions for {} images of ground truth",
                preds.len(),
                gt.len()
            ),
        });
    }
    Ok(())
}
