//! Bad input from the command line and from files: out-of-range settings, oversized images,
//! unusable weights. Each is a clear error naming the item (exit 1), a warning, or skipped with
//! the rest of the run going on; never a panic.

use oodbox::synth::world::{render_scene, Split};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shapes.safetensors");
const SCORER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/shapes-scorer.safetensors"
);

fn oodbox(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oodbox"))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit 1 with every `expected` text in the message, and no panic.
fn assert_refused(out: &Output, expected: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    for e in expected {
        assert!(err.contains(e), "`{e}` not in: {err}");
    }
}

fn scene(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    render_scene(5, Split::TestMixed, 0, 256, 256)
        .image
        .save(&path)
        .unwrap();
    path.to_str().unwrap().to_string()
}

/// A PNG of a few hundred bytes that declares 50000×50000 pixels.
fn decompression_bomb(path: &Path) {
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&[0; 3], 1, 1, image::ExtendedColorType::Rgb8)
        .unwrap();
    // IHDR: 8-byte signature, 4-byte length, "IHDR", width, height; its CRC follows the 13 bytes.
    png[16..20].copy_from_slice(&50_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&50_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(path, png).unwrap();
}

fn crc32(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |mut crc, &b| {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
        crc
    })
}

use image::ImageEncoder;

#[test]
fn detection_settings_out_of_range_are_refused_with_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let image = scene(dir.path(), "scene.png");
    let cases: [(&[&str], &str); 8] = [
        (&["--conf", "2"], "conf = 2 is outside [0, 1]"),
        (&["--conf", "nan"], "conf = NaN is outside [0, 1]"),
        // A negative number is a value, not a flag.
        (&["--conf", "-1"], "conf = -1 is outside [0, 1]"),
        (&["--iou", "5"], "iou = 5 is outside [0, 1]"),
        (&["--iou", "inf"], "iou = inf is outside [0, 1]"),
        (
            &["--imgsz", "100000"],
            "imgsz = 100000 is outside [1, 4096] (set OODBOX_MAX_IMGSZ",
        ),
        (&["--max-det", "0"], "max_det = 0 is outside [1, ∞)"),
        (
            &["--scorer", SCORER, "--alpha", "-0.5"],
            "--alpha must lie in (0, 1)",
        ),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["detect", "--model", MODEL, "--input", &image, "--quiet"];
        args.extend_from_slice(flags);
        assert_refused(&oodbox(&args, &[]), &[expected]);
    }
}

#[test]
fn an_input_size_off_the_stride_is_rounded_up_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let image = scene(dir.path(), "scene.png");
    let json = dir.path().join("out.json");
    let args = [
        "detect",
        "--model",
        MODEL,
        "--input",
        &image,
        "--json",
        json.to_str().unwrap(),
        "--imgsz",
        "100",
    ];
    let out = oodbox(&args, &[]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: imgsz 100 is not a multiple of the stride 32: updated to 128"),
        "{err}"
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(!doc["images"][0]["detections"]
        .as_array()
        .unwrap()
        .is_empty());
    // The limit on the input size is the environment's.
    let out = oodbox(&args, &[("OODBOX_MAX_IMGSZ", "64")]);
    assert_refused(&out, &["imgsz = 100 is outside [1, 64]"]);
}

/// `oodbox COMMAND --model MODEL INPUT_FLAG INPUT OUTPUT_FLAG OUTPUT --imgsz 256`.
fn run_at_256(command: &str, input: (&str, &Path), output: (&str, &Path)) -> Output {
    let (input, output) = (
        [input.0, input.1.to_str().unwrap()],
        [output.0, output.1.to_str().unwrap()],
    );
    let mut args = vec![command, "--model", MODEL, "--imgsz", "256"];
    args.extend(input.iter().chain(&output));
    oodbox(&args, &[])
}

