//! The flow network: its parameters on the host (what a scorer file stores), the same network as
//! Candle tensors (to train, in f32), and the maximum-likelihood training loop. Scoring runs the
//! host parameters through plain loops instead (plain.rs).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Result, ScorerFault};
use crate::ood::common::err;

/// Every coupling log-scale is `s = SCALE_BOUND · tanh(raw / SCALE_BOUND)`: at most a factor
/// e² per block, so one block can never blow a coordinate up or collapse it.
pub(super) const SCALE_BOUND: f64 = 2.0;

/// The smallest standard deviation a data-initialised actnorm or base scale divides by.
const MIN_STD: f64 = 1e-3;

/// `½ ln 2π`.
pub(super) const HALF_LN_2PI: f64 = 0.918_938_533_204_672_7;

/// The tensors of one block, in the order [`block_shapes`] gives: actnorm bias and log-scale,
/// then the coupling MLP `[d_a] → hidden → hidden → [2 d_b]` (SiLU between layers).
pub(super) const BLOCK_TENSORS: [&str; 8] = [
    "actnorm_bias",
    "actnorm_log_scale",
    "w1",
    "b1",
    "w2",
    "b2",
    "w3",
    "b3",
];

/// Sizes of the conditioning half `d_a` and the transformed half `d_b` of a coupling.
pub(super) fn halves(d: usize) -> (usize, usize) {
    (d / 2, d - d / 2)
}

/// The shapes of a block's tensors, in [`BLOCK_TENSORS`] order.
pub(super) fn block_shapes(d: usize, hidden: usize) -> [Vec<usize>; 8] {
    let (da, db) = halves(d);
    [
        vec![d],
        vec![d],
        vec![hidden, da],
        vec![hidden],
        vec![hidden, hidden],
        vec![hidden],
        vec![2 * db, hidden],
        vec![2 * db],
    ]
}

/// A fitted flow on standardised features, host side.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Model {
    pub dim: usize,
    pub hidden: usize,
    /// Per block: the fixed permutation of the coordinates applied first.
    pub perms: Vec<Vec<usize>>,
    /// Per block: its tensors in [`BLOCK_TENSORS`] order, row-major.
    pub weights: Vec<Vec<Vec<f64>>>,
    /// The base's class means, row-major [classes, d].
    pub base_mean: Vec<f64>,
    /// The base's log standard deviation per coordinate, shared by all classes.
    pub base_log_scale: Vec<f64>,
}

/// The training settings.
#[derive(Clone, Copy, Debug)]
pub(super) struct Training {
    pub blocks: usize,
    pub hidden: usize,
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
}

impl Model {
    /// Seeded permutations and MLP weights; every coupling's last layer is zero, so each block
    /// starts as its actnorm alone (which [`Model::init_from_data`] then sets).
    pub fn new(dim: usize, hidden: usize, blocks: usize, classes: usize, rng: &mut ChaCha8Rng) -> Model {
        let mut perms = Vec::with_capacity(blocks);
        let mut weights = Vec::with_capacity(blocks);
        for _ in 0..blocks {
            let mut perm: Vec<usize> = (0..dim).collect();
            perm.shuffle(rng);
            perms.push(perm);
            let shapes = block_shapes(dim, hidden);
            let tensors = shapes
                .iter()
                .zip(BLOCK_TENSORS)
                .map(|(shape, name)| {
                    let n: usize = shape.iter().product();
                    match name {
                        "w1" | "w2" => {
                            // Uniform with variance 1/fan_in.
                            let bound = (3.0 / shape[1].max(1) as f64).sqrt();
                            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
                        }
                        _ => vec![0.0; n],
                    }
                })
                .collect();
            weights.push(tensors);
        }
        Model {
            dim,
            hidden,
            perms,
            weights,
            base_mean: vec![0.0; classes * dim],
            base_log_scale: vec![0.0; dim],
        }
    }

    pub fn classes(&self) -> usize {
        self.base_mean.len() / self.dim
    }

