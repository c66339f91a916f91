# Used by benches/ood_flow.sh. Usage: tile_boxes.py SRC DST N
# Tiles a box set to >= N boxes, adding Gaussian noise (5% of each feature's std) to the copies.
import sys, numpy as np
from safetensors.numpy import load_file, save_file
from safetensors import safe_open
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t = load_file(src)
with safe_open(src, "np") as f: meta = f.metadata()
m = t["features"].shape[0]; reps = -(-n // m)
rng = np.random.default_rng(0)
out = {}
for k, v in t.items():
    if v.ndim >= 1 and v.shape[0] == m and not k.startswith("head."):
        out[k] = np.concatenate([v] * reps)[:n]
    else:
        out[k] = v
f = out["features"]; sd = t["features"].std(0)
f[m:] += (0.05 * sd * rng.standard_normal(f[m:].shape)).astype(np.float32)
if "image_index" in out:
    out["image_index"] = np.arange(n) // 4
save_file(out, dst, metadata=meta)
print(dst, {k: v.shape for k, v in out.items()})
