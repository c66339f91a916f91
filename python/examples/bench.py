"""Benchmark (not a test): Python's overhead over the Rust `detect`, and Ray Data throughput with
1 and 2 actors. Needs the CLI (cargo build --release) and Ray.

    python python/examples/bench.py [--rounds 12] [--iters 30] [--threads 1 2] [--images 240]

Part 1 alternates, round by round, `oodbox bench --scorer` (the Rust detection and scoring of
one decoded image, timed inside the process) with `OodDetector.detect` on the same image as a
uint8 array, both with the same compute threads (1, then 2) and Candle's elementwise pool empty
(the package's default); which goes first alternates, so that a shared machine's load drifts
into both. Each program gives its median wall time per detection and its CPU time per detection
(all its threads; for the Rust, the CPU of a run of 1 + iters detections less that of a run of
1, so that process start and model load cancel out). On a loaded machine the CPU time is the
steadier measure of the work each does.

Part 2 alternates Ray runs of 1 and 2 actors (1 CPU each, batches of 8 paths) over N shapes
images made by `oodbox synth --seed 3`, with a one-process `detect_batch` loop on 2 threads as
the reference: images per second of wall time, per CPU second of the actors' batches, and per
CPU second of the whole job (the driver, Ray's processes and the actors; needs psutil).
It prints every round, then the medians and the load average.
"""

import argparse
import json
import logging
import os
import resource
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

import oodbox
from oodbox.ray import BoxRows

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "target/release/oodbox"
MODEL, SCORER = ROOT / "models/shapes.safetensors", ROOT / "models/shapes-scorer.safetensors"
IMAGE = ROOT / "assets/images/test_mixed_00001.png"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rust_bench(iters: int, threads: int, scratch: Path) -> Tuple[float, float]:
    """`oodbox bench`: (median wall ms, its CPU seconds)."""
    out = scratch / "bench.json"
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), CANDLE_NUM_THREADS="1")
    before = children_cpu()
    subprocess.run([str(CLI), "bench", "--model", str(MODEL), "--scorer", str(SCORER), "--image", str(IMAGE),
                    "--imgsz", "256", "--iters", str(iters), "--warmup", "5", "--json", str(out)],
                   check=True, capture_output=True, env=env)
    return json.loads(out.read_text())["detect_ms"]["median"], children_cpu() - before


def rust_ms(iters: int, threads: int, scratch: Path) -> Tuple[float, float]:
    """(median wall ms, CPU ms) per detection of the Rust."""
    _, base = rust_bench(1, threads, scratch)
    wall, cpu = rust_bench(1 + iters, threads, scratch)
    return wall, 1000 * (cpu - base) / iters


def python_ms(det: oodbox.OodDetector, image: np.ndarray, iters: int) -> Tuple[float, float]:
    """(median wall ms, CPU ms) per detection from Python."""
    times = []
    cpu = time.process_time()
    for _ in range(iters):
        start = time.perf_counter()
        det.detect(image)
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times)), 1000 * (time.process_time() - cpu) / iters


def overhead(rounds: int, iters: int, threads: int, scratch: Path) -> None:
    oodbox.set_num_threads(threads)
    det = oodbox.OodDetector.load(MODEL, SCORER)
    assert det.options["imgsz"] == [256, 256], det.options  # the size `oodbox bench` is given
    image = np.asarray(Image.open(IMAGE).convert("RGB"))
    python_ms(det, image, 5)  # warm-up, as `oodbox bench --warmup 5`
    rust, py = [], []
    for r in range(rounds):
        if r % 2 == 0:
            rust.append(rust_ms(iters, threads, scratch))
            py.append(python_ms(det, image, iters))
        else:
            py.append(python_ms(det, image, iters))
            rust.append(rust_ms(iters, threads, scratch))
        print(f"{threads} thread(s), round {r + 1}: wall / CPU ms per detection: Rust {rust[-1][0]:.2f} / "
              f"{rust[-1][1]:.2f}, Python {py[-1][0]:.2f} / {py[-1][1]:.2f}  (load {os.getloadavg()[0]:.1f})",
              flush=True)
    rust_a, py_a = np.array(rust), np.array(py)
    for column, what in ((0, "wall"), (1, "CPU")):
        ratios = py_a[:, column] / rust_a[:, column]
        print(f"{threads} thread(s), {rounds} rounds of {iters} detections, {what}: medians Rust "
              f"{np.median(rust_a[:, column]):.2f} ms, Python {np.median(py_a[:, column]):.2f} ms; Python / Rust "
              f"per round: median {np.median(ratios):.3f}, quartiles {np.percentile(ratios, 25):.3f} to "
              f"{np.percentile(ratios, 75):.3f}", flush=True)


