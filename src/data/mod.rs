//! Datasets, box sets, and the image paths a user gives.

pub mod boxset;
pub mod dataset;
pub mod inputs;

use std::path::Path;

use crate::error::{Error, Result};

/// Class names from an ultralytics `data.yaml` (`names` as a list or an index map) or from a
/// text file with one name a line.
pub fn read_class_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::BadInput {
        path: path.to_path_buf(),
        reason,
    };
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    if !is_yaml {
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.is_empty() {
            return Err(bad("no class names (expected one name a line)".into()));
        }
        return Ok(names);
    }
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| bad(format!("invalid YAML: {e}")))?;
    match doc.get("names") {
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| bad(format!("class name {v:?} is not a string")))
            })
            .collect(),
        Some(serde_yaml::Value::Mapping(map)) => {
            let mut pairs = map
                .iter()
                .map(|(k, v)| match (k.as_u64(), v.as_str()) {
                    (Some(i), Some(name)) => Ok((i as usize, name.to_string())),
                    _ => Err(bad(format!(
                        "`names` entry {k:?}: {v:?} is not `index: name`"
                    ))),
                })
                .collect::<Result<Vec<_>>>()?;
            pairs.sort();
            if pairs.iter().enumerate().any(|(i, (k, _))| i != *k) {
                return Err(bad("`names` indices are not 0..n".into()));
            }
            Ok(pairs.into_iter().map(|(_, n)| n).collect())
        }
        _ => Err(bad("no `names` list".into())),
    }
}

/// The valid class ids of a dataset or model with `count` classes, in words: "classes are 0
/// to 3", inclusive.
pub fn class_range(count: usize) -> String {
    match count {
        0 => "it has no classes".into(),
        1 => "its only class is 0".into(),
        n => format!("its classes are 0 to {}", n - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_from_yaml_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("a.yaml");
        std::fs::write(&list, "train: x\nnames: [cat, dog]\n").unwrap();
        assert_eq!(read_class_names(&list).unwrap(), vec!["cat", "dog"]);
        let map = dir.path().join("b.yaml");
        std::fs::write(&map, "names:\n  1: dog\n  0: cat\n").unwrap();
        assert_eq!(read_class_names(&map).unwrap(), vec!["cat", "dog"]);
        let text = dir.path().join("names.txt");
        std::fs::write(&text, "cat\n\ndog\n").unwrap();
        assert_eq!(read_class_names(&text).unwrap(), vec!["cat", "dog"]);
    }
}
