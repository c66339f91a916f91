"""Detect over an image folder on a Ray cluster and write per-box rows with OOD verdicts to
Parquet; then extract boxes on the cluster and fit one scorer on the gathered box set.

    python python/examples/ray_folder.py --model models/shapes.safetensors \
        --scorer models/shapes-scorer.safetensors --images assets/images --out rows/ \
        --fit-out fitted.safetensors --actors 2

Without --address it starts a local cluster with --cpus CPUs.
"""

import argparse
from pathlib import Path

import numpy as np
import ray

import oodbox
from oodbox.ray import BoxRows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--scorer", help="score every box with this scorer file")
    p.add_argument("--images", required=True, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, help="Parquet folder for the per-box rows")
    p.add_argument("--fit-out", help="also extract features on the cluster and fit a scorer here")
    p.add_argument("--fit-kind", default="mahalanobis")
    p.add_argument("--imgsz", type=int, help="detection size (default: the scorer's)")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster")
    p.add_argument("--address", help="an existing Ray cluster")
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()

    ray.init(address=a.address, num_cpus=None if a.address else a.cpus,
             include_dashboard=False, log_to_driver=False)
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    paths = sorted(str(f) for f in Path(a.images).rglob("*") if f.suffix.lower() in suffixes)
    ds = ray.data.from_items([{"path": path} for path in paths])
    options = {} if a.imgsz is None else {"imgsz": a.imgsz}
    # A fixed pool of actors of one CPU each; each loads the model once.
    udf = dict(batch_size=a.batch_size, compute=ray.data.ActorPoolStrategy(size=a.actors),
               num_cpus=1, batch_format="numpy")

    rows = ds.map_batches(BoxRows, fn_constructor_kwargs={"model": a.model, "scorer": a.scorer, **options}, **udf)
    rows.write_parquet(a.out)
    print(f"{len(paths)} images: per-box rows in {a.out}")

    if a.fit_out:
        boxes = ds.map_batches(BoxRows, fn_constructor_kwargs={"model": a.model, "features": True, **options}, **udf)
        blocks = list(boxes.iter_batches(batch_size=None, batch_format="numpy"))
        gathered = {k: np.concatenate([b[k] for b in blocks]) for k in ("box_index", "features", "logits", "class_id")}
        gathered["image"] = np.concatenate([b["image"] for b in blocks]).astype(str)
        # One box set in file order: images as the CLI lists them, boxes as detected.
        order = np.lexsort((gathered["box_index"], gathered["image"]))
        detector = oodbox.Detector.load(a.model, **options)
        box_set = {
            "features": gathered["features"][order],
            "logits": gathered["logits"][order],
            "class_id": gathered["class_id"][order],
            "image_index": np.unique(gathered["image"][order], return_inverse=True)[1],
            "class_names": detector.class_names,
            "fingerprint": detector.fingerprint,
            "detect_options": detector.options,
            **detector.head,
        }
        fitted = oodbox.Scorer.fit(a.fit_kind, box_set)
        fitted.save(a.fit_out)
        print(f"fitted {fitted.name} on {len(order)} boxes from {len(paths)} images: {a.fit_out}")
    ray.shutdown()


if __name__ == "__main__":
    main()
