"""oodbox from Python: object detection with per-box logits and features, and calibrated
out-of-distribution (OOD) verdicts, computed by the oodbox Rust library.

    import oodbox
    det = oodbox.OodDetector.load("models/shapes.safetensors", "models/shapes-scorer.safetensors")
    boxes = det.detect("assets/images/test_mixed_00001.png")
    for name, conf, ood in zip(boxes["class_name"], boxes["confidence"], boxes["is_ood"]):
        print(name, conf, "unknown?" if ood else "known")

Results are dicts of numpy arrays, one row per box. A detector's output is also a box set:
the dict that :func:`load_boxes` reads and :meth:`Scorer.fit` takes. The files are the CLI's.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _oodbox
from ._oodbox import OodboxError, get_num_threads, set_num_threads

__all__ = [
    "Detector",
    "OodDetector",
    "Scorer",
    "OodboxError",
    "load_boxes",
    "save_boxes",
    "concat_boxes",
    "set_num_threads",
    "get_num_threads",
]

PathLike = Union[str, "os.PathLike[str]"]
Image = Union[np.ndarray, PathLike]

# Per-box arrays of a box set, with the dtype the library takes.
_FLOAT_ARRAYS = ("features", "logits", "confidence", "bbox")
_INT_ARRAYS = ("class_id", "label", "level", "image_index")
_OTHER_KEYS = ("class_names", "fingerprint", "source", "detect_options", "head.weight", "head.bias")
# Per-box columns of `oodbox.ray`'s rows that a box set dict does not read.
_ROW_COLUMNS = ("box_index", "x1", "y1", "x2", "y2", "class_name", "score", "p_value", "ood_confidence", "is_ood")


def _imgsz(imgsz: Union[None, int, Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    """`n` or `(height, width)`, as `(height, width)`."""
    if imgsz is None:
        return None
    if isinstance(imgsz, (int, np.integer)):
        h = w = int(imgsz)
    else:
        h, w = (int(v) for v in imgsz)
    if h < 32 or w < 32:
        raise ValueError(f"imgsz must be at least 32, got {imgsz}")
    return (h, w)


def _settings(conf, iou, imgsz, max_det, agnostic_nms) -> Dict[str, Any]:
    return {
        "conf": conf,
        "iou": iou,
        "imgsz": _imgsz(imgsz),
        "max_det": max_det,
        "agnostic_nms": agnostic_nms,
    }


class _Native:
    """The wrapper of a native object, and what detectors and scorers both tell: the classes and
    weights they belong to."""

    def __init__(self, native: Any) -> None:
        self._native = native

    @property
    def class_names(self) -> List[str]:
        return self._native.class_names

    @property
    def fingerprint(self) -> str:
        """Identifies the weights; a scorer fitted for other weights refuses these boxes."""
        return self._native.fingerprint


class Detector(_Native):
    """A detector (YOLOv8, YOLO11, YOLO26 or DETR) that keeps every box's logits and features.

    Load it once (per process or Ray actor) with :meth:`load`, then call :meth:`detect` or
    :meth:`detect_batch`. Safe to share between threads; the GIL is released while it computes.
    """

    @classmethod
    def load(
        cls,
        model: PathLike,
        *,
        conf: Optional[float] = None,
        iou: Optional[float] = None,
        imgsz: Union[None, int, Tuple[int, int]] = None,
        max_det: Optional[int] = None,
        agnostic_nms: Optional[bool] = None,
        nms_free: bool = False,
        names: Optional[Sequence[str]] = None,
    ) -> "Detector":
        """Loads any model the CLI takes: an ultralytics best.pt / last.pt or .safetensors, or a
        Hugging Face DETR folder. Defaults follow ultralytics ``predict`` (conf 0.25, iou 0.7,
        imgsz: the checkpoint's training size, else 640); ``imgsz`` is ``n`` or
        ``(height, width)``, as in ultralytics and the CLI. ``iou`` and ``agnostic_nms`` (NMS)
        and ``imgsz`` apply to YOLO only: for DETR they raise ``ValueError``. ``names`` replaces
        the class names."""
        native = _oodbox.NativeDetector.load(
            os.fspath(model),
            _settings(conf, iou, imgsz, max_det, agnostic_nms),
            nms_free,
            None if names is None else list(names),
        )
        return cls(native)

    def detect(self, image: Image) -> Dict[str, Any]:
        """Detects on one image: an RGB uint8 array of shape (H, W, 3), or an image file path.

        Returns a dict of arrays with one row per box: ``bbox`` (N, 4) x1 y1 x2 y2 in image
        pixels, ``class_id``, ``class_name``, ``confidence``, ``logits`` (N, C), ``features``
        (N, D), ``level``, ``anchor`` and ``image_index`` (0 here); and ``class_names``,
        ``fingerprint`` and ``detect_options``. An :class:`OodDetector` adds ``score``,
        ``p_value``, ``ood_confidence``, ``is_ood`` and ``p_value_extrapolated``."""
        return self.detect_batch([image])

    def detect_batch(
        self, images: Sequence[Image], *, skip_errors: bool = False
    ) -> Dict[str, Any]:
        """Detects on several images; ``image_index`` says which image each box came from.

        An image that cannot be read raises, naming it; with ``skip_errors=True`` it is skipped
        and listed in ``failed`` as ``(index, message)``."""
        if isinstance(images, (np.ndarray, str, os.PathLike)):
            raise TypeError("detect_batch takes a list of images; use detect for one image")
        out, failed = self._native.detect_batch(list(images), skip_errors)
        names = np.asarray(self._native.class_names, dtype=object)
        out["class_name"] = names[out["class_id"]] if len(names) else names
        if skip_errors:
            out["failed"] = failed
        return out

    @property
    def family(self) -> str:
        return self._native.family

    @property
    def head(self) -> Dict[str, np.ndarray]:
        """The final classifier(s): ``head.weight`` / ``head.bias``, or per pyramid level
        ``head.<i>.weight`` / ``head.<i>.bias``, as a box set stores them."""
        return self._native.head

    @property
    def options(self) -> Dict[str, Any]:
        """The detection settings in use, those this family reads only (DETR: ``conf``,
        ``max_det``, ``roi``); ``imgsz`` is ``{"width": w, "height": h}``."""
        return self._native.options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.family}, {len(self.class_names)} classes)"


class OodDetector(Detector):
    """A detector with a scorer fitted for it: every box also gets its OOD ``score``,
    conformal ``p_value``, ``ood_confidence`` (1 - p_value) and ``is_ood`` (p_value <= alpha).
    ``p_value_extrapolated`` is True where the p-value lies beyond the calibration range and
    comes from the scorer's tail model (a scorer fitted with ``oodbox fit --tail``).

    It detects as the scorer's fit boxes were detected (the input size the scorer file
    records), since the p-values hold for boxes detected that way."""

    @classmethod
    def load(  # type: ignore[override]
        cls,
        model: PathLike,
        scorer: PathLike,
        *,
        alpha: Optional[float] = None,
        conf: Optional[float] = None,
        iou: Optional[float] = None,
        imgsz: Union[None, int, Tuple[int, int]] = None,
        max_det: Optional[int] = None,
        agnostic_nms: Optional[bool] = None,
        nms_free: bool = False,
        names: Optional[Sequence[str]] = None,
    ) -> "OodDetector":
        """Loads a model and a scorer file (from ``oodbox fit`` or :meth:`Scorer.save`); refuses
        a scorer fitted for another model. ``alpha`` defaults to the scorer file's. Detection
        settings other than those the scorer was calibrated on give a ``UserWarning`` (see
        :attr:`settings_warning`)."""
        if alpha is not None and not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        native = _oodbox.NativeDetector.load(
            os.fspath(model),
            _settings(conf, iou, imgsz, max_det, agnostic_nms),
            nms_free,
            None if names is None else list(names),
            os.fspath(scorer),
            alpha,
        )
        if native.settings_warning is not None:
            warnings.warn(native.settings_warning, UserWarning, stacklevel=2)
        return cls(native)

    @property
    def settings_warning(self) -> Optional[str]:
        """Which detection settings differ from those the scorer's fit boxes were detected
        with (its p-values may not hold then), or None."""
        return self._native.settings_warning

    @property
    def scorer(self) -> str:
        """The scorer's name, e.g. ``mahalanobis`` or ``energy+react``."""
        return self._native.scorer

    @property
    def alpha(self) -> float:
        return self._native.alpha


