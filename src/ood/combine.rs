//! `combine`: one score from the p-values of several scorers (Fisher or Cauchy combination),
//! whose own conformal p-value stays exactly valid whatever the dependence between them.
//!
//! **Components** (`of`): two or more scorer specs `kind[+shaping][:name=value]...`, e.g.
//! `safe:surrogate=vos`, `energy+react:react_quantile=0.9` or `knn:nearest=20`; each is built
//! exactly as `build(kind, shaping, params)` builds it. `combine` itself is not a component.
//! `features=[...]` in a spec gives that component its own feature sources, taken out of the
//! scorer's (e.g. two `safe` on the one-cell and the 2×2-cell ROI features).
//!
//! **Fit:** with `reference=calibration` (the default), every component is fitted on all the fit
//! boxes, and the calibration boxes are split, whole images at a time, into a part B (share
//! `holdout`, seeded by `seed`) and the rest, which calibrates `T`. With `reference=fit` the fit
//! boxes are split so instead: every component is fitted on the rest and B is held out of its
//! fit. Each component scores B; B's scores, per predicted class (pooled for a class with fewer
//! than [`REFERENCE_CLASS_BOXES`] of them), are the component's reference. The first leaves the
//! components all the fit boxes, which measured better (BENCHMARKS.md, "The heads fitted on
//! every fit box"), at the cost of calibration boxes.
//!
//! **Score:** each component's score `s_k` becomes `p_k = (1 + #{b ≥ s_k}) / (m + 2)` over its
//! `m` reference scores `b` of the box's class: strictly inside (0, 1), so both transforms stay
//! finite. Then `fisher`: `T = −2 Σ_k ln p_k`; `cauchy`: `T = (1/K) Σ_k tan((½ − p_k)π)`.
//! Higher `T` = more OOD.
//!
//! **Validity:** `T` is a fixed function of a box once the fit boxes and B are given. The
//! scorer file calibrates `T` conformally on calibration boxes disjoint from both, like any
//! other scorer, so for an ID box exchangeable with them the final
//! p-value satisfies `P(p ≤ α) ≤ α` for any dependence between the components. Fisher's χ²₂ₖ
//! and Cauchy's standard-Cauchy reference laws (exact only for independent, resp. asymptotically
//! for dependent, p-values) are never used: the transforms only put the components' evidence on
//! one scale.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

use super::calibration::{conformal_p_value, Calibrator};
use super::common::{
    check_boxes, check_fit_set, err, not_fitted, within, TensorMap, TensorsOut, Uses,
};
use super::params::{infos, list_items, split_outside_brackets, to_json, ParamDoc, ParamSet};
use super::registry::{build_impl, entries, KindEntry};
use super::{Scorer, ScorerImpl, ScorerState};
use crate::core::sources::FeatureSources;
use crate::data::boxset::BoxSet;
use crate::error::{Error, Result, ScorerFault};

pub(crate) const COMBINE: KindEntry = KindEntry {
    name: "combine",
    summary: "Fisher `−2 Σ ln p_k` or Cauchy `mean tan((½ − p_k)π)` of the components' p-values; its own p-value is valid whatever their dependence",
    inputs: Uses {
        features: true,
        logits: true,
    },
    shapeable: false,
    params: infos::<CombineParams>,
    build: |p, _| Ok(Box::new(Combine::new(p.typed()?)?)),
};

/// A class needs this many reference boxes for its own component reference.
pub const REFERENCE_CLASS_BOXES: usize = 100;

/// How the components' p-values are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Fisher,
    Cauchy,
}

impl Method {
    /// The combined statistic of p-values in (0, 1); higher = more OOD.
    pub fn statistic(self, p: &[f64]) -> f64 {
        match self {
            Method::Fisher => -2.0 * p.iter().map(|p| p.ln()).sum::<f64>(),
            Method::Cauchy => {
                let sum: f64 = p
                    .iter()
                    .map(|p| ((0.5 - p) * std::f64::consts::PI).tan())
                    .sum();
                sum / p.len() as f64
            }
        }
    }
}

/// Which boxes give the components' references.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reference {
    /// A share of the calibration images; the components fit on all the fit boxes.
    Calibration,
    /// A share of the fit images, held out of the components' fit.
    Fit,
}

/// `combine`'s parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombineParams {
    pub of: Vec<String>,
    pub method: Method,
    pub reference: Reference,
    pub holdout: f64,
    pub seed: u64,
}

