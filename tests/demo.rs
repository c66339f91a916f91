//! `oodbox demo` and `detect --scorer`: what a person meets first, and its bad inputs.

use oodbox::data::boxset::{BoxSet, LABEL_UNKNOWN};
use oodbox::data::dataset;
use oodbox::eval::GtBox;
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::pipeline::extraction::labels_from_ground_truth;
use oodbox::BoxRecord;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn oodbox_in(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oodbox"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

/// The central 99% interval of Binomial(n, p), as counts.
fn interval_99(n: usize, p: f64) -> (usize, usize) {
    let mut cdf = 0.0;
    let (mut low, mut high) = (None, n);
    for k in 0..=n {
        let log_choose: f64 = (0..k)
            .map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln())
            .sum();
        cdf += (log_choose + k as f64 * p.ln() + (n - k) as f64 * (1.0 - p).ln()).exp();
        if low.is_none() && cdf >= 0.005 {
            low = Some(k);
        }
        if cdf >= 0.995 {
            high = k;
            break;
        }
    }
    (low.unwrap_or(0), high)
}

#[test]
fn the_demo_flags_unknown_objects_at_the_promised_rates() {
    let dir = tempfile::tempdir().unwrap();
    // Run from an empty folder: the bundled files must still be found.
    let out = oodbox_in(dir.path(), &["demo", "--quiet"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("| images | boxes | flagged OOD"),
        "{stdout}"
    );
    let demo = dir.path().join("oodbox-demo");

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("detections.json")).unwrap())
            .unwrap();
    assert_eq!(doc["scorer"], "safe");
    assert_eq!(doc["alpha"], 0.05);
    let images = doc["images"].as_array().unwrap();
    assert_eq!(images.len(), 12);
    let truth = dataset::coco(&Path::new(ROOT).join("assets/images/ground_truth.json")).unwrap();
    let (mut known, mut known_flagged, mut unknown, mut unknown_flagged) = (0, 0, 0, 0);
    for image in images {
        let path = Path::new(image["path"].as_str().unwrap());
        let name = path.file_name().unwrap();
        let annotated = image::open(demo.join(name).with_extension("png")).unwrap();
        assert_eq!(
            (annotated.width() as u64, annotated.height() as u64),
            (
                image["width"].as_u64().unwrap(),
                image["height"].as_u64().unwrap()
            )
        );
        let mut records = Vec::new();
        let mut flags = Vec::new();
        for d in image["detections"].as_array().unwrap() {
            for key in ["bbox", "class_id", "class_name", "confidence", "logits"] {
                assert!(d.get(key).is_some(), "detection lacks {key}: {d}");
            }
            let ood = &d["ood"];
            let (p, c) = (
                ood["p_value"].as_f64().unwrap(),
                ood["confidence"].as_f64().unwrap(),
            );
            assert!((p + c - 1.0).abs() < 1e-12 && ood["score"].is_number());
            assert_eq!(ood["is_ood"].as_bool().unwrap(), p <= 0.05);
            let b: Vec<f32> = d["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            records.push(BoxRecord {
                bbox: [b[0], b[1], b[2], b[3]],
                class_id: d["class_id"].as_u64().unwrap() as usize,
                confidence: d["confidence"].as_f64().unwrap() as f32,
                logits: vec![],
                feature: vec![],
                level: 0,
                anchor: 0,
                roi_features: Vec::new(),
            });
            flags.push(ood["is_ood"].as_bool().unwrap());
        }
        let item = truth
            .images
            .iter()
            .find(|i| i.path.file_name() == Some(name))
            .expect("ground truth for every demo image");
        let gt: Vec<GtBox> = item
            .objects
            .as_ref()
            .unwrap()
            .iter()
            .map(|o| GtBox {
                bbox: o.bbox.to_pixels(256, 256),
                class: o.class,
            })
            .collect();
        for ((r, flagged), label) in records
            .iter()
            .zip(flags)
            .zip(labels_from_ground_truth(&records, &gt))
        {
            if label == r.class_id as i64 {
                known += 1;
                known_flagged += flagged as usize;
            } else if label == LABEL_UNKNOWN {
                unknown += 1;
                unknown_flagged += flagged as usize;
            }
        }
    }
    // BENCHMARKS.md ("The demo scorer"): on test_mixed, 5.5% of boxes on known objects and
    // 98.1% of boxes on unknown objects are flagged at alpha 0.05.
    eprintln!("demo: {known_flagged} of {known} known and {unknown_flagged} of {unknown} unknown boxes flagged");
    assert!(
        known >= 10 && unknown >= 10,
        "{known} known and {unknown} unknown boxes"
    );
    let (lo, hi) = interval_99(known, 0.055);
    assert!(
        (lo..=hi).contains(&known_flagged),
        "{known_flagged} of {known} known boxes flagged, expected {lo}..={hi}"
    );
    let (lo, hi) = interval_99(unknown, 0.981);
    assert!(
        (lo..=hi).contains(&unknown_flagged),
        "{unknown_flagged} of {unknown} unknown boxes flagged, expected {lo}..={hi}"
    );
}

