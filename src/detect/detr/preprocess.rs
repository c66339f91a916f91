//! `DetrImageProcessor` (the PIL one): resize so the shortest edge is 800 and the longest at
//! most 1333 with Pillow's bilinear filter, rescale by 1/255, ImageNet normalisation. One image
//! needs no padding, so the pixel mask is all ones and is not built.

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde_json::Value;
use std::path::Path;

use crate::error::{Error, Result};

/// How the processor sizes its output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Size {
    /// Keep the aspect ratio: shortest edge to this, longest at most `longest`.
    Shortest { shortest: u32, longest: Option<u32> },
    /// Stretch to exactly this (width, height).
    Exact { width: u32, height: u32 },
}

#[derive(Clone, Debug, PartialEq)]
pub struct DetrImageProcessor {
    pub size: Option<Size>,
    pub rescale_factor: Option<f32>,
    pub mean_std: Option<([f32; 3], [f32; 3])>,
}

impl Default for DetrImageProcessor {
    fn default() -> Self {
        DetrImageProcessor {
            size: Some(Size::Shortest {
                shortest: 800,
                longest: Some(1333),
            }),
            rescale_factor: Some(1.0 / 255.0),
            mean_std: Some(([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
        }
    }
}

impl DetrImageProcessor {
    /// Reads `preprocessor_config.json`; absent fields take transformers' defaults.
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadModel {
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let default = Self::default();
        let flag = |key: &str| -> Result<bool> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(true),
                Some(v) => v
                    .as_bool()
                    .ok_or_else(|| bad(format!("`{key}` must be true or false, got {v}"))),
            }
        };
        // Saturating, so that a huge size meets the size check instead of wrapping.
        let uint = |v: &Value| {
            v.as_u64()
                .filter(|&n| n > 0)
                .map(|n| n.min(u32::MAX as u64) as u32)
        };
        let resample = json.get("resample").and_then(Value::as_u64).unwrap_or(2);
        if resample != 2 {
            return Err(bad(format!(
                "`resample` {resample} is not supported (only 2, PIL bilinear)"
            )));
        }
        let max_size = json.get("max_size").and_then(uint);
        let size = match json.get("size") {
            _ if !flag("do_resize")? => None,
            None | Some(Value::Null) => default.size,
            Some(v) => Some(if let Some(n) = uint(v) {
                Size::Shortest {
                    shortest: n,
                    longest: max_size,
                }
            } else if let Some(n) = v.get("shortest_edge").and_then(uint) {
                Size::Shortest {
                    shortest: n,
                    longest: v.get("longest_edge").and_then(uint),
                }
            } else if let (Some(height), Some(width)) = (
                v.get("height").and_then(uint),
                v.get("width").and_then(uint),
            ) {
                Size::Exact { width, height }
            } else {
                return Err(bad(format!(
                    "`size` {v} is not supported (shortest_edge/longest_edge or height/width)"
                )));
            }),
        };
        let rescale_factor = if flag("do_rescale")? {
            match json.get("rescale_factor") {
                None | Some(Value::Null) => default.rescale_factor,
                Some(v) => Some(
                    v.as_f64()
                        .ok_or_else(|| bad(format!("`rescale_factor` must be a number, got {v}")))?
                        as f32,
                ),
            }
        } else {
            None
        };
        let triple = |key: &str, fallback: [f32; 3]| -> Result<[f32; 3]> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(fallback),
                Some(v) => v
                    .as_array()
                    .filter(|a| a.len() == 3)
                    .and_then(|a| {
                        let f: Option<Vec<f32>> =
                            a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect();
                        f.map(|f| [f[0], f[1], f[2]])
                    })
                    .ok_or_else(|| bad(format!("`{key}` must be 3 numbers, got {v}"))),
            }
        };
        let mean_std = match (flag("do_normalize")?, default.mean_std) {
            (true, Some((mean, std))) => {
                Some((triple("image_mean", mean)?, triple("image_std", std)?))
            }
            _ => None,
        };
        let processor = DetrImageProcessor {
            size,
            rescale_factor,
            mean_std,
        };
        processor.check().map_err(bad)?;
        Ok(processor)
    }

    /// Refuses sizes of 0 or over the input-size limit (a resize to them would not fit in
    /// memory) and factors that would make the input infinite or NaN.
    fn check(&self) -> std::result::Result<(), String> {
        let limit = crate::limits::Limits::from_env()
            .map_err(|e| e.to_string())?
            .max_imgsz;
        let sides = match self.size {
            Some(Size::Shortest { shortest, longest }) => vec![Some(shortest), longest],
            Some(Size::Exact { width, height }) => vec![Some(width), Some(height)],
            None => Vec::new(),
        };
        if let Some(side) = sides.into_iter().flatten().find(|&s| s == 0 || s > limit) {
            return Err(format!(
                "`size` {side} is outside [1, {limit}] (set {} to raise the limit)",
                crate::limits::MAX_IMGSZ_VAR
            ));
        }
        if self.rescale_factor.is_some_and(|f| !f.is_finite()) {
            return Err("`rescale_factor` is not finite".into());
        }
        if let Some((mean, std)) = self.mean_std {
            if mean.iter().chain(&std).any(|v| !v.is_finite()) || std.contains(&0.0) {
                return Err(format!(
                    "`image_mean` {mean:?} and `image_std` {std:?} must be finite, with no std of 0"
                ));
            }
        }
        Ok(())
    }

    /// The (width, height) an image of `(width, height)` is resized to (transformers'
    /// `get_size_with_aspect_ratio`, including its float rounding).
    pub fn output_size(&self, (width, height): (u32, u32)) -> (u32, u32) {
        let (shortest, longest) = match self.size {
            None => return (width, height),
            Some(Size::Exact { width, height }) => return (width, height),
            Some(Size::Shortest { shortest, longest }) => (shortest, longest),
        };
        let (w, h) = (width as f64, height as f64);
        let mut size = shortest as f64;
        let mut raw = None;
        if let Some(max) = longest {
            let (lo, hi) = (w.min(h), w.max(h));
            if hi / lo * size > max as f64 {
                let r = max as f64 * lo / hi;
                raw = Some(r);
                size = r.round_ties_even();
            }
        }
        if (height <= width && h == size) || (width <= height && w == size) {
            return (width, height);
        }
        let other = |long: f64, short: f64| match raw {
            Some(r) => (r * long / short) as u32,
            None => (size * long / short) as u32,
        };
        if width < height {
            (size as u32, other(h, w))
        } else {
            (other(w, h), size as u32)
        }
    }

    /// The resized 8-bit image, as `PIL.Image.resize(…, BILINEAR)` makes it.
    pub fn resize(&self, image: &RgbImage) -> RgbImage {
        let (w, h) = self.output_size(image.dimensions());
        pil_bilinear(image, w, h)
    }

    /// The network input `(1, 3, H, W)`, f32.
    pub fn preprocess(&self, image: &RgbImage, device: &Device) -> Result<Tensor> {
        let resized = self.resize(image);
        let (w, h) = (resized.width() as usize, resized.height() as usize);
        let scale = self.rescale_factor.unwrap_or(1.0);
        let (mean, std) = self.mean_std.unwrap_or(([0.0; 3], [1.0; 3]));
        let mut chw = vec![0f32; 3 * h * w];
        for (i, p) in resized.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                chw[c * h * w + i] = (p[c] as f32 * scale - mean[c]) / std[c];
            }
        }
        Ok(Tensor::from_vec(chw, (1, 3, h, w), device)?)
    }
}

