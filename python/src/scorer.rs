//! A fitted scorer with its calibration: the CLI's scorer files, fitted or read from Python.

use numpy::PyArray1;
use oodbox::data::boxset::BoxSet;
use oodbox::error::Result;
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::ood::tail::TailOptions;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

use crate::{boxes, threads, to_py};

#[pyclass(module = "oodbox._oodbox", frozen)]
pub struct NativeScorer {
    inner: FittedScorer,
}

/// Where the calibration boxes come from.
#[derive(FromPyObject)]
pub enum Calibration<'py> {
    Boxes(Bound<'py, PyDict>),
    Fraction(f64),
}

/// A tail's quantile, fewest points and bounded flag, each `None` for `oodbox fit`'s default.
type TailArgs = (Option<f64>, Option<usize>, Option<bool>);

#[pymethods]
impl NativeScorer {
    /// Fits as `oodbox fit` does: known objects only, calibration boxes given or a seeded
    /// hold-out of whole images.
    #[staticmethod]
    #[allow(clippy::too_many_arguments)]
    fn fit(
        py: Python<'_>,
        kind: &str,
        shaping: Option<&str>,
        params: Vec<(String, String)>,
        boxes: &Bound<'_, PyDict>,
        calibration: Calibration<'_>,
        seed: u64,
        alpha: f64,
        min_class_calibration: usize,
        tail: Option<TailArgs>,
        outliers: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let all = boxes::from_dict(boxes)?.known_objects();
        let (fit, calibration) = match calibration {
            Calibration::Boxes(d) => (all, boxes::from_dict(&d)?.known_objects()),
            Calibration::Fraction(f) if f > 0.0 && f < 1.0 => all.split_holdout(f, seed),
            Calibration::Fraction(f) => {
                return Err(PyValueError::new_err(format!(
                    "calibration_fraction must lie in (0, 1), got {f}"
                )))
            }
        };
        if fit.is_empty() {
            return Err(PyValueError::new_err("no ID boxes to fit on"));
        }
        let mut options = FitOptions::default();
        options.alpha = alpha;
        options.min_class_boxes = min_class_calibration;
        options.tail = tail.map(|(quantile, min_points, bounded)| {
            let default = TailOptions::default();
            TailOptions {
                quantile: quantile.unwrap_or(default.quantile),
                min_points: min_points.unwrap_or(default.min_points),
                bounded: bounded.unwrap_or(default.bounded),
            }
        });
        // The scorer picks the outlier boxes it trains against (`safe`'s `surrogate`).
        options.outliers = outliers.map(|d| boxes::from_dict(&d)).transpose()?;
        let inner = py
            .detach(|| {
                threads::install(|| {
                    FittedScorer::fit(kind, shaping, &params, &fit, &calibration, &options)
                })
            })
            .map_err(to_py)?;
        Ok(NativeScorer { inner })
    }

    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| FittedScorer::load(&path)).map_err(to_py)?;
        Ok(NativeScorer { inner })
    }

    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).map_err(to_py)
    }

    /// Scores a box set dict: score, p_value, confidence and is_ood arrays.
    #[pyo3(signature = (boxes, alpha=None))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        boxes: &Bound<'py, PyDict>,
        alpha: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let set: BoxSet = boxes::from_dict(boxes)?;
        let verdicts = py
            .detach(|| -> Result<_> { threads::install(|| self.inner.score(&set, alpha)) })
            .map_err(to_py)?;
        let out = PyDict::new(py);
        let column = |f: fn(&oodbox::ood::fitted::BoxOod) -> f64| {
            PyArray1::from_vec(py, verdicts.iter().map(f).collect())
        };
        out.set_item("score", column(|v| v.score))?;
        out.set_item("p_value", column(|v| v.p_value))?;
        out.set_item("confidence", column(|v| v.confidence))?;
        let flags: Vec<bool> = verdicts.iter().map(|v| v.is_ood).collect();
        out.set_item("is_ood", PyArray1::from_vec(py, flags))?;
        // True where the p-value comes from the scorer's tail model (`fit --tail`).
        let tail: Vec<bool> = verdicts.iter().map(|v| v.p_value_extrapolated).collect();
        out.set_item("p_value_extrapolated", PyArray1::from_vec(py, tail))?;
        Ok(out)
    }

    /// A copy calibrated anew on a box set dict, as `oodbox recalibrate` (known objects only).
    fn recalibrate(&self, py: Python<'_>, calibration: &Bound<'_, PyDict>) -> PyResult<Self> {
        let set = boxes::from_dict(calibration)?.known_objects();
        let inner = py
            .detach(|| -> Result<_> {
                let mut inner = self.inner.try_clone()?;
                threads::install(|| inner.recalibrate(&set))?;
                Ok(inner)
            })
            .map_err(to_py)?;
        Ok(NativeScorer { inner })
    }

    #[getter]
    fn flagged_share_spread(&self) -> f64 {
        self.inner.flagged_share_spread()
    }

    #[getter]
    fn name(&self) -> String {
        self.inner.name()
    }

    #[getter]
    fn kind(&self) -> &str {
        self.inner.kind()
    }

    #[getter]
    fn alpha(&self) -> f64 {
        self.inner.alpha()
    }

    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.inner.class_names().to_vec()
    }

    #[getter]
    fn fingerprint(&self) -> &str {
        self.inner.fingerprint()
    }

    #[getter]
    fn detect_options<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.inner
            .detect_options()
            .map(|o| boxes::json_to_py(py, o))
            .transpose()
    }
}
