//! COCO detection mAP through `hotcoco` (a pycocotools-compatible evaluator in Rust).
//!
//! The data sets are built in memory: image `i` becomes COCO image id `i + 1`, known class `c`
//! category id `c + 1`, boxes go from xyxy to COCO's xywh. Standard COCO parameters apply:
//! IoU thresholds 0.50:0.05:0.95, area "all", at most **100 detections per image** (the
//! highest-scored; ultralytics' `max_det` is 300, so a crowded image can lose boxes here,
//! exactly as in pycocotools). Unknown ground-truth objects (`class: None`) are not a COCO
//! category and are left out; a detection on one counts as a false positive of its class.

use std::path::Path;

use hotcoco::params::IouType;
use hotcoco::types::{Annotation, Category, Dataset, Image};
use hotcoco::{COCOeval, COCO};
use serde::Serialize;

use super::{check_same_images, ImageGt, ImagePreds};
use crate::error::{Error, Result};

/// COCO's two headline numbers, in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MapResult {
    /// AP@[.50:.95] (COCOeval `stats[0]`).
    pub map50_95: f64,
    /// AP@.50 (COCOeval `stats[1]`).
    pub map50: f64,
}

/// COCO mAP of `preds` against the known objects of `gt`. Every prediction counts under its
/// `class_id`, flagged unknown or not; use [`without_unknown`] first for "mAP with OOD boxes
/// suppressed". Errors when image counts differ, a class id is ≥ `class_count`, a
/// confidence is NaN, or there is no known GT box at all (COCO's AP is then undefined).
pub fn coco_map(gt: &[ImageGt], preds: &[ImagePreds], class_count: usize) -> Result<MapResult> {
    check_same_images(gt, preds)?;
    let xywh = |b: &[f32; 4]| {
        let [x1, y1, x2, y2] = b.map(f64::from);
        [x1, y1, x2 - x1, y2 - y1]
    };
    let bad_class = |what: &str, i: usize, c: usize| Error::Eval {
        item: format!("{what} of image {i}"),
        reason: format!(
            "class {c} is not a known class ({})",
            crate::data::class_range(class_count)
        ),
    };

    let mut annotations = Vec::new();
    for (i, boxes) in gt.iter().enumerate() {
        for b in boxes {
            let Some(c) = b.class else { continue };
            if c >= class_count {
                return Err(bad_class("ground truth", i, c));
            }
            let bbox = xywh(&b.bbox);
            annotations.push(Annotation {
                id: annotations.len() as u64 + 1,
                image_id: i as u64 + 1,
                category_id: c as u64 + 1,
                area: Some(bbox[2] * bbox[3]),
                bbox: Some(bbox),
                ..Default::default()
            });
        }
    }
    if annotations.is_empty() {
        return Err(Error::Eval {
            item: "ground truth".into(),
            reason: "no known object: COCO mAP is undefined".into(),
        });
    }
    let mut detections = Vec::new();
    for (i, boxes) in preds.iter().enumerate() {
        for p in boxes {
            if p.class_id >= class_count {
                return Err(bad_class("predictions", i, p.class_id));
            }
            detections.push(Annotation {
                image_id: i as u64 + 1,
                category_id: p.class_id as u64 + 1,
                bbox: Some(xywh(&p.bbox)),
                score: Some(p.confidence),
                ..Default::default()
            });
        }
    }
    let dataset = Dataset {
        images: (0..gt.len())
            .map(|i| Image {
                id: i as u64 + 1,
                ..Default::default()
            })
            .collect(),
        annotations,
        categories: (0..class_count)
            .map(|c| Category {
                id: c as u64 + 1,
                name: format!("class{c}"),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let coco_gt = COCO::from_dataset(dataset);
    let coco_dt = coco_gt.load_res_anns(detections).map_err(coco_error)?;
    evaluate(coco_gt, coco_dt)
}

/// COCO mAP from a COCO ground-truth file and a COCO results file (a JSON list of
/// `{image_id, category_id, bbox: [x, y, w, h], score}`), as pycocotools' `loadRes` reads it.
pub fn coco_map_files(gt_json: &Path, results_json: &Path) -> Result<MapResult> {
    let bad = |path: &Path, e: hotcoco::error::Error| Error::BadInput {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let coco_gt = COCO::new(gt_json).map_err(|e| bad(gt_json, e))?;
    let coco_dt = coco_gt
        .load_res(results_json)
        .map_err(|e| bad(results_json, e))?;
    evaluate(coco_gt, coco_dt)
}

/// The predictions with every box flagged unknown removed.
pub fn without_unknown(preds: &[ImagePreds]) -> Vec<ImagePreds> {
    preds
        .iter()
        .map(|p| p.iter().filter(|b| !b.is_unknown).copied().collect())
        .collect()
}

fn evaluate(coco_gt: COCO, coco_dt: COCO) -> Result<MapResult> {
    let mut ev = COCOeval::new(coco_gt, coco_dt, IouType::Bbox);
    ev.evaluate().map_err(coco_error)?;
    ev.accumulate();
    // `summarize_lines` computes the stats without printing (`summarize` prints).
    ev.summarize_lines();
    let stats = ev.stats().unwrap_or_default();
    match stats {
        // −1 is COCO's "no ground truth" sentinel.
        [ap, ap50, ..] if *ap >= 0.0 && *ap50 >= 0.0 => Ok(MapResult {
            map50_95: *ap,
            map50: *ap50,
        }),
        _ => Err(Error::Eval {
            item: "COCO evaluation".into(),
            reason: "no AP computed (no ground truth in the evaluated categories)".into(),
        }),
    }
}

fn coco_error(e: hotcoco::error::Error) -> Error {
    Error::Eval {
        item: "COCO evaluation".into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{GtBox, PredBox};
    use super::*;

    fn gt(bbox: [f32; 4], class: usize) -> GtBox {
        GtBox {
            bbox,
            class: Some(class),
        }
    }

    fn pred(bbox: [f32; 4], class_id: usize, confidence: f64) -> PredBox {
        PredBox {
            bbox,
            class_id,
            confidence,
            is_unknown: false,
        }
    }

    /// COCO averages 101 interpolated precisions, so a perfect AP can come out an ulp short.
    fn is_one(m: MapResult) -> bool {
        (m.map50_95 - 1.0).abs() < 1e-12 && (m.map50 - 1.0).abs() < 1e-12
    }

    fn scene() -> Vec<ImageGt> {
        vec![
            vec![
                gt([10.0, 10.0, 60.0, 60.0], 0),
                gt([100.0, 20.0, 180.0, 90.0], 1),
            ],
            vec![
                gt([5.0, 5.0, 45.0, 85.0], 1),
                GtBox {
                    bbox: [200.0, 200.0, 260.0, 260.0],
                    class: None,
                },
            ],
        ]
    }

    #[test]
    fn perfect_predictions_score_one() {
        let gts = scene();
        let preds: Vec<ImagePreds> = gts
            .iter()
            .map(|g| {
                g.iter()
                    .filter_map(|b| b.class.map(|c| pred(b.bbox, c, 0.9)))
                    .collect()
            })
            .collect();
        let m = coco_map(&gts, &preds, 2).unwrap();
        assert!(is_one(m), "{m:?}");
    }

    #[test]
    fn known_small_case() {
        // Class 0 (one GT box): found at IoU 0.78 (a 50×39 box inside the 50×50 GT), so a TP
        // at the thresholds 0.50..0.75 (6 of 10) and a miss above: AP 0.6 at [.5:.95], 1 at .5.
        // Class 1 (two GT boxes): one exact box outscored by a false positive, the other GT
        // box missed. Precision at recall ½ is ½ at every threshold; COCO's 101-point
        // interpolation reads it on recalls 0..0.5 (51 points) and 0 above: AP = 51/101 · ½.
        let gts = scene();
        let preds = vec![
            vec![
                pred([10.0, 10.0, 60.0, 49.0], 0, 0.9),
                pred([300.0, 300.0, 340.0, 340.0], 1, 0.95),
                pred([100.0, 20.0, 180.0, 90.0], 1, 0.8),
            ],
            vec![],
        ];
        let m = coco_map(&gts, &preds, 2).unwrap();
        let ap1 = 51.0 / 101.0 * 0.5;
        assert!((m.map50_95 - (0.6 + ap1) / 2.0).abs() < 1e-9, "{m:?}");
        assert!((m.map50 - (1.0 + ap1) / 2.0).abs() < 1e-9, "{m:?}");
        // Suppressing a flagged false positive lifts class 1 to recall ½ at precision 1.
        let mut flagged = preds.clone();
        flagged[0][1].is_unknown = true;
        let m = coco_map(&gts, &without_unknown(&flagged), 2).unwrap();
        assert!((m.map50 - (1.0 + 51.0 / 101.0) / 2.0).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn rejects_bad_input() {
        let gts = scene();
        assert!(coco_map(&gts, &[vec![], vec![]], 1).is_err()); // GT class 1 out of range
        assert!(coco_map(&gts, &[vec![pred([0.0; 4], 2, 0.5)], vec![]], 2).is_err());
        assert!(coco_map(&gts, &[vec![]], 2).is_err());
        let only_unknown = vec![vec![GtBox {
            bbox: [0.0, 0.0, 1.0, 1.0],
            class: None,
        }]];
        assert!(coco_map(&only_unknown, &[vec![]], 2).is_err());
        assert!(coco_map(&gts, &[vec![pred([0.0; 4], 0, f64::NAN)], vec![]], 2).is_err());
        // No predictions at all: AP 0, not an error.
        let m = coco_map(&gts, &[vec![], vec![]], 2).unwrap();
        assert_eq!(
            m,
            MapResult {
                map50_95: 0.0,
                map50: 0.0
            }
        );
    }

    #[test]
    fn reads_coco_files() {
        let dir = tempfile::tempdir().unwrap();
        let gt_path = dir.path().join("gt.json");
        let dt_path = dir.path().join("dt.json");
        std::fs::write(
            &gt_path,
            r#"{"images": [{"id": 1, "width": 100, "height": 100}],
                "categories": [{"id": 1, "name": "a"}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                 "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}]}"#,
        )
        .unwrap();
        std::fs::write(
            &dt_path,
            r#"[{"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9}]"#,
        )
        .unwrap();
        let m = coco_map_files(&gt_path, &dt_path).unwrap();
        assert!(is_one(m), "{m:?}");
        assert!(coco_map_files(&dir.path().join("missing.json"), &dt_path).is_err());
    }
}
