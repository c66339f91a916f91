//! Tests of the checkpoint reader: hostile and broken files built here, small torch files
//! written by `tests/fixtures/checkpoint/make_pickles.py`, and real ultralytics checkpoints
//! (`tests/fixtures/checkpoints/`, when present).

use candle_core::DType;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

// --- Building pickles and zips by hand -------------------------------------------------------

/// A protocol-2 pickle under construction.
struct P(Vec<u8>);

impl P {
    fn new() -> P {
        P(vec![0x80, 2])
    }
    fn op(mut self, bytes: &[u8]) -> P {
        self.0.extend_from_slice(bytes);
        self
    }
    fn global(self, module: &str, name: &str) -> P {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn str(mut self, s: &str) -> P {
        self.0.push(b'X');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn int(self, i: u8) -> P {
        self.op(&[b'K', i])
    }
    fn long(mut self, i: i32) -> P {
        self.0.push(b'J');
        self.0.extend_from_slice(&i.to_le_bytes());
        self
    }
    /// `persistent_load(('storage', torch.<class>, key, 'cpu', numel))`.
    fn storage(self, class: &str, key: &str, numel: i32) -> P {
        self.op(b"(")
            .str("storage")
            .global("torch", class)
            .str(key)
            .str("cpu")
            .long(numel)
            .op(b"tQ")
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(
        self,
        class: &str,
        key: &str,
        numel: i32,
        offset: u8,
        size: &[u8],
        stride: &[u8],
    ) -> P {
        let mut p = self
            .global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .storage(class, key, numel)
            .int(offset)
            .op(b"(");
        for d in size {
            p = p.int(*d);
        }
        p = p.op(b"t(");
        for s in stride {
            p = p.int(*s);
        }
        p.op(b"t\x89")
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

/// A stored zip of `entries` under `archive/`.
fn zip_file(dir: &Path, name: &str, entries: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(name);
    let file = std::fs::File::create(&path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (entry, data) in entries {
        zip.start_file(format!("archive/{entry}"), options).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// A checkpoint whose pickle is `pickle`, with storage `0` of `storage` bytes.
fn checkpoint(dir: &Path, pickle: &[u8], storage: &[u8]) -> PathBuf {
    zip_file(
        dir,
        "model.pt",
        &[
            ("data.pkl", pickle),
            ("byteorder", b"little"),
            ("data/0", storage),
        ],
    )
}

/// Little-endian f16 bytes of values exact in f16 (normal numbers, short mantissas).
fn f16_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| {
            let bits = v.to_bits();
            let sign = (bits >> 16) & 0x8000;
            let exponent = ((bits >> 23) & 0xff) as i32 - 127 + 15;
            let half = sign | ((exponent as u32) << 10) | ((bits >> 13) & 0x3ff);
            (half as u16).to_le_bytes()
        })
        .collect()
}

fn error_text(result: Result<Checkpoint>) -> (String, Error) {
    let error = result.expect_err("the file must be refused");
    (error.to_string(), error)
}

// --- Refusals ---------------------------------------------------------------------------------

#[test]
fn a_pickle_calling_os_system_is_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let command = format!("touch {}", marker.display());
    for (module, name) in [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("__builtin__", "exec"),
        ("subprocess", "Popen"),
        ("ultralytics.utils.downloads", "safe_download"),
    ] {
        let pickle = P::new()
            .global(module, name)
            .str(&command)
            .op(b"\x85R")
            .stop();
        let path = checkpoint(dir.path(), &pickle, &[]);
        let (text, error) = error_text(read(&path));
        let module = module.replace("__builtin__", "builtins");
        assert!(matches!(error, Error::UnsafeCheckpoint { .. }), "{text}");
        assert!(text.contains(&format!("`{module}.{name}`")), "{text}");
        assert!(
            text.contains("model.pt") && text.contains("run code"),
            "{text}"
        );
        assert!(!marker.exists());
    }
}

#[test]
fn a_call_hidden_in_metadata_or_spelled_with_stack_global_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // {'train_args': os.system('id')} under protocol 4's STACK_GLOBAL.
    let mut pickle = vec![0x80, 4, b'}'];
    for s in ["train_args", "os", "system"] {
        pickle.push(0x8c);
        pickle.push(s.len() as u8);
        pickle.extend_from_slice(s.as_bytes());
    }
    pickle.extend_from_slice(&[0x93, 0x8c, 2, b'i', b'd', 0x85, b'R', b's', b'.']);
    let (text, error) = error_text(read(&checkpoint(dir.path(), &pickle, &[])));
    assert!(matches!(error, Error::UnsafeCheckpoint { .. }), "{text}");
    assert!(text.contains("`os.system`"), "{text}");
}

#[test]
fn instances_of_foreign_classes_and_writes_to_classes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // subprocess.Popen.__new__(Popen)
        (
            P::new().global("subprocess", "Popen").op(b")\x81").stop(),
            "`subprocess.Popen`",
        ),
        // BUILD on a class: setattr(DetectionModel, '__init__', ...)
        (
            P::new()
                .global("ultralytics.nn.tasks", "DetectionModel")
                .op(b"}")
                .str("__init__")
                .global("os", "system")
                .op(b"sb")
                .stop(),
            "sets attributes of the class `ultralytics.nn.tasks.DetectionModel`",
        ),
        // a tensor rebuilt through os.system
        (
            P::new()
                .global("torch._tensor", "_rebuild_from_type_v2")
                .op(b"(")
                .global("os", "system")
                .global("torch", "Tensor")
                .op(b")}tR")
                .stop(),
            "`os.system`",
        ),
        // calling the result of a call
        (
            P::new()
                .global("torch", "device")
                .str("cpu")
                .op(b"\x85R)R")
                .stop(),
            "which Python would call",
        ),
    ];
    for (pickle, needle) in cases {
        let (text, error) = error_text(read(&checkpoint(dir.path(), &pickle, &[])));
        assert!(matches!(error, Error::UnsafeCheckpoint { .. }), "{text}");
        assert!(text.contains(needle), "{text}");
    }
}

#[test]
fn an_unknown_opcode_is_named_with_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let pickle = P::new().op(b"}\xff").stop();
    let (text, error) = error_text(read(&checkpoint(dir.path(), &pickle, &[])));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(text.contains("unknown opcode 0xff at byte 3"), "{text}");
    // A real opcode torch never writes (INST calls a class) is named.
    let pickle = P::new().op(b"(ios\nsystem\n").stop();
    let (text, error) = error_text(read(&checkpoint(dir.path(), &pickle, &[])));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(text.contains("INST (0x69) at byte 3"), "{text}");
}

#[test]
fn broken_zips_and_pickles_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let pickle = P::new().op(b"}").stop();
    let good = checkpoint(dir.path(), &pickle, &[0; 64]);
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.pt");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (text, error) = error_text(read(&cut));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(
        text.contains("cut.pt") && text.contains("truncated or corrupt"),
        "{text}"
    );

    let no_pickle = zip_file(dir.path(), "nopkl.pt", &[("data/0", b"")]);
    let (text, error) = error_text(read(&no_pickle));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(text.contains("no `<archive>/data.pkl`"), "{text}");

    for (pickle, needle) in [
        (P::new().op(b"}").0, "truncated: an opcode"),
        (
            P::new().op(b"X\xff\xff\xff\x7f").0,
            "BINUNICODE needs 2147483647 bytes",
        ),
        (P::new().op(b"h\x05").0, "memo key 5 was never stored"),
        (P::new().op(b"s").0, "the stack is empty"),
        (
            P::new().int(1).stop(),
            "holds a int, not a dict or a module",
        ),
    ] {
        let (text, error) = error_text(read(&checkpoint(dir.path(), &pickle, &[])));
        assert!(matches!(error, Error::BadModel { .. }), "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

/// `{'w': tensor}` over storage `0` declared as `numel` halfs.
fn one_tensor(numel: i32, size: &[u8], stride: &[u8]) -> Vec<u8> {
    P::new()
        .op(b"}")
        .str("w")
        .tensor("HalfStorage", "0", numel, 0, size, stride)
        .op(b"s")
        .stop()
}

#[test]
fn storages_and_views_must_fit_what_the_file_holds() {
    let dir = tempfile::tempdir().unwrap();
    let storage = f16_bytes(&[1.0, 2.0, 3.0, 4.0]);
    // A storage declaring 1000 halfs in an 8-byte entry.
    let path = checkpoint(dir.path(), &one_tensor(1000, &[4], &[1]), &storage);
    let (text, error) = error_text(read(&path));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(
        text.contains("storage `data/0` declares 2000 bytes, its entry holds 8"),
        "{text}"
    );
    // Views declaring more bytes than the whole zip holds.
    let path = checkpoint(
        dir.path(),
        &one_tensor(30000, &[100, 200], &[200, 1]),
        &storage,
    );
    let (text, error) = error_text(read(&path));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(
        text.contains("tensors declare 40000 bytes, more than the"),
        "{text}"
    );
    // A view reaching past its storage.
    let path = checkpoint(dir.path(), &one_tensor(4, &[3], &[2]), &storage);
    let (text, error) = error_text(read(&path));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(text.contains("larger than its storage"), "{text}");
    // An absurd shape is refused before anything is allocated.
    let path = checkpoint(
        dir.path(),
        &one_tensor(4, &[255, 255, 255, 255, 255, 255, 255, 255, 255], &[0; 9]),
        &storage,
    );
    let (text, error) = error_text(read(&path));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(
        text.contains("is absurd") || text.contains("larger than its storage"),
        "{text}"
    );
    // A storage that is not in the zip.
    let path = zip_file(
        dir.path(),
        "nostorage.pt",
        &[("data.pkl", &one_tensor(4, &[4], &[1]))],
    );
    let (text, error) = error_text(read(&path));
    assert!(matches!(error, Error::BadModel { .. }), "{text}");
    assert!(
        text.contains("storage `data/0` is absent from the zip"),
        "{text}"
    );
    // And the same tensor, whole, reads.
    let ok = read(&checkpoint(
        dir.path(),
        &one_tensor(4, &[2, 2], &[2, 1]),
        &storage,
    ))
    .unwrap();
    let (name, t) = &ok.tensors[0];
    assert_eq!(name, "w");
    assert_eq!(t.to_vec2::<f32>().unwrap(), [[1.0, 2.0], [3.0, 4.0]]);
}

#[test]
fn deep_or_exponentially_shared_values_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // {'model': {'w': tensor}, 'train_args': [[[...]]] nested 200 deep}
    let deep = |p: P| {
        let mut p = p;
        for _ in 0..200 {
            p = p.op(b"]");
        }
        for _ in 0..199 {
            p = p.op(b"a");
        }
        p
    };
    // L0 = []; Li = [L(i-1), L(i-1)] memoized: 2^60 paths through 60 lists.
    let shared = |p: P| {
        let mut p = p.op(b"]q\x00");
        for i in 1..61u8 {
            p = p.op(&[b'0', b']', b'(', b'h', i - 1, b'h', i - 1, b'e', b'q', i]);
        }
        p
    };
    let storage = f16_bytes(&[1.0]);
    for (build, needle) in [(deep as fn(P) -> P, "nested deeper"), (shared, "more than")] {
        let p = P::new().op(b"}").str("model").op(b"}").str("w");
        let p = p
            .tensor("HalfStorage", "0", 1, 0, &[1], &[1])
            .op(b"s")
            .op(b"s");
        let pickle = build(p.str("train_args")).op(b"s").stop();
        let (text, error) = error_text(read(&checkpoint(dir.path(), &pickle, &storage)));
        assert!(matches!(error, Error::BadModel { .. }), "{text}");
        assert!(text.contains(needle), "{needle}: {text}");
    }
}

#[test]
fn a_memoized_dict_filled_later_reads_filled() {
    // d = {}; memo[0] = d; d['a'] = 1 ... {'train_args': d, 'x': memo[0]}: Candle's reader
    // would give the second one empty.
    let dir = tempfile::tempdir().unwrap();
    let storage = f16_bytes(&[2.0]);
    let pickle = P::new()
        .op(b"}")
        .str("model")
        .op(b"}")
        .str("w")
        .tensor("HalfStorage", "0", 1, 0, &[1], &[1])
        .op(b"s")
        .op(b"s")
        .str("train_args")
        .op(b"}q\x07")
        .str("task")
        .str("detect")
        .op(b"s")
        .op(b"s")
        .str("version")
        .str("x")
        .op(b"s")
        .str("again")
        .op(b"h\x07s")
        .stop();
    let ck = read(&checkpoint(dir.path(), &pickle, &storage)).unwrap();
    assert_eq!(ck.task.as_deref(), Some("detect"));
    assert_eq!(ck.source_key.as_deref(), Some("model"));
    assert_eq!(ck.tensors.len(), 1);
}

// --- Files torch wrote --------------------------------------------------------------------------

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/checkpoint/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Compares every tensor with its expected shape and values, in order when `order` is given.
fn compare_tensors(file: &str, ck: &Checkpoint, want: &serde_json::Value) {
    let want = want["tensors"].as_object().unwrap();
    assert_eq!(ck.tensors.len(), want.len(), "{file}");
    for (name, t) in &ck.tensors {
        let w = &want[name];
        let shape: Vec<usize> = serde_json::from_value(w["shape"].clone()).unwrap();
        assert_eq!(t.dims(), shape.as_slice(), "{file} {name}");
        let values: Vec<f64> = serde_json::from_value(w["values"].clone()).unwrap();
        let got: Vec<f64> = t
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F64))
            .and_then(|t| t.to_vec1())
            .unwrap();
        assert_eq!(got, values, "{file} {name}");
        let float = matches!(
            w["dtype"].as_str(),
            Some("float16" | "bfloat16" | "float32" | "float64")
        );
        assert_eq!(
            t.dtype() == DType::F32,
            float,
            "{file} {name} {:?}",
            t.dtype()
        );
    }
}