#[test]
fn an_image_over_the_pixel_limit_is_skipped_and_the_rest_processed() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    scene(&images, "a_scene.png");
    decompression_bomb(&images.join("b_bomb.png"));
    scene(&images, "c_scene.png");
    let json = dir.path().join("out.json");
    let out = run_at_256("detect", ("--input", &images), ("--json", &json));
    assert_refused(
        &out,
        &[
            "b_bomb.png",
            "declares 50000×50000",
            "OODBOX_MAX_IMAGE_PIXELS",
            "2 images",
        ],
    );
    let warning = stderr(&out);
    assert_eq!(warning.matches("b_bomb.png").count(), 1, "{warning}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["images"].as_array().unwrap().len(), 2);
    assert!(doc["failed"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("b_bomb.png"));

    // The same through a dataset (extract, fit and eval read images this way).
    let boxes = dir.path().join("boxes.safetensors");
    let out = run_at_256("extract", ("--data", &images), ("--out", &boxes));
    let err = stderr(&out);
    assert!(
        err.contains("skipped") && err.contains("b_bomb.png") && !err.contains("panicked"),
        "{err}"
    );
    assert_eq!(err.matches("b_bomb.png").count(), 1, "{err}");
    assert!(boxes.exists(), "{err}");

    // The limit is the environment's: lowered, it refuses the ordinary scene too.
    let scene_only = scene(dir.path(), "alone.png");
    let out = oodbox(
        &[
            "detect",
            "--model",
            MODEL,
            "--input",
            &scene_only,
            "--quiet",
        ],
        &[("OODBOX_MAX_IMAGE_PIXELS", "1000")],
    );
    assert_refused(&out, &["alone.png", "more than the limit of 1000"]);
    let out = oodbox(
        &[
            "detect",
            "--model",
            MODEL,
            "--input",
            &scene_only,
            "--quiet",
        ],
        &[("OODBOX_MAX_IMAGE_PIXELS", "lots")],
    );
    assert_refused(&out, &["OODBOX_MAX_IMAGE_PIXELS = lots is outside"]);
}

/// The model file with `tensor` replaced by `replace(its f32 values)` as (dtype, bytes).
fn edited_model(path: &Path, tensor: &str, replace: impl Fn(Vec<f32>) -> (Dtype, Vec<u8>)) {
    let bytes = std::fs::read(MODEL).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut edited: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        let (dtype, data) = if name == tensor {
            assert_eq!(view.dtype(), Dtype::F16);
            let values = view
                .data()
                .chunks_exact(2)
                .map(|b| half_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect();
            replace(values)
        } else {
            (view.dtype(), view.data().to_vec())
        };
        edited.push((name, dtype, view.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView)> = edited
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let out = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(path, out).unwrap();
}

/// IEEE half to f32 (normal numbers and zero suffice for trained weights).
fn half_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exponent = ((h >> 10) & 0x1f) as u32;
    let mantissa = (h & 0x3ff) as u32;
    match exponent {
        0 => {
            f32::from_bits(sign)
                + (mantissa as f32) * 2f32.powi(-24) * if sign != 0 { -1.0 } else { 1.0 }
        }
        _ => f32::from_bits(sign | ((exponent + 112) << 23) | (mantissa << 13)),
    }
}

#[test]
fn weights_that_are_not_floating_point_or_not_finite_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let image = scene(dir.path(), "scene.png");
    let tensor = "model.0.conv.weight";
    let int64 = dir.path().join("int64.safetensors");
    edited_model(&int64, tensor, |v| {
        let data = v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect();
        (Dtype::I64, data)
    });
    let nan = dir.path().join("nan.safetensors");
    edited_model(&nan, tensor, |mut v| {
        v[5] = f32::NAN;
        (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    });
    let inf = dir.path().join("inf.safetensors");
    edited_model(&inf, tensor, |mut v| {
        v[0] = f32::NEG_INFINITY;
        (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
    });
    let cases = [
        (&int64, "is I64: weights must be floating point"),
        (&nan, "holds NaN at flat index 5: weights must be finite"),
        (&inf, "holds -inf at flat index 0"),
    ];
    for (model, expected) in cases {
        let out = oodbox(
            &[
                "detect",
                "--model",
                model.to_str().unwrap(),
                "--input",
                &image,
            ],
            &[],
        );
        let name = model.file_name().unwrap().to_str().unwrap();
        assert_refused(&out, &[name, &format!("tensor `{tensor}`"), expected]);
    }
}
