//! The flow's forward pass for scoring, in plain f64 loops over the stored weights.
//!
//! One image brings a handful of boxes, for which Candle's per-operation overhead (about 30 small
//! tensor operations per block) costs far more than the arithmetic. Here each dense layer is a
//! matrix-vector product per box, into buffers allocated once per call, over weights transposed
//! once when the scorer is fitted or loaded. Training stays in Candle (net.rs); the tests hold
//! this forward to Candle's f64 one.

use super::net::{halves, Model, SCALE_BOUND};

/// Outputs of a dense layer computed together, their running sums held in registers (a dot
/// product per output would end in a horizontal sum, which costs as much as the products here).
const TILE: usize = 32;

/// A fitted flow laid out for scoring.
#[derive(Clone, Debug)]
pub(super) struct Forward {
    dim: usize,
    hidden: usize,
    blocks: Vec<Block>,
}

/// One block: permutation, actnorm (its scale and log-determinant computed once) and the
/// coupling's three dense layers.
#[derive(Clone, Debug)]
struct Block {
    perm: Vec<usize>,
    bias: Vec<f64>,
    scale: Vec<f64>,
    actnorm_logdet: f64,
    layers: [Dense; 3],
}

/// `W x + b` for `W` [out, in], stored transposed ([in, out]) with `out` padded with zeros to a
/// whole number of tiles.
#[derive(Clone, Debug)]
struct Dense {
    wt: Vec<f64>,
    b: Vec<f64>,
}

/// Scratch space for one row.
struct Buffers {
    row: Vec<f64>,
    h1: Vec<f64>,
    h2: Vec<f64>,
    out: Vec<f64>,
}

fn padded(n: usize) -> usize {
    n.next_multiple_of(TILE)
}

impl Forward {
    pub fn new(model: &Model) -> Forward {
        let blocks = model.perms.iter().zip(&model.weights).map(|(perm, w)| {
            let [bias, log_scale, w1, b1, w2, b2, w3, b3] = &w[..] else {
                unreachable!("a block has 8 tensors, not {}", w.len());
            };
            Block {
                perm: perm.clone(),
                bias: bias.clone(),
                scale: log_scale.iter().map(|a| a.exp()).collect(),
                actnorm_logdet: log_scale.iter().sum(),
                layers: [Dense::new(w1, b1), Dense::new(w2, b2), Dense::new(w3, b3)],
            }
        });
        Forward {
            dim: model.dim,
            hidden: model.hidden,
            blocks: blocks.collect(),
        }
    }

    /// Maps standardised rows `x` ([n, d], row-major) in place to the base space `z`, and returns
    /// every row's `log|det ∂z/∂x|`.
    pub fn transform(&self, x: &mut [f64]) -> Vec<f64> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, checked just above.
            return unsafe { self.transform_avx512(x) };
        }
        self.transform_portable(x)
    }

    /// The same loops compiled for AVX-512, which the compiler then vectorises 8 lanes wide (the
    /// default target has SSE2 only): the same operations in the same order, so the same values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn transform_avx512(&self, x: &mut [f64]) -> Vec<f64> {
        self.transform_portable(x)
    }

    /// [`Forward::transform`] for any CPU.
    #[inline(always)]
    pub(super) fn transform_portable(&self, x: &mut [f64]) -> Vec<f64> {
        let d = self.dim;
        let mut logdet = vec![0.0; x.len() / d];
        let mut buf = Buffers {
            row: vec![0.0; d],
            h1: vec![0.0; padded(self.hidden)],
            h2: vec![0.0; padded(self.hidden)],
            out: vec![0.0; padded(2 * halves(d).1)],
        };
        // Block by block over all rows, so that one block's weights stay in cache.
        for block in &self.blocks {
            for (row, ld) in x.chunks_exact_mut(d).zip(&mut logdet) {
                *ld += block.apply(row, &mut buf);
            }
        }
        logdet
    }
}

impl Block {
    /// Permutation, actnorm and affine coupling of one row, in place; returns the block's
    /// log-determinant.
    #[inline(always)]
    fn apply(&self, row: &mut [f64], buf: &mut Buffers) -> f64 {
        for (t, &p) in buf.row.iter_mut().zip(&self.perm) {
            *t = row[p];
        }
        for (r, ((t, b), s)) in row.iter_mut().zip(buf.row.iter().zip(&self.bias).zip(&self.scale)) {
            *r = (t + b) * s;
        }
        let [l1, l2, l3] = &self.layers;
        let (xa, xb) = row.split_at_mut(halves(buf.row.len()).0);
        l1.apply(xa, &mut buf.h1);
        silu(&mut buf.h1);
        l2.apply(&buf.h1, &mut buf.h2);
        silu(&mut buf.h2);
        l3.apply(&buf.h2, &mut buf.out);
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

impl Dense {
    fn new(w: &[f64], b: &[f64]) -> Dense {
        let (outputs, width) = (b.len(), padded(b.len()));
        let inputs = w.len() / outputs;
        let mut wt = vec![0.0; inputs * width];
        for (i, row) in w.chunks_exact(inputs).enumerate() {
            for (j, &v) in row.iter().enumerate() {
                wt[j * width + i] = v;
            }
        }
        let mut b = b.to_vec();
        b.resize(width, 0.0);
        Dense { wt, b }
    }

    /// `out = W x + b` over the padded width (zero in the padding); `x` may be longer than the
    /// layer's input (a padded buffer).
    #[inline(always)]
    fn apply(&self, x: &[f64], out: &mut [f64]) {
        let width = self.b.len();
        let tiles = out.chunks_exact_mut(TILE).zip(self.b.chunks_exact(TILE));
        for (t, (out, b)) in tiles.enumerate() {
            let mut acc: [f64; TILE] = b.try_into().expect("whole tiles");
            for (xk, w) in x.iter().zip(self.wt.chunks_exact(width)) {
                let w: &[f64; TILE] = w[t * TILE..(t + 1) * TILE].try_into().expect("whole tiles");
                for (a, w) in acc.iter_mut().zip(w) {
                    *a += xk * w;
                }
            }
            out.copy_from_slice(&acc);
        }
    }
}

/// SiLU, `x / (1 + e^−x)` as Candle computes it.
#[inline(always)]
fn silu(h: &mut [f64]) {
    for v in h {
        *v /= 1.0 + (-*v).exp();
    }
}
