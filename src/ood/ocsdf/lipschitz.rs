//! 1-Lipschitz dense layers: the f64 normalisations that make a stored weight matrix
//! 1-Lipschitz (power iteration, Björck orthonormalisation, the Hölder bound), the fitted
//! network as plain matmuls, and the same layers as a Candle graph for training.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use crate::ood::linalg::matmul_nt;

/// The activation between hidden layers; both are 1-Lipschitz and gradient-norm preserving.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Sorts each consecutive pair: `(min, max)`.
    #[serde(rename = "groupsort2")]
    GroupSort2,
    /// Sorts the whole layer, ascending.
    #[serde(rename = "fullsort")]
    FullSort,
}

/// How a hidden layer's weight is made 1-Lipschitz.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalisation {
    /// Divide by the spectral norm (power iteration), then Björck orthonormalisation.
    #[serde(rename = "bjorck")]
    Bjorck,
    /// Divide by `max(1, √(‖W‖₁‖W‖∞))` (largest column L1 norm × largest row L1 norm), an
    /// upper bound of the spectral norm at O(parameters).
    #[serde(rename = "column_norm")]
    ColumnNorm,
}

/// A row-major `[rows, cols]` matrix in f64.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl Matrix {
    fn transpose(&self) -> Matrix {
        let mut data = vec![0.0; self.data.len()];
        for r in 0..self.rows {
            for c in 0..self.cols {
                data[c * self.rows + r] = self.data[r * self.cols + c];
            }
        }
        Matrix {
            rows: self.cols,
            cols: self.rows,
            data,
        }
    }

    /// `W v`.
    fn apply(&self, v: &[f64]) -> Vec<f64> {
        self.data
            .chunks_exact(self.cols)
            .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
            .collect()
    }

    /// `Wᵀ u`.
    fn apply_t(&self, u: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.cols];
        for (row, &ui) in self.data.chunks_exact(self.cols).zip(u) {
            for (o, &w) in out.iter_mut().zip(row) {
                *o += w * ui;
            }
        }
        out
    }

    fn scale(&mut self, s: f64) {
        self.data.iter_mut().for_each(|v| *v *= s);
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The largest singular value by `iters` power iterations on `WᵀW` from `v0` (a lower bound
/// that converges from below).
pub(crate) fn spectral_norm(w: &Matrix, v0: &[f64], iters: usize) -> f64 {
    let mut v = v0.to_vec();
    let mut sigma = 0.0;
    for _ in 0..iters {
        let n = norm(&v);
        if n == 0.0 {
            return 0.0;
        }
        v.iter_mut().for_each(|x| *x /= n);
        let u = w.apply(&v);
        sigma = norm(&u);
        v = w.apply_t(&u);
    }
    sigma
}

/// Björck orthonormalisation `W ← 1.5 W − 0.5 W Wᵀ W` until the largest entry change is below
/// `tol` or after `max_iters`; converges to the nearest semi-orthogonal matrix when every
/// singular value of `W` lies in (0, √3).
pub(crate) fn bjorck(w: &mut Matrix, tol: f64, max_iters: usize) {
    for _ in 0..max_iters {
        // W Wᵀ W through the smaller Gram matrix.
        let wwtw = if w.rows <= w.cols {
            let gram = matmul_nt(&w.data, w.rows, w.cols, &w.data, w.rows);
            let wt = w.transpose();
            matmul_nt(&gram, w.rows, w.rows, &wt.data, w.cols)
        } else {
            let wt = w.transpose();
            let gram = matmul_nt(&wt.data, w.cols, w.rows, &wt.data, w.cols);
            matmul_nt(&w.data, w.rows, w.cols, &gram, w.cols)
        };
        let mut change: f64 = 0.0;
        for (x, y) in w.data.iter_mut().zip(&wwtw) {
            let next = 1.5 * *x - 0.5 * y;
            change = change.max((next - *x).abs());
            *x = next;
        }
        if change < tol {
            break;
        }
    }
}

/// `√(‖W‖₁‖W‖∞)`: largest column L1 norm times largest row L1 norm, square-rooted; bounds the
/// spectral norm from above (Schur).
pub(crate) fn holder_bound(w: &Matrix) -> f64 {
    let row = w
        .data
        .chunks_exact(w.cols)
        .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let mut cols = vec![0.0f64; w.cols];
    for r in w.data.chunks_exact(w.cols) {
        for (c, v) in cols.iter_mut().zip(r) {
            *c += v.abs();
        }
    }
    (row * cols.iter().copied().fold(0.0, f64::max)).sqrt()
}

/// The stored form of a trained weight: normalised to convergence in f64, then divided by its
/// measured spectral norm when that is still above 1, so that every stored layer is 1-Lipschitz.
pub(crate) fn finalise(mut w: Matrix, normalisation: Normalisation) -> Matrix {
    let start = vec![1.0; w.cols];
    match normalisation {
        Normalisation::Bjorck => {
            let sigma = spectral_norm(&w, &start, 200);
            if sigma > 0.0 {
                w.scale(1.0 / sigma);
            }
            bjorck(&mut w, 1e-12, 200);
            let sigma = spectral_norm(&w, &start, 200);
            if sigma > 1.0 {
                w.scale(1.0 / sigma);
            }
        }
        Normalisation::ColumnNorm => w.scale(1.0 / holder_bound(&w).max(1.0)),
    }
    w
}

/// A fitted 1-Lipschitz network `f`, weights already normalised: hidden dense layers with the
/// activation, then a unit-norm output row.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Net {
    /// Hidden layers: weight `[out, in]` and bias `[out]`.
    pub hidden: Vec<(Matrix, Vec<f64>)>,
    /// The output weight, unit L2 norm.
    pub out: Vec<f64>,
    pub out_bias: f64,
    pub activation: Activation,
}

impl Net {
    /// `f` of every row of `x` (row-major `[m, in]`).
    pub fn forward(&self, x: &[f64], m: usize) -> Vec<f64> {
        let mut h = x.to_vec();
        let mut width = x.len().checked_div(m).unwrap_or(0);
        for (w, b) in &self.hidden {
            debug_assert_eq!(w.cols, width);
            h = matmul_nt(&h, m, w.cols, &w.data, w.rows);
            for row in h.chunks_exact_mut(w.rows) {
                for (v, bias) in row.iter_mut().zip(b) {
                    *v += bias;
                }
                activate(row, self.activation);
            }
            width = w.rows;
        }
        h.chunks_exact(width.max(1))
            .map(|row| row.iter().zip(&self.out).map(|(a, b)| a * b).sum::<f64>() + self.out_bias)
            .collect()
    }
}

fn activate(row: &mut [f64], activation: Activation) {
    match activation {
        Activation::GroupSort2 => {
            for pair in row.chunks_exact_mut(2) {
                if pair[0] > pair[1] {
                    pair.swap(0, 1);
                }
            }
        }
        Activation::FullSort => row.sort_by(f64::total_cmp),
    }
}

/// The activation on a Candle batch `[b, w]` (differentiable).
pub(crate) fn activate_tensor(x: &Tensor, activation: Activation) -> candle_core::Result<Tensor> {
    match activation {
        Activation::GroupSort2 => {
            let (b, w) = x.dims2()?;
            let pairs = x.reshape((b, w / 2, 2))?;
            let lo = pairs.min_keepdim(D::Minus1)?;
            let hi = pairs.max_keepdim(D::Minus1)?;
            Tensor::cat(&[lo, hi], D::Minus1)?.reshape((b, w))
        }
        Activation::FullSort => {
            let order = x.arg_sort_last_dim(true)?;
            x.contiguous()?.gather(&order, D::Minus1)
        }
    }
}
