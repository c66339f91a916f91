//! The safetensors files oodbox writes itself (box sets, scorers): one reader, whose typed
//! getters check dtypes and shapes and name the file and the tensor in their errors, and one
//! writer; and the metadata of a model's safetensors file.

use safetensors::tensor::{Dtype, TensorView};
use safetensors::{SafeTensorError, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::kind::FileKind;
use crate::error::{Error, Result};

/// A safetensors file read into memory.
pub(crate) struct TensorFile<'a> {
    path: &'a Path,
    file: SafeTensors<'a>,
    metadata: HashMap<String, String>,
}

/// A tensor's shape and values.
pub(crate) type Values<T> = (Vec<usize>, Vec<T>);

impl<'a> TensorFile<'a> {
    /// Parses `bytes`, read from `path`. Bytes that are not safetensors are
    /// [`Error::NotSafetensors`], or [`Error::WrongKind`] when the file is another kind than
    /// `expected` (an image, a model).
    pub(crate) fn parse(path: &'a Path, bytes: &'a [u8], expected: FileKind) -> Result<Self> {
        let not_safetensors = |e: SafeTensorError| {
            let err = Error::NotSafetensors {
                path: path.to_path_buf(),
                reason: e.to_string(),
            };
            super::kind::or_wrong_kind(path, expected, err)
        };
        let file = SafeTensors::deserialize(bytes).map_err(not_safetensors)?;
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(not_safetensors)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(TensorFile {
            path,
            file,
            metadata,
        })
    }

    /// The header's metadata (empty when it has none).
    pub(crate) fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    pub(crate) fn path(&self) -> &Path {
        self.path
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.file.tensor(name).is_ok()
    }

    /// The tensors' names, in no order.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.file.names()
    }

    /// [`Error::BadInput`] naming the file.
    pub(crate) fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadInput {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn view(&self, name: &str) -> Result<Option<TensorView<'a>>> {
        match self.file.tensor(name) {
            Ok(t) => Ok(Some(t)),
            Err(SafeTensorError::TensorNotFound(_)) => Ok(None),
            Err(e) => Err(self.bad(format!("tensor `{name}`: {e}"))),
        }
    }

    /// Tensor `name` as f32 (stored as F32, or F64 narrowed); `None` when absent.
    pub(crate) fn f32(&self, name: &str) -> Result<Option<Values<f32>>> {
        let Some(t) = self.view(name)? else {
            return Ok(None);
        };
        let values = match t.dtype() {
            Dtype::F32 => decode(t.data(), f32::from_le_bytes),
            Dtype::F64 => decode(t.data(), f64::from_le_bytes)
                .into_iter()
                .map(|x| x as f32)
                .collect(),
            other => return Err(self.bad(format!("tensor `{name}` is {other:?}; expected F32"))),
        };
        Ok(Some((t.shape().to_vec(), values)))
    }

    /// Tensor `name` as i64 (stored as I64, or I32 widened); `None` when absent.
    pub(crate) fn i64(&self, name: &str) -> Result<Option<Values<i64>>> {
        let Some(t) = self.view(name)? else {
            return Ok(None);
        };
        let values = match t.dtype() {
            Dtype::I64 => decode(t.data(), i64::from_le_bytes),
            Dtype::I32 => decode(t.data(), i32::from_le_bytes)
                .into_iter()
                .map(i64::from)
                .collect(),
            other => return Err(self.bad(format!("tensor `{name}` is {other:?}; expected I64"))),
        };
        Ok(Some((t.shape().to_vec(), values)))
    }

    /// Tensor `name`, stored as F64; `None` when absent.
    pub(crate) fn f64(&self, name: &str) -> Result<Option<Values<f64>>> {
        let Some(t) = self.view(name)? else {
            return Ok(None);
        };
        if t.dtype() != Dtype::F64 {
            return Err(self.bad(format!("tensor `{name}` is {:?}, expected F64", t.dtype())));
        }
        Ok(Some((
            t.shape().to_vec(),
            decode(t.data(), f64::from_le_bytes),
        )))
    }

    /// Checks a tensor's shape against `want`, where `None` is any size (`D` in the message).
    pub(crate) fn check_shape(
        &self,
        name: &str,
        shape: &[usize],
        want: &[Option<usize>],
    ) -> Result<()> {
        let fits = shape.len() == want.len()
            && shape
                .iter()
                .zip(want)
                .all(|(s, w)| w.is_none_or(|w| w == *s));
        if fits {
            return Ok(());
        }
        let want: Vec<String> = want
            .iter()
            .map(|w| w.map_or("D".to_string(), |w| w.to_string()))
            .collect();
        Err(self.bad(format!(
            "tensor `{name}` has shape {shape:?}; expected [{}]",
            want.join(", ")
        )))
    }
}

/// Reads the safetensors `__metadata__` map (empty when absent) of a file already mapped as
/// safetensors (a model's weights).
pub(crate) fn metadata(path: &Path) -> Result<HashMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: HashMap<String, String>,
    }
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    // The header length was validated when the file was mapped.
    let mut header = vec![0u8; u64::from_le_bytes(len) as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    serde_json::from_slice::<Header>(&header)
        .map(|h| h.metadata)
        .map_err(|e| Error::NotSafetensors {
            path: path.to_path_buf(),
            reason: format!("__metadata__ is not a map of strings: {e}"),
        })
}

/// Little-endian values of `N` bytes each.
fn decode<T, const N: usize>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|b| from(b.try_into().expect("chunks of N bytes")))
        .collect()
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
pub(crate) type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Writes `tensors` and `metadata` to `path` as safetensors, atomically.
pub(crate) fn write(
    path: &Path,
    tensors: &[Entry],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bad = |reason: String| Error::BadInput {
        path: path.to_path_buf(),
        reason,
    };
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| bad(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| bad(e.to_string()))?;
    super::write_atomically(path, &bytes)
}

pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Narrower and wider dtypes are read as the getter's type; a shape that does not fit
    /// and a wrong dtype are errors naming the file and the tensor.
    #[test]
    fn typed_getters_convert_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let tensors: Vec<Entry> = vec![
            ("a".into(), Dtype::F64, vec![2], f64_bytes(&[1.5, -2.0])),
            (
                "b".into(),
                Dtype::I32,
                vec![1, 2],
                7i32.to_le_bytes().repeat(2),
            ),
        ];
        write(&path, &tensors, HashMap::from([("k".into(), "v".into())])).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = TensorFile::parse(&path, &bytes, FileKind::BoxSet).unwrap();
        assert_eq!(file.metadata()["k"], "v");
        assert_eq!(file.f32("a").unwrap(), Some((vec![2], vec![1.5, -2.0])));
        assert_eq!(file.f64("a").unwrap(), Some((vec![2], vec![1.5, -2.0])));
        assert_eq!(file.i64("b").unwrap(), Some((vec![1, 2], vec![7, 7])));
        assert_eq!(file.f32("c").unwrap(), None);
        assert!(file.contains("b") && !file.contains("c"));
        file.check_shape("b", &[1, 2], &[Some(1), None]).unwrap();
        let err = file
            .check_shape("b", &[1, 2], &[Some(2), None])
            .unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("t.safetensors")
                && err.contains("tensor `b` has shape [1, 2]; expected [2, D]"),
            "{err}"
        );
        let err = file.f32("b").unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("t.safetensors") && err.contains("tensor `b` is I32; expected F32"),
            "{err}"
        );
    }
}
