//! Box-abstraction monitors (He, Wu, Bensalem, RV 2024, "Box-Based Monitor Approach for
//! Out-of-Distribution Detection in YOLO"; after Henzinger, Lukina, Schilling, ECAI 2020).
//!
//! **Fit** (per group, f64): the fit boxes are grouped by predicted class (`class_id`). A class
//! with `n_c >= min_class_boxes` boxes gets its own monitor: k-means with k-means++ seeding and
//! `k = max(1, round(n_c / density))` clusters on its input vectors (`input=logits`: the class
//! logits; `input=features`: the feature), and each non-empty cluster becomes the axis-aligned box
//! `[min_j, max_j]` of its members in every dimension `j`.
//!
//! **Score:** the smallest L1 distance from the box's vector to the boxes of its predicted class,
//! `min_b Σ_j max(lo_bj − x_j, x_j − hi_bj, 0)` (0 inside a box).
//!
//! **Pooled fallback:** the boxes of the classes with fewer than `min_class_boxes` fit boxes are
//! clustered together (one k-means, `k = max(1, round(n / density))`), and the pooled monitor is
//! every box of the group: the classes' own and those. A box whose class fell back, or whose class
//! had no fit box at all, is scored against the pooled monitor. The classes that fell back are in
//! the state (`group{g}.fallback_classes`) and from [`BoxMonitor::fallback_classes`].
//!
//! **k-means:** one run, seeded (`seed`; ChaCha8 with one stream per group and class, so a class's
//! clusters do not depend on the others); k-means++ draws each new centre with probability
//! proportional to the squared distance to the nearest chosen one (one candidate per draw); Lloyd
//! iterations until no assignment changes, the centres' total squared move is at most `tol` times
//! the mean variance of the points (scikit-learn's rule and default, 1e-4), or `max_iter`; an
//! empty cluster keeps its centre and
//! gives no box. Distances for the assignment come from a f64 GEMM (`‖x‖² + ‖c‖² − 2x·c`); ties go
//! to the lower cluster index. Same input and seed → the same boxes, bit for bit.
//!
//! **Per level (YOLO):** `per_level=true` (default) fits one monitor set per level, for both
//! inputs (each level has its own class branch); `per_level=false` pools the levels.
//!
//! **Differences from the paper's code (`hugoQAQ/bm-yolo`):** it drops the classes with fewer
//! than `density` boxes and their test boxes; here every box is scored (pooled fallback). It uses
//! scikit-learn's `KMeans` (greedy k-means++ with `2 + ln k` candidates per draw, several
//! restarts in older versions); here one plain k-means++ run, seeded. Classes are predicted ones
//! on both sides, as in the paper.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use super::common::{err, Grouping, TensorMap, TensorsOut, Uses};
use super::grouped::{GroupInfo, PerLevel};
use super::linalg::matmul_nt;
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};

pub(crate) const BOX_MONITOR: KindEntry = KindEntry {
    name: "box_monitor",
    summary: "L1 distance to the nearest k-means box of the predicted class (the logits instead with `input=logits`)",
    inputs: uses(BoxMonitorParams::DEFAULT_INPUT),
    shapeable: false,
    params: infos::<BoxMonitorParams>,
    build: |p, _| Ok(Box::new(BoxMonitor::with_params(p.typed()?))),
};

/// What a monitor abstracts: the class logits or the feature of a box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MonitorInput {
    Logits,
    Features,
}

const fn uses(input: MonitorInput) -> Uses {
    Uses {
        features: matches!(input, MonitorInput::Features),
        logits: matches!(input, MonitorInput::Logits),
    }
}

/// The box monitor's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxMonitorParams {
    pub density: usize,
    pub input: MonitorInput,
    pub min_class_boxes: usize,
    pub max_iter: usize,
    pub tol: f64,
    pub seed: u64,
    pub per_level: bool,
}

impl BoxMonitorParams {
    const DEFAULT_INPUT: MonitorInput = MonitorInput::Features;
}

impl Default for BoxMonitorParams {
    fn default() -> Self {
        BoxMonitorParams {
            density: 5,
            input: Self::DEFAULT_INPUT,
            min_class_boxes: 20,
            max_iter: 50,
            tol: 1e-4,
            seed: 0,
            per_level: true,
        }
    }
}

impl ParamSet for BoxMonitorParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "density",
            expected: "an integer >= 1",
            doc: "fit boxes per cluster: a class of n boxes gets max(1, round(n / density)) boxes",
        },
        ParamDoc {
            name: "input",
            expected: "one of logits, features",
            doc: "the vectors abstracted: the class logits or the feature",
        },
        ParamDoc {
            name: "min_class_boxes",
            expected: "an integer >= 1",
            doc: "a class with fewer fit boxes is scored against the pooled monitor",
        },
        ParamDoc {
            name: "max_iter",
            expected: "an integer >= 1",
            doc: "the most Lloyd iterations of k-means",
        },
        ParamDoc {
            name: "tol",
            expected: "a number >= 0",
            doc: "k-means stops when the centres move by at most tol × the mean variance (squared, summed)",
        },
        ParamDoc {
            name: "seed",
            expected: "an integer >= 0",
            doc: "the seed of the k-means++ draws",
        },
        PER_LEVEL,
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        [
            ("density", self.density >= 1),
            ("min_class_boxes", self.min_class_boxes >= 1),
            ("max_iter", self.max_iter >= 1),
            ("tol", self.tol >= 0.0 && self.tol.is_finite()),
        ]
        .into_iter()
        .find(|(_, ok)| !ok)
        .map(|(name, _)| name)
    }
}

