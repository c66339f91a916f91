"""What limits a learned box scorer on the shapes world: the features or the outliers?

The same kind of MLP as `safe` (two hidden ReLU layers, AdamW, class-balanced binary cross-entropy on
standardised features plus logits), trained in PyTorch on oodbox's own box sets against outlier
boxes of several sources, evaluated as `oodbox eval` does (near / far: VOS protocol, test_id
against test_ood_X; mixed: the known- and unknown-object boxes of test_mixed). FPR95 is the share
of OOD boxes scored below the 95th percentile of the ID boxes' scores. Prints a markdown table.

    bash benches/learned_ceiling.sh            # extracts the box sets, then runs this
    .venv/bin/python benches/learned_ceiling.py WORLD0 WORLD1

WORLD0 and WORLD1 are folders of box sets (train, test_id, test_ood_near, test_ood_far,
test_mixed, and surrogates.safetensors: the boxes of benches/corrupt_objects.py's images)
extracted with the ROI sources below. The scorer is trained and tested on WORLD0; "other world"
outliers are WORLD1's unknown-object boxes (same unknown classes, other scenes).
"""
import sys
import numpy as np
import torch
from safetensors.numpy import load_file

ROI = ["roi:4", "roi:6", "roi:9"]


def load(folder, split, feats):
    t = load_file(f"{folder}/{split}.safetensors")
    x = np.concatenate([t["features"] if f == "cls" else t[f] for f in feats] + [t["logits"]], 1)
    return x.astype(np.float32), t["label"], t["logits"], t["class_id"]


def auroc(id_s, ood_s):
    s = np.r_[id_s, ood_s]
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    for v in np.unique(s[order][1:][np.diff(s[order]) == 0]):  # ties get their mean rank
        ranks[s == v] = ranks[s == v].mean()
    n1 = len(ood_s)
    return (ranks[len(id_s):].sum() - n1 * (n1 + 1) / 2) / (len(id_s) * n1)


def fpr95(id_s, ood_s):
    return (ood_s <= np.quantile(id_s, 0.95)).mean()


def energy(logits):
    m = logits.max(1)
    return -(m + np.log(np.exp(logits - m[:, None]).sum(1)))


def test_sets(world, feats):
    """(name, ID features, ID logits, OOD features, OOD logits) of the three protocols."""
    xi, _, li, _ = load(world, "test_id", feats)
    out = []
    for kind in ["near", "far"]:
        xo, _, lo, _ = load(world, f"test_ood_{kind}", feats)
        out.append((kind, xi, li, xo, lo))
    # GT-matched, as `oodbox eval --mixed`: ID = matched to a known object of the predicted class.
    xm, lab, lm, cls = load(world, "test_mixed", feats)
    known, unknown = lab == cls, lab == -1
    out.append(("mixed", xm[known], lm[known], xm[unknown], lm[unknown]))
    return out


def train(id_x, ood_x, hidden=128, epochs=60, seed=0):
    torch.manual_seed(seed)
    mu, sd = id_x.mean(0), id_x.std(0) + 1e-6
    x = torch.tensor(np.r_[id_x, ood_x] - mu) / torch.tensor(sd)
    y = torch.cat([torch.zeros(len(id_x)), torch.ones(len(ood_x))])
    w = torch.where(y == 1, len(id_x) / len(ood_x), 1.0)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-2)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 256):
            b = perm[i:i + 256]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x[b]).squeeze(1), y[b], weight=w[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return lambda z: net((torch.tensor(z) - torch.tensor(mu)) / torch.tensor(sd)).squeeze(1).detach().numpy()


def main(world, other):
    print("| features | outliers | near AUROC / FPR95 | far AUROC / FPR95 | mixed AUROC / FPR95 |")
    print("|---|---|---|---|---|")
    row = "| {} | {} |" + " {:.3f} / {:.3f} |" * 3
    base = [v for _, xi, li, xo, lo in test_sets(world, ["cls"]) for v in (auroc(energy(li), energy(lo)), fpr95(energy(li), energy(lo)))]
    print(row.format("logits", "none (energy)", *base))
    for feats in [["cls"], ["cls"] + ROI]:
        x, lab, _, _ = load(world, "train", feats)
        unknown = lambda folder, split: (lambda t: t[0][t[1] == -1])(load(folder, split, feats))
        sources = {
            "other world, near + far": np.r_[unknown(other, "test_ood_near"), unknown(other, "test_ood_far")],
            "other world, near only": unknown(other, "test_ood_near"),
            "other world, far only": unknown(other, "test_ood_far"),
            "corrupted train objects": unknown(world, "surrogates"),
        }
        for name, ood in sources.items():
            score = train(x[lab >= 0], ood)
            vals = [v for _, xi, _, xo, _ in test_sets(world, feats) for v in (auroc(score(xi), score(xo)), fpr95(score(xi), score(xo)))]
            print(row.format("+".join(feats), f"{name} ({len(ood)})", *vals), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
