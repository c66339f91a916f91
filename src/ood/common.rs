//! Shared plumbing of the scorers: input checks, fit labels, per-level groups, heads and the
//! tensor map of a scorer state.

use std::collections::{BTreeMap, HashSet};

use crate::data::boxset::BoxSet;
use crate::error::{Error, Result, ScorerFault};

pub(crate) fn err(scorer: &str, fault: ScorerFault, reason: impl Into<String>) -> Error {
    Error::Scorer {
        scorer: scorer.to_string(),
        fault,
        reason: reason.into(),
    }
}

/// `inner` as an error of `scorer`, its message after `context`; a scorer error keeps its
/// fault, any other is a failure to fit.
pub(crate) fn within(scorer: &str, context: &str, inner: Error) -> Error {
    let fault = match inner {
        Error::Scorer { fault, .. } => fault,
        _ => ScorerFault::CannotFit,
    };
    err(scorer, fault, format!("{context}: {inner}"))
}

pub(crate) fn not_fitted(scorer: &str) -> Error {
    err(
        scorer,
        ScorerFault::NotFitted,
        "not fitted: call fit on ID boxes first",
    )
}

/// What of a box a scorer reads; decides which values are checked for NaN/Inf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Uses {
    pub features: bool,
    pub logits: bool,
}

/// Checks that every value the scorer reads is finite (a [`BoxSet`] is consistent by
/// construction); a bad value is reported with its box index.
pub(crate) fn check_boxes(scorer: &str, boxes: &BoxSet, uses: Uses) -> Result<()> {
    if uses.features && boxes.feature_dim == 0 {
        return Err(err(
            scorer,
            ScorerFault::MissingInput,
            "box set has no features (dimension 0)",
        ));
    }
    if uses.logits && boxes.num_classes == 0 {
        return Err(err(
            scorer,
            ScorerFault::MissingInput,
            "box set has no logits (0 classes)",
        ));
    }
    let non_finite = |what: &str, values: &[f32], width: usize| -> Result<()> {
        if width == 0 {
            return Ok(());
        }
        if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
            return Err(err(
                scorer,
                ScorerFault::NonFinite,
                format!(
                    "box {} has a non-finite {what} ({} at index {})",
                    pos / width,
                    values[pos],
                    pos % width
                ),
            ));
        }
        Ok(())
    };
    if uses.features {
        non_finite("feature", &boxes.features, boxes.feature_dim)?;
    }
    if uses.logits {
        non_finite("logit", &boxes.logits, boxes.num_classes)?;
    }
    Ok(())
}

pub(crate) fn check_fit_set(scorer: &str, boxes: &BoxSet, uses: Uses) -> Result<()> {
    check_boxes(scorer, boxes, uses)?;
    if boxes.is_empty() {
        return Err(err(
            scorer,
            ScorerFault::MissingInput,
            "cannot fit on an empty box set",
        ));
    }
    Ok(())
}

/// Errors unless `found == fitted` for a dimension that fit and score must share.
pub(crate) fn check_dim(scorer: &str, what: &str, fitted: usize, found: usize) -> Result<()> {
    if fitted != found {
        return Err(err(
            scorer,
            ScorerFault::Mismatch,
            format!("{what} mismatch: fitted on {fitted}, this box set has {found}"),
        ));
    }
    Ok(())
}