#[test]
fn state_dicts_of_every_dtype_and_shared_views_read_exactly() {
    let expected = expected();
    for file in ["state_dict.pt", "state_dict_p4.pt"] {
        let path = PathBuf::from(format!("{FIXTURES}/checkpoint/{file}"));
        let ck = read(&path).unwrap();
        compare_tensors(file, &ck, &expected[file]);
        assert_eq!(ck.module_class, None);
        let names: Vec<&str> = ck.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[..3], ["half", "bf16", "float"]);
        let listed = list(&path).unwrap();
        assert_eq!(listed.len(), ck.tensors.len());
        assert_eq!(listed[0].dtype, "float16");
        assert_eq!(
            listed[4],
            TensorEntry {
                name: "long".into(),
                shape: vec![3],
                dtype: "int64"
            }
        );
    }
}

#[test]
fn pickled_modules_read_as_their_state_dict_with_attributes() {
    let expected = expected();
    for file in ["module.pt", "last.pt"] {
        let want = &expected[file];
        let ck = read(&PathBuf::from(format!("{FIXTURES}/checkpoint/{file}"))).unwrap();
        compare_tensors(file, &ck, want);
        let order: Vec<String> = serde_json::from_value(want["order"].clone()).unwrap();
        let names: Vec<String> = ck.tensors.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(
            names, order,
            "{file}: state_dict() order, no non-persistent buffer"
        );
        assert_eq!(
            ck.names,
            Some(vec!["circle".to_string(), "square".to_string()])
        );
        assert_eq!(ck.yaml.as_ref(), Some(&want["yaml"]));
        assert_eq!(ck.stride, Some(vec![8.0, 16.0, 32.0]));
        assert_eq!(ck.ultralytics_version.as_deref(), Some("0.0-test"));
        assert_eq!(ck.train_args.as_ref(), Some(&want["train_args"]));
        assert_eq!(ck.module_class.as_deref(), want["module_class"].as_str());
        assert_eq!(ck.task.as_deref(), Some("detect"));
        assert_eq!(ck.source_key.as_deref(), want["source_key"].as_str());
    }
}