#[test]
fn the_scorer_file_sets_how_to_detect() {
    let root = Path::new(ROOT);
    let detector = oodbox::pipeline::OodDetector::load(
        &root.join("models/shapes.safetensors"),
        &root.join("models/shapes-scorer.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    // The bundled scorer's boxes were extracted at imgsz 256 (tests/fixtures/make_shapes_boxsets.sh).
    // Its file records the settings as they were written before the family-specific ones were
    // split out (flat, `imgsz` as `[width, height]`): it reads unchanged.
    let bytes = std::fs::read(root.join("models/shapes-scorer.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header = &meta.metadata().as_ref().unwrap()["oodbox"];
    assert!(header.contains(r#""imgsz":[256,256]"#), "{header:.2000}");
    assert_eq!(detector.options.imgsz, oodbox::InputSize::square(256));
    assert_eq!(detector.options.nms, oodbox::Nms::default());
    let recorded = detector.scorer().detect_options().unwrap();
    assert_eq!((recorded.iou, recorded.agnostic), (Some(0.7), Some(false)));
    assert_eq!(detector.settings_warning(), None);
    assert_eq!(detector.alpha, 0.05);
}

#[test]
fn bad_inputs_to_detect_with_a_scorer() {
    let dir = tempfile::tempdir().unwrap();
    let model = format!("{ROOT}/models/shapes.safetensors");
    let scorer = format!("{ROOT}/models/shapes-scorer.safetensors");
    let images = format!("{ROOT}/assets/images");
    let run = |args: &[&str]| {
        let out = oodbox_in(dir.path(), args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let err = run(&[
        "detect",
        "--model",
        "missing.safetensors",
        "--scorer",
        &scorer,
        "--input",
        &images,
        "--quiet",
    ]);
    assert!(err.contains("missing.safetensors"), "{err}");
    let err = run(&[
        "detect",
        "--model",
        &model,
        "--scorer",
        "nope.safetensors",
        "--input",
        &images,
        "--quiet",
    ]);
    assert!(err.contains("nope.safetensors"), "{err}");

    // A scorer fitted on another model's boxes is refused before any image is processed.
    let mut boxes =
        BoxSet::load(&Path::new(ROOT).join("tests/fixtures/shapes_boxes/val.safetensors")).unwrap();
    boxes.set_fingerprint("sha256:some-other-model");
    let other = dir.path().join("other.safetensors");
    FittedScorer::fit("energy", None, &[], &boxes, &boxes, &FitOptions::default())
        .unwrap()
        .save(&other)
        .unwrap();
    let err = run(&[
        "detect",
        "--model",
        &model,
        "--scorer",
        other.to_str().unwrap(),
        "--input",
        &images,
        "--quiet",
    ]);
    assert!(err.contains("some-other-model"), "{err}");

    // An output folder that cannot be created.
    let file = dir.path().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    let blocked = file.join("out");
    let err = run(&[
        "detect",
        "--model",
        &model,
        "--scorer",
        &scorer,
        "--input",
        &images,
        "--out",
        blocked.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(err.contains("a_file"), "{err}");
}
