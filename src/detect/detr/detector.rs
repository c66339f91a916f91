//! DETR as a [`Detector`]: a Hugging Face folder (`config.json`, `model.safetensors`, optional
//! `preprocessor_config.json`), `DetrImageProcessor` preprocessing, and
//! `post_process_object_detection`, keeping each kept query's logits and decoder feature.

use candle_core::{Device, Tensor};
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::path::Path;

use super::config::DetrConfig;
use super::model::{DetrModel, DetrOutput};
use super::preprocess::DetrImageProcessor;
use super::weights;
use crate::detect::{
    run_stages, BoxRecord, ClassHead, DetectOptions, Detector, LinearHead, StageTimes, Stages,
};
use crate::error::{Error, Result};

/// The name of the extra class that DETR's head scores last.
pub const NO_OBJECT: &str = "no-object";

pub struct DetrDetector {
    model: DetrModel,
    processor: DetrImageProcessor,
    device: Device,
    /// The object classes, then [`NO_OBJECT`].
    names: Vec<String>,
    head: ClassHead,
    fingerprint: String,
}

impl DetrDetector {
    /// Loads a model folder. Class names come from `id2label` (`classN` for ids it lacks).
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        let missing = |name: &str, what: &str| -> Result<std::path::PathBuf> {
            let path = folder.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::BadModel {
                    path: path.clone(),
                    reason: format!("missing: a DETR model folder needs {what}"),
                })
            }
        };
        let config_path = missing("config.json", "its config.json")?;
        let weights_path = missing("model.safetensors", "its weights as model.safetensors")?;
        let config = DetrConfig::load(&config_path)?;
        let processor_path = folder.join("preprocessor_config.json");
        let processor = if processor_path.is_file() {
            DetrImageProcessor::load(&processor_path)?
        } else {
            DetrImageProcessor::default()
        };
        let (index, vb) = weights::open(&weights_path, device)?;
        let model =
            DetrModel::load(vb, &index, &config).map_err(|e| index.take_failure().unwrap_or(e))?;
        let unused = index.unused();
        if let Some(first) = unused.first() {
            return Err(Error::BadModel {
                path: weights_path,
                reason: format!(
                    "{} tensors do not fit the model config.json describes (first: `{first}`)",
                    unused.len()
                ),
            });
        }
        let mut hasher = Sha256::new();
        for path in [&config_path, &weights_path] {
            hasher.update(std::fs::read(path).map_err(|e| Error::io(path, e))?);
        }
        let fingerprint = format!("sha256:{:x}", hasher.finalize());
        let names = (0..model.classes())
            .map(|i| match config.id2label.get(&i) {
                Some(name) => name.clone(),
                None => format!("class{i}"),
            })
            .collect();
        Self::from_model(model, processor, device, names, fingerprint)
    }

    /// Wraps a built network; `names` are the object classes (no-object is added).
    pub fn from_model(
        model: DetrModel,
        processor: DetrImageProcessor,
        device: &Device,
        names: Vec<String>,
        fingerprint: String,
    ) -> Result<Self> {
        let (weight, bias) = model.class_head();
        let (classes, dim) = weight.dims2()?;
        let bias = match bias {
            Some(b) => b.to_vec1()?,
            None => vec![0.0; classes],
        };
        let head = ClassHead {
            levels: vec![LinearHead {
                weight: weight.flatten_all()?.to_vec1()?,
                bias,
                classes,
                dim,
            }],
        };
        let mut detector = DetrDetector {
            model,
            processor,
            device: device.clone(),
            names: Vec::new(),
            head,
            fingerprint,
        };
        detector.set_class_names(names)?;
        Ok(detector)
    }

    pub fn model(&self) -> &DetrModel {
        &self.model
    }

    pub fn processor(&self) -> &DetrImageProcessor {
        &self.processor
    }
}

impl Stages for DetrDetector {
    /// The normalised network input `(1, 3, H, W)` and the original `(width, height)`.
    type Input = (Tensor, (u32, u32));
    type Output = DetrOutput;

