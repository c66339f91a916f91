//! Typed scorer parameters. Every kind's and every shaping's parameters are one serde struct
//! (`#[serde(deny_unknown_fields)]`) whose `Default` holds the documented defaults. Both ways in
//! read into that struct: `name=value` text (the command line) and the JSON params of a scorer
//! file; a fitted scorer writes its struct back as that JSON.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

use super::common::err;
use crate::error::{Error, Result, ScorerFault};

/// One parameter's documentation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamDoc {
    pub name: &'static str,
    /// What a value must be, e.g. "an integer >= 1"; error messages quote it.
    pub expected: &'static str,
    /// What it does, in one line.
    pub doc: &'static str,
}

/// The parameters of a scorer kind or a shaping: a serde struct with
/// `#[serde(deny_unknown_fields)]` whose `Default` is the documented defaults.
pub trait ParamSet: Serialize + DeserializeOwned + Default {
    /// Every field, in declaration order.
    const DOCS: &'static [ParamDoc];
    /// The first field whose value is outside its documented range.
    fn out_of_range(&self) -> Option<&'static str> {
        None
    }
}

/// A parameter as the registry lists it: its documentation and its default.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    pub doc: ParamDoc,
    pub default: Value,
}

impl ParamInfo {
    /// The default as it is written on the command line.
    pub fn default_text(&self) -> String {
        text_of(&self.default)
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(text_of).collect();
            items.join(",")
        }
        other => other.to_string(),
    }
}

/// The parameters of `P`, with their defaults.
pub fn infos<P: ParamSet>() -> Vec<ParamInfo> {
    let defaults = defaults::<P>();
    P::DOCS
        .iter()
        .map(|doc| ParamInfo {
            doc: *doc,
            default: defaults.get(doc.name).cloned().unwrap_or(Value::Null),
        })
        .collect()
}

