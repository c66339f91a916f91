"""Bad input raises clear exceptions with the library's messages."""

import numpy as np
import pytest

import oodbox
from conftest import BOXES, IMAGES, MODEL, ROOT, SCORER


@pytest.fixture(scope="module")
def det():
    return oodbox.Detector.load(MODEL, imgsz=256)


def test_missing_files_name_the_path(det, tmp_path):
    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        oodbox.Detector.load(missing)
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        oodbox.Scorer.load(missing)
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        oodbox.load_boxes(missing)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        det.detect(tmp_path / "nope.png")


def test_files_of_the_wrong_kind(det, tmp_path):
    with pytest.raises(oodbox.OodboxError, match="this is an image, not an oodbox scorer file"):
        oodbox.Scorer.load(IMAGES[0])
    with pytest.raises(oodbox.OodboxError, match="cannot decode image"):
        det.detect(ROOT / "models" / "README.md")


def test_wrong_dtype_and_shape(det):
    image = np.zeros((64, 48, 3), np.uint8)
    with pytest.raises(TypeError, match="uint8.*float32"):
        det.detect(image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*\[64, 48\]"):
        det.detect(image[:, :, 0])
    with pytest.raises(ValueError, match=r"\[64, 48, 4\]"):
        det.detect(np.zeros((64, 48, 4), np.uint8))
    with pytest.raises(TypeError, match="array .* or a path, got int"):
        det.detect(3)
    with pytest.raises(TypeError, match="a list of images"):
        det.detect_batch(image)


def test_bad_box_sets(tmp_path):
    train = oodbox.load_boxes(BOXES / "train.safetensors")
    with pytest.raises(TypeError, match="`class_id` must hold integers"):
        oodbox.Scorer.fit("energy", train, class_id=train["class_id"].astype(np.float32))
    with pytest.raises(ValueError, match="missing box arrays: logits"):
        oodbox.Scorer.fit("energy", features=train["features"], class_id=train["class_id"])
    with pytest.raises(ValueError, match="`features` has .* rows, `logits`"):
        oodbox.Scorer.fit("energy", train, logits=train["logits"][:-1])
    with pytest.raises(oodbox.OodboxError, match="unknown"):
        oodbox.Scorer.fit("no-such-scorer", train, calibration_fraction=0.5)
    with pytest.raises(oodbox.OodboxError, match="calibration boxes: at least 19"):
        oodbox.Scorer.fit("energy", train, calibration=(train["features"][:5],
                          train["logits"][:5], train["class_id"][:5]))


def test_misspelt_box_arrays_are_refused_not_ignored(tmp_path):
    train = oodbox.load_boxes(BOXES / "train.safetensors")
    renames = {"label": ("labels", "Label"), "class_id": ("class_ids",), "image_index": ("image_idx",),
               "bbox": ("bboxes", "box"), "level": ("levels",), "confidence": ("confidences",),
               "features": ("feature",), "logits": ("logit",)}
    for array, misspellings in renames.items():
        for wrong in misspellings:
            boxes = {k: v for k, v in train.items() if k != array}
            boxes[wrong] = train[array]
            with pytest.raises(ValueError, match=f"has `{wrong}` but no `{array}`: did you mean"):
                oodbox.save_boxes(boxes, tmp_path / "boxes.safetensors")
    # A part of a concatenation too: its `labels` would be dropped, and the set left unlabelled.
    far = oodbox.load_boxes(BOXES / "test_ood_far.safetensors")
    misspelt = {("labels" if k == "label" else k): v for k, v in far.items()}
    with pytest.raises(ValueError, match="has `labels` but no `label`"):
        oodbox.concat_boxes([misspelt, misspelt])
    # Columns of other meanings, oodbox.ray's per-box ones among them, are ignored as before.
    n = len(train["class_id"])
    extra = {"path": "a.jpg", "height": 640, "class_name": ["x"] * n, "p_value": np.ones(n), "labels": 0}
    scorer = oodbox.Scorer.fit("energy", {**train, **extra}, calibration_fraction=0.5)
    assert scorer.kind == "energy"


def test_concat_boxes_refuses_parts_with_other_columns():
    far = oodbox.load_boxes(BOXES / "test_ood_far.safetensors")
    near = oodbox.load_boxes(BOXES / "test_ood_near.safetensors")
    both = oodbox.concat_boxes([far, near])
    assert len(both["class_id"]) == len(far["class_id"]) + len(near["class_id"])
    assert np.array_equal(both["label"], np.concatenate([far["label"], near["label"]]))
    # Without its labels a part's known objects would count as unknown ones: refused, not dropped.
    unlabelled = {k: v for k, v in near.items() if k != "label"}
    for parts, has, lacks in (([far, unlabelled], 0, 1), ([unlabelled, far], 1, 0)):
        with pytest.raises(ValueError, match=f"box set {has} has `label` and box set {lacks} does not"):
            oodbox.concat_boxes(parts)
    # Labelled as unknown objects, as the documentation says, it gathers.
    outliers = oodbox.concat_boxes([far, {**unlabelled, "label": np.full(len(near["class_id"]), -1)}])
    assert (outliers["label"][len(far["class_id"]):] == -1).all()


def test_a_scorer_fitted_for_another_model(tmp_path):
    train = oodbox.load_boxes(BOXES / "train.safetensors")
    train["fingerprint"] = "sha256:another-model"
    other = tmp_path / "other.safetensors"
    oodbox.Scorer.fit("energy", train, calibration_fraction=0.3).save(other)
    with pytest.raises(oodbox.OodboxError, match="fitted for model sha256:another-model"):
        oodbox.OodDetector.load(MODEL, other)
    narrow = oodbox.load_boxes(BOXES / "val.safetensors")
    narrow["logits"] = narrow["logits"][:, :3]
    narrow["class_names"] = narrow["class_names"][:3]
    narrow["class_id"] = np.minimum(narrow["class_id"], 2)
    # A box set is checked when built: its labels and class head must agree with its 3 classes.
    narrow["label"] = np.minimum(narrow["label"], 2)
    narrow = {k: v for k, v in narrow.items() if not k.startswith("head.")}
    with pytest.raises(oodbox.OodboxError, match="3 classes"):
        oodbox.Scorer.load(SCORER).score(narrow)
    with pytest.raises(ValueError, match="alpha"):
        oodbox.OodDetector.load(MODEL, SCORER, alpha=1.5)


def test_settings_a_family_does_not_read_are_refused():
    detr = ROOT / "tests" / "fixtures" / "detr" / "hf_r50"
    for keyword in ({"iou": 0.5}, {"agnostic_nms": True}, {"imgsz": 320}):
        with pytest.raises(ValueError, match=f"{next(iter(keyword))} does not apply to a detr"):
            oodbox.Detector.load(detr, **keyword)
    options = oodbox.Detector.load(detr, conf=0.5).options
    assert options == {"conf": 0.5, "max_det": 300, "roi": []}
    # imgsz is (height, width), as in ultralytics and the CLI.
    yolo = oodbox.Detector.load(MODEL, imgsz=(256, 320)).options
    assert yolo["imgsz"] == {"width": 320, "height": 256}
    assert (yolo["iou"], yolo["agnostic"]) == (0.7, False)


def test_settings_other_than_the_scorers_warn_and_say_which(recwarn):
    same = oodbox.OodDetector.load(MODEL, SCORER)
    assert same.settings_warning is None and not recwarn.list
    with pytest.warns(UserWarning, match="calibrated on boxes detected otherwise.*conf"):
        other = oodbox.OodDetector.load(MODEL, SCORER, conf=0.1)
    assert "conf" in other.settings_warning
