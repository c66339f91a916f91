//! Detections against ground truth in scenes that mix known and unknown objects.
//!
//! Two views, each matching the way its reference computes it:
//!
//! - **GT-matched groups** ([`match_image`], [`match_dataset`]; after NAPTRON, ECAI'23): one
//!   class-agnostic greedy matching per image, by descending detector confidence, IoU ≥ 0.5,
//!   every GT box matched at most once. Each prediction then falls in one [`MatchKind`]; OOD
//!   scores of `IdTp` (positives) against `Ood` (negatives) feed [`super::metrics`].
//! - **Open-set metrics** ([`open_set_metrics`]; WI after Dhamija et al., WACV'20): WI, AOSE,
//!   unknown recall and precision as opendet2's `PascalVOCDetectionEvaluator` (after ORE)
//!   computes them, with predictions flagged `is_unknown` forming the class "unknown". That
//!   evaluator works per class, VOC style: a detection overlaps a GT box when IoU **> 0.5**
//!   (strictly), it tries only the best-overlapping GT box, and a second detection of a taken GT
//!   box is a false positive.
//!
//! IoU is 0-based (`crate::core::geometry::iou`, no VOC "+1" pixel), like the rest of the crate.

use serde::Serialize;

use super::{check_same_images, GtBox, ImageGt, ImagePreds, PredBox};
use crate::core::geometry::iou;
use crate::error::{Error, Result};

/// IoU a prediction needs with a GT box to match it (≥) in [`match_image`]; the open-set
/// metrics need more than it (>), as in opendet2.
pub const MATCH_IOU: f32 = 0.5;

/// Recall level at which [`open_set_metrics`] reads WI (opendet2's `recall_level = 0.8`).
pub const WI_RECALL_LEVEL: f64 = 0.8;

/// The group of a prediction in the GT-matched protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchKind {
    /// Matches a known GT box of the predicted class: a positive (ID) for OOD metrics.
    IdTp,
    /// Matches a known GT box of another class: reported apart (misclassification).
    IdMisclassified,
    /// Matches an unknown GT box: a negative (OOD) for OOD metrics.
    Ood,
    /// Matches nothing: reported apart (how often such boxes are flagged OOD).
    Background,
}

/// The matching of one image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageMatch {
    /// Per prediction, in input order.
    pub kinds: Vec<MatchKind>,
    /// Per prediction, the index of the GT box it matched.
    pub pred_gt: Vec<Option<usize>>,
    /// Per GT box, the index of the prediction that matched it.
    pub gt_pred: Vec<Option<usize>>,
}

/// Greedy matching of one image: predictions by descending confidence (ties in input order);
/// each takes, among the GT boxes still free, the one of highest IoU (the first on ties)
/// provided that IoU ≥ [`MATCH_IOU`]. Class-agnostic, so that a box on a known object of
/// another class, or on an unknown object, is found rather than counted as background.
pub fn match_image(preds: &[PredBox], gt: &[GtBox]) -> ImageMatch {
    let mut order: Vec<usize> = (0..preds.len()).collect();
    order.sort_by(|&a, &b| preds[b].confidence.total_cmp(&preds[a].confidence));
    let mut pred_gt = vec![None; preds.len()];
    let mut gt_pred = vec![None; gt.len()];
    for p in order {
        let mut best: Option<(usize, f32)> = None;
        for (g, gt_box) in gt.iter().enumerate() {
            if gt_pred[g].is_some() {
                continue;
            }
            let o = iou(&preds[p].bbox, &gt_box.bbox);
            if o >= MATCH_IOU && best.is_none_or(|(_, b)| o > b) {
                best = Some((g, o));
            }
        }
        if let Some((g, _)) = best {
            pred_gt[p] = Some(g);
            gt_pred[g] = Some(p);
        }
    }
    let kinds = preds
        .iter()
        .zip(&pred_gt)
        .map(|(p, g)| match g.map(|g| gt[g].class) {
            None => MatchKind::Background,
            Some(None) => MatchKind::Ood,
            Some(Some(c)) if c == p.class_id => MatchKind::IdTp,
            Some(Some(_)) => MatchKind::IdMisclassified,
        })
        .collect();
    ImageMatch {
        kinds,
        pred_gt,
        gt_pred,
    }
}

