//! The registry: what a scorer kind is ([`KindEntry`]), and everything that reads the table of
//! kinds (`kind_table!` in `src/ood/mod.rs`): construction from `name=value` parameters,
//! rebuilding from a state, the lists of names and the generated documentation tables.

use std::collections::BTreeMap;

use super::common::{err, TensorMap, Uses};
use super::params::{Given, ParamInfo};
use super::shaping::{Shaping, ShapingEntry, SHAPINGS};
use super::{Scorer, ScorerImpl, ScorerState, KINDS};
use crate::error::{Result, ScorerFault};

/// A kind's constructor: an unfitted scorer from its parameters (and shaping, for shapeable
/// kinds).
pub(crate) type Build = fn(&Given, Option<Shaping>) -> Result<Box<dyn ScorerImpl>>;

/// One scorer kind: its name, what it reads, its typed parameters and its constructor. A kind's
/// module defines its entries as constants; `kind_table!` in `src/ood/mod.rs` lists them.
pub struct KindEntry {
    /// The registry name (lower case), e.g. `knn`.
    pub name: &'static str,
    /// What it scores, in one line (higher = more OOD).
    pub summary: &'static str,
    /// What of a box it reads (the classifier head too where `summary` says so).
    pub inputs: Uses,
    /// Whether an activation shaping may go in front (logit scorers).
    pub shapeable: bool,
    /// Its parameters with their defaults, from its typed parameter struct.
    pub params: fn() -> Vec<ParamInfo>,
    pub(crate) build: Build,
}

impl KindEntry {
    /// Whether it fits per pyramid level (it has the `per_level` parameter).
    pub fn per_level(&self) -> bool {
        (self.params)().iter().any(|p| p.doc.name == "per_level")
    }
}

/// Every scorer kind, in listing order.
pub fn entries() -> &'static [KindEntry] {
    KINDS
}

/// All registry names, for fitting every kind at once and for error messages.
pub fn kinds() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

/// All shaping names.
pub fn shapings() -> Vec<&'static str> {
    SHAPINGS.iter().map(|s| s.name).collect()
}

fn entry(kind: &str) -> Result<&'static KindEntry> {
    let wanted = kind.trim().to_ascii_lowercase();
    KINDS.iter().find(|k| k.name == wanted).ok_or_else(|| {
        err(
            kind,
            ScorerFault::UnknownKind,
            format!("unknown scorer; valid scorers: {}", kinds().join(", ")),
        )
    })
}

fn shaping_entry(kind: &KindEntry, shaping: Option<&str>) -> Result<Option<&'static ShapingEntry>> {
    let wanted = match shaping.map(|s| s.trim().to_ascii_lowercase()) {
        None => return Ok(None),
        Some(s) if s.is_empty() || s == "none" => return Ok(None),
        Some(s) => s,
    };
    let Some(found) = SHAPINGS.iter().find(|s| s.name == wanted) else {
        return Err(err(
            kind.name,
            ScorerFault::UnknownKind,
            format!(
                "unknown shaping `{wanted}`; valid shapings: {} (or none)",
                shapings().join(", ")
            ),
        ));
    };
    if !kind.shapeable {
        let logit: Vec<&str> = KINDS
            .iter()
            .filter(|k| k.shapeable)
            .map(|k| k.name)
            .collect();
        return Err(err(
            kind.name,
            ScorerFault::BadParameter,
            format!(
                "shaping `{}` applies only to logit scorers ({})",
                found.name,
                logit.join(", ")
            ),
        ));
    }
    Ok(Some(found))
}

/// The parameters a kind accepts with a shaping: the kind's, then the shaping's.
fn accepted(kind: &KindEntry, shaping: Option<&ShapingEntry>) -> Vec<ParamInfo> {
    let mut params = (kind.params)();
    if let Some(s) = shaping {
        params.extend((s.params)());
    }
    params
}

