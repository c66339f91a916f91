//! Fitting, calibration, scoring and evaluation on the shapes fixture box sets
//! (tests/fixtures/make_shapes_boxsets.sh): the promises users rely on.

use oodbox::data::boxset::BoxSet;
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::ScorerFault;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/shapes_boxes")
        .join(format!("{name}.safetensors"))
}

fn known(name: &str) -> BoxSet {
    let set = BoxSet::load(&fixture(name)).unwrap();
    let labels = set.label.clone().expect("fixture box sets are labelled");
    let keep: Vec<usize> = (0..set.len()).filter(|&i| labels[i] >= 0).collect();
    set.subset(&keep)
}

fn oodbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oodbox"))
        .args(args)
        .output()
        .unwrap()
}

/// P(X ≤ k) for X ~ Binomial(n, p), summed in log space.
fn binomial_cdf(k: usize, n: usize, p: f64) -> f64 {
    let mut log_pmf = n as f64 * (1.0 - p).ln();
    let mut cdf = log_pmf.exp();
    for i in 1..=k {
        log_pmf += ((n - i + 1) as f64).ln() - (i as f64).ln() + p.ln() - (1.0 - p).ln();
        cdf += log_pmf.exp();
    }
    cdf
}

/// The central 99% interval of Binomial(n, p), as counts.
fn interval_99(n: usize, p: f64) -> (usize, usize) {
    let low = (0..=n).find(|&k| binomial_cdf(k, n, p) >= 0.005).unwrap();
    let high = (0..=n).find(|&k| binomial_cdf(k, n, p) >= 0.995).unwrap();
    (low, high)
}

#[test]
fn calibration_holds_on_held_out_id_boxes() {
    let (fit, calibration, test) = (known("train"), known("val"), known("test_id"));
    assert!(
        test.len() > 500,
        "the held-out ID set is too small: {}",
        test.len()
    );
    let combined = |method: &str| {
        vec![
            ("of".to_string(), "knn:nearest=20,energy".to_string()),
            ("method".to_string(), method.to_string()),
        ]
    };
    let configs = [
        ("energy", vec![]),
        ("mahalanobis", vec![]),
        ("knn", vec![]),
        ("combine", combined("fisher")),
        ("combine", combined("cauchy")),
    ];
    for (kind, params) in configs {
        let scorer = FittedScorer::fit(
            kind,
            None,
            &params,
            &fit,
            &calibration,
            &FitOptions::default(),
        )
        .unwrap();
        for alpha in [0.01, 0.05, 0.1] {
            let flagged = scorer
                .score(&test, Some(alpha))
                .unwrap()
                .iter()
                .filter(|b| b.is_ood)
                .count();
            let (low, high) = interval_99(test.len(), alpha);
            assert!(
                (low..=high).contains(&flagged),
                "{kind} {params:?} at alpha {alpha}: {flagged} of {} ID boxes flagged, outside the 99% interval [{low}, {high}]",
                test.len()
            );
        }
    }
}

#[test]
fn boxes_of_another_model_are_refused() {
    let (fit, calibration) = (known("train"), known("val"));
    let scorer = FittedScorer::fit(
        "energy",
        None,
        &[],
        &fit,
        &calibration,
        &FitOptions::default(),
    )
    .unwrap();
    let mut other = known("test_id");
    other.set_fingerprint("sha256:another-model");
    let err = scorer.score(&other, None).unwrap_err();
    assert_eq!(err.scorer_fault(), Some(ScorerFault::Mismatch), "{err}");
    let err = err.to_string();
    assert!(err.contains("another-model"), "{err}");
    let narrow = known("test_id")
        .edit(|narrow| {
            narrow.num_classes = 3;
            narrow.logits = narrow
                .logits
                .chunks(4)
                .flat_map(|r| r[..3].to_vec())
                .collect();
            // The dropped class's ids, labels, name and head row would fall outside the classes.
            narrow
                .class_id
                .iter_mut()
                .filter(|c| **c == 3)
                .for_each(|c| *c = 0);
            narrow.label = None;
            narrow.class_names.truncate(3);
            narrow.head = None;
        })
        .unwrap();
    let err = scorer.score(&narrow, None).unwrap_err();
    assert_eq!(err.scorer_fault(), Some(ScorerFault::Mismatch), "{err}");
    let err = err.to_string();
    assert!(err.contains("3 classes"), "{err}");
}

