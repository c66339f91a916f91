//! Small dense linear algebra in f64 (and one f32 GEMM for kNN), on row-major slices, with faer.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par, Side};

/// faer's x86 product kernels (the `private-gemm-x86` crate, generated assembly) return without
/// `vzeroupper`: the upper halves of the vector registers stay in use, and until something
/// clears them the SSE code that follows (this crate is built for the baseline x86-64 target)
/// runs several times slower (measured: the next image's candidate selection took 0.7 ms instead
/// of 0.07 after an `ocsdf` score). Every faer call here is followed by this, on every thread
/// that may have run part of it.
fn clear_vector_state(par: Par) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        if matches!(par, Par::Rayon(_)) {
            // SAFETY: the CPU has AVX, checked above.
            rayon::broadcast(|_| unsafe { vzeroupper() });
        }
        // SAFETY: as above.
        unsafe { vzeroupper() }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn vzeroupper() {
    std::arch::x86_64::_mm256_zeroupper()
}

fn par_for(flops: usize) -> Par {
    if flops >= 1 << 22 {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// `A · Bᵀ` for row-major `a` [m, k] and `b` [n, k]; row-major [m, n].
pub(crate) fn matmul_nt(a: &[f64], m: usize, k: usize, b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    if k == 0 {
        return out;
    }
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, n, k);
    let dst = MatMut::from_row_major_slice_mut(&mut out, m, n);
    let par = par_for(m * n * k);
    matmul(dst, Accum::Replace, a, b.transpose(), 1.0, par);
    clear_vector_state(par);
    out
}

/// `A · Bᵀ` in f32 (sequential: callers parallelise over blocks).
pub(crate) fn matmul_nt_f32(a: &[f32], m: usize, k: usize, b: &[f32], n: usize, out: &mut [f32]) {
    debug_assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out.fill(0.0);
        return;
    }
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, n, k);
    let dst = MatMut::from_row_major_slice_mut(out, m, n);
    matmul(dst, Accum::Replace, a, b.transpose(), 1.0f32, Par::Seq);
    clear_vector_state(Par::Seq);
}

/// `scale · Zᵀ Z` for row-major `z` [n, d]; row-major [d, d], exactly symmetric.
pub(crate) fn scaled_gram(z: &[f64], n: usize, d: usize, scale: f64) -> Vec<f64> {
    let mut out = vec![0.0; d * d];
    if n == 0 || d == 0 {
        return out;
    }
    let zm = MatRef::from_row_major_slice(z, n, d);
    let dst = MatMut::from_row_major_slice_mut(&mut out, d, d);
    let par = par_for(n * d * d);
    matmul(dst, Accum::Replace, zm.transpose(), zm, scale, par);
    clear_vector_state(par);
    for i in 0..d {
        for j in 0..i {
            let v = 0.5 * (out[i * d + j] + out[j * d + i]);
            out[i * d + j] = v;
            out[j * d + i] = v;
        }
    }
    out
}

/// Eigendecomposition of a symmetric [d, d] matrix: eigenvalues in ascending order and the
/// eigenvectors as the rows of a row-major [d, d] matrix (row i belongs to eigenvalue i).
pub(crate) fn sym_eigh(a: &[f64], d: usize) -> Result<(Vec<f64>, Vec<f64>), String> {
    if d == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let m = MatRef::from_row_major_slice(a, d, d);
    let evd = m.self_adjoint_eigen(Side::Lower);
    // It runs on faer's global parallelism (rayon's pool).
    clear_vector_state(Par::rayon(0));
    let evd = evd.map_err(|e| format!("eigendecomposition did not converge ({e:?})"))?;
    let s = evd.S().column_vector();
    let u = evd.U();
    let values: Vec<f64> = (0..d).map(|i| s[i]).collect();
    let mut vectors = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..d {
            vectors[i * d + j] = u[(j, i)];
        }
    }
    Ok((values, vectors))
}

/// Whitening of a symmetric positive semi-definite covariance through its pseudo-inverse:
/// `A = diag(λ_k^{-1/2}) V_kᵀ` over the eigenpairs with `λ_k > rtol · λ_max`, so that
/// `zᵀ pinv(Σ) z = ‖A z‖²` with the cut-off applied. Returns `A` row-major [r, d].
pub(crate) fn pinv_whitening(
    cov: &[f64],
    d: usize,
    rtol: f64,
) -> Result<(Vec<f64>, usize), String> {
    let (values, vectors) = sym_eigh(cov, d)?;
    let max = values.iter().fold(0.0f64, |m, &v| m.max(v.abs()));
    if max <= 0.0 || !max.is_finite() {
        return Ok((Vec::new(), 0));
    }
    let cutoff = rtol * max;
    let mut out = Vec::new();
    let mut rank = 0;
    for (k, &lambda) in values.iter().enumerate() {
        if lambda > cutoff && lambda > 0.0 {
            let s = lambda.sqrt().recip();
            out.extend(vectors[k * d..(k + 1) * d].iter().map(|v| v * s));
            rank += 1;
        }
    }
    Ok((out, rank))
}