/// The parameter names a scorer accepts (with its shaping's); empty for an unknown kind.
pub fn param_names(kind: &str, shaping: Option<&str>) -> Vec<&'static str> {
    let Ok(kind) = entry(kind) else {
        return Vec::new();
    };
    let shaping = shaping_entry(kind, shaping).ok().flatten();
    accepted(kind, shaping).iter().map(|p| p.doc.name).collect()
}

fn construct(
    kind: &KindEntry,
    shaping: Option<&ShapingEntry>,
    given: &Given,
) -> Result<Box<dyn ScorerImpl>> {
    let shaping = shaping.map(|s| (s.build)(given)).transpose()?;
    (kind.build)(given, shaping)
}

pub(crate) fn build_impl(
    kind: &str,
    shaping: Option<&str>,
    params: &[(String, String)],
) -> Result<Box<dyn ScorerImpl>> {
    let kind = entry(kind)?;
    let shaping = shaping_entry(kind, shaping)?;
    let given = Given::from_text(kind.name, params, &accepted(kind, shaping))?;
    construct(kind, shaping, &given)
}

/// Build an unfitted scorer. `kind` from [`kinds`]; `shaping` one of [`shapings`] (only with
/// logit scorers); params as `name=value` pairs with Oodeel's constructor names, read into the
/// kind's typed parameters. Unknown kind, shaping or parameter, or a value of the wrong type or
/// range → an error that lists the valid ones or says what is expected.
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
    let kind = entry(&state.kind)?;
    let shaping = shaping_entry(kind, state.shaping.as_deref())?;
    let given = Given::from_json(kind.name, &state.params, &accepted(kind, shaping))?;
    let mut scorer = construct(kind, shaping, &given)?;
    let mut tensors = TensorMap::new(kind.name, &state.tensors)?;
    if !tensors.is_empty() {
        scorer.restore(&mut tensors)?;
        tensors.finish()?;
    }
    Ok(scorer)
}

fn inputs(uses: Uses) -> &'static str {
    match (uses.features, uses.logits) {
        (true, true) => "features, logits",
        (true, false) => "features",
        (false, true) => "logits",
        (false, false) => "—",
    }
}

fn param_list(params: &[ParamInfo]) -> String {
    if params.is_empty() {
        return "—".to_string();
    }
    let items: Vec<String> = params
        .iter()
        .map(|p| format!("`{}={}`", p.doc.name, p.default_text()))
        .collect();
    items.join(", ")
}

/// The kinds and shapings as markdown tables (docs/scorers.md holds this text verbatim), then
/// every parameter with its expected values and meaning.
pub fn markdown() -> String {
    let mut out = String::from(
        "| kind | reads | score (higher = more OOD) | parameters (defaults) |\n|---|---|---|---|\n",
    );
    for k in KINDS {
        out += &format!(
            "| `{}` | {} | {} | {} |\n",
            k.name,
            inputs(k.inputs),
            k.summary,
            param_list(&(k.params)())
        );
    }
    out +=
        "\n| shaping (logit kinds only) | what it does | parameters (defaults) |\n|---|---|---|\n";
    for s in SHAPINGS {
        out += &format!(
            "| `{}` | {} | {} |\n",
            s.name,
            s.summary,
            param_list(&(s.params)())
        );
    }
    out += "\n| parameter | of | expected | meaning |\n|---|---|---|---|\n";
    let mut seen: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    let owners = KINDS
        .iter()
        .map(|k| (k.name, (k.params)()))
        .chain(SHAPINGS.iter().map(|s| (s.name, (s.params)())));
    let mut order = Vec::new();
    for (owner, params) in owners {
        for p in params {
            let key = (p.doc.name, p.doc.doc);
            if !seen.contains_key(&key) {
                order.push((key, p.doc.expected));
            }
            seen.entry(key).or_default().push(owner);
        }
    }
    for ((name, doc), expected) in order {
        let of: Vec<String> = seen[&(name, doc)]
            .iter()
            .map(|o| format!("`{o}`"))
            .collect();
        out += &format!("| `{name}` | {} | {expected} | {doc} |\n", of.join(", "));
    }
    out
}
