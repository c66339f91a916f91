//! The zip side of a `torch.save` file: finding `<archive>/data.pkl`, reading storages
//! `<archive>/data/<key>` after checking their declared sizes, and cutting tensor views out of
//! them. Every size comes from the file and is checked before anything is allocated: a storage
//! may not declare more bytes than its entry holds or than the file has, a view may not reach
//! past its storage, and all views together may not declare more bytes than the zip holds.

use candle_core::{DType, Device, Tensor};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::walk::{TensorSpec, TorchDType};
use crate::error::{Error, Result};

/// The largest `data.pkl` read (a trained ultralytics pickle is 100–300 KB; a `last.pt` with
/// optimizer state of a large model a few MB).
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;

pub struct Archive {
    path: PathBuf,
    zip: zip::ZipArchive<File>,
    /// The one top folder of the zip (`archive`, `best`, ...).
    prefix: String,
    file_len: u64,
    /// The uncompressed size of all entries.
    total_size: u64,
    big_endian: bool,
}

impl Archive {
    pub fn open(path: &Path) -> Result<Archive> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let zip = zip::ZipArchive::new(file).map_err(|e| {
            bad(
                path,
                format!("not a readable torch.save zip (truncated or corrupt: {e})"),
            )
        })?;
        let prefix = pickle_prefix(&zip).ok_or_else(|| {
            bad(
                path,
                "no `<archive>/data.pkl` in the zip: not a torch.save checkpoint",
            )
        })?;
        let mut archive = Archive {
            path: path.to_path_buf(),
            zip,
            prefix,
            file_len,
            total_size: 0,
            big_endian: false,
        };
        archive.total_size = archive.entry_sizes()?;
        archive.big_endian = archive.byteorder()?;
        Ok(archive)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes of `data.pkl`.
    pub fn pickle(&mut self) -> Result<Vec<u8>> {
        let name = format!("{}/data.pkl", self.prefix);
        self.entry(&name, MAX_PICKLE_BYTES.min(self.file_len), "data.pkl")
    }

    /// The sum of the entries' uncompressed sizes.
    fn entry_sizes(&mut self) -> Result<u64> {
        let mut total = 0u64;
        let path = self.path.clone();
        for i in 0..self.zip.len() {
            let entry = self.zip.by_index_raw(i).map_err(|e| zip_error(&path, e))?;
            total = total.saturating_add(entry.size());
        }
        Ok(total)
    }

    /// Whether the storages are big-endian (`<archive>/byteorder` says `big`).
    fn byteorder(&mut self) -> Result<bool> {
        let name = format!("{}/byteorder", self.prefix);
        if self.zip.index_for_name(&name).is_none() {
            return Ok(false);
        }
        let order = self.entry(&name, 16, "byteorder")?;
        match order.trim_ascii() {
            b"little" => Ok(false),
            b"big" => Ok(true),
            other => Err(bad(
                &self.path,
                format!(
                    "byteorder is {:?}, not little or big",
                    String::from_utf8_lossy(other)
                ),
            )),
        }
    }

