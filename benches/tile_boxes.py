"""Tiles a box set to N boxes with small Gaussian noise, for fit-time benchmarks at a scale the
fixture world does not reach (copies of one box set are not new data: use for timing only).

    ./.venv/bin/python benches/tile_boxes.py IN.safetensors OUT.safetensors [N=100000] [SEED=0] [NOISE=0.01]

Every copy after the first adds noise of NOISE (a share of each dimension's std) to features and logits;
image_index is offset per copy so the copies are distinct images. Metadata is kept.
"""

import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def main():
    src, dst = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 100_000
    rng = np.random.default_rng(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    share = float(sys.argv[5]) if len(sys.argv) > 5 else 0.01
    with safe_open(src, "np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    m = len(tensors["class_id"])
    copies = -(-n // m)
    out = {}
    for key, t in tensors.items():
        if key.startswith("head."):
            out[key] = t
            continue
        parts = []
        for c in range(copies):
            part = t.copy()
            if key in ("features", "logits") and c > 0:
                noise = rng.standard_normal(part.shape) * (share * t.std(axis=0))
                part = (part + noise).astype(t.dtype)
            if key == "image_index":
                part = part + c * (int(t.max()) + 1)
            parts.append(part)
        out[key] = np.ascontiguousarray(np.concatenate(parts)[:n])
    save_file(out, dst, metadata=meta)
    print(f"{dst}: {n} boxes from {copies} copies of {m}")


if __name__ == "__main__":
    main()
