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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/shapes/data.yaml")
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
        "(default: models/shapes.safetensors for a yolov8 --cfg, nothing otherwise)",
    )
    p.add_argument("--out-pt", help="copy the run's (stripped, f16) best.pt here")
    p.add_argument("--export-only", help="skip training: export this ultralytics .pt")
    args = p.parse_args()

    pt = args.export_only
    if pt is None:
        model = YOLO(args.cfg)
        model.train(
            data=os.path.abspath(args.data),
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
            pretrained=False,
            amp=False,
        )
        pt = os.path.join("runs", args.name, "weights", "best.pt")
    metrics = YOLO(pt).val(data=os.path.abspath(args.data), imgsz=args.imgsz, batch=32, device="cpu", plots=False)
    provenance = {
        "cfg": args.cfg,
        "data": data_description(args.data),
        "imgsz": args.imgsz,
        "seed": args.seed,
        "val_map50": round(float(metrics.box.map50), 4),
        "val_map50_95": round(float(metrics.box.map), 4),
        # The stripped best.pt no longer knows its epoch; the training log does.
        "epochs_run": epochs_run(pt),
    }
    print(json.dumps(provenance))
    architecture = os.path.splitext(os.path.basename(args.cfg))[0].rstrip("nsmlx")
    out = args.out
    if out is None and architecture == "yolov8":
        out = "models/shapes.safetensors"
    if out:
        export_state_dict(pt, out, provenance, architecture)
    if args.out_pt:
        os.makedirs(os.path.dirname(os.path.abspath(args.out_pt)), exist_ok=True)
        shutil.copyfile(pt, args.out_pt)
        print(f"copied {pt} to {args.out_pt}")


if __name__ == "__main__":
    main()
