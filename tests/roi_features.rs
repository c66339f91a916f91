//! ROI features from the maps the forward pass computed: every layer a family exposes is kept
//! at its stride, the ROI features of a box are ROI-align on that very map, and a scorer file
//! records the sources it reads (a model without them is refused, naming them).

use candle_core::Device;
use oodbox::core::sources::{FeatureSources, RoiSource};
use oodbox::data::boxset::BoxSet;
use oodbox::detect::roi_align::{roi_align, FeatureMap, Sampling};
use oodbox::detect::{load_detector, Detector};
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::pipeline::OodDetector;
use oodbox::synth::world::{render_scene, Split};
use oodbox::{DetectOptions, InputSize, ScorerFault};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A 256×256 scene of ID shapes.
fn scene(i: usize) -> image::RgbImage {
    render_scene(0, Split::TestId, i, 256, 256).image
}

fn roi(text: &str) -> RoiSource {
    text.parse().unwrap()
}

fn options(roi: Vec<RoiSource>, imgsz: u32) -> DetectOptions {
    DetectOptions {
        imgsz: InputSize::square(imgsz),
        conf: 0.05,
        roi,
        ..DetectOptions::default()
    }
}

/// Every exposed layer of every family gives `channels·k·k` finite values per box, and the
/// same box's `roi:<layer>` is the same with other sources asked beside it.
#[test]
fn every_exposed_layer_gives_features() {
    let models = [
        root().join("models/shapes.safetensors"),
        root().join("tests/fixtures/yolo11/best.pt"),
        root().join("tests/fixtures/yolo26/best.pt"),
        root().join("tests/fixtures/detr/timm_r50"),
    ];
    let image = scene(1);
    for model in models {
        let detector = load_detector(&model, &Device::Cpu).unwrap();
        let layers = detector.feature_layers();
        assert!(!layers.is_empty(), "{}", model.display());
        let all: Vec<RoiSource> = layers
            .iter()
            .map(|l| roi(&format!("roi:{}@2", l.name)))
            .collect();
        // DETR's softmax probabilities are all above 0: 0 keeps every query of the
        // random-init fixture.
        let conf = if detector.family() == "detr" {
            0.0
        } else {
            0.05
        };
        let with_all = DetectOptions {
            conf,
            ..options(all.clone(), 256)
        };
        let boxes = detector.detect(&image, &with_all).unwrap();
        assert!(!boxes.is_empty(), "{}", model.display());
        let plain = detector
            .detect(
                &image,
                &DetectOptions {
                    roi: vec![],
                    ..with_all.clone()
                },
            )
            .unwrap();
        for (b, p) in boxes.iter().zip(&plain) {
            // ROI features leave the boxes as they were.
            assert_eq!(
                (b.bbox, &b.logits, &b.feature),
                (p.bbox, &p.logits, &p.feature)
            );
            assert_eq!(b.roi_features.len(), all.len());
            for (f, source) in b.roi_features.iter().zip(&all) {
                assert_eq!(&f.source, source);
                assert!(f.values.len() >= 4 && f.values.len() % 4 == 0);
                assert!(f.values.iter().all(|v| v.is_finite()));
            }
        }
        let one = all.last().unwrap().clone();
        let alone = detector
            .detect(
                &image,
                &DetectOptions {
                    roi: vec![one],
                    ..with_all.clone()
                },
            )
            .unwrap();
        assert_eq!(
            alone[0].roi_features[0],
            *boxes[0].roi_features.last().unwrap()
        );
    }
}

/// `roi:15` of the YOLOv8 shapes model is ROI-align (1×1, adaptive sampling) on its neck's
/// stride-8 map, the head input of level 0, on the box in network-input pixels (a 256×256
/// image at imgsz 256 is not letterboxed).
#[test]
fn yolov8_layer_15_is_the_level_0_neck_map() {
    use oodbox::detect::yolov8::load_safetensors;
    use oodbox::detect::Stages;
    let detector =
        load_safetensors(&root().join("models/shapes.safetensors"), &Device::Cpu).unwrap();
    let image = scene(1);
    assert_eq!(image.dimensions(), (256, 256));
    let options = options(vec![roi("roi:15"), roi("roi:4")], 256);
    let input = detector.preprocess(&image, &options).unwrap();
    let output = detector.forward(&input).unwrap();
    let kept: Vec<usize> = output.kept.iter().map(|(l, _)| *l).collect();
    assert_eq!(kept, [4, 15]);
    let neck: Vec<f32> = output.neck[0].flatten_all().unwrap().to_vec1().unwrap();
    let layer_15: Vec<f32> = output.kept[1].1.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(neck, layer_15);
    assert_eq!(output.kept[0].1.dims()[1..3], [32, 32]);
    let (_, h, w, c) = output.neck[0].dims4().unwrap();
    let map = FeatureMap {
        data: &neck,
        channels: c,
        height: h,
        width: w,
    };
    let boxes = detector.postprocess(output, &input, &options).unwrap();
    // A box crossing the image's border is clipped in original pixels, not in the network's.
    let inside: Vec<_> = boxes
        .iter()
        .filter(|b| b.bbox.iter().all(|&v| v > 0.0 && v < 256.0))
        .collect();
    assert!(!inside.is_empty());
    for b in inside {
        let expected = roi_align(&map, b.bbox, 8.0, 1, Sampling::Adaptive);
        assert_eq!(b.roi_features[0].values, expected);
    }
}