/// `recalibrate` gives the file that a fit with the new calibration boxes gives, byte for byte,
/// from the library and from the command line (which also says how far the flagged share of ID
/// boxes may stray with that many calibration boxes); boxes of another model are refused.
#[test]
fn recalibrating_equals_fitting_with_the_new_calibration_boxes() {
    let (fit, val, test) = (known("train"), known("val"), known("test_id"));
    let options = FitOptions::default();
    let fitted = |cal: &BoxSet| FittedScorer::fit("knn", None, &[], &fit, cal, &options).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str| dir.path().join(name);
    let bytes = |name: &str| std::fs::read(file(name)).unwrap();
    fitted(&test).save(&file("on_test.st")).unwrap();
    let mut scorer = fitted(&val);
    scorer.save(&file("on_val.st")).unwrap();
    assert_ne!(bytes("on_val.st"), bytes("on_test.st"));
    scorer.recalibrate(&test).unwrap();
    scorer.save(&file("recalibrated.st")).unwrap();
    assert_eq!(bytes("recalibrated.st"), bytes("on_test.st"));

    let path = |name: &str| file(name).to_str().unwrap().to_string();
    let out = oodbox(&[
        "recalibrate",
        "--scorer",
        &path("on_val.st"),
        "--calibration-boxes",
        fixture("test_id").to_str().unwrap(),
        "--out",
        &path("cli.st"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(bytes("cli.st"), bytes("on_test.st"));
    let spread = scorer.flagged_share_spread();
    assert!(spread > 0.001 && spread < 0.02, "{spread}");
    assert!(stderr.contains(&format!("±{spread:.4}")), "{stderr}");

    let mut other = known("test_id");
    other.set_fingerprint("sha256:another-model");
    let err = scorer.recalibrate(&other).unwrap_err();
    assert_eq!(err.scorer_fault(), Some(ScorerFault::Mismatch), "{err}");
    assert!(err.to_string().contains("another-model"), "{err}");
    let out = oodbox(&[
        "recalibrate",
        "--scorer",
        &path("on_val.st"),
        "--calibration-boxes",
        &path("missing.safetensors"),
        "--out",
        &path("never.st"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("missing.safetensors"),
        "{stderr}"
    );
    assert!(!file("never.st").exists());

    // With a tail, the tail is fitted again on the new calibration boxes.
    let mut options = FitOptions::default();
    options.tail = Some(oodbox::ood::tail::TailOptions::default());
    let fitted = |cal: &BoxSet| FittedScorer::fit("knn", None, &[], &fit, cal, &options).unwrap();
    let mut scorer = fitted(&val);
    scorer.recalibrate(&test).unwrap();
    assert!(scorer.tail().is_some());
    scorer.save(&file("tail_recalibrated.st")).unwrap();
    fitted(&test).save(&file("tail_on_test.st")).unwrap();
    assert_eq!(bytes("tail_recalibrated.st"), bytes("tail_on_test.st"));
}

#[test]
fn fit_score_and_eval_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let scorer = dir.path().join("scorer.safetensors");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let out = oodbox(&[
        "fit",
        "--scorer",
        "mahalanobis",
        "--boxes",
        &path(&fixture("train")),
        "--calibration-boxes",
        &path(&fixture("val")),
        "--out",
        &path(&scorer),
        "--quiet",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let scores = dir.path().join("scores.json");
    let out = oodbox(&[
        "score",
        "--scorer",
        &path(&scorer),
        "--boxes",
        &path(&fixture("test_mixed")),
        "--json",
        &path(&scores),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&scores).unwrap()).unwrap();
    let boxes = doc["boxes"].as_array().unwrap();
    assert_eq!(
        boxes.len(),
        BoxSet::load(&fixture("test_mixed")).unwrap().len()
    );
    for b in boxes {
        let (p, c) = (
            b["p_value"].as_f64().unwrap(),
            b["confidence"].as_f64().unwrap(),
        );
        assert!((0.0..=1.0).contains(&p) && (p + c - 1.0).abs() < 1e-12);
        assert_eq!(b["is_ood"].as_bool().unwrap(), p <= 0.05);
        assert!(b["score"].is_number());
    }
    // The calibration check counts the flagged boxes of known objects (label >= 0) only.
    let labels = BoxSet::load(&fixture("test_mixed"))
        .unwrap()
        .label
        .clone()
        .unwrap();
    let on_known: Vec<&Value> = (labels.iter().zip(boxes))
        .filter(|(&l, _)| l >= 0)
        .map(|(_, b)| b)
        .collect();
    let flagged = on_known
        .iter()
        .filter(|b| b["is_ood"].as_bool().unwrap())
        .count();
    let known = &doc["known_objects"];
    assert_eq!(known["boxes"].as_u64().unwrap() as usize, on_known.len());
    assert_eq!(known["flagged"].as_u64().unwrap() as usize, flagged);
    assert!(flagged > 0 && flagged < on_known.len());

    let metrics = dir.path().join("metrics.json");
    let report = dir.path().join("report");
    let out = oodbox(&[
        "eval",
        "--scorer",
        &path(&scorer),
        "--id",
        &path(&fixture("test_id")),
        "--ood",
        &path(&fixture("test_ood_far")),
        "--mixed",
        &path(&fixture("test_mixed")),
        "--json",
        &path(&metrics),
        "--report",
        &path(&report),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    for key in [
        "auroc",
        "fpr95",
        "aupr_in",
        "aupr_out",
        "n_id",
        "n_ood",
        "convention",
    ] {
        assert!(m.get(key).is_some(), "metrics JSON lacks {key}: {m}");
    }
    assert!(
        m["auroc"].as_f64().unwrap() > 0.5,
        "far-OOD boxes should score higher than ID boxes: {m}"
    );
    assert!(m["gt_matched"]["n_ood"].as_u64().unwrap() > 0);
    for png in ["roc.png", "hist_mahalanobis.png"] {
        let image = image::open(report.join(png)).unwrap();
        assert!(image.width() > 100, "{png}");
    }
    assert!(std::fs::read_to_string(report.join("metrics.md"))
        .unwrap()
        .contains("| mahalanobis | vos |"));
}

#[test]
fn unknown_scorers_and_parameters_list_the_valid_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("s.safetensors");
    let train = fixture("train");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "fit",
            "--boxes",
            train.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = oodbox(&args);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--scorer", "mahalanobiss"]);
    assert!(err.contains("mahalanobis") && err.contains("knn"), "{err}");
    for kind in oodbox::ood::kinds() {
        assert!(err.contains(kind), "{kind}: {err}");
    }
    let err = run(&["--scorer", "knn", "--param", "neighbours=5"]);
    assert!(err.contains("nearest"), "{err}");
}

#[test]
fn combine_fits_from_the_command_line_with_its_components_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("s.safetensors");
    let (train, val) = (fixture("train"), fixture("val"));
    let fit = |of: &str| {
        oodbox(&[
            "fit",
            "--boxes",
            train.to_str().unwrap(),
            "--calibration-boxes",
            val.to_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
            "--scorer",
            "combine",
            "--param",
            &format!("of={of}"),
            "--param",
            "method=cauchy",
        ])
    };
    let out = fit("knn:nearest=7,energy+react:react_quantile=0.95");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scorer = FittedScorer::load(&out_path).unwrap();
    assert_eq!(scorer.name(), "combine");
    // The summary counts the calibration boxes that calibrate it, and says where the others went.
    let calibrated: usize = scorer.calibration_summary().iter().map(|c| c.boxes).sum();
    let given = oodbox::data::boxset::BoxSet::load(&val)
        .unwrap()
        .known_objects()
        .len();
    let said = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "calibrated on {calibrated} boxes (the other {} calibration boxes make its components' reference)",
        given - calibrated
    );
    assert!(
        calibrated < given && said.contains(&expected),
        "{calibrated} of {given}: {said}"
    );
    let eval = dir.path().join("eval.json");
    let out = oodbox(&[
        "eval",
        "--scorer",
        out_path.to_str().unwrap(),
        "--id",
        fixture("test_id").to_str().unwrap(),
        "--ood",
        fixture("test_ood_far").to_str().unwrap(),
        "--json",
        eval.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics: Value = serde_json::from_str(&std::fs::read_to_string(&eval).unwrap()).unwrap();
    assert!(metrics["auroc"].as_f64().unwrap() > 0.8, "{metrics}");
    // A component's bad parameter is named with its component.
    let out = fit("knn:neighbours=7,energy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("knn:neighbours=7") && err.contains("nearest"),
        "{err}"
    );
    let out = fit("energy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("two or more"),
        "{err}"
    );
}

#[test]
fn fit_and_eval_straight_from_a_dataset() {
    use oodbox::synth::world::{generate, Split, SynthConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = SynthConfig {
        seed: 11,
        width: 256,
        height: 256,
        counts: vec![(Split::Train, 20), (Split::TestMixed, 6)],
        ..SynthConfig::default()
    };
    generate(dir.path(), &config, &|| ()).unwrap();
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shapes.safetensors");
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    let scorer = path(dir.path().join("scorer.safetensors"));
    let out = oodbox(&[
        "fit",
        "--scorer",
        "energy",
        "--model",
        model,
        "--data",
        &path(dir.path().join("data.yaml")),
        "--split",
        "train",
        "--calibration-fraction",
        "0.5",
        "--imgsz",
        "256",
        "--quiet",
        "--out",
        &scorer,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metrics = dir.path().join("m.json");
    let report = dir.path().join("report");
    let out = oodbox(&[
        "eval",
        "--report",
        &path(report.clone()),
        "--scorer",
        &scorer,
        "--mixed",
        &path(dir.path().join("coco/test_mixed.json")),
        "--model",
        model,
        "--imgsz",
        "256",
        "--quiet",
        "--json",
        &path(metrics.clone()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    assert!(
        m["open_set"]["wi"].is_number() && m["open_set"]["aose"].is_number(),
        "{m}"
    );
    assert!(m["open_set"]["n_unknown_gt"].as_u64().unwrap() > 0, "{m}");
    // The report plots the GT-matched and open-set metrics too.
    for plot in ["roc.png", "hist_energy_gt_matched.png", "open_set.png"] {
        let size = std::fs::metadata(report.join(plot)).map(|m| m.len());
        assert!(size.as_ref().is_ok_and(|&n| n > 10_000), "{plot}: {size:?}");
    }
    let table = std::fs::read_to_string(report.join("metrics.md")).unwrap();
    assert!(table.contains("| unknown recall |"), "{table}");
    let map = m["id_map"]["all_boxes"]["map50"].as_f64().unwrap();
    assert!(
        map > 0.5,
        "the fixture model should detect the known shapes: mAP50 {map}"
    );
}

#[path = "../examples/fit_and_score.rs"]
#[allow(dead_code)] // its `main` is the example's entry point
mod fit_and_score_example;

/// The library example fits and scores end to end: boxes on both kinds of scenes, a larger
/// share flagged among the shapes the model never saw, and boxes of another dimension refused
/// as a mismatch.
#[test]
fn the_fit_and_score_example_separates_unknown_shapes() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shapes.safetensors");
    let (report, refusal) = fit_and_score_example::fit_and_score(model.as_ref(), "energy").unwrap();
    assert_eq!(refusal, ScorerFault::Mismatch);
    let [(_, known, known_flagged), (_, unknown, unknown_flagged)] = report[..] else {
        panic!("expected two rows, got {report:?}");
    };
    assert!(known > 0 && unknown > 0, "{report:?}");
    let share = |flagged: usize, n: usize| flagged as f64 / n as f64;
    assert!(
        share(unknown_flagged, unknown) > share(known_flagged, known),
        "{report:?}"
    );
}

#[path = "../examples/annotate.rs"]
#[allow(dead_code)] // its `main` is the example's entry point
mod annotate_example;

#[path = "../examples/detect_from_memory.rs"]
#[allow(dead_code)]
mod detect_from_memory_example;

#[path = "../examples/detect_batch.rs"]
#[allow(dead_code)]
mod detect_batch_example;

#[path = "../examples/own_boxes.rs"]
#[allow(dead_code)]
mod own_boxes_example;

/// Boxes built from plain arrays: a scorer fitted on them flags a far box and not one like the
/// fit boxes, and parts that disagree are refused at construction as `BadBoxSet`.
#[test]
fn the_own_boxes_example_scores_arrays_and_refuses_parts_that_disagree() {
    let report = own_boxes_example::own_boxes().unwrap();
    assert!(report.far_flagged);
    assert!(
        report.far_confidence > report.known_confidence,
        "{} vs {}",
        report.far_confidence,
        report.known_confidence
    );
    assert!(report.refused.contains("logits"), "{}", report.refused);
}

fn repo_path(relative: &str) -> String {
    format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"))
}

/// Every example under examples/ is run by a test: included as a module by one of tests/*.rs.
#[test]
fn every_example_is_run_by_a_test() {
    let tests: String = std::fs::read_dir(repo_path("tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for example in std::fs::read_dir(repo_path("examples")).unwrap() {
        let name = example.unwrap().file_name().into_string().unwrap();
        let include = format!("#[path = \"../examples/{name}\"]");
        assert!(tests.contains(&include), "no test runs examples/{name}");
    }
}

#[test]
fn the_annotate_example_writes_the_annotated_image() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("annotated.png");
    let input = repo_path("assets/images/test_mixed_00001.png");
    let (boxes, flagged) = annotate_example::annotate_file(
        &repo_path("models/shapes.safetensors"),
        &repo_path("models/shapes-scorer.safetensors"),
        &input,
        output.to_str().unwrap(),
    )
    .unwrap();
    assert!(
        boxes > 0 && flagged <= boxes,
        "{boxes} boxes, {flagged} flagged"
    );
    let written = image::open(&output).unwrap();
    let original = image::open(&input).unwrap();
    assert_eq!(
        (written.width(), written.height()),
        (original.width(), original.height())
    );
}

/// Bytes and a decoded `DynamicImage` give the boxes the file gives.
#[test]
fn the_detect_from_memory_example_matches_the_file() {
    use oodbox::Detector;
    let (model, input) = (
        repo_path("models/shapes.safetensors"),
        repo_path("assets/images/test_mixed_00001.png"),
    );
    let [from_bytes, from_image] =
        detect_from_memory_example::detect_from_memory(&model, &input).unwrap();
    let detector = oodbox::load_detector(model.as_ref(), &oodbox::Device::Cpu).unwrap();
    let options = oodbox::DetectOptions {
        imgsz: oodbox::InputSize::square(256),
        ..Default::default()
    };
    let image = oodbox::load_rgb(input.as_ref()).unwrap();
    let from_file = detector.detect(&image, &options).unwrap();
    assert!(!from_file.is_empty());
    assert_eq!(from_bytes, from_file);
    assert_eq!(from_image, from_file);
}

/// A batch of images of several sizes (so several input shapes, batched apart) gives each image
/// the detections and verdicts that `detect` gives it alone.
#[test]
fn the_detect_batch_example_matches_one_by_one() {
    let (model, scorer) = (
        repo_path("models/shapes.safetensors"),
        repo_path("models/shapes-scorer.safetensors"),
    );
    let images: Vec<String> = [
        "assets/images/test_mixed_00000.png",
        "tests/fixtures/yolo_next/images/letterbox320_wide_640x360.png",
        "assets/images/test_mixed_00001.png",
        "assets/images/test_mixed_00002.png",
        "tests/fixtures/yolo_next/images/letterbox320_tall_300x500.png",
        "assets/images/test_mixed_00003.png",
    ]
    .iter()
    .map(|p| repo_path(p))
    .collect();
    let paths: Vec<&str> = images.iter().map(String::as_str).collect();
    let batch = detect_batch_example::detect_batch(&model, &scorer, &paths).unwrap();
    let detector =
        oodbox::OodDetector::load(model.as_ref(), scorer.as_ref(), &oodbox::Device::Cpu).unwrap();
    assert_eq!(batch.len(), images.len());
    for (path, detections) in paths.iter().zip(&batch) {
        let alone = detector
            .detect(&oodbox::load_rgb(path.as_ref()).unwrap())
            .unwrap();
        assert_eq!(detections, &alone, "{path}");
    }
    assert!(batch.iter().filter(|d| !d.is_empty()).count() >= 4);
    assert!(detector.detect_batch(&[]).unwrap().is_empty());
}

/// Every kind of the registry table, so that a new kind is covered without editing this test:
/// it fits on the shapes boxes, keeps the calibration promise on held-out ID boxes (never more
/// flagged than the 99% binomial interval allows; ties may make it conservative) and its scorer
/// file loads back to the same verdicts.
#[test]
fn every_kind_fits_calibrates_and_round_trips_through_its_file() {
    let (fit, calibration, test) = (known("train"), known("val"), known("test_id"));
    let dir = tempfile::tempdir().unwrap();
    for kind in oodbox::ood::kinds() {
        let scorer = FittedScorer::fit(kind, None, &[], &fit, &calibration, &FitOptions::default())
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let verdicts = scorer.score(&test, None).unwrap();
        let flagged = verdicts.iter().filter(|b| b.is_ood).count();
        let (_, high) = interval_99(test.len(), 0.05);
        assert!(
            flagged <= high,
            "{kind}: {flagged} of {} ID boxes flagged at alpha 0.05, above {high}",
            test.len()
        );
        let path = dir.path().join(format!("{kind}.safetensors"));
        scorer.save(&path).unwrap();
        let again = FittedScorer::load(&path).unwrap();
        assert_eq!(again.name(), kind);
        assert_eq!(again.score(&test, None).unwrap(), verdicts, "{kind}");
    }
}

#[test]
fn the_scorer_listing_and_fit_help_name_every_kind() {
    let out = oodbox(&["scorers"]);
    assert!(out.status.success());
    let listing = String::from_utf8(out.stdout).unwrap();
    assert_eq!(listing, oodbox::ood::markdown());
    let help = String::from_utf8(oodbox(&["fit", "--help"]).stdout).unwrap();
    for kind in oodbox::ood::kinds() {
        assert!(listing.contains(&format!("| `{kind}` |")), "{kind}");
        assert!(help.contains(kind), "fit --help lacks {kind}: {help}");
    }
    for shaping in oodbox::ood::shapings() {
        assert!(help.contains(shaping), "fit --help lacks {shaping}");
    }
}

/// `fit --tail` says per calibration set which tail it fitted, and `score` marks the p-values
/// that come from it, at the top of the file and per box.
#[test]
fn fit_with_a_tail_says_what_it_fitted_and_score_marks_extrapolated_p_values() {
    let dir = tempfile::tempdir().unwrap();
    let scorer = dir.path().join("tail.safetensors");
    let (train, val) = (fixture("train"), fixture("val"));
    let out = oodbox(&[
        "fit",
        "--scorer",
        "energy",
        "--boxes",
        train.to_str().unwrap(),
        "--calibration-boxes",
        val.to_str().unwrap(),
        "--tail",
        "--out",
        scorer.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Four classes with about 265 calibration boxes: 12 or 13 points above the 0.95 quantile.
    for class in ["circle", "square", "triangle", "star"] {
        assert!(
            stderr.contains(&format!("tail p-values, class `{class}`: ")),
            "{stderr}"
        );
    }
    assert!(stderr.contains("not by exchangeability alone"), "{stderr}");
    let json = dir.path().join("far.json");
    let far = fixture("test_ood_far");
    let out = oodbox(&[
        "score",
        "--scorer",
        scorer.to_str().unwrap(),
        "--boxes",
        far.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["p_value_tail"]["quantile"], 0.95);
    assert!(doc["p_value_tail"]["note"]
        .as_str()
        .unwrap()
        .contains("tail model"));
    let boxes = doc["boxes"].as_array().unwrap();
    // The conformal floor 1/(n+1) of the smallest class set (253 boxes) bounds them all.
    let floor = 1.0 / 254.0;
    let extrapolated: Vec<&Value> = boxes
        .iter()
        .filter(|b| b["p_value_extrapolated"] == true)
        .collect();
    assert!(!extrapolated.is_empty());
    assert!(extrapolated
        .iter()
        .all(|b| b["p_value"].as_f64().unwrap() <= floor));
    // Too few points for a tail: the fit says why and the p-values stay conformal.
    let out = oodbox(&[
        "fit",
        "--scorer",
        "energy",
        "--boxes",
        train.to_str().unwrap(),
        "--calibration-boxes",
        val.to_str().unwrap(),
        "--tail",
        "--tail-min-points",
        "60",
        "--out",
        scorer.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tail p-values, pooled: plain conformal: 53 of 1069"),
        "{stderr}"
    );
}

/// `fit --outliers` repeated trains against the boxes of every set, and refuses sets of
/// another detector, naming the files.
#[test]
fn fit_takes_several_outlier_sets() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("safe.safetensors");
    let (near, far) = (fixture("test_ood_near"), fixture("test_ood_far"));
    let fit = |outliers: &[&Path]| {
        let mut args = vec![
            "fit",
            "--scorer",
            "safe",
            "--param",
            "surrogate=unknown",
            "--param",
            "epochs=2",
        ];
        let train = fixture("train");
        let val = fixture("val");
        let (train, val) = (train.to_str().unwrap(), val.to_str().unwrap());
        args.extend(["--boxes", train, "--calibration-boxes", val, "--quiet"]);
        for o in outliers {
            args.extend(["--outliers", o.to_str().unwrap()]);
        }
        args.extend(["--out", out.to_str().unwrap()]);
        oodbox(&args)
    };
    let run = fit(&[&near, &far]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let scorer = FittedScorer::load(&out).unwrap();
    let (near_set, far_set) = (BoxSet::load(&near).unwrap(), BoxSet::load(&far).unwrap());
    let both = format!("{} + {}", near_set.source, far_set.source);
    assert_eq!(scorer.outliers_source(), Some(both.as_str()));
    let mut other = far_set;
    other.set_fingerprint("sha256:another-model");
    let other_path = dir.path().join("other.safetensors");
    other.save(&other_path).unwrap();
    let run = fit(&[&near, &other_path]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("gathering the outlier box sets")
            && err.contains("other.safetensors")
            && err.contains("differ in detector"),
        "{err}"
    );
}
