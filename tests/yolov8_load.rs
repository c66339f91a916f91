//! YOLOv8 loading: architecture inference for every scale, both naming conventions, f16/bf16
//! files, error reporting, and the consistency of the outputs. All models are random-init.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use oodbox::detect::yolov8::{decode_boxes, Arch, Naming, Scale, YoloOutput, YoloV8};
use oodbox::error::Error;
use oodbox::nn::MapLayout;

type Shapes = HashMap<String, Vec<usize>>;

/// Independent re-statement of ultralytics `parse_model` on `yolov8.yaml`: the `state_dict`
/// names and shapes (without `num_batches_tracked`) for multiples (depth, width, max_channels).
fn ultralytics_state_dict(depth: f64, width: f64, max_channels: usize, nc: usize) -> Shapes {
    #[derive(Clone, Copy)]
    enum Row {
        Conv(usize),
        C2f(usize, usize),
        Sppf(usize),
        Up,
        Cat(usize),
        Detect,
    }
    use Row::*;
    let yaml = [
        Conv(64),
        Conv(128),
        C2f(128, 3),
        Conv(256),
        C2f(256, 6),
        Conv(512),
        C2f(512, 6),
        Conv(1024),
        C2f(1024, 3),
        Sppf(1024),
        Up,
        Cat(6),
        C2f(512, 3),
        Up,
        Cat(4),
        C2f(256, 3),
        Conv(256),
        Cat(12),
        C2f(512, 3),
        Conv(512),
        Cat(9),
        C2f(1024, 3),
        Detect,
    ];
    let make_divisible = |x: f64| (x / 8.0).ceil() as usize * 8;
    let wide = |c: usize| make_divisible(c.min(max_channels) as f64 * width);
    let deep = |n: usize| ((n as f64 * depth).round_ties_even() as usize).max(1);
    let mut out = Shapes::new();
    let mut conv = |p: &str, c1: usize, c2: usize, k: usize| {
        out.insert(format!("{p}.conv.weight"), vec![c2, c1, k, k]);
        for leaf in ["weight", "bias", "running_mean", "running_var"] {
            out.insert(format!("{p}.bn.{leaf}"), vec![c2]);
        }
    };
    let mut plain = Vec::new();
    let mut ch: Vec<usize> = Vec::new();
    for (i, row) in yaml.iter().enumerate() {
        let p = format!("model.{i}");
        let c1 = ch.last().copied().unwrap_or(3);
        let c2 = match *row {
            Conv(c) => {
                conv(&p, c1, wide(c), 3);
                wide(c)
            }
            C2f(c, n) => {
                let (c2, n) = (wide(c), deep(n));
                let h = c2 / 2;
                conv(&format!("{p}.cv1"), c1, 2 * h, 1);
                for j in 0..n {
                    conv(&format!("{p}.m.{j}.cv1"), h, h, 3);
                    conv(&format!("{p}.m.{j}.cv2"), h, h, 3);
                }
                conv(&format!("{p}.cv2"), (2 + n) * h, c2, 1);
                c2
            }
            Sppf(c) => {
                conv(&format!("{p}.cv1"), c1, c1 / 2, 1);
                conv(&format!("{p}.cv2"), 2 * c1, wide(c), 1);
                wide(c)
            }
            Up => c1,
            Cat(k) => c1 + ch[k],
            Detect => {
                let levels = [ch[15], ch[18], ch[21]];
                let c2 = 16.max(levels[0] / 4).max(64);
                let c3 = levels[0].max(nc.min(100));
                for (branch, hidden, c_out) in [("cv2", c2, 64), ("cv3", c3, nc)] {
                    for (l, &c_in) in levels.iter().enumerate() {
                        conv(&format!("{p}.{branch}.{l}.0"), c_in, hidden, 3);
                        conv(&format!("{p}.{branch}.{l}.1"), hidden, hidden, 3);
                        plain.push((
                            format!("{p}.{branch}.{l}.2.weight"),
                            vec![c_out, hidden, 1, 1],
                        ));
                        plain.push((format!("{p}.{branch}.{l}.2.bias"), vec![c_out]));
                    }
                }
                plain.push((format!("{p}.dfl.conv.weight"), vec![1, 16, 1, 1]));
                0
            }
        };
        ch.push(c2);
    }
    out.extend(plain);
    out
}

