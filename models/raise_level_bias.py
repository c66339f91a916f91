"""Raise one pyramid level's class bias in an ultralytics detector, for parity fixtures.

A detector trained on the shapes world keeps (almost) no box on the levels its objects never
needed (the bundled YOLOv8n: none on strides 16 and 32). The parity tests need kept boxes on every
level, so this adds `DELTA` to the bias of that level's last class conv (`cv3[LEVEL][2]`, before
the sigmoid): the level's anchors then pass the confidence threshold where their logits were
highest, and `predict` keeps boxes there, decoded by the level's own (trained) box branch. The
result is a fixture for parity, not a detector to measure with.

    YOLO_OFFLINE=1 .venv/bin/python models/raise_level_bias.py IN OUT --raise 1=6 --raise 2=6

IN: an ultralytics checkpoint, or a safetensors state dict (as models/shapes.safetensors) with
`--cfg`. OUT: a stripped checkpoint as ultralytics writes it (the `DetectionModel` in float16
under `model`).
"""

import argparse
import os
import sys

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from ultralytics import YOLO  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_shapes import initial_checkpoint  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--cfg", default="yolov8n.yaml", help="the architecture of a safetensors input")
    p.add_argument("--raise", dest="raises", action="append", default=[], metavar="LEVEL=DELTA")
    args = p.parse_args()

    start = initial_checkpoint(args.input, args.cfg, os.path.dirname(os.path.abspath(args.output)))
    yolo = YOLO(start)
    head = yolo.model.model[-1]
    with torch.no_grad():
        for item in args.raises:
            level, delta = item.split("=")
            conv = head.cv3[int(level)][2]
            conv.bias += float(delta)
            print(f"cv3[{level}][2].bias + {delta}: now {conv.bias.float().tolist()}")
    yolo.save(args.output)
    if start != args.input:
        os.remove(start)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
