//! Max pooling and upsampling on channels-last maps, for SPPF and the YOLOv8 neck.
//!
//! Candle's `max_pool2d` works channels-first, one window at a time. SPPF pools the same map
//! three times with a 5×5 window, stride 1; a max over a rectangle is a max over its rows of
//! maxima over its columns, so two passes of 5 comparisons replace 25, and on NHWC each
//! comparison covers a pixel's contiguous channels.
//!
//! The channels-first versions ([`max_pool_same_nchw`], [`upsample2_nchw`]) are built from
//! Candle ops whose backward pass is right, for the gradient of the input image (FGSM): Candle's
//! `max_pool2d` has no backward for a window other than the stride, and its nearest upsampling's
//! backward overwrites the gradient its input already gathered from other consumers instead of
//! adding to it (candle-core 0.11.1, `backprop.rs`).

use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// Max over `k × k` windows (k odd), stride 1, padding `k / 2` that never wins (PyTorch pads
/// with −∞), on a `(B, H, W, C)` f32 map.
pub fn max_pool_same(x: &Tensor, k: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if k.is_multiple_of(2) {
        candle_core::bail!("max_pool_same: window {k} is not odd");
    }
    let r = k / 2;
    let input = x.flatten_all()?.to_vec1::<f32>()?;
    let row_len = w * c;
    // Along each row: the max over columns x − r ..= x + r that exist.
    let mut across = vec![0f32; input.len()];
    across
        .par_chunks_mut(row_len)
        .zip(input.par_chunks(row_len))
        .for_each(|(out, row)| {
            for (x, px) in out.chunks_exact_mut(c).enumerate() {
                let (lo, hi) = (x.saturating_sub(r), (x + r).min(w - 1));
                px.copy_from_slice(&row[lo * c..(lo + 1) * c]);
                for src in row[(lo + 1) * c..(hi + 1) * c].chunks_exact(c) {
                    px.iter_mut().zip(src).for_each(|(m, &v)| *m = m.max(v));
                }
            }
        });
    // Down each column of those: rows y − r ..= y + r of the same image.
    let mut out = vec![0f32; input.len()];
    out.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(i, dst)| {
            let (image, y) = (i / h, i % h);
            let (lo, hi) = (y.saturating_sub(r), (y + r).min(h - 1));
            let row =
                |yy: usize| &across[(image * h + yy) * row_len..(image * h + yy + 1) * row_len];
            dst.copy_from_slice(row(lo));
            for yy in lo + 1..=hi {
                dst.iter_mut()
                    .zip(row(yy))
                    .for_each(|(m, &v)| *m = m.max(v));
            }
        });
    Tensor::from_vec(out, (b, h, w, c), x.device())
}

/// Nearest-neighbour 2× upsampling of a `(B, H, W, C)` f32 map: each pixel's channels copied
/// into a 2×2 block, output rows in parallel. (Candle's broadcast-then-copy walks the strided
/// view one element at a time on one thread.)
pub fn upsample2(x: &Tensor) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let input = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; 4 * input.len()];
    out.par_chunks_mut(2 * w * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let src = &input[(row / 2) * w * c..(row / 2 + 1) * w * c];
            for (pair, px) in dst.chunks_exact_mut(2 * c).zip(src.chunks_exact(c)) {
                pair[..c].copy_from_slice(px);
                pair[c..].copy_from_slice(px);
            }
        });
    Tensor::from_vec(out, (b, 2 * h, 2 * w, c), x.device())
}

/// [`max_pool_same`] on a `(B, C, H, W)` map, as the maximum of `k` column shifts and then of
/// `k` row shifts of the edge-padded map (edge padding gives the maxima of −∞ padding: every
/// window that reaches into the padding also holds the edge value it repeats), so that the
/// result is differentiable.
pub fn max_pool_same_nchw(x: &Tensor, k: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if k.is_multiple_of(2) {
        candle_core::bail!("max_pool_same_nchw: window {k} is not odd");
    }
    let r = k / 2;
    let shifted_max = |x: &Tensor, dim: usize, len: usize| -> Result<Tensor> {
        let padded = x.pad_with_same(dim, r, r)?;
        (1..k).try_fold(padded.narrow(dim, 0, len)?, |m, s| {
            m.maximum(&padded.narrow(dim, s, len)?)
        })
    };
    shifted_max(&shifted_max(x, 3, w)?, 2, h)
}

