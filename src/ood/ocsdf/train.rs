//! Training one OCSDF network in Candle (f32, CPU): the hinge-Kantorovich-Rubinstein loss on
//! ID points and on negatives that the adapted Newton–Raphson steps of Béthune et al. move
//! towards the current network's zero level set.

use crate::ood::common::standard_normal;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::lipschitz::{activate_tensor, bjorck, finalise, Matrix, Net, Normalisation};
use super::OcsdfParams;

/// Björck stops early in training once no entry moves by more than this.
const BJORCK_TOL: f64 = 1e-3;
/// An epoch is at least this many steps, so that a small class still trains.
const MIN_EPOCH_STEPS: usize = 10;

/// What one network is fitted on: standardised features and, for a shared model, the class
/// input.
pub(crate) struct TrainSet {
    /// Row-major `[n, d]`.
    pub x: Vec<f32>,
    pub d: usize,
    /// Per box, the class index of the class input, and the scaled one-hot's (classes, scale).
    pub classes: Option<(Vec<usize>, usize, f64)>,
    /// Given negatives (outlier boxes, standardised), row-major `[m, d]`, trained against beside
    /// the generated ones; with a class input, each one's class index.
    pub negatives: Vec<f32>,
    pub negative_classes: Vec<usize>,
    /// The domain box (per dimension) negatives are clipped to.
    pub lo: Vec<f32>,
    pub hi: Vec<f32>,
}

impl TrainSet {
    fn n(&self) -> usize {
        self.x.len() / self.d
    }

    /// Seeds of the negatives: uniform in the L2 ball of radius ‖hi − lo‖/2 around 0.
    pub fn radius(&self) -> f64 {
        let s: f64 = self
            .lo
            .iter()
            .zip(&self.hi)
            .map(|(l, h)| ((h - l) as f64).powi(2))
            .sum();
        0.5 * s.sqrt()
    }
}

/// Indices of a set in batches, reshuffled each time all have been drawn.
struct Draw {
    order: Vec<u32>,
    cursor: usize,
}

impl Draw {
    fn new(n: usize) -> Draw {
        Draw {
            order: (0..n as u32).collect(),
            cursor: n,
        }
    }

