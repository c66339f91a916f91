//! Scorer names, construction from `name=value` parameters, and rebuilding from a state.

use super::common::{err, Params, TensorMap};
use super::gram::Gram;
use super::knn::Knn;
use super::logits::{LogitMethod, LogitScorer, LOGIT_KINDS};
use super::mahalanobis::{Mahalanobis, PinvRtol};
use super::shaping::{Shaping, SHAPINGS};
use super::she::She;
use super::vim::Vim;
use super::{Scorer, ScorerImpl, ScorerState};
use crate::error::Result;

const KINDS: &[&str] = &[
    "msp",
    "maxlogit",
    "energy",
    "entropy",
    "gen",
    "odin",
    "joint_energy",
    "mahalanobis",
    "rmds",
    "knn",
    "vim",
    "she",
    "gram",
];

/// All registry names, for `--scorer all` and error messages.
pub fn kinds() -> &'static [&'static str] {
    KINDS
}

/// The parameter names a scorer accepts (with its shaping's).
pub fn param_names(kind: &str, shaping: Option<&str>) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = match kind {
        "mahalanobis" | "rmds" => vec!["per_level", "pinv_rtol"],
        "knn" => vec!["nearest", "per_level"],
        "vim" => vec!["princ_dims", "pca_origin", "per_level"],
        "she" => vec!["per_level", "class_select"],
        "gram" => vec!["orders", "quantile", "per_level"],
        k => LogitMethod::param_names(k).to_vec(),
    };
    if let Some(s) = shaping {
        names.extend_from_slice(Shaping::param_names(s));
    }
    names
}

pub(crate) fn build_impl(
    kind: &str,
    shaping: Option<&str>,
    params: &[(String, String)],
) -> Result<Box<dyn ScorerImpl>> {
    let kind_lc = kind.trim().to_ascii_lowercase();
    let Some(&kind) = KINDS.iter().find(|k| **k == kind_lc) else {
        return Err(err(
            kind,
            format!("unknown scorer; valid scorers: {}", KINDS.join(", ")),
        ));
    };
    let shaping = match shaping.map(|s| s.trim().to_ascii_lowercase()) {
        None => None,
        Some(s) if s.is_empty() || s == "none" => None,
        Some(s) => {
            let Some(&name) = SHAPINGS.iter().find(|n| **n == s) else {
                return Err(err(
                    kind,
                    format!(
                        "unknown shaping `{s}`; valid shapings: {} (or none)",
                        SHAPINGS.join(", ")
                    ),
                ));
            };
            if !LOGIT_KINDS.contains(&kind) {
                return Err(err(
                    kind,
                    format!(
                        "shaping `{name}` applies only to logit scorers ({})",
                        LOGIT_KINDS.join(", ")
                    ),
                ));
            }
            Some(name)
        }
    };
    let p = Params::new(kind, params, &param_names(kind, shaping))?;
    Ok(match kind {
        "mahalanobis" | "rmds" => Box::new(Mahalanobis::new(
            kind == "rmds",
            p.bool("per_level", true)?,
            PinvRtol::parse(&p)?,
        )),
        "knn" => Box::new(Knn::from_params(&p)?),
        "vim" => Box::new(Vim::from_params(&p)?),
        "she" => Box::new(She::from_params(&p)?),
        "gram" => Box::new(Gram::from_params(&p)?),
        _ => {
            let method = LogitMethod::from_params(kind, &p)?;
            let shaping = shaping.map(|s| Shaping::from_params(s, &p)).transpose()?;
            Box::new(LogitScorer::new(method, shaping))
        }
    })
}

/// Build an unfitted scorer. `kind` from [`kinds`]; `shaping` one of react|ash|scale|dice (only
/// with logit scorers); params as `name=value` pairs with Oodeel's constructor names. Unknown
/// kind, shaping or parameter → an error that lists the valid ones.
pub fn build(
    kind: &str,
    shaping: Option<&str>,
    params: &[(String, String)],
) -> Result<Box<dyn Scorer>> {
    Ok(build_impl(kind, shaping, params)?)
}

/// Rebuild a scorer from its state: fitted when the state has tensors, unfitted otherwise.
/// Every tensor's shape is validated; a bad state is an error, never a panic.
pub fn from_state(state: &ScorerState) -> Result<Box<dyn Scorer>> {
    let kind = state.kind.as_str();
    let mut params = Vec::with_capacity(state.params.len());
    for (name, value) in &state.params {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Array(items) => {
                let mut parts = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        serde_json::Value::Number(n) => parts.push(n.to_string()),
                        other => {
                            return Err(err(
                                kind,
                                format!("bad scorer state: parameter `{name}` holds {other}"),
                            ))
                        }
                    }
                }
                parts.join(",")
            }
            other => {
                return Err(err(
                    kind,
                    format!("bad scorer state: parameter `{name}` holds {other}"),
                ))
            }
        };
        params.push((name.clone(), text));
    }
    let mut scorer = build_impl(kind, state.shaping.as_deref(), &params)?;
    let mut tensors = TensorMap::new(kind, &state.tensors)?;
    if !tensors.is_empty() {
        scorer.restore(&mut tensors)?;
        tensors.finish()?;
    }
    Ok(scorer)
}
