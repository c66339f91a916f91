"""Train the shapes fixture detector (YOLOv8n, ID classes only) with ultralytics on CPU and export it.

Run from the repository root, inside the development venv (see models/README.md):

    cargo run --release -- synth --out data/shapes --seed 0
    YOLO_OFFLINE=1 .venv/bin/python models/train_shapes.py --data data/shapes/data.yaml

Writes runs/shapes/weights/best.pt (ultralytics) and models/shapes.safetensors (f16 state dict with
ultralytics names; the class names and provenance are in the safetensors metadata).
"""

import argparse
import json
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics import YOLO  # noqa: E402


def export_state_dict(pt_path, out_path, provenance):
    model = YOLO(pt_path).model
    names = [model.names[i] for i in range(len(model.names))]
    state = {
        k: v.detach().to(torch.float16).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    meta = {"names": json.dumps(names), "architecture": "yolov8", "provenance": json.dumps(provenance)}
    save_file(state, out_path, metadata=meta)
    print(f"wrote {out_path}: {len(state)} tensors, names {names}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/shapes/data.yaml")
    p.add_argument("--cfg", default="yolov8n.yaml")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--hours", type=float, default=0.9, help="wall-clock budget; epochs are fitted to it")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="models/shapes.safetensors")
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
            name="shapes",
            exist_ok=True,
            pretrained=False,
            amp=False,
        )
        pt = os.path.join("runs", "shapes", "weights", "best.pt")
    metrics = YOLO(pt).val(data=os.path.abspath(args.data), imgsz=args.imgsz, batch=32, device="cpu", plots=False)
    provenance = {
        "cfg": args.cfg,
        "data": "oodbox synth --seed 0 (2000 train / 300 val, 256x256)",
        "imgsz": args.imgsz,
        "seed": args.seed,
        "val_map50": round(float(metrics.box.map50), 4),
        "val_map50_95": round(float(metrics.box.map), 4),
        # The stripped best.pt no longer knows its epoch; the training log does.
        "epochs_run": sum(1 for _ in open(os.path.join(os.path.dirname(pt), "..", "results.csv"))) - 1,
    }
    print(json.dumps(provenance))
    export_state_dict(pt, args.out, provenance)


if __name__ == "__main__":
    main()
