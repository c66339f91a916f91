"""Shared fixtures: the repository's files and the CLI built by `cargo build --release`."""

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("OODBOX_CLI", ROOT / "target" / "release" / "oodbox"))
MODEL = ROOT / "models" / "shapes.safetensors"
SCORER = ROOT / "models" / "shapes-scorer.safetensors"
IMAGES = sorted((ROOT / "assets" / "images").glob("*.png"))
BOXES = ROOT / "tests" / "fixtures" / "shapes_boxes"


def run_cli(*args) -> subprocess.CompletedProcess:
    if not CLI.exists():
        pytest.fail(f"{CLI} is missing: run `cargo build --release` first")
    out = subprocess.run([str(CLI), *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="session")
def cli_detections(tmp_path_factory):
    """`oodbox detect` with the bundled scorer on the bundled images, per image path."""
    path = tmp_path_factory.mktemp("cli") / "detect.json"
    run_cli("detect", "--model", MODEL, "--scorer", SCORER, "--input", *IMAGES,
            "--json", path, "--with-features", "--quiet")
    doc = json.loads(path.read_text())
    assert not doc["failed"]
    return {Path(im["path"]).name: im["detections"] for im in doc["images"]}
