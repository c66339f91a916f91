//! An ultralytics detection network as a [`Detector`]: `predict`'s letterbox preprocessing and
//! post-processing around the network, keeping each kept box's logits and class-branch feature.
//!
//! Two post-processings, as ultralytics runs them: the one-to-many head with NMS (every family;
//! YOLO26's default since ultralytics 8.4.142), and YOLO26's NMS-free one-to-one head with top-k
//! (ultralytics' `nms=False`).

use candle_core::{Device, Tensor};
use image::RgbImage;

use super::{YoloNetwork, YoloOutput};
use crate::core::settings::{Applies, DetectOptions, InputSize, SettingsUse, INPUT_STRIDE};
use crate::core::sources::{missing_message, FeatureLayer, FeatureSources};
use crate::core::{BoxRecord, ClassHead, LinearHead, RoiFeature};
use crate::detect::fgsm::FgsmBoxes;
use crate::detect::letterbox::{letterbox, LetterboxGeometry};
use crate::detect::nms::{non_max_suppression, Candidate};
use crate::detect::roi_align::{roi_align, FeatureMap, Sampling};
use crate::detect::{run_stages, Detector, StageTimes, Stages};
use crate::error::{Error, Result};
use crate::nn::MapLayout;

/// Ultralytics keeps at most this many candidates, by confidence, before NMS.
const MAX_NMS: usize = 30_000;

/// The most images [`Detector::detect_batch`] runs through the network at once, bounding the
/// memory a batch of large images takes.
pub const MAX_BATCH: usize = 8;

pub struct YoloDetector {
    pub(super) network: Box<dyn YoloNetwork>,
    pub(super) family: &'static str,
    device: Device,
    names: Vec<String>,
    /// The class heads of both branches, one-to-many first.
    heads: Vec<ClassHead>,
    fingerprint: String,
    /// Runs the one-to-one head with top-k instead of the one-to-many head with NMS.
    pub(super) nms_free: bool,
    /// The training size its file records (metadata `imgsz`).
    trained_imgsz: Option<u32>,
}

impl YoloDetector {
    /// Wraps a built network; `names` must match its class count.
    pub fn new(
        network: Box<dyn YoloNetwork>,
        family: &'static str,
        device: &Device,
        names: Vec<String>,
        fingerprint: String,
    ) -> Result<Self> {
        let heads = [false, true]
            .into_iter()
            .filter_map(|one2one| network.class_head(one2one))
            .map(|levels| linear_heads(&levels).map(|levels| ClassHead { levels }))
            .collect::<Result<Vec<_>>>()?;
        let mut detector = YoloDetector {
            network,
            family,
            device: device.clone(),
            names: Vec::new(),
            heads,
            fingerprint,
            nms_free: false,
            trained_imgsz: None,
        };
        detector.set_class_names(names)?;
        Ok(detector)
    }

    /// Records the square size the model was trained at (from its file's `imgsz` metadata).
    pub fn with_trained_imgsz(self, metadata: &std::collections::HashMap<String, String>) -> Self {
        let trained_imgsz = metadata.get("imgsz").and_then(|s| s.parse().ok());
        Self {
            trained_imgsz,
            ..self
        }
    }

    pub fn network(&self) -> &dyn YoloNetwork {
        self.network.as_ref()
    }

    fn level_of(output: &YoloOutput, source: usize) -> (usize, usize) {
        let mut start = 0;
        for (level, (h, w)) in output.level_shapes.iter().enumerate() {
            if source < start + h * w {
                return (level, source - start);
            }
            start += h * w;
        }
        (output.level_shapes.len() - 1, source - start)
    }

    /// The box of anchor `source` in network-input pixels: the DFL expectation per side, or
    /// the raw distance when the head has one bin per side (`reg_max` 1, YOLO26).
    fn decode(&self, output: &YoloOutput, box_logits: &[f32], source: usize) -> [f32; 4] {
        let anchors = box_logits.len() / (4 * output.reg_max);
        let (level, local) = Self::level_of(output, source);
        let width = output.level_shapes[level].1;
        let centre = [(local % width) as f32 + 0.5, (local / width) as f32 + 0.5];
        let reg_max = output.reg_max;
        let side = |s: usize| match reg_max {
            1 => box_logits[s * anchors + source],
            _ => dfl_expectation(
                (0..reg_max).map(|j| box_logits[(s * reg_max + j) * anchors + source]),
            ),
        };
        let stride = self.network.strides()[level] as f32;
        [
            (centre[0] - side(0)) * stride,
            (centre[1] - side(1)) * stride,
            (centre[0] + side(2)) * stride,
            (centre[1] + side(3)) * stride,
        ]
    }
}