    /// Glow's data-dependent init: each actnorm maps its input (the fit data through the blocks
    /// before it, which are their actnorms alone at this point) to zero mean and unit variance
    /// per coordinate; the base takes the class means and the pooled within-class standard
    /// deviation of the output.
    pub fn init_from_data(&mut self, x: &[f64], labels: &[usize]) {
        let d = self.dim;
        let mut cur = x.to_vec();
        for (perm, w) in self.perms.iter().zip(&mut self.weights) {
            permute_rows(&mut cur, perm);
            let (mean, var) = class_moments(&cur, d, &vec![0; labels.len()], 1);
            for j in 0..d {
                w[0][j] = -mean[j];
                w[1][j] = -var[j].sqrt().max(MIN_STD).ln();
            }
            for row in cur.chunks_exact_mut(d) {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (*v + w[0][j]) * w[1][j].exp();
                }
            }
        }
        let (means, within) = class_moments(&cur, d, labels, self.classes());
        self.base_mean = means;
        self.base_log_scale = within.iter().map(|v| v.sqrt().max(MIN_STD).ln()).collect();
    }

}

/// Reorders the coordinates of every row: `out[j] = row[perm[j]]`.
fn permute_rows(x: &mut [f64], perm: &[usize]) {
    let d = perm.len();
    let mut tmp = vec![0.0; d];
    for row in x.chunks_exact_mut(d) {
        for (t, &p) in tmp.iter_mut().zip(perm) {
            *t = row[p];
        }
        row.copy_from_slice(&tmp);
    }
}

/// Per class (`labels` are indices below `k`): the column means; and the pooled within-class
/// variance of every column.
fn class_moments(x: &[f64], d: usize, labels: &[usize], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0.0; k * d];
    let mut count = vec![0usize; k];
    for (row, &c) in x.chunks_exact(d).zip(labels) {
        count[c] += 1;
        for (m, &v) in mean[c * d..(c + 1) * d].iter_mut().zip(row) {
            *m += v;
        }
    }
    for (c, &n) in count.iter().enumerate() {
        mean[c * d..(c + 1) * d]
            .iter_mut()
            .for_each(|m| *m /= n.max(1) as f64);
    }
    let mut var = vec![0.0; d];
    for (row, &c) in x.chunks_exact(d).zip(labels) {
        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean[c * d..(c + 1) * d]) {
            *s += (v - m) * (v - m);
        }
    }
    let n = labels.len().max(1) as f64;
    var.iter_mut().for_each(|s| *s /= n);
    (mean, var)
}

/// The network as Candle tensors.
pub(super) struct Net {
    d: usize,
    blocks: Vec<NetBlock>,
    base_mean: Tensor,
    base_log_scale: Tensor,
}

struct NetBlock {
    perm: Tensor,
    /// In [`BLOCK_TENSORS`] order.
    t: Vec<Tensor>,
}

impl Net {
    pub fn new(model: &Model, dtype: DType) -> Result<Net> {
        let dev = Device::Cpu;
        let tensor = |data: &[f64], shape: &[usize]| -> Result<Tensor> {
            Ok(Tensor::from_slice(data, shape, &dev)?.to_dtype(dtype)?)
        };
        let shapes = block_shapes(model.dim, model.hidden);
        let mut blocks = Vec::with_capacity(model.perms.len());
        for (perm, w) in model.perms.iter().zip(&model.weights) {
            let idx: Vec<u32> = perm.iter().map(|&p| p as u32).collect();
            blocks.push(NetBlock {
                perm: Tensor::from_vec(idx, model.dim, &dev)?,
                t: w
                    .iter()
                    .zip(&shapes)
                    .map(|(data, shape)| tensor(data, shape))
                    .collect::<Result<_>>()?,
            });
        }
        let k = model.classes();
        Ok(Net {
            d: model.dim,
            blocks,
            base_mean: tensor(&model.base_mean, &[k, model.dim])?,
            base_log_scale: tensor(&model.base_log_scale, &[model.dim])?,
        })
    }

    /// Every trainable tensor, as variables of the optimiser.
    fn vars(&mut self) -> Result<Vec<Var>> {
        let mut vars = Vec::new();
        let mut wrap = |t: &mut Tensor| -> Result<()> {
            let v = Var::from_tensor(t)?;
            *t = v.as_tensor().clone();
            vars.push(v);
            Ok(())
        };
        for b in &mut self.blocks {
            b.t.iter_mut().try_for_each(&mut wrap)?;
        }
        wrap(&mut self.base_mean)?;
        wrap(&mut self.base_log_scale)?;
        Ok(vars)
    }

