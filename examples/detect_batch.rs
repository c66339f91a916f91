//! Detect and score several images in one call: the detector runs the images through the
//! network together where it can (the YOLO families batch images of one input size), and the
//! scorer scores all their boxes at once.
//!
//! cargo run --release --example detect_batch -- models/shapes.safetensors \
//!     models/shapes-scorer.safetensors assets/images/test_mixed_00000.png \
//!     assets/images/test_mixed_00001.png

use oodbox::{load_rgb, Detection, Device, OodDetector};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, scorer, images @ ..] = args.as_slice() else {
        return Err("usage: detect_batch MODEL SCORER IMAGE...".into());
    };
    let images: Vec<&str> = images.iter().map(String::as_str).collect();
    for (path, detections) in images.iter().zip(detect_batch(model, scorer, &images)?) {
        let flagged = detections.iter().filter(|d| d.ood.is_ood).count();
        println!("{path}: {} boxes, {flagged} flagged OOD", detections.len());
    }
    Ok(())
}

/// The scored detections of each of `images`, in order.
pub fn detect_batch(
    model: &str,
    scorer: &str,
    images: &[&str],
) -> oodbox::Result<Vec<Vec<Detection>>> {
    // Detects as the scorer's calibration boxes were detected (recorded in the scorer file).
    let detector = OodDetector::load(model.as_ref(), scorer.as_ref(), &Device::Cpu)?;
    let images = images
        .iter()
        .map(|path| load_rgb(path.as_ref()))
        .collect::<oodbox::Result<Vec<_>>>()?;
    detector.detect_batch(&images)
}
