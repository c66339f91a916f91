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
mod stages;
pub mod ultralytics;
pub mod yolo11;
pub mod yolo26;
pub mod yolov8;

pub use load::{load_detector, supported, Family, ModelSource, WeightFile, FAMILIES};
pub use stages::{run_stages, StageTimes, Stages};

// What a `Detector` returns, also here for detect's users (the parity tests import it from here).
pub use crate::core::BoxRecord;

use image::RgbImage;

use crate::core::settings::{DetectOptions, SettingsUse};
use crate::core::sources::FeatureLayer;
use crate::core::ClassHead;
use crate::error::Result;
use crate::nn::MapLayout;

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
    /// Which of the settings that not every family reads (NMS, the input size) this detector
    /// reads; it ignores the others. Box sets record only these, and only these are compared
    /// with a scorer's.
    fn settings_use(&self) -> SettingsUse {
        SettingsUse::ALL
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
    fn settings_use(&self) -> SettingsUse {
        (**self).settings_use()
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