/// Independent re-statement of the ultralytics → Candle-example renaming.
fn to_candle_name(name: &str) -> String {
    let prefixes = [
        (0, "net.b1.0"),
        (1, "net.b1.1"),
        (2, "net.b2.0"),
        (3, "net.b2.1"),
        (4, "net.b2.2"),
        (5, "net.b3.0"),
        (6, "net.b3.1"),
        (7, "net.b4.0"),
        (8, "net.b4.1"),
        (9, "net.b5.0"),
        (12, "fpn.n1"),
        (15, "fpn.n2"),
        (16, "fpn.n3"),
        (18, "fpn.n4"),
        (19, "fpn.n5"),
        (21, "fpn.n6"),
        (22, "head"),
    ];
    let (index, rest) = name
        .strip_prefix("model.")
        .unwrap()
        .split_once('.')
        .unwrap();
    let prefix = prefixes
        .iter()
        .find(|(i, _)| i.to_string() == index)
        .unwrap()
        .1;
    match rest.strip_prefix("m.") {
        Some(inner) => format!("{prefix}.bottleneck.{inner}"),
        None => format!("{prefix}.{rest}"),
    }
}

fn shapes_of(varmap: &VarMap) -> Shapes {
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

fn tensors_of(varmap: &VarMap, dtype: DType) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().to_dtype(dtype).unwrap()))
        .collect()
}

fn builder(varmap: &VarMap, naming: Naming) -> VarBuilder<'static> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
    match naming {
        Naming::Candle => vb,
        Naming::Ultralytics => vb.rename_f(move |name| naming.file_name(name)),
    }
}

