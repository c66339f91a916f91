//! Greedy non-maximum suppression as torchvision's `nms` computes it inside ultralytics:
//! 0-based IoU, suppression of IoU strictly above the threshold, class-aware unless agnostic.

use crate::core::geometry::iou;

/// One candidate: its xyxy box, confidence and class.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub bbox: [f32; 4],
    pub confidence: f32,
    pub class_id: usize,
    /// Where the candidate came from (the anchor index for YOLO).
    pub source: usize,
}

/// Keeps candidates by descending confidence (ties keep their input order, as torch's stable
/// sort does), dropping any whose IoU with a kept box of the same class exceeds `iou_threshold`.
/// At most `max_candidates` enter, at most `max_det` leave.
pub fn non_max_suppression(
    mut candidates: Vec<Candidate>,
    iou_threshold: f32,
    agnostic: bool,
    max_candidates: usize,
    max_det: usize,
) -> Vec<Candidate> {
    candidates.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    candidates.truncate(max_candidates);
    let mut kept: Vec<Candidate> = Vec::new();
    for c in candidates {
        if kept.len() == max_det {
            break;
        }
        let suppressed = kept.iter().any(|k| {
            (agnostic || k.class_id == c.class_id) && iou(&k.bbox, &c.bbox) > iou_threshold
        });
        if !suppressed {
            kept.push(c);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(bbox: [f32; 4], confidence: f32, class_id: usize) -> Candidate {
        Candidate {
            bbox,
            confidence,
            class_id,
            source: 0,
        }
    }

    #[test]
    fn suppresses_within_class_only_unless_agnostic() {
        let boxes = vec![
            cand([0.0, 0.0, 10.0, 10.0], 0.9, 0),
            cand([0.5, 0.0, 10.5, 10.0], 0.8, 0),
            cand([0.0, 0.5, 10.0, 10.5], 0.7, 1),
            cand([50.0, 50.0, 60.0, 60.0], 0.95, 0),
        ];
        let kept = non_max_suppression(boxes.clone(), 0.7, false, 30000, 300);
        let confs: Vec<f32> = kept.iter().map(|c| c.confidence).collect();
        assert_eq!(confs, vec![0.95, 0.9, 0.7]);
        let kept = non_max_suppression(boxes.clone(), 0.7, true, 30000, 300);
        assert_eq!(kept.len(), 2);
        assert_eq!(non_max_suppression(boxes, 0.7, false, 30000, 1).len(), 1);
    }

    #[test]
    fn threshold_is_strict() {
        // IoU exactly 0.5 is kept at threshold 0.5.
        let boxes = vec![
            cand([0.0, 0.0, 30.0, 10.0], 0.9, 0),
            cand([10.0, 0.0, 40.0, 10.0], 0.8, 0),
        ];
        assert_eq!(non_max_suppression(boxes, 0.5, false, 30000, 300).len(), 2);
    }
}