/// `(W, b)` tensors as [`LinearHead`]s.
fn linear_heads(levels: &[(Tensor, Tensor)]) -> Result<Vec<LinearHead>> {
    levels
        .iter()
        .map(|(w, b)| {
            let (classes, dim) = w.dims2()?;
            Ok(LinearHead {
                weight: w.flatten_all()?.to_vec1()?,
                bias: b.to_vec1()?,
                classes,
                dim,
            })
        })
        .collect()
}

/// The best class of each anchor whose sigmoid beats `conf`, chosen on sigmoid values as
/// ultralytics does (ties between saturated sigmoids go to the first class).
fn nms_candidates(logits: &[f32], nc: usize, conf: f32) -> Vec<Candidate> {
    let anchors = logits.len() / nc;
    let mut candidates = Vec::new();
    for a in 0..anchors {
        let mut best = (0, f32::NEG_INFINITY);
        for c in 0..nc {
            let p = sigmoid(logits[c * anchors + a]);
            if p > best.1 {
                best = (c, p);
            }
        }
        if best.1 > conf {
            candidates.push(Candidate {
                bbox: [0.0; 4],
                confidence: best.1,
                class_id: best.0,
                source: a,
            });
        }
    }
    candidates
}

/// ultralytics `Detect.get_topk_index` then the confidence filter: the `k` anchors with the
/// best class score, then the `k` best (anchor, class) pairs among them, in descending order;
/// an anchor may give boxes of several classes. `agnostic` takes each anchor's best class only.
fn topk_candidates(logits: &[f32], nc: usize, options: &DetectOptions) -> Vec<Candidate> {
    let anchors = logits.len() / nc;
    let k = options.max_det.max(300).min(anchors);
    let score = |a: usize, c: usize| sigmoid(logits[c * anchors + a]);
    // Each anchor's best (class, score), computed once rather than in every comparison.
    let best: Vec<(usize, f32)> = (0..anchors)
        .map(|a| {
            (0..nc).fold((0, f32::NEG_INFINITY), |b, c| {
                let s = score(a, c);
                if s > b.1 {
                    (c, s)
                } else {
                    b
                }
            })
        })
        .collect();
    let mut order: Vec<usize> = (0..anchors).collect();
    order.sort_by(|&a, &b| best[b].1.total_cmp(&best[a].1));
    order.truncate(k);
    let mut pairs: Vec<(usize, usize, f32)> = if options.nms.agnostic {
        order.iter().map(|&a| (a, best[a].0, best[a].1)).collect()
    } else {
        order
            .iter()
            .flat_map(|&a| (0..nc).map(move |c| (a, c, score(a, c))))
            .collect()
    };
    pairs.sort_by(|x, y| y.2.total_cmp(&x.2));
    pairs
        .into_iter()
        .take(k)
        .filter(|&(_, _, s)| s > options.conf)
        .take(options.max_det)
        .map(|(a, c, s)| Candidate {
            bbox: [0.0; 4],
            confidence: s,
            class_id: c,
            source: a,
        })
        .collect()
}

impl Stages for YoloDetector {
    /// The letterboxed input tensor `(1, 3, H, W)`, RGB in [0, 1], its geometry, and the
    /// layers whose maps `options.roi` reads.
    type Input = (Tensor, LetterboxGeometry, Vec<usize>);
    type Output = YoloOutput;

    fn preprocess(&self, image: &RgbImage, options: &DetectOptions) -> Result<Self::Input> {
        let InputSize { width, height } = options.input_size();
        let geometry =
            LetterboxGeometry::new(image.dimensions(), (width, height), INPUT_STRIDE, true);
        let boxed = letterbox(image, &geometry);
        let (w, h) = (boxed.width() as usize, boxed.height() as usize);
        let mut chw = vec![0f32; 3 * h * w];
        for (i, p) in boxed.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * h * w + i] = p[c] as f32 / 255.0;
            }
        }
        let input = Tensor::from_vec(chw, (1, 3, h, w), &self.device)?;
        Ok((input, geometry, self.roi_layers(options)?))
    }

    fn forward(&self, (input, _, keep): &Self::Input) -> Result<YoloOutput> {
        crate::nn::on_pool(|| self.network.forward_keeping(input, self.nms_free, keep))
    }

    fn device(&self) -> &Device {
        &self.device
    }

    /// Ultralytics `non_max_suppression` (or the one-to-one top-k) plus `scale_boxes`, keeping
    /// each box's taps.
    fn postprocess(
        &self,
        output: YoloOutput,
        input: &Self::Input,
        options: &DetectOptions,
    ) -> Result<Vec<BoxRecord>> {
        let kept = self.select(&output, options)?;
        self.records(&output, &kept, input, options)
    }
}