/// Axis-aligned boxes `[lo, hi]` in `width` dimensions, row-major `[n, width]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Boxes {
    pub width: usize,
    pub lo: Vec<f64>,
    pub hi: Vec<f64>,
    /// The boxes again for [`Boxes::distance`]: a tree of bounding boxes.
    search: Search,
}

/// Boxes laid out for [`Boxes::distance`]: a tree in which every node bounds [`LANES`] nodes of
/// the layer below. The boxes are in the leaf order of a k-d tree on their centres, whose splits
/// fall between whole subtrees, so the boxes under a node are near one another and its bounding
/// box is small.
///
/// The layers hold their bounds in f32, rounded outwards: half the memory to stream (the search
/// is bound by it), and each box only grows, so a distance summed over them is a lower bound of
/// the exact one (see [`lane_sums`]). The exact f64 distance is summed only for a box whose
/// bound beats the best so far.
#[derive(Clone, Debug, Default, PartialEq)]
struct Search {
    /// `layers[0]`: the boxes; `layers[l]`: the bounding box of each [`LANES`] nodes of layer
    /// `l − 1`, whose distance bounds theirs from below. The top layer has at most [`LANES`].
    layers: Vec<Layer>,
    /// The box (row of [`Boxes::lo`] and [`Boxes::hi`]) at each position of `layers[0]`.
    order: Vec<usize>,
}

/// One layer of [`Search`]: `[group][dim][lane]`, [`LANES`] nodes side by side, the last group
/// padded with boxes at infinity.
#[derive(Clone, Debug, Default, PartialEq)]
struct Layer {
    /// Rounded down.
    lo: Vec<f32>,
    /// Rounded up.
    hi: Vec<f32>,
    len: usize,
}

/// Scoring runs on rayon's pool from this much work on: the monitor boxes' dimensions, summed
/// over the boxes scored (measured: an image's 7 boxes against 1 400 monitor boxes of 64
/// dimensions are faster on one thread, against 21 000 on two).
const PARALLEL_FROM: usize = 1 << 20;

/// Boxes whose distances [`Boxes::distance`] sums side by side.
const LANES: usize = 8;

/// Dimensions between two looks at whether a block of boxes can be left: each dimension is a
/// new cache line of each bound, and most blocks can be left after the first few.
const CHECK_EVERY: usize = 2;

impl Boxes {
    pub fn new(width: usize, lo: Vec<f64>, hi: Vec<f64>) -> Boxes {
        let search = Search::new(width, &lo, &hi);
        Boxes {
            width,
            lo,
            hi,
            search,
        }
    }

    pub fn len(&self) -> usize {
        self.lo.len() / self.width.max(1)
    }

    fn extend(&mut self, other: &Boxes) {
        let (mut lo, mut hi) = (std::mem::take(&mut self.lo), std::mem::take(&mut self.hi));
        lo.extend_from_slice(&other.lo);
        hi.extend_from_slice(&other.hi);
        *self = Boxes::new(other.width, lo, hi);
    }

    /// The bounding box of each non-empty cluster of `points` (row-major `[n, width]`), cluster
    /// `assign[i] < k` for point `i`, in cluster order.
    pub fn from_assignments(points: &[f64], width: usize, assign: &[usize], k: usize) -> Boxes {
        let mut lo = vec![f64::INFINITY; k * width];
        let mut hi = vec![f64::NEG_INFINITY; k * width];
        let mut used = vec![false; k];
        for (row, &c) in points.chunks_exact(width).zip(assign) {
            used[c] = true;
            let (l, h) = (
                &mut lo[c * width..(c + 1) * width],
                &mut hi[c * width..(c + 1) * width],
            );
            for ((l, h), &v) in l.iter_mut().zip(h.iter_mut()).zip(row) {
                *l = l.min(v);
                *h = h.max(v);
            }
        }
        let keep = |v: Vec<f64>| -> Vec<f64> {
            v.chunks_exact(width)
                .zip(&used)
                .filter(|(_, &u)| u)
                .flat_map(|(r, _)| r.to_vec())
                .collect()
        };
        Boxes::new(width, keep(lo), keep(hi))
    }