    /// A whole entry of at most `limit` bytes.
    fn entry(&mut self, name: &str, limit: u64, what: &str) -> Result<Vec<u8>> {
        let path = self.path.clone();
        let mut entry = match self.zip.by_name(name) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(bad(&path, format!("{what} is absent from the zip")))
            }
            Err(e) => return Err(zip_error(&path, e)),
        };
        if entry.size() > limit {
            return Err(bad(
                &path,
                format!(
                    "{what} is {} bytes, more than the {limit} read",
                    entry.size()
                ),
            ));
        }
        let mut data = Vec::with_capacity(usize::try_from(entry.size()).unwrap_or(0));
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(&path, format!("{what} cannot be read ({e})")))?;
        Ok(data)
    }

    /// The first `bytes` bytes of storage `key`, which the pickle declares to be that large.
    pub fn storage(&mut self, key: &str, bytes: u64) -> Result<Vec<u8>> {
        let path = self.path.clone();
        if key.is_empty() || key.contains(['/', '\\']) || key.contains("..") {
            return Err(bad(
                &path,
                format!("storage key {key:?} is not a plain name"),
            ));
        }
        let name = format!("{}/data/{key}", self.prefix);
        let mut entry = match self.zip.by_name(&name) {
            Ok(entry) => entry,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(bad(
                    &path,
                    format!("storage `data/{key}` is absent from the zip"),
                ))
            }
            Err(e) => return Err(zip_error(&path, e)),
        };
        if bytes > entry.size() || bytes > self.file_len {
            return Err(bad(
                &path,
                format!(
                    "storage `data/{key}` declares {bytes} bytes, its entry holds {} (the file {})",
                    entry.size(),
                    self.file_len
                ),
            ));
        }
        // Bounded by the entry and the file, checked above.
        let len = usize::try_from(bytes).map_err(|_| bad(&path, "storage too large"))?;
        let mut data = vec![0u8; len];
        entry
            .read_exact(&mut data)
            .map_err(|e| bad(&path, format!("storage `data/{key}` is truncated ({e})")))?;
        Ok(data)
    }

    /// Checks every view against its storage, and all of them together against the zip's
    /// size, before any storage is read.
    pub fn check_views(&self, specs: &[(String, TensorSpec)]) -> Result<()> {
        let mut total = 0u64;
        for (name, spec) in specs {
            let bytes = view_bytes(spec)
                .map_err(|reason| bad(&self.path, format!("tensor `{name}`: {reason}")))?;
            total = total.saturating_add(bytes);
        }
        if total > self.total_size {
            return Err(bad(
                &self.path,
                format!(
                    "its tensors declare {total} bytes, more than the {} bytes the zip holds",
                    self.total_size
                ),
            ));
        }
        Ok(())
    }

    /// The tensor a view describes, on the CPU: floats as F32, integers as I64/I32/I16/U8.
    pub fn decode(&self, name: &str, storage: &[u8], spec: &TensorSpec) -> Result<Tensor> {
        let fail = |reason: String| bad(&self.path, format!("tensor `{name}`: {reason}"));
        let mut data = gather(storage, spec).map_err(fail)?;
        if self.big_endian {
            for element in data.chunks_exact_mut(spec.dtype.size()) {
                element.reverse();
            }
        }
        to_tensor(&data, spec.dtype, &spec.size).map_err(|e| fail(e.to_string()))
    }
}

/// The top folder holding `data.pkl` (torch writes exactly one).
fn pickle_prefix(zip: &zip::ZipArchive<File>) -> Option<String> {
    zip.file_names().find_map(|name| {
        let name = name.ok()?;
        let (prefix, file) = name.split_once('/')?;
        (file == "data.pkl" && !prefix.is_empty()).then(|| prefix.to_string())
    })
}

/// The bytes a view's elements take, after checking that it stays inside its storage.
fn view_bytes(spec: &TensorSpec) -> std::result::Result<u64, String> {
    if spec.size.len() != spec.stride.len() {
        return Err(format!(
            "size {:?} and stride {:?} differ in rank",
            spec.size, spec.stride
        ));
    }
    let item = spec.dtype.size() as u64;
    let overflow = || format!("shape {:?} is absurd", spec.size);
    let elements = spec
        .size
        .iter()
        .try_fold(1u64, |n, d| n.checked_mul(*d as u64))
        .ok_or_else(overflow)?;
    let bytes = elements.checked_mul(item).ok_or_else(overflow)?;
    if elements == 0 {
        return Ok(0);
    }
    let last = spec
        .size
        .iter()
        .zip(&spec.stride)
        .try_fold(spec.offset, |at, (d, s)| {
            (*d as u64 - 1)
                .checked_mul(*s as u64)
                .and_then(|x| at.checked_add(x))
        })
        .ok_or_else(overflow)?;
    let end = last
        .checked_add(1)
        .and_then(|e| e.checked_mul(item))
        .ok_or_else(overflow)?;
    if end > spec.storage_bytes || bytes > spec.storage_bytes {
        return Err(format!(
            "a {} view of shape {:?} (offset {}, stride {:?}) is larger than its storage \
             `data/{}` of {} bytes",
            spec.dtype.name(),
            spec.size,
            spec.offset,
            spec.stride,
            spec.key,
            spec.storage_bytes
        ));
    }
    Ok(bytes)
}