    fn take(&mut self, count: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
        let mut idx = Vec::with_capacity(count);
        while idx.len() < count {
            if self.cursor == self.order.len() {
                self.order.shuffle(rng);
                self.cursor = 0;
            }
            idx.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        idx
    }
}

/// One hidden layer being trained: raw weight, bias and the persistent power-iteration vector.
struct Layer {
    v: Var,
    b: Var,
    u: Tensor,
}

/// Orthogonal init: Björck on a scaled Gaussian converges to a semi-orthogonal matrix.
fn orthogonal(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Matrix {
    let scale = 1.0 / ((rows as f64).sqrt() + (cols as f64).sqrt());
    let mut w = Matrix {
        rows,
        cols,
        data: (0..rows * cols).map(|_| standard_normal(rng) * scale).collect(),
    };
    bjorck(&mut w, 1e-9, 200);
    w
}

fn tensor(data: &[f64], shape: &[usize]) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = data.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

impl Layer {
    fn new(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> candle_core::Result<Layer> {
        let w = orthogonal(rows, cols, rng);
        let u: Vec<f64> = (0..cols).map(|_| standard_normal(rng)).collect();
        Ok(Layer {
            v: Var::from_tensor(&tensor(&w.data, &[rows, cols])?)?,
            b: Var::zeros(rows, DType::F32, &Device::Cpu)?,
            u: tensor(&u, &[cols, 1])?,
        })
    }

    /// The 1-Lipschitz weight of this step, differentiable with respect to the raw weight
    /// (the spectral norm estimate is a constant of the step).
    fn weight(&mut self, p: &OcsdfParams) -> candle_core::Result<Tensor> {
        let v = self.v.as_tensor();
        match p.normalisation {
            Normalisation::Bjorck => {
                let raw = v.detach();
                let mut sigma = 1.0;
                for _ in 0..p.power_steps {
                    let u = (&self.u / self.u.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64)?;
                    let wu = raw.matmul(&u)?;
                    sigma = wu.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
                    self.u = raw.t()?.matmul(&wu)?;
                }
                let mut w = (v / sigma.max(1e-12))?;
                for _ in 0..p.bjorck_steps {
                    let wwtw = if w.dim(0)? <= w.dim(1)? {
                        w.matmul(&w.t()?)?.matmul(&w)?
                    } else {
                        w.matmul(&w.t()?.matmul(&w)?)?
                    };
                    let next = ((&w * 1.5)? - (wwtw * 0.5)?)?;
                    let change = (&next - &w)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
                    w = next;
                    if change < BJORCK_TOL {
                        break;
                    }
                }
                Ok(w)
            }
            Normalisation::ColumnNorm => {
                let a = v.abs()?;
                let bound = (a.sum(0)?.max(0)? * a.sum(1)?.max(0)?)?.sqrt()?;
                if bound.to_scalar::<f32>()? <= 1.0 {
                    Ok(v.clone())
                } else {
                    v.broadcast_div(&bound)
                }
            }
        }
    }
}

/// The network of one training step: 1-Lipschitz weights, biases, unit output row.
struct StepNet {
    hidden: Vec<(Tensor, Tensor)>,
    out: Tensor,
    out_bias: Tensor,
}

impl StepNet {
    fn detach(&self) -> StepNet {
        StepNet {
            hidden: self
                .hidden
                .iter()
                .map(|(w, b)| (w.detach(), b.detach()))
                .collect(),
            out: self.out.detach(),
            out_bias: self.out_bias.detach(),
        }
    }

    /// `f` of a batch `[b, d]`, with the class input appended when given.
    fn forward(&self, x: &Tensor, extra: Option<&Tensor>, p: &OcsdfParams) -> candle_core::Result<Tensor> {
        let mut h = match extra {
            Some(e) => Tensor::cat(&[x, e], 1)?,
            None => x.clone(),
        };
        for (w, b) in &self.hidden {
            h = activate_tensor(&h.matmul(&w.t()?)?.broadcast_add(b)?, p.activation)?;
        }
        h.matmul(&self.out)?.squeeze(1)?.broadcast_add(&self.out_bias)
    }
}

/// The model being trained.
struct Model {
    layers: Vec<Layer>,
    out: Var,
    out_bias: Var,
}

impl Model {
    fn new(input: usize, p: &OcsdfParams, rng: &mut ChaCha8Rng) -> candle_core::Result<Model> {
        let mut layers = Vec::with_capacity(p.depth);
        let mut cols = input;
        for _ in 0..p.depth {
            layers.push(Layer::new(p.width, cols, rng)?);
            cols = p.width;
        }
        let out: Vec<f64> = (0..p.width).map(|_| standard_normal(rng)).collect();
        Ok(Model {
            layers,
            out: Var::from_tensor(&tensor(&out, &[p.width, 1])?)?,
            out_bias: Var::zeros(1, DType::F32, &Device::Cpu)?,
        })
    }

    fn vars(&self) -> Vec<Var> {
        let mut vars: Vec<Var> = self
            .layers
            .iter()
            .flat_map(|l| [l.v.clone(), l.b.clone()])
            .collect();
        vars.extend([self.out.clone(), self.out_bias.clone()]);
        vars
    }

    fn step_net(&mut self, p: &OcsdfParams) -> candle_core::Result<StepNet> {
        let mut hidden = Vec::with_capacity(self.layers.len());
        for layer in &mut self.layers {
            hidden.push((layer.weight(p)?, layer.b.as_tensor().clone()));
        }
        let o = self.out.as_tensor();
        let out = o.broadcast_div(&o.sqr()?.sum_all()?.sqrt()?)?;
        Ok(StepNet {
            hidden,
            out,
            out_bias: self.out_bias.as_tensor().clone(),
        })
    }

    /// The stored network: every weight normalised to convergence in f64.
    fn finish(&self, p: &OcsdfParams) -> candle_core::Result<Net> {
        let mut hidden = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (rows, cols) = layer.v.dims2()?;
            let data = f64s(layer.v.as_tensor())?;
            let w = finalise(Matrix { rows, cols, data }, p.normalisation);
            hidden.push((w, f64s(layer.b.as_tensor())?));
        }
        let mut out = f64s(self.out.as_tensor())?;
        let n = out.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        out.iter_mut().for_each(|v| *v /= n);
        Ok(Net {
            hidden,
            out,
            out_bias: f64s(self.out_bias.as_tensor())?[0],
            activation: p.activation,
        })
    }
}

fn f64s(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// The scaled one-hot class input of the given class indices.
fn class_input(classes: &[usize], count: usize, scale: f64) -> candle_core::Result<Tensor> {
    let mut v = vec![0.0f32; classes.len() * count];
    for (row, &c) in classes.iter().enumerate() {
        v[row * count + c] = scale as f32;
    }
    Tensor::from_vec(v, (classes.len(), count), &Device::Cpu)
}

/// Negatives for one step: seeds uniform in the ball, then `steps` Newton–Raphson steps of
/// random length towards the zero level set of the current (frozen) network, clipped to the
/// domain box.
fn negatives(
    net: &StepNet,
    set: &TrainSet,
    extra: Option<&Tensor>,
    count: usize,
    steps: usize,
    p: &OcsdfParams,
    rng: &mut ChaCha8Rng,
) -> candle_core::Result<Tensor> {
    let (d, radius) = (set.d, set.radius());
    let mut seeds = Vec::with_capacity(count * d);
    for _ in 0..count {
        let dir: Vec<f64> = (0..d).map(|_| standard_normal(rng)).collect();
        let len = dir.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        let r = radius * rng.random::<f64>().powf(1.0 / d as f64) / len;
        seeds.extend(dir.iter().map(|v| (v * r) as f32));
    }
    let lo = Tensor::from_slice(&set.lo, (1, d), &Device::Cpu)?;
    let hi = Tensor::from_slice(&set.hi, (1, d), &Device::Cpu)?;
    let clip = |q: Tensor| q.broadcast_maximum(&lo)?.broadcast_minimum(&hi);
    let mut q = clip(Tensor::from_vec(seeds, (count, d), &Device::Cpu)?)?;
    let lengths: Vec<f32> = (0..count)
        .map(|_| rng.random::<f32>() / steps.max(1) as f32)
        .collect();
    let lengths = Tensor::from_vec(lengths, count, &Device::Cpu)?;
    for _ in 0..steps {
        let var = Var::from_tensor(&q)?;
        let y = net.forward(var.as_tensor(), extra, p)?;
        let grads = y.sum_all()?.backward()?;
        let Some(g) = grads.get(var.as_tensor()) else {
            break;
        };
        let g2 = (g.sqr()?.sum(1)? + 1e-8)?;
        // Only points outside the level set move (relu), by a random share of the way.
        let coef = ((y.neg()?.relu()? * &lengths)? / g2)?;
        q = clip((q + g.broadcast_mul(&coef.unsqueeze(1)?)?)?)?;
    }
    Ok(q)
}

/// `f` of the given negatives `idx`, with their class input when the model has one.
fn given_forward(net: &StepNet, set: &TrainSet, given: &Tensor, idx: Vec<u32>, p: &OcsdfParams) -> candle_core::Result<Tensor> {
    let extra = match &set.classes {
        Some((_, count, scale)) => {
            let classes: Vec<usize> = idx.iter().map(|&i| set.negative_classes[i as usize]).collect();
            Some(class_input(&classes, *count, *scale)?)
        }
        None => None,
    };
    let rows = given.index_select(&Tensor::from_vec(idx.clone(), idx.len(), &Device::Cpu)?, 0)?;
    net.forward(&rows, extra.as_ref(), p)
}

/// `relu(m − y) − y/λ`, averaged.
fn hinge_kr(y: &Tensor, p: &OcsdfParams) -> candle_core::Result<Tensor> {
    ((p.margin - y)?.relu()? - (y / p.lambda)?)?.mean_all()
}

/// Fits one network on `set`; the same set, parameters and seed give the same network.
pub(crate) fn train(set: &TrainSet, p: &OcsdfParams, seed: u64) -> candle_core::Result<Net> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (n, d) = (set.n(), set.d);
    let input = d + set.classes.as_ref().map_or(0, |c| c.1);
    let mut model = Model::new(input, p, &mut rng)?;
    let mut opt = AdamW::new(
        model.vars(),
        ParamsAdamW {
            lr: p.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let batch = p.batch.min(n);
    let epoch_steps = n.div_ceil(batch).max(MIN_EPOCH_STEPS);
    let total = p.epochs * epoch_steps;
    let x = Tensor::from_slice(&set.x, (n, d), &Device::Cpu)?;
    let mut draw = Draw::new(n);
    let m = set.negatives.len() / d.max(1);
    let given = Tensor::from_slice(&set.negatives, (m, d), &Device::Cpu)?;
    let mut draw_given = Draw::new(m);
    for step in 0..total {
        // Learning rate decayed linearly to lr/1000, as in the paper.
        let t = step as f64 / total.max(1) as f64;
        opt.set_learning_rate(p.lr * (1.0 - t * (1.0 - 1e-3)));
        let idx = draw.take(batch, &mut rng);
        let (extra_id, extra_neg) = match &set.classes {
            Some((classes, count, scale)) => {
                let id: Vec<usize> = idx.iter().map(|&i| classes[i as usize]).collect();
                let neg: Vec<usize> = (0..batch).map(|_| classes[rng.random_range(0..n)]).collect();
                (Some(class_input(&id, *count, *scale)?), Some(class_input(&neg, *count, *scale)?))
            }
            None => (None, None),
        };
        let xb = x.index_select(&Tensor::from_vec(idx, batch, &Device::Cpu)?, 0)?;
        let net = model.step_net(p)?;
        let steps = if step < p.warmup_epochs * epoch_steps { 0 } else { p.newton_steps };
        let q = negatives(&net.detach(), set, extra_neg.as_ref(), batch, steps, p, &mut rng)?;
        let f_id = net.forward(&xb, extra_id.as_ref(), p)?;
        let f_neg = net.forward(&q, extra_neg.as_ref(), p)?;
        let mut loss = (hinge_kr(&f_id, p)? + hinge_kr(&f_neg.neg()?, p)?)?;
        if m > 0 {
            let f_given = given_forward(&net, set, &given, draw_given.take(batch, &mut rng), p)?;
            loss = (loss + hinge_kr(&f_given.neg()?, p)?)?;
        }
        opt.backward_step(&loss)?;
    }
    model.finish(p)
}
