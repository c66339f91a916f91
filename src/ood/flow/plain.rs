//! The flow's forward pass for scoring, in plain f64 loops over the stored weights.
//!
//! One image brings a handful of boxes, for which Candle's per-operation overhead (about 30 small
//! tensor operations per block) costs far more than the arithmetic. Here every dense layer is a
//! matrix-vector product per box, into buffers allocated once per call. Training stays in Candle
//! (net.rs); the tests hold this forward to Candle's f64 one.

use super::net::{halves, Model, SCALE_BOUND};

/// Independent partial sums of a dot product, so that the compiler can vectorise it (a single
/// running sum is one long dependency chain it may not reorder).
const LANES: usize = 8;

impl Model {
    /// Maps standardised rows `x` ([n, d], row-major) in place to the base space `z`, and returns
    /// every row's `log|det ∂z/∂x|`.
    pub fn transform(&self, x: &mut [f64]) -> Vec<f64> {
        let d = self.dim;
        let mut logdet = vec![0.0; x.len() / d];
        let mut buf = Buffers {
            row: vec![0.0; d],
            h1: vec![0.0; self.hidden],
            h2: vec![0.0; self.hidden],
            out: vec![0.0; 2 * halves(d).1],
        };
        // Block by block over all rows, so that one block's weights stay in cache.
        for (perm, w) in self.perms.iter().zip(&self.weights) {
            let block = Block::new(perm, w);
            for (row, ld) in x.chunks_exact_mut(d).zip(&mut logdet) {
                *ld += block.apply(row, &mut buf);
            }
        }
        logdet
    }
}

/// Scratch space for one row.
struct Buffers {
    row: Vec<f64>,
    h1: Vec<f64>,
    h2: Vec<f64>,
    out: Vec<f64>,
}

/// One block's stored tensors (in `BLOCK_TENSORS` order), with its actnorm's scale and
/// log-determinant computed once.
struct Block<'a> {
    perm: &'a [usize],
    bias: &'a [f64],
    scale: Vec<f64>,
    actnorm_logdet: f64,
    layers: [(&'a [f64], &'a [f64]); 3],
}

impl<'a> Block<'a> {
    fn new(perm: &'a [usize], w: &'a [Vec<f64>]) -> Block<'a> {
        let [bias, log_scale, w1, b1, w2, b2, w3, b3] = w else {
            unreachable!("a block has 8 tensors, not {}", w.len());
        };
        Block {
            perm,
            bias,
            scale: log_scale.iter().map(|a| a.exp()).collect(),
            actnorm_logdet: log_scale.iter().sum(),
            layers: [(w1, b1), (w2, b2), (w3, b3)],
        }
    }

    /// Permutation, actnorm and affine coupling of one row, in place; returns the block's
    /// log-determinant.
    fn apply(&self, row: &mut [f64], buf: &mut Buffers) -> f64 {
        for (t, &p) in buf.row.iter_mut().zip(self.perm) {
            *t = row[p];
        }
        for (r, ((t, b), s)) in row.iter_mut().zip(buf.row.iter().zip(self.bias).zip(&self.scale)) {
            *r = (t + b) * s;
        }
        let [l1, l2, l3] = self.layers;
        let (xa, xb) = row.split_at_mut(halves(buf.row.len()).0);
        dense(l1, xa, &mut buf.h1);
        silu(&mut buf.h1);
        dense(l2, &buf.h1, &mut buf.h2);
        silu(&mut buf.h2);
        dense(l3, &buf.h2, &mut buf.out);
        let (s_raw, shift) = buf.out.split_at(xb.len());
        let mut logdet = self.actnorm_logdet;
        for ((x, s), t) in xb.iter_mut().zip(s_raw).zip(shift) {
            let s = (s / SCALE_BOUND).tanh() * SCALE_BOUND;
            *x = *x * s.exp() + t;
            logdet += s;
        }
        logdet
    }
}

/// `out = W x + b` for a row-major `W` [out, in].
fn dense((w, b): (&[f64], &[f64]), x: &[f64], out: &mut [f64]) {
    for ((o, w), b) in out.iter_mut().zip(w.chunks_exact(x.len())).zip(b) {
        *o = b + dot(w, x);
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    let (a8, b8) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f64 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    let mut acc = [0.0; LANES];
    for (x, y) in a8.zip(b8) {
        for k in 0..LANES {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// SiLU, `x / (1 + e^−x)` as Candle computes it.
fn silu(h: &mut [f64]) {
    for v in h {
        *v /= 1.0 + (-*v).exp();
    }
}