/// The view's elements, densely in row-major order (checked by [`view_bytes`] first).
fn gather(storage: &[u8], spec: &TensorSpec) -> std::result::Result<Vec<u8>, String> {
    // With the view inside a storage this long, no index below can overflow.
    view_bytes(spec)?;
    if (storage.len() as u64) < spec.storage_bytes {
        return Err(format!(
            "storage `data/{}` is shorter than declared",
            spec.key
        ));
    }
    let item = spec.dtype.size();
    let elements: usize = spec.size.iter().product();
    let out_of_storage = || format!("view outside its storage of {} bytes", storage.len());
    let offset = usize::try_from(spec.offset).map_err(|_| out_of_storage())?;
    if is_contiguous(&spec.size, &spec.stride) {
        let start = offset.checked_mul(item).ok_or_else(out_of_storage)?;
        let end = start
            .checked_add(elements * item)
            .ok_or_else(out_of_storage)?;
        return storage
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(out_of_storage);
    }
    let mut out = Vec::with_capacity(elements * item);
    let mut index = vec![0usize; spec.size.len()];
    for _ in 0..elements {
        let at: usize = index
            .iter()
            .zip(&spec.stride)
            .map(|(i, s)| i * s)
            .sum::<usize>()
            + offset;
        let bytes = storage
            .get(at * item..(at + 1) * item)
            .ok_or_else(out_of_storage)?;
        out.extend_from_slice(bytes);
        // Advance the row-major multi-index, last dimension fastest.
        for (i, d) in index.iter_mut().zip(&spec.size).rev() {
            *i += 1;
            if *i < *d {
                break;
            }
            *i = 0;
        }
    }
    Ok(out)
}

/// Whether the strides are those of a dense row-major tensor (dimensions of size 1 aside).
fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (d, s) in size.iter().zip(stride).rev() {
        if *d != 1 && *s != expected {
            return false;
        }
        expected = expected.saturating_mul(*d);
    }
    true
}

/// A Candle tensor from dense little-endian elements: floats converted to F32, `int8` widened
/// to I16 and `bool` read as U8 (Candle has neither).
fn to_tensor(data: &[u8], dtype: TorchDType, shape: &[usize]) -> candle_core::Result<Tensor> {
    let cpu = &Device::Cpu;
    let raw = |d: DType| Tensor::from_raw_buffer(data, d, shape, cpu);
    match dtype {
        TorchDType::F16 => raw(DType::F16)?.to_dtype(DType::F32),
        TorchDType::BF16 => raw(DType::BF16)?.to_dtype(DType::F32),
        TorchDType::F64 => raw(DType::F64)?.to_dtype(DType::F32),
        TorchDType::F32 => raw(DType::F32),
        TorchDType::I64 => raw(DType::I64),
        TorchDType::I32 => raw(DType::I32),
        TorchDType::I16 => raw(DType::I16),
        TorchDType::U8 | TorchDType::Bool => raw(DType::U8),
        TorchDType::I8 => {
            let wide: Vec<i16> = data.iter().map(|b| i16::from(*b as i8)).collect();
            Tensor::from_vec(wide, shape, cpu)
        }
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadModel {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn zip_error(path: &Path, e: zip::result::ZipError) -> Error {
    bad(path, format!("cannot read the torch.save zip ({e})"))
}
