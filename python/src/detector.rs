//! A detector, alone or paired with a scorer, that takes numpy images or paths.

use numpy::{
    PyArray1, PyArrayDescrMethods, PyReadonlyArray3, PyUntypedArray, PyUntypedArrayMethods,
};
use oodbox::core::settings::{Applies, InputSize};
use oodbox::data::boxset::BoxSet;
use oodbox::detect::image_io::load_rgb;
use oodbox::detect::{load_detector, Detector};
use oodbox::error::Result;
use oodbox::ood::fitted::FittedScorer;
use oodbox::pipeline::OodDetector;
use oodbox::BoxRecord;
use oodbox::DetectOptions;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;

use crate::{boxes, threads, to_py};

enum Inner {
    Plain(Box<dyn Detector>, DetectOptions),
    Ood(Box<OodDetector>),
}

/// Inputs that failed: (position in the batch, message).
type Failed = Vec<(usize, String)>;

#[pyclass(module = "oodbox._oodbox", frozen)]
pub struct NativeDetector {
    inner: Inner,
}

/// Detection settings from Python; `None` keeps the default (the scorer's, the checkpoint's,
/// then ultralytics `predict`'s).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct Settings {
    conf: Option<f32>,
    iou: Option<f32>,
    /// (height, width), as ultralytics and the command line take it.
    imgsz: Option<(u32, u32)>,
    max_det: Option<usize>,
    agnostic_nms: Option<bool>,
}

impl Settings {
    /// Sets what was given, refusing a setting the detector does not read (as the CLI does).
    fn apply(&self, options: &mut DetectOptions, detector: &dyn Detector) -> PyResult<()> {
        let uses = detector.settings_use();
        let given = [
            ("iou", self.iou.is_some(), uses.iou),
            ("agnostic_nms", self.agnostic_nms.is_some(), uses.agnostic),
            ("imgsz", self.imgsz.is_some(), uses.imgsz),
        ];
        for (name, set, applies) in given {
            if let (true, Applies::No { why }) = (set, applies) {
                return Err(PyValueError::new_err(format!(
                    "{name} does not apply to a {} model ({why})",
                    detector.family()
                )));
            }
        }
        options.conf = self.conf.unwrap_or(options.conf);
        options.nms.iou = self.iou.unwrap_or(options.nms.iou);
        if let Some((height, width)) = self.imgsz {
            options.imgsz = InputSize { width, height };
        }
        options.max_det = self.max_det.unwrap_or(options.max_det);
        options.nms.agnostic = self.agnostic_nms.unwrap_or(options.nms.agnostic);
        Ok(())
    }
}

/// An image given from Python: decoded here or read from a file without the GIL.
enum Input {
    Pixels(image::RgbImage),
    Path(PathBuf),
}

impl Input {
    fn extract(item: &Bound<'_, PyAny>, index: usize) -> PyResult<Self> {
        if let Ok(array) = item.cast::<PyUntypedArray>() {
            return rgb_image(array, index).map(Input::Pixels);
        }
        let os = item.py().import("os")?;
        match os.call_method1("fspath", (item,)) {
            Ok(path) => Ok(Input::Path(path.extract()?)),
            Err(_) => Err(PyTypeError::new_err(format!(
                "image {index}: expected an RGB uint8 numpy array (H, W, 3) or a path, got {}",
                item.get_type().name()?
            ))),
        }
    }

    fn load(self) -> Result<image::RgbImage> {
        match self {
            Input::Pixels(image) => Ok(image),
            Input::Path(path) => load_rgb(&path),
        }
    }
}

/// Copies an `(H, W, 3)` uint8 array (any strides) into an image, refusing other dtypes and
/// shapes with what was given.
fn rgb_image(array: &Bound<'_, PyUntypedArray>, index: usize) -> PyResult<image::RgbImage> {
    let dtype = array.dtype();
    if !dtype.is_equiv_to(&numpy::dtype::<u8>(array.py())) {
        return Err(PyTypeError::new_err(format!(
            "image {index}: expected a uint8 RGB array, got dtype {}; convert it, e.g. \
             `(image * 255).clip(0, 255).astype(np.uint8)` for floats in [0, 1]",
            dtype.str()?
        )));
    }
    let shape = array.shape();
    if shape.len() != 3 || shape[2] != 3 || shape[0] == 0 || shape[1] == 0 {
        return Err(PyValueError::new_err(format!(
            "image {index}: expected shape (H, W, 3) with RGB channels last, got {shape:?}"
        )));
    }
    let (h, w) = (shape[0], shape[1]);
    if h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(PyValueError::new_err(format!(
            "image {index}: {w}x{h} is too large"
        )));
    }
    let typed: PyReadonlyArray3<u8> = array.extract()?;
    let view = typed.as_array();
    let pixels = match view.as_slice() {
        Some(contiguous) => contiguous.to_vec(),
        None => view.iter().copied().collect(),
    };
    Ok(image::RgbImage::from_raw(w as u32, h as u32, pixels).expect("H·W·3 bytes"))
}

