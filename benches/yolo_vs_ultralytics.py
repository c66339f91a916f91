"""Time oodbox against ultralytics/PyTorch on the same YOLOv8 weights, interleaved in one run.

    cargo build --release
    YOLO_OFFLINE=1 .venv/bin/python benches/yolo_vs_ultralytics.py [--rounds 5] [--iters 5]

Each round runs `oodbox bench` (forward, and the whole detect: letterbox + forward + NMS with
per-box taps) and then PyTorch for the same number of iterations (the fused model's forward, and
`YOLO.predict` on the decoded image), so that both see the same machine load. Reports medians
over all timed iterations and the ratios oodbox / PyTorch.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.data.augment import LetterBox  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cfg", default="yolov8n.yaml", help="architecture; random weights, 80 classes")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--binary", default="target/release/oodbox")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="oodbox-bench-"))
    model = DetectionModel(args.cfg, nc=80, verbose=False).eval()
    weights = work / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if "num_batches" not in k}, str(weights))
    subprocess.run([args.binary, "synth", "--out", str(work / "scene"), "--width", str(args.imgsz),
                    "--height", str(args.imgsz), "--train", "0", "--val", "0", "--test", "1", "--quiet"], check=True)
    image_path = work / "scene/images/test_mixed/test_mixed_00000.png"
    image = cv2.imread(str(image_path))

    model.fuse(verbose=False)
    yolo = YOLO(args.cfg, task="detect")
    yolo.model = model
    x = torch.from_numpy(LetterBox(args.imgsz, auto=True)(image=image)[None]).permute(0, 3, 1, 2).flip(1).float() / 255
    with torch.no_grad():
        for _ in range(2):
            model(x)
            yolo.predict(image, imgsz=args.imgsz, verbose=False)

    ours = {"forward": [], "detect": []}
    torch_times = {"forward": [], "detect": []}
    for _ in range(args.rounds):
        out = work / "bench.json"
        subprocess.run([args.binary, "bench", "--model", str(weights), "--image", str(image_path), "--imgsz",
                        str(args.imgsz), "--iters", str(args.iters), "--warmup", "1", "--json", str(out)],
                       check=True, capture_output=True)
        report = json.loads(out.read_text())
        ours["forward"] += report["forward_ms"]["runs"]
        ours["detect"] += report["detect_ms"]["runs"]
        with torch.no_grad():
            for _ in range(args.iters):
                t = time.perf_counter()
                model(x)
                torch_times["forward"].append((time.perf_counter() - t) * 1e3)
            for _ in range(args.iters):
                t = time.perf_counter()
                yolo.predict(image, imgsz=args.imgsz, verbose=False)
                torch_times["detect"].append((time.perf_counter() - t) * 1e3)

    print(f"{args.cfg} random weights, 80 classes, {args.imgsz}x{args.imgsz}, {os.cpu_count()} threads, "
          f"{args.rounds} rounds x {args.iters} iterations, interleaved; torch {torch.__version__}")
    print("| stage | oodbox (Candle) median ms | PyTorch median ms | ratio oodbox / PyTorch |")
    print("|---|---|---|---|")
    for stage in ["forward", "detect"]:
        a, b = statistics.median(ours[stage]), statistics.median(torch_times[stage])
        print(f"| {stage} | {a:.1f} | {b:.1f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
