//! A detector's final linear classifier(s), which the logit-based scorers and ViM read.

/// A linear classifier `logits = weight · feature + bias`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearHead {
    /// Row-major `(classes, dim)`.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub classes: usize,
    pub dim: usize,
}

impl LinearHead {
    pub fn logits(&self, feature: &[f32]) -> Vec<f32> {
        self.weight
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(feature).map(|(w, f)| w * f).sum::<f32>() + b)
            .collect()
    }
}

/// The final classifier(s) of a detector: one per pyramid level for YOLO, one for DETR.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassHead {
    pub levels: Vec<LinearHead>,
}
