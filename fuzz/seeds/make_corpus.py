"""Writes the seed corpus fuzz/corpus/<target>/ from the repository's fixtures.

Run from the repository root with the project's venv: `.venv/bin/python fuzz/seeds/make_corpus.py`
(needs ./data, the shapes world). Every seed is small: the corpus stays well under 1 MB.
"""

import io
import json
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus"


def write(target, name, data):
    # No seed of these is a whole model (a YOLO model is megabytes): the loader refuses them all.
    if target in ("model", "checkpoint", "checkpoint_pickle"):
        name = "err_" + name
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def read_safetensors(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    meta = header.pop("__metadata__", None)
    tensors = {
        name: (t["dtype"], t["shape"], body[t["data_offsets"][0] : t["data_offsets"][1]])
        for name, t in header.items()
    }
    return tensors, meta, n


def safetensors(tensors, meta=None):
    header, body = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    if meta is not None:
        header["__metadata__"] = meta
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def rows(tensors, n):
    """The first n rows of every per-box tensor (heads kept whole)."""
    out = {}
    for name, (dtype, shape, data) in tensors.items():
        if name.startswith("head"):
            out[name] = (dtype, shape, data)
            continue
        per_row = len(data) // shape[0] if shape[0] else 0
        out[name] = (dtype, [n] + shape[1:], data[: n * per_row])
    return out


def f32(values):
    return struct.pack(f"<{len(values)}f", *values)


def model_seeds():
    tensors, meta, n = read_safetensors(ROOT / "models" / "shapes.safetensors")
    raw = (ROOT / "models" / "shapes.safetensors").read_bytes()
    # The real header with its data cut: every tensor name and shape, data offsets past the end.
    write("model", "shapes_header_only.safetensors", raw[: 8 + n])
    write("model", "tiny_with_metadata.safetensors", safetensors(
        {"model.0.conv.weight": ("F32", [2, 1, 1, 1], f32([1.0, -2.0]))},
        {k: v for k, v in (meta or {}).items()}))
    write("model", "f16_int64.safetensors", safetensors({
        "a": ("F16", [2], struct.pack("<2e", 1.0, float("nan"))),
        "b": ("I64", [1], struct.pack("<q", 7)),
    }))
    write("model", "empty.safetensors", safetensors({}))
    # A checkpoint given as --model goes through the same dispatch.
    write("model", "state_dict.pt", (ROOT / "tests/fixtures/checkpoint/state_dict.pt").read_bytes())


def checkpoint_seeds():
    folder = ROOT / "tests" / "fixtures" / "checkpoint"
    for name in ["module.pt", "state_dict.pt", "state_dict_p4.pt", "last.pt"]:
        raw = (folder / name).read_bytes()
        write("checkpoint", name, raw)
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            pickle = next(i for i in z.namelist() if i.endswith("/data.pkl"))
            write("checkpoint_pickle", name.replace(".pt", ".pkl"), z.read(pickle))


def boxset_seeds():
    folder = ROOT / "tests" / "fixtures"
    for path, n in [(folder / "shapes_boxes" / "val.safetensors", 3),
                    (folder / "oodeel" / "fit.safetensors", 2)]:
        tensors, meta, _ = read_safetensors(path)
        write("boxset", f"{path.parent.name}_{path.stem}_{n}.safetensors", safetensors(rows(tensors, n), meta))
    tensors, _, _ = read_safetensors(folder / "shapes_boxes" / "val.safetensors")
    minimal = {k: v for k, v in rows(tensors, 1).items() if k in ("features", "logits", "class_id")}
    write("boxset", "minimal.safetensors", safetensors(minimal))


# One small file per kind with state beyond calibration (tiny settings, so each stays small):
# fitted by `oodbox fit` on the first boxes of the shapes fixture's train set (600; knn stores
# its fit features, so 150; the tail needs about 200 calibration boxes per class, so 4000).
BOXES = {"knn": 150, "energy_tail": 4000}
KIND_SEEDS = {  # seed name: (kind, fit arguments)
    "knn": ("knn", ["--param", "nearest=5"]),
    "mahalanobis": ("mahalanobis", []),
    "vim": ("vim", []),
    "gram": ("gram", []),
    "she": ("she", []),
    "box_monitor": ("box_monitor", ["--param", "density=40"]),
    "flow": ("flow", ["--param", "blocks=1", "--param", "hidden=4", "--param", "epochs=1"]),
    "ocsdf": ("ocsdf", ["--param", "width=4", "--param", "depth=2", "--param", "epochs=1"]),
    "ocsdf_shared": ("ocsdf", ["--param", "width=4", "--param", "depth=1", "--param", "epochs=1",
                               "--param", "per_class=false"]),
    "safe": ("safe", ["--param", "hidden=4", "--param", "epochs=1"]),
    "combine": ("combine", ["--param", "of=mahalanobis,energy"]),
    "combine_features": ("combine", ["--param", "of=mahalanobis:features=[cls],energy"]),
    "combine_fit_reference": ("combine", ["--param", "of=mahalanobis,energy", "--param", "reference=fit"]),
    "energy_tail": ("energy", ["--tail", "--tail-min-points", "10"]),
}


def some_boxes(source, target, rows):
    """The boxes `rows` of a box set (every per-box tensor cut; the head kept)."""
    tensors, meta, _ = read_safetensors(source)
    n = len(tensors["class_id"][2]) // 8
    header, body = {"__metadata__": meta}, b""
    for name, (dtype, shape, data) in tensors.items():
        if not name.startswith("head.") and shape and shape[0] == n:
            size = len(data) // n
            data = b"".join(data[r * size : (r + 1) * size] for r in rows)
            shape = [len(rows)] + shape[1:]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(body), len(body) + len(data)]}
        body += data
    raw = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def score_boxes():
    """fuzz/seeds/score_boxes.safetensors, which the `scorer` target scores with each file it
    loads: 24 boxes spread over the fixture's test_id."""
    source = ROOT / "tests" / "fixtures" / "shapes_boxes" / "test_id.safetensors"
    n = len(read_safetensors(source)[0]["class_id"][2]) // 8
    some_boxes(source, ROOT / "fuzz" / "seeds" / "score_boxes.safetensors", range(0, n, n // 24)[:24])


def scorer_seeds():
    write("scorer", "shapes-scorer.safetensors", (ROOT / "models" / "shapes-scorer.safetensors").read_bytes())
    # A box set given as --scorer: refused, naming the file.
    write("scorer", "err_boxset.safetensors", (CORPUS / "boxset" / "minimal.safetensors").read_bytes())
    oodbox = ROOT / "target" / "release" / "oodbox"
    with tempfile.TemporaryDirectory() as scratch:
        for name, (kind, args) in KIND_SEEDS.items():
            boxes = Path(scratch) / "boxes.safetensors"
            some_boxes(ROOT / "tests" / "fixtures" / "shapes_boxes" / "train.safetensors", boxes, range(BOXES.get(name, 600)))
            out = Path(scratch) / f"{name}.safetensors"
            subprocess.run([str(oodbox), "fit", "--scorer", kind, *args, "--boxes", str(boxes),
                            "--min-class-calibration", "5", "--out", str(out), "--quiet"], check=True)
            write("scorer", f"{name}.safetensors", out.read_bytes())


def track_seeds():
    setting = {"model": "sha256:m", "scorer": "sha256:s", "imgsz": [640, 640], "conf": 0.25,
               "fps": 30.0, "block": 8}
    calib = {"format": "oodbox track calibration 1", "setting": setting, "source": "clip.mp4",
             "statistics": [-1.5, 0.0, 0.25, 3.0]}
    write("track_calibration", "matching.json", json.dumps(calib, indent=2))
    other = dict(calib, setting=dict(setting, fps=25.0, imgsz=[320, 256]), statistics=[0.1])
    write("track_calibration", "err_other_setting.json", json.dumps(other))


def dataset_seeds():
    write("data_yaml", "shapes.yaml", (ROOT / "data" / "shapes" / "data.yaml").read_text())
    write("data_yaml", "names_map.yaml", "path: .\nval: [images/val]\nnames:\n  0: circle\n  1: square\n")
    write("data_yaml", "list_file.yaml", "val: images/val/*.png\nnames: [a]\n")
    labels = ROOT / "data" / "shapes" / "labels"
    for name in ["val/val_00000.txt", "val/val_00001.txt", "test_mixed/test_mixed_00000.txt"]:
        write("yolo_labels", name.replace("/", "_"), (labels / name).read_text())
    write("yolo_labels", "empty.txt", "")
    coco = json.loads((ROOT / "data" / "shapes" / "coco" / "test_mixed.json").read_text())
    # The harness provides a.png beside the json, and a COCO file none of whose images exists
    # is refused.
    images = [dict(im, file_name="a.png") for im in coco["images"][:2]]
    ids = {im["id"] for im in images}
    small = dict(coco, images=images, annotations=[a for a in coco["annotations"] if a["image_id"] in ids])
    write("coco_json", "test_mixed_2.json", json.dumps(small))
    write("coco_json", "a_png.json", json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
        "annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]},
                        {"image_id": 1, "category_id": 9, "bbox": [0, 0, 1, 1], "unknown": True}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 9, "name": "x", "supercategory": "far_ood"}]}))


