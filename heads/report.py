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
    "canopy_height_figures",
    "canopy_height_report",
    "canopy_height_report_from",
    "jsonable",
    "land_cover_figures",
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


# ----------------------------------------------------------------------------------------------------------------
# Figures (matplotlib: the optional extra "plots"; drawn on Figure objects, so no pyplot state and no GUI backend).

#: Longest side, in pixels, of a map panel (larger maps are shown decimated; the metrics use every pixel).
FIGURE_MAX_SIDE = 1024
#: Most points in the hexbin of predicted vs true heights (a seeded subsample beyond; the metrics use all).
HEXBIN_MAX_POINTS = 1_000_000
_DPI = 100


def canopy_height_figures(
    pred: np.ndarray,
    truth: np.ndarray,
    out_dir: str | Path,
    *,
    valid: np.ndarray | None = None,
    report: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the canopy-height figures; returns their paths.

    - ``canopy_height_maps.png``: prediction | truth | error (prediction - truth) panels; prediction and truth
      share one height colour scale, the error has a diverging scale centred on 0. The truth and error show the
      evaluated pixels (the metrics' validity rule), the prediction every finite pixel.
    - ``canopy_height_scatter.png``: hexbin of predicted vs true heights over the evaluated pixels, with the 1:1
      line, and MAE / R² (:func:`geodino.heads.metrics.regression_metrics`) in the title.

    Args:
        pred: (h, w) predicted heights in metres (may be a decimated view of a larger evaluated area).
        truth: (h, w) reference heights.
        out_dir: Folder, created if missing.
        valid: (h, w) bool, or None (truth and prediction finite).
        report: The area's canopy-height report (e.g. from accumulators over the full-resolution chunks): its
            MAE, R², bias and pixel count go into the titles instead of those recomputed from these arrays.
    """
    from geodino.heads.metrics import valid_mask
    from geodino.heads.plots import plot_error, plot_heights

    mask = valid_mask(pred, truth, valid)
    if mask.ndim != 2:
        raise ValueError(f"canopy-height figures need (h, w) maps, got shape {mask.shape}")
    metrics = regression_metrics(pred, truth, mask) if report is None else _checked(report, CANOPY_HEIGHT_KEYS)
    p = np.asarray(pred, dtype=np.float64)
    t = np.where(mask, np.asarray(truth, dtype=np.float64), np.nan)
    e = np.where(mask, p - t, np.nan)
    p = np.where(np.isfinite(p), p, np.nan)
    step = _display_step(mask.shape)
    shown = [a[::step, ::step] for a in (p, t, e)]
    both = np.concatenate([shown[0][np.isfinite(shown[0])], t[mask]])
    vmin, vmax = min(0.0, float(both.min())), float(both.max())

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = _figure((16, 4.8))
    axes = fig.subplots(1, 3)
    plot_heights(shown[0], axes[0], vmax=vmax, vmin=vmin, title="prediction", colorbar=False)
    plot_heights(shown[1], axes[1], vmax=vmax, vmin=vmin, title="truth")
    plot_error(shown[2], axes[2], title=f"error (bias {metrics['bias']:+.2f} m)")
    if step > 1:
        fig.suptitle(f"every {step}th pixel shown", fontsize="small")
    maps = _save(fig, out_dir / "canopy_height_maps.png")

    fig = _figure((6.4, 5.6))
    ax = fig.subplots()
    x, y = t[mask], p[mask]
    if x.size > HEXBIN_MAX_POINTS:
        keep = np.random.default_rng(0).choice(x.size, HEXBIN_MAX_POINTS, replace=False)
        x, y = x[keep], y[keep]
    lo, hi = min(vmin, float(y.min())), max(vmax, float(y.max()))
    hi = hi if hi > lo else lo + 1.0
    cells = ax.hexbin(x, y, gridsize=50, extent=(lo, hi, lo, hi), mincnt=1, bins="log", cmap="viridis")
    fig.colorbar(cells, ax=ax, label="pixels")
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, linestyle="--", label="1:1")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="true height (m)", ylabel="predicted height (m)", aspect="equal")
    ax.legend(loc="upper left")
    r2 = metrics["r2"]
    ax.set_title(
        f"MAE {metrics['mae']:.2f} m, R² {'undefined' if math.isnan(r2) else f'{r2:.3f}'} ({metrics['n_pixels']} px)"
    )
    return [maps, _save(fig, out_dir / "canopy_height_scatter.png")]


def land_cover_figures(
    pred: np.ndarray,
    truth: np.ndarray,
    class_names: Sequence[str],
    class_colours: Sequence[Sequence[int]] | None,
    out_dir: str | Path,
    *,
    valid: np.ndarray | None = None,
    report: dict[str, Any] | None = None,
) -> list[Path]:
    """Write the land-cover figures; returns their paths.

    - ``land_cover_maps.png``: class map | truth in the class colours, with a legend of the class names. The
      truth shows the evaluated pixels; the class map every pixel holding a class index (others are nodata).
    - ``land_cover_confusion.png``: the confusion matrix normalised per truth row, pixel counts in the cells,
      mIoU and overall accuracy in the title.

    Args:
        pred: (h, w) predicted class indices (e.g. a mapping output's ``classes``, 255 = nodata).
        truth: (h, w) reference class indices.
        class_names: K names.
        class_colours: K (r, g, b) colours in 0..255, or None for :func:`geodino.heads.plots.default_class_colours`.
        out_dir: Folder, created if missing.
        valid: (h, w) bool, or None (every finite pixel; nodata must then be masked out beforehand).
        report: The area's land-cover report (e.g. from an accumulator over the full-resolution chunks): its
            confusion matrix, mIoU and accuracy are drawn instead of those of these (possibly decimated) arrays.

    Raises:
        ValueError: As :func:`geodino.heads.metrics.confusion_matrix` (a valid value outside the classes), or a
            report for other classes.
    """
    from geodino.heads.metrics import valid_mask
    from geodino.heads.plots import plot_classes, plot_confusion

    k = len(class_names)
    mask = valid_mask(pred, truth, valid)
    if mask.ndim != 2:
        raise ValueError(f"land-cover figures need (h, w) maps, got shape {mask.shape}")
    metrics = ConfusionAccumulator(k).update(pred, truth, mask).result(class_names)
    if report is not None:
        metrics = _checked(report, LAND_COVER_KEYS)
        if list(metrics["class_names"]) != [str(n) for n in class_names]:
            raise ValueError(f"report is for classes {metrics['class_names']}, the figures for {list(class_names)}")
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    is_class = np.isfinite(p) & (p >= 0) & (p < k) & (p == np.round(p))
    step = _display_step(mask.shape)
    p_shown = np.where(is_class, p, -1)[::step, ::step].astype(np.int64)
    t_shown = np.where(mask, t, -1)[::step, ::step].astype(np.int64)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig = _figure((13, 5.6))
    axes = fig.subplots(1, 2)
    plot_classes(p_shown, class_names, class_colours, axes[0], nodata=-1, legend=False, title="class map")
    plot_classes(t_shown, class_names, class_colours, axes[1], nodata=-1, title="truth")
    if step > 1:
        fig.suptitle(f"every {step}th pixel shown", fontsize="small")
    maps = _save(fig, out_dir / "land_cover_maps.png")

    side = 3.0 + 0.45 * k
    fig = _figure((side + 1.5, side))
    ax = fig.subplots()
    plot_confusion(np.asarray(metrics["confusion_matrix"]), class_names, ax)
    ax.set_title(
        f"mIoU {metrics['miou']:.3f}, overall accuracy {metrics['overall_accuracy']:.3f} ({metrics['n_pixels']} px)"
    )
    return [maps, _save(fig, out_dir / "land_cover_confusion.png")]


def _checked(report: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    missing = [k for k in keys if k not in report]
    if missing:
        raise ValueError(f"report lacks {missing}; expected the keys {list(keys)}")
    return {k: (math.nan if report[k] is None and k in ("r2", "block_r2") else report[k]) for k in keys}


def _figure(size: tuple[float, float]) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        from geodino.heads.plots import INSTALL_HINT

        raise ImportError(f"report figures need matplotlib, the optional extra 'plots': {INSTALL_HINT}") from err
    return Figure(figsize=size, dpi=_DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, metadata={"Software": None})  # no version string: same inputs, same bytes
    return path


def _display_step(shape: tuple[int, ...]) -> int:
    return max(1, math.ceil(max(shape) / FIGURE_MAX_SIDE))
