//! Models loaded straight from ultralytics checkpoints: files written by ultralytics 8.0, 8.3
//! and 8.4 (tests/fixtures/checkpoints, from make_checkpoints.py), a mid-training `last.pt`
//! whose module is under `ema`, and `oodbox convert`'s safetensors giving identical outputs.

use candle_core::Device;
use oodbox::detect::image_io::load_rgb;
use oodbox::detect::{checkpoint, convert, load_detector};
use oodbox::error::Error;
use oodbox::DetectOptions;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn checkpoints_of_three_releases_load_with_their_facts() {
    let cases = [
        ("ul8.0_yolov8", "yolov8"),
        ("ul8.3_yolo11", "yolo11"),
        ("ul8.4_yolo26_last", "yolo26"),
    ];
    for (name, family) in cases {
        let path = fixtures().join(format!("checkpoints/{name}.pt"));
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(format!("checkpoints/{name}.json"))).unwrap(),
        )
        .unwrap();
        let read = checkpoint::read(&path).unwrap();
        assert_eq!(
            read.source_key.as_deref(),
            expected["module_key"].as_str(),
            "{name}"
        );
        assert_eq!(
            read.ultralytics_version.as_deref(),
            expected["version"].as_str(),
            "{name}"
        );
        let state = expected["state_dict"].as_object().unwrap();
        assert_eq!(read.tensors.len(), state.len(), "{name}: tensor count");
        for (tensor, t) in &read.tensors {
            let want: Vec<usize> = serde_json::from_value(state[tensor].clone()).unwrap();
            assert_eq!(t.dims(), want.as_slice(), "{name}: {tensor}");
        }
        for (tensor, values) in expected["samples"].as_object().unwrap() {
            let (_, t) = read.tensors.iter().find(|(n, _)| n == tensor).unwrap();
            let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let want: Vec<f32> = serde_json::from_value(values.clone()).unwrap();
            assert_eq!(&got[..want.len()], want.as_slice(), "{name}: {tensor}");
        }
        let detector = load_detector(&path, &Device::Cpu).unwrap();
        assert_eq!(detector.family(), family, "{name}");
        let names = expected["names"].as_object().unwrap();
        let want: Vec<&str> = (0..names.len())
            .map(|i| names[&i.to_string()].as_str().unwrap())
            .collect();
        assert_eq!(detector.class_names(), want.as_slice(), "{name}");
    }
}

#[test]
fn a_checkpoint_and_its_conversion_detect_identically() {
    let dir = tempfile::tempdir().unwrap();
    let image = load_rgb(&fixtures().join("yolo/images/wide_640x360.png")).unwrap();
    for family in ["yolo11", "yolo26"] {
        let pt = fixtures().join(format!("{family}/best.pt"));
        let out = dir.path().join(format!("{family}.safetensors"));
        let converted = convert::checkpoint_to_safetensors(&pt, &out).unwrap();
        assert_eq!(converted.family, family);
        for nms_free in [false, true]
            .into_iter()
            .take(1 + usize::from(family == "yolo26"))
        {
            let mut a = load_detector(&pt, &Device::Cpu).unwrap();
            let mut b = load_detector(&out, &Device::Cpu).unwrap();
            a.set_nms_free(nms_free).unwrap();
            b.set_nms_free(nms_free).unwrap();
            assert_eq!(a.fingerprint(), b.fingerprint(), "{family}");
            assert_eq!(a.class_names(), b.class_names(), "{family}");
            // The size of the last training run, which ultralytics `predict` defaults to on this
            // checkpoint: 256, or 640 for YOLO11's stride-32 fine-tune (models/README.md).
            let trained = if family == "yolo11" { 640 } else { 256 };
            assert_eq!(a.trained_imgsz(), Some(trained), "{family}");
            assert_eq!(b.trained_imgsz(), Some(trained), "{family}");
            let options = DetectOptions::default();
            let (boxes_a, boxes_b) = (a.detect(&image, &options), b.detect(&image, &options));
            let (boxes_a, boxes_b) = (boxes_a.unwrap(), boxes_b.unwrap());
            assert!(!boxes_a.is_empty(), "{family}: the fixture should detect");
            assert_eq!(boxes_a, boxes_b, "{family} nms_free={nms_free}");
        }
    }
}

#[test]
fn convert_refuses_what_is_not_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.safetensors");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shapes.safetensors");
    let err = convert::checkpoint_to_safetensors(&model, &out).unwrap_err();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    assert!(
        err.to_string().contains("not a PyTorch checkpoint"),
        "{err}"
    );
    assert!(!out.exists());
}
