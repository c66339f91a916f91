//! Detectors and what they hand over for every kept box.

pub mod checkpoint;
pub mod convert;
pub mod detr;
pub mod fgsm;
pub mod image_io;
pub mod letterbox;
mod load;
pub mod nms;
pub mod roi_align;
mod safetensors_file;
pub mod sources;
mod stages;
pub mod ultralytics;
pub mod yolo11;
pub mod yolo26;
pub mod yolov8;

pub use load::{load_detector, supported, Family, ModelSource, WeightFile, FAMILIES};
pub use stages::{run_stages, StageTimes, Stages};

use image::RgbImage;
use serde::Serialize;

use crate::error::Result;
use crate::nn::MapLayout;
use sources::{FeatureLayer, RoiSource};

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
    /// The layer maps ROI-aligned on the box, one per [`DetectOptions::roi`] source, in order.
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

/// Post-processing settings; the defaults are ultralytics `predict`'s.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct DetectOptions {
    /// Keep boxes whose confidence is strictly above this.
    pub conf: f32,
    /// NMS suppresses boxes whose IoU with a kept box is strictly above this.
    pub iou: f32,
    pub max_det: usize,
    /// Suppress across classes.
    pub agnostic: bool,
    /// Target input size (width, height) before rect padding.
    pub imgsz: (u32, u32),
    /// Layer maps to ROI-align on every box (none by default: they cost time).
    #[serde(default)]
    pub roi: Vec<RoiSource>,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            conf: 0.25,
            iou: 0.7,
            max_det: 300,
            agnostic: false,
            imgsz: (640, 640),
            roi: Vec::new(),
        }
    }
}

/// YOLO input sides are multiples of this (the largest stride of the network).
pub const INPUT_STRIDE: u32 = 32;

/// `side` rounded up to a multiple of [`INPUT_STRIDE`], as ultralytics' `check_imgsz` does.
fn round_to_stride(side: u32) -> u32 {
    side.div_ceil(INPUT_STRIDE).max(1) * INPUT_STRIDE
}

/// `HEIGHT,WIDTH`, or one number for a square.
fn size_text((w, h): (u32, u32)) -> String {
    if w == h {
        w.to_string()
    } else {
        format!("{h},{w}")
    }
}

fn check_fraction(item: &str, value: f32) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(crate::error::Error::OutOfRange {
            item: item.into(),
            value: value.to_string(),
            range: "[0, 1]".into(),
        })
    }
}

impl DetectOptions {
    /// Checks every setting against its range and the input size against the
    /// [`crate::limits::Limits`] of the environment. Returns the warnings to show: an input
    /// side that is not a multiple of [`INPUT_STRIDE`] is rounded up (see [`Self::input_size`]).
    pub fn check(&self) -> Result<Vec<String>> {
        check_fraction("conf", self.conf)?;
        check_fraction("iou", self.iou)?;
        if self.max_det == 0 {
            return Err(crate::error::Error::OutOfRange {
                item: "max_det".into(),
                value: "0".into(),
                range: "[1, ∞)".into(),
            });
        }
        let limit = crate::limits::Limits::from_env()?.max_imgsz;
        let (w, h) = self.imgsz;
        if [w, h].iter().any(|&side| side == 0 || side > limit) {
            return Err(crate::error::Error::OutOfRange {
                item: "imgsz".into(),
                value: size_text(self.imgsz),
                range: format!(
                    "[1, {limit}] (set {} to raise the limit)",
                    crate::limits::MAX_IMGSZ_VAR
                ),
            });
        }
        let input = self.input_size();
        Ok(if input == self.imgsz {
            Vec::new()
        } else {
            vec![format!(
                "imgsz {} is not a multiple of the stride {INPUT_STRIDE}: updated to {}",
                size_text(self.imgsz),
                size_text(input)
            )]
        })
    }

    /// The input size the network runs at: `imgsz` with each side rounded up to a multiple of
    /// [`INPUT_STRIDE`], as ultralytics does.
    pub fn input_size(&self) -> (u32, u32) {
        (round_to_stride(self.imgsz.0), round_to_stride(self.imgsz.1))
    }
}

