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
use crate::core::settings::{Applies, DetectOptions, SettingsUse};
use crate::core::sources::{missing_message, FeatureLayer, FeatureSources};
use crate::core::{BoxRecord, ClassHead, LinearHead, RoiFeature};
use crate::detect::roi_align::{roi_align, FeatureMap, Sampling};
use crate::detect::{run_stages, Detector, StageTimes, Stages};
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
    /// The normalised network input `(1, 3, H, W)`, the original `(width, height)`, and the
    /// layers whose maps `options.roi` reads.
    type Input = (Tensor, (u32, u32), Vec<String>);
    type Output = DetrOutput;

    /// DETR sizes its input with its processor: `options.imgsz` does not apply.
    fn preprocess(&self, image: &RgbImage, options: &DetectOptions) -> Result<Self::Input> {
        let layers = self.model.feature_layers();
        let missing = FeatureSources::missing_roi(&options.roi, &layers);
        if !missing.is_empty() {
            let family = super::FAMILY.name;
            return Err(Error::Unsupported(missing_message(
                &missing, family, &layers,
            )));
        }
        let input = self.processor.preprocess(image, &self.device)?;
        let keep = options.roi.iter().map(|r| r.layer.clone()).collect();
        Ok((input, image.dimensions(), keep))
    }

    fn forward(&self, (input, _, keep): &Self::Input) -> Result<DetrOutput> {
        self.model.forward_keeping(input, keep)
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
        (input, (width, height), _): &Self::Input,
        options: &DetectOptions,
    ) -> Result<Vec<BoxRecord>> {
        let (width, height) = (*width, *height);
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
                    roi_features: Vec::new(),
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
        add_roi_features(&mut kept, &output, input, (w, h), options)?;
        Ok(kept)
    }
}

/// Each box's ROI features, one per `options.roi` source, from the kept maps. Boxes are in
/// original pixels; the maps are of the resized input, so boxes are scaled to it first.
fn add_roi_features(
    boxes: &mut [BoxRecord],
    output: &DetrOutput,
    input: &Tensor,
    (width, height): (f32, f32),
    options: &DetectOptions,
) -> Result<()> {
    let (_, _, input_h, input_w) = input.dims4()?;
    let (sx, sy) = (input_w as f32 / width, input_h as f32 / height);
    for source in &options.roi {
        let Some((_, map, stride)) = output.kept.iter().find(|(n, _, _)| *n == source.layer) else {
            return Err(Error::Unsupported(format!(
                "the forward pass kept no map of layer {}",
                source.layer
            )));
        };
        let (_, h, w, c) = map.dims4()?;
        let data: Vec<f32> = map.flatten_all()?.to_vec1()?;
        let map = FeatureMap {
            data: &data,
            channels: c,
            height: h,
            width: w,
        };
        for b in boxes.iter_mut() {
            let [x1, y1, x2, y2] = b.bbox;
            let scaled = [x1 * sx, y1 * sy, x2 * sx, y2 * sy];
            let values = roi_align(
                &map,
                scaled,
                *stride as f32,
                source.pool,
                Sampling::Adaptive,
            );
            b.roi_features.push(RoiFeature {
                source: source.clone(),
                values,
            });
        }
    }
    Ok(())
}

/// Why DETR reads neither NMS setting.
const NO_NMS: &str = "DETR has no NMS: each query gives at most one box, of its most likely class";

impl Detector for DetrDetector {
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

    fn feature_layers(&self) -> Vec<FeatureLayer> {
        self.model.feature_layers()
    }

    /// Only `conf`, `max_det` and `roi`. Its input size is its processor's (shortest and
    /// longest edge, from `preprocessor_config.json`), which is not an `imgsz`: mapping one onto
    /// the other would detect otherwise than transformers does.
    fn settings_use(&self) -> SettingsUse {
        SettingsUse {
            iou: Applies::No { why: NO_NMS },
            agnostic: Applies::No { why: NO_NMS },
            imgsz: Applies::No {
                why: "DETR sizes its input with its image processor (preprocessor_config.json: \
                      shortest and longest edge)",
            },
        }
    }
}
