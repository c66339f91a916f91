//! Max pooling and upsampling on channels-last maps, for SPPF and the YOLOv8 neck.
//!
//! Candle's `max_pool2d` works channels-first, one window at a time. SPPF pools the same map
//! three times with a 5×5 window, stride 1; a max over a rectangle is a max over its rows of
//! maxima over its columns, so two passes of 5 comparisons replace 25, and on NHWC each
//! comparison covers a pixel's contiguous channels.

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
}
