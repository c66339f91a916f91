//! Loading Hugging Face DETR folders: the `facebook/detr-resnet-50` tensor layout (from the
//! committed list, no download) and bad input.

use candle_core::{DType, Device, Tensor};
use oodbox::detect::detr::DetrDetector;
use oodbox::detect::{load_detector, Stages};
use oodbox::{DetectOptions, Error};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/detr")
}

/// `config.json` as the Hub's facebook/detr-resnet-50 has it (transformers 4.x layout).
fn hub_config() -> Value {
    let id2label: serde_json::Map<String, Value> = (0..91)
        .map(|i| (i.to_string(), json!(format!("label{i}"))))
        .collect();
    json!({
        "architectures": ["DetrForObjectDetection"],
        "model_type": "detr",
        "activation_function": "relu",
        "backbone": "resnet50",
        "backbone_config": null,
        "use_timm_backbone": true,
        "use_pretrained_backbone": true,
        "dilation": false,
        "d_model": 256,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "encoder_attention_heads": 8,
        "decoder_attention_heads": 8,
        "encoder_ffn_dim": 2048,
        "decoder_ffn_dim": 2048,
        "num_queries": 100,
        "position_embedding_type": "sine",
        "id2label": id2label,
    })
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// Copies a fixture model folder, letting `edit` change its config and tensors.
fn edited_copy(
    dir: &Path,
    model: &str,
    edit: impl FnOnce(&mut Value, &mut HashMap<String, Tensor>),
) -> PathBuf {
    let src = fixtures().join(model);
    let out = dir.join(model);
    std::fs::create_dir_all(&out).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut config, &mut tensors);
    write_json(&out.join("config.json"), &config);
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
    out
}

fn load_error(folder: &Path) -> Error {
    match DetrDetector::load(folder, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", folder.display()),
        Err(e) => e,
    }
}

#[test]
fn every_tensor_of_detr_resnet50_loads() {
    let listing: HashMap<String, Vec<usize>> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("detr_resnet50_tensors.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(listing.len(), 530);
    // Cheap stand-ins of exactly those names and shapes (f16, which also exercises that path).
    let tensors: HashMap<String, Tensor> = listing
        .iter()
        .map(|(name, shape)| {
            let t = Tensor::zeros(shape.as_slice(), DType::F16, &Device::Cpu).unwrap();
            (name.clone(), t)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    write_json(&dir.path().join("config.json"), &hub_config());

    // Loading fails if any tensor is missing, misshapen, or left unused.
    let detector = load_detector(dir.path(), &Device::Cpu).unwrap();
    let names = detector.class_names();
    assert_eq!(names.len(), 92);
    assert_eq!(
        (names[0].as_str(), names[91].as_str()),
        ("label0", "no-object")
    );
    let head = &detector.head().levels;
    assert_eq!((head.len(), head[0].classes, head[0].dim), (1, 92, 256));
}

#[test]
fn a_missing_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("hf_r50/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let err = load_error(dir.path());
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("config.json") && err.contains("missing"),
        "{err}"
    );
    let err = load_detector(dir.path(), &Device::Cpu).err().unwrap();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn an_unknown_backbone_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_copy(dir.path(), "timm_r50", |config, _| {
        config["backbone_config"]["backbone"] = json!("resnet34");
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("unknown backbone `resnet34`"), "{err}");
    assert!(err.contains("config.json"), "{err}");

    let folder = edited_copy(dir.path(), "hf_r50", |config, _| {
        config["backbone_config"]["model_type"] = json!("convnext");
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("unknown backbone") && err.contains("convnext"),
        "{err}"
    );
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let name = "model.backbone.conv_encoder.model.encoder.stages.2.layers.1.layer.1.normalization.running_var";
    let folder = edited_copy(dir.path(), "hf_r50", |_, tensors| {
        tensors.remove(name).unwrap();
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::MissingTensor { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains(name) && err.contains("missing"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn config_and_weights_that_disagree_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // A wider transformer than the weights have.
    let folder = edited_copy(dir.path(), "timm_r50", |config, _| {
        config["d_model"] = json!(64);
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::WrongShape { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("has shape") && err.contains("expected"),
        "{err}"
    );

    // More queries than the weights have.
    let folder = edited_copy(dir.path(), "hf_r50", |config, _| {
        config["num_queries"] = json!(100);
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::WrongShape { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("model.query_position_embeddings.weight"),
        "{err}"
    );

    // ResNet-101 in the config, ResNet-50 blocks in the weights.
    let folder = edited_copy(dir.path(), "timm_r50", |config, _| {
        config["backbone_config"]["backbone"] = json!("resnet101");
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("[3, 4, 23, 3]") && err.contains("[3, 4, 6, 3]"),
        "{err}"
    );

    // Fewer decoder layers in the config than in the weights: the rest would go unused.
    let folder = edited_copy(dir.path(), "hf_r50", |config, _| {
        config["decoder_layers"] = json!(1);
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains("model.decoder.layers.1."), "{err}");

    // More labels than the class head has rows.
    let folder = edited_copy(dir.path(), "hf_r50", |config, _| {
        config["id2label"]["7"] = json!("extra");
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("id2label") && err.contains("class_labels_classifier"),
        "{err}"
    );

    // The largest id there is: it once overflowed `id + 1` and panicked (a huge id allocated).
    let folder = edited_copy(dir.path(), "hf_r50", |config, _| {
        config["id2label"]["18446744073709551615"] = json!("far");
    });
    let err = load_error(&folder);
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("id2label") && err.contains("class_labels_classifier"),
        "{err}"
    );
}

#[test]
fn in_memory_names_of_transformers_5_load_too() {
    // A file written from a transformers 5.x state_dict: `backbone.model`, `o_proj`, `mlp.fc1`.
    let dir = tempfile::tempdir().unwrap();
    let folder = edited_copy(dir.path(), "timm_r50", |_, tensors| {
        *tensors = tensors
            .drain()
            .map(|(name, t)| {
                let name = name
                    .replace("model.backbone.conv_encoder.", "model.backbone.")
                    .replace(".out_proj.", ".o_proj.")
                    .replace(".fc1.", ".mlp.fc1.")
                    .replace(".fc2.", ".mlp.fc2.");
                (name, t)
            })
            .collect();
    });
    std::fs::copy(
        fixtures().join("timm_r50/preprocessor_config.json"),
        folder.join("preprocessor_config.json"),
    )
    .unwrap();
    let renamed = DetrDetector::load(&folder, &Device::Cpu).unwrap();
    let original = DetrDetector::load(&fixtures().join("timm_r50"), &Device::Cpu).unwrap();
    let image = image::RgbImage::from_fn(90, 70, |x, y| image::Rgb([x as u8 * 2, y as u8 * 3, 77]));
    let options = DetectOptions::default();
    let a = renamed
        .forward(&renamed.preprocess(&image, &options).unwrap())
        .unwrap();
    let b = original
        .forward(&original.preprocess(&image, &options).unwrap())
        .unwrap();
    let diff = (a.logits - b.logits)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn a_file_that_is_no_model_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.bin");
    std::fs::write(&path, b"not a model").unwrap();
    let err = load_detector(&path, &Device::Cpu).err().unwrap();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
    let err = err.to_string();
    assert!(
        err.contains("weights.bin") && err.contains("not a model"),
        "{err}"
    );
}
