//! FGSM surrogate boxes (SAFE, Wilson et al. ICCV'23): the input image nudged by one signed
//! gradient step that makes the detector less sure of its own predictions, and each box's
//! outputs read again at the same place. They stand for "what the detector sees when an object
//! looks slightly wrong", for training a scorer against ([`Detector::detect_fgsm`]).
//!
//! For an image: detect as usual; the loss is `Σ −log σ(z_c)` over the kept boxes, `z_c` the
//! logit of the box's predicted class at its anchor (the detector's classification loss toward
//! its own prediction); `x' = clamp(x + ε · sign(∇ₓ loss), 0, 1)` on the network input
//! (letterboxed, in [0, 1]); `x'` runs through the network as `x` did, and every kept box's
//! logits, feature and ROI features are read at its anchor. Its box, class, confidence, level
//! and anchor stay those of the clean box, so a perturbed box set lines up with the clean one.
//!
//! [`Detector::detect_fgsm`]: super::Detector::detect_fgsm

use super::BoxRecord;

/// The boxes of one image and their FGSM surrogates.
#[derive(Clone, Debug, PartialEq)]
pub struct FgsmBoxes {
    /// The boxes [`Detector::detect`](super::Detector::detect) gives.
    pub clean: Vec<BoxRecord>,
    /// Per ε asked, in order: `clean`'s boxes read on the perturbed input, in `clean`'s order.
    pub perturbed: Vec<Vec<BoxRecord>>,
}

/// `ε` in the network's input units ([0, 1]) from 8-bit pixel levels: `levels / 255`.
pub fn eps_from_levels(levels: f32) -> f32 {
    levels / 255.0
}