impl NativeDetector {
    fn detector(&self) -> &dyn Detector {
        match &self.inner {
            Inner::Plain(d, _) => d.as_ref(),
            Inner::Ood(o) => o.detector(),
        }
    }

    fn detect_options(&self) -> &DetectOptions {
        match &self.inner {
            Inner::Plain(_, options) => options,
            Inner::Ood(o) => &o.options,
        }
    }

    /// The settings the detector reads, as box sets record them.
    fn used_options(&self) -> oodbox::UsedOptions {
        let uses = self.detector().settings_use();
        self.detect_options().used_by(&uses)
    }

    /// Loads every input in order, then detects on them in one [`Detector::detect_batch`] call
    /// (the YOLO families run images of one input size through the network together). An input
    /// that fails to load stops the batch, or with `skip` is recorded as (index, message) and
    /// skipped; should the batch fail, it is run image by image to find the one at fault.
    fn run(&self, inputs: Vec<Input>, skip: bool) -> Result<(Vec<(usize, BoxRecord)>, Failed)> {
        let (mut images, mut positions, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for (i, input) in inputs.into_iter().enumerate() {
            match input.load() {
                Ok(image) => {
                    images.push(image);
                    positions.push(i);
                }
                Err(e) if skip => failed.push((i, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        let (d, options) = (self.detector(), self.detect_options());
        let per_image = match d.detect_batch(&images, options) {
            Ok(per_image) => per_image,
            Err(_) if skip => {
                let mut per_image = Vec::with_capacity(images.len());
                for (image, &i) in images.iter().zip(&positions) {
                    per_image.push(d.detect(image, options).unwrap_or_else(|e| {
                        failed.push((i, e.to_string()));
                        Vec::new()
                    }));
                }
                failed.sort_by_key(|(i, _)| *i);
                per_image
            }
            Err(e) => return Err(e),
        };
        let records = positions
            .into_iter()
            .zip(per_image)
            .flat_map(|(i, boxes)| boxes.into_iter().map(move |b| (i, b)))
            .collect();
        Ok((records, failed))
    }
}

fn new_detector(
    model: PathBuf,
    nms_free: bool,
    names: Option<Vec<String>>,
) -> Result<Box<dyn Detector>> {
    let mut detector = load_detector(&model, &candle_core::Device::Cpu)?;
    if nms_free {
        detector.set_nms_free(true)?;
    }
    if let Some(names) = names {
        detector.set_class_names(names)?;
    }
    Ok(detector)
}

#[pymethods]
impl NativeDetector {
    #[staticmethod]
    #[pyo3(signature = (model, settings, nms_free, names, scorer=None, alpha=None))]
    fn load(
        py: Python<'_>,
        model: PathBuf,
        settings: Settings,
        nms_free: bool,
        names: Option<Vec<String>>,
        scorer: Option<PathBuf>,
        alpha: Option<f64>,
    ) -> PyResult<Self> {
        let inner = py.detach(|| -> PyResult<Inner> {
            let detector = new_detector(model, nms_free, names).map_err(to_py)?;
            match scorer {
                None => {
                    let mut options = DetectOptions::default();
                    if let Some(side) = detector.trained_imgsz() {
                        options.imgsz = InputSize::square(side);
                    }
                    settings.apply(&mut options, detector.as_ref())?;
                    Ok(Inner::Plain(detector, options))
                }
                Some(path) => {
                    let scorer = FittedScorer::load(&path).map_err(to_py)?;
                    let mut o = OodDetector::new(detector, scorer).map_err(to_py)?;
                    let mut options = o.options.clone();
                    settings.apply(&mut options, o.detector())?;
                    o.options = options;
                    o.alpha = alpha.unwrap_or(o.alpha);
                    Ok(Inner::Ood(Box::new(o)))
                }
            }
        });
        Ok(NativeDetector { inner: inner? })
    }

    /// Detects on a list of images (arrays or paths); returns (detections dict, failed).
    fn detect_batch<'py>(
        &self,
        py: Python<'py>,
        images: &Bound<'py, PyList>,
        skip_errors: bool,
    ) -> PyResult<(Bound<'py, PyDict>, Failed)> {
        let inputs = images
            .iter()
            .enumerate()
            .map(|(i, item)| Input::extract(&item, i))
            .collect::<PyResult<Vec<_>>>()?;
        let (records, failed, verdicts) = py
            .detach(|| {
                threads::install(|| {
                    let (records, failed) = self.run(inputs, skip_errors)?;
                    let verdicts = match &self.inner {
                        Inner::Ood(o) => {
                            Some(o.score(records.iter().map(|(_, r)| r.clone()).collect())?)
                        }
                        Inner::Plain(..) => None,
                    };
                    Ok((records, failed, verdicts))
                })
            })
            .map_err(to_py)?;
        let d = self.detector();
        let anchors: Vec<u32> = records.iter().map(|(_, r)| r.anchor).collect();
        let mut set = BoxSet::from_records(
            records.iter().map(|(i, r)| (*i, r)),
            d.head(),
            d.class_names(),
            d.fingerprint(),
            "",
        )
        .map_err(to_py)?;
        set.set_detect_options(Some(self.used_options()))
            .map_err(to_py)?;
        let out = boxes::to_dict(py, set, false)?;
        out.set_item("anchor", PyArray1::from_vec(py, anchors))?;
        if let Some(verdicts) = verdicts {
            let column = |f: fn(&oodbox::pipeline::Detection) -> f64| {
                PyArray1::from_vec(py, verdicts.iter().map(f).collect())
            };
            out.set_item("score", column(|d| d.ood.score))?;
            out.set_item("p_value", column(|d| d.ood.p_value))?;
            out.set_item("ood_confidence", column(|d| d.ood.confidence))?;
            let flags: Vec<bool> = verdicts.iter().map(|d| d.ood.is_ood).collect();
            out.set_item("is_ood", PyArray1::from_vec(py, flags))?;
            // True where the p-value comes from the scorer's tail model (`fit --tail`).
            let tail: Vec<bool> = verdicts
                .iter()
                .map(|d| d.ood.p_value_extrapolated)
                .collect();
            out.set_item("p_value_extrapolated", PyArray1::from_vec(py, tail))?;
        }
        Ok((out, failed))
    }

    #[getter]
    fn class_names(&self) -> Vec<String> {
        self.detector().class_names().to_vec()
    }

    #[getter]
    fn fingerprint(&self) -> String {
        self.detector().fingerprint().to_string()
    }

    #[getter]
    fn family(&self) -> &'static str {
        self.detector().family()
    }

    /// The classifier head as a box set dict fragment (`head.weight`, `head.bias`, ...).
    #[getter]
    fn head<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = self.detector();
        let set = BoxSet::from_records([], d.head(), d.class_names(), d.fingerprint(), "")
            .map_err(to_py)?;
        let all = boxes::to_dict(py, set, true)?;
        let head = PyDict::new(py);
        for (k, v) in all.iter() {
            if k.extract::<String>()?.starts_with("head") {
                head.set_item(k, v)?;
            }
        }
        Ok(head)
    }

    #[getter]
    fn options<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        boxes::json_to_py(py, &self.used_options())
    }

    #[getter]
    fn scorer(&self) -> Option<String> {
        match &self.inner {
            Inner::Ood(o) => Some(o.scorer().name()),
            Inner::Plain(..) => None,
        }
    }

    #[getter]
    fn alpha(&self) -> Option<f64> {
        match &self.inner {
            Inner::Ood(o) => Some(o.alpha),
            Inner::Plain(..) => None,
        }
    }

    /// Which detection settings differ from those the scorer was calibrated on, if any.
    #[getter]
    fn settings_warning(&self) -> Option<String> {
        match &self.inner {
            Inner::Ood(o) => o.settings_warning(),
            Inner::Plain(..) => None,
        }
    }
}
