//! The `safe` MLP: `in → hidden → hidden → 1` with ReLU, trained in Candle (CPU, f32, AdamW) to
//! output the logit of "surrogate outlier" against "ID box", and evaluated in plain loops at
//! score time (products in f32, sums in f64; so a loaded scorer scores exactly as the fitted
//! one, with no Candle graph).

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// Training settings of the MLP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Training {
    pub hidden: usize,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

/// Mini-batch size: small enough for a few hundred AdamW steps on a few thousand boxes.
const BATCH: usize = 256;

/// One dense layer, row-major `weight [out, in]`, stored as the f32 values Candle trained.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub inputs: usize,
    pub outputs: usize,
}

impl Layer {
    /// The layer on rows `x` (row-major `[n, inputs]`), giving `[n, outputs]`. The products
    /// in f32 (`x` too), the precision of the weights and of the box features: twice the SIMD
    /// lanes of f64; the sums in f64. Each weight row is read once for all the rows, while it
    /// is in cache: with five members the weights outgrow the L2 cache, and one row at a time
    /// spent most of its time reading them. A row's values do not depend on the others.
    fn apply(&self, x: &[f32], relu: bool) -> Vec<f64> {
        let n = x.len() / self.inputs;
        let mut out = vec![0.0; n * self.outputs];
        for (o, (w, &b)) in self.weight.chunks(self.inputs).zip(&self.bias).enumerate() {
            for (r, row) in x.chunks_exact(self.inputs).enumerate() {
                let v = dot(w, row) + b as f64;
                out[r * self.outputs + o] = if relu { v.max(0.0) } else { v };
            }
        }
        out
    }
}

/// Lanes of [`dot`]'s partial sums: two AVX-512 registers of sixteen, so that two additions
/// are in flight at once.
const LANES: usize = 32;

/// `Σ w·x`, the products summed in f32 in [`LANES`] interleaved partial sums so that the
/// compiler can use SIMD (one running sum cannot be reordered), the partial sums then in f64:
/// several times faster on the ROI features' thousand-wide inputs, within about 1e-6 of the
/// sum in f64. The order is fixed, so a box scores the same alone or in a batch, with or
/// without AVX.
fn dot(w: &[f32], x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        return unsafe { dot_avx512(w, x) };
    } else if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        return unsafe { dot_avx(w, x) };
    }
    dot_lanes(w, x)
}

/// [`dot_lanes`] compiled for AVX, eight f32 lanes wide (the default target has SSE2's
/// four); without FMA, so the same operations in the same order give the same values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn dot_avx(w: &[f32], x: &[f32]) -> f64 {
    dot_lanes(w, x)
}

/// [`dot_lanes`] compiled for AVX-512, sixteen f32 lanes wide; no FMA either.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(w: &[f32], x: &[f32]) -> f64 {
    dot_lanes(w, x)
}

#[inline(always)]
fn dot_lanes(w: &[f32], x: &[f32]) -> f64 {
    let mut lanes = [0.0f32; LANES];
    let (w_body, w_tail) = w.split_at(w.len() - w.len() % LANES);
    let (x_body, x_tail) = x.split_at(w_body.len());
    for (w, x) in w_body.chunks_exact(LANES).zip(x_body.chunks_exact(LANES)) {
        for k in 0..LANES {
            lanes[k] += w[k] * x[k];
        }
    }
    let tail: f32 = w_tail.iter().zip(x_tail).map(|(w, x)| w * x).sum();
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

/// The three layers of a trained MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    pub layers: [Layer; 3],
}

impl Mlp {
    /// The OOD logits of standardised input rows (row-major, in f32 as each layer
    /// takes them).
    pub fn logits(&self, x: &[f32]) -> Vec<f64> {
        let f32s = |h: Vec<f64>| -> Vec<f32> { h.into_iter().map(|v| v as f32).collect() };
        let h = self.layers[0].apply(x, true);
        let h = self.layers[1].apply(&f32s(h), true);
        self.layers[2].apply(&f32s(h), false)
    }