impl Default for CombineParams {
    fn default() -> Self {
        CombineParams {
            of: vec!["knn".into(), "energy".into()],
            method: Method::Fisher,
            reference: Reference::Calibration,
            holdout: 0.5,
            seed: 0,
        }
    }
}

impl ParamSet for CombineParams {
    const DOCS: &'static [ParamDoc] = &[
        ParamDoc {
            name: "of",
            expected: "two or more scorers `kind[+shaping][:name=value...]` separated by commas, e.g. knn:nearest=20,energy, a list value in brackets, e.g. safe:surrogate=unknown:also=[vos,mix],energy (not combine)",
            doc: "the component scorers, each with its own parameters; `features=[cls,roi:4]` gives one its own feature sources, among the fit's --features (default: all of them)",
        },
        ParamDoc {
            name: "method",
            expected: "fisher or cauchy",
            doc: "how the components' p-values are combined",
        },
        ParamDoc {
            name: "reference",
            expected: "calibration or fit",
            doc: "the boxes whose images turn the components' scores into p-values: a share of the calibration boxes (the components then fit on all fit boxes), or of the fit boxes",
        },
        ParamDoc {
            name: "holdout",
            expected: "a number in (0, 1)",
            doc: "the share of those images",
        },
        ParamDoc {
            name: "seed",
            expected: "an integer >= 0",
            doc: "seed of that split",
        },
    ];
    fn out_of_range(&self) -> Option<&'static str> {
        let kinds_ok = self.of.iter().all(|spec| {
            let (kind, _, _) = parse_spec(spec);
            kind != COMBINE.name && entries().iter().any(|k| k.name == kind)
        });
        if self.of.len() < 2 || !kinds_ok {
            Some("of")
        } else if !(self.holdout > 0.0 && self.holdout < 1.0) {
            Some("holdout")
        } else {
            None
        }
    }
}

/// A component spec's kind, shaping and `name=value` parameters (split at the colons outside
/// brackets, since a feature source such as `roi:4` holds one).
fn parse_spec(spec: &str) -> (String, Option<String>, Vec<(String, String)>) {
    let mut parts = split_outside_brackets(spec, ':').into_iter();
    let head = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let (kind, shaping) = match head.split_once('+') {
        Some((k, s)) => (k.to_string(), Some(s.to_string())),
        None => (head, None),
    };
    let params = parts
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.trim().to_string(), v.trim().to_string()),
            None => (p.trim().to_string(), String::new()),
        })
        .collect();
    (kind, shaping, params)
}

struct Component {
    spec: String,
    uses: Uses,
    /// The feature sources it reads (`features=[...]`), among the scorer's; all of them if none.
    sources: Option<FeatureSources>,
    scorer: Box<dyn ScorerImpl>,
    /// Its scores on the held-out fit boxes, per predicted class.
    reference: Option<Calibrator>,
}

pub struct Combine {
    pub params: CombineParams,
    components: Vec<Component>,
}

