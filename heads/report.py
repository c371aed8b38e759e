"""Evaluation reports: the metric dicts of issue 9 item 4, ``report.json`` and its figures.

The report keys are fixed (``geodino evaluate`` writes them and tests read them):

- canopy height: ``mae``, ``rmse``, ``r2``, ``bias``, ``block_r2``, ``n_pixels``;
- land cover: ``miou``, ``overall_accuracy``, ``per_class_iou``, ``f1``, ``confusion_matrix``, ``class_names``,
  ``n_pixels``.

A whole mapped area is evaluated chunk by chunk with the accumulators of :mod:`geodino.heads.metrics` and turned
into the same dict by :func:`canopy_height_report_from` / :func:`land_cover_report_from`. Undefined values (R² of
a constant truth, block-R² with fewer than 2 blocks) are NaN in the dicts and ``null`` in the JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geodino.heads.metrics import (
    BlockR2Accumulator,
    ConfusionAccumulator,
    RegressionAccumulator,
    block_r2,
    regression_metrics,
)

__all__ = [
    "CANOPY_HEIGHT_KEYS",
    "LAND_COVER_KEYS",
    "canopy_height_report",
    "canopy_height_report_from",
    "jsonable",
    "land_cover_report",
    "land_cover_report_from",
    "write_report",
]

CANOPY_HEIGHT_KEYS = ("mae", "rmse", "r2", "bias", "block_r2", "n_pixels")
LAND_COVER_KEYS = ("miou", "overall_accuracy", "per_class_iou", "f1", "confusion_matrix", "class_names", "n_pixels")
REPORT_NAME = "report.json"


# ----------------------------------------------------------------------------------------------------------------
# Report dicts.


def canopy_height_report(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, Any]:
    """The canopy-height report of an (h, w) predicted height map against the reference heights.

    Args:
        pred: (h, w) predicted heights in metres.
        truth: (h, w) reference heights; 0 m is a valid height.
        valid: (h, w) bool, or None for "truth and prediction finite" (see :mod:`geodino.heads.metrics`).

    Returns:
        Exactly ``mae``, ``rmse``, ``r2``, ``bias``, ``block_r2`` (floats, NaN where undefined) and ``n_pixels``.
    """
    report = regression_metrics(pred, truth, valid)
    report["block_r2"] = block_r2(pred, truth, valid)
    return {k: report[k] for k in CANOPY_HEIGHT_KEYS}


def canopy_height_report_from(regression: RegressionAccumulator, blocks: BlockR2Accumulator) -> dict[str, Any]:
    """The canopy-height report of accumulators fed chunk by chunk (same keys as :func:`canopy_height_report`)."""
    report = regression.result()
    report["block_r2"] = blocks.result()
    return {k: report[k] for k in CANOPY_HEIGHT_KEYS}


def land_cover_report(
    pred: np.ndarray, truth: np.ndarray, class_names: Sequence[str], valid: np.ndarray | None = None
) -> dict[str, Any]:
    """The land-cover report of predicted class indices against the reference classes.

    Args:
        pred: Predicted class indices, e.g. (h, w) uint8.
        truth: Reference class indices, same shape; nodata must be masked with ``valid``.
        class_names: K class names; indices are 0..K-1.
        valid: Bool mask, or None (every pixel counts).

    Returns:
        Exactly ``miou``, ``overall_accuracy``, ``per_class_iou``, ``f1``, ``confusion_matrix``, ``class_names``,
        ``n_pixels`` (see :func:`geodino.heads.metrics.classification_metrics`).
    """
    acc = ConfusionAccumulator(len(class_names)).update(pred, truth, valid)
    return land_cover_report_from(acc, class_names)


def land_cover_report_from(confusion: ConfusionAccumulator, class_names: Sequence[str]) -> dict[str, Any]:
    """The land-cover report of an accumulator fed chunk by chunk (same keys as :func:`land_cover_report`)."""
    metrics = confusion.result(class_names)
    return {k: metrics[k] for k in LAND_COVER_KEYS}


# ----------------------------------------------------------------------------------------------------------------
# JSON.


def jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars and arrays -> python numbers and lists, NaN/inf -> None, paths -> str.

    Raises:
        TypeError: A value with no JSON form.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"report value {value!r} of type {type(value).__name__} has no JSON form")


_FIGURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def write_report(report: dict[str, Any], out_dir: str | Path, *, figures: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``out_dir/report.json`` (and optional images beside it); returns the JSON's path.

    Args:
        report: A report dict; NaN/inf are written as ``null`` and numpy types as plain numbers.
        out_dir: Folder, created if missing.
        figures: Optional ``{name: image}``, each image (h, w, 3) or (h, w, 4) uint8 RGB(A) or (h, w) uint8 grey,
            written as ``out_dir/<name>.png`` (name: letters, digits, ``_.-``; a ``.png`` suffix is optional).

    Raises:
        TypeError: A report value with no JSON form.
        ValueError: A bad figure name or image array.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    text = json.dumps(jsonable(report), indent=2, allow_nan=False)
    images = {}
    for name, image in (figures or {}).items():
        stem = name[:-4] if name.lower().endswith(".png") else name
        if not _FIGURE_NAME.match(stem):
            raise ValueError(f"figure name {name!r}: use letters, digits, '_', '.', '-' (it becomes a file name)")
        array = np.asarray(image)
        if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
            raise ValueError(
                f"figure {name!r} must be a (h, w), (h, w, 3) or (h, w, 4) uint8 image, got {array.dtype} {array.shape}"
            )
        images[stem] = array
    out_dir.mkdir(parents=True, exist_ok=True)
    for stem, array in images.items():
        Image.fromarray(array).save(out_dir / f"{stem}.png")
    path = out_dir / REPORT_NAME
    path.write_text(text + "\n")
    return path