/// Counts of the GT-matched protocol over a data set.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MatchSummary {
    pub id_tp: usize,
    pub id_misclassified: usize,
    pub ood: usize,
    pub background: usize,
    /// Background predictions flagged `is_unknown` (for "rate flagged OOD").
    pub background_flagged: usize,
    /// Known GT boxes.
    pub id_gt: usize,
    /// Unknown GT boxes.
    pub ood_gt: usize,
    /// Unknown GT boxes no prediction matched.
    pub missed_ood: usize,
    /// `(ood_gt − missed_ood) / ood_gt`: the detector's recall of unknown objects, whatever
    /// the OOD verdict; `None` without unknown GT boxes.
    pub ood_object_recall: Option<f64>,
}

/// [`match_image`] over every image, with the totals. Errors when the image counts differ.
pub fn match_dataset(
    gt: &[ImageGt],
    preds: &[ImagePreds],
) -> Result<(Vec<ImageMatch>, MatchSummary)> {
    check_same_images(gt, preds)?;
    let mut s = MatchSummary::default();
    let matches: Vec<ImageMatch> = gt
        .iter()
        .zip(preds)
        .map(|(g, p)| match_image(p, g))
        .collect();
    for ((m, g), p) in matches.iter().zip(gt).zip(preds) {
        for (kind, pred) in m.kinds.iter().zip(p) {
            match kind {
                MatchKind::IdTp => s.id_tp += 1,
                MatchKind::IdMisclassified => s.id_misclassified += 1,
                MatchKind::Ood => s.ood += 1,
                MatchKind::Background => {
                    s.background += 1;
                    s.background_flagged += usize::from(pred.is_unknown);
                }
            }
        }
        for (gt_box, matched) in g.iter().zip(&m.gt_pred) {
            match gt_box.class {
                Some(_) => s.id_gt += 1,
                None => {
                    s.ood_gt += 1;
                    s.missed_ood += usize::from(matched.is_none());
                }
            }
        }
    }
    s.ood_object_recall =
        (s.ood_gt > 0).then(|| (s.ood_gt - s.missed_ood) as f64 / s.ood_gt as f64);
    Ok((matches, s))
}

/// OOD scores split by [`MatchKind`], ready for [`super::metrics::ood_metrics`]
/// (`id_tp` as ID, `ood` as OOD).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupScores {
    pub id_tp: Vec<f64>,
    pub id_misclassified: Vec<f64>,
    pub ood: Vec<f64>,
    pub background: Vec<f64>,
}

/// Splits per-prediction OOD scores (same shape as the predictions) by match group.
pub fn group_scores(matches: &[ImageMatch], scores: &[Vec<f64>]) -> Result<GroupScores> {
    let mut out = GroupScores::default();
    if matches.len() != scores.len() {
        return Err(Error::Eval {
            item: "scores".into(),
            reason: format!(
                "{} images for {} matched images",
                scores.len(),
                matches.len()
            ),
        });
    }
    for (i, (m, s)) in matches.iter().zip(scores).enumerate() {
        if m.kinds.len() != s.len() {
            return Err(Error::Eval {
                item: format!("scores of image {i}"),
                reason: format!("{} scores for {} predictions", s.len(), m.kinds.len()),
            });
        }
        for (kind, &score) in m.kinds.iter().zip(s) {
            match kind {
                MatchKind::IdTp => out.id_tp.push(score),
                MatchKind::IdMisclassified => out.id_misclassified.push(score),
                MatchKind::Ood => out.ood.push(score),
                MatchKind::Background => out.background.push(score),
            }
        }
    }
    Ok(out)
}