    /// The smallest L1 distance from `x` to the boxes (0 inside one); each box's dimensions are
    /// summed in order. [`LANES`] boxes are summed side by side, which the compiler turns into
    /// SIMD, and a block is left as soon as all its partial sums reach the best so far (the
    /// terms are non-negative, so the minimum is the same, bit for bit, as one box at a time).
    pub fn distance(&self, x: &[f64]) -> f64 {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { self.distance_avx512(x) };
            }
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: the CPU has AVX, checked just above.
                return unsafe { self.distance_avx(x) };
            }
        }
        self.distance_side_by_side(x)
    }

    /// [`Boxes::distance_side_by_side`] compiled for AVX (the default target has SSE2 only):
    /// the same operations in the same order, so the same values.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx")]
    unsafe fn distance_avx(&self, x: &[f64]) -> f64 {
        self.distance_side_by_side(x)
    }

    /// The same for AVX-512, where one register holds the [`LANES`] sums.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn distance_avx512(&self, x: &[f64]) -> f64 {
        self.distance_side_by_side(x)
    }

    /// The distance by each code path this CPU can run, for checks.
    #[cfg(test)]
    fn distance_per_instruction_set(&self, x: &[f64]) -> Vec<(&'static str, f64)> {
        let mut out = vec![("baseline", self.distance_side_by_side(x))];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx") {
                // SAFETY: checked just above.
                out.push(("avx", unsafe { self.distance_avx(x) }));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: checked just above.
                out.push(("avx512f", unsafe { self.distance_avx512(x) }));
            }
        }
        out
    }

    /// Best first: the node of smallest lower bound is opened next, and the search stops when
    /// none left can hold a box nearer than the best so far.
    #[inline(always)]
    fn distance_side_by_side(&self, x: &[f64]) -> f64 {
        let Some(top) = self.search.layers.len().checked_sub(1) else {
            return f64::INFINITY;
        };
        if self.width == 0 || self.search.layers[0].len == 0 {
            return f64::INFINITY;
        }
        let mut best = f64::INFINITY;
        // Min-heap of (lower bound, layer, node); node `i` of layer `l` opens group `i` of
        // layer `l − 1`. The top layer is the one group opened first. The bounds are sums of
        // non-negative terms, so their bits order as their values do.
        let mut open = BinaryHeap::new();
        self.expand(top, 0, x, &mut best, &mut open);
        while let Some(Reverse((bits, layer, node))) = open.pop() {
            if f64::from_bits(bits) >= best || best == 0.0 {
                break;
            }
            self.expand(layer - 1, node, x, &mut best, &mut open);
        }
        best
    }

    /// Bounds the nodes of group `g` of `layer`: a box nearer than `best` becomes the best, a
    /// node that may hold one is queued. A method, not a closure, so that it is compiled with
    /// its caller's instruction set.
    #[inline(always)]
    fn expand(&self, layer: usize, g: usize, x: &[f64], best: &mut f64, open: &mut BinaryHeap<Reverse<(u64, usize, usize)>>) {
        let group = self.width * LANES;
        let below = &self.search.layers[layer];
        let at = g * group..(g + 1) * group;
        let sums = lane_sums(&below.lo[at.clone()], &below.hi[at], x, *best);
        let nodes = g * LANES..below.len.min((g + 1) * LANES);
        for (bound, node) in sums.into_iter().zip(nodes) {
            if bound >= *best {
                continue;
            }
            if layer == 0 {
                *best = best.min(self.exact_distance(self.search.order[node], x));
            } else {
                open.push(Reverse((bound.to_bits(), layer, node)));
            }
        }
    }

    /// The L1 distance from `x` to box `i`, summed over the dimensions in order.
    #[inline(always)]
    fn exact_distance(&self, i: usize, x: &[f64]) -> f64 {
        let at = i * self.width..(i + 1) * self.width;
        let (lo, hi) = (&self.lo[at.clone()], &self.hi[at]);
        let mut sum = 0.0;
        for ((&l, &h), &v) in lo.iter().zip(hi).zip(x) {
            sum += larger(larger(l - v, v - h), 0.0);
        }
        sum
    }
}

impl Search {
    fn new(width: usize, lo: &[f64], hi: &[f64]) -> Search {
        let order = kd_order(width, lo, hi);
        let sorted = |v: &[f64]| -> Vec<f64> {
            order.iter().flat_map(|&i| v[i * width..(i + 1) * width].iter().copied()).collect()
        };
        let (mut lo, mut hi) = (sorted(lo), sorted(hi));
        let mut layers = Vec::new();
        loop {
            let len = order.len().div_ceil(LANES.pow(layers.len() as u32));
            layers.push(Layer {
                lo: interleave(&lo, width, round_down),
                hi: interleave(&hi, width, round_up),
                len,
            });
            if len <= LANES || width == 0 {
                return Search { layers, order };
            }
            (lo, hi) = bounding_boxes(&lo, &hi, width);
        }
    }
}

/// The bounding box of each [`LANES`] consecutive boxes (row-major `[n, width]`; the last
/// group may hold fewer).
fn bounding_boxes(lo: &[f64], hi: &[f64], width: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = LANES * width.max(1);
    let fold = |v: &[f64], start: f64, pick: fn(f64, f64) -> f64| -> Vec<f64> {
        v.chunks(rows)
            .flat_map(|g| (0..width).map(move |d| g.iter().skip(d).step_by(width).fold(start, |a, &v| pick(a, v))))
            .collect()
    };
    (fold(lo, f64::INFINITY, f64::min), fold(hi, f64::NEG_INFINITY, f64::max))
}

/// The boxes' indices in the leaf order of a k-d tree on their centres: each node splits its
/// boxes at the median of the dimension in which their centres vary most, rounded to whole
/// subtrees of [`Search`] (the largest power of [`LANES`] below the node's size).
fn kd_order(width: usize, lo: &[f64], hi: &[f64]) -> Vec<usize> {
    let n = lo.len() / width.max(1);
    let centres: Vec<f64> = lo.iter().zip(hi).map(|(l, h)| (l + h) / 2.0).collect();
    let mut order: Vec<usize> = (0..n).collect();
    split(&mut order, &centres, width);
    order
}