/// Pseudo-inverse of a symmetric [d, d] matrix with a relative eigenvalue cut-off; row-major.
pub(crate) fn sym_pinv(a: &[f64], d: usize, rtol: f64) -> Result<Vec<f64>, String> {
    let (values, vectors) = sym_eigh(a, d)?;
    let max = values.iter().fold(0.0f64, |m, &v| m.max(v.abs()));
    let mut out = vec![0.0; d * d];
    if max <= 0.0 {
        return Ok(out);
    }
    for (k, &lambda) in values.iter().enumerate() {
        if lambda.abs() > rtol * max {
            let v = &vectors[k * d..(k + 1) * d];
            for i in 0..d {
                for j in 0..d {
                    out[i * d + j] += v[i] * v[j] / lambda;
                }
            }
        }
    }
    Ok(out)
}

/// `ln Σ exp(l)`, stable; −∞ for an empty slice.
pub(crate) fn logsumexp(l: &[f64]) -> f64 {
    let m = l.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + l.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// The q-quantile of `values` with linear interpolation between order statistics (NumPy's and
/// torch's default): position `q (n − 1)`. Reorders `values`; O(n). NaN for an empty slice.
pub(crate) fn quantile_linear(values: &mut [f64], q: f64) -> f64 {
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
    let lo = (pos.floor() as usize).min(n - 1);
    let frac = pos - lo as f64;
    let (_, &mut a, upper) = values.select_nth_unstable_by(lo, |x, y| x.total_cmp(y));
    if frac == 0.0 || upper.is_empty() {
        return a;
    }
    let b = upper.iter().copied().fold(f64::INFINITY, f64::min);
    a + frac * (b - a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_numpy_linear() {
        // numpy.quantile([3, 1, 4, 1, 5, 9, 2, 6], [0, 0.3, 0.8, 1]) = [1, 2.1, 5.6, 9]
        let v = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0];
        for (q, want) in [(0.0, 1.0), (0.3, 2.1), (0.8, 5.6), (1.0, 9.0)] {
            let got = quantile_linear(&mut v.clone(), q);
            assert!((got - want).abs() < 1e-12, "q={q}: {got} vs {want}");
        }
    }

    #[test]
    fn whitening_inverts_and_cuts_off() {
        // diag(4, 1, 0): rank 2, ‖A z‖² = z0²/4 + z1².
        let cov = [4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let (a, r) = pinv_whitening(&cov, 3, 1e-9).unwrap();
        assert_eq!(r, 2);
        let z = [2.0, 3.0, 7.0];
        let q: f64 = a
            .chunks(3)
            .map(|row| row.iter().zip(&z).map(|(x, y)| x * y).sum::<f64>().powi(2))
            .sum();
        assert!((q - (1.0 + 9.0)).abs() < 1e-12, "{q}");
    }

    /// After a faer product the upper halves of the vector registers are back in their initial
    /// state: XGETBV(1) (XINUSE, where the CPU reports it) shows neither the AVX (bit 2) nor the
    /// AVX-512 (bit 6) upper state in use.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn faer_products_leave_the_vector_registers_clean() {
        use std::arch::x86_64::{__cpuid_count, _xgetbv};
        #[target_feature(enable = "xsave")]
        unsafe fn in_use() -> u64 {
            _xgetbv(1)
        }
        let reports = __cpuid_count(0xd, 1).eax & 4 != 0;
        if !(reports && std::arch::is_x86_feature_detected!("avx")) {
            return;
        }
        let a: Vec<f64> = (0..64 * 96).map(|i| (i % 7) as f64).collect();
        let b: Vec<f64> = (0..48 * 96).map(|i| (i % 5) as f64).collect();
        for (m, n) in [(64, 48), (7, 48), (1, 1)] {
            let out = matmul_nt(&a[..m * 96], m, 96, &b[..n * 96], n);
            // SAFETY: XSAVE is implied by AVX.
            let state = unsafe { in_use() };
            assert_eq!(state & (1 << 2 | 1 << 6), 0, "{m}x{n}: XINUSE {state:#x}");
            assert_eq!(out.len(), m * n);
        }
        let z: Vec<f64> = (0..200 * 64).map(|i| ((i * 31) % 11) as f64).collect();
        let gram = scaled_gram(&z, 200, 64, 1.0);
        // SAFETY: as above.
        let state = unsafe { in_use() };
        assert_eq!(state & (1 << 2 | 1 << 6), 0, "gram: XINUSE {state:#x}");
        assert_eq!(gram.len(), 64 * 64);
    }

    #[test]
    fn matmul_nt_small() {
        let a = [1.0, 2.0, 3.0, 4.0]; // [[1,2],[3,4]]
        let b = [1.0, 0.0, 1.0, 1.0, 0.0, 2.0]; // rows (1,0),(1,1),(0,2)
        assert_eq!(
            matmul_nt(&a, 2, 2, &b, 3),
            vec![1.0, 3.0, 4.0, 3.0, 7.0, 8.0]
        );
    }
}
