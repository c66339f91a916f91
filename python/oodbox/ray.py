"""Per-box rows from batches of images, for Ray Data (``map_batches``) and Spark
(``mapInArrow`` / ``predict_batch_udf``).

    ds = ray.data.from_items([{"path": p} for p in paths])
    rows = ds.map_batches(
        BoxRows, fn_constructor_kwargs={"model": "best.pt", "scorer": "scorer.safetensors"},
        batch_size=16, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
        batch_format="numpy")
    rows.write_parquet("out/")

The model is loaded once per actor, in the actor. Its thread pool is sized to the CPUs Ray
gave the actor (``num_cpus``), so that actors on one machine do not oversubscribe it.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np

from . import Detector, OodDetector, set_num_threads

log = logging.getLogger("oodbox")

# Columns of every row; OOD columns with a scorer, `features` / `logits` when asked for.
BOX_COLUMNS = ("box_index", "x1", "y1", "x2", "y2", "class_id", "class_name", "confidence", "level")
OOD_COLUMNS = ("score", "p_value", "ood_confidence", "is_ood")


def _assigned_cpus() -> Optional[int]:
    """The CPUs Ray assigned to this worker, when running in Ray."""
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(cpus))
    except ImportError:
        pass
    return None


def to_rows(detections: Mapping[str, Any], keys: np.ndarray, with_features: bool = False) -> Dict[str, np.ndarray]:
    """Flattens a :meth:`Detector.detect_batch` result into per-box columns that Arrow and
    Parquet take; ``keys[i]`` (e.g. the path) identifies image ``i`` of the batch."""
    index = np.asarray(detections["image_index"], dtype=np.int64)
    bbox = np.asarray(detections["bbox"])
    # Position of each box among its image's boxes (they come grouped by image, in order).
    starts = np.searchsorted(index, index, side="left")
    rows: Dict[str, np.ndarray] = {
        "image": np.asarray(keys)[index] if len(index) else np.asarray(keys)[:0],
        "box_index": np.arange(len(index)) - starts,
        "x1": bbox[:, 0], "y1": bbox[:, 1], "x2": bbox[:, 2], "y2": bbox[:, 3],
        "class_id": detections["class_id"],
        "class_name": np.asarray(detections["class_name"], dtype=str),
        "confidence": detections["confidence"],
        "level": detections["level"],
    }
    for key in OOD_COLUMNS:
        if key in detections:
            rows[key] = detections[key]
    if with_features:
        rows["features"] = detections["features"]
        rows["logits"] = detections["logits"]
    return rows


_PER_PROCESS: Dict[str, "BoxRows"] = {}


class BoxRows:
    """A callable class that maps a batch ``{column: array of paths or images}`` to per-box
    rows: ``image`` (the path, or the ``key`` column), ``box_index``, ``x1``..``y2``,
    ``class_id``, ``class_name``, ``confidence``, ``level``; with a scorer ``score``,
    ``p_value``, ``ood_confidence`` and ``is_ood``; with ``features=True`` the ``features`` and
    ``logits`` arrays (to gather a box set and fit a scorer on it).

    An image that cannot be read is logged and skipped; the batch goes on.
    ``threads`` defaults to the CPUs Ray assigned, else ``OODBOX_NUM_THREADS``, else all.
    Other keywords go to :meth:`Detector.load` (``imgsz``, ``conf``, ...)."""

    def __init__(
        self,
        model: str,
        scorer: Optional[str] = None,
        *,
        column: str = "path",
        key: Optional[str] = None,
        features: bool = False,
        threads: Optional[int] = None,
        **detect_options: Any,
    ) -> None:
        threads = threads or _assigned_cpus() or int(os.environ.get("OODBOX_NUM_THREADS", "0"))
        if threads:
            set_num_threads(threads)
        if scorer is None:
            self.detector: Detector = Detector.load(model, **detect_options)
        else:
            self.detector = OodDetector.load(model, scorer, **detect_options)
        self.column, self.key, self.features = column, key or column, features

    @classmethod
    def per_process(cls, model: str, scorer: Optional[str] = None, **kwargs: Any) -> "BoxRows":
        """The one ``BoxRows`` of this process for these arguments, made on first use. For
        Spark's ``mapInArrow``: a Python worker runs many tasks, but unpickles the task's
        function anew for each, so a model loaded inside that function would be loaded per
        task; this keeps it in the module instead."""
        key = repr((model, scorer, sorted(kwargs.items())))
        if key not in _PER_PROCESS:
            _PER_PROCESS[key] = cls(model, scorer, **kwargs)
        return _PER_PROCESS[key]

    def __call__(self, batch: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        images = list(batch[self.column])
        out = self.detector.detect_batch(images, skip_errors=True)
        keys = np.asarray(batch[self.key])
        for i, message in out["failed"]:
            log.warning("skipped %s: %s", keys[i], message)
        return to_rows(out, keys, self.features)