/// Real ultralytics checkpoints (8.0, 8.3, 8.4 releases) against what their own torch read.
#[test]
fn real_ultralytics_checkpoints_read_like_torch_load() {
    let dir = PathBuf::from(format!("{FIXTURES}/checkpoints"));
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no {}: skipped", dir.display());
        return;
    };
    let mut seen = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pt") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(path.with_extension("json")) else {
            continue;
        };
        let want: serde_json::Value = serde_json::from_str(&text).unwrap();
        check_real(&path, &want);
        seen += 1;
    }
    eprintln!("{seen} real checkpoints read");
}

/// Trained `best.pt` files of the detector fixtures, when present: a module with names that
/// match its `nc`, and a listing that agrees with the read.
#[test]
fn trained_best_pt_fixtures_read() {
    for family in ["yolo11", "yolo26", "yolov8"] {
        let path = PathBuf::from(format!("{FIXTURES}/{family}/best.pt"));
        if !path.exists() {
            continue;
        }
        let ck = read(&path).unwrap_or_else(|e| panic!("{e}"));
        let file = path.display();
        assert_eq!(
            ck.module_class.as_deref(),
            Some("ultralytics.nn.tasks.DetectionModel"),
            "{file}"
        );
        let nc = ck.yaml.as_ref().and_then(|y| y["nc"].as_u64());
        assert_eq!(ck.names.as_ref().map(|n| n.len() as u64), nc, "{file}");
        assert!(
            ck.stride.is_some() && ck.ultralytics_version.is_some(),
            "{file}"
        );
        let listed = list(&path).unwrap();
        let shapes: Vec<(&str, &[usize])> = ck
            .tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.dims()))
            .collect();
        let listed: Vec<(&str, &[usize])> = listed
            .iter()
            .map(|e| (e.name.as_str(), e.shape.as_slice()))
            .collect();
        assert_eq!(shapes, listed, "{file}");
    }
}

