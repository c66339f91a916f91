//! The convolution's matrix product on AVX-512: a 12×32 register-blocked micro-kernel over
//! weights packed once at load, with the bias and activation applied before the block is stored.
//!
//! The left operand never needs to be one matrix: its columns come in segments, each a strided
//! view of some input. A direct convolution gives one segment per kernel tap (the input shifted
//! by that tap), so no im2col copy is made; a pointwise convolution of a concatenation gives one
//! segment per concatenated map, so the concatenation is never made either.
//!
//! The `gemm` crate, which Candle also uses, only has AVX2 kernels on stable Rust (its AVX-512
//! ones need the `nightly` feature), so on AVX-512 machines it runs at half the vector width.
//! Per step of the shared dimension the kernel broadcasts one value from each of 12 rows and
//! multiplies it into two 16-wide weight vectors: 24 accumulators in registers, 24 FMAs per 14
//! loads, so the FMA units rather than the loads set the pace.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::activation::Activation;

/// Rows (output pixels) per micro-kernel call.
pub const MR: usize = 12;
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

    /// `dst (rows × n, row stride ldc) = act(a · W + bias) [+ residual]`, where `a` is the
    /// column-wise concatenation of `parts`, each `rows` rows at its own stride (no copy is made
    /// of it), and `residual`, when given, is `rows` rows of `n` values at its own stride.
    ///
    /// # Safety
    /// Each part must hold `rows` readable rows of `len` values at stride `lda`, the parts'
    /// widths must add up to `k`, `bias` must hold `n` values, `dst` `rows` writable rows of
    /// `n` values at stride `ldc`, and `residual` `rows` readable rows of `n` values.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(
        &self,
        parts: &[Segment],
        rows: usize,
        dst: *mut f32,
        ldc: usize,
        residual: Option<(*const f32, usize)>,
        bias: &[f32],
        act: Activation,
    ) {
        let mut segments = parts.to_vec();
        for first in (0..rows).step_by(MR) {
            let count = MR.min(rows - first);
            let tail: Vec<f32>;
            if count == MR {
                for (segment, part) in segments.iter_mut().zip(parts) {
                    segment.ptr = part.ptr.add(first * part.lda);
                }
            } else {
                // The last group reads a zero-padded copy of its rows, never past a part's end.
                let mut rows = vec![0f32; MR * self.k];
                for r in 0..count {
                    let mut at = r * self.k;
                    for part in parts {
                        let src = std::slice::from_raw_parts(
                            part.ptr.add((first + r) * part.lda),
                            part.len,
                        );
                        rows[at..at + part.len].copy_from_slice(src);
                        at += part.len;
                    }
                }
                tail = rows;
                segments = vec![Segment {
                    ptr: tail.as_ptr(),
                    lda: self.k,
                    len: self.k,
                }];
            }
            let mut out = [std::ptr::null_mut(); MR];
            let mut res = [std::ptr::null(); MR];
            for r in 0..count {
                out[r] = dst.add((first + r) * ldc);
                if let Some((ptr, stride)) = residual {
                    res[r] = ptr.add((first + r) * stride);
                }
            }
            for panel in 0..self.panel_count() {
                self.block(panel, &segments, &out, &res, bias, act);
            }
        }
    }

    /// Output panels of 32 (the last 16 or 32) columns.
    pub fn panel_count(&self) -> usize {
        panels(self.n).count()
    }

    /// One `MR`-row block of `act(A · W + bias)` over one panel of columns, where the shared
    /// dimension of `A` is the concatenation of `segments`: for a direct convolution, one per
    /// kernel tap (a shifted view of the input); for a concatenation of maps, one per map. For
    /// every output row `i` with a non-null `dst[i]`, the panel's columns of `dst[i]` are set,
    /// plus those of `residual[i]` after the activation where that is not null.
    ///
    /// # Safety
    /// For every `i < MR` and segment, `ptr + i·lda` must point at `len` readable values (also
    /// for rows that are not stored), the segments' widths must add up to `k`, `bias` must hold
    /// `n` values, each non-null `dst[i]` must hold `n` writable values and each non-null
    /// `residual[i]` `n` readable ones.
    pub unsafe fn block(
        &self,
        panel: usize,
        segments: &[Segment],
        dst: &[*mut f32; MR],
        residual: &[*const f32; MR],
        bias: &[f32],
        act: Activation,
    ) {
        debug_assert_eq!(segments.iter().map(|s| s.len).sum::<usize>(), self.k);
        debug_assert!(bias.len() >= self.n);
        let col = panel * 2 * LANES;
        let width = if self.n - col > LANES {
            2 * LANES
        } else {
            LANES
        };
        let b = self.data.as_ptr().add(self.k * col);
        let cols = width.min(self.n - col);
        let epilogue = Epilogue {
            bias: bias.as_ptr().add(col),
            act,
            col,
            cols,
            residual,
        };
        if width == 2 * LANES {
            kernel::<2>(segments, b, dst, &epilogue);
        } else {
            kernel::<1>(segments, b, dst, &epilogue);
        }
    }
}

/// Rows of the left operand: value `c` of row `i` is at `ptr + i·lda + c`, for `c < len`.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    pub ptr: *const f32,
    pub lda: usize,
    pub len: usize,
}

/// What happens to a block before it is stored: the panel's bias, the activation, and a
/// residual added after it (ultralytics' `x + cv2(cv1(x))`), row by row where not null.
struct Epilogue<'a> {
    /// The bias of the panel's first column.
    bias: *const f32,
    act: Activation,
    /// The panel's first column in the output row, and how many of its columns exist.
    col: usize,
    cols: usize,
    residual: &'a [*const f32; MR],
}

