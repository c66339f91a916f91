//! The convolution's matrix product on AVX-512: a 12×32 register-blocked micro-kernel over
//! weights packed once at load.
//!
//! The `gemm` crate, which Candle also uses, only has AVX2 kernels on stable Rust (its AVX-512
//! ones need the `nightly` feature), so on AVX-512 machines it runs at half the vector width.
//! Per step of the shared dimension the kernel broadcasts one value from each of 12 rows and
//! multiplies it into two 16-wide weight vectors: 24 accumulators in registers, 24 FMAs per 14
//! loads, so the FMA units rather than the loads set the pace.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// Rows (output pixels) per micro-kernel call.
const MR: usize = 12;
/// Columns (output channels) per vector.
const LANES: usize = 16;

/// A `k × n` row-major weight matrix cut into panels of 32 columns (the last one 16 or 32
/// wide), each stored as `k` contiguous rows, zero-padded to its width.
#[derive(Debug, Clone)]
pub struct PackedWeights {
    data: Vec<f32>,
    k: usize,
    n: usize,
}

impl PackedWeights {
    /// `None` when the CPU lacks AVX-512F.
    pub fn new(weight: &[f32], k: usize, n: usize) -> Option<Self> {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return None;
        }
        let mut data = Vec::with_capacity(k * n.next_multiple_of(LANES));
        for (col, width) in panels(n) {
            for row in weight.chunks_exact(n) {
                let valid = width.min(n - col);
                data.extend_from_slice(&row[col..col + valid]);
                data.extend(std::iter::repeat_n(0.0, width - valid));
            }
        }
        Some(Self { data, k, n })
    }

    /// `dst (rows × n, row stride ldc) = a (rows × k, row stride lda) · W`.
    ///
    /// # Safety
    /// `a` must hold `rows` readable rows of `k` values at stride `lda`, and `dst` `rows`
    /// writable rows of `n` values at stride `ldc`.
    pub unsafe fn matmul(&self, a: *const f32, lda: usize, rows: usize, dst: *mut f32, ldc: usize) {
        let mut tail = Vec::new();
        let mut offset = 0;
        for (col, width) in panels(self.n) {
            let b = self.data.as_ptr().add(offset);
            let cols = width.min(self.n - col);
            for first in (0..rows).step_by(MR) {
                let count = MR.min(rows - first);
                // The last group reads a zero-padded copy of its rows, never past `a`'s end.
                let (rows_ptr, stride) = if count == MR {
                    (a.add(first * lda), lda)
                } else {
                    if tail.is_empty() {
                        tail = vec![0f32; MR * self.k];
                        for r in 0..count {
                            let src = std::slice::from_raw_parts(a.add((first + r) * lda), self.k);
                            tail[r * self.k..(r + 1) * self.k].copy_from_slice(src);
                        }
                    }
                    (tail.as_ptr(), self.k)
                };
                let out = dst.add(first * ldc + col);
                if width == 2 * LANES {
                    kernel::<2>(self.k, rows_ptr, stride, b, out, ldc, count, cols);
                } else {
                    kernel::<1>(self.k, rows_ptr, stride, b, out, ldc, count, cols);
                }
            }
            offset += self.k * width;
        }
    }
}

/// `(first column, width)` of each panel.
fn panels(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(2 * LANES)
        .map(move |col| (col, if n - col > LANES { 2 * LANES } else { LANES }))
}

/// `MR × (NV·16)` block of `dst` from `MR` rows of `a` and one weight panel; stores `rows`
/// rows and `cols` columns.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<const NV: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    dst: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let mut b = b;
    for p in 0..k {
        let mut w = [_mm512_setzero_ps(); NV];
        for (v, w) in w.iter_mut().enumerate() {
            *w = _mm512_loadu_ps(b.add(v * LANES));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let x = _mm512_set1_ps(*a.add(i * lda + p));
            for (acc, w) in acc.iter_mut().zip(&w) {
                *acc = _mm512_fmadd_ps(x, *w, *acc);
            }
        }
        b = b.add(NV * LANES);
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        for (v, acc) in acc.iter().enumerate() {
            let col = v * LANES;
            if col >= cols {
                break;
            }
            let out = dst.add(i * ldc + col);
            if cols - col >= LANES {
                _mm512_storeu_ps(out, *acc);
            } else {
                _mm512_mask_storeu_ps(out, (1u16 << (cols - col)) - 1, *acc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_naive_product_for_every_panel_and_tail_shape() {
        let Some(_) = PackedWeights::new(&[0.0], 1, 1) else {
            eprintln!("no AVX-512 on this CPU; nothing to check");
            return;
        };
        for (rows, k, n) in [
            (1, 1, 1),
            (12, 3, 16),
            (13, 27, 17),
            (25, 64, 32),
            (7, 9, 80),
            (40, 5, 48),
        ] {
            let a: Vec<f32> = (0..rows * (k + 3))
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
                .collect();
            let packed = PackedWeights::new(&w, k, n).unwrap();
            // Input rows at stride k + 3 (a channel slice), output at stride n + 2.
            let mut dst = vec![f32::NAN; rows * (n + 2)];
            unsafe { packed.matmul(a.as_ptr(), k + 3, rows, dst.as_mut_ptr(), n + 2) };
            for r in 0..rows {
                for c in 0..n + 2 {
                    let got = dst[r * (n + 2) + c];
                    if c >= n {
                        assert!(got.is_nan(), "column {c} beyond n = {n} was written");
                        continue;
                    }
                    let want: f32 = (0..k).map(|p| a[r * (k + 3) + p] * w[p * n + c]).sum();
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                        "{rows}×{k}×{n} at ({r}, {c}): {got} vs {want}"
                    );
                }
            }
        }
    }
}