/// Open-set detection metrics (opendet2 / ORE definitions, IoU > 0.5, VOC-style matching).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpenSetMetrics {
    /// Wilderness Impact (Dhamija et al., WACV'20) as opendet2 computes it: for each known
    /// class with detections and GT boxes, walk its detections (flagged-unknown ones excluded)
    /// by descending confidence and stop at the first rank whose recall is closest to
    /// [`Self::wi_recall_level`]; there take `FP_open` = detections so far that overlap an
    /// unknown GT box (IoU > 0.5) and `TP + FP` = detections so far. `WI = mean(FP_open) /
    /// mean(TP + FP)` over those classes; 0 when no class qualifies. A fraction: opendet2
    /// tables print it ×100.
    pub wi: f64,
    pub wi_recall_level: f64,
    /// Absolute Open-Set Error: the number of known-class detections (flagged-unknown ones
    /// excluded, every confidence) that overlap an unknown GT box with IoU > 0.5, summed over
    /// classes. It counts detections, as opendet2 does: one unknown object detected twice as
    /// known counts twice. Only comparable on the same split.
    pub aose: usize,
    /// Unknown recall (ORE's U-Recall, opendet2's R@U): unknown GT boxes matched by a
    /// flagged-unknown detection (VOC matching, IoU > 0.5) over all unknown GT boxes; `None`
    /// without unknown GT boxes.
    pub unknown_recall: Option<f64>,
    /// Unknown precision (opendet2's P@U): matched flagged-unknown detections over all
    /// flagged-unknown detections; `None` without any.
    pub unknown_precision: Option<f64>,
    /// AP50 of the class "unknown" (opendet2's AP@U), VOC all-point interpolation; `None`
    /// without unknown GT boxes.
    pub ap_unknown: Option<f64>,
    /// AP50 averaged over the known classes that have GT boxes (opendet2's AP@K / mAP_K),
    /// VOC all-point interpolation; `None` when no known class has GT boxes.
    pub map_known: Option<f64>,
    pub n_unknown_gt: usize,
    pub n_unknown_pred: usize,
    pub n_unknown_tp: usize,
}

/// [`open_set_metrics_at`] at the standard recall level [`WI_RECALL_LEVEL`].
pub fn open_set_metrics(
    gt: &[ImageGt],
    preds: &[ImagePreds],
    class_count: usize,
) -> Result<OpenSetMetrics> {
    open_set_metrics_at(gt, preds, class_count, WI_RECALL_LEVEL)
}

/// Open-set metrics, WI read at `recall_level`. Predictions flagged `is_unknown` are
/// detections of the class "unknown" (their `class_id` is ignored); the others count under
/// `class_id`. Errors when image counts differ or a known class id is ≥ `class_count`.
pub fn open_set_metrics_at(
    gt: &[ImageGt],
    preds: &[ImagePreds],
    class_count: usize,
    recall_level: f64,
) -> Result<OpenSetMetrics> {
    check_same_images(gt, preds)?;
    check_classes(gt, preds, class_count)?;

    let mut aose = 0;
    let (mut fp_open_sum, mut tp_fp_sum, mut wi_classes) = (0.0, 0.0, 0usize);
    let mut known_aps = Vec::new();
    for c in 0..class_count {
        let dets = ranked(preds, |p| !p.is_unknown && p.class_id == c);
        let walk = voc_walk(gt, &dets, |g| g.class == Some(c));
        // FP_open: detections of this known class lying on an unknown object.
        let on_unknown: Vec<bool> = dets
            .iter()
            .map(|&(i, p)| {
                gt[i]
                    .iter()
                    .filter(|g| g.class.is_none())
                    .any(|g| iou(&p.bbox, &g.bbox) > MATCH_IOU)
            })
            .collect();
        aose += on_unknown.iter().filter(|&&u| u).count();
        if walk.n_gt == 0 {
            // Recall is undefined (opendet2 divides by zero here); the class is left out.
            continue;
        }
        known_aps.push(walk.ap());
        if let Some(k) = walk.closest_to_recall(recall_level) {
            fp_open_sum += on_unknown[..=k].iter().filter(|&&u| u).count() as f64;
            tp_fp_sum += (k + 1) as f64;
            wi_classes += 1;
        }
    }
    // mean(FP_open) / mean(TP + FP) over the same classes is the ratio of the sums.
    let wi = if wi_classes > 0 {
        fp_open_sum / tp_fp_sum
    } else {
        0.0
    };

    let unknown_dets = ranked(preds, |p| p.is_unknown);
    let unknown = voc_walk(gt, &unknown_dets, |g| g.class.is_none());
    let n_tp = unknown.tp_cum.last().copied().unwrap_or(0);
    let n_pred = unknown_dets.len();
    Ok(OpenSetMetrics {
        wi,
        wi_recall_level: recall_level,
        aose,
        unknown_recall: (unknown.n_gt > 0).then(|| n_tp as f64 / unknown.n_gt as f64),
        unknown_precision: (n_pred > 0).then(|| n_tp as f64 / n_pred as f64),
        ap_unknown: (unknown.n_gt > 0).then(|| unknown.ap()),
        map_known: (!known_aps.is_empty())
            .then(|| known_aps.iter().sum::<f64>() / known_aps.len() as f64),
        n_unknown_gt: unknown.n_gt,
        n_unknown_pred: n_pred,
        n_unknown_tp: n_tp,
    })
}