def _box_arrays(boxes: Mapping[str, Any]) -> Dict[str, Any]:
    """A box set dict with its arrays converted to the dtypes the library takes, refusing what
    cannot be converted without loss of meaning."""
    _refuse_misspelt_keys(boxes)
    out: Dict[str, Any] = {}
    for key, value in boxes.items():
        if key in _FLOAT_ARRAYS or _is_head_key(key):
            array = np.asarray(value)
            if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
                raise TypeError(f"`{key}` must hold numbers, got dtype {array.dtype}")
            out[key] = np.ascontiguousarray(array, dtype=np.float32)
        elif key in _INT_ARRAYS:
            array = np.asarray(value)
            if not np.issubdtype(array.dtype, np.integer):
                raise TypeError(f"`{key}` must hold integers, got dtype {array.dtype}")
            out[key] = np.ascontiguousarray(array, dtype=np.int64)
        elif key in ("class_names", "fingerprint", "source", "detect_options"):
            out[key] = value if key != "class_names" else [str(n) for n in value]
    return out


def _is_head_key(key: str) -> bool:
    return key.startswith("head") and key.endswith((".weight", ".bias"))


def _refuse_misspelt_keys(boxes: Mapping[str, Any]) -> None:
    """Other columns (a Ray row's, say) are ignored, but one that looks like a box array the
    dict lacks is refused: a `labels` read as no `label` would count every box as known."""
    known = _FLOAT_ARRAYS + _INT_ARRAYS + _OTHER_KEYS
    absent = [k for k in known if k not in boxes]
    for key in boxes:
        if not isinstance(key, str) or key in known or key in _ROW_COLUMNS or _is_head_key(key):
            continue
        meant = _oodbox.misspelling_of(key, absent)
        if meant is not None:
            raise ValueError(f"box set dict has `{key}` but no `{meant}`: did you mean `{meant}`?")