/// Fit labels: `label` where present and >= 0, else `class_id`.
/// A standard normal draw (Box–Muller) from the seeded generator every learned kind uses, so
/// that fits are deterministic for a seed.
pub(crate) fn standard_normal(rng: &mut rand_chacha::ChaCha8Rng) -> f64 {
    use rand::Rng;
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

pub(crate) fn fit_labels(boxes: &BoxSet) -> Vec<i64> {
    match &boxes.label {
        Some(labels) => labels
            .iter()
            .zip(&boxes.class_id)
            .map(|(&l, &c)| if l >= 0 { l } else { c as i64 })
            .collect(),
        None => boxes.class_id.iter().map(|&c| c as i64).collect(),
    }
}

pub(crate) fn feature_f64(boxes: &BoxSet, i: usize) -> Vec<f64> {
    boxes.feature(i).iter().map(|&v| v as f64).collect()
}

pub(crate) fn logits_f64(boxes: &BoxSet, i: usize) -> Vec<f64> {
    boxes.logit_row(i).iter().map(|&v| v as f64).collect()
}

/// Rows `idx` of the feature matrix, in f64, row-major.
pub(crate) fn gather_features(boxes: &BoxSet, idx: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(idx.len() * boxes.feature_dim);
    for &i in idx {
        out.extend(boxes.feature(i).iter().map(|&v| v as f64));
    }
    out
}

/// Sorted distinct values.
pub(crate) fn distinct(values: impl IntoIterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = values.into_iter().collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// How boxes are split into independently fitted groups: one per pyramid level, or one pooled
/// group (when `per_level=false`, or when the fit set has no `level`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Grouping {
    /// Sorted level values, one per group; `None` = one pooled group.
    pub levels: Option<Vec<i64>>,
}

impl Grouping {
    /// Groups of a fit set, with the box indices of each group.
    pub fn fit(boxes: &BoxSet, per_level: bool) -> (Grouping, Vec<Vec<usize>>) {
        match (&boxes.level, per_level) {
            (Some(levels), true) => {
                let keys = distinct(levels.iter().map(|&l| l as i64));
                let mut members = vec![Vec::new(); keys.len()];
                for (i, &l) in levels.iter().enumerate() {
                    members[keys.binary_search(&(l as i64)).expect("key of a fit level")].push(i);
                }
                (Grouping { levels: Some(keys) }, members)
            }
            _ => (Grouping { levels: None }, vec![(0..boxes.len()).collect()]),
        }
    }

    pub fn len(&self) -> usize {
        self.levels.as_ref().map_or(1, Vec::len)
    }

    /// A human name of group `g`, for messages.
    pub fn name(&self, g: usize) -> String {
        match &self.levels {
            Some(l) => format!("level {}", l[g]),
            None => "the pooled group".to_string(),
        }
    }

    /// The group index of every box of a set to score. A box on a level that had no fit boxes
    /// goes to the nearest level that had (the lower on a tie): neighbouring levels detect
    /// objects of neighbouring sizes, and a stream must not stop at the first box of a size
    /// the fit images lacked.
    pub fn assign(&self, scorer: &str, boxes: &BoxSet) -> Result<Vec<usize>> {
        let Some(keys) = &self.levels else {
            return Ok(vec![0; boxes.len()]);
        };
        let Some(levels) = &boxes.level else {
            return Err(err(
                scorer, ScorerFault::MissingInput,
                format!(
                    "fitted per level (levels {keys:?}) but this box set has no `level`; refit with per_level=false to pool"
                ),
            ));
        };
        let nearest = |level: i64| match keys.binary_search(&level) {
            Ok(g) => g,
            Err(0) => 0,
            Err(g) if g == keys.len() => g - 1,
            Err(g) => g - usize::from(level - keys[g - 1] <= keys[g] - level),
        };
        Ok(levels.iter().map(|&l| nearest(l as i64)).collect())
    }

    /// Box indices of every group, for a set to score.
    pub fn members(&self, scorer: &str, boxes: &BoxSet) -> Result<Vec<Vec<usize>>> {
        let assign = self.assign(scorer, boxes)?;
        let mut members = vec![Vec::new(); self.len()];
        for (i, g) in assign.into_iter().enumerate() {
            members[g].push(i);
        }
        Ok(members)
    }

    pub fn write(&self, out: &mut TensorsOut) {
        if let Some(levels) = &self.levels {
            out.push(
                "levels",
                vec![levels.len()],
                levels.iter().map(|&l| l as f64).collect(),
            );
        }
    }

    pub fn read(t: &mut TensorMap) -> Result<Grouping> {
        let levels = match t.take_optional("levels")? {
            None => None,
            Some((shape, data)) => {
                if shape.len() != 1 || shape[0] == 0 {
                    return Err(t.bad(format!(
                        "tensor `levels` has shape {shape:?}, expected [G] with G >= 1"
                    )));
                }
                let mut keys = Vec::with_capacity(data.len());
                for v in data {
                    keys.push(t.int(v, "levels")? as i64);
                }
                if keys.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(t.bad("tensor `levels` is not strictly increasing"));
                }
                Some(keys)
            }
        };
        Ok(Grouping { levels })
    }
}