/// The defaults of `P` as a JSON object (the same form as a scorer file's params).
pub(crate) fn defaults<P: ParamSet>() -> Map<String, Value> {
    match serde_json::to_value(P::default()) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

/// A parameter struct as a scorer file stores it.
pub(crate) fn to_json<P: ParamSet>(params: &P, out: &mut BTreeMap<String, Value>) {
    if let Ok(Value::Object(map)) = serde_json::to_value(params) {
        out.extend(map);
    }
}

/// The parameters given to one scorer, by name: the JSON value and how it was written (for
/// messages). Names are checked against the accepted ones when given.
pub(crate) struct Given {
    scorer: String,
    values: BTreeMap<String, (Value, String)>,
}

fn unknown(scorer: &str, name: &str, valid: &[ParamInfo]) -> Error {
    let list = if valid.is_empty() {
        "none".to_string()
    } else {
        let names: Vec<&str> = valid.iter().map(|p| p.doc.name).collect();
        names.join(", ")
    };
    err(
        scorer,
        ScorerFault::BadParameter,
        format!("unknown parameter `{name}`; valid parameters: {list}"),
    )
}

impl Given {
    /// From `name=value` text; the value's JSON form follows the default's where the text is
    /// ambiguous (a bool takes true|false|1|0|yes|no, a list takes `1,2` or `[1,2]`).
    pub fn from_text(
        scorer: &str,
        pairs: &[(String, String)],
        valid: &[ParamInfo],
    ) -> Result<Given> {
        let mut values = BTreeMap::new();
        for (name, text) in pairs {
            let (name, text) = (name.trim(), text.trim());
            let info = valid
                .iter()
                .find(|p| p.doc.name == name)
                .ok_or_else(|| unknown(scorer, name, valid))?;
            let value = text_value(&info.default, text);
            if values
                .insert(name.to_string(), (value, text.to_string()))
                .is_some()
            {
                return Err(err(
                    scorer,
                    ScorerFault::BadParameter,
                    format!("parameter `{name}` given twice"),
                ));
            }
        }
        Ok(Given {
            scorer: scorer.to_string(),
            values,
        })
    }

    /// From the params of a scorer file.
    pub fn from_json(
        scorer: &str,
        params: &BTreeMap<String, Value>,
        valid: &[ParamInfo],
    ) -> Result<Given> {
        let mut values = BTreeMap::new();
        for (name, value) in params {
            if !valid.iter().any(|p| p.doc.name == name) {
                return Err(unknown(scorer, name, valid));
            }
            values.insert(name.clone(), (value.clone(), value.to_string()));
        }
        Ok(Given {
            scorer: scorer.to_string(),
            values,
        })
    }

    /// The typed parameters `P`: the given values of its fields over its defaults. A value of
    /// the wrong type or out of range is an error naming the parameter and what it expects.
    pub fn typed<P: ParamSet>(&self) -> Result<P> {
        let defaults = defaults::<P>();
        let mine: Vec<(&String, &Value)> = self
            .values
            .iter()
            .filter(|(name, _)| defaults.contains_key(*name))
            .map(|(name, (value, _))| (name, value))
            .collect();
        let with = |given: &[(&String, &Value)]| {
            let mut map = defaults.clone();
            for (name, value) in given {
                map.insert((*name).clone(), (*value).clone());
            }
            serde_json::from_value::<P>(Value::Object(map))
        };
        match with(&mine) {
            Ok(params) => match params.out_of_range() {
                Some(name) => Err(self.bad::<P>(name)),
                None => Ok(params),
            },
            Err(e) => {
                // Name the first given parameter that fails on its own.
                let culprit = mine
                    .iter()
                    .find(|one| with(std::slice::from_ref(one)).is_err());
                Err(match culprit {
                    Some((name, _)) => self.bad::<P>(name),
                    None => err(
                        &self.scorer,
                        ScorerFault::BadParameter,
                        format!("bad parameters: {e}"),
                    ),
                })
            }
        }
    }

    fn bad<P: ParamSet>(&self, name: &str) -> Error {
        let expected = P::DOCS
            .iter()
            .find(|d| d.name == name)
            .map_or("a valid value", |d| d.expected);
        let written = self.values.get(name).map_or("", |(_, text)| text.as_str());
        err(
            &self.scorer,
            ScorerFault::BadParameter,
            format!("parameter `{name}={written}`: expected {expected}"),
        )
    }
}

/// The JSON form of a parameter written as text.
fn text_value(default: &Value, text: &str) -> Value {
    match default {
        Value::Bool(_) => match text.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Value::Bool(true),
            "false" | "0" | "no" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        Value::Array(_) => Value::Array(list_items(text).into_iter().map(scalar_value).collect()),
        _ => scalar_value(text),
    }
}

/// The items of a list written `a,b` or `[a,b]`, split at the commas outside brackets, so that
/// an item can hold a list of its own (`safe:also=[vos,mix],energy`).
pub(crate) fn list_items(text: &str) -> Vec<&str> {
    let inner = match text.strip_prefix('[') {
        Some(rest) if closing_bracket(rest) == Some(rest.len() - 1) => &rest[..rest.len() - 1],
        _ => text,
    };
    split_outside_brackets(inner, ',')
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// `text` split at each `sep` outside brackets.
pub(crate) fn split_outside_brackets(text: &str, sep: char) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            c if c == sep && depth == 0 => {
                items.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
}

/// The index in `text` of the `]` that closes a `[` just before it.
fn closing_bracket(text: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => return Some(i),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// An integer, a finite number, or else the lower-cased word (choices are case-insensitive).
fn scalar_value(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return i.into();
    }
    if let Ok(u) = text.parse::<u64>() {
        return u.into();
    }
    match text
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
    {
        Some(n) => Value::Number(n),
        None => Value::String(text.to_ascii_lowercase()),
    }
}

/// No parameters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

impl ParamSet for NoParams {
    const DOCS: &'static [ParamDoc] = &[];
}

/// The `per_level` parameter's documentation, shared by every grouped kind.
pub(crate) const PER_LEVEL: ParamDoc = ParamDoc {
    name: "per_level",
    expected: "true or false",
    doc: "fit one set of statistics per pyramid level (false: pool all boxes)",
};

#[cfg(test)]
mod tests {
    use super::list_items;

    #[test]
    fn list_items_split_at_the_commas_outside_brackets() {
        assert_eq!(list_items("1, 2,3"), vec!["1", "2", "3"]);
        assert_eq!(list_items("[vos,mix]"), vec!["vos", "mix"]);
        assert_eq!(list_items(""), Vec::<&str>::new());
        assert_eq!(list_items("[]"), Vec::<&str>::new());
        assert_eq!(
            list_items("safe:also=[vos,mix]:epochs=5,energy"),
            vec!["safe:also=[vos,mix]:epochs=5", "energy"]
        );
        assert_eq!(
            list_items("[safe:also=[vos,mix],energy]"),
            vec!["safe:also=[vos,mix]", "energy"]
        );
        // Brackets that open and close separate items are not one outer pair.
        assert_eq!(list_items("[a],[b]"), vec!["[a]", "[b]"]);
    }
}