def load_boxes(path: PathLike) -> Dict[str, Any]:
    """Reads a box set file (from ``oodbox extract``) as a dict of numpy arrays, plus
    ``class_names``, ``fingerprint``, ``source`` and ``detect_options`` when recorded."""
    return _oodbox.load_boxes(os.fspath(path))


def save_boxes(boxes: Mapping[str, Any], path: PathLike) -> None:
    """Writes a box set dict (from :func:`load_boxes`, :meth:`Detector.detect_batch` or built
    by hand: ``features``, ``logits`` and ``class_id`` at least) as a file the CLI reads."""
    _oodbox.save_boxes(_box_arrays(boxes), os.fspath(path))


def concat_boxes(parts: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """Gathers box sets of one model into one, e.g. detections from many workers.

    ``image_index`` is renumbered so that images of different parts stay distinct (the
    calibration hold-out splits whole images). Every part must have the same per-box arrays: a
    column that only some parts have would be lost or meaningless for the others (without
    ``label`` a fit takes every box as a known object, and an outlier set every box as an
    unknown one), so that raises ``ValueError``. To use an unlabelled set as outliers beside
    labelled ones, give it ``label`` −1 (unknown objects) first."""
    parts = [p for p in parts if len(p["class_id"]) > 0] or list(parts[:1])
    if not parts:
        raise ValueError("no box sets to concatenate")
    for p in parts:
        _refuse_misspelt_keys(p)
    first = parts[0]
    for i, p in enumerate(parts[1:], 1):
        if p.get("fingerprint", "") != first.get("fingerprint", ""):
            raise ValueError("the box sets come from different models (fingerprints differ)")
        for key in _FLOAT_ARRAYS + _INT_ARRAYS:
            if (key in p) != (key in first):
                has, lacks = (i, 0) if key in p else (0, i)
                raise ValueError(f"box set {has} has `{key}` and box set {lacks} does not")
    out: Dict[str, Any] = {
        k: first[k] for k in ("class_names", "fingerprint", "source", "detect_options") if k in first
    }
    out.update({k: v for k, v in first.items() if k.startswith("head")})
    for key in _FLOAT_ARRAYS + _INT_ARRAYS:
        if key in first:
            out[key] = np.concatenate([np.asarray(p[key]) for p in parts])
    if "image_index" in out:
        offset, renumbered = 0, []
        for p in parts:
            index = np.asarray(p["image_index"], dtype=np.int64)
            renumbered.append(index + offset)
            offset += int(index.max()) + 1 if len(index) else 0
        out["image_index"] = np.concatenate(renumbered)
    return out


def _param(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(_param(v) for v in value)
    return str(value)


class Scorer(_Native):
    """A post-hoc OOD scorer with its conformal calibration; the CLI's scorer files.

    Fit it on in-distribution boxes with :meth:`fit`, or read one with :meth:`load`; score box
    sets with :meth:`score`; write it with :meth:`save` for ``oodbox detect --scorer``."""

    @classmethod
    def fit(
        cls,
        kind: str,
        boxes: Optional[Mapping[str, Any]] = None,
        *,
        features: Optional[np.ndarray] = None,
        logits: Optional[np.ndarray] = None,
        class_id: Optional[np.ndarray] = None,
        head: Union[None, Mapping[str, np.ndarray], Tuple[np.ndarray, np.ndarray]] = None,
        image_index: Optional[np.ndarray] = None,
        class_names: Optional[Sequence[str]] = None,
        fingerprint: Optional[str] = None,
        shaping: Optional[str] = None,
        params: Optional[Mapping[str, Any]] = None,
        calibration_fraction: float = 0.2,
        calibration: Union[None, Mapping[str, Any], Tuple[np.ndarray, ...]] = None,
        seed: int = 0,
        alpha: float = 0.05,
        min_class_calibration: int = 100,
        tail: bool = False,
        tail_quantile: Optional[float] = None,
        tail_min_points: Optional[int] = None,
        tail_bounded: Optional[bool] = None,
        outliers: Optional[Mapping[str, Any]] = None,
    ) -> "Scorer":
        """Fits ``kind`` (msp, energy, mahalanobis, knn, vim, ...) as ``oodbox fit`` does.

        Give the ID boxes as a box set dict (``boxes``: from :func:`load_boxes` or
        :meth:`Detector.detect_batch`) or as arrays: ``features`` (N, D), ``logits`` (N, C),
        ``class_id`` (N,), and the ``head`` for scorers that need it (vim): a dict as
        :attr:`Detector.head` gives or ``(weight, bias)``. Keywords override the dict's entries.
        Boxes with a ``label`` < 0 (unmatched to a known object) are left out.
        ``params`` takes Oodeel's names, e.g. ``{"nearest": 50}``; a list value is a list
        parameter, e.g. ``{"also": ["vos", "mix"]}``.

        Calibration boxes: ``calibration`` (a box set dict, or ``(features, logits,
        class_id)``), else a seeded hold-out of ``calibration_fraction`` of the images.

        ``tail=True`` extrapolates p-values beyond the largest calibration score with a
        generalized Pareto tail, as ``oodbox fit --tail``; ``tail_quantile`` (0.95),
        ``tail_min_points`` (10) and ``tail_bounded`` (False) are ``--tail-quantile``,
        ``--tail-min-points`` and ``--tail-bounded``, and need ``tail=True``.

        ``outliers`` (a box set dict) is ``oodbox fit --outliers``: for ``safe`` with
        ``params={"surrogate": "unknown"}`` (outlier exposure) the boxes of real unknown objects,
        those labelled -1 (every box without labels); with ``"fgsm"`` the FGSM boxes of the fit
        images. Where the unknowns met in service may be of kinds the outliers lack, add
        generated surrogates: ``params={"surrogate": "unknown", "also": ["vos", "mix"]}``. A
        ``combine`` passes the outliers to such a component, e.g. ``params={"of":
        "safe:surrogate=unknown:also=[vos,mix],energy", "method": "cauchy"}``, the most robust
        setting measured. ``ocsdf`` with ``params={"exposure": True}`` takes the same outliers
        (a 1-Lipschitz network with a certified radius, behind ``safe`` on the benchmark)."""
        knobs = (tail_quantile, tail_min_points, tail_bounded)
        if not tail and any(k is not None for k in knobs):
            raise ValueError("tail_quantile, tail_min_points and tail_bounded need tail=True")
        fit_set = _assemble(boxes, features, logits, class_id, head, image_index, class_names, fingerprint)
        if calibration is None:
            cal: Union[float, Dict[str, Any]] = float(calibration_fraction)
        elif isinstance(calibration, Mapping):
            cal = _box_arrays(calibration)
        else:
            if len(calibration) != 3:
                raise ValueError("calibration must be a box set dict or (features, logits, class_id)")
            cal = _assemble(None, *calibration, None, None, fit_set.get("class_names"), fit_set.get("fingerprint"))
        native = _oodbox.NativeScorer.fit(
            kind,
            shaping,
            [(str(k), _param(v)) for k, v in (params or {}).items()],
            fit_set,
            cal,
            seed,
            alpha,
            min_class_calibration,
            knobs if tail else None,
            None if outliers is None else _box_arrays(outliers),
        )
        return cls(native)

    @classmethod
    def load(cls, path: PathLike) -> "Scorer":
        """Reads a scorer file (from ``oodbox fit`` or :meth:`save`)."""
        return cls(_oodbox.NativeScorer.load(os.fspath(path)))

    def save(self, path: PathLike) -> None:
        """Writes the scorer file that ``oodbox detect --scorer`` and ``oodbox score`` read."""
        self._native.save(os.fspath(path))

    def score(
        self,
        boxes: Optional[Mapping[str, Any]] = None,
        *,
        features: Optional[np.ndarray] = None,
        logits: Optional[np.ndarray] = None,
        class_id: Optional[np.ndarray] = None,
        alpha: Optional[float] = None,
    ) -> Dict[str, np.ndarray]:
        """Scores boxes of the model it was fitted for: ``score`` (higher = more unusual),
        ``p_value``, ``confidence`` (1 - p_value, the OOD confidence), ``is_ood``
        (p_value <= alpha; alpha defaults to the fit's) and ``p_value_extrapolated`` (True
        where the p-value comes from a tail model, ``oodbox fit --tail``). Boxes of another
        model are refused."""
        box_set = _assemble(boxes, features, logits, class_id, None, None, None, None)
        box_set.setdefault("class_names", self.class_names)
        return self._native.score(box_set, alpha)

    def recalibrate(self, calibration: Mapping[str, Any]) -> "Scorer":
        """A copy calibrated anew on other ID boxes of its model (a box set dict; boxes with a
        ``label`` < 0 are left out), keeping the fit, alpha and tail setting: ``oodbox
        recalibrate``, for new conditions or more calibration boxes."""
        return type(self)(self._native.recalibrate(_box_arrays(calibration)))

    @property
    def flagged_share_spread(self) -> float:
        """One standard deviation of the share of ID boxes flagged at alpha from one calibration
        set to another of this one's sizes (the note ``oodbox fit`` prints)."""
        return self._native.flagged_share_spread

    @property
    def name(self) -> str:
        """The scorer with its shaping, e.g. ``energy+react``."""
        return self._native.name

    @property
    def kind(self) -> str:
        return self._native.kind

    @property
    def alpha(self) -> float:
        return self._native.alpha

    @property
    def detect_options(self) -> Optional[Dict[str, Any]]:
        """How the fit boxes were detected, when known."""
        return self._native.detect_options

    def __repr__(self) -> str:
        return f"Scorer({self.name}, alpha={self.alpha})"


def _assemble(boxes, features, logits, class_id, head, image_index, class_names, fingerprint) -> Dict[str, Any]:
    """A box set dict from a dict and/or arrays given as keywords."""
    out: Dict[str, Any] = dict(boxes) if boxes is not None else {}
    given = {
        "features": features,
        "logits": logits,
        "class_id": class_id,
        "image_index": image_index,
        "class_names": None if class_names is None else list(class_names),
        "fingerprint": fingerprint,
    }
    out.update({k: v for k, v in given.items() if v is not None})
    if isinstance(head, tuple):
        out["head.weight"], out["head.bias"] = head
    elif head is not None:
        out.update(head)
    missing = [k for k in ("features", "logits", "class_id") if k not in out]
    if missing:
        raise ValueError(f"missing box arrays: {', '.join(missing)} (give a box set dict or the arrays)")
    return _box_arrays(out)
