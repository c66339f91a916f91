"""A detector's forward on CPU: oodbox against ONNX Runtime and PyTorch, same weights, interleaved.

    cargo build --release
    YOLO_OFFLINE=1 .venv/bin/python benches/cpu_speed.py [--sizes 640 320] [--rounds 5] [--iters 5]

The weights are a random-init ultralytics `--cfg` (default `yolov8n.yaml`; also `yolo11n.yaml`,
`yolo26n.yaml`; 80 classes, seed 0), saved as
safetensors for oodbox, fused (BN folded) for PyTorch, and exported from that fused module to
ONNX (opset 17) for ONNX Runtime, so all three run the identical graph. Each round runs, for
every size, `oodbox bench` (its `forward_ms` per iteration, after 2 warm-up runs), then ONNX
Runtime, then PyTorch, the same number of iterations each, so that all three see the same
machine load. Every runtime uses all cores, or `--threads` (oodbox through
`RAYON_NUM_THREADS`). `--baseline` times a second oodbox binary (say, an earlier commit's build)
in the same rounds, for a before/after at the same machine load. Prints medians over all timed
iterations and the ratios, and writes them to --json.
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

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402


def timed(fn, iters):
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cfg", default="yolov8n.yaml")
    p.add_argument("--sizes", type=int, nargs="+", default=[640, 320])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--binary", default="target/release/oodbox")
    p.add_argument("--baseline", default=None, help="a second oodbox binary, timed alongside")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", default=None)
    args = p.parse_args()
    threads = args.threads
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    binaries = {"oodbox": args.binary} | ({"baseline": args.baseline} if args.baseline else {})
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    work = Path(tempfile.mkdtemp(prefix="oodbox-cpu-speed-"))
    model = DetectionModel(args.cfg, nc=80, verbose=False).eval()
    weights = work / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items() if "num_batches" not in k}, str(weights))
    model.fuse(verbose=False)
    for m in model.modules():
        # Export the raw head outputs, as oodbox's forward returns them.
        if m.__class__.__name__ == "Detect":
            m.export = True

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sessions, inputs = {}, {}
    for size in args.sizes:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        onnx_path = work / f"model_{size}.onnx"
        with torch.no_grad():
            torch.onnx.export(model, x, str(onnx_path), opset_version=17, dynamo=False,
                              input_names=["images"], output_names=["output"])
        sessions[size] = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        inputs[size] = x
        with torch.no_grad():
            ref = model(x)
            ref = ref[0] if isinstance(ref, (list, tuple)) else ref
        got = sessions[size].run(None, {"images": x.numpy()})[0]
        print(f"{size}: ONNX Runtime vs PyTorch max |diff| {np.abs(got - ref.numpy()).max():.2e}")

    times = {size: {k: [] for k in [*binaries, "onnxruntime", "pytorch"]} for size in args.sizes}
    for r in range(args.rounds):
        for size in args.sizes:
            out = work / "bench.json"
            for name, binary in binaries.items():
                subprocess.run([binary, "bench", "--model", str(weights), "--imgsz", str(size),
                                "--iters", str(args.iters), "--json", str(out)],
                               check=True, stderr=subprocess.DEVNULL, env=env)
                times[size][name] += json.loads(out.read_text())["forward_ms"]["runs"]
            feed = {"images": inputs[size].numpy()}
            sessions[size].run(None, feed)
            times[size]["onnxruntime"] += timed(lambda: sessions[size].run(None, feed), args.iters)
            with torch.no_grad():
                model(inputs[size])
                times[size]["pytorch"] += timed(lambda: model(inputs[size]), args.iters)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    report = {"threads": threads, "cfg": args.cfg, "rounds": args.rounds, "iters": args.iters, "sizes": {}}
    print(f"\n{args.cfg} forward, ms per image, {threads} threads, medians of {args.rounds * args.iters} runs")
    print(f"{'size':>5} {'oodbox':>9} {'ORT':>9} {'PyTorch':>9} {'oodbox/ORT':>11} {'oodbox/PyTorch':>15}")
    for size in args.sizes:
        med = {k: statistics.median(v) for k, v in times[size].items()}
        row = {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in times[size].items()}
        row["ratio_oodbox_ort"] = med["oodbox"] / med["onnxruntime"]
        row["ratio_oodbox_pytorch"] = med["oodbox"] / med["pytorch"]
        report["sizes"][size] = row
        print(f"{size:>5} {med['oodbox']:9.1f} {med['onnxruntime']:9.1f} {med['pytorch']:9.1f} "
              f"{row['ratio_oodbox_ort']:11.2f} {row['ratio_oodbox_pytorch']:15.2f}")
        if "baseline" in med:
            row["ratio_baseline_ort"] = med["baseline"] / med["onnxruntime"]
            print(f"{'':>5} baseline {med['baseline']:.1f} ms, baseline/ORT {row['ratio_baseline_ort']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
