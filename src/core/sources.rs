//! Named per-box feature sources.
//!
//! - `cls`: the class-branch feature of the box (YOLO: the input of the last 1×1 class conv at
//!   the box's anchor; DETR: the query's last decoder state), the input of the class head.
//! - `roi:<layer>`: the map of one network layer ROI-aligned on the box, averaged into one
//!   vector per channel (1×1 pooling); `roi:<layer>@<k>`: k×k bins, `channels·k·k` values,
//!   channel-major as torchvision's `roi_align` output flattens. YOLO layers are named by their
//!   index in ultralytics' YAML (`roi:4`, `roi:15`); DETR's by module (`roi:layer3`,
//!   `roi:encoder`). [`crate::detect::Detector::feature_layers`] lists what a model has.
//!
//! A list is written comma-separated: `cls,roi:6@2`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The largest k of `@k` pooling: beyond it a box holds more bins than cells on most maps.
pub const MAX_POOL: usize = 16;

/// One layer's map ROI-aligned on the box, pooled into `pool × pool` bins.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoiSource {
    pub layer: String,
    pub pool: usize,
}

/// What a box's feature vector is read from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FeatureSource {
    Cls,
    Roi(RoiSource),
}

/// A model layer that ROI features can be read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureLayer {
    pub name: String,
    /// Input pixels per map cell.
    pub stride: usize,
}

fn bad(text: &str, reason: impl Into<String>) -> Error {
    Error::Unsupported(format!("feature source `{text}`: {}", reason.into()))
}

impl FromStr for RoiSource {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let rest = text
            .strip_prefix("roi:")
            .ok_or_else(|| bad(text, "expected roi:<layer> or roi:<layer>@<k>"))?;
        let (layer, pool) = match rest.split_once('@') {
            Some((layer, k)) => {
                let pool = k
                    .parse::<usize>()
                    .ok()
                    .filter(|k| (1..=MAX_POOL).contains(k))
                    .ok_or_else(|| bad(text, format!("the pooling k must be 1 to {MAX_POOL}")))?;
                (layer, pool)
            }
            None => (rest, 1),
        };
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if layer.is_empty() || !layer.chars().all(valid) {
            return Err(bad(text, "a layer is named by letters, digits or _"));
        }
        Ok(RoiSource {
            layer: layer.to_string(),
            pool,
        })
    }
}

impl fmt::Display for RoiSource {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.pool {
            1 => write!(f, "roi:{}", self.layer),
            k => write!(f, "roi:{}@{k}", self.layer),
        }
    }
}

impl FromStr for FeatureSource {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text.trim() {
            "cls" => Ok(FeatureSource::Cls),
            t if t.starts_with("roi:") => t.parse().map(FeatureSource::Roi),
            t => Err(bad(t, "expected cls, roi:<layer> or roi:<layer>@<k>")),
        }
    }
}

impl fmt::Display for FeatureSource {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            FeatureSource::Cls => f.write_str("cls"),
            FeatureSource::Roi(r) => r.fmt(f),
        }
    }
}

/// An ordered list of distinct sources, concatenated in that order into one vector per box;
/// `cls` alone by default (what box sets and scorer files held before sources existed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureSources(Vec<FeatureSource>);

impl FeatureSources {
    /// Refuses an empty list and a source named twice.
    pub fn new(sources: Vec<FeatureSource>) -> Result<Self> {
        if sources.is_empty() {
            return Err(Error::Unsupported("no feature source given".into()));
        }
        for (i, s) in sources.iter().enumerate() {
            if sources[..i].contains(s) {
                return Err(bad(&s.to_string(), "named twice"));
            }
        }
        Ok(FeatureSources(sources))
    }

    pub fn list(&self) -> &[FeatureSource] {
        &self.0
    }

    /// The ROI sources, in order.
    pub fn roi(&self) -> Vec<RoiSource> {
        self.0
            .iter()
            .filter_map(|s| match s {
                FeatureSource::Roi(r) => Some(r.clone()),
                FeatureSource::Cls => None,
            })
            .collect()
    }

    pub fn is_cls(&self) -> bool {
        self.0 == [FeatureSource::Cls]
    }

    /// The sources whose layer is not among `layers` (`cls` every model has).
    pub fn missing_from(&self, layers: &[FeatureLayer]) -> Vec<RoiSource> {
        Self::missing_roi(&self.roi(), layers)
    }

    /// The ROI sources of `roi` whose layer is not among `layers`.
    pub fn missing_roi(roi: &[RoiSource], layers: &[FeatureLayer]) -> Vec<RoiSource> {
        roi.iter()
            .filter(|r| !layers.iter().any(|l| l.name == r.layer))
            .cloned()
            .collect()
    }
}

impl Default for FeatureSources {
    fn default() -> Self {
        FeatureSources(vec![FeatureSource::Cls])
    }
}

impl FromStr for FeatureSources {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::new(text.split(',').map(str::parse).collect::<Result<_>>()?)
    }
}

impl fmt::Display for FeatureSources {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(|s| s.to_string()).collect();
        f.write_str(&names.join(","))
    }
}

/// Sources are stored as their names, so that files stay readable.
macro_rules! serde_as_string {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

serde_as_string!(RoiSource);
serde_as_string!(FeatureSources);

/// What to say of sources a model lacks: their names and the layers it has.
pub fn missing_message(missing: &[RoiSource], family: &str, layers: &[FeatureLayer]) -> String {
    let names: Vec<String> = missing.iter().map(|m| m.to_string()).collect();
    let have: Vec<String> = layers
        .iter()
        .map(|l| format!("{} (stride {})", l.name, l.stride))
        .collect();
    format!(
        "this {family} model has no layer for feature source(s) {}; its ROI layers are {}",
        names.join(", "),
        match have.is_empty() {
            true => "none".to_string(),
            false => have.join(", "),
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for text in ["cls", "roi:6", "roi:15@2", "cls,roi:4,roi:layer3@7"] {
            let sources: FeatureSources = text.parse().unwrap();
            assert_eq!(sources.to_string(), text);
        }
        let sources: FeatureSources = "roi:6@1,cls".parse().unwrap();
        assert_eq!(sources.to_string(), "roi:6,cls");
        assert_eq!(sources.roi().len(), 1);
        assert!(FeatureSources::default().is_cls());
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        for (text, reason) in [
            ("roi", "expected cls"),
            ("roi:", "letters, digits"),
            ("roi:6@0", "1 to 16"),
            ("roi:6@x", "1 to 16"),
            ("roi:a-b", "letters, digits"),
            ("cls,cls", "named twice"),
            ("feat", "expected cls"),
        ] {
            let err = text.parse::<FeatureSources>().unwrap_err();
            assert!(matches!(err, Error::Unsupported(_)), "{err}");
            let err = err.to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn missing_layers_are_named() {
        let layers = [FeatureLayer {
            name: "4".into(),
            stride: 8,
        }];
        let sources: FeatureSources = "cls,roi:4@2,roi:30".parse().unwrap();
        let missing = sources.missing_from(&layers);
        assert_eq!(missing.len(), 1);
        let message = missing_message(&missing, "yolov8", &layers);
        assert!(
            message.contains("roi:30") && message.contains("are 4 (stride 8)"),
            "{message}"
        );
    }
}
