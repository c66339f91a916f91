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
//! **Differences from Oodeel:** no input perturbation (Oodeel's default `eps=0.0014`; equals
//! Oodeel with `eps=0`); a class with no correctly classified sample is skipped instead of giving a
//! NaN mean (and NaN scores); features are taken as given (Oodeel `squeeze`s them); f64.

use std::collections::BTreeMap;

use super::common::{
    check_boxes, check_dim, check_fit_set, distinct, err, fit_labels, not_fitted, Grouping, Params,
    TensorMap, TensorsOut, Uses,
};
use super::{Scorer, ScorerImpl, ScorerState};
use crate::data::boxset::BoxSet;
use crate::error::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SheClassSelect {
    /// Max over all class patterns (Oodeel).
    Max,
    /// The predicted class's pattern (paper).
    Predicted,
}

#[derive(Clone, Debug)]
pub struct She {
    pub per_level: bool,
    pub class_select: SheClassSelect,
    fitted: Option<Fit>,
}

#[derive(Clone, Debug)]
struct Fit {
    dim: usize,
    grouping: Grouping,
    groups: Vec<Group>,
}

#[derive(Clone, Debug)]
struct Group {
    classes: Vec<i64>,
    /// [n_classes, D]
    patterns: Vec<f64>,
}

impl She {
    pub fn new(per_level: bool, class_select: SheClassSelect) -> Self {
        She {
            per_level,
            class_select,
            fitted: None,
        }
    }

    pub(crate) fn from_params(p: &Params) -> Result<She> {
        let select = match p.choice("class_select", "max", &["max", "predicted"])? {
            "predicted" => SheClassSelect::Predicted,
            _ => SheClassSelect::Max,
        };
        Ok(She::new(p.bool("per_level", true)?, select))
    }

    const USES: Uses = Uses {
        features: true,
        logits: false,
    };
}

impl Scorer for She {
    fn kind(&self) -> &'static str {
        "she"
    }
    /// Only correctly classified fit boxes enter a class pattern.
    fn fit_classes(&self, boxes: &BoxSet) -> Option<Vec<i64>> {
        let labels = fit_labels(boxes);
        Some(
            labels
                .iter()
                .zip(&boxes.class_id)
                .map(|(&l, &c)| if l == c { l } else { -1 })
                .collect(),
        )
    }

    fn fit(&mut self, boxes: &BoxSet) -> Result<()> {
        let kind = self.kind();
        check_fit_set(kind, boxes, Self::USES)?;
        let d = boxes.feature_dim;
        let labels = fit_labels(boxes);
        let (grouping, members) = Grouping::fit(boxes, self.per_level);
        let mut groups = Vec::new();
        for (g, idx) in members.iter().enumerate() {
            let correct: Vec<usize> = idx
                .iter()
                .copied()
                .filter(|&i| labels[i] == boxes.class_id[i])
                .collect();
            let classes = distinct(correct.iter().map(|&i| labels[i]));
            if classes.is_empty() {
                return Err(err(
                    kind,
                    format!(
                        "{}: no correctly classified fit box (label = class_id), so no class pattern",
                        grouping.name(g)
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
            groups.push(Group { classes, patterns });
        }
        self.fitted = Some(Fit {
            dim: d,
            grouping,
            groups,
        });
        Ok(())
    }

    fn score(&self, boxes: &BoxSet) -> Result<Vec<f64>> {
        let kind = self.kind();
        let fit = self.fitted.as_ref().ok_or_else(|| not_fitted(kind))?;
        check_boxes(kind, boxes, Self::USES)?;
        let d = fit.dim;
        check_dim(kind, "feature dimension", d, boxes.feature_dim)?;
        let group_of = fit.grouping.assign(kind, boxes)?;
        Ok((0..boxes.len())
            .map(|i| {
                let group = &fit.groups[group_of[i]];
                let f = boxes.feature(i);
                let dot = |c: usize| {
                    group.patterns[c * d..(c + 1) * d]
                        .iter()
                        .zip(f)
                        .map(|(m, &v)| m * v as f64)
                        .sum::<f64>()
                };
                let predicted = match self.class_select {
                    SheClassSelect::Predicted => {
                        group.classes.binary_search(&boxes.class_id[i]).ok()
                    }
                    SheClassSelect::Max => None,
                };
                let best = match predicted {
                    Some(c) => dot(c),
                    None => (0..group.classes.len())
                        .map(dot)
                        .fold(f64::NEG_INFINITY, f64::max),
                };
                -best / d as f64
            })
            .collect())
    }

    fn to_state(&self) -> ScorerState {
        let mut params = BTreeMap::new();
        params.insert("per_level".into(), self.per_level.into());
        params.insert(
            "class_select".into(),
            match self.class_select {
                SheClassSelect::Max => "max",
                SheClassSelect::Predicted => "predicted",
            }
            .into(),
        );
        let mut out = TensorsOut::default();
        if let Some(fit) = &self.fitted {
            out.scalar("feature_dim", fit.dim as f64);
            fit.grouping.write(&mut out);
            for (g, group) in fit.groups.iter().enumerate() {
                let n = group.classes.len();
                out.push(
                    &format!("group{g}.classes"),
                    vec![n],
                    group.classes.iter().map(|&c| c as f64).collect(),
                );
                out.push(
                    &format!("group{g}.patterns"),
                    vec![n, fit.dim],
                    group.patterns.clone(),
                );
            }
        }
        out.into_state(self.kind(), None, params)
    }
}

impl ScorerImpl for She {
    fn restore(&mut self, t: &mut TensorMap) -> Result<()> {
        let d = t.feature_dim()?;
        let grouping = Grouping::read(t)?;
        let mut groups = Vec::new();
        for g in 0..grouping.len() {
            let classes = t.labels(&format!("group{g}.classes"))?;
            if classes.is_empty() {
                return Err(t.bad(format!("group {g} has no class pattern")));
            }
            let patterns = t.take(&format!("group{g}.patterns"), &[classes.len(), d])?;
            groups.push(Group { classes, patterns });
        }
        self.fitted = Some(Fit {
            dim: d,
            grouping,
            groups,
        });
        Ok(())
    }
}