fn split(rows: &mut [usize], centres: &[f64], width: usize) {
    if rows.len() <= LANES {
        return;
    }
    let mut unit = LANES;
    while unit * LANES < rows.len() {
        unit *= LANES;
    }
    let mid = rows.len().div_ceil(unit).div_ceil(2) * unit;
    let axis = widest_axis(rows, centres, width);
    let key = |i: usize| centres[i * width + axis];
    rows.select_nth_unstable_by(mid, |&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
    let (left, right) = rows.split_at_mut(mid);
    split(left, centres, width);
    split(right, centres, width);
}

/// The dimension in which the centres of `rows` vary most (the first on ties).
fn widest_axis(rows: &[usize], centres: &[f64], width: usize) -> usize {
    let mut sum = vec![0.0; width];
    let mut squares = vec![0.0; width];
    for &i in rows {
        for (d, &c) in centres[i * width..(i + 1) * width].iter().enumerate() {
            sum[d] += c;
            squares[d] += c * c;
        }
    }
    let n = rows.len() as f64;
    let spread = |d: usize| squares[d] - sum[d] * sum[d] / n;
    (0..width).fold(0, |best, d| if spread(d) > spread(best) { d } else { best })
}

/// The L1 distances from `x` to [`LANES`] boxes laid side by side (`[dim][lane]`), each summed
/// over the dimensions in order in f64; left early (some sums then short) once all reach `best`.
///
/// Each sum is at most the exact distance to the box it contains, bit for bit: the bounds are
/// rounded outwards, so every difference is at most the exact one before rounding, and rounding
/// to nearest is monotone, so each rounded difference, each `max` and each partial sum stays at
/// most its exact counterpart.
#[inline(always)]
fn lane_sums(lo: &[f32], hi: &[f32], x: &[f64], best: f64) -> [f64; LANES] {
    let mut sums = [0.0f64; LANES];
    for (d, &v) in x.iter().enumerate() {
        let (l, h) = (&lo[d * LANES..][..LANES], &hi[d * LANES..][..LANES]);
        for k in 0..LANES {
            sums[k] += larger(larger(f64::from(l[k]) - v, v - f64::from(h[k])), 0.0);
        }
        if d % CHECK_EVERY == CHECK_EVERY - 1 && sums.iter().all(|&s| s >= best) {
            break;
        }
    }
    sums
}

/// `a.max(b)` for numbers that are not NaN (a point's values and the boxes' bounds are
/// finite; padding is +∞), in the form SIMD `max` computes, which `f64::max`'s NaN rule
/// keeps the compiler from using.
#[inline(always)]
fn larger(a: f64, b: f64) -> f64 {
    if a > b {
        a
    } else {
        b
    }
}

/// Row-major `[n, width]` values as `[block][dim][lane]` in f32 (each by `round`), [`LANES`]
/// rows per block, the last block padded with +∞ (a box there is infinitely far from every
/// point).
fn interleave(rows: &[f64], width: usize, round: fn(f64) -> f32) -> Vec<f32> {
    let n = rows.len() / width.max(1);
    let blocks = n.div_ceil(LANES);
    let mut out = vec![f32::INFINITY; blocks * width * LANES];
    for (i, row) in rows.chunks_exact(width.max(1)).enumerate() {
        let (b, k) = (i / LANES, i % LANES);
        for (d, &v) in row.iter().enumerate() {
            out[(b * width + d) * LANES + k] = round(v);
        }
    }
    out
}

/// The largest f32 at most `v` (features read from f32 give bounds that are already f32).
fn round_down(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) > v {
        f.next_down()
    } else {
        f
    }
}

/// The smallest f32 at least `v`.
fn round_up(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) < v {
        f.next_up()
    } else {
        f
    }
}

/// The nearest centre (squared Euclidean distance; the lowest index on ties) of every point;
/// `norms` are the points' squared norms.
fn nearest_centres(points: &[f64], norms: &[f64], width: usize, centres: &[f64]) -> Vec<usize> {
    let (n, k) = (norms.len(), centres.len() / width);
    let c_norms: Vec<f64> = centres
        .chunks_exact(width)
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    // Blocks of points bound the memory of the distance matrix.
    let block = (1 << 22) / k.max(1) + 1;
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(block) {
        let m = block.min(n - start);
        let dots = matmul_nt(
            &points[start * width..(start + m) * width],
            m,
            width,
            centres,
            k,
        );
        out.par_extend(dots.par_chunks_exact(k).enumerate().map(|(i, row)| {
            let mut best = (0, f64::INFINITY);
            for (j, (&dot, &cn)) in row.iter().zip(&c_norms).enumerate() {
                let d2 = norms[start + i] + cn - 2.0 * dot;
                if d2 < best.1 {
                    best = (j, d2);
                }
            }
            best.0
        }));
    }
    out
}

