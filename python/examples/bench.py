"""Benchmark (not a test): Python's overhead over the Rust `detect`, and Ray throughput with 1 and
2 actors. Needs the CLI (cargo build --release) and a folder of images.

    python python/examples/bench.py --images /tmp/world/images/train
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import oodbox

ROOT = Path(__file__).resolve().parents[2]
MODEL, SCORER = ROOT / "models/shapes.safetensors", ROOT / "models/shapes-scorer.safetensors"
IMAGE = ROOT / "assets/images/test_mixed_00001.png"


def rust_ms(iters: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "bench.json"
        subprocess.run([str(ROOT / "target/release/oodbox"), "bench", "--model", str(MODEL),
                        "--scorer", str(SCORER), "--image", str(IMAGE), "--imgsz", "256",
                        "--iters", str(iters), "--warmup", "5", "--json", str(out)],
                       check=True, capture_output=True)
        doc = json.loads(out.read_text())
    return doc["detect_ms"]["median"] if isinstance(doc["detect_ms"], dict) else doc["detect_ms"]


def python_ms(iters: int) -> float:
    det = oodbox.OodDetector.load(MODEL, SCORER)
    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    for _ in range(5):
        det.detect(image)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        det.detect(image)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def ray_throughput(images: Path, actors: int) -> float:
    import ray
    from oodbox.ray import BoxRows

    paths = sorted(str(p) for p in images.glob("*.png"))
    ds = ray.data.from_items([{"path": p} for p in paths])
    rows = ds.map_batches(BoxRows, fn_constructor_kwargs={"model": str(MODEL), "scorer": str(SCORER)},
                          batch_size=8, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
                          batch_format="numpy")
    start = time.perf_counter()
    rows.materialize()
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--iters", type=int, default=200)
    a = p.parse_args()
    oodbox.set_num_threads(2)
    for _ in range(3):  # interleaved, to see the noise of a shared machine
        rust, py = rust_ms(a.iters), python_ms(a.iters)
        print(f"detect+score at 256: Rust {rust:.3f} ms, Python {py:.3f} ms: overhead {100 * (py / rust - 1):+.1f}%")
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for actors in (1, 2, 1, 2):
        print(f"Ray, {actors} actor(s) x 1 CPU: {ray_throughput(a.images, actors):.1f} images/s")
    ray.shutdown()


if __name__ == "__main__":
    main()