/// `(first column, width)` of each panel.
fn panels(n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n)
        .step_by(2 * LANES)
        .map(move |col| (col, if n - col > LANES { 2 * LANES } else { LANES }))
}

/// `MR × (NV·16)` block of `act(A · W + bias)` from `MR` rows of every segment and one weight
/// panel; stores the panel's columns in every row with a destination.
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const NV: usize>(
    segments: &[Segment],
    mut b: *const f32,
    dst: &[*mut f32; MR],
    epilogue: &Epilogue<'_>,
) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    for segment in segments {
        let (mut a, lda) = (segment.ptr, segment.lda);
        for _ in 0..segment.len {
            let mut w = [_mm512_setzero_ps(); NV];
            for (v, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_ps(b.add(v * LANES));
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(i * lda));
                for (acc, w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_fmadd_ps(x, *w, *acc);
                }
            }
            a = a.add(1);
            b = b.add(NV * LANES);
        }
    }
    store(acc, dst, epilogue);
}

/// Adds the bias to a finished block, applies the activation and stores it. Kept out of line:
/// inlined, its row loop made the compiler keep the kernel's accumulators in memory.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn store<const NV: usize>(
    acc: [[__m512; NV]; MR],
    dst: &[*mut f32; MR],
    epilogue: &Epilogue<'_>,
) {
    let cols = epilogue.cols;
    let mut bias = [_mm512_setzero_ps(); NV];
    for (v, bias) in bias.iter_mut().enumerate() {
        let c = v * LANES;
        if c < cols {
            *bias = _mm512_maskz_loadu_ps(lane_mask(cols - c), epilogue.bias.add(c));
        }
    }
    for ((acc, &out), &res) in acc.iter().zip(dst).zip(epilogue.residual) {
        if out.is_null() {
            continue;
        }
        for (v, (acc, bias)) in acc.iter().zip(&bias).enumerate() {
            let c = v * LANES;
            if c >= cols {
                break;
            }
            let mask = lane_mask(cols - c);
            let mut y = activate(_mm512_add_ps(*acc, *bias), epilogue.act);
            if !res.is_null() {
                y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, res.add(epilogue.col + c)));
            }
            _mm512_mask_storeu_ps(out.add(epilogue.col + c), mask, y);
        }
    }
}

/// The first `min(n, 16)` lanes.
#[inline(always)]
fn lane_mask(n: usize) -> __mmask16 {
    if n >= LANES {
        0xffff
    } else {
        (1u16 << n) - 1
    }
}

/// The activation on 16 lanes. SiLU uses the same exponential as [`super::activation::exp`]
/// (Cody–Waite reduction, degree-6 Taylor polynomial), with the AVX-512 rounding and scaling
/// instructions in place of its bit tricks. Inlined into the kernel, whose AVX-512 it uses.
#[inline(always)]
unsafe fn activate(x: __m512, act: Activation) -> __m512 {
    match act {
        Activation::Identity => x,
        Activation::Relu => _mm512_max_ps(x, _mm512_setzero_ps()),
        Activation::Silu => {
            let t = _mm512_min_ps(
                _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), x), _mm512_set1_ps(-87.0)),
                _mm512_set1_ps(88.0),
            );
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(t, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), t);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
            let mut p = _mm512_set1_ps(1.0 / 720.0);
            for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
            }
            let e = _mm512_scalef_ps(p, n);
            // x / (1 + e) through a 14-bit reciprocal and one Newton step (relative error about
            // 1e-8 before rounding): a 512-bit division blocks the FMA port for about ten
            // cycles, and every output value passes through here.
            let d = _mm512_add_ps(_mm512_set1_ps(1.0), e);
            let r = _mm512_rcp14_ps(d);
            let r = _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(1.0)), r);
            _mm512_mul_ps(x, r)
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
            // The rows split in two parts, as a concatenation of two maps would be.
            let first = k / 2;
            let parts = [
                Segment {
                    ptr: a.as_ptr(),
                    lda: k + 3,
                    len: first,
                },
                Segment {
                    ptr: a[first..].as_ptr(),
                    lda: k + 3,
                    len: k - first,
                },
            ];
            let bias = vec![0.0; n];
            let parts = if first == 0 { &parts[1..] } else { &parts[..] };
            unsafe {
                packed.matmul(
                    parts,
                    rows,
                    dst.as_mut_ptr(),
                    n + 2,
                    None,
                    &bias,
                    Activation::Identity,
                )
            };
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

    #[test]
    fn silu_epilogue_matches_the_formula() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512 on this CPU; nothing to check");
            return;
        }
        let mut worst = 0f64;
        for i in -12_000..12_000 {
            let x = i as f32 * 1e-2;
            let mut got = [0f32; 16];
            // SAFETY: AVX-512F was checked above.
            unsafe {
                let y = activate(_mm512_set1_ps(x), Activation::Silu);
                _mm512_storeu_ps(got.as_mut_ptr(), y);
            }
            let want = x as f64 / (1.0 + (-(x as f64)).exp());
            // Relative where SiLU is not tiny, absolute (to the unit activation scale) where it is.
            worst = worst.max((got[0] as f64 - want).abs() / want.abs().max(1.0));
        }
        assert!(worst < 1e-6, "worst error {worst:e}");
    }
}