fn squared_distance(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// k-means++ seeding: up to `k` centres (fewer when every point coincides with a chosen one).
fn kmeans_pp(points: &[f64], width: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = points.len() / width;
    let row = |i: usize| &points[i * width..(i + 1) * width];
    let first = rng.random_range(0..n);
    let mut centres = row(first).to_vec();
    let mut d2: Vec<f64> = points
        .par_chunks_exact(width)
        .map(|p| squared_distance(p, row(first)))
        .collect();
    while centres.len() / width < k {
        let total: f64 = d2.iter().sum();
        if total <= 0.0 {
            break;
        }
        let target = rng.random::<f64>() * total;
        let mut acc = 0.0;
        // Rounding can leave `target` above the running sum: then the last candidate.
        let mut pick = d2.iter().rposition(|&v| v > 0.0).unwrap_or(0);
        for (i, &v) in d2.iter().enumerate() {
            acc += v;
            if acc > target && v > 0.0 {
                pick = i;
                break;
            }
        }
        let c = row(pick);
        centres.extend_from_slice(c);
        d2.par_iter_mut()
            .zip(points.par_chunks_exact(width))
            .for_each(|(d, p)| *d = d.min(squared_distance(p, c)));
    }
    centres
}

/// The mean over dimensions of the points' variance.
fn mean_variance(points: &[f64], width: usize) -> f64 {
    let n = (points.len() / width) as f64;
    let mut mean = vec![0.0; width];
    for p in points.chunks_exact(width) {
        mean.iter_mut().zip(p).for_each(|(m, v)| *m += v / n);
    }
    let total: f64 = points
        .chunks_exact(width)
        .map(|p| squared_distance(p, &mean))
        .sum();
    total / n / width as f64
}

/// k-means (k-means++ seeding, Lloyd iterations until no assignment changes, the centres move by
/// at most `tol` × the mean variance in all (squared, summed), or `max_iter`): the cluster of
/// every point and the number of centres.
pub(crate) fn kmeans(
    points: &[f64],
    width: usize,
    k: usize,
    max_iter: usize,
    tol: f64,
    rng: &mut ChaCha8Rng,
) -> (Vec<usize>, usize) {
    let mut centres = kmeans_pp(points, width, k, rng);
    let k = centres.len() / width;
    let norms: Vec<f64> = points
        .chunks_exact(width)
        .map(|p| p.iter().map(|v| v * v).sum())
        .collect();
    let mut assign = nearest_centres(points, &norms, width, &centres);
    let tol = tol * mean_variance(points, width);
    for _ in 1..max_iter {
        let mut sums = vec![0.0; k * width];
        let mut counts = vec![0usize; k];
        for (p, &c) in points.chunks_exact(width).zip(&assign) {
            counts[c] += 1;
            sums[c * width..(c + 1) * width]
                .iter_mut()
                .zip(p)
                .for_each(|(s, v)| *s += v);
        }
        let mut shift = 0.0;
        for (c, &count) in counts.iter().enumerate().filter(|(_, &n)| n > 0) {
            for (dst, s) in centres[c * width..(c + 1) * width]
                .iter_mut()
                .zip(&sums[c * width..(c + 1) * width])
            {
                let moved = s / count as f64;
                shift += (moved - *dst) * (moved - *dst);
                *dst = moved;
            }
        }
        let next = nearest_centres(points, &norms, width, &centres);
        let stable = next == assign;
        assign = next;
        if stable || shift <= tol {
            break;
        }
    }
    (assign, k)
}

#[derive(Clone, Debug)]
pub struct BoxMonitor {
    pub params: BoxMonitorParams,
    groups: PerLevel<Group>,
}

/// One group's monitors.
#[derive(Clone, Debug, PartialEq)]
struct Group {
    /// Classes with their own monitor, increasing, and their boxes.
    classes: Vec<i64>,
    monitors: Vec<Boxes>,
    /// Classes with fewer than `min_class_boxes` fit boxes (but at least one), increasing.
    fallback: Vec<i64>,
    /// Every box of the group: the classes' own, then those of the fallback classes' boxes.
    pooled: Boxes,
}

impl Group {
    fn monitor(&self, class: i64) -> &Boxes {
        match self.classes.binary_search(&class) {
            Ok(c) => &self.monitors[c],
            Err(_) => &self.pooled,
        }
    }
}

impl BoxMonitor {
    pub fn with_params(params: BoxMonitorParams) -> Self {
        BoxMonitor {
            params,
            groups: PerLevel::default(),
        }
    }

    /// For each fitted group, the classes scored against the pooled monitor because they had
    /// fewer than `min_class_boxes` fit boxes.
    pub fn fallback_classes(&self) -> Option<Vec<Vec<i64>>> {
        self.groups
            .groups()
            .map(|g| g.iter().map(|g| g.fallback.clone()).collect())
    }

    fn uses(&self) -> Uses {
        uses(self.params.input)
    }

    /// The vectors the monitor abstracts, of boxes `idx`, row-major in f64.
    fn vectors(&self, boxes: &BoxSet, idx: &[usize]) -> (Vec<f64>, usize) {
        let width = match self.params.input {
            MonitorInput::Logits => boxes.num_classes,
            MonitorInput::Features => boxes.feature_dim,
        };
        let mut out = Vec::with_capacity(idx.len() * width);
        for &i in idx {
            let row = match self.params.input {
                MonitorInput::Logits => boxes.logit_row(i),
                MonitorInput::Features => boxes.feature(i),
            };
            out.extend(row.iter().map(|&v| v as f64));
        }
        (out, width)
    }

    /// The boxes of one set of points: k-means with `round(n / density)` clusters.
    fn abstract_points(&self, points: &[f64], width: usize, stream: u64) -> Boxes {
        let n = points.len() / width;
        let k = ((n as f64 / self.params.density as f64).round() as usize).clamp(1, n);
        let mut rng = ChaCha8Rng::seed_from_u64(self.params.seed);
        rng.set_stream(stream);
        let (assign, k) = kmeans(
            points,
            width,
            k,
            self.params.max_iter,
            self.params.tol,
            &mut rng,
        );
        Boxes::from_assignments(points, width, &assign, k)
    }

    fn fit_group(&self, boxes: &BoxSet, idx: &[usize], info: &GroupInfo) -> Group {
        let mut by_class: BTreeMap<i64, Vec<usize>> = BTreeMap::new();
        for &i in idx {
            by_class.entry(boxes.class_id[i] as i64).or_default().push(i);
        }
        // One random stream per (group, class); the fallback pool takes the group's last one.
        let stream = |c: u64| ((info.g as u64) << 33) | c;
        let mut group = Group {
            classes: Vec::new(),
            monitors: Vec::new(),
            fallback: Vec::new(),
            pooled: Boxes::default(),
        };
        let mut thin = Vec::new();
        for (&class, members) in &by_class {
            if members.len() < self.params.min_class_boxes {
                group.fallback.push(class);
                thin.extend_from_slice(members);
                continue;
            }
            let (points, width) = self.vectors(boxes, members);
            let monitor = self.abstract_points(&points, width, stream(class as u32 as u64));
            group.pooled.extend(&monitor);
            group.classes.push(class);
            group.monitors.push(monitor);
        }
        if !thin.is_empty() {
            thin.sort_unstable();
            let (points, width) = self.vectors(boxes, &thin);
            group
                .pooled
                .extend(&self.abstract_points(&points, width, stream(1 << 32)));
        }
        group
    }
}

impl Scorer for BoxMonitor {
    fn kind(&self) -> &'static str {
        BOX_MONITOR.name
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let mut groups = PerLevel::default();
        groups.fit(
            self.kind(),
            boxes,
            self.uses(),
            self.params.per_level,
            |idx, info| Ok(self.fit_group(boxes, idx, info)),
        )?;
        self.groups = groups;
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        let kind = self.kind();
        self.groups
            .score(kind, boxes, self.uses(), |group, idx, info| {
                let (points, width) = self.vectors(boxes, idx);
                if width != group.pooled.width {
                    return Err(err(
                        kind, ScorerFault::Mismatch,
                        format!(
                            "{}: the monitor has {}-d boxes, these boxes give {width}-d vectors",
                            info.name(),
                            group.pooled.width
                        ),
                    ));
                }
                let monitor = |i: usize| group.monitor(boxes.class_id[i] as i64);
                let distance = |(x, &i): (&[f64], &usize)| monitor(i).distance(x);
                // Handing a few small searches to rayon's pool costs more than they do.
                let work: usize = idx.iter().map(|&i| monitor(i).len() * width).sum();
                if work < PARALLEL_FROM {
                    return Ok(points.chunks_exact(width).zip(idx).map(distance).collect());
                }
                Ok(points.par_chunks_exact(width).zip(idx.par_iter()).map(distance).collect())
            })
    }

    /// The predicted class of each fit box with its own monitor; −1 for a box of a class that
    /// fell back to the pooled monitor.
    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        let groups = self.groups.groups()?;
        let (_, members) = Grouping::fit(boxes, self.params.per_level);
        let mut out = vec![-1; boxes.len()];
        for (group, idx) in groups.iter().zip(&members) {
            for &i in idx {
                let class = boxes.class_id[i] as i64;
                if group.classes.binary_search(&class).is_ok() {
                    out[i] = class;
                }
            }
        }
        Some(out)
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        self.groups.write(&mut out, |group, info, out| {
            let w = group.pooled.width;
            let as_f64 = |v: &[i64]| v.iter().map(|&c| c as f64).collect::<Vec<f64>>();
            out.push(
                &info.tensor("classes"),
                vec![group.classes.len()],
                as_f64(&group.classes),
            );
            let counts = group.monitors.iter().map(|m| m.len() as f64).collect();
            out.push(
                &info.tensor("class_boxes"),
                vec![group.classes.len()],
                counts,
            );
            out.push(
                &info.tensor("fallback_classes"),
                vec![group.fallback.len()],
                as_f64(&group.fallback),
            );
            let n = group.pooled.len();
            out.push(&info.tensor("lo"), vec![n, w], group.pooled.lo.clone());
            out.push(&info.tensor("hi"), vec![n, w], group.pooled.hi.clone());
        });
        out.into_state(self.kind(), None, params)
    }
}

