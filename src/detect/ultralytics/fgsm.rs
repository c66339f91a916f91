//! FGSM surrogate boxes of an ultralytics detector (see [`crate::detect::fgsm`]): the gradient
//! runs through the network's differentiable channels-first pass
//! ([`YoloNetwork::forward_nchw`](super::YoloNetwork::forward_nchw)), built from the same
//! weights as the fused path; the clean and perturbed passes run as [`Detector::detect`] does.
//!
//! [`Detector::detect`]: crate::detect::Detector::detect

use candle_core::{Tensor, Var};
use image::RgbImage;

use super::YoloDetector;
use crate::core::settings::DetectOptions;
use crate::detect::fgsm::FgsmBoxes;
use crate::detect::nms::Candidate;
use crate::detect::Stages;
use crate::error::{Error, Result};

impl YoloDetector {
    /// The boxes of `image` and, per `ε` of `epsilons` (input units, [0, 1]), the same boxes
    /// read on the FGSM-perturbed input.
    pub(super) fn fgsm(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
        epsilons: &[f32],
    ) -> Result<FgsmBoxes> {
        if let Some(bad) = epsilons.iter().find(|e| !(0.0..=1.0).contains(*e)) {
            return Err(Error::OutOfRange {
                item: "FGSM ε".into(),
                value: bad.to_string(),
                range: "[0, 1]".into(),
            });
        }
        options.check()?;
        let input = self.preprocess(image, options)?;
        let output = self.forward(&input)?;
        let kept = self.select(&output, options)?;
        let clean = self.records(&output, &kept, &input, options)?;
        if kept.is_empty() {
            let perturbed = vec![Vec::new(); epsilons.len()];
            return Ok(FgsmBoxes { clean, perturbed });
        }
        let sign = self.loss_gradient(&input.0, &kept)?.sign()?;
        let mut perturbed = Vec::with_capacity(epsilons.len());
        for &eps in epsilons {
            let x = (&input.0 + (&sign * f64::from(eps))?)?.clamp(0f32, 1f32)?;
            let moved = (x, input.1, input.2.clone());
            let output = self.forward(&moved)?;
            perturbed.push(self.records(&output, &kept, &moved, options)?);
        }
        Ok(FgsmBoxes { clean, perturbed })
    }

    /// `∇ₓ Σ −log σ(z_c)` over the `kept` boxes, through the differentiable pass.
    fn loss_gradient(&self, x: &Tensor, kept: &[Candidate]) -> Result<Tensor> {
        let x = Var::from_tensor(x)?;
        let output =
            crate::nn::on_pool(|| self.network.forward_nchw(x.as_tensor(), self.nms_free))?;
        let loss = classification_loss(&output.cls_logits, kept)?;
        let grads = crate::nn::on_pool(|| loss.backward())?;
        grads.get(&x).cloned().ok_or_else(|| {
            Error::Unsupported(format!(
                "{}: the loss does not reach the input image",
                self.family
            ))
        })
    }
}

/// `Σ −log σ(z)` over the logit `z` of each kept box's class at its anchor, from `(1, nc, A)`
/// logits, as `relu(−z) + log(1 + e^{−|z|})` (no overflow for any `z`).
pub(super) fn classification_loss(cls_logits: &Tensor, kept: &[Candidate]) -> Result<Tensor> {
    let anchors = cls_logits.dim(2)?;
    let index: Vec<u32> = kept
        .iter()
        .map(|c| (c.class_id * anchors + c.source) as u32)
        .collect();
    let index = Tensor::new(index.as_slice(), cls_logits.device())?;
    let z = cls_logits.flatten_all()?.index_select(&index, 0)?;
    let soft = z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    Ok((z.neg()?.relu()? + soft)?.sum_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::InputSize;
    use crate::core::BoxRecord;
    use crate::detect::fgsm::eps_from_levels;
    use crate::detect::Detector;
    use crate::synth::world::{render_scene, Split};

    /// The shapes YOLOv8n and the YOLO11n and YOLO26n `best.pt` fixtures.
    fn detectors() -> Vec<(&'static str, Box<dyn Detector>)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        [
            "models/shapes.safetensors",
            "tests/fixtures/yolo11/best.pt",
            "tests/fixtures/yolo26/best.pt",
        ]
        .into_iter()
        .map(|file| {
            let path = root.join(file);
            let detector = crate::detect::load::load_detector(&path, &candle_core::Device::Cpu)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            (file, detector)
        })
        .collect()
    }

    fn options() -> DetectOptions {
        DetectOptions {
            imgsz: InputSize::square(256),
            ..DetectOptions::default()
        }
    }

    /// `Σ −log σ(z_c)` of the boxes, from their logits.
    fn loss(boxes: &[BoxRecord]) -> f64 {
        let softplus = |z: f64| z.max(0.0) + (-z.abs()).exp().ln_1p();
        boxes
            .iter()
            .map(|b| softplus(-f64::from(b.logits[b.class_id])))
            .sum()
    }

    /// Every family's differentiable pass: the gradient reaches the input, the boxes stay at
    /// their anchors, their features move and the loss of their classes rises.
    #[test]
    fn fgsm_moves_the_features_of_the_same_anchors_and_raises_the_loss() {
        for (file, detector) in detectors() {
            fgsm_moves_features_and_raises_loss(file, detector.as_ref());
        }
    }

    fn fgsm_moves_features_and_raises_loss(file: &str, detector: &dyn Detector) {
        let image = render_scene(0, Split::TestId, 1, 256, 256).image;
        let eps = [0.0, eps_from_levels(8.0)];
        let out = detector
            .detect_fgsm(&image, &options(), &eps)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            out.clean,
            detector.detect(&image, &options()).unwrap(),
            "{file}"
        );
        assert!(out.clean.len() >= 2, "{file}: {} boxes", out.clean.len());
        assert_eq!(out.perturbed.len(), 2);
        // ε = 0: the clean input again, through the same path.
        for (p, c) in out.perturbed[0].iter().zip(&out.clean) {
            let diff = p.feature.iter().zip(&c.feature).map(|(a, b)| (a - b).abs());
            assert!(diff.fold(0f32, f32::max) <= 1e-5, "{file}");
        }
        let moved = &out.perturbed[1];
        assert_eq!(moved.len(), out.clean.len());
        for (p, c) in moved.iter().zip(&out.clean) {
            assert_eq!(
                (p.level, p.anchor, p.class_id, p.bbox),
                (c.level, c.anchor, c.class_id, c.bbox),
                "{file}"
            );
            let change: f32 = p
                .feature
                .iter()
                .zip(&c.feature)
                .map(|(a, b)| (a - b).abs())
                .sum();
            assert!(
                change > 1e-2 * c.feature.len() as f32,
                "{file}: feature change {change}"
            );
        }
        let (before, after) = (loss(&out.clean), loss(moved));
        assert!(after > before + 0.1, "{file}: loss {before} → {after}");
        // Deterministic: the same image gives the same surrogates.
        assert_eq!(
            detector.detect_fgsm(&image, &options(), &eps).unwrap(),
            out,
            "{file}"
        );
    }
}