fn check_classes(gt: &[ImageGt], preds: &[ImagePreds], class_count: usize) -> Result<()> {
    for (i, (g, p)) in gt.iter().zip(preds).enumerate() {
        if let Some(c) = g.iter().filter_map(|b| b.class).find(|&c| c >= class_count) {
            return Err(Error::Eval {
                item: format!("ground truth of image {i}"),
                reason: format!(
                    "class {c} is not a known class ({})",
                    crate::data::class_range(class_count)
                ),
            });
        }
        if let Some(b) = p
            .iter()
            .find(|b| !b.is_unknown && b.class_id >= class_count)
        {
            return Err(Error::Eval {
                item: format!("predictions of image {i}"),
                reason: format!(
                    "class {} is not a known class ({})",
                    b.class_id,
                    crate::data::class_range(class_count)
                ),
            });
        }
    }
    Ok(())
}

/// The predictions `keep` selects, with their image index, by descending confidence (ties
/// in image then input order).
fn ranked(preds: &[ImagePreds], keep: impl Fn(&PredBox) -> bool) -> Vec<(usize, &PredBox)> {
    let mut dets: Vec<(usize, &PredBox)> = preds
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.iter().filter(|b| keep(b)).map(move |b| (i, b)))
        .collect();
    dets.sort_by(|a, b| b.1.confidence.total_cmp(&a.1.confidence));
    dets
}

/// One class of a VOC `voc_eval`: cumulative true positives along the ranked detections.
struct VocWalk {
    n_gt: usize,
    tp_cum: Vec<usize>,
}

/// VOC matching of ranked detections against the GT boxes `target` selects: each detection
/// looks only at its best-overlapping target box; IoU > 0.5 and the box still free makes a
/// true positive, anything else a false positive.
fn voc_walk(
    gt: &[ImageGt],
    dets: &[(usize, &PredBox)],
    target: impl Fn(&GtBox) -> bool,
) -> VocWalk {
    let mut taken: Vec<Vec<bool>> = gt.iter().map(|g| vec![false; g.len()]).collect();
    let n_gt = gt.iter().flatten().filter(|g| target(g)).count();
    let mut tp = 0;
    let mut tp_cum = Vec::with_capacity(dets.len());
    for &(i, p) in dets {
        let mut best: Option<(usize, f32)> = None;
        for (g, gt_box) in gt[i].iter().enumerate() {
            if target(gt_box) {
                let o = iou(&p.bbox, &gt_box.bbox);
                if best.is_none_or(|(_, b)| o > b) {
                    best = Some((g, o));
                }
            }
        }
        if let Some((g, o)) = best {
            if o > MATCH_IOU && !taken[i][g] {
                taken[i][g] = true;
                tp += 1;
            }
        }
        tp_cum.push(tp);
    }
    VocWalk { n_gt, tp_cum }
}

