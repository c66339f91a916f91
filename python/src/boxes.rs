//! Box sets as Python dicts: the tensors of the box set file as numpy arrays under the same
//! names (`features`, `logits`, `class_id`, `label`, `level`, `confidence`, `bbox`,
//! `image_index`, `head.weight` / `head.<level>.weight`, ...), and its metadata as Python
//! values (`class_names`, `fingerprint`, `source`, `detect_options`).

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use oodbox::data::boxset::{BoxParts, BoxSet};
use oodbox::{ClassHead, LinearHead};
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

use crate::to_py;

/// A flat row-major buffer as an `(n, width)` array.
pub(crate) fn matrix<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    width: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let rows = data.len().checked_div(width).unwrap_or(0);
    Ok(PyArray1::from_vec(py, data)
        .reshape([rows, width])?
        .into_any())
}

pub(crate) fn json_to_py<'py>(
    py: Python<'py>,
    value: &impl serde::Serialize,
) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// The box set as a dict; `with_head` adds the classifier head's arrays.
pub(crate) fn to_dict<'py>(
    py: Python<'py>,
    set: BoxSet,
    with_head: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let set = set.into_parts();
    // Python sees ids as int64, as in the file.
    let wide = |v: Vec<usize>| -> Vec<i64> { v.into_iter().map(|x| x as i64).collect() };
    let d = PyDict::new(py);
    d.set_item("features", matrix(py, set.features, set.feature_dim)?)?;
    d.set_item("logits", matrix(py, set.logits, set.num_classes)?)?;
    d.set_item("class_id", PyArray1::from_vec(py, wide(set.class_id)))?;
    for (name, values) in [
        ("label", set.label),
        ("level", set.level.map(wide)),
        ("image_index", set.image_index.map(wide)),
    ] {
        if let Some(v) = values {
            d.set_item(name, PyArray1::from_vec(py, v))?;
        }
    }
    if let Some(c) = set.confidence {
        d.set_item("confidence", PyArray1::from_vec(py, c))?;
    }
    if let Some(b) = set.bbox {
        let flat: Vec<f32> = b.into_iter().flatten().collect();
        d.set_item("bbox", matrix(py, flat, 4)?)?;
    }
    if let (true, Some(head)) = (with_head, set.head) {
        let single = head.levels.len() == 1;
        for (i, level) in head.levels.into_iter().enumerate() {
            let prefix = if single {
                "head".to_string()
            } else {
                format!("head.{i}")
            };
            d.set_item(
                format!("{prefix}.weight"),
                matrix(py, level.weight, level.dim)?,
            )?;
            d.set_item(format!("{prefix}.bias"), PyArray1::from_vec(py, level.bias))?;
        }
    }
    d.set_item("class_names", set.class_names)?;
    d.set_item("fingerprint", set.fingerprint)?;
    d.set_item("source", set.source)?;
    if let Some(options) = &set.detect_options {
        d.set_item("detect_options", json_to_py(py, options)?)?;
    }
    Ok(d)
}

fn required<'py>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?
        .ok_or_else(|| PyKeyError::new_err(format!("the box set has no `{key}` array")))
}

/// A 2-D float32 array as (rows, width, row-major data); the Python side has converted dtypes.
fn read_matrix(value: &Bound<'_, PyAny>, key: &str) -> PyResult<(usize, usize, Vec<f32>)> {
    let array: PyReadonlyArray2<f32> = value
        .extract()
        .map_err(|_| PyValueError::new_err(format!("`{key}` must be a 2-D float32 array")))?;
    let view = array.as_array();
    let (rows, width) = view.dim();
    Ok((rows, width, view.iter().copied().collect()))
}

fn read_vector<T: numpy::Element + Copy>(
    value: &Bound<'_, PyAny>,
    key: &str,
    n: usize,
    dtype: &str,
) -> PyResult<Vec<T>> {
    let array: PyReadonlyArray1<T> = value
        .extract()
        .map_err(|_| PyValueError::new_err(format!("`{key}` must be a 1-D {dtype} array")))?;
    let v: Vec<T> = array.as_array().iter().copied().collect();
    if v.len() != n {
        return Err(PyValueError::new_err(format!(
            "`{key}` has {} entries; the box set has {n} boxes",
            v.len()
        )));
    }
    Ok(v)
}

fn read_head(d: &Bound<'_, PyDict>) -> PyResult<Option<ClassHead>> {
    let level = |prefix: &str| -> PyResult<Option<LinearHead>> {
        let (Some(w), Some(b)) = (
            d.get_item(format!("{prefix}.weight"))?,
            d.get_item(format!("{prefix}.bias"))?,
        ) else {
            return Ok(None);
        };
        let (classes, dim, weight) = read_matrix(&w, &format!("{prefix}.weight"))?;
        let bias = read_vector(&b, &format!("{prefix}.bias"), classes, "float32")?;
        Ok(Some(LinearHead {
            weight,
            bias,
            classes,
            dim,
        }))
    };
    let mut levels: Vec<LinearHead> = level("head")?.into_iter().collect();
    if levels.is_empty() {
        while let Some(l) = level(&format!("head.{}", levels.len()))? {
            levels.push(l);
        }
    }
    Ok((!levels.is_empty()).then_some(ClassHead { levels }))
}