    /// Trains on `id` rows (target 0) against `outliers` rows (target 1), both `[_, dim]`
    /// row-major. Initialisation (torch's `Linear`: U(±1/√fan_in)) and batch order come from
    /// `rng`, so the same inputs and generator state give the same weights.
    pub fn train(
        id: &[f64],
        outliers: &[f64],
        dim: usize,
        t: Training,
        rng: &mut ChaCha8Rng,
    ) -> Result<Mlp> {
        let dev = Device::Cpu;
        let shapes = [(t.hidden, dim), (t.hidden, t.hidden), (1, t.hidden)];
        let mut vars = Vec::with_capacity(6);
        for &(out, inp) in &shapes {
            let bound = 1.0 / (inp as f64).sqrt();
            let mut init = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect()
            };
            vars.push(Var::from_tensor(&Tensor::from_vec(
                init(out * inp),
                (out, inp),
                &dev,
            )?)?);
            vars.push(Var::from_tensor(&Tensor::from_vec(init(out), out, &dev)?)?);
        }
        let n_id = id.len() / dim;
        let n = n_id + outliers.len() / dim;
        let rows: Vec<f32> = id.iter().chain(outliers).map(|&v| v as f32).collect();
        let x = Tensor::from_vec(rows, (n, dim), &dev)?;
        let targets: Vec<f32> = (0..n).map(|i| f32::from(u8::from(i >= n_id))).collect();
        let y = Tensor::from_vec(targets, (n, 1), &dev)?;
        let mut opt = AdamW::new(
            vars.clone(),
            ParamsAdamW {
                lr: t.lr,
                weight_decay: t.weight_decay,
                ..ParamsAdamW::default()
            },
        )?;
        let mut order: Vec<u32> = (0..n as u32).collect();
        for _ in 0..t.epochs {
            order.shuffle(rng);
            for batch in order.chunks(BATCH) {
                let idx = Tensor::from_slice(batch, batch.len(), &dev)?;
                let xb = x.index_select(&idx, 0)?;
                let yb = y.index_select(&idx, 0)?;
                let z = forward(&vars, &xb)?;
                opt.backward_step(&bce_with_logits(&z, &yb)?)?;
            }
        }
        let mut layers = Vec::with_capacity(3);
        for (pair, &(outputs, inputs)) in vars.chunks(2).zip(&shapes) {
            layers.push(Layer {
                weight: pair[0].as_tensor().flatten_all()?.to_vec1::<f32>()?,
                bias: pair[1].as_tensor().to_vec1::<f32>()?,
                inputs,
                outputs,
            });
        }
        let layers: [Layer; 3] = layers.try_into().expect("three layers");
        Ok(Mlp { layers })
    }
}

fn forward(vars: &[Var], x: &Tensor) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for (k, pair) in vars.chunks(2).enumerate() {
        h = h
            .matmul(&pair[0].as_tensor().t()?)?
            .broadcast_add(pair[1].as_tensor())?;
        if k < 2 {
            h = h.relu()?;
        }
    }
    Ok(h)
}

/// Mean binary cross-entropy on logits in the stable form
/// `max(z, 0) − z·y + ln(1 + e^{−|z|})` (candle-nn's version takes `ln σ(z)`, which overflows).
fn bce_with_logits(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let soft = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (z.relu()? - (z * y)?)?.add(&soft)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The AVX and AVX-512 paths give the plain path's bits, all are the f64 sum up to f32 rounding, and
    /// lengths that are not a multiple of the lanes sum their tails.
    #[test]
    fn dot_is_the_same_with_and_without_avx() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for len in [0, 1, 7, 8, 9, 31, 32, 33, 64, 1092] {
            let w: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
            let x: Vec<f32> = (0..len).map(|_| rng.random_range(-3.0..3.0)).collect();
            let plain = dot_lanes(&w, &x);
            let naive: f64 = w.iter().zip(&x).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum();
            let magnitude: f64 = w.iter().zip(&x).map(|(&w, &x)| f64::from(w * x).abs()).sum();
            assert!((plain - naive).abs() <= 1e-6 * (1.0 + magnitude), "{len}");
            assert_eq!(dot(&w, &x).to_bits(), plain.to_bits(), "{len}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has AVX, checked just above.
                assert_eq!(unsafe { dot_avx(&w, &x) }.to_bits(), plain.to_bits(), "{len}");
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                assert_eq!(unsafe { dot_avx512(&w, &x) }.to_bits(), plain.to_bits(), "{len}");
            }
        }
    }
}
