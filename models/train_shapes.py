"""Train a shapes fixture detector (ID classes only) with ultralytics on CPU and export it.

Run from the repository root, inside the development venv (see models/README.md):

    cargo run --release -- synth --out data/shapes --seed 0
    YOLO_OFFLINE=1 .venv/bin/python models/train_shapes.py --data data/shapes/data.yaml

Writes runs/shapes/weights/best.pt (ultralytics) and models/shapes.safetensors (f16 state dict with
ultralytics names; the class names and provenance are in the safetensors metadata).

Other families train the same way, into runs/<name>/, and can copy the stripped best.pt where the
tests read it (the safetensors export is for YOLOv8 only, unless --out is given):

    cargo run --release -- synth --out data/shapes-mixed --seed 0 --train 1200 --val 200 \
        --test 100 --object-size 0.045,0.7
    YOLO_OFFLINE=1 .venv/bin/python models/train_shapes.py --data data/shapes-mixed/data.yaml \
        --cfg yolo11n.yaml --name shapes-yolo11 --hours 0.4 --out-pt tests/fixtures/yolo11/best.pt
"""

import argparse
import json
import os
import shutil

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics import YOLO  # noqa: E402


def export_state_dict(pt_path, out_path, provenance, architecture):
    model = YOLO(pt_path).model
    names = [model.names[i] for i in range(len(model.names))]
    state = {
        k: v.detach().to(torch.float16).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    meta = {"names": json.dumps(names), "architecture": architecture, "provenance": json.dumps(provenance)}
    save_file(state, out_path, metadata=meta)
    print(f"wrote {out_path}: {len(state)} tensors, names {names}")


def epochs_run(pt):
    """Epochs in the run's results.csv (beside weights/), or None for a .pt outside a run folder."""
    csv = os.path.join(os.path.dirname(pt), "..", "results.csv")
    return sum(1 for _ in open(csv)) - 1 if os.path.exists(csv) else None


def data_description(data_yaml):
    """The synth command (from data.yaml's first comment line) and the train/val image counts."""
    root = os.path.dirname(os.path.abspath(data_yaml))
    with open(data_yaml) as f:
        first = f.readline()
    command = first.split("`")[1] if first.count("`") >= 2 else os.path.basename(root)
    count = lambda split: len(os.listdir(os.path.join(root, "images", split)))  # noqa: E731
    return f"{command} ({count('train')} train / {count('val')} val)"


def union_data(yamls, out_dir):
    """One data yaml training and validating on the union of the worlds in `yamls` (absolute
    image folders; the class names of the first, which every shapes world shares)."""
    worlds = []
    for path in yamls:
        with open(path) as f:
            d = yaml.safe_load(f)
        root = os.path.dirname(os.path.abspath(path))
        worlds.append((d, root))
    first = worlds[0][0]
    assert all(d["names"] == first["names"] for d, _ in worlds), f"{yamls}: class names differ"
    union = {
        split: [os.path.join(root, d[split]) for d, root in worlds] for split in ("train", "val")
    }
    union.update(nc=first["nc"], names=first["names"])
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "data.yaml")
    with open(out, "w") as f:
        f.write(f"# The union of {', '.join(yamls)}\n" + yaml.safe_dump(union, sort_keys=False))
    return out


def initial_checkpoint(weights, cfg, out_dir):
    """An ultralytics checkpoint to start training from: `weights` itself when it is one, or, for
    a safetensors state dict (as models/shapes.safetensors), the `cfg` model with those weights
    (f16 computed in f32) and the file's class names, saved as a checkpoint."""
    if not weights.endswith(".safetensors"):
        return weights
    from safetensors import safe_open
    from ultralytics.nn.tasks import DetectionModel

    with safe_open(weights, "pt") as f:
        names = json.loads(f.metadata()["names"])
        state = {k: f.get_tensor(k).float() for k in f.keys()}
    model = DetectionModel(cfg, nc=len(names), verbose=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The export leaves out BN's num_batches_tracked counters, which inference never reads.
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    model.names = dict(enumerate(names))
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "init.pt")
    torch.save({"model": model.half(), "train_args": {"task": "detect"}}, out)
    return out