/// A detector that keeps, for every box, its logits and feature.
pub trait Detector: Send + Sync {
    /// One detection, timing each stage (the forward pass waits for the device); families
    /// implement it with [`run_stages`].
    fn detect_timed(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<(Vec<BoxRecord>, StageTimes)>;

    fn detect(&self, image: &RgbImage, options: &DetectOptions) -> Result<Vec<BoxRecord>> {
        self.detect_timed(image, options).map(|(boxes, _)| boxes)
    }

    /// Detects on several images: the boxes of `images[i]` are at index `i`, the same boxes
    /// as [`Detector::detect`] gives for that image. A family may run the images through the
    /// network together; by default they run one by one.
    fn detect_batch(
        &self,
        images: &[RgbImage],
        options: &DetectOptions,
    ) -> Result<Vec<Vec<BoxRecord>>> {
        images.iter().map(|im| self.detect(im, options)).collect()
    }

    /// The family's name, as in [`FAMILIES`].
    fn family(&self) -> &'static str;
    fn class_names(&self) -> &[String];
    /// Replaces the class names (e.g. from a `data.yaml`); their count must match the head.
    fn set_class_names(&mut self, names: Vec<String>) -> Result<()>;
    fn head(&self) -> &ClassHead;
    /// Identifies the weights, so that a scorer fitted for one model refuses another's boxes.
    fn fingerprint(&self) -> &str;
    /// The layers whose maps [`DetectOptions::roi`] can ROI-align on the boxes.
    fn feature_layers(&self) -> Vec<FeatureLayer> {
        Vec::new()
    }
    /// Runs the network in `layout` (Candle's channels-first ops are the reference path); a
    /// family with one path only refuses.
    fn set_layout(&mut self, layout: MapLayout) -> Result<()> {
        let _ = layout;
        Err(crate::error::Error::Unsupported(format!(
            "{} runs one path only; it has no choice of layout",
            self.family()
        )))
    }
    /// The square input size the model was trained at, when its file records it (ultralytics
    /// checkpoints do, and `oodbox convert` keeps it).
    fn trained_imgsz(&self) -> Option<u32> {
        None
    }
    /// The boxes of `image` and their FGSM surrogates, one set per `ε` of `epsilons` (in the
    /// network's input units, [0, 1]; see [`fgsm`]). Families without a differentiable forward
    /// pass refuse.
    fn detect_fgsm(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
        epsilons: &[f32],
    ) -> Result<fgsm::FgsmBoxes> {
        let _ = (image, options, epsilons);
        Err(crate::error::Error::Unsupported(format!(
            "{} has no differentiable forward pass: it makes no FGSM surrogates",
            self.family()
        )))
    }
    /// Runs the NMS-free one-to-one head with top-k instead of the one-to-many head with NMS
    /// (ultralytics' `nms=False`); only families with both heads (YOLO26) accept it. The class
    /// head and the fingerprint follow the branch.
    fn set_nms_free(&mut self, on: bool) -> Result<()> {
        match on {
            false => Ok(()),
            true => Err(crate::error::Error::Unsupported(format!(
                "{} has no one-to-one head: it runs with NMS only",
                self.family()
            ))),
        }
    }
}

/// A boxed detector is a detector, so that what [`load_detector`] returns goes wherever a
/// `&impl Detector` does.
impl<D: Detector + ?Sized> Detector for Box<D> {
    fn detect_timed(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
    ) -> Result<(Vec<BoxRecord>, StageTimes)> {
        (**self).detect_timed(image, options)
    }
    fn detect(&self, image: &RgbImage, options: &DetectOptions) -> Result<Vec<BoxRecord>> {
        (**self).detect(image, options)
    }
    fn detect_batch(
        &self,
        images: &[RgbImage],
        options: &DetectOptions,
    ) -> Result<Vec<Vec<BoxRecord>>> {
        (**self).detect_batch(images, options)
    }
    fn family(&self) -> &'static str {
        (**self).family()
    }
    fn class_names(&self) -> &[String] {
        (**self).class_names()
    }
    fn set_class_names(&mut self, names: Vec<String>) -> Result<()> {
        (**self).set_class_names(names)
    }
    fn head(&self) -> &ClassHead {
        (**self).head()
    }
    fn fingerprint(&self) -> &str {
        (**self).fingerprint()
    }
    fn feature_layers(&self) -> Vec<FeatureLayer> {
        (**self).feature_layers()
    }
    fn set_layout(&mut self, layout: MapLayout) -> Result<()> {
        (**self).set_layout(layout)
    }
    fn set_nms_free(&mut self, on: bool) -> Result<()> {
        (**self).set_nms_free(on)
    }
    fn trained_imgsz(&self) -> Option<u32> {
        (**self).trained_imgsz()
    }
    fn detect_fgsm(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
        epsilons: &[f32],
    ) -> Result<fgsm::FgsmBoxes> {
        (**self).detect_fgsm(image, options, epsilons)
    }
}