    /// DETR sizes its input with its processor: `options.imgsz` does not apply.
    fn preprocess(&self, image: &RgbImage, _: &DetectOptions) -> Result<Self::Input> {
        let input = self.processor.preprocess(image, &self.device)?;
        Ok((input, image.dimensions()))
    }

    fn forward(&self, (input, _): &Self::Input) -> Result<DetrOutput> {
        self.model.forward(input)
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// `post_process_object_detection`: softmax over every logit, the best object class
    /// (no-object excluded), kept when its probability is above `options.conf`; boxes in
    /// pixels of the original `(width, height)`. No NMS. At most `options.max_det` boxes, the
    /// most confident, in query order.
    fn postprocess(
        &self,
        output: DetrOutput,
        &(_, (width, height)): &Self::Input,
        options: &DetectOptions,
    ) -> Result<Vec<BoxRecord>> {
        if options.roi_features {
            return Err(Error::BadInput {
                path: "roi_features".into(),
                reason:
                    "DETR has no ROI-aligned features; its per-box feature is the decoder query"
                        .into(),
            });
        }
        let logits: Vec<Vec<f32>> = output.logits.squeeze(0)?.to_vec2()?;
        let boxes: Vec<Vec<f32>> = output.boxes.squeeze(0)?.to_vec2()?;
        let features: Vec<Vec<f32>> = output.features.squeeze(0)?.to_vec2()?;
        let classes = self.model.classes();
        let (w, h) = (width as f32, height as f32);
        let mut kept = Vec::new();
        for (q, row) in logits.iter().enumerate() {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let total: f32 = row.iter().map(|l| (l - max).exp()).sum();
            let (class_id, best) =
                row[..classes]
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |b, (c, &l)| if l > b.1 { (c, l) } else { b },
                    );
            let confidence = (best - max).exp() / total;
            if confidence > options.conf {
                let [cx, cy, bw, bh] = [boxes[q][0], boxes[q][1], boxes[q][2], boxes[q][3]];
                kept.push(BoxRecord {
                    bbox: [
                        (cx - 0.5 * bw) * w,
                        (cy - 0.5 * bh) * h,
                        (cx + 0.5 * bw) * w,
                        (cy + 0.5 * bh) * h,
                    ],
                    class_id,
                    confidence,
                    logits: row.clone(),
                    feature: features[q].clone(),
                    level: 0,
                    anchor: q as u32,
                    roi_feature: None,
                });
            }
        }
        if kept.len() > options.max_det {
            let mut order: Vec<usize> = (0..kept.len()).collect();
            order.sort_by(|&a, &b| kept[b].confidence.total_cmp(&kept[a].confidence));
            let mut keep = vec![false; kept.len()];
            order[..options.max_det]
                .iter()
                .for_each(|&i| keep[i] = true);
            let mut keep = keep.into_iter();
            kept.retain(|_| keep.next().unwrap_or(false));
        }
        Ok(kept)
    }
}

impl Detector for DetrDetector {
    /// DETR sizes its input with its processor: `options.imgsz`, `iou` and `agnostic` (NMS) do
    /// not apply.
    fn detect_timed(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<(Vec<BoxRecord>, StageTimes)> {
        run_stages(self, image, options)
    }

    fn family(&self) -> &'static str {
        super::FAMILY.name
    }

    fn class_names(&self) -> &[String] {
        &self.names
    }

    /// The object class names; no-object is added. Their count must match the head's, less
    /// no-object.
    fn set_class_names(&mut self, mut names: Vec<String>) -> Result<()> {
        if names.len() != self.model.classes() {
            return Err(Error::ClassCount {
                given: names.len(),
                expected: self.model.classes(),
            });
        }
        names.push(NO_OBJECT.to_string());
        self.names = names;
        Ok(())
    }

    fn head(&self) -> &ClassHead {
        &self.head
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}