impl Combine {
    pub fn new(params: CombineParams) -> Result<Self> {
        let components = params
            .of
            .iter()
            .map(|spec| {
                let (kind, shaping, mut given) = parse_spec(spec);
                let context = format!("component `{spec}`");
                let sources = take_sources(&mut given).map_err(|e| within(COMBINE.name, &context, e))?;
                let scorer = build_impl(&kind, shaping.as_deref(), &given)
                    .map_err(|e| within(COMBINE.name, &context, e))?;
                let inputs = entries()
                    .iter()
                    .find(|k| k.name == kind)
                    .map_or(COMBINE.inputs, |k| k.inputs);
                Ok(Component {
                    spec: spec.clone(),
                    uses: Uses {
                        features: inputs.features || shaping.is_some() || sources.is_some(),
                        logits: inputs.logits,
                    },
                    sources,
                    scorer,
                    reference: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Combine { params, components })
    }

    /// Fits every component: with `reference=fit` on the fit boxes less a held-out part, whose
    /// scores become its reference; with `reference=calibration` on all of them (its reference
    /// then comes from [`Scorer::reserve_calibration`]). The outlier takers fit against
    /// `outliers`.
    fn fit_against(&mut self, boxes: &BoxSet, outliers: Option<&BoxSet>) -> Result<()> {
        check_fit_set(self.kind(), boxes, self.uses())?;
        let (fit, held_out) = match self.params.reference {
            Reference::Fit => {
                let (rest, held_out) = self.split(boxes, "fit")?;
                (Cow::Owned(rest), Some(held_out))
            }
            Reference::Calibration => (Cow::Borrowed(boxes), None),
        };
        for c in &mut self.components {
            let fit = c.view(&fit)?;
            match outliers {
                Some(outliers) if c.scorer.takes_outliers() => {
                    c.scorer.fit_with_outliers(&fit, &*c.view(outliers)?)?
                }
                _ => c.scorer.fit(&fit)?,
            }
            c.reference = None;
        }
        match held_out {
            Some(held_out) => self.fit_references(&held_out),
            None => Ok(()),
        }
    }

    /// `boxes` split, whole images at a time, into the rest and the `holdout` share; errors
    /// when either is empty.
    fn split(&self, boxes: &BoxSet, which: &str) -> Result<(BoxSet, BoxSet)> {
        let (rest, held_out) = boxes.split_holdout(self.params.holdout, self.params.seed);
        if rest.is_empty() || held_out.is_empty() {
            return Err(err(
                self.kind(), ScorerFault::CannotFit,
                format!(
                    "{} {which} boxes cannot be split into the components' reference and the \
                     rest (holdout={}): give more {which} images",
                    boxes.len(),
                    self.params.holdout
                ),
            ));
        }
        Ok((rest, held_out))
    }

    /// Each component's scores of `boxes` (not fitted on), per predicted class: its reference.
    fn fit_references(&mut self, boxes: &BoxSet) -> Result<()> {
        let kind = self.kind();
        for c in &mut self.components {
            let scores = c.scorer.score(&*c.view(boxes)?)?;
            let reference =
                Calibrator::fit(&scores, &boxes.class_id, boxes.num_classes, REFERENCE_CLASS_BOXES)
                    .map_err(|e| within(kind, &format!("component `{}`", c.spec), e))?;
            c.reference = Some(reference);
        }
        Ok(())
    }

    /// Why a component has no reference: the scorer was not fitted, or (with
    /// `reference=calibration`) fitted without its calibration boxes.
    fn no_reference(&self) -> Error {
        match self.params.reference {
            Reference::Calibration => err(
                COMBINE.name,
                ScorerFault::NotFitted,
                "not fitted, or fitted without calibration boxes: with reference=calibration the \
                 components' p-values come from them (fit it with FittedScorer::fit or `oodbox \
                 fit`, or give reference=fit)",
            ),
            Reference::Fit => not_fitted(COMBINE.name),
        }
    }

    /// What the components read, together.
    fn uses(&self) -> Uses {
        Uses {
            features: self.components.iter().any(|c| c.uses.features),
            logits: self.components.iter().any(|c| c.uses.logits),
        }
    }
}

impl Component {
    /// `boxes` with this component's feature sources as their features.
    fn view<'a>(&self, boxes: &'a BoxSet) -> Result<Cow<'a, BoxSet>> {
        match &self.sources {
            None => Ok(Cow::Borrowed(boxes)),
            Some(sources) => boxes.view(sources).map_err(|e| {
                let reason = format!("component `{}`: {e} (give them to the fit's --features)", self.spec);
                err(COMBINE.name, ScorerFault::Mismatch, reason)
            }),
        }
    }
}

/// Removes a `features=[...]` parameter from `given` and parses it.
fn take_sources(given: &mut Vec<(String, String)>) -> Result<Option<FeatureSources>> {
    let Some(at) = given.iter().position(|(name, _)| name == "features") else {
        return Ok(None);
    };
    let (_, value) = given.remove(at);
    let sources = list_items(&value).join(",").parse().map_err(|e: Error| {
        err(COMBINE.name, ScorerFault::BadParameter, format!("features={value}: {e}"))
    })?;
    Ok(Some(sources))
}

/// `(1 + #{b ≥ s}) / (m + 2)` over the `m` sorted reference scores `b`.
fn open_p_value(reference: &[f64], score: f64) -> f64 {
    let m = reference.len() as f64;
    conformal_p_value(reference, score) * (m + 1.0) / (m + 2.0)
}

impl Scorer for Combine {
    fn kind(&self) -> &'static str {
        COMBINE.name
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        self.fit_against(boxes, None)
    }

    /// The components trained against outlier boxes (`safe` with `surrogate=unknown` or
    /// `fgsm`, `ocsdf` with `exposure=true`) get them; the others fit on the ID boxes alone.
    fn fit_with_outliers(&mut self, boxes: &BoxSet, outliers: &BoxSet) -> Result<()> {
        if !self.components.iter().any(|c| c.scorer.takes_outliers()) {
            return Err(err(
                self.kind(),
                ScorerFault::BadParameter,
                "no component is trained against outlier boxes (e.g. safe:surrogate=unknown)",
            ));
        }
        self.fit_against(boxes, Some(outliers))
    }

