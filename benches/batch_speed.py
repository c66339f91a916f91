"""Detector.detect_batch against one detect call per image, from the Python package (the same
native code as the Rust `Detector::detect_batch`, which runs images of one input size through
the network in batches of up to 8).

    (cd python && maturin develop --release)
    .venv/bin/python benches/batch_speed.py [--images 16] [--rounds 5]

For each model (the bundled shapes YOLOv8 at 256, the YOLO11 and YOLO26 `best.pt` fixtures at
320 and 640), each round times detecting on the same images one call per image, then in one
`detect_batch` call, interleaved so both see the same machine load. Prints the median
milliseconds per image of each and their ratio.
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

import oodbox

ROOT = Path(__file__).resolve().parent.parent
MODELS = [
    ("models/shapes.safetensors", 256),
    ("tests/fixtures/yolo11/best.pt", 320),
    ("tests/fixtures/yolo11/best.pt", 640),
    ("tests/fixtures/yolo26/best.pt", 640),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    paths = sorted((ROOT / "assets/images").glob("*.png"))
    images = [np.asarray(Image.open(paths[i % len(paths)]).convert("RGB")) for i in range(args.images)]
    print(f"{oodbox.get_num_threads()} threads, {len(images)} images of {images[0].shape}")
    for model, size in MODELS:
        det = oodbox.Detector.load(ROOT / model, imgsz=size)
        det.detect_batch(images[:2])  # warm-up
        one, batch = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for image in images:
                det.detect(image)
            one.append((time.perf_counter() - t) * 1e3 / len(images))
            t = time.perf_counter()
            det.detect_batch(images)
            batch.append((time.perf_counter() - t) * 1e3 / len(images))
        a, b = statistics.median(one), statistics.median(batch)
        print(f"{model} @ {size}: one by one {a:.1f} ms/image, detect_batch {b:.1f} ms/image, ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