/// The box set a dict describes, checking that its arrays agree.
pub(crate) fn from_dict(d: &Bound<'_, PyDict>) -> PyResult<BoxSet> {
    let (n, feature_dim, features) = read_matrix(&required(d, "features")?, "features")?;
    let (ln, num_classes, logits) = read_matrix(&required(d, "logits")?, "logits")?;
    if ln != n {
        return Err(PyValueError::new_err(format!(
            "`features` has {n} rows, `logits` {ln}: they must describe the same boxes"
        )));
    }
    let class_id: Vec<i64> = read_vector(&required(d, "class_id")?, "class_id", n, "int64")?;
    if let Some(bad) = class_id
        .iter()
        .find(|&&c| c < 0 || c as usize >= num_classes)
    {
        return Err(PyValueError::new_err(format!(
            "`class_id` holds {bad}, outside the {num_classes} classes of `logits`"
        )));
    }
    let class_id = class_id.into_iter().map(|c| c as usize).collect();
    let ints = |key: &str| -> PyResult<Option<Vec<i64>>> {
        d.get_item(key)?
            .map(|v| read_vector(&v, key, n, "int64"))
            .transpose()
    };
    let indices = |key: &str| -> PyResult<Option<Vec<usize>>> {
        let Some(values) = ints(key)? else {
            return Ok(None);
        };
        match values.iter().find(|&&v| v < 0) {
            Some(bad) => Err(PyValueError::new_err(format!(
                "`{key}` holds {bad}; it must be 0 or more"
            ))),
            None => Ok(Some(values.into_iter().map(|v| v as usize).collect())),
        }
    };
    let bbox = match d.get_item("bbox")? {
        Some(v) => {
            let (rows, width, flat) = read_matrix(&v, "bbox")?;
            if rows != n || width != 4 {
                return Err(PyValueError::new_err(format!(
                    "`bbox` has shape ({rows}, {width}); expected ({n}, 4)"
                )));
            }
            Some(
                flat.chunks_exact(4)
                    .map(|c| [c[0], c[1], c[2], c[3]])
                    .collect(),
            )
        }
        None => None,
    };
    let text = |key: &str| -> PyResult<String> {
        Ok(match d.get_item(key)? {
            Some(v) => v.extract()?,
            None => String::new(),
        })
    };
    let class_names: Vec<String> = match d.get_item("class_names")? {
        Some(v) => v.extract()?,
        None => (0..num_classes).map(|i| format!("class{i}")).collect(),
    };
    if class_names.len() != num_classes {
        return Err(PyValueError::new_err(format!(
            "{} class names for {num_classes} logits per box",
            class_names.len()
        )));
    }
    let detect_options = match d.get_item("detect_options")? {
        Some(v) if !v.is_none() => {
            let text: String = d
                .py()
                .import("json")?
                .call_method1("dumps", (v,))?
                .extract()?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| PyValueError::new_err(format!("`detect_options`: {e}")))?,
            )
        }
        _ => None,
    };
    let parts = BoxParts {
        features,
        feature_dim,
        logits,
        num_classes,
        class_id,
        label: ints("label")?,
        level: indices("level")?,
        confidence: d
            .get_item("confidence")?
            .map(|v| read_vector(&v, "confidence", n, "float32"))
            .transpose()?,
        bbox,
        image_index: indices("image_index")?,
        head: read_head(d)?,
        class_names,
        fingerprint: text("fingerprint")?,
        source: text("source")?,
        detect_options,
        // A dict holds the class-branch feature only; ROI sources come from box set files.
        feature_sources: Default::default(),
        roi: Vec::new(),
    };
    BoxSet::new(parts).map_err(|e| PyValueError::new_err(e.to_string()))
}

/// Reads a box set file (from `oodbox extract`) into a dict.
#[pyfunction]
pub fn load_boxes(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let set = py.detach(|| BoxSet::load(&path)).map_err(to_py)?;
    to_dict(py, set, true)
}

/// The name among `absent` that `name` looks like a misspelling of, by the rule box set files
/// are read with (`oodbox::data::boxset::misspelling_of`).
#[pyfunction]
pub fn misspelling_of(name: &str, absent: Vec<String>) -> Option<String> {
    let absent: Vec<&str> = absent.iter().map(String::as_str).collect();
    oodbox::data::boxset::misspelling_of(name, &absent).map(str::to_string)
}

/// Writes a box set dict as a box set file that `oodbox fit` and `oodbox score` read.
#[pyfunction]
pub fn save_boxes(py: Python<'_>, boxes: &Bound<'_, PyDict>, path: PathBuf) -> PyResult<()> {
    let set = from_dict(boxes)?;
    py.detach(|| set.save(&path)).map_err(to_py)
}
