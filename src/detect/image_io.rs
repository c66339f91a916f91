//! Image decoding to 8-bit RGB, converting the way OpenCV's `imread(IMREAD_COLOR)` does, which is
//! what ultralytics reads with: 16-bit samples keep their high byte, grey is replicated, alpha is
//! dropped (not composited), and the EXIF orientation is applied.

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use crate::error::{Error, Result};
use crate::limits::Limits;

/// Reads an image file within the [`Limits`] of the environment.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    load_rgb_within(path, &Limits::from_env()?)
}

/// Reads an image file, refusing one whose declared size is over `limits` before decoding it.
pub fn load_rgb_within(path: &Path, limits: &Limits) -> Result<RgbImage> {
    let reader = ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    decode(reader, Origin::File(path), limits)
}

/// Decodes an encoded image (PNG, JPEG, ... as in a file) held in memory, within the
/// [`Limits`] of the environment, converting it as [`load_rgb`] does (EXIF orientation
/// applied, 16-bit samples keep their high byte).
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage> {
    decode_rgb_within(bytes, &Limits::from_env()?)
}

/// [`decode_rgb`] within `limits`: an image declaring a size over them is refused before it is
/// decoded.
pub fn decode_rgb_within(bytes: &[u8], limits: &Limits) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Origin::Memory.bad(e.to_string()))?;
    decode(reader, Origin::Memory, limits)
}

/// Converts a decoded image to 8-bit RGB as [`load_rgb`] does, refusing an empty one or one
/// over the [`Limits`] of the environment. The EXIF orientation is the decoder's to apply
/// (`DynamicImage::apply_orientation`); [`decode_rgb`] applies it.
pub fn rgb_from_image(image: DynamicImage) -> Result<RgbImage> {
    let limits = Limits::from_env()?;
    let bytes = image.as_bytes().len() as u64;
    if let Some(reason) = limits.image_excess(image.width(), image.height(), bytes) {
        return Err(Origin::Memory.too_large(reason));
    }
    if image.width() == 0 || image.height() == 0 {
        return Err(Origin::Memory.bad(EMPTY.into()));
    }
    Ok(to_rgb8(image))
}

const EMPTY: &str = "the image is empty";

/// Where an image comes from, for its errors: a file is named, an image in memory is not.
#[derive(Clone, Copy)]
enum Origin<'a> {
    File(&'a Path),
    Memory,
}

impl Origin<'_> {
    fn bad(self, reason: String) -> Error {
        match self {
            Origin::File(path) => Error::BadImage {
                path: path.to_path_buf(),
                reason,
            },
            Origin::Memory => Error::BadImageData {
                reason: format!("cannot decode image ({reason})"),
            },
        }
    }

    fn too_large(self, reason: String) -> Error {
        match self {
            Origin::File(path) => Error::TooLarge {
                path: path.to_path_buf(),
                reason,
            },
            Origin::Memory => Error::BadImageData { reason },
        }
    }
}

/// Decodes what `reader` holds, refusing an image over `limits` before decoding it.
fn decode<R: BufRead + Seek>(
    mut reader: ImageReader<R>,
    origin: Origin,
    limits: &Limits,
) -> Result<RgbImage> {
    let bad = |e: image::ImageError| origin.bad(e.to_string());
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(limits.max_image_bytes);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let (width, height) = decoder.dimensions();
    if let Some(reason) = limits.image_excess(width, height, decoder.total_bytes()) {
        return Err(origin.too_large(reason));
    }
    let orientation = decoder.orientation().map_err(bad)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(bad)?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err(origin.bad(EMPTY.into()));
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
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    /// The CRC-32 of a PNG chunk (its type and data).
    fn crc32(bytes: &[u8]) -> u32 {
        !bytes.iter().fold(!0u32, |mut crc, &b| {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
            crc
        })
    }

    /// `image` as a PNG whose EXIF (an `eXIf` chunk after the header) sets orientation 6:
    /// shown rotated 90° clockwise.
    fn png_rotated(image: &RgbImage) -> Vec<u8> {
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // A big-endian TIFF header and one IFD entry: tag 0x0112 (orientation), SHORT, 1, 6.
        let exif: &[u8] = b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0";
        let mut chunk = b"eXIf".to_vec();
        chunk.extend_from_slice(exif);
        let mut bytes = (exif.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&chunk);
        bytes.extend_from_slice(&crc32(&chunk).to_be_bytes());
        png.splice(33..33, bytes);
        png
    }

    #[test]
    fn bytes_and_decoded_images_convert_as_files_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut image = RgbImage::from_pixel(3, 2, image::Rgb([1, 2, 3]));
        image.put_pixel(0, 0, image::Rgb([200, 0, 0]));
        let rotated = png_rotated(&image);
        let path = dir.path().join("rotated.png");
        std::fs::write(&path, &rotated).unwrap();
        let from_file = load_rgb(&path).unwrap();
        // Rotated 90° clockwise: 2 wide, 3 high, the top-left pixel now top-right.
        assert_eq!(from_file.dimensions(), (2, 3));
        assert_eq!(from_file.get_pixel(1, 0).0, [200, 0, 0]);
        assert_eq!(decode_rgb(&rotated).unwrap(), from_file);

        let deep = DynamicImage::ImageRgb16(ImageBuffer::from_pixel(
            2,
            2,
            image::Rgb([0xABFF, 0x0100, 0x00FF]),
        ));
        let mut encoded = Vec::new();
        deep.write_to(
            &mut std::io::Cursor::new(&mut encoded),
            image::ImageFormat::Png,
        )
        .unwrap();
        let expected = RgbImage::from_pixel(2, 2, image::Rgb([0xAB, 0x01, 0x00]));
        assert_eq!(decode_rgb(&encoded).unwrap(), expected);
        assert_eq!(rgb_from_image(deep).unwrap(), expected);
    }

    #[test]
    fn bad_bytes_say_what_is_wrong() {
        let err = decode_rgb(b"\x89PNG\r\n\x1a\nnot really").unwrap_err();
        assert!(matches!(err, Error::BadImageData { .. }), "{err}");
        assert!(err.to_string().contains("cannot decode image"), "{err}");
        let err = decode_rgb(b"plain text").unwrap_err();
        assert!(matches!(err, Error::BadImageData { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains("format could not be determined"), "{err}");
        let err = decode_rgb(&png_declaring(50_000, 50_000)).unwrap_err();
        assert!(matches!(err, Error::BadImageData { .. }), "{err}");
        assert!(err.to_string().contains("50000×50000"), "{err}");
        let err = rgb_from_image(DynamicImage::new_rgb8(0, 4)).unwrap_err();
        assert!(matches!(err, Error::BadImageData { .. }), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn an_image_over_the_limit_is_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.png");
        std::fs::write(&path, png_declaring(50_000, 50_000)).unwrap();
        let err = load_rgb(&path).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        let err = err.to_string();
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
        let err = load_rgb_within(&path, &small).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        let err = err.to_string();
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
        let err = load_rgb(&path).unwrap_err();
        assert!(matches!(err, Error::BadImage { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains("broken.png"), "{err}");
    }
}