    /// `(z, log|det ∂z/∂x|)` for rows `x` [n, d].
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (da, db) = halves(self.d);
        let mut x = x.clone();
        let mut logdet = Tensor::zeros(x.dim(0)?, x.dtype(), x.device())?;
        for b in &self.blocks {
            let [bias, log_scale, w1, b1, w2, b2, w3, b3] = &b.t[..] else {
                unreachable!("a block has {} tensors", BLOCK_TENSORS.len());
            };
            x = x.index_select(&b.perm, 1)?;
            x = x.broadcast_add(bias)?.broadcast_mul(&log_scale.exp()?)?;
            logdet = logdet.broadcast_add(&log_scale.sum_all()?)?;
            let xa = x.narrow(1, 0, da)?;
            let h = xa.matmul(&w1.t()?)?.broadcast_add(b1)?.silu()?;
            let h = h.matmul(&w2.t()?)?.broadcast_add(b2)?.silu()?;
            let out = h.matmul(&w3.t()?)?.broadcast_add(b3)?;
            let s = ((out.narrow(1, 0, db)? / SCALE_BOUND)?.tanh()? * SCALE_BOUND)?;
            let yb = (x.narrow(1, da, db)?.mul(&s.exp()?)? + out.narrow(1, db, db)?)?;
            logdet = (logdet + s.sum(1)?)?;
            x = Tensor::cat(&[&xa, &yb], 1)?;
        }
        Ok((x, logdet))
    }

    /// Mean negative log-likelihood per coordinate of rows `x` of classes `labels` (indices).
    pub fn loss(&self, x: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let (z, logdet) = self.forward(x)?;
        let mu = self.base_mean.index_select(labels, 0)?;
        let u = (z - mu)?.broadcast_mul(&self.base_log_scale.neg()?.exp()?)?;
        let quad = (u.sqr()?.sum(1)? * 0.5)?;
        let nll = (quad - logdet)?.mean_all()?;
        let constant = self.base_log_scale.sum_all()?;
        let per_dim = ((nll + constant)? / self.d as f64)?;
        Ok((per_dim + HALF_LN_2PI)?)
    }
}

/// A flow fitted to standardised rows `x` ([n, d]) of class indices `labels` (below `classes`).
pub(super) fn fit(
    x: &[f64],
    d: usize,
    labels: &[usize],
    classes: usize,
    cfg: &Training,
    rng: &mut ChaCha8Rng,
) -> Result<Model> {
    let mut model = Model::new(d, cfg.hidden, cfg.blocks, classes, rng);
    model.init_from_data(x, labels);
    train(&mut model, x, labels, cfg, rng)?;
    Ok(model)
}

/// Fits `model` (already data-initialised) by maximum likelihood on standardised rows `x` of
/// class indices `labels`: AdamW, shuffled mini-batches, cosine decay of the learning rate.
fn train(
    model: &mut Model,
    x: &[f64],
    labels: &[usize],
    cfg: &Training,
    rng: &mut ChaCha8Rng,
) -> Result<()> {
    let (n, d) = (labels.len(), model.dim);
    let dev = Device::Cpu;
    let data = Tensor::from_vec(x.iter().map(|&v| v as f32).collect(), (n, d), &dev)?;
    let classes = Tensor::from_vec(labels.iter().map(|&c| c as u32).collect(), n, &dev)?;
    let mut net = Net::new(model, DType::F32)?;
    let vars = net.vars()?;
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: cfg.lr,
            ..Default::default()
        },
    )?;
    let batch = cfg.batch.min(n);
    let total = (cfg.epochs * n.div_ceil(batch)).max(1);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut step = 0;
    for _ in 0..cfg.epochs {
        order.shuffle(rng);
        for chunk in order.chunks(batch) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &dev)?;
            let loss = net.loss(&data.index_select(&idx, 0)?, &classes.index_select(&idx, 0)?)?;
            let progress = step as f64 / total as f64;
            opt.set_learning_rate(cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()));
            opt.backward_step(&loss)?;
            step += 1;
        }
    }
    let host = |v: &Var| -> Result<Vec<f64>> {
        let data: Vec<f64> = v.as_tensor().to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        if data.iter().any(|x| !x.is_finite()) {
            return Err(err(
                "flow", ScorerFault::CannotFit,
                format!("training diverged (non-finite weights); refit with a smaller lr than {}", cfg.lr),
            ));
        }
        Ok(data)
    };
    let mut it = vars.iter();
    for w in &mut model.weights {
        for t in w.iter_mut() {
            *t = host(it.next().expect("one var per tensor"))?;
        }
    }
    model.base_mean = host(it.next().expect("base mean var"))?;
    model.base_log_scale = host(it.next().expect("base scale var"))?;
    Ok(())
}
