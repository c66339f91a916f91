//! DETR against transformers 5.x on the outputs exported by
//! tests/fixtures/export_detr_reference.py: small random-init models with both backbone namings
//! (ResNet-50 and ResNet-101 block structure, DC5, an f16 file) on PNG images that need no
//! resize and on images that do.

use candle_core::{Device, Tensor};
use oodbox::detect::detr::{DetrDetector, DetrImageProcessor};
use oodbox::detect::image_io::load_rgb;
use oodbox::detect::Stages;
use oodbox::DetectOptions;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MODELS: [&str; 4] = ["timm_r50", "timm_r50_f16", "hf_r50", "timm_r101_dc5"];
const IMAGES: [&str; 6] = [
    "same_128x96",
    "same_96x150",
    "down_200x150",
    "up_70x50",
    "wide_300x100",
    "odd_173x131",
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/detr")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn preprocessing_matches_detr_image_processor() {
    let reference = reference();
    let processor =
        DetrImageProcessor::load(&fixtures().join("timm_r50/preprocessor_config.json")).unwrap();
    let mut worst = 0f32;
    for name in IMAGES {
        let image = load_rgb(&fixtures().join(format!("images/{name}.png"))).unwrap();
        let resized = processor.resize(&image);
        let expected = &reference[&format!("resized/{name}")];
        let (h, w, _) = expected.dims3().unwrap();
        assert_eq!(
            (resized.width(), resized.height()),
            (w as u32, h as u32),
            "{name}"
        );
        let expected: Vec<u8> = expected.flatten_all().unwrap().to_vec1().unwrap();
        let differing = resized
            .as_raw()
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{name}: {differing} resized samples differ from PIL's"
        );

        let pixels = processor.preprocess(&image, &Device::Cpu).unwrap();
        let diff = max_abs_diff(
            &flat(&pixels),
            &flat(&reference[&format!("pixel_values/{name}")]),
        );
        worst = worst.max(diff);
    }
    println!("pixel_values: worst |diff| {worst:.2e}");
    assert!(worst < 1e-5, "pixel values differ by {worst}");

    // The default size (shortest edge 800, longest 1333), checked by hash.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap())
            .unwrap();
    let default = DetrImageProcessor::default();
    for (name, expected) in meta["default_size_resize"].as_object().unwrap() {
        let image = load_rgb(&fixtures().join(format!("images/{name}.png"))).unwrap();
        let resized = default.resize(&image);
        assert_eq!(
            (resized.width() as u64, resized.height() as u64),
            (
                expected["width"].as_u64().unwrap(),
                expected["height"].as_u64().unwrap()
            ),
            "{name}"
        );
        let hash = format!("{:x}", Sha256::digest(resized.as_raw()));
        assert_eq!(hash, expected["sha256"].as_str().unwrap(), "{name} at 800");
    }
}

#[test]
fn outputs_match_transformers() {
    let reference = reference();
    let all_queries = DetectOptions {
        conf: 0.0,
        ..DetectOptions::default()
    };
    for model in MODELS {
        let detector = DetrDetector::load(&fixtures().join(model), &Device::Cpu).unwrap();
        let (mut logits_diff, mut boxes_diff, mut px_diff, mut feature_diff) =
            (0f32, 0f32, 0f32, 0f32);
        for name in IMAGES {
            let key = |what: &str| &reference[&format!("{model}/{name}/{what}")];
            let image = load_rgb(&fixtures().join(format!("images/{name}.png"))).unwrap();
            let input = detector.preprocess(&image, &all_queries).unwrap();
            let output = detector.forward(&input).unwrap();
            logits_diff =
                logits_diff.max(max_abs_diff(&flat(&output.logits), &flat(key("logits"))));
            boxes_diff =
                boxes_diff.max(max_abs_diff(&flat(&output.boxes), &flat(key("pred_boxes"))));
            feature_diff = feature_diff.max(max_abs_diff(
                &flat(&output.features),
                &flat(key("features")),
            ));

            // Every query passes a threshold of -1, in query order.
            let boxes = detector.postprocess(output, &input, &all_queries).unwrap();
            let expected_px = flat(key("boxes_px"));
            assert_eq!(boxes.len() * 4, expected_px.len(), "{model}/{name}");
            let px: Vec<f32> = boxes.iter().flat_map(|b| b.bbox).collect();
            px_diff = px_diff.max(max_abs_diff(&px, &expected_px));
            for (q, b) in boxes.iter().enumerate() {
                assert_eq!(b.anchor as usize, q);
                assert_eq!(b.logits.len(), detector.model().classes() + 1);
            }
        }
        println!(
            "{model}: worst |diff| logits {logits_diff:.2e}, boxes {boxes_diff:.2e} (normalised), {px_diff:.2e} px, features {feature_diff:.2e}"
        );
        assert!(
            logits_diff < 1e-3,
            "{model}: logits differ by {logits_diff}"
        );
        assert!(px_diff < 0.5, "{model}: boxes differ by {px_diff} px");
        assert!(
            feature_diff < 1e-3,
            "{model}: features differ by {feature_diff}"
        );
    }
}