/// A random model whose BatchNorm statistics and affine terms are random too, so that
/// folding matters; returned with its variables.
fn random_model(arch: &Arch, naming: Naming) -> (VarMap, YoloV8) {
    let varmap = VarMap::new();
    YoloV8::load(builder(&varmap, naming), arch).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let (lo, hi) = if name.ends_with("running_mean") {
            (-0.5, 0.5)
        } else if name.ends_with("running_var") || name.ends_with("bn.weight") {
            (0.5, 2.0)
        } else if name.ends_with("bn.bias") {
            (-0.2, 0.2)
        } else {
            continue;
        };
        var.set(&Tensor::rand(lo as f32, hi, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    let model = YoloV8::load(builder(&varmap, naming), arch).unwrap();
    (varmap, model)
}

fn input(h: usize, w: usize) -> Tensor {
    Tensor::rand(0f32, 1., (1, 3, h, w), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn assert_same_outputs(a: &YoloOutput, b: &YoloOutput, tol: f32) {
    assert!(max_abs_diff(&a.box_logits, &b.box_logits) <= tol);
    assert!(max_abs_diff(&a.cls_logits, &b.cls_logits) <= tol);
    for (fa, fb) in a.cls_features.iter().zip(&b.cls_features) {
        assert!(max_abs_diff(fa, fb) <= tol);
    }
    for (na, nb) in a.neck.iter().zip(&b.neck) {
        assert!(max_abs_diff(na, nb) <= tol);
    }
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b) / max_abs_diff(b, &b.zeros_like().unwrap()).max(1e-12)
}

/// The fused channels-last CPU path (the default on CPU) against Candle's own ops, output by
/// output, relative to each output's largest magnitude. Every layer shape of the scale is on
/// this path, so a wrong kernel shows up in one of them.
fn assert_fused_path_matches_candle_ops(mut model: YoloV8, x: &Tensor, label: &str) {
    assert_eq!(model.layout(), MapLayout::Nhwc);
    let fused = model.forward(x).unwrap();
    model.set_layout(MapLayout::Nchw);
    let plain = model.forward(x).unwrap();
    let pairs = [
        (&fused.box_logits, &plain.box_logits),
        (&fused.cls_logits, &plain.cls_logits),
    ]
    .into_iter()
    .chain(fused.cls_features.iter().zip(&plain.cls_features))
    .chain(fused.neck.iter().zip(&plain.neck));
    for (i, (a, b)) in pairs.enumerate() {
        let d = max_rel_diff(a, b);
        assert!(d <= 1e-4, "{label}: output {i} differs by {d:e} (relative)");
    }
}

fn save(tensors: &HashMap<String, Tensor>, dir: &Path, file: &str) -> std::path::PathBuf {
    let path = dir.join(file);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

// Every scale plus a custom one (the multiples of the ultralytics parity check), nc 80 and 5,
// both namings. nc = 80 tensor counts and elements are those of ultralytics 8.4
// `DetectionModel(f"yolov8{s}.yaml").state_dict()` without num_batches_tracked.
#[test]
fn scale_n_round_trips() {
    round_trip(Some(Scale::N), Some((298, 3_167_792)));
}

#[test]
fn scale_s_round_trips() {
    round_trip(Some(Scale::S), Some((298, 11_186_592)));
}

#[test]
fn scale_m_round_trips() {
    round_trip(Some(Scale::M), Some((398, 25_935_760)));
}

#[test]
fn scale_l_round_trips() {
    round_trip(Some(Scale::L), Some((498, 43_737_984)));
}

#[test]
fn scale_x_round_trips() {
    round_trip(Some(Scale::X), Some((498, 68_287_728)));
}

#[test]
fn custom_multiples_round_trip() {
    round_trip(None, None);
}

/// For nc 80 and 5 and both namings: the model's tensor names and shapes equal ultralytics',
/// the architecture is inferred back from them, and a file round trip gives the same outputs
/// as the in-memory model. `None` = custom multiples (depth 0.5, width 0.375, max 768).
fn round_trip(scale: Option<Scale>, counts: Option<(usize, usize)>) {
    let dir = tempfile::tempdir().unwrap();
    let x = input(64, 96);
    let (d, w, max_channels) = scale.map_or((0.5, 0.375, 768), Scale::multiples);
    for nc in [80, 5] {
        let label = format!("{scale:?} nc={nc}");
        let expected = ultralytics_state_dict(d, w, max_channels, nc);
        let arch = match scale {
            Some(scale) => Arch::yolov8(scale, nc),
            None => Arch::from_multiples(d, w, max_channels, nc),
        };
        assert_eq!(
            Arch::from_tensor_shapes(&expected).unwrap(),
            arch,
            "{label}"
        );
        if let (80, Some((count, elements))) = (nc, counts) {
            assert_eq!(expected.len(), count, "{label}");
            let total: usize = expected.values().map(|s| s.iter().product::<usize>()).sum();
            assert_eq!(total, elements, "{label}");
        }
        for naming in [Naming::Ultralytics, Naming::Candle] {
            let expected: Shapes = match naming {
                Naming::Ultralytics => expected.clone(),
                Naming::Candle => expected
                    .iter()
                    .map(|(k, v)| (to_candle_name(k), v.clone()))
                    .collect(),
            };
            let (varmap, reference) = random_model(&arch, naming);
            assert_eq!(shapes_of(&varmap), expected, "{label} {naming:?}");
            assert_eq!(Arch::from_tensor_shapes(&expected).unwrap(), arch);

            let mut tensors = tensors_of(&varmap, DType::F32);
            if naming == Naming::Ultralytics {
                // PyTorch state dicts carry these; the loader ignores them.
                for name in expected.keys().filter(|k| k.ends_with("bn.running_var")) {
                    let counter = name.replace("running_var", "num_batches_tracked");
                    tensors.insert(counter, Tensor::new(7i64, &Device::Cpu).unwrap());
                }
            }
            let path = save(
                &tensors,
                dir.path(),
                &format!("{nc}_{naming:?}.safetensors"),
            );
            let model = YoloV8::from_safetensors(&path, &Device::Cpu).unwrap();
            std::fs::remove_file(&path).unwrap();
            assert_eq!(model.arch(), &arch);
            assert_eq!(model.nc(), nc);
            assert_eq!(model.feature_dim(), arch.head.cls_hidden);

            let out = model.forward(&x).unwrap();
            let levels = arch.level_channels();
            assert_eq!(out.level_shapes, vec![(8, 12), (4, 6), (2, 3)]);
            assert_eq!(out.box_logits.dims(), &[1, 64, 126]);
            assert_eq!(out.cls_logits.dims(), &[1, nc, 126]);
            for (i, &(h, w)) in out.level_shapes.iter().enumerate() {
                assert_eq!(out.cls_features[i].dims(), &[1, h, w, arch.head.cls_hidden]);
                assert_eq!(out.neck[i].dims(), &[1, h, w, levels[i]]);
            }
            assert_same_outputs(&out, &reference.forward(&x).unwrap(), 0.0);
            if nc == 80 && naming == Naming::Candle {
                assert_fused_path_matches_candle_ops(reference, &x, &label);
            }
        }
    }
}

#[test]
fn yolov8n_tensor_count() {
    let (varmap, _) = random_model(&Arch::yolov8(Scale::N, 80), Naming::Candle);
    let shapes = shapes_of(&varmap);
    let elements: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!((shapes.len(), elements), (298, 3_167_792));
    let arch = Arch::yolov8(Scale::N, 80);
    assert_eq!(arch.level_channels(), [64, 128, 256]);
    assert_eq!((arch.head.box_hidden, arch.head.cls_hidden), (64, 80));
    let x = Arch::yolov8(Scale::X, 80);
    assert_eq!(x.level_channels(), [320, 640, 640]);
    assert_eq!((x.head.box_hidden, x.head.cls_hidden), (80, 320));
}

#[test]
fn half_precision_files_load() {
    let arch = Arch::yolov8(Scale::N, 5);
    let (varmap, reference) = random_model(&arch, Naming::Ultralytics);
    let x = input(64, 64);
    let expected = reference.forward(&x).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let path = save(&tensors_of(&varmap, dtype), dir.path(), "half.safetensors");
        let model = YoloV8::from_safetensors(&path, &Device::Cpu).unwrap();
        assert_eq!(model.arch(), &arch);
        let out = model.forward(&x).unwrap();
        assert_eq!(out.cls_logits.dtype(), DType::F32);
        // Only the weights are rounded; the computation stays in F32.
        let scale = max_abs_diff(
            &expected.cls_logits,
            &expected.cls_logits.zeros_like().unwrap(),
        );
        let diff = max_abs_diff(&out.cls_logits, &expected.cls_logits);
        assert!(diff < 0.1 * scale, "{dtype:?}: {diff} vs {scale}");
    }
}

#[test]
fn class_head_reproduces_logits() {
    let (_, model) = random_model(&Arch::yolov8(Scale::N, 7), Naming::Candle);
    let out = model.forward(&input(96, 64)).unwrap();
    let heads = model.class_head();
    assert_eq!(heads.len(), 3);
    let mut offset = 0;
    for ((w, b), (features, &(h, wd))) in heads
        .iter()
        .zip(out.cls_features.iter().zip(&out.level_shapes))
    {
        assert_eq!(w.dims(), &[7, model.feature_dim()]);
        assert_eq!(b.dims(), &[7]);
        let f = features
            .reshape((h * wd, model.feature_dim()))
            .unwrap()
            .t()
            .unwrap();
        let logits = w
            .matmul(&f)
            .unwrap()
            .broadcast_add(&b.unsqueeze(1).unwrap())
            .unwrap();
        let expected = out
            .cls_logits
            .narrow(2, offset, h * wd)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let (d, scale) = (
            max_abs_diff(&logits, &expected),
            max_abs_diff(&expected, &expected.zeros_like().unwrap()),
        );
        assert!(d < 1e-5 * scale.max(1.0), "{d} vs scale {scale}");
        offset += h * wd;
    }
}

#[test]
fn decode_boxes_takes_the_bin_expectation_around_anchor_centres() {
    // Two levels: 1×2 at stride 8, 1×1 at stride 16. Anchor a puts all mass on bin k for
    // side s, so the distances are exact integers.
    let (levels, strides) = ([(1, 2), (1, 1)], [8, 16]);
    let sides = [[1, 2, 3, 4], [0, 0, 15, 15], [5, 6, 7, 8]];
    let mut logits = vec![0f32; 64 * 3];
    for (a, bins) in sides.iter().enumerate() {
        for (s, &k) in bins.iter().enumerate() {
            logits[(s * 16 + k) * 3 + a] = 50.;
        }
    }
    let logits = Tensor::from_vec(logits, (1, 64, 3), &Device::Cpu).unwrap();
    let boxes = decode_boxes(&logits, &levels, &strides).unwrap();
    assert_eq!(boxes.dims(), &[1, 3, 4]);
    let got: Vec<Vec<f32>> = boxes.squeeze(0).unwrap().to_vec2().unwrap();
    let want = [
        [
            (0.5 - 1.) * 8.,
            (0.5 - 2.) * 8.,
            (0.5 + 3.) * 8.,
            (0.5 + 4.) * 8.,
        ],
        [1.5 * 8., 0.5 * 8., (1.5 + 15.) * 8., (0.5 + 15.) * 8.],
        [
            (0.5 - 5.) * 16.,
            (0.5 - 6.) * 16.,
            (0.5 + 7.) * 16.,
            (0.5 + 8.) * 16.,
        ],
    ];
    for (g, w) in got.iter().zip(want) {
        for (g, w) in g.iter().zip(w) {
            assert!((g - w).abs() < 1e-3, "{got:?}");
        }
    }
    // Uniform logits: expectation 7.5 cells per side.
    let uniform = Tensor::zeros((2, 64, 3), DType::F32, &Device::Cpu).unwrap();
    let boxes = decode_boxes(&uniform, &levels, &strides).unwrap();
    let first: Vec<f32> = boxes.get(1).unwrap().get(0).unwrap().to_vec1().unwrap();
    assert_eq!(first, vec![-56., -56., 64., 64.]);
    assert!(decode_boxes(&uniform, &[(1, 2)], &[8]).is_err());
}

/// A yolov8n file (nc = 5) in the given naming, with one tensor changed by `edit`.
fn edited_file(
    dir: &Path,
    naming: Naming,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> std::path::PathBuf {
    let (varmap, _) = random_model(&Arch::yolov8(Scale::N, 5), naming);
    let mut tensors = tensors_of(&varmap, DType::F32);
    edit(&mut tensors);
    save(&tensors, dir, "edited.safetensors")
}

#[test]
fn missing_tensor_is_named_with_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (naming, name) in [
        (Naming::Ultralytics, "model.4.m.1.cv2.bn.running_var"),
        (Naming::Candle, "net.b2.2.bottleneck.1.cv2.bn.running_var"),
        (Naming::Ultralytics, "model.22.cv3.0.2.weight"),
        (Naming::Ultralytics, "model.22.dfl.conv.weight"),
        (Naming::Candle, "fpn.n3.conv.weight"),
    ] {
        let path = edited_file(dir.path(), naming, |t| {
            t.remove(name).unwrap();
        });
        let err = YoloV8::from_safetensors(&path, &Device::Cpu).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(&err, Error::MissingTensor { name: n, .. } if n == name),
            "{message}"
        );
        assert!(message.contains(name), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}

#[test]
fn wrong_shapes_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let cpu = Device::Cpu;
    for (name, shape) in [
        ("model.22.cv3.1.2.bias", vec![6]),
        ("model.6.m.0.cv1.bn.running_mean", vec![63]),
        ("model.0.conv.weight", vec![16, 3, 3, 5]),
        ("model.12.cv1.conv.weight", vec![128, 385, 1, 1]),
    ] {
        let path = edited_file(dir.path(), Naming::Ultralytics, |t| {
            t.insert(
                name.to_string(),
                Tensor::zeros(shape, DType::F32, &cpu).unwrap(),
            );
        });
        let err = YoloV8::from_safetensors(&path, &cpu).unwrap_err();
        assert!(
            matches!(&err, Error::WrongShape { name: n, .. } if n == name),
            "{err}"
        );
    }
    // reg_max 8 instead of 16.
    let path = edited_file(dir.path(), Naming::Ultralytics, |t| {
        let w = Tensor::zeros((32, 64, 1, 1), DType::F32, &cpu).unwrap();
        t.insert("model.22.cv2.0.2.weight".to_string(), w);
    });
    let err = YoloV8::from_safetensors(&path, &cpu).unwrap_err();
    assert!(matches!(err, Error::BadModel { .. }) && err.to_string().contains("reg_max"));
    // A layer YOLOv8 does not have (YOLO11 has weights at layer 10).
    let path = edited_file(dir.path(), Naming::Ultralytics, |t| {
        let w = Tensor::zeros((8, 8, 1, 1), DType::F32, &cpu).unwrap();
        t.insert("model.10.conv.weight".to_string(), w);
    });
    let err = YoloV8::from_safetensors(&path, &cpu).unwrap_err();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
}

#[test]
fn non_safetensors_files_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.pt");
    std::fs::write(&path, b"PK\x03\x04 this is a pickle, not safetensors").unwrap();
    let err = YoloV8::from_safetensors(&path, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::NotSafetensors { .. }), "{err}");
    assert!(err.to_string().contains("weights.pt"), "{err}");

    let empty = dir.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();
    let err = YoloV8::from_safetensors(&empty, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::NotSafetensors { .. }), "{err}");

    let missing = dir.path().join("absent.safetensors");
    let err = YoloV8::from_safetensors(&missing, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");

    let other = save(
        &HashMap::from([(
            "encoder.weight".to_string(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        )]),
        dir.path(),
        "other.safetensors",
    );
    let err = YoloV8::from_safetensors(&other, &Device::Cpu).unwrap_err();
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
}

#[test]
fn metadata_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_file(dir.path(), Naming::Ultralytics, |_| {});
    // Re-serialise with a `__metadata__` block (Candle's writer has none).
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names = r#"["cat","dog","bird","fish","cow"]"#.to_string();
    let metadata = HashMap::from([("names".to_string(), names.clone())]);
    let with_metadata = dir.path().join("named.safetensors");
    safetensors::serialize_to_file(file.tensors(), Some(metadata), &with_metadata).unwrap();
    let model = YoloV8::from_safetensors(&with_metadata, &Device::Cpu).unwrap();
    assert_eq!(model.metadata.get("names"), Some(&names));
    assert!(YoloV8::from_safetensors(&path, &Device::Cpu)
        .unwrap()
        .metadata
        .is_empty());
}

#[test]
fn input_sides_must_be_multiples_of_32() {
    let (_, model) = random_model(&Arch::yolov8(Scale::N, 3), Naming::Candle);
    assert_eq!(model.strides(), [8, 16, 32]);
    assert!(model.forward(&input(64, 80)).is_err());
}
