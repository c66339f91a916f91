"""The share of held-out known-object boxes flagged at alpha 0.05 by one scorer, recalibrated on
random draws of val scenes; run by benches/calibration_draws.sh (needs numpy and safetensors).

The p-values are oodbox's: per predicted class, p = (1 + #{calibration scores >= s}) / (n + 1),
pooled for a class with fewer than 100 calibration boxes. The Beta-law column is the standard
deviation that `oodbox fit` prints for each draw's per-class sizes, averaged over draws."""

import json
import sys

import numpy as np
from safetensors import safe_open

ALPHA, CLASSES, MIN_CLASS = 0.05, 4, 100


def load(out, split):
    f = safe_open(f"{out}/{split}.safetensors", "np")
    scores = np.array([b["score"] for b in json.load(open(f"{out}/scores_{split}.json"))["boxes"]])
    column = lambda k: f.get_tensor(k).astype(int)  # noqa: E731
    return scores, column("class_id"), column("label"), column("image_index")


def flagged(cal, cal_class, scores, classes):
    pooled = np.sort(cal)
    is_ood = np.empty(len(scores), bool)
    for c in range(CLASSES):
        own = np.sort(cal[cal_class == c])
        ref = own if len(own) >= MIN_CLASS else pooled
        mine = classes == c
        at_least = len(ref) - np.searchsorted(ref, scores[mine], side="left")
        is_ood[mine] = (1 + at_least) / (len(ref) + 1) <= ALPHA
    return is_ood.mean()


def beta_sd(cal_class):
    """As oodbox's flagged_share_spread (every class here has its own calibration set)."""
    var = 0.0
    for c in range(CLASSES):
        m = (cal_class == c).sum() + 1
        l = np.floor(ALPHA * m)
        var += (cal_class == c).mean() ** 2 * l * (m - l) / (m * m * (m + 1))
    return np.sqrt(var)


def main(out):
    vs, vc, vl, vi = load(out, "val")
    ts, tc, tl, _ = load(out, "test_id")
    known = tl >= 0
    ts, tc = ts[known], tc[known]
    scenes = vi.max() + 1
    rng = np.random.default_rng(0)
    print(f"test_id: {known.sum()} known-object boxes; val: {scenes} scenes")
    print("| calibration scenes | draws | mean share | sd of the share | Beta law (fit's note) | within alpha ± 0.02 |")
    print("|---|---|---|---|---|---|")
    for size in (100, 300, 1000):
        shares, laws = [], []
        for _ in range(200):
            m = np.isin(vi, rng.choice(scenes, size, replace=False)) & (vl >= 0)
            shares.append(flagged(vs[m], vc[m], ts, tc))
            laws.append(beta_sd(vc[m]))
        shares = np.array(shares)
        inside = (np.abs(shares - ALPHA) <= 0.02).mean()
        print(f"| {size} | 200 | {shares.mean():.4f} | {shares.std():.4f} | {np.mean(laws):.4f} | {inside:.1%} |")
    m = (vi < 300) & (vl >= 0)
    print(f"the first 300 val scenes (data/shapes' val): {flagged(vs[m], vc[m], ts, tc):.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/calibration-draws")
