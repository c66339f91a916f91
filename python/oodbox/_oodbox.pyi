"""Type stubs of the private native module; use the `oodbox` package's API instead."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

class OodboxError(Exception): ...

def set_num_threads(threads: int) -> None: ...
def get_num_threads() -> int: ...
def load_boxes(path: str) -> Dict[str, Any]: ...
def save_boxes(boxes: Dict[str, Any], path: str) -> None: ...
def misspelling_of(name: str, absent: List[str]) -> Optional[str]: ...

class NativeDetector:
    @staticmethod
    def load(
        model: str,
        settings: Dict[str, Any],
        nms_free: bool,
        names: Optional[List[str]],
        scorer: Optional[str] = None,
        alpha: Optional[float] = None,
    ) -> NativeDetector: ...
    def detect_batch(
        self, images: List[Union[np.ndarray, str]], skip_errors: bool
    ) -> Tuple[Dict[str, Any], List[Tuple[int, str]]]: ...
    class_names: List[str]
    fingerprint: str
    family: str
    head: Dict[str, np.ndarray]
    options: Dict[str, Any]
    scorer: Optional[str]
    alpha: Optional[float]
    settings_warning: Optional[str]

class NativeScorer:
    @staticmethod
    def fit(
        kind: str,
        shaping: Optional[str],
        params: Sequence[Tuple[str, str]],
        boxes: Dict[str, Any],
        calibration: Union[float, Dict[str, Any]],
        seed: int,
        alpha: float,
        min_class_calibration: int,
        tail: Optional[Tuple[Optional[float], Optional[int], Optional[bool]]],
        outliers: Optional[Dict[str, Any]],
    ) -> NativeScorer: ...
    @staticmethod
    def load(path: str) -> NativeScorer: ...
    def save(self, path: str) -> None: ...
    def score(self, boxes: Dict[str, Any], alpha: Optional[float] = None) -> Dict[str, np.ndarray]: ...
    def recalibrate(self, calibration: Dict[str, Any]) -> NativeScorer: ...
    name: str
    kind: str
    alpha: float
    flagged_share_spread: float
    class_names: List[str]
    fingerprint: str
    detect_options: Optional[Dict[str, Any]]