/// Reads one group's monitors, checking every count against the stored boxes.
fn read_group(t: &mut TensorMap, info: &GroupInfo) -> Result<Group> {
    let classes = t.labels(&info.tensor("classes"))?;
    let fallback = t.labels(&info.tensor("fallback_classes"))?;
    let counts = t.take(&info.tensor("class_boxes"), &[classes.len()])?;
    let (shape, lo) = t.take_rank(&info.tensor("lo"), 2)?;
    let hi = t.take(&info.tensor("hi"), &shape)?;
    let (n, width) = (shape[0], shape[1]);
    if n == 0 || width == 0 {
        return Err(t.bad(format!(
            "tensor `{}` has shape {shape:?}, expected [n >= 1, width >= 1]",
            info.tensor("lo")
        )));
    }
    if lo.iter().zip(&hi).any(|(l, h)| l > h) {
        return Err(t.bad(format!("group {}: a box has lo > hi", info.g)));
    }
    let pooled = Boxes::new(width, lo, hi);
    let mut monitors = Vec::with_capacity(classes.len());
    let mut start = 0;
    for (&c, &count) in classes.iter().zip(&counts) {
        let count = t.int(count, &info.tensor("class_boxes"))?;
        if count == 0 || start + count > n {
            return Err(t.bad(format!(
                "group {}: class {c} has {count} boxes from box {start}, of {n}",
                info.g
            )));
        }
        let rows = start * width..(start + count) * width;
        monitors.push(Boxes::new(
            width,
            pooled.lo[rows.clone()].to_vec(),
            pooled.hi[rows].to_vec(),
        ));
        start += count;
    }
    // Boxes beyond the classes' are exactly the fallback classes' boxes.
    if fallback.is_empty() == (start < n) {
        return Err(t.bad(format!(
            "group {}: {} pooled boxes beyond the classes' for {} fallback classes",
            info.g,
            n - start,
            fallback.len()
        )));
    }
    Ok(Group {
        classes,
        monitors,
        fallback,
        pooled,
    })
}

