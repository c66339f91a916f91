//! YOLOv8 (ultralytics) in Candle: architecture inference, the network, and the DFL box decode.

mod arch;
mod detector;
mod model;

pub use arch::{Arch, C2fArch, HeadArch, Naming, Scale, SppfArch, REG_MAX};
pub use detector::YoloDetector;
pub use model::{YoloOutput, YoloV8};

use candle_core::{DType, Tensor};

use crate::error::Result;

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
