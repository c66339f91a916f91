//! Simplified Hopfield Energy, SHE (Zhang et al., ICLR'23; Oodeel `SHE`).
//!
//! **Fit** (per group): the class patterns `m_c = mean(f_i | y_i = c and ŷ_i = c)`, over correctly
//! classified fit boxes only: fit label `y` (`label` where ≥ 0, else `class_id`) equal to the
//! predicted class `ŷ` = `class_id` (the detector's prediction, = argmax of the logits for YOLO
//! and DETR box sets; Oodeel uses argmax of the logits).
//!
//! **Score:** `class_select=max` (default, Oodeel's definition): `−max_c ⟨f, m_c⟩ / D`;
//! `class_select=predicted` (the paper's): `−⟨f, m_ŷ⟩ / D` with `ŷ = class_id`, falling back to the
//! max over classes when the predicted class has no pattern. The `1/D` is Oodeel's (for
//! multi-layer aggregation); it only rescales.
//!
//! **Classes without a correctly classified fit box are skipped** (they have no pattern and take
//! no part in the max); a group where no class has one is a fit error.
//!
//! **Per level (YOLO):** `per_level=true` (default) fits patterns per level; `per_level=false`
//! pools all levels.
//!
//! **Differences from Oodeel 0.4:** all in one place, `docs/scorers.md` ("Differences from
//! Oodeel 0.4").

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::common::{distinct, err, fit_labels, TensorMap, TensorsOut, Uses};
use super::grouped::{GroupInfo, PerLevel};
use super::params::{infos, to_json, ParamDoc, ParamSet, PER_LEVEL};
use super::registry::KindEntry;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::{Result, ScorerFault};

pub(crate) const SHE: KindEntry = KindEntry {
    name: "she",
    summary: "`−max_c ⟨f, m_c⟩ / D`, patterns of correctly classified fit boxes",
    inputs: She::USES,
    shapeable: false,
    params: infos::<SheParams>,
    build: |p, _| Ok(Box::new(She::with_params(p.typed()?))),
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SheClassSelect {
    /// Max over all class patterns (Oodeel).
    Max,
    /// The predicted class's pattern (paper).
    Predicted,
}

/// SHE's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SheParams {
    pub per_level: bool,
    pub class_select: SheClassSelect,
}

impl Default for SheParams {
    fn default() -> Self {
        SheParams {
            per_level: true,
            class_select: SheClassSelect::Max,
        }
    }
}

impl ParamSet for SheParams {
    const DOCS: &'static [ParamDoc] = &[
        PER_LEVEL,
        ParamDoc {
            name: "class_select",
            expected: "one of max, predicted",
            doc: "the pattern compared: the best over classes (Oodeel), or the predicted class's (paper)",
        },
    ];
}

#[derive(Clone, Debug)]
pub struct She {
    pub params: SheParams,
    groups: PerLevel<Group>,
}

#[derive(Clone, Debug)]
struct Group {
    classes: Vec<i64>,
    /// [n_classes, D]
    patterns: Vec<f64>,
}

impl She {
    pub fn new(per_level: bool, class_select: SheClassSelect) -> Self {
        Self::with_params(SheParams {
            per_level,
            class_select,
        })
    }

    pub fn with_params(params: SheParams) -> Self {
        She {
            params,
            groups: PerLevel::default(),
        }
    }

    const USES: Uses = Uses {
        features: true,
        logits: false,
    };

    fn fit_group(
        &self,
        boxes: &BoxSet,
        labels: &[i64],
        idx: &[usize],
        info: &GroupInfo,
    ) -> Result<Group> {
        let d = info.dim;
        let correct: Vec<usize> = idx
            .iter()
            .copied()
            .filter(|&i| labels[i] == (boxes.class_id[i] as i64))
            .collect();
        let classes = distinct(correct.iter().map(|&i| labels[i]));
        if classes.is_empty() {
            return Err(err(
                self.kind(), ScorerFault::CannotFit,
                format!(
                    "{}: no correctly classified fit box (label = class_id), so no class pattern",
                    info.name()
                ),
            ));
        }
        let mut patterns = vec![0.0; classes.len() * d];
        let mut counts = vec![0usize; classes.len()];
        for &i in &correct {
            let c = classes.binary_search(&labels[i]).expect("class");
            counts[c] += 1;
            for (p, &v) in patterns[c * d..(c + 1) * d]
                .iter_mut()
                .zip(boxes.feature(i))
            {
                *p += v as f64;
            }
        }
        for (c, &n) in counts.iter().enumerate() {
            patterns[c * d..(c + 1) * d]
                .iter_mut()
                .for_each(|p| *p /= n as f64);
        }
        Ok(Group { classes, patterns })
    }

    fn score_box(&self, group: &Group, boxes: &BoxSet, i: usize, d: usize) -> f64 {
        let f = boxes.feature(i);
        let dot = |c: usize| {
            group.patterns[c * d..(c + 1) * d]
                .iter()
                .zip(f)
                .map(|(m, &v)| m * v as f64)
                .sum::<f64>()
        };
        let predicted = match self.params.class_select {
            SheClassSelect::Predicted => group.classes.binary_search(&(boxes.class_id[i] as i64)).ok(),
            SheClassSelect::Max => None,
        };
        let best = match predicted {
            Some(c) => dot(c),
            None => (0..group.classes.len())
                .map(dot)
                .fold(f64::NEG_INFINITY, f64::max),
        };
        -best / d as f64
    }
}

impl Scorer for She {
    fn kind(&self) -> &'static str {
        SHE.name
    }
    /// Only correctly classified fit boxes enter a class pattern.
    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        let labels = fit_labels(boxes);
        Some(
            labels
                .iter()
                .zip(&boxes.class_id)
                .map(|(&l, &c)| if l == c as i64 { l } else { -1 })
                .collect(),
        )
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let labels = fit_labels(boxes);
        let mut groups = PerLevel::default();
        groups.fit(self.kind(), boxes, Self::USES, self.params.per_level, |idx, info| {
            self.fit_group(boxes, &labels, idx, info)
        })?;
        self.groups = groups;
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        self.groups
            .score(self.kind(), boxes, Self::USES, |group, idx, info| {
                Ok(idx
                    .iter()
                    .map(|&i| self.score_box(group, boxes, i, info.dim))
                    .collect())
            })
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        to_json(&self.params, &mut params);
        let mut out = TensorsOut::default();
        self.groups.write(&mut out, |group, info, out| {
            let n = group.classes.len();
            out.push(
                &info.tensor("classes"),
                vec![n],
                group.classes.iter().map(|&c| c as f64).collect(),
            );
            out.push(
                &info.tensor("patterns"),
                vec![n, info.dim],
                group.patterns.clone(),
            );
        });
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for She {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        self.groups = PerLevel::read(t, Self::USES, |t, info| {
            let classes = t.labels(&info.tensor("classes"))?;
            if classes.is_empty() {
                return Err(t.bad(format!("group {} has no class pattern", info.g)));
            }
            let patterns = t.take(&info.tensor("patterns"), &[classes.len(), info.dim])?;
            Ok(Group { classes, patterns })
        })?;
        Ok(())
    }
}