def detr_seeds():
    folder = ROOT / "tests" / "fixtures" / "detr"
    for variant in ["hf_r50", "timm_r50", "timm_r101_dc5"]:
        write("detr_config", f"{variant}.json", (folder / variant / "config.json").read_bytes())
        write("detr_preprocessor", f"{variant}.json", (folder / variant / "preprocessor_config.json").read_bytes())
    write("detr_preprocessor", "exact.json", json.dumps({"size": {"height": 480, "width": 640}, "do_normalize": False}))
    write("detr_preprocessor", "int_size.json", json.dumps({"size": 512, "max_size": 700, "rescale_factor": 0.5}))


def image_seeds():
    base = Image.open(ROOT / "assets" / "images" / "test_mixed_00000.png").convert("RGB").resize((12, 9))
    def save(name, image, fmt, **kw):
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        write("image", name, buf.getvalue())
    save("rgb.png", base, "PNG")
    save("grey.png", base.convert("L"), "PNG")
    save("rgba.png", base.convert("RGBA"), "PNG")
    save("deep.png", base.convert("I;16"), "PNG")
    save("palette.png", base.convert("P"), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    save("rotated.jpg", base, "JPEG", quality=70, exif=exif.tobytes())
    save("grey.jpg", base.convert("L"), "JPEG", quality=70)
    save("rgb.bmp", base, "BMP")
    save("rgb.webp", base, "WEBP", lossless=True)
    save("lossy.webp", base, "WEBP", quality=50)
    save("rgb.tif", base, "TIFF")


if __name__ == "__main__":
    model_seeds()
    checkpoint_seeds()
    boxset_seeds()
    scorer_seeds()
    score_boxes()
    track_seeds()
    dataset_seeds()
    detr_seeds()
    image_seeds()
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"{sum(1 for p in CORPUS.rglob('*') if p.is_file())} seeds, {total} bytes")
