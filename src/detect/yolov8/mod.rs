//! YOLOv8 (ultralytics) in Candle: architecture inference, the network, and the DFL box decode.

mod arch;
mod model;

pub use crate::detect::ultralytics::{YoloDetector, YoloOutput};
pub use arch::{Arch, C2fArch, HeadArch, Naming, Scale, SppfArch, REG_MAX};
pub use model::YoloV8;

use candle_core::{DType, Device, Tensor};

use crate::detect::ultralytics::{fingerprint, names_from_metadata};
use crate::detect::{Detector, Family, ModelSource, WeightFile};
use crate::error::Result;

/// YOLOv8 weight files: checkpoints, or safetensors in ultralytics or Candle-example names.
pub const FAMILY: Family = Family {
    name: "yolov8",
    describes: "YOLOv8 (best.pt, last.pt or .safetensors)",
    probe,
    load,
};

fn probe(source: &ModelSource) -> bool {
    match source {
        ModelSource::Weights(file) => match file.metadata.get("family") {
            Some(family) => family == "yolov8",
            None => Naming::detect(file.names()).is_some(),
        },
        ModelSource::Folder(_) => false,
    }
}

fn load(source: ModelSource, device: &Device) -> Result<Box<dyn Detector>> {
    match source {
        ModelSource::Weights(file) => Ok(Box::new(load_weights(file, device)?)),
        ModelSource::Folder(path) => Err(crate::error::Error::BadModel {
            path,
            reason: "a folder is not a YOLOv8 weight file".into(),
        }),
    }
}

/// Loads a YOLOv8 safetensors file. Class names come from its metadata (`names`, a JSON list)
/// when present, else `class0`, `class1`, ...
pub fn load_safetensors(path: &std::path::Path, device: &Device) -> Result<YoloDetector> {
    load_weights(WeightFile::safetensors(path)?, device)
}

fn load_weights(file: WeightFile, device: &Device) -> Result<YoloDetector> {
    let path = file.path.clone();
    let fingerprint = fingerprint(&file)?;
    let model = YoloV8::from_weights(file, device)?;
    let names = names_from_metadata(&path, &model.metadata, model.nc())?;
    let metadata = model.metadata.clone();
    Ok(
        YoloDetector::new(Box::new(model), FAMILY.name, device, names, fingerprint)?
            .with_trained_imgsz(&metadata),
    )
}

/// Decodes raw DFL box logits `(B, 4·reg_max, A)` into `(B, A, 4)` boxes `(x1, y1, x2, y2)` in
/// network-input pixels: softmax expectation over the bins 0..reg_max per side (l, t, r, b),
/// around the anchor points `(col + 0.5, row + 0.5)·stride` of each level, row-major.
pub fn decode_boxes(
    box_logits: &Tensor,
    level_shapes: &[(usize, usize)],
    strides: &[usize],
) -> Result<Tensor> {
    let (b, c, a) = box_logits.dims3()?;
    let anchors: usize = level_shapes.iter().map(|(h, w)| h * w).sum();
    if c % 4 != 0 || anchors != a || level_shapes.len() != strides.len() {
        return Err(candle_core::Error::Msg(format!(
            "box logits {:?} do not match {} levels {level_shapes:?} with strides {strides:?}",
            box_logits.dims(),
            strides.len()
        ))
        .into());
    }
    let (reg_max, device, dtype) = (c / 4, box_logits.device(), box_logits.dtype());
    let probs = candle_nn::ops::softmax(&box_logits.reshape((b, 4, reg_max, a))?, 2)?;
    let bins = Tensor::arange(0f32, reg_max as f32, device)?
        .to_dtype(dtype)?
        .reshape((1, 1, reg_max, 1))?;
    // (B, 4, A): distances l, t, r, b in cells.
    let dist = probs.broadcast_mul(&bins)?.sum(2)?;
    let (mut xs, mut ys, mut scale) = (Vec::new(), Vec::new(), Vec::new());
    for (&(h, w), &stride) in level_shapes.iter().zip(strides) {
        for row in 0..h {
            for col in 0..w {
                xs.push(col as f32 + 0.5);
                ys.push(row as f32 + 0.5);
                scale.push(stride as f32);
            }
        }
    }
    // (1, 4, A): rows x, y, x, y, to which -l, -t, +r, +b are added.
    let centres = Tensor::from_iter(xs.iter().chain(&ys).chain(&xs).chain(&ys).copied(), device)?
        .reshape((1, 4, a))?;
    let sign = Tensor::new(&[-1f32, -1., 1., 1.], device)?.reshape((1, 4, 1))?;
    let scale = Tensor::from_vec(scale, (1, 1, a), device)?;
    let boxes = centres
        .broadcast_add(&dist.to_dtype(DType::F32)?.broadcast_mul(&sign)?)?
        .broadcast_mul(&scale)?;
    Ok(boxes.to_dtype(dtype)?.transpose(1, 2)?.contiguous()?)
}