impl VocWalk {
    /// The first rank whose recall is closest to `level` (opendet2's
    /// `min(range(len(rec)), key=|rec - level|)`); `None` without detections.
    fn closest_to_recall(&self, level: f64) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (k, &tp) in self.tp_cum.iter().enumerate() {
            let d = (tp as f64 / self.n_gt as f64 - level).abs();
            if best.is_none_or(|(_, b)| d < b) {
                best = Some((k, d));
            }
        }
        best.map(|(k, _)| k)
    }

    /// VOC all-point AP: area under the precision envelope, summed where recall changes.
    fn ap(&self) -> f64 {
        // Envelope: best precision at this rank or any later one.
        let mut envelope = vec![0.0; self.tp_cum.len()];
        let mut best = 0.0f64;
        for (k, &tp) in self.tp_cum.iter().enumerate().rev() {
            best = best.max(tp as f64 / (k + 1) as f64);
            envelope[k] = best;
        }
        let mut ap = 0.0;
        let mut prev_recall = 0.0;
        for (&tp, &precision) in self.tp_cum.iter().zip(&envelope) {
            let recall = tp as f64 / self.n_gt as f64;
            if recall != prev_recall {
                ap += (recall - prev_recall) * precision;
                prev_recall = recall;
            }
        }
        ap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pred(bbox: [f32; 4], class_id: usize, confidence: f64, is_unknown: bool) -> PredBox {
        PredBox {
            bbox,
            class_id,
            confidence,
            is_unknown,
        }
    }

    fn gt(bbox: [f32; 4], class: Option<usize>) -> GtBox {
        GtBox { bbox, class }
    }

    const A: [f32; 4] = [0.0, 0.0, 10.0, 10.0];
    const B: [f32; 4] = [20.0, 0.0, 30.0, 10.0];
    const C: [f32; 4] = [40.0, 0.0, 50.0, 10.0];
    /// IoU 0.8 with A.
    const A_SHIFT: [f32; 4] = [0.0, 0.0, 10.0, 8.0];
    const FAR: [f32; 4] = [100.0, 100.0, 110.0, 110.0];

    #[test]
    fn match_kinds() {
        let gts = [gt(A, Some(0)), gt(B, Some(1)), gt(C, None)];
        let preds = [
            pred(A, 0, 0.9, false),       // ID-TP
            pred(B, 0, 0.8, false),       // on class 1: misclassified
            pred(C, 1, 0.7, true),        // on the unknown object
            pred(FAR, 0, 0.6, true),      // nothing there
            pred(A_SHIFT, 0, 0.5, false), // A already taken: background
        ];
        let m = match_image(&preds, &gts);
        use MatchKind::*;
        assert_eq!(
            m.kinds,
            [IdTp, IdMisclassified, Ood, Background, Background]
        );
        assert_eq!(m.pred_gt, [Some(0), Some(1), Some(2), None, None]);
        assert_eq!(m.gt_pred, [Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn matching_is_greedy_by_confidence() {
        // The lower-confidence exact box comes first in the input but the confident shifted
        // one takes the GT box.
        let gts = [gt(A, Some(0))];
        let preds = [pred(A, 0, 0.3, false), pred(A_SHIFT, 0, 0.9, false)];
        let m = match_image(&preds, &gts);
        assert_eq!(m.kinds, [MatchKind::Background, MatchKind::IdTp]);
        // With two free GT boxes a prediction takes the one of highest IoU.
        let gts = [gt(A_SHIFT, None), gt(A, Some(0))];
        let m = match_image(&[pred(A, 0, 0.5, false)], &gts);
        assert_eq!(m.kinds, [MatchKind::IdTp]);
        // IoU exactly 0.5 matches (≥).
        let half = [0.0, 0.0, 10.0, 5.0];
        assert_eq!(iou(&half, &A), 0.5);
        let m = match_image(&[pred(half, 0, 0.5, false)], &[gt(A, Some(0))]);
        assert_eq!(m.kinds, [MatchKind::IdTp]);
    }

    #[test]
    fn dataset_summary_and_groups() {
        let gts = vec![
            vec![gt(A, Some(0)), gt(C, None)],
            vec![gt(B, None), gt(C, None)],
        ];
        let preds = vec![
            vec![pred(A, 0, 0.9, false), pred(FAR, 1, 0.4, true)],
            vec![pred(B, 1, 0.8, true)],
        ];
        let (matches, s) = match_dataset(&gts, &preds).unwrap();
        assert_eq!(
            (s.id_tp, s.id_misclassified, s.ood, s.background),
            (1, 0, 1, 1)
        );
        assert_eq!(
            (s.background_flagged, s.id_gt, s.ood_gt, s.missed_ood),
            (1, 1, 3, 2)
        );
        assert_eq!(s.ood_object_recall, Some(1.0 / 3.0));
        let g = group_scores(&matches, &[vec![0.1, 0.2], vec![0.3]]).unwrap();
        assert_eq!(
            (g.id_tp, g.ood, g.background),
            (vec![0.1], vec![0.3], vec![0.2])
        );
        assert!(group_scores(&matches, &[vec![0.1], vec![0.3]]).is_err());
        assert!(match_dataset(&gts, &preds[..1]).is_err());
    }

    /// Two known classes, three unknown objects; hand-computed metrics.
    #[test]
    fn open_set_hand_case() {
        let gts = vec![
            // Image 0: one object of class 0 and one unknown.
            vec![gt(A, Some(0)), gt(B, None)],
            // Image 1: two objects of class 0 and two unknowns.
            vec![gt(A, Some(0)), gt(B, Some(0)), gt(C, None), gt(FAR, None)],
        ];
        let preds = vec![
            vec![
                pred(A, 0, 0.95, false),     // class 0 TP
                pred(B, 0, 0.90, false),     // class 0 on the unknown: FP, open-set error
                pred(B, 1, 0.50, false),     // class 1 on the unknown: open-set error
                pred(A_SHIFT, 0, 0.3, true), // unknown-labelled on a known object: U-FP
            ],
            vec![
                pred(A, 0, 0.85, false), // class 0 TP
                pred(C, 0, 0.80, false), // class 0 on an unknown: FP, open-set error
                pred(B, 0, 0.70, false), // class 0 TP
                pred(C, 1, 0.60, true),  // unknown-labelled on C: U-TP
                pred(C, 1, 0.55, true),  // duplicate on C: U-FP
            ],
        ];
        let m = open_set_metrics(&gts, &preds, 2).unwrap();
        // Class 0 ranked: TP(.95) FP-open(.90) TP(.85) FP-open(.80) TP(.70), 3 GT boxes:
        // recalls 1/3 1/3 2/3 2/3 1 -> closest to 0.8 is 2/3 first reached at rank 3 (|-0.133|
        // beats |0.2|): TP+FP = 3, FP_open = 1. Class 1 has detections but no GT box: left out.
        assert!((m.wi - 1.0 / 3.0).abs() < 1e-12, "{}", m.wi);
        // Open-set errors: class 0 on B (img 0), class 0 on C (img 1), class 1 on B (img 0).
        assert_eq!(m.aose, 3);
        assert_eq!(
            (m.n_unknown_gt, m.n_unknown_pred, m.n_unknown_tp),
            (3, 3, 1)
        );
        assert_eq!(m.unknown_recall, Some(1.0 / 3.0));
        assert_eq!(m.unknown_precision, Some(1.0 / 3.0));
        // Unknown ranked: TP(.60) FP(.55) FP(.3): AP = 1/3 · 1.
        assert!((m.ap_unknown.unwrap() - 1.0 / 3.0).abs() < 1e-12);
        // Class 0: precisions 1, 1/2, 2/3, 2/4, 3/5 at recalls 1/3, 1/3, 2/3, 2/3, 1;
        // envelope 1, 2/3, 2/3, 3/5, 3/5: AP = 1/3 + 1/3 · 2/3 + 1/3 · 3/5.
        let ap0 = 1.0 / 3.0 + 2.0 / 9.0 + 1.0 / 5.0;
        assert!((m.map_known.unwrap() - ap0).abs() < 1e-12);

        // At recall level 0.3, class 0 stops at rank 1 (recall 1/3): FP_open 0 of 1.
        let m = open_set_metrics_at(&gts, &preds, 2, 0.3).unwrap();
        assert_eq!(m.wi, 0.0);
    }

    #[test]
    fn open_set_edge_cases() {
        // Nothing at all: every ratio undefined, WI 0 (opendet2's value).
        let m = open_set_metrics(&[vec![]], &[vec![]], 3).unwrap();
        assert_eq!((m.wi, m.aose), (0.0, 0));
        assert_eq!((m.unknown_recall, m.unknown_precision), (None, None));
        assert_eq!((m.ap_unknown, m.map_known), (None, None));
        // Open-set overlap needs IoU > 0.5: exactly 0.5 is not an error.
        let half = [0.0, 0.0, 10.0, 5.0];
        let m =
            open_set_metrics(&[vec![gt(A, None)]], &[vec![pred(half, 0, 0.9, false)]], 1).unwrap();
        assert_eq!(m.aose, 0);
        // Class ids out of range are errors; a flagged-unknown box's class is not checked.
        assert!(open_set_metrics(&[vec![gt(A, Some(3))]], &[vec![]], 3).is_err());
        assert!(open_set_metrics(&[vec![]], &[vec![pred(A, 3, 0.5, false)]], 3).is_err());
        assert!(open_set_metrics(&[vec![]], &[vec![pred(A, 3, 0.5, true)]], 3).is_ok());
    }
}
