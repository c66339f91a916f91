//! A convolution whose backward pass computes its input's gradient only, for the gradient of
//! the input image (FGSM) on the CPU. Candle's own backward of `conv2d` also computes the
//! kernel's gradient, a convolution whose kernel is as large as the output map, even when the
//! kernel is a constant: on the shapes YOLOv8n at 256² that took about 90% of an FGSM step.

use candle_core::{bail, CpuStorage, CustomOp1, Device, Layout, Module, Result, Shape, Tensor};
use candle_nn::Conv2d;

/// `conv` applied to `x` (f32, on the CPU), differentiable with respect to `x` alone.
pub fn conv2d_input_grad(conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(InputGradConv(conv.clone()))
}

struct InputGradConv(Conv2d);

impl CustomOp1 for InputGradConv {
    fn name(&self) -> &'static str {
        "conv2d-input-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets())
        else {
            bail!("conv2d-input-grad: expected a contiguous f32 input");
        };
        let x = Tensor::from_slice(&data[start..end], layout.shape(), &Device::Cpu)?;
        let y = self.0.forward(&x)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1()?), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        input_gradient(&self.0, grad, arg.dims4()?).map(Some)
    }
}

/// `dL/dx` of `y = conv(x)` from `dL/dy`: the gradient spread by the stride (zeros between its
/// values), correlated with the kernel flipped in space and with its channel axes swapped
/// within each group, padded by `k − 1 − p` (the transposed convolution, as a convolution).
fn input_gradient(
    conv: &Conv2d,
    grad: &Tensor,
    (_, c_in, h, w): (usize, usize, usize, usize),
) -> Result<Tensor> {
    let config = conv.config();
    let (c_out, per_group, k, kw) = conv.weight().dims4()?;
    let (s, p, groups) = (config.stride, config.padding, config.groups);
    if config.dilation != 1 || k != kw || p > k - 1 {
        bail!("conv2d-input-grad: dilation, non-square kernels and padding ≥ k are not supported");
    }
    let reversed: Vec<u32> = (0..k as u32).rev().collect();
    let reversed = Tensor::new(reversed.as_slice(), grad.device())?;
    let kernel = conv
        .weight()
        .index_select(&reversed, 2)?
        .index_select(&reversed, 3)?
        .reshape((groups, c_out / groups, per_group, k, k))?
        .transpose(1, 2)?
        .reshape((c_in, c_out / groups, k, k))?
        .contiguous()?;
    let (b, c, ho, wo) = grad.dims4()?;
    let spread = if s == 1 {
        grad.clone()
    } else {
        grad.reshape((b, c, ho, 1, wo, 1))?
            .pad_with_zeros(3, 0, s - 1)?
            .pad_with_zeros(5, 0, s - 1)?
            .reshape((b, c, ho * s, wo * s))?
    };
    // The length whose correlation with padding k − 1 − p has the input's length.
    let fit = |t: Tensor, dim: usize, len: usize| -> Result<Tensor> {
        let have = t.dim(dim)?;
        if have >= len {
            t.narrow(dim, 0, len)
        } else {
            t.pad_with_zeros(dim, 0, len - have)
        }
    };
    let spread = fit(spread, 2, h + 2 * p + 1 - k)?;
    let spread = fit(spread, 3, w + 2 * p + 1 - k)?;
    spread.conv2d(&kernel, k - 1 - p, 1, 1, groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use candle_nn::Conv2dConfig;

    /// Forward and input gradient equal Candle's own conv2d's, for the convolutions YOLO has:
    /// 1×1, 3×3 stride 1 and 2, odd and even sizes, dense and depthwise.
    #[test]
    fn matches_candle_conv2d_and_its_gradient() {
        let dev = Device::Cpu;
        let cases = [
            (4, 6, 1, 1, 0, 1, 8, 8),
            (4, 6, 3, 1, 1, 1, 7, 9),
            (4, 6, 3, 2, 1, 1, 8, 10),
            (4, 6, 3, 2, 1, 1, 7, 9),
            (6, 6, 3, 1, 1, 6, 5, 6),
            // Candle's own backward pads the width by the height's remainder: same parity.
            (6, 6, 5, 2, 2, 6, 9, 11),
        ];
        for (c_in, c_out, k, stride, padding, groups, h, w) in cases {
            let weight = Tensor::randn(0f32, 1., (c_out, c_in / groups, k, k), &dev).unwrap();
            let bias = Tensor::randn(0f32, 1., c_out, &dev).unwrap();
            let config = Conv2dConfig {
                padding,
                stride,
                groups,
                ..Default::default()
            };
            let conv = Conv2d::new(weight, Some(bias), config);
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1., (2, c_in, h, w), &dev).unwrap()).unwrap();
            let ours = conv2d_input_grad(&conv, x.as_tensor()).unwrap();
            let theirs = conv.forward(x.as_tensor()).unwrap();
            let max_diff = |a: &Tensor, b: &Tensor| {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                d.to_scalar::<f32>().unwrap()
            };
            assert_eq!(max_diff(&ours, &theirs), 0.0);
            let w_out = Tensor::randn(0f32, 1., ours.dims(), &dev).unwrap();
            let grad = |y: &Tensor| {
                let loss = (y * &w_out).unwrap().sum_all().unwrap();
                loss.backward().unwrap().get(&x).unwrap().clone()
            };
            let diff = max_diff(&grad(&ours), &grad(&theirs));
            assert!(
                diff < 1e-4,
                "{c_in}→{c_out} k{k} s{stride} g{groups} {h}×{w}: {diff}"
            );
        }
    }
}
