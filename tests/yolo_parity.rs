//! Parity with ultralytics `predict` on the shapes fixture model: the same letterboxed input,
//! the same boxes in the same order, and the same logits and features.
//! The reference comes from tests/fixtures/export_yolo_reference.py.

use candle_core::Device;
use oodbox::detect::image_io::load_rgb;
use oodbox::detect::letterbox::{letterbox, LetterboxGeometry};
use oodbox::detect::Detector;
use oodbox::DetectOptions;
use serde_json::Value;
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/yolo");
const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shapes.safetensors");

fn reference() -> Value {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn letterbox_is_bit_exact_with_ultralytics() {
    for image in reference()["images"].as_array().unwrap() {
        let name = image["image"].as_str().unwrap();
        let original = load_rgb(&Path::new(FIXTURES).join(name)).unwrap();
        let geometry = LetterboxGeometry::new(original.dimensions(), (640, 640), 32, true);
        let ours = letterbox(&original, &geometry);
        let stem = Path::new(name).file_name().unwrap().to_str().unwrap();
        let theirs =
            load_rgb(&Path::new(FIXTURES).join(format!("images/letterbox_{stem}"))).unwrap();
        assert_eq!(ours.dimensions(), theirs.dimensions(), "{name}: input size");
        let differing = ours
            .as_raw()
            .iter()
            .zip(theirs.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{name}: {differing} bytes differ from OpenCV's letterbox"
        );
    }
}

#[test]
fn detections_match_ultralytics() {
    check_detections(&Device::Cpu);
}

/// The same on the GPU: Candle's CUDA kernels must give ultralytics' boxes too.
#[cfg(feature = "cuda")]
#[test]
fn detections_match_ultralytics_on_cuda() {
    check_detections(&Device::new_cuda(0).expect("a CUDA device"));
}

fn check_detections(device: &Device) {
    let detector = oodbox::detect::yolov8::load_safetensors(Path::new(MODEL), device).unwrap();
    let options = DetectOptions::default();
    let (mut worst_box, mut worst_conf, mut worst_logit, mut worst_feature) =
        (0f32, 0f32, 0f32, 0f32);
    let mut total = 0;
    for image in reference()["images"].as_array().unwrap() {
        let name = image["image"].as_str().unwrap();
        let original = load_rgb(&Path::new(FIXTURES).join(name)).unwrap();
        let ours = detector.detect(&original, &options).unwrap();
        let theirs = image["boxes"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: number of boxes");
        for (k, (o, t)) in ours.iter().zip(theirs).enumerate() {
            let at = format!("{name} box {k}");
            assert_eq!(
                o.class_id as u64,
                t["class_id"].as_u64().unwrap(),
                "{at}: class"
            );
            assert_eq!(
                o.anchor as u64,
                t["anchor"].as_u64().unwrap(),
                "{at}: anchor"
            );
            assert_eq!(o.level as u64, t["level"].as_u64().unwrap(), "{at}: level");
            let d_box = max_abs_diff(&o.bbox, &floats(&t["bbox"]));
            assert!(d_box <= 0.5, "{at}: box differs by {d_box} px");
            let d_conf = (o.confidence - t["confidence"].as_f64().unwrap() as f32).abs();
            assert!(d_conf <= 1e-4, "{at}: confidence differs by {d_conf}");
            let d_logit = max_abs_diff(&o.logits, &floats(&t["logits"]));
            assert!(d_logit <= 1e-3, "{at}: logits differ by {d_logit}");
            let reference_feature = floats(&t["feature"]);
            let scale = reference_feature
                .iter()
                .fold(0f32, |m, x| m.max(x.abs()))
                .max(1e-6);
            let d_feature = max_abs_diff(&o.feature, &reference_feature) / scale;
            assert!(
                d_feature <= 1e-3,
                "{at}: feature differs by {d_feature} (relative)"
            );
            worst_box = worst_box.max(d_box);
            worst_conf = worst_conf.max(d_conf);
            worst_logit = worst_logit.max(d_logit);
            worst_feature = worst_feature.max(d_feature);
            total += 1;
        }
    }
    assert!(
        total > 10,
        "the fixture should hold real detections, found {total}"
    );
    eprintln!(
        "{device:?}: {total} boxes; worst differences: box {worst_box:.2e} px, confidence {worst_conf:.2e}, \
         logit {worst_logit:.2e}, feature {worst_feature:.2e} (relative)"
    );
}

#[test]
fn logits_are_the_head_applied_to_the_feature() {
    let detector =
        oodbox::detect::yolov8::load_safetensors(Path::new(MODEL), &Device::Cpu).unwrap();
    let image = load_rgb(&Path::new(FIXTURES).join("images/square_256.png")).unwrap();
    let boxes = detector.detect(&image, &DetectOptions::default()).unwrap();
    assert!(!boxes.is_empty());
    for b in boxes {
        let recomputed = detector.head().levels[b.level as usize].logits(&b.feature);
        assert!(max_abs_diff(&recomputed, &b.logits) < 1e-4);
    }
}
