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
        self.run(x, None)
    }

    /// `act(conv(x) + bias) + residual`, `residual` of the output's shape.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.run(x, Some(residual))
    }

    fn run(&self, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        if c != self.bias.len() {
            candle_core::bail!("depthwise conv over {} channels got {c}", self.bias.len());
        }
        let (k, s, pad) = (self.k, self.stride, self.k / 2);
        let (oh, ow) = ((h + 2 * pad - k) / s + 1, (w + 2 * pad - k) / s + 1);
        let residual = residual.map(Tensor::contiguous).transpose()?;
        if let Some(r) = &residual {
            if r.dims() != [b, oh, ow, c] {
                candle_core::bail!("depthwise residual {:?} for {:?}", r.dims(), (b, oh, ow, c));
            }
        }
        // The input and residual are read where they lie: copying them out cost a full pass.
        let x = x.contiguous()?;
        let guard = x.storage_and_layout();
        let r_guard = residual.as_ref().map(Tensor::storage_and_layout);
        let input = f32_slice(&guard.0, guard.1, b * h * w * c)?;
        let res = match &r_guard {
            Some((storage, layout)) => Some(f32_slice(storage, layout, b * oh * ow * c)?),
            None => None,
        };
        let mut out = vec![0f32; b * oh * ow * c];
        out.par_chunks_mut(ow * c)
            .enumerate()
            .for_each(|(row, dst)| {
                let (image, oy) = (row / oh, row % oh);
                let plane = &input[image * h * w * c..(image + 1) * h * w * c];
                let at = Row { plane, h, w, oy };
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F, checked just above.
                    unsafe { self.row_avx512(&at, dst) };
                } else {
                    self.row(&at, dst);
                }
                #[cfg(not(target_arch = "x86_64"))]
                self.row(&at, dst);
                bias_act(dst, &self.bias, self.act);
                if let Some(res) = res {
                    for (o, &v) in dst.iter_mut().zip(&res[row * ow * c..]) {
                        *o += v;
                    }
                }
            });
        Tensor::from_vec(out, (b, oh, ow, c), x.device())
    }
}

/// One output row to compute: its input image and row index.
struct Row<'a> {
    plane: &'a [f32],
    h: usize,
    w: usize,
    oy: usize,
}

impl DepthwiseNhwc {
    /// The same loop compiled for AVX-512, which the compiler then vectorises 16 channels
    /// wide (the default target has SSE2 only); the same operations in the same order, so
    /// the same values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn row_avx512(&self, at: &Row, dst: &mut [f32]) {
        self.row(at, dst)
    }

    /// Accumulates the window's taps into output row `at.oy` (zeroed).
    #[inline(always)]
    fn row(&self, at: &Row, dst: &mut [f32]) {
        let (k, s, pad, c) = (self.k, self.stride, self.k / 2, self.bias.len());
        let (h, w, oy) = (at.h, at.w, at.oy);
        for (ox, px) in dst.chunks_exact_mut(c).enumerate() {
            for ky in 0..k {
                let Some(iy) = (oy * s + ky).checked_sub(pad).filter(|&y| y < h) else {
                    continue;
                };
                for kx in 0..k {
                    let Some(ix) = (ox * s + kx).checked_sub(pad).filter(|&x| x < w) else {
                        continue;
                    };
                    let src = &at.plane[(iy * w + ix) * c..][..c];
                    let taps = &self.weight[(ky * k + kx) * c..][..c];
                    for ((o, &v), &t) in px.iter_mut().zip(src).zip(taps) {
                        *o += v * t;
                    }
                }
            }
        }
    }
}

/// The `len` values of a contiguous f32 CPU tensor's storage.
fn f32_slice<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
    len: usize,
) -> Result<&'a [f32]> {
    match storage {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) => {
            Ok(&data[layout.start_offset()..][..len])
        }
        _ => candle_core::bail!("depthwise conv: f32 CPU tensors only"),
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
            let diff = (&got - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(
                diff.to_scalar::<f32>().unwrap() < 1e-5,
                "{c}×{h}×{w}/{stride}"
            );
            // With a residual: the same values plus it, exactly.
            let x = x.permute((0, 2, 3, 1)).unwrap();
            let residual =
                Tensor::randn(0f32, 1., got.permute((0, 2, 3, 1)).unwrap().dims(), &dev).unwrap();
            let want = (dw.forward(&x).unwrap() + &residual).unwrap();
            let got = dw.forward_add(&x, &residual).unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "{c}×{h}×{w}/{stride} + residual"
            );
        }
    }
}
