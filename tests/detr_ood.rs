//! DETR boxes through the OOD side: every scorer (and shaping) fits and scores DETR box sets,
//! and the CLI runs `detect`, `extract`, `fit` and `eval` on a DETR folder.

use candle_core::Device;
use oodbox::data::boxset::BoxSet;
use oodbox::detect::detr::DetrDetector;
use oodbox::detect::image_io::load_rgb;
use oodbox::detect::Detector;
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::ood::kinds;
use oodbox::DetectOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn model() -> PathBuf {
    root().join("tests/fixtures/detr/hf_r50")
}

fn scene_paths() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root().join("assets/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    paths
}

fn oodbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oodbox"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn every_scorer_works_on_detr_boxes() {
    let detector = DetrDetector::load(&model(), &Device::Cpu).unwrap();
    let options = DetectOptions {
        conf: 0.3,
        ..DetectOptions::default()
    };
    let mut records = Vec::new();
    for (i, path) in scene_paths().iter().enumerate() {
        let image = load_rgb(path).unwrap();
        for r in detector.detect(&image, &options).unwrap() {
            assert!(r.confidence > 0.3 && r.class_id < 4);
            assert_eq!((r.logits.len(), r.feature.len(), r.level), (5, 32, 0));
            records.push((i, r));
        }
    }
    assert!(records.len() > 40, "only {} boxes", records.len());
    let set = BoxSet::from_records(
        records.iter().map(|(i, r)| (*i, r)),
        detector.head(),
        detector.class_names(),
        detector.fingerprint(),
        "scenes",
    )
    .unwrap();
    let (fit, calibration) = set.split_holdout(0.3, 0);
    for kind in kinds() {
        let scorer = FittedScorer::fit(kind, None, &[], &fit, &calibration, &FitOptions::default())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let verdicts = scorer.score(&set, None).unwrap();
        assert_eq!(verdicts.len(), set.len());
        assert!(
            verdicts
                .iter()
                .all(|v| v.score.is_finite() && (0.0..=1.0).contains(&v.p_value)),
            "{kind}"
        );
    }
    for shaping in ["react", "ash", "scale", "dice"] {
        let scorer = FittedScorer::fit(
            "energy",
            Some(shaping),
            &[],
            &fit,
            &calibration,
            &FitOptions::default(),
        )
        .unwrap_or_else(|e| panic!("energy + {shaping}: {e}"));
        assert_eq!(scorer.score(&set, None).unwrap().len(), set.len());
    }
}

#[test]
fn the_cli_detects_extracts_fits_and_evaluates_with_detr() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (model, scenes) = (model(), root().join("assets/images"));
    let common = [
        "--model",
        model.to_str().unwrap(),
        "--conf",
        "0.3",
        "--quiet",
    ];
    let run = |args: Vec<&str>| {
        let o = oodbox(&args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let boxes = out("boxes.safetensors");
    run([
        &[
            "extract",
            "--data",
            scenes.to_str().unwrap(),
            "--out",
            &boxes,
        ][..],
        &common,
    ]
    .concat());
    let set = BoxSet::load(Path::new(&boxes)).unwrap();
    assert!(set.len() > 40);
    assert_eq!(
        set.class_names.last().map(String::as_str),
        Some("no-object")
    );
    // The box set records the settings DETR read, not NMS or an input size it never used.
    let recorded = set.detect_options.as_ref().unwrap();
    assert_eq!((recorded.conf, recorded.max_det), (0.3, 300));
    assert_eq!(
        (recorded.iou, recorded.agnostic, recorded.imgsz),
        (None, None, None)
    );

    let scorer = out("vim.safetensors");
    run(vec![
        "fit",
        "--boxes",
        &boxes,
        "--scorer",
        "vim",
        "--calibration-fraction",
        "0.3",
        "--out",
        &scorer,
    ]);
    let metrics = out("metrics.json");
    run(vec![
        "eval", "--scorer", &scorer, "--id", &boxes, "--ood", &boxes, "--json", &metrics,
    ]);
    assert!(std::fs::read_to_string(&metrics).unwrap().contains("auroc"));

    let json = out("detections.json");
    let annotated = out("annotated");
    run([
        &[
            "detect",
            "--input",
            scenes.to_str().unwrap(),
            "--scorer",
            &scorer,
            "--json",
            &json,
            "--out",
            &annotated,
        ][..],
        &common,
    ]
    .concat());
    let detections: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let text = detections.to_string();
    assert!(text.contains("p_value"), "{text:.300}");
}

/// `--iou`, `--agnostic-nms` and `--imgsz` set what DETR does not read: refused, saying why
/// and which settings apply, rather than ignored.
#[test]
fn the_cli_refuses_settings_detr_does_not_read() {
    let (model, scenes) = (model(), root().join("assets/images"));
    let cases = [
        (
            &["--iou", "0.5"][..],
            "--iou does not apply to a detr model (DETR has no NMS",
        ),
        (
            &["--agnostic-nms"][..],
            "--agnostic-nms does not apply to a detr model (DETR has no NMS",
        ),
        (
            &["--imgsz", "320"][..],
            "--imgsz does not apply to a detr model (DETR sizes its input with its image processor",
        ),
    ];
    for (flags, expected) in cases {
        let args = [
            &[
                "detect",
                "--model",
                model.to_str().unwrap(),
                "--input",
                scenes.to_str().unwrap(),
            ][..],
            flags,
        ]
        .concat();
        let o = oodbox(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{flags:?} was accepted");
        assert!(err.contains(expected), "{flags:?}: {err}");
        assert!(
            err.contains("the detection settings that apply to it are --conf, --max-det\n"),
            "{flags:?}: {err}"
        );
    }
}