fn check_real(path: &Path, want: &serde_json::Value) {
    let file = path.display();
    let ck = read(path).unwrap_or_else(|e| panic!("{e}"));
    let shapes = want["state_dict"].as_object().unwrap();
    assert_eq!(ck.tensors.len(), shapes.len(), "{file}");
    // (serde_json's map is sorted: the order is checked on `module.pt`.)
    for (name, t) in &ck.tensors {
        let shape = shapes
            .get(name)
            .unwrap_or_else(|| panic!("{file}: unexpected {name}"));
        let shape: Vec<usize> = serde_json::from_value(shape.clone()).unwrap();
        assert_eq!(t.dims(), shape.as_slice(), "{file} {name}");
    }
    for (name, values) in want["samples"].as_object().unwrap() {
        let (_, t) = ck.tensors.iter().find(|(n, _)| n == name).unwrap();
        let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let values: Vec<f32> = serde_json::from_value(values.clone()).unwrap();
        assert_eq!(got[..values.len()], values, "{file} {name}");
    }
    let names: Vec<String> = want["names"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ck.names, Some(names), "{file}");
    assert_eq!(ck.yaml.as_ref(), Some(&want["yaml"]), "{file}");
    assert_eq!(ck.task.as_deref(), want["task"].as_str(), "{file}");
    let stride: Vec<f32> = serde_json::from_value(want["stride"].clone()).unwrap();
    assert_eq!(ck.stride, Some(stride), "{file}");
    assert_eq!(
        ck.ultralytics_version.as_deref(),
        want["version"].as_str(),
        "{file}"
    );
    assert_eq!(
        ck.module_class.as_deref(),
        want["module_class"].as_str(),
        "{file}"
    );
    assert_eq!(
        ck.source_key.as_deref(),
        want["module_key"].as_str(),
        "{file}"
    );
    let globals: Vec<String> = serde_json::from_value(want["pickle_globals"].clone()).unwrap();
    let globals: Vec<String> = globals
        .iter()
        .map(|g| g.replace("__builtin__", "builtins"))
        .collect();
    assert_eq!(ck.globals, globals, "{file}");
    assert!(
        ck.train_args
            .as_ref()
            .is_some_and(|a| a["imgsz"].is_number()),
        "{file}"
    );
}

