//! `oodbox._oodbox`: the native half of the `oodbox` Python package. The public API, its
//! docstrings and argument checks live in `python/oodbox/`; this module converts between numpy
//! and the library's types and runs the library with the GIL released, on a thread pool sized
//! by `set_num_threads`.

mod boxes;
mod detector;
mod scorer;
mod threads;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError};
use pyo3::prelude::*;

create_exception!(
    _oodbox,
    OodboxError,
    PyException,
    "An error of the oodbox library; the message names the file or item at fault."
);

/// A library error as a Python exception with the library's message: `FileNotFoundError` for a
/// missing file, `OodboxError` otherwise.
pub(crate) fn to_py(error: oodbox::error::Error) -> PyErr {
    let message = error.to_string();
    match &error {
        oodbox::error::Error::Io { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            PyFileNotFoundError::new_err(message)
        }
        _ => OodboxError::new_err(message),
    }
}

#[pymodule]
fn _oodbox(m: &Bound<'_, PyModule>) -> PyResult<()> {
    threads::fork_safe_candle();
    m.add("OodboxError", m.py().get_type::<OodboxError>())?;
    m.add_class::<detector::NativeDetector>()?;
    m.add_class::<scorer::NativeScorer>()?;
    m.add_function(wrap_pyfunction!(boxes::load_boxes, m)?)?;
    m.add_function(wrap_pyfunction!(boxes::save_boxes, m)?)?;
    m.add_function(wrap_pyfunction!(boxes::misspelling_of, m)?)?;
    m.add_function(wrap_pyfunction!(threads::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads::get_num_threads, m)?)?;
    Ok(())
}