def freeze_all_but(pt, keep):
    """ultralytics `freeze` entries (layer paths under `model.`) that freeze every parameter of
    the checkpoint `pt` except those under the paths in `keep` (e.g. `23.cv3.2`)."""
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(pt)
    frozen = set()
    for name, _ in model.named_parameters():
        parts = name.removeprefix("model.").split(".")
        # The shortest path above the parameter that holds nothing kept.
        for i in range(1, len(parts)):
            path = ".".join(parts[:i])
            if not any(k == path or k.startswith(path + ".") or path.startswith(k + ".") for k in keep):
                frozen.add(path)
                break
    return sorted(frozen)


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "--data", default="data/shapes/data.yaml", help="a world's data.yaml, or several, comma-separated, to train on their union"
    )
    p.add_argument("--cfg", default="yolov8n.yaml")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--hours", type=float, default=0.9, help="wall-clock budget; epochs are fitted to it")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="shapes", help="the run folder: runs/<name>/")
    p.add_argument(
        "--out",
        help="write the f16 state dict here as safetensors "
        "(default: models/shapes.safetensors for a yolov8 --cfg trained from scratch, nothing otherwise)",
    )
    p.add_argument("--out-pt", help="copy the run's (stripped, f16) best.pt here")
    p.add_argument(
        "--weights",
        help="fine-tune from these weights (an ultralytics .pt, or a safetensors state dict of --cfg) "
        "instead of training from scratch; no warmup",
    )
    p.add_argument(
        "--train-only",
        help="train only these layers (comma-separated paths under model., e.g. 23.cv2.2,23.cv3.2: "
        "the stride-32 branches of a YOLO11 head); freeze the rest",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another ultralytics train argument (repeatable), e.g. freeze=23 or mosaic=0",
    )
    p.add_argument("--export-only", help="skip training: export this ultralytics .pt")
    args = p.parse_args()

    run_dir = os.path.abspath(os.path.join("runs", args.name))
    yamls = args.data.split(",")
    data = os.path.abspath(yamls[0]) if len(yamls) == 1 else union_data(yamls, run_dir)
    pt = args.export_only
    if pt is None:
        start = initial_checkpoint(args.weights, args.cfg, run_dir) if args.weights else args.cfg
        # The warmup's high bias learning rate would undo trained weights.
        finetune = {"warmup_epochs": 0} if args.weights else {"pretrained": False}
        extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        if args.train_only:
            extra["freeze"] = freeze_all_but(start, args.train_only.split(","))
        model = YOLO(start)
        model.train(
            data=data,
            epochs=args.epochs,
            time=args.hours,
            imgsz=args.imgsz,
            batch=args.batch,
            device="cpu",
            workers=2,
            seed=args.seed,
            deterministic=True,
            cache="ram",
            plots=False,
            project=os.path.abspath("runs"),
            name=args.name,
            exist_ok=True,
            amp=False,
            **finetune,
            **extra,
        )
        pt = os.path.join("runs", args.name, "weights", "best.pt")
    metrics = YOLO(pt).val(data=data, imgsz=args.imgsz, batch=32, device="cpu", plots=False)
    provenance = {
        "cfg": args.cfg,
        "data": " + ".join(data_description(y) for y in yamls),
        "imgsz": args.imgsz,
        "seed": args.seed,
        "weights": args.weights,
        "set": args.set,
        "train_only": args.train_only,
        "val_map50": round(float(metrics.box.map50), 4),
        "val_map50_95": round(float(metrics.box.map), 4),
        # The stripped best.pt no longer knows its epoch; the training log does.
        "epochs_run": epochs_run(pt),
    }
    print(json.dumps(provenance))
    architecture = os.path.splitext(os.path.basename(args.cfg))[0].rstrip("nsmlx")
    out = args.out
    if out is None and architecture == "yolov8" and not args.weights:
        out = "models/shapes.safetensors"
    if out:
        export_state_dict(pt, out, provenance, architecture)
    if args.out_pt:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_pt)), exist_ok=True)
        shutil.copyfile(pt, args.out_pt)
        print(f"copied {pt} to {args.out_pt}")


if __name__ == "__main__":
    main()