impl YoloDetector {
    /// The anchors NMS (or the one-to-one top-k) keeps, their boxes in network-input pixels.
    pub(super) fn select(
        &self,
        output: &YoloOutput,
        options: &DetectOptions,
    ) -> Result<Vec<Candidate>> {
        let logits: Vec<f32> = output.cls_logits.squeeze(0)?.flatten_all()?.to_vec1()?;
        let nc = self.network.nc();
        let mut candidates = if self.nms_free {
            topk_candidates(&logits, nc, options)
        } else {
            nms_candidates(&logits, nc, options.conf)
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Only the candidates' boxes are decoded.
        let box_logits: Vec<f32> = output.box_logits.squeeze(0)?.flatten_all()?.to_vec1()?;
        for c in &mut candidates {
            c.bbox = self.decode(output, &box_logits, c.source);
        }
        Ok(if self.nms_free {
            candidates
        } else {
            non_max_suppression(
                candidates,
                options.nms.iou,
                options.nms.agnostic,
                MAX_NMS,
                options.max_det,
            )
        })
    }

    /// The records of the `kept` boxes, their logits, features and ROI features read from
    /// `output` at their anchors (the pass that chose them, or another pass over the same
    /// input size).
    pub(super) fn records(
        &self,
        output: &YoloOutput,
        kept: &[Candidate],
        (input, geometry, _): &<Self as Stages>::Input,
        options: &DetectOptions,
    ) -> Result<Vec<BoxRecord>> {
        if kept.is_empty() {
            return Ok(Vec::new());
        }
        let logits: Vec<f32> = output.cls_logits.squeeze(0)?.flatten_all()?.to_vec1()?;
        let nc = self.network.nc();
        let features = Self::features(output, kept)?;
        let rois = Self::roi_features(output, kept, input.dim(3)?, options)?;
        let anchors = logits.len() / nc;
        Ok(kept
            .iter()
            .zip(features)
            .zip(rois)
            .map(|((c, feature), roi_features)| BoxRecord {
                bbox: geometry.to_original(c.bbox),
                class_id: c.class_id,
                confidence: c.confidence,
                logits: (0..nc).map(|k| logits[k * anchors + c.source]).collect(),
                feature,
                level: Self::level_of(output, c.source).0 as u8,
                anchor: c.source as u32,
                roi_features,
            })
            .collect())
    }
}

impl YoloDetector {
    /// The boxes of each of `inputs` (of one size), from one forward pass over all of them.
    fn detect_inputs(
        &self,
        inputs: &[<Self as Stages>::Input],
        options: &DetectOptions,
    ) -> Result<Vec<Vec<BoxRecord>>> {
        let Some((_, _, keep)) = inputs.first() else {
            return Ok(Vec::new());
        };
        let tensors: Vec<&Tensor> = inputs.iter().map(|(t, _, _)| t).collect();
        let batch = Tensor::cat(&tensors, 0)?;
        let output =
            crate::nn::on_pool(|| self.network.forward_keeping(&batch, self.nms_free, keep))?;
        (0..inputs.len())
            .map(|i| self.postprocess(output.item(i)?, &inputs[i], options))
            .collect()
    }

