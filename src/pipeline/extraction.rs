//! Running a detector over a dataset into a box set, labelling each box by its ground truth.

use std::path::PathBuf;

use crate::core::settings::DetectOptions;
use crate::core::BoxRecord;
use crate::data::boxset::{BoxSet, LABEL_BACKGROUND, LABEL_UNKNOWN};
use crate::data::dataset::Dataset;
use crate::detect::fgsm::FgsmBoxes;
use crate::detect::image_io::load_rgb;
use crate::detect::Detector;
use crate::error::{Error, Result};
use crate::eval::openset::match_image;
use crate::eval::{GtBox, PredBox};

/// One processed image.
pub struct ExtractedImage {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Ground truth in pixels, when the dataset has it.
    pub ground_truth: Option<Vec<GtBox>>,
}

pub struct Extraction {
    /// Every kept box; `image_index` points into `images`. `label` is set when every image
    /// has ground truth: the matched object's class, [`LABEL_UNKNOWN`] or [`LABEL_BACKGROUND`].
    pub boxes: BoxSet,
    pub images: Vec<ExtractedImage>,
    pub failed: Vec<(PathBuf, Error)>,
}

/// Ground-truth label of each detection of one image (greedy matching at IoU ≥ 0.5, as in
/// [`crate::eval::openset::match_image`]).
pub fn labels_from_ground_truth(boxes: &[BoxRecord], ground_truth: &[GtBox]) -> Vec<i64> {
    let preds: Vec<PredBox> = boxes
        .iter()
        .map(|b| PredBox {
            bbox: b.bbox,
            class_id: b.class_id,
            confidence: b.confidence as f64,
            is_unknown: false,
        })
        .collect();
    match_image(&preds, ground_truth)
        .pred_gt
        .iter()
        .map(|g| match g.map(|g| ground_truth[g].class) {
            None => LABEL_BACKGROUND,
            Some(None) => LABEL_UNKNOWN,
            Some(Some(c)) => c as i64,
        })
        .collect()
}

/// Detects on every image of `dataset`; an image that fails is recorded in `failed` and the
/// rest go on. `progress` is called after each image. Errors when the boxes cannot form a set:
/// a ground-truth class outside the detector's classes.
pub fn extract(
    detector: &dyn Detector,
    dataset: &Dataset,
    options: &DetectOptions,
    source: &str,
    progress: &mut dyn FnMut(&std::path::Path, Option<&Error>),
) -> Result<Extraction> {
    Ok(extract_with_fgsm(detector, dataset, options, &[], source, progress)?.0)
}

/// [`extract`], also making each image's FGSM surrogate boxes ([`Detector::detect_fgsm`]) for
/// every `ε` of `epsilons` (network input units, [0, 1]): one box set per `ε`, whose boxes are
/// the clean set's in the same order (same image, class, label, box and anchor), their logits,
/// features and ROI features read on the perturbed input.
pub fn extract_with_fgsm(
    detector: &dyn Detector,
    dataset: &Dataset,
    options: &DetectOptions,
    epsilons: &[f32],
    source: &str,
    progress: &mut dyn FnMut(&std::path::Path, Option<&Error>),
) -> Result<(Extraction, Vec<BoxSet>)> {
    let mut records: Vec<(usize, BoxRecord)> = Vec::new();
    let mut perturbed: Vec<Vec<(usize, BoxRecord)>> = vec![Vec::new(); epsilons.len()];
    let mut labels: Option<Vec<i64>> = Some(Vec::new());
    let mut images = Vec::new();
    let mut failed = Vec::new();
    for item in &dataset.images {
        let result = load_rgb(&item.path).and_then(|image| {
            let boxes = if epsilons.is_empty() {
                FgsmBoxes {
                    clean: detector.detect(&image, options)?,
                    perturbed: Vec::new(),
                }
            } else {
                detector.detect_fgsm(&image, options, epsilons)?
            };
            Ok((boxes, image.dimensions()))
        });
        match result {
            Ok((boxes, (width, height))) => {
                let ground_truth: Option<Vec<GtBox>> = item.objects.as_ref().map(|objects| {
                    objects
                        .iter()
                        .map(|o| GtBox {
                            bbox: o.bbox.to_pixels(width, height),
                            class: o.class,
                        })
                        .collect()
                });
                match (&ground_truth, labels.as_mut()) {
                    (Some(gt), Some(l)) => l.extend(labels_from_ground_truth(&boxes.clean, gt)),
                    _ => labels = None,
                }
                let index = images.len();
                records.extend(boxes.clean.into_iter().map(|b| (index, b)));
                for (all, one) in perturbed.iter_mut().zip(boxes.perturbed) {
                    all.extend(one.into_iter().map(|b| (index, b)));
                }
                images.push(ExtractedImage {
                    path: item.path.clone(),
                    width,
                    height,
                    ground_truth,
                });
                progress(&item.path, None);
            }
            Err(e) => {
                progress(&item.path, Some(&e));
                failed.push((item.path.clone(), e));
            }
        }
    }
    let box_set = |records: &[(usize, BoxRecord)], source: &str| -> Result<BoxSet> {
        let mut boxes = BoxSet::from_records(
            records.iter().map(|(i, r)| (*i, r)),
            detector.head(),
            detector.class_names(),
            detector.fingerprint(),
            source,
        )?;
        boxes.set_labels(labels.clone())?;
        boxes.set_detect_options(Some(options.used_by(&detector.settings_use())))?;
        Ok(boxes)
    };
    let surrogates = perturbed
        .iter()
        .zip(epsilons)
        .map(|(records, eps)| box_set(records, &fgsm_source(source, *eps)))
        .collect::<Result<_>>()?;
    let extraction = Extraction {
        boxes: box_set(&records, source)?,
        images,
        failed,
    };
    Ok((extraction, surrogates))
}

/// The `source` of an FGSM box set: the clean set's, and ε (input units and 8-bit levels).
pub fn fgsm_source(source: &str, eps: f32) -> String {
    format!("{source}; FGSM eps={eps} ({} / 255)", eps * 255.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(bbox: [f32; 4], class_id: usize, confidence: f32) -> BoxRecord {
        BoxRecord {
            bbox,
            class_id,
            confidence,
            logits: vec![],
            feature: vec![],
            level: 0,
            anchor: 0,
            roi_features: Vec::new(),
        }
    }

    #[test]
    fn boxes_take_the_label_of_the_object_they_match() {
        let gt = [
            GtBox {
                bbox: [0.0, 0.0, 10.0, 10.0],
                class: Some(2),
            },
            GtBox {
                bbox: [20.0, 20.0, 30.0, 30.0],
                class: None,
            },
        ];
        let boxes = [
            record([0.0, 0.0, 10.0, 9.0], 1, 0.9),
            record([20.0, 21.0, 30.0, 30.0], 0, 0.8),
            record([50.0, 50.0, 60.0, 60.0], 0, 0.7),
            record([0.0, 0.0, 10.0, 10.0], 2, 0.6),
        ];
        // The last box would match the first object, but that object is taken.
        assert_eq!(
            labels_from_ground_truth(&boxes, &gt),
            vec![2, LABEL_UNKNOWN, LABEL_BACKGROUND, LABEL_BACKGROUND]
        );
    }
}
