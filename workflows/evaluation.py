"""Evaluate a saved head against labels: map the area with the mapping workflow, then score it chunk by chunk.

:func:`evaluate` runs :func:`~geodino.workflows.mapping.map_raster` (tiled, bounded memory, the same code path as
``geodino map``) into ``OUT/prediction.zarr``, then walks the output's chunks: for each one it reads the labels
onto that window of the OUTPUT grid (:func:`geodino.heads.data.pairs.labels_on_grid`: reprojected through CRS and
geotransform, never by array index) and feeds prediction and truth to the accumulators of
:mod:`geodino.heads.metrics`. So a map of any size is scored with memory bounded by one chunk (plus the
decimated copies the figures are drawn from, at most ``figure_pixels`` pixels).

It writes ``OUT/report.json`` (canopy height: ``mae``, ``rmse``, ``r2``, ``bias``, ``block_r2``, ``n_pixels``;
land cover: ``miou``, ``overall_accuracy``, ``per_class_iou``, ``f1``, ``confusion_matrix``, ``class_names``,
``n_pixels``) and the PNG figures of :mod:`geodino.heads.report`.

Which pixels count: those with a label (heights: finite and not the label nodata, 0 m included; classes: a
declared class) AND a prediction. Labelled pixels the map left empty (imagery nodata) are excluded from the
metrics and counted in ``report["n_labelled_unpredicted"]``, so a gap is visible instead of silently improving
a score.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geodino.errors import InputError

__all__ = ["EvaluationResult", "evaluate", "label_class_map", "plots_available", "training_summary"]

#: Most pixels of the decimated prediction / truth copies the figures are drawn from.
FIGURE_PIXELS = 2_000_000


@dataclass(frozen=True)
class EvaluationResult:
    """What :func:`evaluate` wrote.

    Attributes:
        report: The report dict (also in ``report.json``).
        report_path: ``OUT/report.json``.
        prediction: ``OUT/prediction.zarr``.
        figures: The PNGs written.
    """

    report: dict[str, Any]
    report_path: Path
    prediction: Path
    figures: tuple[Path, ...]


def _task_of(info: Any) -> str:
    if info.kind == "classification":
        return "land-cover"
    if info.kind == "regression" and info.out_channels >= 1:
        return "canopy-height"
    raise InputError(f"model {info.name!r} is an {info.kind} model: evaluate needs a land-cover or canopy-height head")


def plots_available() -> bool:
    """Whether the report figures can be drawn: they need matplotlib (the optional ``plots`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def training_summary(model_path: Path) -> dict[str, Any]:
    """The training summary next to a model (``MODEL.summary.json`` from train-head), or {} when there is none."""
    from geodino.heads.api import summary_path

    path = summary_path(model_path)
    if not path.exists():
        return {}
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable training summary ({err})") from err


def label_class_map(model_path: Path, info: Any, labels: Any, label_column: str | None, **label_options: Any) -> Any:
    """The label value -> class index map the model was trained with.

    Read from the training summary next to the model (``MODEL.summary.json``, which records each class's label
    value); without one, every label value must be a class index of the model (values 0..K-1, named by the
    model's class names).
    """
    from geodino.heads.data.pairs import ClassMap, resolve_classes

    classes = training_summary(model_path).get("classes")
    if classes:
        if tuple(classes["names"]) != tuple(info.class_names):
            raise InputError(
                f"{model_path}: its training summary lists classes {classes['names']}, the model "
                f"{list(info.class_names)}; the summary belongs to another model"
            )
        return ClassMap(values=tuple(classes["values"]), names=tuple(classes["names"]))
    declared = [f"{i}={n}" for i, n in enumerate(info.class_names)]
    return resolve_classes([labels], label_column=label_column, classes=declared, **label_options)


def _chunk_windows(shape: tuple[int, int], chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> Iterator[Any]:
    """Windows of the output's chunks, row by row."""
    from geodino.raster.windows import Window

    row = 0
    for h in chunks[0]:
        col = 0
        for w in chunks[1]:
            yield Window(row, col, h, w)
            col += w
        row += h
    assert row == shape[0]


class _Decimated:
    """Every ``step``-th pixel of a map, gathered chunk by chunk (the figures' input)."""

    def __init__(self, shape: tuple[int, int], step: int, dtype: Any, fill: Any):
        self.step = step
        self.array = np.full(((shape[0] + step - 1) // step, (shape[1] + step - 1) // step), fill, dtype)

    def add(self, window: Any, values: np.ndarray) -> None:
        s = self.step
        r0, c0 = window.row, window.col
        dr, dc = -r0 % s, -c0 % s  # first row / column of the chunk on the decimated lattice
        part = values[dr::s, dc::s]
        self.array[(r0 + dr) // s : (r0 + dr) // s + part.shape[0], (c0 + dc) // s : (c0 + dc) // s + part.shape[1]] = (
            part
        )


def evaluate(
    model_path: str | Path,
    images: str | Path | Sequence[str | Path],
    labels: Any,
    out_dir: str | Path,
    *,
    label_column: str | None = None,
    label_nodata: float | None = None,
    ignore_values: Sequence[float] = (),
    all_touched: bool = False,
    stack: bool = False,
    bands: Sequence[int | str] | None = None,
    tile: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    scheduler: str = "threads",
    overwrite: bool = True,
    progress: bool = False,
    figures: bool = True,
    figure_pixels: int = FIGURE_PIXELS,
) -> EvaluationResult:
    """Map an area with a saved head and score the map against labels.

    Args:
        model_path: A saved head (``geodino train-head``, ``geodino.save_model``).
        images: The evaluation imagery: one raster, the tiles of one mosaic, or with ``stack`` the band files.
        labels: Label raster(s) on any grid and CRS, or a vector file.
        out_dir: Report folder: ``prediction.zarr``, ``report.json``, PNGs.
        label_column: Vector labels: the class (or height) column (default: the training summary's).
        label_nodata: Label value meaning "no label" (default: the one the model was trained with, from its
            training summary, else the raster's nodata).
        ignore_values: Further label values to ignore (default: those of the training summary).
        all_touched: Vector labels: burn every touched pixel.
        stack, bands, tile, batch_size, device, scheduler: Mapping settings (as ``geodino map``).
        overwrite: Replace an existing ``prediction.zarr``.
        progress: Show the mapping progress bar.
        figures: Write the PNG figures (skipped with a warning when matplotlib is missing).
        figure_pixels: Most pixels of the decimated maps the figures are drawn from.

    Returns:
        The report and the paths written.

    Raises:
        InputError: Labels that do not overlap the mapped area, a model that is not a head, bad mapping inputs.
    """
    from geodino.bundle import read_model_info
    from geodino.heads.data.pairs import labels_on_grid
    from geodino.workflows.mapping import map_raster
    from geodino.workflows.options import MapOptions

    model_path = Path(model_path)
    info = read_model_info(model_path)
    task = _task_of(info)
    # Label settings the model was trained with apply unless given (a mask's nodata value, its class column).
    trained = training_summary(model_path)
    label_column = label_column if label_column is not None else trained.get("label_column")
    label_nodata = label_nodata if label_nodata is not None else trained.get("label_nodata")
    ignore_values = tuple(ignore_values) or tuple(trained.get("ignore_values") or ())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "prediction.zarr"
    options = MapOptions(
        stack=stack,
        bands=None if bands is None else tuple(bands),
        tile=tile,
        batch_size=batch_size,
        device=device,
        scheduler=scheduler,
        overwrite=overwrite,
        progress=progress,
    )
    ds = map_raster(images if isinstance(images, str | Path) else list(images), model_path, store, options)
    var = "classes" if task == "land-cover" else "prediction"
    data = ds[var] if task == "land-cover" else ds[var].isel(band=0)
    crs, transform = ds.rio.crs, ds.rio.transform()
    shape = (int(data.shape[-2]), int(data.shape[-1]))
    class_map = None
    if task == "land-cover":
        class_map = label_class_map(
            model_path, info, labels, label_column, nodata=label_nodata, ignore_values=ignore_values
        )
    scores = _Scores(task, info, shape)
    step = max(1, int(np.ceil(np.sqrt(shape[0] * shape[1] / figure_pixels))))
    fill_pred, fill_truth = (255, -1) if task == "land-cover" else (np.nan, np.nan)
    pred_small = _Decimated(shape, step, np.uint8 if task == "land-cover" else np.float32, fill_pred)
    truth_small = _Decimated(shape, step, np.int64 if task == "land-cover" else np.float32, fill_truth)
    unpredicted = 0
    chunks = data.chunks or ((shape[0],), (shape[1],))
    for window in _chunk_windows(shape, chunks):
        rows = slice(window.row, window.row + window.height)
        cols = slice(window.col, window.col + window.width)
        pred = np.asarray(data[rows, cols].values)
        truth = labels_on_grid(
            labels,
            task=task,  # type: ignore[arg-type]
            crs=crs,
            transform=transform,
            shape=shape,
            window=window,
            class_map=class_map,
            label_column=label_column,
            nodata=label_nodata,
            ignore_values=ignore_values,
            all_touched=all_touched,
        )
        labelled, predicted = _masks(task, pred, truth)
        unpredicted += int((labelled & ~predicted).sum())
        valid = labelled & predicted
        scores.update(window, pred, truth, valid)
        pred_small.add(window, pred)
        truth_small.add(window, truth)
    report = scores.report()
    if report["n_pixels"] == 0:
        raise InputError(
            f"{_name(labels)}: no labelled pixel inside the mapped area of {_name(images)} (labels that do not "
            "overlap the imagery, or only nodata there)"
        )
    report["n_labelled_unpredicted"] = unpredicted
    report["model"] = str(model_path)
    report["prediction"] = str(store)
    if figures and not plots_available():
        warnings.warn("no figures: they need matplotlib (pip install 'geodino[plots]')", stacklevel=2)
        figures = False
    written = _figures(task, info, pred_small, truth_small, out) if figures else []
    from geodino.heads.report import write_report

    path = write_report(report, out)
    return EvaluationResult(report=report, report_path=Path(path), prediction=store, figures=tuple(written))


def _name(value: Any) -> str:
    if isinstance(value, str | Path):
        return str(value)
    return ", ".join(str(v) for v in value)


def _masks(task: str, pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labelled, predicted) bool masks of a chunk."""
    from geodino.heads.data.chips import IGNORE_INDEX

    if task == "land-cover":
        return truth != IGNORE_INDEX, pred != 255
    return np.isfinite(truth), np.isfinite(pred)


class _Scores:
    """The metric accumulators of one evaluation (heads.metrics), fed chunk by chunk."""

    def __init__(self, task: str, info: Any, shape: tuple[int, int]):
        from geodino.heads import metrics

        self.task = task
        self.class_names = list(info.class_names or ())
        if task == "land-cover":
            self.confusion = metrics.ConfusionAccumulator(len(self.class_names))
        else:
            self.regression = metrics.RegressionAccumulator()
            self.blocks = metrics.BlockR2Accumulator(shape)

    def update(self, window: Any, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> None:
        if self.task == "land-cover":
            self.confusion.update(pred.astype(np.int64), truth, valid)
            return
        self.regression.update(pred, truth, valid)
        self.blocks.update(pred, truth, valid, row=window.row, col=window.col)

    def report(self) -> dict[str, Any]:
        """The issue's report keys (heads.report)."""
        from geodino.heads import report

        if self.task == "land-cover":
            return report.land_cover_report_from(self.confusion, self.class_names)
        return report.canopy_height_report_from(self.regression, self.blocks)


def _figures(task: str, info: Any, pred: _Decimated, truth: _Decimated, out: Path) -> list[Path]:
    from geodino.heads import report

    if task == "land-cover":
        from geodino.heads.data.chips import IGNORE_INDEX

        classes = pred.array.astype(np.int64)
        classes[pred.array == 255] = IGNORE_INDEX
        valid = (truth.array != IGNORE_INDEX) & (classes != IGNORE_INDEX)
        colours = info.class_colours
        return list(report.land_cover_figures(classes, truth.array, list(info.class_names), colours, out, valid=valid))
    valid = np.isfinite(pred.array) & np.isfinite(truth.array)
    return list(report.canopy_height_figures(pred.array, truth.array, out, valid=valid))
