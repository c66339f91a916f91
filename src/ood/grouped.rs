//! The per-level plumbing every grouped kind shares: split the fit boxes into groups (one per
//! pyramid level, or one pooled group), fit one model per group, send each box to its group's
//! model at score time, and keep the groups in the state as `feature_dim`, `levels` and
//! `group{g}.*` tensors. A kind supplies only what one group fits, scores, writes and reads.

use super::common::{
    check_boxes, check_dim, check_fit_set, not_fitted, Grouping, TensorMap, TensorsOut, Uses,
};
use crate::data::boxset::BoxSet;
use crate::error::Result;

/// Which group a kind's callback is working on.
pub(crate) struct GroupInfo<'a> {
    pub g: usize,
    /// The fitted feature dimension.
    pub dim: usize,
    grouping: &'a Grouping,
}

impl GroupInfo<'_> {
    /// A human name of the group, for messages.
    pub fn name(&self) -> String {
        self.grouping.name(self.g)
    }

    /// The group's level (`None` for the pooled group).
    pub fn level(&self) -> Option<i64> {
        self.grouping.levels.as_ref().map(|l| l[self.g])
    }

    /// The indices of the boxes of `boxes` that this group scores.
    pub fn members_of(&self, kind: &str, boxes: &BoxSet) -> Result<Vec<usize>> {
        let groups = self.grouping.assign(kind, boxes)?;
        Ok((0..boxes.len()).filter(|&i| groups[i] == self.g).collect())
    }

    /// The state name of one of the group's tensors.
    pub fn tensor(&self, name: &str) -> String {
        format!("group{}.{name}", self.g)
    }
}

/// One fitted model `G` per group.
#[derive(Clone, Debug)]
pub(crate) struct PerLevel<G> {
    fitted: Option<Fitted<G>>,
}

#[derive(Clone, Debug)]
struct Fitted<G> {
    dim: usize,
    /// The class count, for kinds that read logits (checked at score time).
    classes: Option<usize>,
    grouping: Grouping,
    groups: Vec<G>,
}

impl<G> Default for PerLevel<G> {
    fn default() -> Self {
        PerLevel { fitted: None }
    }
}

impl<G> PerLevel<G> {
    /// The fitted groups, in group order.
    pub fn groups(&self) -> Option<&[G]> {
        self.fitted.as_ref().map(|f| f.groups.as_slice())
    }

    /// Fits one model per group; with `uses.logits` the class count is recorded and checked when
    /// scoring.
    pub fn fit(
        &mut self,
        kind: &str,
        boxes: &BoxSet,
        uses: Uses,
        per_level: bool,
        mut fit_group: impl FnMut(&[usize], &GroupInfo) -> Result<G>,
    ) -> Result<()> {
        check_fit_set(kind, boxes, uses)?;
        let dim = boxes.feature_dim;
        let (grouping, members) = Grouping::fit(boxes, per_level);
        let groups = members
            .iter()
            .enumerate()
            .map(|(g, idx)| {
                let info = GroupInfo {
                    g,
                    dim,
                    grouping: &grouping,
                };
                fit_group(idx, &info)
            })
            .collect::<Result<Vec<G>>>()?;
        self.fitted = Some(Fitted {
            dim,
            classes: uses.logits.then_some(boxes.num_classes),
            grouping,
            groups,
        });
        Ok(())
    }

    /// One score per box: each group's model scores the boxes (indices `idx`) of its group.
    pub fn score(
        &self,
        kind: &str,
        boxes: &BoxSet,
        uses: Uses,
        score_group: impl Fn(&G, &[usize], &GroupInfo) -> Result<Vec<f64>>,
    ) -> Result<Vec<f64>> {
        let fit = self.fitted.as_ref().ok_or_else(|| not_fitted(kind))?;
        check_boxes(kind, boxes, uses)?;
        check_dim(kind, "feature dimension", fit.dim, boxes.feature_dim)?;
        if let Some(classes) = fit.classes {
            check_dim(kind, "class count", classes, boxes.num_classes)?;
        }
        let members = fit.grouping.members(kind, boxes)?;
        let mut scores = vec![0.0; boxes.len()];
        for (g, (group, idx)) in fit.groups.iter().zip(&members).enumerate() {
            if idx.is_empty() {
                continue;
            }
            let info = GroupInfo {
                g,
                dim: fit.dim,
                grouping: &fit.grouping,
            };
            for (&i, s) in idx.iter().zip(score_group(group, idx, &info)?) {
                scores[i] = s;
            }
        }
        Ok(scores)
    }

    /// Writes the fit (nothing when unfitted): `feature_dim`, `num_classes` where recorded,
    /// `levels` when per level, then each group's tensors.
    pub fn write(
        &self,
        out: &mut TensorsOut,
        write_group: impl Fn(&G, &GroupInfo, &mut TensorsOut),
    ) {
        let Some(fit) = &self.fitted else {
            return;
        };
        out.scalar("feature_dim", fit.dim as f64);
        if let Some(classes) = fit.classes {
            out.scalar("num_classes", classes as f64);
        }
        fit.grouping.write(out);
        for (g, group) in fit.groups.iter().enumerate() {
            let info = GroupInfo {
                g,
                dim: fit.dim,
                grouping: &fit.grouping,
            };
            write_group(group, &info, out);
        }
    }

    /// Reads what [`PerLevel::write`] wrote; `uses.logits` as given to [`PerLevel::fit`].
    pub fn read(
        t: &mut TensorMap,
        uses: Uses,
        mut read_group: impl FnMut(&mut TensorMap, &GroupInfo) -> Result<G>,
    ) -> Result<Self> {
        let dim = t.feature_dim()?;
        let classes = if uses.logits {
            let c = t.scalar_usize("num_classes")?;
            if c == 0 {
                return Err(t.bad("num_classes is 0"));
            }
            Some(c)
        } else {
            None
        };
        let grouping = Grouping::read(t)?;
        let mut groups = Vec::with_capacity(grouping.len());
        for g in 0..grouping.len() {
            let info = GroupInfo {
                g,
                dim,
                grouping: &grouping,
            };
            groups.push(read_group(t, &info)?);
        }
        Ok(PerLevel {
            fitted: Some(Fitted {
                dim,
                classes,
                grouping,
                groups,
            }),
        })
    }
}
