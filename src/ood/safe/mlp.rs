//! The `safe` MLP: `in → hidden → hidden → 1` with ReLU, trained in Candle (CPU, f32, AdamW) to
//! output the logit of "surrogate outlier" against "ID box", and evaluated in plain f64 at score
//! time (so a loaded scorer scores exactly as the fitted one, with no Candle graph).

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
    fn apply(&self, x: &[f64], relu: bool) -> Vec<f64> {
        self.weight
            .chunks(self.inputs)
            .zip(&self.bias)
            .map(|(w, &b)| {
                let v = w.iter().zip(x).map(|(&w, x)| w as f64 * x).sum::<f64>() + b as f64;
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
            .collect()
    }
}

/// The three layers of a trained MLP.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    pub layers: [Layer; 3],
}

impl Mlp {
    /// The OOD logit of one standardised input row.
    pub fn logit(&self, x: &[f64]) -> f64 {
        let h = self.layers[0].apply(x, true);
        let h = self.layers[1].apply(&h, true);
        self.layers[2].apply(&h, false)[0]
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