impl ScorerImpl for BoxMonitor {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        self.groups = PerLevel::read(t, self.uses(), read_group)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ood::fitted::{FitOptions, FittedScorer};
    use crate::ood::{build, from_state};

    #[derive(Deserialize)]
    struct Reference {
        width: usize,
        cases: Vec<Case>,
    }

    #[derive(Deserialize)]
    struct Case {
        points: Vec<u32>,
        assign: Vec<usize>,
        k: usize,
        queries: Vec<u32>,
        lo: Vec<u64>,
        hi: Vec<u64>,
        distances: Vec<u64>,
    }

    fn from_f32_bits(bits: &[u32]) -> Vec<f64> {
        bits.iter().map(|&b| f32::from_bits(b) as f64).collect()
    }

    /// tests/fixtures/box_monitor/reference.json, by export_reference.py next to it.
    #[test]
    fn boxes_and_distances_equal_the_numpy_reference() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/box_monitor/reference.json"
        );
        let reference: Reference =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let w = reference.width;
        for (n, case) in reference.cases.iter().enumerate() {
            let points = from_f32_bits(&case.points);
            let boxes = Boxes::from_assignments(&points, w, &case.assign, case.k);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
            // The last cluster of every case is empty and gives no box.
            assert_eq!(boxes.len(), case.lo.len() / w, "case {n}");
            assert!(boxes.len() < case.k, "case {n}");
            assert_eq!(bits(&boxes.lo), case.lo, "case {n}: lo");
            assert_eq!(bits(&boxes.hi), case.hi, "case {n}: hi");
            let queries = from_f32_bits(&case.queries);
            let distances: Vec<u64> = queries
                .chunks_exact(w)
                .map(|x| boxes.distance(x).to_bits())
                .collect();
            assert_eq!(distances, case.distances, "case {n}: distances");
            // The first queries are fit points: inside their box.
            assert_eq!(distances[..3], [0; 3], "case {n}");
            assert!(distances[4..].iter().any(|&d| f64::from_bits(d) > 0.0));
        }
    }

    /// The search (a tree of bounding boxes over blocks of boxes side by side) gives
    /// the bits of the plain one: every box's distance summed over its dimensions in order,
    /// the smallest kept. Box counts that fill no block, one, some and a part, and five layers.
    #[test]
    fn the_search_finds_the_plain_smallest_distance_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // The last case: 30 boxes, each copied 10 times shifted by multiples of 1e-12, closer
        // than f32 can tell apart, so the search's f32 bounds tie and only the exact sums decide.
        for (n, width) in [(1, 3), (7, 5), (8, 16), (203, 16), (1000, 9), (4100, 12), (300, 6)] {
            let (mut lo, mut hi) = (Vec::new(), Vec::new());
            for _ in 0..n * width {
                let (a, b): (f64, f64) = (rng.random_range(-5.0..5.0), rng.random_range(0.0..2.0));
                lo.push(a);
                hi.push(a + b);
            }
            if n == 300 {
                for i in 0..n * width {
                    let (from, shift) = (i % (30 * width), (i / (30 * width)) as f64 * 1e-12);
                    (lo[i], hi[i]) = (lo[from] + shift, hi[from] - shift);
                }
            }
            let boxes = Boxes::new(width, lo.clone(), hi.clone());
            for q in 0..200 {
                let x: Vec<f64> = if q % 4 == 0 {
                    // Inside a box: distance 0.
                    let i = rng.random_range(0..n);
                    (0..width).map(|d| (lo[i * width + d] + hi[i * width + d]) / 2.0).collect()
                } else {
                    (0..width).map(|_| rng.random_range(-8.0..8.0)).collect()
                };
                let plain = lo
                    .chunks_exact(width)
                    .zip(hi.chunks_exact(width))
                    .map(|(l, h)| {
                        let mut sum = 0.0;
                        for ((&l, &h), &v) in l.iter().zip(h).zip(&x) {
                            sum += (l - v).max(v - h).max(0.0);
                        }
                        sum
                    })
                    .fold(f64::INFINITY, f64::min);
                assert_eq!(boxes.distance(&x).to_bits(), plain.to_bits(), "{n} boxes, query {q}");
                for (isa, d) in boxes.distance_per_instruction_set(&x) {
                    assert_eq!(d.to_bits(), plain.to_bits(), "{isa}: {n} boxes, query {q}");
                }
            }
        }
    }

    #[test]
    fn kmeans_finds_separated_clusters_and_stops_at_distinct_points() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let centres = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]];
        let points: Vec<f64> = (0..90)
            .flat_map(|i| {
                let c = centres[i % 3];
                [
                    c[0] + rng.random::<f64>() - 0.5,
                    c[1] + rng.random::<f64>() - 0.5,
                ]
            })
            .collect();
        let (assign, k) = kmeans(&points, 2, 3, 50, 0.0, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(k, 3);
        for i in 3..90 {
            assert_eq!(assign[i], assign[i % 3], "point {i}");
        }
        assert_ne!(assign[0], assign[1]);
        assert_ne!(assign[1], assign[2]);
        assert_ne!(assign[0], assign[2]);
        // Two distinct points cannot seed five centres.
        let twice = [1.0, 2.0, 1.0, 2.0, 3.0, 4.0];
        let (assign, k) = kmeans(&twice, 2, 5, 50, 0.0, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(k, 2);
        assert_eq!(assign[0], assign[1]);
        assert_ne!(assign[0], assign[2]);
    }

    /// Classes 0 and 1: 200 boxes each around different centres; class 2: 5 boxes; classes
    /// 3 to 7 none.
    fn box_set(seed: u64) -> BoxSet {
        let (d, c) = (6, 8);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut set = crate::data::boxset::BoxParts {
            feature_dim: d,
            num_classes: c,
            ..Default::default()
        };
        for (class, n) in [(0, 200), (1, 200), (2, 5)] {
            for _ in 0..n {
                for j in 0..d {
                    let centre = if j == class { 4.0 } else { 0.0 };
                    set.features.push(centre + rng.random::<f32>());
                }
                for j in 0..c {
                    let l = if j == class { 3.0 } else { -2.0 };
                    set.logits.push(l + rng.random::<f32>());
                }
                set.class_id.push(class);
            }
        }
        BoxSet::new(set).unwrap()
    }

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_thin_class_falls_back_to_the_pooled_monitor_and_the_state_says_so() {
        let fit = box_set(1);
        for input in ["logits", "features"] {
            let mut s = BoxMonitor::with_params(BoxMonitorParams {
                input: if input == "logits" {
                    MonitorInput::Logits
                } else {
                    MonitorInput::Features
                },
                density: 10,
                ..Default::default()
            });
            s.fit(&fit).unwrap();
            assert_eq!(s.fallback_classes(), Some(vec![vec![2]]), "{input}");
            let group = &s.groups.groups().unwrap()[0];
            assert_eq!(group.classes, [0, 1]);
            // round(200 / 10) clusters, every one non-empty on these blobs.
            assert_eq!(group.monitors[0].len(), 20, "{input}");
            // The pooled monitor: both classes' boxes and one box of the 5 thin ones.
            assert_eq!(group.pooled.len(), 41, "{input}");
            let state = s.to_state();
            let fallback = state
                .tensors
                .iter()
                .find(|t| t.0 == "group0.fallback_classes")
                .unwrap();
            assert_eq!(fallback.2, [2.0]);
            // Every fit box lies in a box of its monitor; a class-2 box as class 7 (unseen at
            // fit) is scored pooled too.
            let scores = s.score(&fit).unwrap();
            assert!(scores.iter().all(|&v| v == 0.0), "{input}");
            let relabelled = fit
                .clone()
                .edit(|r| r.class_id.iter_mut().for_each(|c| *c = 7))
                .unwrap();
            assert!(s.score(&relabelled).unwrap().iter().all(|&v| v == 0.0));
            // A class-0 vector called class 1 lies outside class 1's boxes.
            let swapped = fit.clone().edit(|s| s.class_id[0] = 1).unwrap();
            assert!(s.score(&swapped).unwrap()[0] > 1.0, "{input}");
            assert_eq!(
                s.fit_classes(&fit).unwrap()[..],
                [vec![0; 200], vec![1; 200], vec![-1; 5]].concat()[..]
            );
        }
    }

    #[test]
    fn the_same_input_and_seed_give_the_same_scorer_file_which_round_trips() {
        let (fit, calibration, test) = (box_set(2), box_set(3), box_set(4));
        let dir = tempfile::tempdir().unwrap();
        let options = FitOptions::default();
        let save = |name: &str, seed: &str| {
            let p = params(&[("input", "features"), ("density", "7"), ("seed", seed)]);
            let fitted =
                FittedScorer::fit("box_monitor", None, &p, &fit, &calibration, &options).unwrap();
            let path = dir.path().join(name);
            fitted.save(&path).unwrap();
            (std::fs::read(&path).unwrap(), fitted.raw_scores(&test).unwrap())
        };
        let (a, scores) = save("a.safetensors", "5");
        let (b, _) = save("b.safetensors", "5");
        assert_eq!(a, b, "two fits with the same seed differ");
        let (c, _) = save("c.safetensors", "6");
        assert_ne!(a, c, "the seed changes nothing");
        let loaded = FittedScorer::load(&dir.path().join("a.safetensors")).unwrap();
        assert_eq!(loaded.raw_scores(&test).unwrap(), scores);
        loaded.save(&dir.path().join("again.safetensors")).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("again.safetensors")).unwrap(),
            a
        );
        // The state alone round-trips too, with its fallback classes.
        let mut s = build("box_monitor", None, &params(&[("min_class_boxes", "300")])).unwrap();
        s.fit(&fit).unwrap();
        let again = from_state(&s.to_state()).unwrap();
        assert_eq!(again.to_state(), s.to_state());
        assert_eq!(again.score(&test).unwrap(), s.score(&test).unwrap());
    }
}