/// Pillow's fixed-point precision for 8-bit resampling.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's resampling coefficients along one axis: per output index, the first input index,
/// and the fixed-point weights of the inputs from there.
struct Coefficients {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// Pillow `precompute_coeffs` with the bilinear (triangle) filter: when downscaling, the
/// filter widens by the scale, which antialiases.
fn coefficients(in_size: u32, out_size: u32) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale;
    let (mut starts, mut weights) = (Vec::new(), Vec::new());
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C casts truncate toward zero.
        let min = ((center - support + 0.5) as i64).max(0) as usize;
        let max = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let raw: Vec<f64> = (min..max)
            .map(|x| {
                let t = ((x as f64 - center + 0.5) / filter_scale).abs();
                if t < 1.0 {
                    1.0 - t
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = raw.iter().sum();
        let fixed = raw
            .iter()
            .map(|&k| {
                let k = if total != 0.0 { k / total } else { k };
                let v = k * (1u32 << PRECISION_BITS) as f64;
                (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
            })
            .collect();
        starts.push(min);
        weights.push(fixed);
    }
    Coefficients { starts, weights }
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow `ImagingResample` (BILINEAR) of an RGB image: a horizontal pass over the rows the
/// vertical pass needs, rounded to 8 bits, then the vertical pass.
fn pil_bilinear(image: &RgbImage, out_w: u32, out_h: u32) -> RgbImage {
    let (in_w, in_h) = image.dimensions();
    if (in_w, in_h) == (out_w, out_h) {
        return image.clone();
    }
    let rounding = 1i64 << (PRECISION_BITS - 1);
    let vertical = coefficients(in_h, out_h);
    let (first_row, rows) = if in_h != out_h {
        let last = vertical.starts.last().copied().unwrap_or(0)
            + vertical.weights.last().map_or(0, Vec::len);
        (vertical.starts[0], last - vertical.starts[0])
    } else {
        (0, in_h as usize)
    };
    let src = image.as_raw();
    let (temp, temp_w) = if in_w != out_w {
        let horizontal = coefficients(in_w, out_w);
        let mut temp = vec![0u8; rows * out_w as usize * 3];
        for y in 0..rows {
            let row = &src[(first_row + y) * in_w as usize * 3..];
            for (x, (start, ks)) in horizontal
                .starts
                .iter()
                .zip(&horizontal.weights)
                .enumerate()
            {
                for c in 0..3 {
                    let sum: i64 = ks
                        .iter()
                        .enumerate()
                        .map(|(i, &k)| row[(start + i) * 3 + c] as i64 * k as i64)
                        .sum();
                    temp[(y * out_w as usize + x) * 3 + c] = clip8(sum + rounding);
                }
            }
        }
        (temp, out_w as usize)
    } else {
        (
            src[first_row * in_w as usize * 3..(first_row + rows) * in_w as usize * 3].to_vec(),
            in_w as usize,
        )
    };
    if in_h == out_h {
        return RgbImage::from_raw(out_w, out_h, temp).expect("buffer has the image's size");
    }
    let mut out = vec![0u8; out_w as usize * out_h as usize * 3];
    for (y, (start, ks)) in vertical.starts.iter().zip(&vertical.weights).enumerate() {
        let start = start - first_row;
        for i in 0..temp_w * 3 {
            let sum: i64 = ks
                .iter()
                .enumerate()
                .map(|(j, &k)| temp[(start + j) * temp_w * 3 + i] as i64 * k as i64)
                .sum();
            out[y * temp_w * 3 + i] = clip8(sum + rounding);
        }
    }
    RgbImage::from_raw(out_w, out_h, out).expect("buffer has the image's size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_factors_out_of_range_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("preprocessor_config.json");
        for (json, expected) in [
            (
                r#"{"size": {"shortest_edge": 100000}}"#,
                "`size` 100000 is outside [1, 4096]",
            ),
            (
                r#"{"size": {"shortest_edge": 800, "longest_edge": 99999999999}}"#,
                "`size` 4294967295 is outside",
            ),
            (r#"{"image_std": [0.2, 0, 0.2]}"#, "no std of 0"),
        ] {
            std::fs::write(&path, json).unwrap();
            let err = DetrImageProcessor::load(&path).unwrap_err();
            assert!(matches!(err, Error::BadModel { .. }), "{err}");
            let err = err.to_string();
            assert!(
                err.contains("preprocessor_config.json") && err.contains(expected),
                "{err}"
            );
        }
        std::fs::write(&path, r#"{"size": {"shortest_edge": 800}}"#).unwrap();
        assert!(DetrImageProcessor::load(&path).is_ok());
    }

    #[test]
    fn output_size_matches_transformers() {
        let p = DetrImageProcessor::default();
        assert_eq!(p.output_size((640, 480)), (1066, 800));
        assert_eq!(p.output_size((800, 600)), (1066, 800));
        assert_eq!(p.output_size((1000, 800)), (1000, 800));
        assert_eq!(p.output_size((480, 640)), (800, 1066));
        // Capped by the longest edge: 1333·300/1000 = 399.9 → 400, then int(399.9·1000/300).
        assert_eq!(p.output_size((1000, 300)), (1333, 400));
    }

    #[test]
    fn same_size_is_a_copy_and_flat_stays_flat() {
        let image = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8, y as u8, 9]));
        assert_eq!(pil_bilinear(&image, 7, 5), image);
        let flat = RgbImage::from_pixel(13, 9, image::Rgb([200, 17, 0]));
        for (w, h) in [(5, 4), (30, 20), (13, 3), (2, 9)] {
            let out = pil_bilinear(&flat, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 17, 0]), "{w}×{h}");
        }
    }
}