/// A development check against fresh ultralytics models: `OODBOX_CHECKPOINT_DEV` names a
/// folder of `X.pt` files (a model saved as the trainer does) beside `X.safetensors` (its
/// `state_dict()`); every tensor must match by name, order, shape and value. Run by hand:
/// `OODBOX_CHECKPOINT_DEV=DIR cargo test --release -- --ignored dev_checkpoints`.
#[test]
#[ignore = "needs OODBOX_CHECKPOINT_DEV, a folder of fresh ultralytics checkpoints"]
fn dev_checkpoints_match_their_state_dict() {
    let dir = std::env::var("OODBOX_CHECKPOINT_DEV").expect("OODBOX_CHECKPOINT_DEV");
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pt") {
            continue;
        }
        let ck = read(&path).unwrap_or_else(|e| panic!("{e}"));
        let want = candle_core::safetensors::load(
            path.with_extension("safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(ck.tensors.len(), want.len(), "{}", path.display());
        for (name, t) in &ck.tensors {
            let w = want[name].to_dtype(t.dtype()).unwrap();
            assert_eq!(t.dims(), w.dims(), "{name}");
            let diff = (t.to_dtype(DType::F64).unwrap() - w.to_dtype(DType::F64).unwrap()).unwrap();
            let max = diff
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert_eq!(max, 0.0, "{name}");
        }
        eprintln!(
            "{}: {} tensors, {:?}, {:?}, globals {:?}",
            path.display(),
            ck.tensors.len(),
            ck.module_class,
            ck.stride,
            ck.globals
        );
    }
}

