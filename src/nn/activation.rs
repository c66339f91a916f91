//! Bias plus activation over rows of a freshly computed output tile, vectorised.
//!
//! `f32::exp` is a libm call that the compiler cannot vectorise, and after the convolutions
//! themselves SiLU over every activation is the largest cost left in a CPU forward pass. The
//! exponential here is branch-free (range reduction to `2^n · e^r` and a degree-6 Taylor
//! polynomial, relative error < 2e-7), so that each row compiles to SIMD code; the widest
//! instruction set the CPU has is picked at run time.

/// The nonlinearity fused after a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    /// `x · sigmoid(x)` (YOLOv8).
    Silu,
}

/// `dst[r][j] = act(dst[r][j] + bias[j])` for every row `r` of width `bias.len()`.
///
/// `bias` may also be a channel bias repeated a whole number of times (see
/// [`repeat_for_rows`]), as long as `dst` holds whole channel rows: narrow rows are then
/// processed several at a time, with an inner loop long enough for full vectors.
pub fn bias_act(dst: &mut [f32], bias: &[f32], act: Activation) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { bias_act_avx512(dst, bias, act) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { bias_act_avx2(dst, bias, act) };
        }
    }
    bias_act_portable(dst, bias, act)
}

/// A channel bias repeated to at least 256 values, computed once at load for [`bias_act`].
pub fn repeat_for_rows(bias: &[f32]) -> Vec<f32> {
    bias.repeat((256 / bias.len().max(1)).max(1))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn bias_act_avx512(dst: &mut [f32], bias: &[f32], act: Activation) {
    bias_act_portable(dst, bias, act)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_act_avx2(dst: &mut [f32], bias: &[f32], act: Activation) {
    bias_act_portable(dst, bias, act)
}

#[inline(always)]
fn bias_act_portable(dst: &mut [f32], bias: &[f32], act: Activation) {
    // The last chunk is shorter when `bias` holds several rows' worth.
    let rows = dst.chunks_mut(bias.len());
    match act {
        Activation::Identity => {
            rows.for_each(|row| row.iter_mut().zip(bias).for_each(|(v, b)| *v += b))
        }
        Activation::Relu => rows.for_each(|row| {
            row.iter_mut()
                .zip(bias)
                .for_each(|(v, b)| *v = (*v + b).max(0.0))
        }),
        Activation::Silu => rows.for_each(|row| {
            row.iter_mut().zip(bias).for_each(|(v, b)| {
                let x = *v + b;
                *v = x / (1.0 + exp(-x));
            })
        }),
    }
}

/// `e^x` without branches or library calls, for |x| up to about 87 (beyond, clamped).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·ln2 is exact in the high part (Cody–Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding then subtracting 1.5·2^23 rounds to the nearest integer in SIMD-friendly steps.
    const ROUND: f32 = 12_582_912.0;
    // min/max rather than clamp: no NaN branch, so the loop stays in SIMD registers.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.0).min(88.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // |r| ≤ ln2/2: the degree-6 Taylor remainder is below 1.1e-7 relative.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n sits in the low mantissa bits of `shifted`; moving it into the exponent field with
    // integer arithmetic avoids a float-to-int conversion that does not vectorise.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        // Inside the clamp range; beyond it SiLU is 0 or x to f32 precision anyway.
        let mut worst = 0f64;
        for i in -86_900..88_000 {
            let x = i as f32 * 1e-3;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn bias_act_applies_each_column_bias() {
        let bias = [1.0, -2.0, 0.5];
        let input = [0.0, 1.0, -3.0, 20.0, -20.0, 2.5];
        for act in [Activation::Identity, Activation::Relu, Activation::Silu] {
            let mut got = input;
            bias_act(&mut got, &bias, act);
            let mut via_repeated = input;
            bias_act(&mut via_repeated, &repeat_for_rows(&bias), act);
            assert_eq!(got, via_repeated);
            for (k, (&g, &x)) in got.iter().zip(&input).enumerate() {
                let x = x + bias[k % 3];
                let want = match act {
                    Activation::Identity => x,
                    Activation::Relu => x.max(0.0),
                    Activation::Silu => x / (1.0 + (-x).exp()),
                };
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{act:?}: {g} vs {want}"
                );
            }
        }
    }
}
