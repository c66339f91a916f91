//! Image decoding to 8-bit RGB, converting the way OpenCV's `imread(IMREAD_COLOR)` does, which is
//! what ultralytics reads with: 16-bit samples keep their high byte, grey is replicated, alpha is
//! dropped (not composited), and the EXIF orientation is applied.

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use std::path::Path;

use crate::error::{Error, Result};
use crate::limits::Limits;

/// The file extensions treated as images when a folder is searched.
pub const IMAGE_EXTENSIONS: [&str; 9] = [
    "png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "pgm", "ppm",
];

pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads an image within the [`Limits`] of the environment.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    load_rgb_within(path, &Limits::from_env()?)
}

/// Reads an image, refusing one whose declared size is over `limits` before decoding it.
pub fn load_rgb_within(path: &Path, limits: &Limits) -> Result<RgbImage> {
    let bad = |reason: String| Error::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_image_bytes);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(|e| bad(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    limits.check_image(path, width, height, decoder.total_bytes())?;
    let orientation = decoder.orientation().map_err(|e| bad(e.to_string()))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| bad(e.to_string()))?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(bad("the image is empty".into()));
    }
    Ok(to_rgb8(image))
}

fn to_rgb8(image: DynamicImage) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let high_byte = |v: u16| (v >> 8) as u8;
    match image {
        DynamicImage::ImageRgb8(img) => img,
        DynamicImage::ImageLuma16(img) => RgbImage::from_fn(w, h, |x, y| {
            let v = high_byte(img.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(img) => RgbImage::from_fn(w, h, |x, y| {
            let v = high_byte(img.get_pixel(x, y).0[0]);
            image::Rgb([v, v, v])
        }),
        DynamicImage::ImageRgb16(img) => RgbImage::from_fn(w, h, |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
        }),
        DynamicImage::ImageRgba16(img) => RgbImage::from_fn(w, h, |x, y| {
            let p = img.get_pixel(x, y).0;
            image::Rgb([high_byte(p[0]), high_byte(p[1]), high_byte(p[2])])
        }),
        other => other.to_rgb8(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, ImageBuffer, Luma, Rgba, RgbaImage};

    #[test]
    fn converts_like_opencv() {
        let dir = tempfile::tempdir().unwrap();
        let grey = dir.path().join("grey.png");
        GrayImage::from_pixel(3, 2, Luma([77])).save(&grey).unwrap();
        assert_eq!(load_rgb(&grey).unwrap().get_pixel(2, 1).0, [77, 77, 77]);

        let rgba = dir.path().join("rgba.png");
        RgbaImage::from_pixel(3, 2, Rgba([10, 20, 30, 0]))
            .save(&rgba)
            .unwrap();
        assert_eq!(load_rgb(&rgba).unwrap().get_pixel(0, 0).0, [10, 20, 30]);

        let deep = dir.path().join("deep.png");
        ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
            2,
            2,
            image::Rgb([0xABFF, 0x0100, 0x00FF]),
        )
        .save(&deep)
        .unwrap();
        assert_eq!(
            load_rgb(&deep).unwrap().get_pixel(1, 1).0,
            [0xAB, 0x01, 0x00]
        );
    }

    /// A PNG of a 1×1 image whose header declares `width`×`height` (with the header's CRC
    /// made right, so that only the size is wrong).
    fn png_declaring(width: u32, height: u32) -> Vec<u8> {
        let mut png = Vec::new();
        RgbImage::new(1, 1)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // 8-byte signature, 4-byte length, "IHDR", width, height, ...; the CRC after 13 bytes.
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = !png[12..29].iter().fold(!0u32, |mut crc, &b| {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
            crc
        });
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    #[test]
    fn an_image_over_the_limit_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.png");
        std::fs::write(&path, png_declaring(50_000, 50_000)).unwrap();
        let err = load_rgb(&path).unwrap_err().to_string();
        assert!(
            err.contains("bomb.png") && err.contains("50000×50000"),
            "{err}"
        );
        // Under the pixel limit but over the byte limit.
        let small = Limits {
            max_image_bytes: 1000,
            ..Limits::default()
        };
        let path = dir.path().join("wide.png");
        RgbImage::new(40, 10).save(&path).unwrap();
        let err = load_rgb_within(&path, &small).unwrap_err().to_string();
        assert!(
            err.contains("wide.png") && err.contains("1200 bytes"),
            "{err}"
        );
        assert!(load_rgb_within(&path, &Limits::default()).is_ok());
    }

    #[test]
    fn corrupt_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.png");
        std::fs::write(&path, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let err = load_rgb(&path).unwrap_err().to_string();
        assert!(err.contains("broken.png"), "{err}");
    }
}