/// Damaged pickles (every truncation, random byte changes) give errors or values, never a
/// panic.
#[test]
fn damaged_pickles_never_panic() {
    use rand::{Rng, SeedableRng};
    let path = PathBuf::from(format!("{FIXTURES}/checkpoint/module.pt"));
    let mut archive = Archive::open(&path).unwrap();
    let pickle = archive.pickle().unwrap();
    let try_one = |data: &[u8]| {
        if let Ok(p) = Pickle::parse(data) {
            if let Ok(plan) = Plan::make(&p) {
                let _ = archive.check_views(&plan.tensors);
            }
        }
    };
    for end in 0..pickle.len() {
        try_one(&pickle[..end]);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let damage = |rng: &mut rand_chacha::ChaCha8Rng| {
        let mut data = pickle.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..data.len());
            data[at] = rng.random();
        }
        data
    };
    for _ in 0..2000 {
        try_one(&damage(&mut rng));
    }
    // Whole reads, storages included, of damaged pickles beside the real storages.
    let dir = tempfile::tempdir().unwrap();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().unwrap().split_once('/').unwrap().1.to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        entries.push((name, data));
    }
    for _ in 0..300 {
        let data = damage(&mut rng);
        let mut files: Vec<(&str, &[u8])> = vec![("data.pkl", &data)];
        files.extend(
            entries
                .iter()
                .filter(|(n, _)| n != "data.pkl")
                .map(|(n, d)| (n.as_str(), d.as_slice())),
        );
        let _ = read(&zip_file(dir.path(), "damaged.pt", &files));
    }
}
