"""Fit and score time of oodbox's scorers against Oodeel 0.4 on the same features, interleaved.

    cargo build --release
    .venv/bin/python benches/scorers_vs_oodeel.py [--n 100000] [--d 256] [--rounds 3]

N fit boxes and N scored boxes of dimension D (C = 10 classes, Gaussian class clusters, logits
from a random linear head). oodbox is timed as whole `oodbox fit` / `oodbox score` processes
(reading the box set included); Oodeel in-process, through a torch model whose penultimate
layer is the identity (its feature extraction included). Medians over rounds; ratio < 1 means
oodbox is faster.
"""

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# The fixture exporter stubs out Hugging Face `datasets` before importing Oodeel (see there).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
from export_oodeel_reference import write_safetensors  # noqa: E402
from oodeel.methods import DKNN, VIM, Energy, Mahalanobis  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--c", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--binary", default="target/release/oodbox")
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    n, d, c = args.n, args.d, args.c
    centres = rng.normal(0, 1, (c, d)).astype(np.float32)
    weight = rng.normal(0, 1 / np.sqrt(d), (c, d)).astype(np.float32)
    bias = rng.normal(0, 0.1, c).astype(np.float32)

    def make(count):
        y = rng.integers(0, c, count)
        f = (centres[y] + rng.normal(0, 1, (count, d))).astype(np.float32)
        return f, y, (f @ weight.T + bias).astype(np.float32)

    f_fit, y_fit, l_fit = make(n)
    f_test, y_test, l_test = make(n)
    work = Path(tempfile.mkdtemp(prefix="oodbox-scorers-"))

    def boxset(path, f, y, logits):
        write_safetensors(path, {"features": f, "logits": logits, "class_id": logits.argmax(1).astype(np.int64),
                                 "label": y.astype(np.int64), "head.weight": weight, "head.bias": bias},
                          {"class_names": "[" + ",".join(f'"c{i}"' for i in range(c)) + "]"})

    boxset(work / "fit.safetensors", f_fit, y_fit, l_fit)
    boxset(work / "cal.safetensors", *make(2000))
    boxset(work / "test.safetensors", f_test, y_test, l_test)

    model = nn.Sequential(nn.Identity(), nn.Linear(d, c))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(weight))
        model[1].bias.copy_(torch.from_numpy(bias))
    model.eval()
    fit_loader = DataLoader(TensorDataset(torch.from_numpy(f_fit), torch.from_numpy(y_fit)), batch_size=4096)
    test_loader = DataLoader(TensorDataset(torch.from_numpy(f_test), torch.from_numpy(y_test)), batch_size=4096)

    methods = {
        "energy": (lambda: Energy(), False, []),
        "mahalanobis": (lambda: Mahalanobis(eps=0.0), True, []),
        "vim": (lambda: VIM(princ_dims=0.99), True, []),
        "knn": (lambda: DKNN(nearest=50), True, []),
    }
    times = {m: {"ours_fit": [], "ours_score": [], "oodeel_fit": [], "oodeel_score": []} for m in methods}
    for _ in range(args.rounds):
        for name, (make_method, feature_based, params) in methods.items():
            scorer = work / f"{name}.safetensors"
            t = time.perf_counter()
            subprocess.run([args.binary, "fit", "--scorer", name, "--boxes", str(work / "fit.safetensors"),
                            "--calibration-boxes", str(work / "cal.safetensors"), "--min-class-calibration", "100",
                            "--out", str(scorer), "--quiet", *params], check=True)
            times[name]["ours_fit"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([args.binary, "score", "--scorer", str(scorer), "--boxes", str(work / "test.safetensors"),
                            "--json", str(work / "scores.json")], check=True, capture_output=True)
            times[name]["ours_score"].append(time.perf_counter() - t)

            method = make_method()
            kwargs = dict(feature_layers_id=[0], head_layer_id=-1) if feature_based else {}
            t = time.perf_counter()
            method.fit(copy.deepcopy(model), fit_loader, **kwargs)
            times[name]["oodeel_fit"].append(time.perf_counter() - t)
            t = time.perf_counter()
            method.score(test_loader)
            times[name]["oodeel_score"].append(time.perf_counter() - t)

    print(f"N = {n} fit and {n} scored boxes, D = {d}, C = {c}, {os.cpu_count()} threads, "
          f"{args.rounds} rounds interleaved; medians in seconds")
    print("| scorer | oodbox fit | Oodeel fit | ratio | oodbox score | Oodeel score | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, t in times.items():
        m = {k: statistics.median(v) for k, v in t.items()}
        print(f"| {name} | {m['ours_fit']:.2f} | {m['oodeel_fit']:.2f} | {m['ours_fit'] / m['oodeel_fit']:.2f} | "
              f"{m['ours_score']:.2f} | {m['oodeel_score']:.2f} | {m['ours_score'] / m['oodeel_score']:.2f} |")


if __name__ == "__main__":
    main()
