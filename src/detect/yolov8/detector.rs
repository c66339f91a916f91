//! YOLOv8 as a [`Detector`]: ultralytics `predict` preprocessing and post-processing around the
//! network, keeping each kept box's logits and class-branch feature.

use candle_core::{Device, Tensor};
use image::RgbImage;
use sha2::{Digest, Sha256};
use std::path::Path;

use super::{YoloOutput, YoloV8};
use crate::detect::letterbox::{letterbox, LetterboxGeometry};
use crate::detect::nms::{non_max_suppression, Candidate};
use crate::detect::roi_align::{roi_align_mean, FeatureMap};
use crate::detect::{BoxRecord, ClassHead, DetectOptions, Detector, LinearHead};
use crate::error::{Error, Result};

/// Ultralytics keeps at most this many candidates, by confidence, before NMS.
const MAX_NMS: usize = 30_000;

pub struct YoloDetector {
    model: YoloV8,
    device: Device,
    names: Vec<String>,
    head: ClassHead,
    fingerprint: String,
}

impl YoloDetector {
    /// Loads a YOLOv8 safetensors file. Class names come from its metadata (`names`, a JSON
    /// list) when present, else `class0`, `class1`, ...
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let model = YoloV8::from_safetensors(path, device)?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let fingerprint = format!("sha256:{:x}", Sha256::digest(&bytes));
        let nc = model.nc();
        let names = match model.metadata.get("names") {
            Some(json) => {
                serde_json::from_str::<Vec<String>>(json).map_err(|e| Error::BadModel {
                    path: path.to_path_buf(),
                    reason: format!("metadata `names` is not a JSON list of strings: {e}"),
                })?
            }
            None => (0..nc).map(|i| format!("class{i}")).collect(),
        };
        if names.len() != nc {
            return Err(Error::BadModel {
                path: path.to_path_buf(),
                reason: format!(
                    "metadata lists {} class names, the head has {nc} classes",
                    names.len()
                ),
            });
        }
        Self::from_model(model, device, names, fingerprint)
    }

    /// Wraps an already built network (e.g. random weights in tests).
    pub fn from_model(
        model: YoloV8,
        device: &Device,
        names: Vec<String>,
        fingerprint: String,
    ) -> Result<Self> {
        let levels = model
            .class_head()
            .into_iter()
            .map(|(w, b)| {
                let (classes, dim) = w.dims2()?;
                Ok(LinearHead {
                    weight: w.flatten_all()?.to_vec1()?,
                    bias: b.to_vec1()?,
                    classes,
                    dim,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(YoloDetector {
            model,
            device: device.clone(),
            names,
            head: ClassHead { levels },
            fingerprint,
        })
    }

    /// Replaces the class names (e.g. from a `data.yaml`); their count must match the head.
    pub fn set_class_names(&mut self, names: Vec<String>) -> std::result::Result<(), String> {
        if names.len() != self.model.nc() {
            return Err(format!(
                "{} class names given, the model has {} classes",
                names.len(),
                self.model.nc()
            ));
        }
        self.names = names;
        Ok(())
    }

    pub fn model(&self) -> &YoloV8 {
        &self.model
    }

    /// The network, e.g. to choose its layout with [`YoloV8::set_layout`].
    pub fn model_mut(&mut self) -> &mut YoloV8 {
        &mut self.model
    }

    /// The letterboxed input tensor `(1, 3, H, W)`, RGB in [0, 1], and its geometry.
    pub fn preprocess(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<(Tensor, LetterboxGeometry)> {
        let geometry = LetterboxGeometry::new(image.dimensions(), options.imgsz, 32, true);
        let boxed = letterbox(image, &geometry);
        let (w, h) = (boxed.width() as usize, boxed.height() as usize);
        let mut chw = vec![0f32; 3 * h * w];
        for (i, p) in boxed.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * h * w + i] = p[c] as f32 / 255.0;
            }
        }
        let input = Tensor::from_vec(chw, (1, 3, h, w), &self.device)?;
        Ok((input, geometry))
    }

    /// Ultralytics `non_max_suppression` plus `scale_boxes`, keeping each box's taps.
    pub fn postprocess(
        &self,
        output: &YoloOutput,
        geometry: &LetterboxGeometry,
        options: &DetectOptions,
    ) -> Result<Vec<BoxRecord>> {
        let strides = self.model.strides();
        let logits: Vec<f32> = output.cls_logits.squeeze(0)?.flatten_all()?.to_vec1()?;
        let nc = self.model.nc();
        let anchors = logits.len() / nc;
        // The best class of each anchor, chosen on sigmoid values as ultralytics does (ties
        // between saturated sigmoids go to the first class).
        let mut candidates = Vec::new();
        for a in 0..anchors {
            let mut best = (0, f32::NEG_INFINITY);
            for c in 0..nc {
                let p = sigmoid(logits[c * anchors + a]);
                if p > best.1 {
                    best = (c, p);
                }
            }
            if best.1 > options.conf {
                candidates.push(Candidate {
                    bbox: [0.0; 4],
                    confidence: best.1,
                    class_id: best.0,
                    source: a,
                });
            }
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let level_offsets: Vec<usize> = output
            .level_shapes
            .iter()
            .scan(0, |acc, (h, w)| {
                let start = *acc;
                *acc += h * w;
                Some(start)
            })
            .collect();
        let level_of = |source: usize| {
            let level = level_offsets
                .iter()
                .rposition(|&o| source >= o)
                .unwrap_or(0);
            (level, source - level_offsets[level])
        };
        // Only the candidates' boxes are decoded: `decode_boxes`'s DFL expectation per anchor.
        let box_logits: Vec<f32> = output.box_logits.squeeze(0)?.flatten_all()?.to_vec1()?;
        let reg_max = box_logits.len() / (4 * anchors);
        for c in &mut candidates {
            let (level, local) = level_of(c.source);
            let width = output.level_shapes[level].1;
            let centre = [(local % width) as f32 + 0.5, (local / width) as f32 + 0.5];
            let side = |s: usize| {
                let bins = (0..reg_max).map(|j| box_logits[(s * reg_max + j) * anchors + c.source]);
                dfl_expectation(bins)
            };
            let stride = strides[level] as f32;
            c.bbox = [
                (centre[0] - side(0)) * stride,
                (centre[1] - side(1)) * stride,
                (centre[0] + side(2)) * stride,
                (centre[1] + side(3)) * stride,
            ];
        }
        let kept = non_max_suppression(
            candidates,
            options.iou,
            options.agnostic,
            MAX_NMS,
            options.max_det,
        );

        // Only the kept anchors' feature rows leave the device.
        let dim = self.model.feature_dim();
        let mut features = vec![Vec::new(); kept.len()];
        for (level, map) in output.cls_features.iter().enumerate() {
            let (slots, anchors): (Vec<usize>, Vec<u32>) = kept
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let (l, local) = level_of(c.source);
                    (l == level).then_some((i, local as u32))
                })
                .unzip();
            if anchors.is_empty() {
                continue;
            }
            let index = Tensor::new(anchors.as_slice(), map.device())?;
            let rows = map.squeeze(0)?.flatten(0, 1)?.index_select(&index, 0)?;
            for (slot, row) in slots.into_iter().zip(rows.to_vec2::<f32>()?) {
                features[slot] = row;
            }
        }
        let necks = if options.roi_features {
            output
                .neck
                .iter()
                .map(|n| {
                    n.squeeze(0)?
                        .permute((2, 0, 1))?
                        .flatten_all()?
                        .to_vec1::<f32>()
                })
                .collect::<candle_core::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        kept.into_iter()
            .zip(features)
            .map(|(c, feature)| {
                debug_assert_eq!(feature.len(), dim);
                let (level, _) = level_of(c.source);
                let (h, w) = output.level_shapes[level];
                let roi_feature = necks.get(level).map(|neck| {
                    let map = FeatureMap {
                        data: neck,
                        channels: neck.len() / (h * w),
                        height: h,
                        width: w,
                    };
                    roi_align_mean(&map, c.bbox, strides[level] as f32, 7, 2)
                });
                Ok(BoxRecord {
                    bbox: geometry.to_original(c.bbox),
                    class_id: c.class_id,
                    confidence: c.confidence,
                    logits: (0..nc).map(|k| logits[k * anchors + c.source]).collect(),
                    feature,
                    level: level as u8,
                    anchor: c.source as u32,
                    roi_feature,
                })
            })
            .collect()
    }
}

/// The expected bin index under the softmax of one side's DFL logits.
fn dfl_expectation(logits: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = logits.clone().fold(f32::NEG_INFINITY, f32::max);
    let (mut total, mut weighted) = (0f32, 0f32);
    for (j, x) in logits.enumerate() {
        let e = (x - max).exp();
        total += e;
        weighted += e * j as f32;
    }
    weighted / total
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl Detector for YoloDetector {
    fn detect(&self, image: &RgbImage, options: &DetectOptions) -> Result<Vec<BoxRecord>> {
        let (input, geometry) = self.preprocess(image, options)?;
        let output = self.model.forward(&input)?;
        self.postprocess(&output, &geometry, options)
    }

    fn class_names(&self) -> &[String] {
        &self.names
    }

    fn head(&self) -> &ClassHead {
        &self.head
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}