/// A linear head `l = W f + b` in f64.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Head {
    /// Row-major [classes, dim].
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
    pub classes: usize,
    pub dim: usize,
}

impl Head {
    pub fn logits(&self, f: &[f64]) -> Vec<f64> {
        self.weight
            .chunks_exact(self.dim)
            .zip(&self.bias)
            .map(|(row, b)| row.iter().zip(f).map(|(w, x)| w * x).sum::<f64>() + b)
            .collect()
    }
}

/// The heads of a box set (one, or one per level), as f64.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Heads {
    pub heads: Vec<Head>,
}

impl Heads {
    /// The heads of a fit set; errors when absent or inconsistent with the box dimensions.
    pub fn from_boxes(scorer: &str, boxes: &BoxSet) -> Result<Heads> {
        let Some(head) = &boxes.head else {
            return Err(err(
                scorer, ScorerFault::MissingInput,
                "needs the classifier head (W, b) but the box set has none (`head.weight`/`head.bias` or `head.<level>.*`)",
            ));
        };
        if head.levels.is_empty() {
            return Err(err(
                scorer,
                ScorerFault::MissingInput,
                "the box set's head has no levels",
            ));
        }
        let mut heads = Vec::with_capacity(head.levels.len());
        for (i, h) in head.levels.iter().enumerate() {
            if h.classes != boxes.num_classes
                || h.dim != boxes.feature_dim
                || h.weight.len() != h.classes * h.dim
                || h.bias.len() != h.classes
            {
                return Err(err(
                    scorer, ScorerFault::Mismatch,
                    format!(
                        "head {i} is [{}, {}] with {} weights and {} biases; the boxes have {} classes and {}-d features",
                        h.classes,
                        h.dim,
                        h.weight.len(),
                        h.bias.len(),
                        boxes.num_classes,
                        boxes.feature_dim
                    ),
                ));
            }
            if let Some(p) = h.weight.iter().chain(&h.bias).position(|v| !v.is_finite()) {
                return Err(err(
                    scorer,
                    ScorerFault::NonFinite,
                    format!("head {i} has a non-finite parameter (position {p})"),
                ));
            }
            heads.push(Head {
                weight: h.weight.iter().map(|&v| v as f64).collect(),
                bias: h.bias.iter().map(|&v| v as f64).collect(),
                classes: h.classes,
                dim: h.dim,
            });
        }
        Ok(Heads { heads })
    }