    fn reserve_calibration<'a>(&mut self, calibration: &'a BoxSet) -> Result<Cow<'a, BoxSet>> {
        if self.params.reference == Reference::Fit {
            return Ok(Cow::Borrowed(calibration));
        }
        let (rest, held_out) = self.split(calibration, "calibration")?;
        self.fit_references(&held_out)?;
        Ok(Cow::Owned(rest))
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        let kind = self.kind();
        check_boxes(kind, boxes, self.uses())?;
        let mut p = vec![Vec::with_capacity(self.components.len()); boxes.len()];
        for c in &self.components {
            let reference = c.reference.as_ref().ok_or_else(|| self.no_reference())?;
            for (i, s) in c.scorer.score(&*c.view(boxes)?)?.into_iter().enumerate() {
                let class = boxes.class_id[i];
                p[i].push(open_p_value(reference.scores_for(class), s));
            }
        }
        Ok(p.iter().map(|p| self.params.method.statistic(p)).collect())
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        for (k, c) in self.components.iter().enumerate() {
            let Some(reference) = &c.reference else {
                continue;
            };
            for (name, shape, data) in c.scorer.to_state().tensors {
                out.push(&format!("c{k}.{name}"), shape, data);
            }
            let per_class = reference.per_class();
            let sizes = per_class
                .iter()
                .map(|s| s.as_ref().map_or(0.0, |s| s.len() as f64))
                .collect();
            let scores: Vec<f64> = per_class.iter().flatten().flatten().copied().collect();
            let tensors = [
                ("pooled", reference.pooled().to_vec()),
                ("class_sizes", sizes),
                ("class_scores", scores),
            ];
            for (name, data) in tensors {
                let shape = vec![data.len()];
                out.push(&format!("c{k}.reference.{name}"), shape, data);
            }
        }
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for Combine {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        for (k, c) in self.components.iter_mut().enumerate() {
            let own = t.take_prefixed(&format!("c{k}."));
            let (mut mine, mut reference) = (Vec::new(), BTreeMap::new());
            for (name, shape, data) in own {
                match name.strip_prefix("reference.") {
                    Some(r) => {
                        reference.insert(r.to_string(), (shape, data));
                    }
                    None => mine.push((name, shape, data)),
                }
            }
            let mut sub = TensorMap::new(c.scorer.kind(), &mine)?;
            c.scorer.restore(&mut sub)?;
            sub.finish()?;
            c.reference = Some(read_reference(t, &c.spec, reference)?);
        }
        Ok(())
    }
}

type Stored = BTreeMap<String, (Vec<usize>, Vec<f64>)>;

/// A component's reference from its `pooled`, `class_sizes` and `class_scores` tensors.
fn read_reference(t: &TensorMap, spec: &str, mut stored: Stored) -> Result<Calibrator> {
    let bad = |what: &str| t.bad(format!("component `{spec}`: reference {what}"));
    let mut take = |name: &str| match stored.remove(name) {
        Some((shape, data)) if shape == [data.len()] => Ok(data),
        Some((shape, _)) => Err(bad(&format!(
            "tensor `{name}` has shape {shape:?}, expected rank 1"
        ))),
        None => Err(bad(&format!("tensor `{name}` missing"))),
    };
    let pooled = take("pooled")?;
    let sizes = take("class_sizes")?;
    let scores = take("class_scores")?;
    if !stored.is_empty() {
        let extra: Vec<&String> = stored.keys().collect();
        return Err(bad(&format!("has unexpected tensors {extra:?}")));
    }
    let mut per_class = Vec::with_capacity(sizes.len());
    let mut at = 0usize;
    for &size in &sizes {
        let n = t.int(size, "class_sizes")?;
        if n > scores.len() - at {
            return Err(bad("class_sizes exceed class_scores"));
        }
        per_class.push((n > 0).then(|| scores[at..at + n].to_vec()));
        at += n;
    }
    if at != scores.len() {
        return Err(bad("class_sizes do not add up to class_scores"));
    }
    Calibrator::from_parts(pooled, per_class, REFERENCE_CLASS_BOXES)
        .map_err(|e| bad(&e.to_string()))
}
