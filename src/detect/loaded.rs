//! Loading a detector from a path, whichever kind it is: a folder with `config.json` is a
//! Hugging Face DETR, a `.safetensors` file is a YOLOv8.

use candle_core::Device;
use image::RgbImage;
use std::path::Path;
use std::time::Instant;

use super::detr::DetrDetector;
use super::yolov8::YoloDetector;
use super::{BoxRecord, ClassHead, DetectOptions, Detector};
use crate::error::{Error, Result};

pub enum LoadedDetector {
    Yolo(Box<YoloDetector>),
    Detr(Box<DetrDetector>),
}

/// Milliseconds spent in each stage of one detection.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub preprocess_ms: f64,
    pub forward_ms: f64,
    pub postprocess_ms: f64,
}

/// A folder with `config.json` → DETR; a `.safetensors` file → YOLOv8.
pub fn load_detector(path: &Path, device: &Device) -> Result<LoadedDetector> {
    if path.is_dir() {
        if !path.join("config.json").is_file() {
            return Err(Error::BadModel {
                path: path.join("config.json"),
                reason: "missing: a model folder must be a Hugging Face DETR folder (config.json, model.safetensors)".into(),
            });
        }
        return Ok(LoadedDetector::Detr(Box::new(DetrDetector::load(
            path, device,
        )?)));
    }
    let is_safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if is_safetensors || !path.exists() {
        return Ok(LoadedDetector::Yolo(Box::new(YoloDetector::load(
            path, device,
        )?)));
    }
    Err(Error::BadModel {
        path: path.to_path_buf(),
        reason:
            "not a model: expected a YOLOv8 .safetensors file or a DETR folder with config.json"
                .into(),
    })
}

impl LoadedDetector {
    pub fn set_class_names(&mut self, names: Vec<String>) -> std::result::Result<(), String> {
        match self {
            LoadedDetector::Yolo(d) => d.set_class_names(names),
            LoadedDetector::Detr(d) => d.set_class_names(names),
        }
    }

    fn inner(&self) -> &dyn Detector {
        match self {
            LoadedDetector::Yolo(d) => d.as_ref(),
            LoadedDetector::Detr(d) => d.as_ref(),
        }
    }

    /// One detection, timing each stage (the forward pass waits for the device).
    pub fn detect_timed(
        &self,
        image: &RgbImage,
        options: &DetectOptions,
        device: &Device,
    ) -> Result<(Vec<BoxRecord>, StageTimes)> {
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let t0 = Instant::now();
        let (boxes, t1, t2) = match self {
            LoadedDetector::Yolo(d) => {
                let (input, geometry) = d.preprocess(image, options)?;
                let t1 = Instant::now();
                let output = d.model().forward(&input)?;
                device.synchronize()?;
                let t2 = Instant::now();
                (d.postprocess(&output, &geometry, options)?, t1, t2)
            }
            LoadedDetector::Detr(d) => {
                let input = d.preprocess(image)?;
                let t1 = Instant::now();
                let output = d.model().forward(&input)?;
                device.synchronize()?;
                let t2 = Instant::now();
                (d.postprocess(&output, image.dimensions(), options)?, t1, t2)
            }
        };
        let t3 = Instant::now();
        let times = StageTimes {
            preprocess_ms: ms(t0, t1),
            forward_ms: ms(t1, t2),
            postprocess_ms: ms(t2, t3),
        };
        Ok((boxes, times))
    }
}

impl Detector for LoadedDetector {
    fn detect(&self, image: &RgbImage, options: &DetectOptions) -> Result<Vec<BoxRecord>> {
        self.inner().detect(image, options)
    }

    fn class_names(&self) -> &[String] {
        self.inner().class_names()
    }

    fn head(&self) -> &ClassHead {
        self.inner().head()
    }

    fn fingerprint(&self) -> &str {
        self.inner().fingerprint()
    }
}