/// Box sets of the shapes model on `images`, with the given ROI sources recorded.
fn box_set(detector: &dyn Detector, images: std::ops::Range<usize>, roi: &[RoiSource]) -> BoxSet {
    let options = options(roi.to_vec(), 256);
    let mut records = Vec::new();
    for i in images {
        let image = scene(i);
        records.extend(
            detector
                .detect(&image, &options)
                .unwrap()
                .into_iter()
                .map(|b| (i, b)),
        );
    }
    BoxSet::from_records(
        records.iter().map(|(i, b)| (*i, b)),
        detector.head(),
        detector.class_names(),
        detector.fingerprint(),
        "test",
    )
    .unwrap()
}

/// A scorer fitted on `roi:4@2` records it, pairs with the model, and detects with it; the
/// same file refused by a model without layer 4 names the missing source.
#[test]
fn scorer_files_record_their_sources_and_refuse_models_without_them() {
    let model = root().join("models/shapes.safetensors");
    let detector = load_detector(&model, &Device::Cpu).unwrap();
    let sources: FeatureSources = "roi:4@2".parse().unwrap();
    let mut fit = box_set(&detector, 1..13, &sources.roi())
        .select(&sources)
        .unwrap();
    fit.set_detect_options(Some(options(vec![], 256).used_by(&detector.settings_use())))
        .unwrap();
    let calibration = box_set(&detector, 13..25, &sources.roi())
        .select(&sources)
        .unwrap();
    assert!(
        calibration.len() >= 20,
        "{} calibration boxes",
        calibration.len()
    );
    let fitted =
        FittedScorer::fit("knn", None, &[], &fit, &calibration, &FitOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knn-roi.safetensors");
    fitted.save(&path).unwrap();
    let loaded = FittedScorer::load(&path).unwrap();
    assert_eq!(loaded.feature_sources(), &sources);

    // The scorer reads its own sources from boxes that carry more.
    let richer = box_set(&detector, 13..15, &[roi("roi:15"), roi("roi:4@2")]);
    assert_eq!(
        loaded.raw_scores(&richer).unwrap(),
        fitted
            .raw_scores(&calibration.subset(&(0..richer.len()).collect::<Vec<_>>()))
            .unwrap()
    );
    let cls_only = box_set(&detector, 13..15, &[]);
    let err = loaded.raw_scores(&cls_only).unwrap_err();
    assert_eq!(err.scorer_fault(), Some(ScorerFault::Mismatch), "{err}");
    let err = err.to_string();
    assert!(err.contains("no feature source roi:4@2"), "{err}");

    let paired = OodDetector::new(detector, FittedScorer::load(&path).unwrap()).unwrap();
    assert_eq!(paired.options.roi, [roi("roi:4@2")]);
    let verdicts = paired.detect(&scene(30)).unwrap();
    assert!(!verdicts.is_empty());

    // DETR has no layer 4: the pairing is refused, naming the source (the fingerprint check is
    // first, so the scorer is made model-agnostic the way a hand-written box set is).
    let mut agnostic = fit.clone();
    agnostic.set_fingerprint("");
    let mut agnostic_cal = calibration;
    agnostic_cal.set_fingerprint("");
    let fitted = FittedScorer::fit(
        "knn",
        None,
        &[],
        &agnostic,
        &agnostic_cal,
        &FitOptions::default(),
    )
    .unwrap();
    fitted.save(&path).unwrap();
    let detr = load_detector(&root().join("tests/fixtures/detr/timm_r50"), &Device::Cpu).unwrap();
    let err = OodDetector::new(detr, FittedScorer::load(&path).unwrap())
        .err()
        .unwrap();
    assert_eq!(err.scorer_fault(), Some(ScorerFault::Mismatch), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("roi:4@2") && err.contains("layer3") && err.contains("no layer"),
        "{err}"
    );
}