class CpuTimedBoxRows(BoxRows):
    """BoxRows that also reports the CPU seconds its process spent on each batch (in a column,
    spread over the batch's rows)."""

    def __call__(self, batch):
        start = time.process_time()
        rows = super().__call__(batch)
        n = max(1, len(rows["image"]))
        rows["cpu_s"] = np.full(len(rows["image"]), (time.process_time() - start) / n)
        return rows


class TreeCpu:
    """CPU seconds of this process and its descendants (Ray's processes and workers) while it is
    open: every process is sampled every 50 ms, so one that ends (an actor at the end of its
    run) keeps what it had used up to its last sample."""

    def __init__(self) -> None:
        import psutil

        self.psutil, self.me = psutil, psutil.Process()
        self.start, self.last = self.sample(), {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()

    def sample(self) -> Dict[int, float]:
        out = {}
        for proc in [self.me, *self.me.children(recursive=True)]:
            try:
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
            except self.psutil.NoSuchProcess:
                pass
        return out

    def poll(self) -> None:
        while not self.done.wait(0.05):
            self.last.update(self.sample())

    def close(self) -> float:
        self.done.set()
        self.thread.join()
        self.last.update(self.sample())
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in self.last.items())


def ray_run(paths: List[str], actors: int) -> Tuple[float, float, float]:
    """Images per wall second, per CPU second of the actors' batches, and per CPU second of the
    whole job (driver, Ray's own processes and the actors, their start included)."""
    import ray

    ds = ray.data.from_items([{"path": p} for p in paths])
    rows = ds.map_batches(CpuTimedBoxRows, fn_constructor_kwargs={"model": str(MODEL), "scorer": str(SCORER)},
                          batch_size=8, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=1,
                          batch_format="numpy")
    start, cpu = time.perf_counter(), TreeCpu()
    done = rows.materialize()
    wall, cpu = time.perf_counter() - start, cpu.close()
    assert done.count() > len(paths)  # every image has boxes
    return len(paths) / wall, len(paths) / done.sum("cpu_s"), len(paths) / cpu


def local_run(det: oodbox.OodDetector, paths: List[str]) -> Tuple[float, float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(paths), 8):
        det.detect_batch(paths[i:i + 8])
    per_cpu = len(paths) / (time.process_time() - cpu)
    return len(paths) / (time.perf_counter() - start), per_cpu, per_cpu


def throughput(rounds: int, count: int, scratch: Path) -> None:
    import ray

    subprocess.run([str(CLI), "synth", "--out", str(scratch / "world"), "--seed", "3", "--train", str(count),
                    "--val", "0", "--test", "0", "--quiet"], check=True, capture_output=True)
    paths = sorted(str(p) for p in (scratch / "world/images/train").glob("*.png"))
    oodbox.set_num_threads(2)
    det = oodbox.OodDetector.load(MODEL, SCORER)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    runs: Dict[str, list] = {"1 process, 2 threads, no Ray": [], "Ray, 1 actor x 1 CPU": [],
                             "Ray, 2 actors x 1 CPU": []}
    for r in range(rounds):
        for name in list(runs) if r % 2 == 0 else reversed(list(runs)):
            actors = 1 if "1 actor" in name else 2
            runs[name].append(local_run(det, paths) if "no Ray" in name else ray_run(paths, actors))
        print(f"round {r + 1}, images per wall second / per CPU second of the detection / of the job: "
              + ", ".join(f"{k}: {v[-1][0]:.1f} / {v[-1][1]:.1f} / {v[-1][2]:.1f}" for k, v in runs.items())
              + f"  (load {os.getloadavg()[0]:.1f})", flush=True)
    ray.shutdown()
    for k, v in runs.items():
        a = np.array(v)
        print(f"median {k}: {np.median(a[:, 0]):.1f} images per wall second, {np.median(a[:, 1]):.1f} per CPU "
              f"second of the detection, {np.median(a[:, 2]):.1f} of the job ({len(paths)} images, {rounds} rounds)")
    one, two = np.array(runs["Ray, 1 actor x 1 CPU"]), np.array(runs["Ray, 2 actors x 1 CPU"])
    print("2 actors / 1 actor per round, wall: " + ", ".join(f"{x:.2f}" for x in two[:, 0] / one[:, 0])
          + "; per CPU second of the detection: " + ", ".join(f"{x:.2f}" for x in two[:, 1] / one[:, 1])
          + "; of the job: " + ", ".join(f"{x:.2f}" for x in two[:, 2] / one[:, 2]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12, help="rounds of part 1")
    p.add_argument("--iters", type=int, default=30, help="detections per program and round (part 1)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="compute threads of part 1")
    p.add_argument("--ray-rounds", type=int, default=4)
    p.add_argument("--images", type=int, default=240, help="images of part 2")
    p.add_argument("--skip-ray", action="store_true")
    a = p.parse_args()
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for threads in a.threads:
            overhead(a.rounds, a.iters, threads, Path(scratch))
        if not a.skip_ray:
            throughput(a.ray_rounds, a.images, Path(scratch))
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