    /// The head index of every box: the single head, or the box's level.
    pub fn assign(&self, scorer: &str, boxes: &BoxSet) -> Result<Vec<usize>> {
        if self.heads.len() == 1 {
            return Ok(vec![0; boxes.len()]);
        }
        let Some(levels) = &boxes.level else {
            return Err(err(
                scorer,
                ScorerFault::MissingInput,
                format!(
                    "there are {} per-level heads but the box set has no `level`",
                    self.heads.len()
                ),
            ));
        };
        levels
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                if l < self.heads.len() {
                    Ok(l)
                } else {
                    Err(err(
                        scorer,
                        ScorerFault::Mismatch,
                        format!(
                            "box {i} is on level {l} but there are only {} heads",
                            self.heads.len()
                        ),
                    ))
                }
            })
            .collect()
    }

    /// Errors when the box set carries a head that differs from the fitted one.
    pub fn check_same(&self, scorer: &str, boxes: &BoxSet) -> Result<()> {
        if let Some(head) = &boxes.head {
            let same = head.levels.len() == self.heads.len()
                && head.levels.iter().zip(&self.heads).all(|(a, b)| {
                    a.classes == b.classes
                        && a.dim == b.dim
                        && a.weight.len() == b.weight.len()
                        && a.bias.len() == b.bias.len()
                        && a.weight.iter().zip(&b.weight).all(|(x, y)| *x as f64 == *y)
                        && a.bias.iter().zip(&b.bias).all(|(x, y)| *x as f64 == *y)
                });
            if !same {
                return Err(err(
                    scorer, ScorerFault::Mismatch,
                    "the box set's head differs from the head the scorer was fitted with (boxes from another model?)",
                ));
            }
        }
        Ok(())
    }

    pub fn write(&self, out: &mut TensorsOut) {
        for (i, h) in self.heads.iter().enumerate() {
            out.push(
                &format!("head.{i}.weight"),
                vec![h.classes, h.dim],
                h.weight.clone(),
            );
            out.push(&format!("head.{i}.bias"), vec![h.classes], h.bias.clone());
        }
    }

    pub fn read(t: &mut TensorMap, classes: usize, dim: usize) -> Result<Heads> {
        let mut heads = Vec::new();
        loop {
            let i = heads.len();
            let Some(weight) =
                t.take_optional_shaped(&format!("head.{i}.weight"), &[classes, dim])?
            else {
                break;
            };
            let bias = t.take(&format!("head.{i}.bias"), &[classes])?;
            heads.push(Head {
                weight,
                bias,
                classes,
                dim,
            });
        }
        if heads.is_empty() {
            return Err(t.bad("missing tensor `head.0.weight`"));
        }
        Ok(Heads { heads })
    }
}

/// Tensors of a scorer state being written.
#[derive(Default)]
pub(crate) struct TensorsOut {
    pub tensors: Vec<(String, Vec<usize>, Vec<f64>)>,
}

impl TensorsOut {
    pub fn push(&mut self, name: &str, shape: Vec<usize>, data: Vec<f64>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}");
        self.tensors.push((name.to_string(), shape, data));
    }

    pub fn scalar(&mut self, name: &str, v: f64) {
        self.push(name, vec![], vec![v]);
    }

    pub fn into_state(
        self,
        kind: &str,
        shaping: Option<String>,
        params: BTreeMap<String, serde_json::Value>,
    ) -> super::ScorerState {
        super::ScorerState {
            kind: kind.to_string(),
            shaping,
            params,
            tensors: self.tensors,
        }
    }
}

/// Tensors of a scorer state being read: every lookup validates the shape, and `finish` rejects
/// tensors nobody asked for. Never panics on a bad state.
pub(crate) struct TensorMap<'a> {
    scorer: String,
    map: BTreeMap<&'a str, (&'a [usize], &'a [f64])>,
    taken: HashSet<String>,
}

