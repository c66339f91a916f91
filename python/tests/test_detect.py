"""Detection from Python gives the CLI's boxes, logits, features and OOD verdicts."""

import numpy as np
import pytest
from PIL import Image

import oodbox
from conftest import IMAGES, MODEL, SCORER


@pytest.fixture(scope="module")
def ood():
    return oodbox.OodDetector.load(MODEL, SCORER)


def rows(detections, key):
    return np.array([d[key] for d in detections])


def assert_same_as_cli(out, cli):
    assert len(out["class_id"]) == len(cli)
    np.testing.assert_array_equal(out["bbox"], rows(cli, "bbox").astype(np.float32).reshape(-1, 4))
    np.testing.assert_array_equal(out["class_id"], rows(cli, "class_id"))
    np.testing.assert_array_equal(out["class_name"], rows(cli, "class_name"))
    np.testing.assert_array_equal(out["confidence"], rows(cli, "confidence").astype(np.float32))
    np.testing.assert_array_equal(out["level"], rows(cli, "level"))
    np.testing.assert_array_equal(out["anchor"], rows(cli, "anchor"))
    np.testing.assert_array_equal(out["logits"], np.array([d["logits"] for d in cli], np.float32))
    np.testing.assert_array_equal(out["features"], np.array([d["feature"] for d in cli], np.float32))
    verdicts = [d["ood"] for d in cli]
    np.testing.assert_array_equal(out["score"], [v["score"] for v in verdicts])
    np.testing.assert_array_equal(out["p_value"], [v["p_value"] for v in verdicts])
    np.testing.assert_array_equal(out["ood_confidence"], [v["confidence"] for v in verdicts])
    np.testing.assert_array_equal(out["is_ood"], [v["is_ood"] for v in verdicts])


def test_paths_give_the_cli_rows(ood, cli_detections):
    assert ood.options["imgsz"] == {"width": 256, "height": 256}, "the scorer's detection size"
    total = 0
    for path in IMAGES:
        out = ood.detect(path)
        assert_same_as_cli(out, cli_detections[path.name])
        assert (out["image_index"] == 0).all()
        total += len(out["class_id"])
    assert total > 30


def test_arrays_strided_arrays_and_batches_give_the_same(ood, cli_detections):
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in IMAGES]
    batch = ood.detect_batch(arrays)
    for i, path in enumerate(IMAGES):
        mine = batch["image_index"] == i
        one = {k: v[mine] for k, v in batch.items() if isinstance(v, np.ndarray)}
        assert_same_as_cli(one, cli_detections[path.name])
    # A view with negative strides and a Fortran-ordered copy are read pixel by pixel.
    flipped = np.ascontiguousarray(arrays[1][:, ::-1])[:, ::-1]
    strided = np.asfortranarray(arrays[1])
    for image in (arrays[1][:, ::1], flipped, strided):
        np.testing.assert_array_equal(ood.detect(image)["bbox"], ood.detect(arrays[1])["bbox"])


def test_plain_detector_and_threads(cli_detections):
    det = oodbox.Detector.load(MODEL, imgsz=256)
    assert det.class_names == ["circle", "square", "triangle", "star"]
    assert det.head["head.0.weight"].shape == (4, 64)
    before = oodbox.get_num_threads()
    try:
        oodbox.set_num_threads(1)
        assert oodbox.get_num_threads() == 1
        out = det.detect(IMAGES[2])
    finally:
        oodbox.set_num_threads(before)
    cli = cli_detections[IMAGES[2].name]
    np.testing.assert_array_equal(out["bbox"], rows(cli, "bbox").astype(np.float32))
    assert "score" not in out and out["features"].shape == (len(cli), 64)
    np.testing.assert_array_equal(out["bbox"], det.detect(IMAGES[2])["bbox"])


def test_a_bad_image_in_a_batch_is_skipped_when_asked(ood, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = ood.detect_batch([IMAGES[0], bad, IMAGES[1]], skip_errors=True)
    assert [i for i, _ in out["failed"]] == [1]
    assert "broken.png" in out["failed"][0][1]
    assert set(out["image_index"]) == {0, 2}



def test_a_batch_of_mixed_sizes_gives_each_image_its_own_boxes(ood):
    images = [np.asarray(Image.open(p).convert("RGB")) for p in IMAGES]
    # A narrower crop letterboxes to another input size: batched apart from the others.
    images.insert(1, images[0][:, :180])
    batch = ood.detect_batch(images)
    assert set(batch["image_index"]) == set(range(len(images)))
    for i, image in enumerate(images):
        alone = ood.detect(image)
        mine = batch["image_index"] == i
        for key in ("bbox", "class_id", "confidence", "logits", "features", "p_value", "is_ood"):
            np.testing.assert_array_equal(batch[key][mine], alone[key], err_msg=f"{key} {i}")


def test_a_forked_child_detects_like_its_parent(ood):
    # Candle's elementwise pool does not survive a fork: a child forked after a model was used
    # once waited forever on its missing threads.
    import multiprocessing

    parent = ood.detect(IMAGES[0])
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child():
        queue.put(ood.detect(IMAGES[0])["bbox"].tolist())

    proc = ctx.Process(target=child)
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the forked child did not finish detect within 60 s")
    assert proc.exitcode == 0
    assert queue.get(timeout=5) == parent["bbox"].tolist()


def test_box_rows_per_process_loads_a_model_once_per_arguments():
    from oodbox.ray import BoxRows

    first = BoxRows.per_process(str(MODEL), str(SCORER), imgsz=256)
    assert BoxRows.per_process(str(MODEL), str(SCORER), imgsz=256) is first
    plain = BoxRows.per_process(str(MODEL))
    assert plain is not first and not isinstance(plain.detector, oodbox.OodDetector)
    rows = first({"path": [str(IMAGES[1])]})
    assert len(rows["is_ood"]) == len(rows["image"]) > 0
