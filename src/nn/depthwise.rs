//! Depthwise convolution on channels-last maps, for the depthwise 3×3 convolutions of the
//! YOLO11 and YOLO26 heads and attention blocks.
//!
//! Each output pixel is a sum over the window's pixels of a per-channel product; on NHWC every
//! term is a pass over contiguous channels, which the compiler vectorises. The fused pointwise
//! kernel does not apply: a depthwise convolution has no reduction over channels.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::activation::{bias_act, Activation};

/// A depthwise `k × k` convolution with bias and activation, padding `k / 2`.
#[derive(Debug, Clone)]
pub struct DepthwiseNhwc {
    /// `(k, k, C)`: tap-major, so that one tap's weights are contiguous over channels.
    weight: Vec<f32>,
    bias: Vec<f32>,
    k: usize,
    stride: usize,
    act: Activation,
}

impl DepthwiseNhwc {
    /// From a Candle weight `(C, 1, k, k)` and bias `(C,)`.
    pub fn new(weight: &Tensor, bias: &Tensor, stride: usize, act: Activation) -> Result<Self> {
        let (c, one, k, k2) = weight.dims4()?;
        if one != 1 || k != k2 || k.is_multiple_of(2) {
            candle_core::bail!(
                "depthwise weight {:?}: expected (C, 1, k, k), k odd",
                weight.dims()
            );
        }
        let weight = weight
            .permute((2, 3, 0, 1))?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bias = bias.to_vec1::<f32>()?;
        if bias.len() != c {
            candle_core::bail!("depthwise bias has {} values for {c} channels", bias.len());
        }
        Ok(Self {
            weight,
            bias,
            k,
            stride,
            act,
        })
    }

    /// `x`: `(B, H, W, C)` f32 on the CPU.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        if c != self.bias.len() {
            candle_core::bail!("depthwise conv over {} channels got {c}", self.bias.len());
        }
        let (k, s, pad) = (self.k, self.stride, self.k / 2);
        let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
        let input = x.flatten_all()?.to_vec1::<f32>()?;
        let mut out = vec![0f32; b * oh * ow * c];
        out.par_chunks_mut(ow * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (image, oy) = (row / oh, row % oh);
                let plane = &input[image * h * w * c..(image + 1) * h * w * c];
                for (ox, px) in dst.chunks_exact_mut(c).enumerate() {
                    for ky in 0..k {
                        let Some(iy) = (oy * s + ky).checked_sub(pad).filter(|&y| y < h) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ix) = (ox * s + kx).checked_sub(pad).filter(|&x| x < w) else {
                                continue;
                            };
                            let src = &plane[(iy * w + ix) * c..][..c];
                            let taps = &self.weight[(ky * k + kx) * c..][..c];
                            for ((o, &v), &t) in px.iter_mut().zip(src).zip(taps) {
                                *o += v * t;
                            }
                        }
                    }
                }
                bias_act(dst, &self.bias, self.act);
            });
        Tensor::from_vec(out, (b, oh, ow, c), x.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};
    use candle_nn::{Conv2d, Conv2dConfig};

    #[test]
    fn matches_candle_grouped_conv() {
        let dev = Device::Cpu;
        for (c, h, w, stride) in [(8, 7, 9, 1), (5, 6, 4, 2), (16, 3, 3, 1)] {
            let weight = Tensor::randn(0f32, 1., (c, 1, 3, 3), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c, &dev).unwrap();
            let config = Conv2dConfig {
                padding: 1,
                stride,
                groups: c,
                ..Default::default()
            };
            let conv = Conv2d::new(weight.clone(), Some(bias.clone()), config);
            let x = Tensor::randn(0f32, 1., (2, c, h, w), &dev).unwrap();
            let want = conv.forward(&x).unwrap().silu().unwrap();
            let dw = DepthwiseNhwc::new(&weight, &bias, stride, Activation::Silu).unwrap();
            let got = dw
                .forward(&x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap())
                .unwrap()
                .permute((0, 3, 1, 2))
                .unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                diff.to_scalar::<f32>().unwrap() < 1e-5,
                "{c}×{h}×{w}/{stride}"
            );
        }
    }
}