impl<'a> TensorMap<'a> {
    pub fn new(scorer: &str, tensors: &'a [(String, Vec<usize>, Vec<f64>)]) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (name, shape, data) in tensors {
            let expected = shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    err(
                        scorer,
                        ScorerFault::BadState,
                        format!("state tensor `{name}`: shape overflows"),
                    )
                })?;
            if expected != data.len() {
                return Err(err(
                    scorer,
                    ScorerFault::BadState,
                    format!(
                        "state tensor `{name}` has shape {shape:?} but {} values",
                        data.len()
                    ),
                ));
            }
            if let Some(p) = data.iter().position(|v| !v.is_finite()) {
                return Err(err(
                    scorer,
                    ScorerFault::BadState,
                    format!("state tensor `{name}` has a non-finite value at {p}"),
                ));
            }
            if map
                .insert(name.as_str(), (shape.as_slice(), data.as_slice()))
                .is_some()
            {
                return Err(err(
                    scorer,
                    ScorerFault::BadState,
                    format!("state tensor `{name}` appears twice"),
                ));
            }
        }
        Ok(TensorMap {
            scorer: scorer.to_string(),
            map,
            taken: HashSet::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bad(&self, reason: impl Into<String>) -> Error {
        err(
            &self.scorer,
            ScorerFault::BadState,
            format!("bad scorer state: {}", reason.into()),
        )
    }

    pub fn take_optional(&mut self, name: &str) -> Result<Option<(Vec<usize>, Vec<f64>)>> {
        Ok(self.map.get(name).map(|(s, d)| {
            self.taken.insert(name.to_string());
            (s.to_vec(), d.to_vec())
        }))
    }

    pub fn take_optional_shaped(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<Option<Vec<f64>>> {
        match self.take_optional(name)? {
            None => Ok(None),
            Some((s, d)) if s == shape => Ok(Some(d)),
            Some((s, _)) => Err(self.bad(format!(
                "tensor `{name}` has shape {s:?}, expected {shape:?}"
            ))),
        }
    }

    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f64>> {
        self.take_optional_shaped(name, shape)?
            .ok_or_else(|| self.bad(format!("missing tensor `{name}`")))
    }

    /// A tensor of rank `rank` with any dimensions; returns (shape, data).
    pub fn take_rank(&mut self, name: &str, rank: usize) -> Result<(Vec<usize>, Vec<f64>)> {
        let (s, d) = self
            .take_optional(name)?
            .ok_or_else(|| self.bad(format!("missing tensor `{name}`")))?;
        if s.len() != rank {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {s:?}, expected rank {rank}"
            )));
        }
        Ok((s, d))
    }

    /// Every tensor whose name starts with `prefix`, the prefix removed, marked as read (a
    /// nested scorer's state).
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, Vec<usize>, Vec<f64>)> {
        let found: Vec<_> = self
            .map
            .iter()
            .filter_map(|(name, (s, d))| {
                let rest = name.strip_prefix(prefix)?;
                Some((name.to_string(), (rest.to_string(), s.to_vec(), d.to_vec())))
            })
            .collect();
        found
            .into_iter()
            .map(|(name, tensor)| {
                self.taken.insert(name);
                tensor
            })
            .collect()
    }

    pub fn int(&self, v: f64, name: &str) -> Result<usize> {
        if v.fract() != 0.0 || !(0.0..9.0e15).contains(&v) {
            return Err(self.bad(format!(
                "tensor `{name}` holds {v}, expected a non-negative integer"
            )));
        }
        Ok(v as usize)
    }

    /// The stored feature dimension, refusing 0.
    pub fn feature_dim(&mut self) -> Result<usize> {
        let d = self.scalar_usize("feature_dim")?;
        if d == 0 {
            return Err(self.bad("feature_dim is 0"));
        }
        Ok(d)
    }

    pub fn scalar_usize(&mut self, name: &str) -> Result<usize> {
        let d = self.take(name, &[])?;
        self.int(d[0], name)
    }

    pub fn scalar(&mut self, name: &str) -> Result<f64> {
        Ok(self.take(name, &[])?[0])
    }

    /// Integer labels stored as f64.
    pub fn labels(&mut self, name: &str) -> Result<Vec<i64>> {
        let (_, d) = self.take_rank(name, 1)?;
        let mut out = Vec::with_capacity(d.len());
        for v in d {
            if v.fract() != 0.0 || v.abs() > 9.0e15 {
                return Err(self.bad(format!("tensor `{name}` holds {v}, expected integers")));
            }
            out.push(v as i64);
        }
        if out.windows(2).any(|w| w[0] >= w[1]) {
            return Err(self.bad(format!("tensor `{name}` is not strictly increasing")));
        }
        Ok(out)
    }

    pub fn finish(self) -> Result<()> {
        let extra: Vec<&str> = self
            .map
            .keys()
            .filter(|k| !self.taken.contains(**k))
            .copied()
            .collect();
        if !extra.is_empty() {
            return Err(err(
                &self.scorer,
                ScorerFault::BadState,
                format!("bad scorer state: unexpected tensors {extra:?}"),
            ));
        }
        Ok(())
    }
}
