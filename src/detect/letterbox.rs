//! Ultralytics `LetterBox` preprocessing, with a resize that is bit-exact with OpenCV's
//! `INTER_LINEAR` on 8-bit images (the resize ultralytics uses).
//!
//! The `image` crate's filters widen their support when downscaling and work in floating point,
//! so they cannot give OpenCV's pixels; hence the resize here.

use image::RgbImage;

/// OpenCV's fixed-point scale for interpolation weights (`INTER_RESIZE_COEF_BITS` = 11).
const COEF_SCALE: f32 = 2048.0;

/// Where a letterboxed image came from: enough to map boxes back to the original pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LetterboxGeometry {
    /// Original image (width, height).
    pub original: (u32, u32),
    /// Resized image (width, height), before padding.
    pub resized: (u32, u32),
    /// Padded network input (width, height).
    pub input: (u32, u32),
    /// Padding on the left and on the top.
    pub left: u32,
    pub top: u32,
}

impl LetterboxGeometry {
    /// The geometry of ultralytics' `LetterBox(new_shape, auto=rect, stride)` for an image.
    ///
    /// `target` is (width, height). With `rect`, padding only reaches the next multiple of
    /// `stride`, as ultralytics `predict` does for PyTorch weights.
    pub fn new(original: (u32, u32), target: (u32, u32), stride: u32, rect: bool) -> Self {
        let (w0, h0) = (original.0 as f64, original.1 as f64);
        let r = (target.1 as f64 / h0).min(target.0 as f64 / w0);
        // Python's round() is round-half-to-even.
        let new_w = ((w0 * r).round_ties_even() as u32).max(1);
        let new_h = ((h0 * r).round_ties_even() as u32).max(1);
        let (mut dw, mut dh) = (
            target.0.saturating_sub(new_w),
            target.1.saturating_sub(new_h),
        );
        if rect {
            dw %= stride;
            dh %= stride;
        }
        let (half_w, half_h) = (dw as f64 / 2.0, dh as f64 / 2.0);
        let left = (half_w - 0.1).round_ties_even() as u32;
        let right = (half_w + 0.1).round_ties_even() as u32;
        let top = (half_h - 0.1).round_ties_even() as u32;
        let bottom = (half_h + 0.1).round_ties_even() as u32;
        LetterboxGeometry {
            original,
            resized: (new_w, new_h),
            input: (new_w + left + right, new_h + top + bottom),
            left,
            top,
        }
    }

    /// Maps an xyxy box from network-input pixels back to original pixels, clipped to the image
    /// (ultralytics `scale_boxes`: one gain per axis, since each side was rounded separately).
    pub fn to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let gain_x = self.resized.0 as f32 / self.original.0 as f32;
        let gain_y = self.resized.1 as f32 / self.original.1 as f32;
        let (w, h) = (self.original.0 as f32, self.original.1 as f32);
        let (px, py) = (self.left as f32, self.top as f32);
        [
            ((b[0] - px) / gain_x).clamp(0.0, w),
            ((b[1] - py) / gain_y).clamp(0.0, h),
            ((b[2] - px) / gain_x).clamp(0.0, w),
            ((b[3] - py) / gain_y).clamp(0.0, h),
        ]
    }
}

/// Letterboxes an image: resize (OpenCV `INTER_LINEAR`) then pad with grey 114.
pub fn letterbox(image: &RgbImage, geometry: &LetterboxGeometry) -> RgbImage {
    let resized = if (image.width(), image.height()) == geometry.resized {
        None
    } else {
        Some(resize_linear(image, geometry.resized.0, geometry.resized.1))
    };
    let src = resized.as_ref().unwrap_or(image);
    let (w, h) = geometry.input;
    let mut out = RgbImage::from_pixel(w, h, image::Rgb([114, 114, 114]));
    let row_bytes = src.width() as usize * 3;
    for y in 0..src.height() as usize {
        let dst_start = ((y + geometry.top as usize) * w as usize + geometry.left as usize) * 3;
        out.as_mut()[dst_start..dst_start + row_bytes]
            .copy_from_slice(&src.as_raw()[y * row_bytes..(y + 1) * row_bytes]);
    }
    out
}

/// Source index and fixed-point weights of one destination coordinate.
struct Tap {
    index: usize,
    next: usize,
    w0: i32,
    w1: i32,
}

