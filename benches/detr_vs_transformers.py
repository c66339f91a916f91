"""Time oodbox's DETR against transformers on the same DETR-R50 weights, interleaved in one run.

    cargo build --release
    .venv/bin/python benches/detr_vs_transformers.py [--rounds 3] [--iters 2]

The model is the default `DetrConfig` (ResNet-50, 91 classes, 100 queries) with random weights
(no download); the image is a 640×480 shapes scene, which `DetrImageProcessor` resizes to
1066×800. Each round runs `oodbox bench` on the saved folder and then PyTorch for the same number
of iterations, so that both see the same machine load. "forward" is the network alone; "detect"
is the whole per-image path from a decoded image (PIL-bilinear resize and normalisation, forward,
post-processing; oodbox also gathers each box's logits and feature). Reports medians over all
timed iterations and the ratios oodbox / PyTorch.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import DetrConfig, DetrForObjectDetection
from transformers.models.detr.image_processing_pil_detr import DetrImageProcessorPil


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--binary", default="target/release/oodbox")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="oodbox-detr-bench-"))
    model = DetrForObjectDetection(DetrConfig(num_labels=91)).eval()
    model.save_pretrained(work / "detr")
    processor = DetrImageProcessorPil()
    processor.save_pretrained(work / "detr")
    subprocess.run([args.binary, "synth", "--out", str(work / "scene"), "--width", "640", "--height", "480",
                    "--train", "0", "--val", "0", "--test", "1", "--quiet"], check=True)
    image_path = work / "scene/images/test_mixed/test_mixed_00000.png"
    image = Image.open(image_path).convert("RGB")

    def detect():
        inputs = processor(images=image, return_tensors="pt")
        out = model(**inputs)
        return processor.post_process_object_detection(out, threshold=0.5, target_sizes=[image.size[::-1]])

    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        detect()

    ours = {"forward": [], "detect": []}
    theirs = {"forward": [], "detect": []}
    for _ in range(args.rounds):
        out = work / "bench.json"
        subprocess.run([args.binary, "bench", "--model", str(work / "detr"), "--image", str(image_path),
                        "--iters", str(args.iters), "--warmup", "1", "--json", str(out)],
                       check=True, capture_output=True)
        report = json.loads(out.read_text())
        ours["forward"] += report["forward_ms"]["runs"]
        ours["detect"] += report["detect_ms"]["runs"]
        with torch.no_grad():
            for _ in range(args.iters):
                t = time.perf_counter()
                model(pixel_values=pixels)
                theirs["forward"].append((time.perf_counter() - t) * 1e3)
            for _ in range(args.iters):
                t = time.perf_counter()
                detect()
                theirs["detect"].append((time.perf_counter() - t) * 1e3)

    print(f"DETR-R50 random weights, 91 classes, 640x480 -> {tuple(pixels.shape[2:])}, {os.cpu_count()} threads, "
          f"{args.rounds} rounds x {args.iters} iterations, interleaved; torch {torch.__version__}")
    print("| stage | oodbox (Candle) median ms | transformers (PyTorch) median ms | ratio oodbox / PyTorch |")
    print("|---|---|---|---|")
    for stage in ["forward", "detect"]:
        a, b = statistics.median(ours[stage]), statistics.median(theirs[stage])
        print(f"| {stage} | {a:.0f} | {b:.0f} | {a / b:.2f} |")


if __name__ == "__main__":
    main()