    /// The class-branch feature rows of the kept anchors; only those leave the device.
    fn features(output: &YoloOutput, kept: &[Candidate]) -> Result<Vec<Vec<f32>>> {
        let mut features = vec![Vec::new(); kept.len()];
        for (level, map) in output.cls_features.iter().enumerate() {
            let (slots, anchors): (Vec<usize>, Vec<u32>) = kept
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let (l, local) = Self::level_of(output, c.source);
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
        Ok(features)
    }

    /// The YAML indices of the layers `options.roi` reads, refusing a layer the network lacks.
    fn roi_layers(&self, options: &DetectOptions) -> Result<Vec<usize>> {
        let layers = self.network.feature_layers();
        let missing = FeatureSources::missing_roi(&options.roi, &layers);
        if !missing.is_empty() {
            return Err(Error::Unsupported(missing_message(
                &missing,
                self.family,
                &layers,
            )));
        }
        let indices: Vec<usize> = options
            .roi
            .iter()
            .filter_map(|r| r.layer.parse().ok())
            .collect();
        Ok(indices)
    }

    /// Each kept box's ROI features, one per `options.roi` source, from the kept layer maps.
    fn roi_features(
        output: &YoloOutput,
        kept: &[Candidate],
        input_width: usize,
        options: &DetectOptions,
    ) -> Result<Vec<Vec<RoiFeature>>> {
        let mut features = vec![Vec::new(); kept.len()];
        for source in &options.roi {
            let layer: usize = source.layer.parse().unwrap_or(usize::MAX);
            let Some((_, map)) = output.kept.iter().find(|(l, _)| *l == layer) else {
                return Err(Error::Unsupported(format!(
                    "the forward pass kept no map of layer {}",
                    source.layer
                )));
            };
            let (_, h, w, c) = map.dims4()?;
            let data: Vec<f32> = map.squeeze(0)?.flatten_all()?.to_vec1()?;
            let map = FeatureMap {
                data: &data,
                channels: c,
                height: h,
                width: w,
            };
            // Every map's size divides the input's (a multiple of 32), so the stride is exact.
            let stride = (input_width / w) as f32;
            for (c, out) in kept.iter().zip(&mut features) {
                out.push(RoiFeature {
                    source: source.clone(),
                    values: roi_align(&map, c.bbox, stride, source.pool, Sampling::Adaptive),
                });
            }
        }
        Ok(features)
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
    fn detect_timed(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<(Vec<BoxRecord>, StageTimes)> {
        run_stages(self, image, options)
    }

    /// One forward pass per run of at most [`MAX_BATCH`] consecutive images whose letterboxed
    /// inputs have the same size; each image's boxes are those [`Detector::detect`] gives.
    fn detect_batch(
        &self,
        images: &[RgbImage],
        options: &DetectOptions,
    ) -> Result<Vec<Vec<BoxRecord>>> {
        options.check()?;
        let mut boxes = Vec::with_capacity(images.len());
        let mut pending: Vec<<Self as Stages>::Input> = Vec::new();
        for image in images {
            let input = self.preprocess(image, options)?;
            let fits = pending
                .first()
                .is_some_and(|first| first.0.dims() == input.0.dims());
            if !fits || pending.len() == MAX_BATCH {
                boxes.extend(self.detect_inputs(&pending, options)?);
                pending.clear();
            }
            pending.push(input);
        }
        boxes.extend(self.detect_inputs(&pending, options)?);
        Ok(boxes)
    }

    fn family(&self) -> &'static str {
        self.family
    }

    fn class_names(&self) -> &[String] {
        &self.names
    }

    fn set_class_names(&mut self, names: Vec<String>) -> Result<()> {
        if names.len() != self.network.nc() {
            return Err(Error::ClassCount {
                given: names.len(),
                expected: self.network.nc(),
            });
        }
        self.names = names;
        Ok(())
    }

    fn head(&self) -> &ClassHead {
        &self.heads[usize::from(self.nms_free)]
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn feature_layers(&self) -> Vec<FeatureLayer> {
        self.network.feature_layers()
    }

    fn set_layout(&mut self, layout: MapLayout) -> Result<()> {
        self.network.set_layout(layout);
        Ok(())
    }

    fn trained_imgsz(&self) -> Option<u32> {
        self.trained_imgsz
    }

    /// Every setting, except the IoU threshold on the NMS-free head (`agnostic` still keeps
    /// one class per anchor there).
    fn settings_use(&self) -> SettingsUse {
        let iou = match self.nms_free {
            false => Applies::Yes,
            true => Applies::No {
                why: "the NMS-free one-to-one head keeps the top-k boxes without NMS",
            },
        };
        SettingsUse {
            iou,
            ..SettingsUse::ALL
        }
    }

    fn detect_fgsm(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
        epsilons: &[f32],
    ) -> Result<FgsmBoxes> {
        self.fgsm(image, options, epsilons)
    }

    fn set_nms_free(&mut self, on: bool) -> Result<()> {
        if on && self.heads.len() < 2 {
            return Err(Error::Unsupported(format!(
                "{} has no one-to-one head: it runs with NMS only",
                self.family
            )));
        }
        if on != self.nms_free {
            self.nms_free = on;
            // Boxes from the other head are other boxes: a scorer fitted on one refuses the other.
            self.fingerprint = match self.fingerprint.strip_suffix("+one2one") {
                Some(base) => base.to_string(),
                None => format!("{}+one2one", self.fingerprint),
            };
        }
        Ok(())
    }
}