/// OpenCV's linear taps. Along x, a coordinate outside the source is clamped with its fraction
/// zeroed; along y, only the row index is clamped and the fraction kept. That asymmetry is
/// OpenCV's, and it changes the rounding of border rows.
fn taps(dst: u32, src: u32, zero_fraction_at_border: bool) -> Vec<Tap> {
    let scale = src as f64 / dst as f64;
    let last = src as i64 - 1;
    (0..dst)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut frac = f - s as f32;
            if zero_fraction_at_border {
                if s < 0 {
                    s = 0;
                    frac = 0.0;
                }
                if s >= last {
                    s = last;
                    frac = 0.0;
                }
            }
            let w0 = ((1.0 - frac) * COEF_SCALE).round_ties_even() as i32;
            let w1 = (frac * COEF_SCALE).round_ties_even() as i32;
            Tap {
                index: s.clamp(0, last) as usize,
                next: (s + 1).clamp(0, last) as usize,
                w0,
                w1,
            }
        })
        .collect()
}

/// Bilinear resize, bit-exact with OpenCV `cv::resize(..., INTER_LINEAR)` on 8-bit RGB.
///
/// OpenCV interpolates rows in 11-bit fixed point into i32, then combines two rows with its
/// SIMD rounding: `((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2 >> 2`.
pub fn resize_linear(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (sw, sh) = (image.width(), image.height());
    let xs = taps(width, sw, true);
    let ys = taps(height, sh, false);
    let src = image.as_raw();
    let horizontal = |row: usize| -> Vec<i32> {
        let line = &src[row * sw as usize * 3..(row + 1) * sw as usize * 3];
        let mut out = Vec::with_capacity(width as usize * 3);
        for t in &xs {
            for c in 0..3 {
                out.push(line[t.index * 3 + c] as i32 * t.w0 + line[t.next * 3 + c] as i32 * t.w1);
            }
        }
        out
    };
    let mut out = RgbImage::new(width, height);
    let mut cache: Vec<Option<Vec<i32>>> = vec![None; sh as usize];
    let row_len = width as usize * 3;
    for (y, t) in ys.iter().enumerate() {
        for r in [t.index, t.next] {
            if cache[r].is_none() {
                cache[r] = Some(horizontal(r));
            }
        }
        let (r0, r1) = (
            cache[t.index].as_ref().unwrap(),
            cache[t.next].as_ref().unwrap(),
        );
        let dst = &mut out.as_mut()[y * row_len..(y + 1) * row_len];
        for x in 0..row_len {
            let a = ((r0[x] >> 4) * t.w0) >> 16;
            let b = ((r1[x] >> 4) * t.w1) >> 16;
            dst[x] = ((a + b + 2) >> 2).clamp(0, 255) as u8;
        }
        // Rows above the current pair are never read again.
        if y + 1 < ys.len() {
            for stale in cache.iter_mut().take(ys[y + 1].index) {
                *stale = None;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_ultralytics_examples() {
        // 640×480 in rect mode stays 640×480; in square mode it is padded to 640×640.
        let g = LetterboxGeometry::new((640, 480), (640, 640), 32, true);
        assert_eq!(
            (g.resized, g.input, g.left, g.top),
            ((640, 480), (640, 480), 0, 0)
        );
        let g = LetterboxGeometry::new((640, 480), (640, 640), 32, false);
        assert_eq!((g.input, g.top), ((640, 640), 80));
        // 500×375 → r = 1.28, 640×480: no padding needed in rect mode.
        let g = LetterboxGeometry::new((500, 375), (640, 640), 32, true);
        assert_eq!((g.resized, g.input), ((640, 480), (640, 480)));
        // 300×200 → 640×427 → padded by 21 rows: 10 on top, 11 below.
        let g = LetterboxGeometry::new((300, 200), (640, 640), 32, true);
        assert_eq!((g.resized, g.input, g.top), ((640, 427), (640, 448), 10));
    }

    #[test]
    fn boxes_map_back_to_the_original() {
        let g = LetterboxGeometry::new((300, 200), (640, 640), 32, true);
        let b = g.to_original([
            10.0 * 640.0 / 300.0,
            10.0 + 20.0 * 427.0 / 200.0,
            700.0,
            -5.0,
        ]);
        assert!((b[0] - 10.0).abs() < 1e-4 && (b[1] - 20.0).abs() < 1e-4);
        assert_eq!((b[2], b[3]), (300.0, 0.0));
    }

    #[test]
    fn identity_resize_keeps_pixels() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        assert_eq!(resize_linear(&img, 7, 5).as_raw(), img.as_raw());
    }
}
