"""The Ray example on a local 2-CPU cluster gives the CLI's rows, and its distributed extraction
then one fit gives the scorer `oodbox fit` makes from the same images."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import oodbox
from conftest import BOXES, MODEL, ROOT, SCORER, run_cli

pytest.importorskip("ray")


def test_ray_folder_example(tmp_path):
    world = tmp_path / "world"
    run_cli("synth", "--out", world, "--seed", "3", "--train", "60", "--val", "0", "--test", "0", "--quiet")
    images = tmp_path / "images"  # a bare folder: no labels next to it
    shutil.copytree(world / "images" / "train", images)
    out, fitted = tmp_path / "rows", tmp_path / "fitted.safetensors"
    run = subprocess.run([sys.executable, str(ROOT / "python" / "examples" / "ray_folder.py"),
                          "--model", str(MODEL), "--scorer", str(SCORER), "--images", str(images),
                          "--out", str(out), "--fit-out", str(fitted), "--imgsz", "256",
                          "--cpus", "2", "--actors", "2"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # The example uses Ray's current API (e.g. `compute=`, not the deprecated `concurrency=`).
    assert "deprecated" not in run.stderr.lower(), run.stderr

    rows = pd.read_parquet(out).sort_values(["image", "box_index"]).reset_index(drop=True)
    cli_json = tmp_path / "cli.json"
    run_cli("detect", "--model", MODEL, "--scorer", SCORER, "--input", images, "--json", cli_json, "--quiet")
    cli = [(im["path"], i, d) for im in json.loads(cli_json.read_text())["images"]
           for i, d in enumerate(im["detections"])]
    assert len(rows) == len(cli) > 100
    assert list(rows["image"]) == [p for p, _, _ in cli]
    assert list(rows["box_index"]) == [i for _, i, _ in cli]
    bbox = np.array([d["bbox"] for _, _, d in cli], np.float32)
    np.testing.assert_array_equal(rows[["x1", "y1", "x2", "y2"]].to_numpy(), bbox)
    np.testing.assert_array_equal(rows["class_name"], [d["class_name"] for _, _, d in cli])
    np.testing.assert_array_equal(rows["confidence"], np.float32([d["confidence"] for _, _, d in cli]))
    for column, key in [("score", "score"), ("p_value", "p_value"), ("ood_confidence", "confidence"), ("is_ood", "is_ood")]:
        np.testing.assert_array_equal(rows[column], [d["ood"][key] for _, _, d in cli], err_msg=column)

    cli_fit = tmp_path / "cli-fit.safetensors"
    run_cli("fit", "--scorer", "mahalanobis", "--model", MODEL, "--data", images, "--imgsz", "256",
            "--out", cli_fit, "--quiet")
    test = oodbox.load_boxes(BOXES / "test_mixed.safetensors")
    ours, theirs = oodbox.Scorer.load(fitted), oodbox.Scorer.load(cli_fit)
    assert ours.detect_options == theirs.detect_options
    for key, value in theirs.score(test).items():
        np.testing.assert_array_equal(ours.score(test)[key], value, err_msg=key)
