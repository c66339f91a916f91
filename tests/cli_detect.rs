//! The `detect` and `extract` commands on real folders: odd images, a corrupt file, no images.

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use oodbox::data::boxset::BoxSet;
use oodbox::synth::world::{render_scene, Split};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shapes.safetensors");

fn oodbox(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oodbox"))
        .args(args)
        .output()
        .unwrap()
}

/// A folder of one of every awkward kind of image, plus a corrupt file.
fn awkward_folder(dir: &Path) {
    let scene = |i| render_scene(5, Split::TestId, i, 256, 256).image;
    scene(0).save(dir.join("a_scene.png")).unwrap();
    scene(1).save(dir.join("b_scene.jpg")).unwrap();
    RgbImage::from_pixel(1, 1, Rgb([200, 10, 10]))
        .save(dir.join("c_one_pixel.png"))
        .unwrap();
    let deep: ImageBuffer<Rgb<u16>, Vec<u16>> = ImageBuffer::from_fn(64, 48, |x, y| {
        Rgb([x as u16 * 1000, y as u16 * 1300, 40000])
    });
    deep.save(dir.join("d_sixteen_bit.png")).unwrap();
    GrayImage::from_fn(50, 70, |x, _| Luma([x as u8 * 5]))
        .save(dir.join("e_grey.png"))
        .unwrap();
    RgbaImage::from_pixel(33, 17, Rgba([1, 2, 3, 4]))
        .save(dir.join("f_rgba.png"))
        .unwrap();
    std::fs::write(dir.join("g_corrupt.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
}

#[test]
fn a_corrupt_image_is_reported_and_the_rest_processed() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    awkward_folder(&images);
    let json = dir.path().join("out.json");
    let annotated = dir.path().join("annotated");
    let out = oodbox(&[
        "detect",
        "--model",
        MODEL,
        "--input",
        images.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--imgsz",
        "256",
        "--with-features",
        "--out",
        annotated.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a failed input must give a non-zero exit code"
    );
    assert!(stderr.contains("g_corrupt.png"), "{stderr}");

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let processed: Vec<&str> = doc["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert_eq!(processed.len(), 6, "{processed:?}");
    // Each input names its annotated image.
    for image in doc["images"].as_array().unwrap() {
        let written = Path::new(image["annotated"].as_str().unwrap());
        let input = Path::new(image["path"].as_str().unwrap());
        assert!(written.starts_with(&annotated), "{image}");
        assert_eq!(written.file_stem(), input.file_stem());
        assert!(written.is_file());
    }
    assert_eq!(doc["failed"].as_array().unwrap().len(), 1);
    let written = std::fs::read_dir(&annotated).unwrap().count();
    assert_eq!(written, 6, "one annotated image per readable input");
    let first = &doc["images"][0];
    assert_eq!(
        (first["width"].as_u64(), first["height"].as_u64()),
        (Some(256), Some(256))
    );
    let detections = first["detections"].as_array().unwrap();
    assert!(
        !detections.is_empty(),
        "the fixture model should find shapes in a shapes scene"
    );
    for d in detections {
        assert_eq!(d["logits"].as_array().unwrap().len(), 4);
        assert!(d["feature"].as_array().unwrap().len() > 4);
        assert!(d["class_name"].is_string());
        assert!(d.get("ood").is_none(), "no scorer, no ood field");
    }
}

#[test]
fn an_empty_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = oodbox(&[
        "detect",
        "--model",
        MODEL,
        "--input",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds no image") && stderr.contains(dir.path().to_str().unwrap()),
        "{stderr}"
    );
}

#[test]
fn a_corrupt_checkpoint_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("yolov8n.pt");
    std::fs::write(&model, b"PK\x03\x04 a pickled torch checkpoint").unwrap();
    render_scene(0, Split::TestId, 0, 64, 64)
        .image
        .save(dir.path().join("x.png"))
        .unwrap();
    let out = oodbox(&[
        "detect",
        "--model",
        model.to_str().unwrap(),
        "--input",
        dir.path().join("x.png").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("yolov8n.pt") && stderr.contains("truncated or corrupt"),
        "{stderr}"
    );
}

#[test]
fn extract_writes_a_box_set_of_every_detection() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        render_scene(9, Split::TestId, i, 256, 256)
            .image
            .save(dir.path().join(format!("{i}.png")))
            .unwrap();
    }
    let glob = dir.path().join("*.png");
    let json = dir.path().join("d.json");
    let boxes = dir.path().join("boxes.safetensors");
    let common = [
        "--model",
        MODEL,
        "--imgsz",
        "256",
        "--quiet",
        "--input",
        glob.to_str().unwrap(),
    ];
    let out = oodbox(&[&["detect", "--json", json.to_str().unwrap()][..], &common].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = oodbox(&[&["extract", "--out", boxes.to_str().unwrap()][..], &common].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let per_image: Vec<usize> = doc["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["detections"].as_array().unwrap().len())
        .collect();
    let set = BoxSet::load(&boxes).unwrap();
    assert_eq!(set.len(), per_image.iter().sum::<usize>());
    assert!(!set.is_empty());
    assert_eq!(
        set.class_names,
        vec!["circle", "square", "triangle", "star"]
    );
    assert!(set.fingerprint.starts_with("sha256:"));
    assert_eq!(set.head.as_ref().unwrap().levels.len(), 3);
    let first_logits: Vec<f32> = doc["images"][0]["detections"][0]["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(set.logit_row(0), &first_logits[..]);
}

/// `bench --scorer` with a scorer that reads ROI features (the demo's) makes them, as `detect
/// --scorer` does, and times its scoring.
#[test]
fn bench_times_a_scorer_that_reads_roi_features() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let scorer = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/shapes-scorer-exposure.safetensors"
    );
    let out = oodbox(&[
        "bench",
        "--model",
        MODEL,
        "--scorer",
        scorer,
        "--imgsz",
        "256",
        "--iters",
        "2",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(
        report["score_ms"]["median"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