/// Nearest-neighbour 2× upsampling of a `(B, C, H, W)` map as a broadcast, whose backward sums
/// each 2×2 block into its source (and adds to the source's other gradients).
pub fn upsample2_nchw(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Candle pads by repeating the edge, which gives the same maxima as −∞ padding: every
    /// window that reaches into the padding also holds the edge value it repeats.
    #[test]
    fn matches_candle_pooling_over_edge_padding() {
        let dev = Device::Cpu;
        for (b, h, w, c, k) in [(2, 7, 9, 5, 5), (1, 3, 2, 17, 5), (1, 6, 6, 3, 3)] {
            let x = Tensor::randn(0f32, 1., (b, h, w, c), &dev).unwrap();
            let got = max_pool_same(&x, k).unwrap();
            let r = k / 2;
            let want = x
                .permute((0, 3, 1, 2))
                .unwrap()
                .pad_with_same(2, r, r)
                .unwrap()
                .pad_with_same(3, r, r)
                .unwrap()
                .max_pool2d_with_stride(k, 1)
                .unwrap()
                .permute((0, 2, 3, 1))
                .unwrap();
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(
                diff.to_scalar::<f32>().unwrap(),
                0.0,
                "{b}×{h}×{w}×{c} k{k}"
            );
        }
    }

    #[test]
    fn upsample2_matches_candle_nearest() {
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 7), &Device::Cpu).unwrap();
        let got = upsample2(&x).unwrap();
        let want = x
            .permute((0, 3, 1, 2))
            .unwrap()
            .upsample_nearest2d(6, 10)
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        assert_eq!(got.dims(), want.dims());
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn nchw_versions_match_candle_forward() {
        let x = Tensor::randn(0f32, 1., (2, 3, 7, 9), &Device::Cpu).unwrap();
        let pooled = max_pool_same_nchw(&x, 5).unwrap();
        let want = x
            .pad_with_same(2, 2, 2)
            .unwrap()
            .pad_with_same(3, 2, 2)
            .unwrap()
            .max_pool2d_with_stride(5, 1)
            .unwrap();
        let diff = (pooled - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        let up = upsample2_nchw(&x).unwrap();
        let want = x.upsample_nearest2d(14, 18).unwrap();
        let diff = (up - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    /// `L = Σ w · f(x) + Σ x²` (the input also used beside `f`, as SPPF's and the neck's inputs
    /// are): the autograd gradient equals central finite differences, in f64.
    fn check_gradient(f: impl Fn(&Tensor) -> Result<Tensor>, shape: (usize, usize, usize, usize)) {
        let dev = Device::Cpu;
        let x =
            candle_core::Var::from_tensor(&Tensor::randn(0f64, 1., shape, &dev).unwrap()).unwrap();
        let out_shape = f(x.as_tensor()).unwrap().dims().to_vec();
        let w = Tensor::randn(0f64, 1., out_shape, &dev).unwrap();
        let loss = |x: &Tensor| -> Tensor {
            let a = (f(x).unwrap() * &w).unwrap().sum_all().unwrap();
            (a + x.sqr().unwrap().sum_all().unwrap()).unwrap()
        };
        let grads = loss(x.as_tensor()).backward().unwrap();
        let grad: Vec<f64> = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-6;
        for (i, g) in grad.iter().enumerate() {
            let at = |d: f64| {
                let mut v = base.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, shape, &dev).unwrap();
                loss(&t).to_scalar::<f64>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - g).abs() < 1e-5,
                "element {i}: autograd {g}, numeric {numeric}"
            );
        }
    }

    #[test]
    fn nchw_versions_have_the_finite_difference_gradient() {
        // Random values: no ties, so the max is differentiable at every element.
        check_gradient(|x| max_pool_same_nchw(x, 5), (1, 2, 6, 7));
        check_gradient(upsample2_nchw, (2, 2, 3, 4));
    }
}
