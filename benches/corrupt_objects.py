"""Image-space surrogate outliers for the learned-scorer experiment (benches/learned_ceiling.sh).

Copies the first N train images of a shapes world and corrupts every known object in them, within
its box, by one of: `shuffle` (a 2x2 or 3x3 grid of the box permuted), `cutmix` (half of the box
replaced by the same half of another class's object, from the first 200 images), `cutpaste` (a
patch of 30-60% of the box's sides, cut from elsewhere in the image, pasted inside it). Writes
OUT/images/surr/*.png and OUT/coco/surr.json, each corrupted object an unknown object, so that
`oodbox extract --data OUT/coco/surr.json` labels the boxes on them -1. Seeded (0).

    .venv/bin/python benches/corrupt_objects.py WORLD OUT N shuffle,cutmix,cutpaste
"""
import glob
import json
import os
import sys

import numpy as np
from PIL import Image

src, out, n, modes = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split(",")
rng = np.random.default_rng(0)
os.makedirs(f"{out}/images/surr", exist_ok=True)
os.makedirs(f"{out}/coco", exist_ok=True)
files = sorted(glob.glob(f"{src}/images/train/*.png"))[:n]


def objects_of(f):
    """(class, cx, cy, w, h) of the image's YOLO label file, normalised."""
    lab = f.replace("/images/", "/labels/").replace(".png", ".txt")
    rows = [line.split() for line in open(lab) if line.strip()]
    return [(int(r[0]), *map(float, r[1:5])) for r in rows]


def pixels(obj, w_img, h_img):
    c, cx, cy, w, h = obj
    return int((cx - w / 2) * w_img), int((cy - h / 2) * h_img), int((cx + w / 2) * w_img), int((cy + h / 2) * h_img)


crops = []  # (class, crop) for cutmix
for f in files[:200]:
    im = np.asarray(Image.open(f).convert("RGB"))
    for obj in objects_of(f):
        x0, y0, x1, y1 = pixels(obj, im.shape[1], im.shape[0])
        if x1 - x0 > 8 and y1 - y0 > 8:
            crops.append((obj[0], im[y0:y1, x0:x1].copy()))


def shuffle(reg):
    g = rng.choice([2, 3])
    h, w = reg.shape[:2]
    ys, xs = np.linspace(0, h, g + 1).astype(int), np.linspace(0, w, g + 1).astype(int)
    cells = [(i, j) for i in range(g) for j in range(g)]
    tiles = [reg[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] for i, j in cells]
    res = reg.copy()
    perm = rng.permutation(len(tiles))
    for k, (i, j) in enumerate(cells):
        t = tiles[perm[k]]
        th, tw = ys[i + 1] - ys[i], xs[j + 1] - xs[j]
        res[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = t if t.shape[:2] == (th, tw) else np.asarray(Image.fromarray(t).resize((tw, th)))
    return res


def cutmix(reg, c):
    h, w = reg.shape[:2]
    others = [p for p in crops if p[0] != c]
    o = np.asarray(Image.fromarray(others[rng.integers(len(others))][1]).resize((w, h)))
    res = reg.copy()
    if rng.random() < 0.5:
        res[:, w // 2:] = o[:, w // 2:]
    else:
        res[h // 2:] = o[h // 2:]
    return res


def cutpaste(reg, im):
    h, w = reg.shape[:2]
    H, W = im.shape[:2]
    ph, pw = max(2, int(h * rng.uniform(0.3, 0.6))), max(2, int(w * rng.uniform(0.3, 0.6)))
    sy, sx = rng.integers(0, H - ph), rng.integers(0, W - pw)
    dy, dx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
    res = reg.copy()
    res[dy:dy + ph, dx:dx + pw] = im[sy:sy + ph, sx:sx + pw]
    return res


images, anns = [], []
for k, f in enumerate(files):
    im = np.asarray(Image.open(f).convert("RGB")).copy()
    H, W = im.shape[:2]
    orig = im.copy()
    for obj in objects_of(f):
        x0, y0, x1, y1 = pixels(obj, W, H)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
        if x1 - x0 < 4 or y1 - y0 < 4:
            continue
        mode = modes[rng.integers(len(modes))]
        reg = im[y0:y1, x0:x1]
        im[y0:y1, x0:x1] = shuffle(reg) if mode == "shuffle" else cutmix(reg, obj[0]) if mode == "cutmix" else cutpaste(reg, orig)
        anns.append(dict(id=len(anns) + 1, image_id=k, category_id=4, bbox=[x0, y0, x1 - x0, y1 - y0],
                         area=(x1 - x0) * (y1 - y0), iscrowd=0, unknown=True))
    name = f"surr_{k:05d}.png"
    Image.fromarray(im).save(f"{out}/images/surr/{name}")
    images.append(dict(id=k, file_name=name, width=W, height=H))
names = ["circle", "square", "triangle", "star"]
cats = [dict(id=i, name=nm, supercategory="id") for i, nm in enumerate(names)]
cats.append(dict(id=4, name="surrogate", supercategory="near_ood"))
json.dump(dict(images=images, annotations=anns, categories=cats, info={}), open(f"{out}/coco/surr.json", "w"))
print(len(images), "images", len(anns), "objects")
