//! What a detector hands over for every kept box.

use serde::Serialize;

use super::sources::RoiSource;

/// One detection with everything an OOD scorer needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BoxRecord {
    /// x1, y1, x2, y2 in original image pixels.
    pub bbox: [f32; 4],
    pub class_id: usize,
    pub confidence: f32,
    /// Raw logits of every class, as the head produced them (pre-sigmoid for YOLO; for DETR
    /// pre-softmax, no-object last).
    pub logits: Vec<f32>,
    /// The input of the final linear classifier at this box (YOLO: the class-branch feature at
    /// the box's anchor cell; DETR: the query's last decoder hidden state).
    pub feature: Vec<f32>,
    /// Pyramid level (YOLO: 0, 1, 2 for strides 8, 16, 32).
    pub level: u8,
    /// Anchor index over all levels (YOLO) or query index (DETR).
    pub anchor: u32,
    /// The layer maps ROI-aligned on the box, one per ROI source of the detection
    /// settings (`DetectOptions::roi`), in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roi_features: Vec<RoiFeature>,
}

/// One ROI feature of a box: a layer's map ROI-aligned on it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoiFeature {
    pub source: RoiSource,
    /// `channels · k · k` values, channel-major.
    pub values: Vec<f32>,
}
