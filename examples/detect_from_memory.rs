//! Detect on an image held in memory: encoded bytes (as received over a network or read from
//! an archive) or an `image::DynamicImage` another library decoded. Both convert as a file
//! does; bad bytes are refused with what was wrong.
//!
//! cargo run --release --example detect_from_memory -- models/shapes.safetensors \
//!     assets/images/test_mixed_00001.png

use oodbox::{decode_rgb, image, load_detector, rgb_from_image, DetectOptions, Detector, Device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, input] = args.as_slice() else {
        return Err("usage: detect_from_memory MODEL IMAGE".into());
    };
    let [from_bytes, from_image] = detect_from_memory(model, input)?;
    for b in &from_bytes {
        println!("class {} {:.2} at {:?}", b.class_id, b.confidence, b.bbox);
    }
    println!(
        "{} boxes from the bytes, {} from the decoded image",
        from_bytes.len(),
        from_image.len()
    );
    Ok(())
}

/// The boxes on the image file `input`, detected from its bytes and from an
/// `image::DynamicImage` decoded by the `image` crate.
pub fn detect_from_memory(model: &str, input: &str) -> oodbox::Result<[Vec<oodbox::BoxRecord>; 2]> {
    let detector = load_detector(model.as_ref(), &Device::Cpu)?;
    // The shapes model was trained at 256×256.
    let options = DetectOptions {
        imgsz: oodbox::InputSize::square(256),
        ..DetectOptions::default()
    };
    let bytes = std::fs::read(input).map_err(|e| oodbox::Error::io(input, e))?;
    let from_bytes = detector.detect(&decode_rgb(&bytes)?, &options)?;
    // `oodbox::image` is the `image` crate oodbox uses: no version to match.
    let decoded = image::load_from_memory(&bytes).map_err(|e| oodbox::Error::BadImageData {
        reason: e.to_string(),
    })?;
    let from_image = detector.detect(&rgb_from_image(decoded)?, &options)?;
    // Bytes that are no image name the problem.
    let err = decode_rgb(b"not an image").unwrap_err();
    eprintln!("refused as expected: {err}");
    Ok([from_bytes, from_image])
}
