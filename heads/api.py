"""Imagery + labels -> a trained, saved head: the one function behind ``geodino train-head``.

:func:`train_head` glues the stages together, each defined once elsewhere:

1. the backbone, from a checkpoint path or a hub name (:func:`geodino.hub.load_named`: random weights only when
   asked for, except the built-in ``test`` model, which has none);
2. the input normalisation, from the backbone's metadata (``meta.model_info()`` mean / std, scale from the
   imagery's dtype: the rule the mapping workflows apply, ``Normalization.for_dtype``), so the saved model maps
   new rasters exactly as it was trained;
3. chips on the global patch grid where labels exist (:func:`geodino.heads.data.pairs.make_chips`);
4. a spatial split (:mod:`geodino.heads.data.splits`): blocks with a buffer, by source, or by a polygon layer;
5. the head (:func:`geodino.heads.tasks.build_head_model`) and its training (:func:`geodino.heads.train.fit_head`,
   frozen backbone with a feature cache by default), early-stopped on the validation MAE (canopy height) or mIoU
   (land cover) of :mod:`geodino.heads.metrics`;
6. the saved model (:func:`geodino.save_model`, ``.gdm``) whose ModelInfo (bands, normalisation, tile, classes or
   units) lets ``geodino map MODEL.gdm`` run with no other flag, plus a training summary next to it:
   ``MODEL.summary.json`` (inputs, classes and their label values, split sizes, configuration, history, best
   epoch) and ``MODEL.history.csv`` (one row per epoch).
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodino.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from geodino.heads.data.chips import ChipSet, Task
    from geodino.models.vit import DinoVisionTransformer
    from geodino.raster.normalize import Normalization

__all__ = ["HEADS", "TrainHeadResult", "summary_path", "train_head"]

HEADS: tuple[str, ...] = ("linear", "dpt", "upernet", "fpn", "unet")
SPLITS: tuple[str, ...] = ("blocks", "sources", "none")

#: Defaults by head where they differ from HeadTrainConfig's: a linear probe takes a larger step than a decoder.
_HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"lr": 1e-3},
    "dpt": {"lr": 3e-4},
    "upernet": {"lr": 3e-4},
    "fpn": {"lr": 3e-4},
    "unet": {"lr": 3e-4},
}
#: Default epochs per task (HeadTrainConfig early-stops on the validation metric before this).
_TASK_EPOCHS: dict[str, int] = {"canopy-height": 30, "land-cover": 30}


@dataclass(frozen=True)
class TrainHeadResult:
    """What :func:`train_head` made.

    Attributes:
        model_path: The saved model (``.gdm``): ``geodino map MODEL`` runs it with no other flag.
        summary_path: ``MODEL.summary.json``: inputs, classes, split sizes, configuration, history.
        history_path: ``MODEL.history.csv``: one row per epoch.
        summary: The summary's contents.
    """

    model_path: Path
    summary_path: Path
    history_path: Path
    summary: dict[str, Any] = field(repr=False)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Per-epoch records (epoch, train_loss, val_loss, val_metric, seconds, ...)."""
        return list(self.summary["history"])

    @property
    def best_metric(self) -> float | None:
        """The validation metric of the kept weights (MAE in metres, or mIoU), None without validation."""
        return self.summary["best_metric"]


def summary_path(model_path: str | Path) -> Path:
    """``MODEL.summary.json`` next to ``MODEL.gdm`` (``geodino evaluate`` reads the label values from it)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".summary.json")


def _history_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".history.csv")


# ----------------------------------------------------------------------------------------------------------------
# Inputs.


def _sources(images: Any) -> list[Any]:
    """One entry per imagery source: a path, or a list of paths (mosaic tiles, or the files of a band stack)."""
    if isinstance(images, str | Path):
        return [images]
    items = list(images)
    if not items:
        raise InputError("train_head: no images given (--images)")
    return items


def _labels_for(labels: Any, n_sources: int) -> list[Any]:
    if isinstance(labels, str | Path):
        return [labels]
    items = list(labels)
    if not items:
        raise InputError("train_head: no labels given (--labels)")
    if len(items) not in (1, n_sources):
        raise InputError(
            f"train_head: {len(items)} label inputs for {n_sources} images; give one label input per image "
            "(in the same order) or one for all"
        )
    return items


def _name(source: Any) -> str:
    return str(source if isinstance(source, str | Path) else Path(next(iter(source))))


def _imagery_facts(sources: list[Any], *, stack: bool, bands: Sequence[int | str] | None) -> tuple[int, Any, float]:
    """(band count, dtype, ground pixel size) of the imagery; every source must agree on count and dtype scale."""
    from geodino.raster.normalize import default_scale
    from geodino.raster.source import RasterSource

    facts = []
    for src_paths in sources:
        with RasterSource(src_paths, stack=stack, bands=bands) as src:
            facts.append((src.count, src.dtype, abs(src.res[0]), _name(src_paths)))
    count, dtype, res, first = facts[0]
    for n, dt, _, name in facts[1:]:
        if n != count:
            raise InputError(f"{name}: {n} bands, but {first} has {count}; every image must have the same bands")
        if default_scale(dt) != default_scale(dtype):
            raise InputError(
                f"{name}: dtype {dt} scales to the model's range differently from {first} ({dtype}); convert the "
                "images to one dtype"
            )
    return count, dtype, res


def load_backbone_for(
    backbone: Any, in_bands: int, *, random_weights: bool = False, pretraining: str | None = None
) -> DinoVisionTransformer:
    """The backbone for imagery of ``in_bands`` bands.

    Args:
        backbone: A loaded geodino backbone, a checkpoint path, or a hub name ("test"; others only with
            ``random_weights``).
        in_bands: Number of bands of the imagery.
        random_weights: Allow a hub architecture with random weights.
        pretraining: "sat493m" / "lvd1689m" for a checkpoint that cannot tell.

    Returns:
        The backbone. A hub model with random weights is built for ``in_bands`` bands directly; a pretrained
        backbone must already take them.

    Raises:
        InputError: A pretrained backbone whose band count differs from the imagery's.
    """
    from geodino import hub

    if not isinstance(backbone, str | Path):
        model = backbone
    elif not Path(backbone).exists() and hub.resolve_name(str(backbone)) is not None and in_bands != 3:
        model = hub.load_named(backbone, random_weights=random_weights, in_chans=in_bands)
    else:
        model = hub.load_named(backbone, random_weights=random_weights, pretraining=pretraining)
    if model.in_chans != in_bands:
        raise InputError(
            f"backbone {model.meta.name} takes {model.in_chans} bands ({', '.join(model.meta.bands)}), the images "
            f"have {in_bands}: select bands with --bands, or adapt the backbone to the bands first "
            "(geodino.models.bands.adapt_bands) and save it"
        )
    return model


def normalization_of(backbone: DinoVisionTransformer, dtype: Any) -> Normalization:
    """The input normalisation the saved model will carry: the backbone's mean / std, the dtype's scale."""
    from geodino.raster.normalize import Normalization

    info = backbone.meta.model_info()
    return Normalization.for_dtype(dtype, info.mean, info.std)


# ----------------------------------------------------------------------------------------------------------------
# Splits and the validation metric.


def _split(
    chips: ChipSet,
    split: str | Path,
    *,
    block_size: float | None,
    buffer: float | None,
    val_sources: Sequence[int],
    seed: int,
) -> dict[str, ChipSet]:
    from geodino.heads.data import splits

    if split == "none":
        return {"train": chips}
    if split == "sources":
        if not val_sources:
            raise InputError("split 'sources' needs val_sources (--val-sources): the images held out for validation")
        return splits.split_by_source(chips, val=list(val_sources))
    if split == "blocks":
        pixel = abs(chips.grids[0].transform[0])
        size = block_size if block_size is not None else 2 * chips.tile * pixel
        return splits.spatial_split(chips, block_size=size, buffer=0.0 if buffer is None else buffer, seed=seed)
    path = Path(split)
    if not path.exists():
        raise InputError(f"split {str(split)!r}: expected 'blocks', 'sources', 'none' or a polygon file; no such file")
    return splits.split_by_polygons(chips, path)


def _val_metric(task: Task, n_classes: int | None) -> tuple[Callable[[np.ndarray, np.ndarray], float], bool, str]:
    """(metric(pred, target) -> float, higher_is_better, name): validation MAE (m) or mIoU, from heads.metrics."""
    from geodino.heads import metrics

    if task == "canopy-height":

        def mae(pred: np.ndarray, target: np.ndarray) -> float:
            return float(metrics.regression_metrics(pred, target)["mae"])

        return mae, False, "mae"

    def miou(pred: np.ndarray, target: np.ndarray) -> float:
        import numpy as np

        from geodino.heads.data.chips import IGNORE_INDEX

        valid = target != IGNORE_INDEX
        cm = metrics.confusion_matrix(pred, target, n_classes, valid)
        value = metrics.classification_metrics(cm, [str(i) for i in range(n_classes)])["miou"]
        return float("nan") if value is None else float(np.float64(value))

    return miou, True, "miou"


# ----------------------------------------------------------------------------------------------------------------
# The summary.


def _plain(value: Any) -> Any:
    """JSON-safe: tuples/lists, dataclasses, paths, numpy scalars; NaN/inf -> None."""
    if is_dataclass(value) and not isinstance(value, type):
        return _plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _write_history(path: Path, history: Sequence[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in history:
        columns += [k for k in row if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: _plain(v) for k, v in row.items()})


# ----------------------------------------------------------------------------------------------------------------
# The glue.


def train_head(
    images: Any,
    labels: Any,
    *,
    task: Task,
    backbone: Any,
    out: str | Path,
    head: str = "linear",
    label_column: str | None = None,
    classes: Sequence[str] | None = None,
    class_colours: Sequence[tuple[int, int, int]] | None = None,
    label_nodata: float | None = None,
    ignore_values: Sequence[float] = (),
    all_touched: bool = False,
    stack: bool = False,
    bands: Sequence[int | str] | None = None,
    tile: int | None = None,
    split: str | Path = "blocks",
    block_size: float | None = None,
    buffer: float | None = None,
    val_sources: Sequence[int] = (),
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    loss: str | None = None,
    cache: str | None = "memory",
    cache_dir: str | Path | None = None,
    finetune: bool = False,
    augment: str | None = "d4",
    patience: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    random_weights: bool = False,
    pretraining: str | None = None,
    progress: bool = False,
    name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainHeadResult:
    """Train a dense head on imagery + labels and save it so that ``geodino map`` runs it with no other flag.

    Args:
        images: Imagery sources: a path, or a list with one entry per source (a path; or a list of paths: mosaic
            tiles, or with ``stack`` the band files of one image).
        labels: One label input per source (same order) or one for all: label raster(s) on any grid and CRS, or
            one vector file (polygons / points).
        task: "canopy-height" (metres) or "land-cover" (classes).
        backbone: Checkpoint path, hub name ("test": the tiny built-in model, random weights; others with
            ``random_weights``), or a loaded backbone.
        out: Model file to write (``.gdm``); the summary and history go next to it.
        head: "linear", "dpt", "upernet", "fpn" or "unet".
        label_column: Vector labels: the column holding classes (land cover) or heights.
        classes: Land cover: the class names (in label-value order), or the allowed values of a string column.
        class_colours: Land cover: one (r, g, b) per class for the saved model (default: a standard palette).
        label_nodata: Label value meaning "no label" (default: the label raster's nodata).
        ignore_values: Further label values to ignore.
        all_touched: Vector labels: burn every pixel a polygon touches (default: pixel centres inside).
        stack: Each source's paths are the band files of one image.
        bands: Bands to use (1-based indexes or names), for every source.
        tile: Chip side in pixels (a multiple of the patch size); default 224 (14 patches of 16), smaller when
            the imagery is smaller.
        split: "blocks" (spatial blocks of ``block_size`` map units with ``buffer``), "sources" (the images in
            ``val_sources`` validate), "none" (no validation: the last epoch is kept), or a polygon file with a
            ``split`` column (train / val / test).
        block_size: Block side in map units for ``split="blocks"`` (default: two chips).
        buffer: Gap in map units between training and evaluation chips (default 0).
        val_sources: Indexes of the validation images for ``split="sources"``.
        epochs, batch_size, lr, patience: Training settings (defaults per task and head).
        loss: Canopy height: "binned" (default for dpt), "l1" (default otherwise), "silog"; land cover: "ce"
            (default) or "ce+dice".
        cache: Feature cache: "memory" (default), "disk" (under ``cache_dir``) or None.
        cache_dir: Folder of the disk cache.
        finetune: Train the backbone too (layer-wise lr decay; no feature cache).
        augment: "d4" (flips + 90 degree rotations, default), "flips" or None.
        seed: Seed of the split and the training (CPU runs are deterministic).
        device: torch device of the training ("cpu", "cuda").
        random_weights: Allow a hub architecture name with random weights.
        pretraining: "sat493m" / "lvd1689m" for a checkpoint that cannot tell.
        progress: Show a progress bar.
        name: The saved model's name (default: the file's stem).
        log: Called with one line per stage and epoch (default: silent).

    Returns:
        The paths written and the training summary.

    Raises:
        InputError: Bad inputs (labels off the imagery, values outside the classes, a missing label column,
            mismatched band counts, an empty training split...), each naming the file and what was found.
    """
    import geodino
    from geodino.heads.data.chips import TASKS
    from geodino.heads.data.pairs import make_chips, resolve_classes
    from geodino.heads.tasks import build_head_model, model_info_fields
    from geodino.heads.train import HeadTrainConfig, fit_head

    say = log or (lambda _line: None)
    started = time.perf_counter()
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if head not in HEADS:
        raise InputError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    out = Path(out)
    if out.suffix != ".gdm":
        raise InputError(f"{out}: the model file must end in .gdm")
    if out.parent.exists() and not out.parent.is_dir():
        raise InputError(f"{out}: {out.parent} is not a folder")
    sources = _sources(images)
    label_inputs = _labels_for(labels, len(sources))

    count, dtype, _ = _imagery_facts(sources, stack=stack, bands=bands)
    model_backbone = load_backbone_for(backbone, count, random_weights=random_weights, pretraining=pretraining)
    random = model_backbone.meta.weights == "random"
    normalization = normalization_of(model_backbone, dtype)
    patch = int(model_backbone.patch_size)
    tile = _default_tile(tile, patch)
    if head != "linear" and model_backbone.n_blocks < 4:
        raise InputError(
            f"head {head!r} reads four backbone blocks; backbone {model_backbone.meta.name} has "
            f"{model_backbone.n_blocks}: use --head linear, or a deeper backbone"
        )
    weights = "RANDOM weights, not pretrained" if random else f"{model_backbone.meta.weights} weights"
    say(f"backbone {model_backbone.meta.name} ({weights}), {count} bands, tile {tile}")

    class_map = None
    if task == "land-cover":
        class_map = resolve_classes(
            label_inputs, label_column=label_column, classes=classes, nodata=label_nodata, ignore_values=ignore_values
        )
    chips = make_chips(
        sources,
        label_inputs,
        task=task,
        normalization=normalization,
        tile=tile,
        class_map=class_map,
        label_column=label_column,
        classes=classes,
        stack=stack,
        bands=bands,
        label_nodata=label_nodata,
        ignore_values=ignore_values,
        all_touched=all_touched,
        expected_bands=model_backbone.in_chans,
    )
    parts = _split(chips, split, block_size=block_size, buffer=buffer, val_sources=val_sources, seed=seed)
    train, val = parts["train"], parts.get("val")
    if len(train) == 0:
        raise InputError(f"the training split is empty ({len(chips)} chips, split {split!s}); use smaller blocks")
    if val is not None and len(val) == 0:
        warnings.warn(
            f"the validation split is empty ({len(chips)} chips in all, split {split!s}): training without "
            "validation, the last epoch is kept",
            stacklevel=2,
        )
        val = None
    say(f"{len(chips)} chips of {tile}x{tile}: {len(train)} train, {0 if val is None else len(val)} validation")

    n_classes = len(class_map.names) if class_map is not None else None
    import torch

    with torch.random.fork_rng():  # the head's initial weights follow `seed`, not whatever ran before
        torch.manual_seed(seed)
        model = build_head_model(model_backbone, task=task, head=head, n_classes=n_classes, loss=loss)
    config = _config(
        HeadTrainConfig,
        task,
        head,
        epochs,
        batch_size,
        lr,
        cache,
        cache_dir,
        finetune,
        augment,
        patience,
        seed,
        progress,
    )
    config = replace(config, device=device)
    metric, higher, metric_name = _val_metric(task, n_classes)
    fit = fit_head(
        model,
        train,
        val,
        config,
        val_metric=metric if val is not None else None,
        higher_is_better=higher if val is not None else None,
        log=say,
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    colours = None if class_colours is None else tuple(tuple(int(v) for v in c) for c in class_colours)
    info_fields = model_info_fields(
        task, class_names=class_map.names if class_map is not None else None, class_colours=colours, model=fit.model
    )
    info_fields.setdefault("tile", tile)
    info_fields.setdefault("name", name or out.stem)
    if chips.gsd:
        info_fields.setdefault("gsd", float(chips.gsd))
    geodino.save_model(out, fit.model, **info_fields)

    summary = {
        "model": str(out),
        "task": task,
        "head": head,
        "backbone": {
            "source": str(backbone) if isinstance(backbone, str | Path) else model_backbone.meta.name,
            "name": model_backbone.meta.name,
            "weights": model_backbone.meta.weights,
            "random_weights": random,
        },
        "images": [_plain(s) for s in sources],
        "labels": [_plain(s) for s in label_inputs],
        "label_column": label_column,
        "stack": stack,
        "bands": None if bands is None else list(bands),
        "classes": None
        if class_map is None
        else {"names": list(class_map.names), "values": [_plain(v) for v in class_map.values]},
        "label_nodata": label_nodata,
        "ignore_values": list(ignore_values),
        "normalization": {"scale": normalization.scale, "mean": normalization.mean, "std": normalization.std},
        "tile": tile,
        "split": {
            "kind": str(split),
            "block_size": block_size,
            "buffer": buffer,
            "seed": seed,
            "chips": {k: len(v) for k, v in parts.items()},
        },
        "config": _plain(config),
        "val_metric": metric_name if val is not None else None,
        "best_epoch": _plain(getattr(fit, "best_epoch", None)),
        "best_metric": _plain(getattr(fit, "best_metric", None)),
        "history": _plain(list(getattr(fit, "history", []))),
        "seconds": round(time.perf_counter() - started, 3),
    }
    spath, hpath = summary_path(out), _history_path(out)
    spath.write_text(json.dumps(summary, indent=2))
    _write_history(hpath, summary["history"])
    say(f"wrote {out}, {spath.name}, {hpath.name}")
    return TrainHeadResult(model_path=out, summary_path=spath, history_path=hpath, summary=summary)


def _default_tile(tile: int | None, patch: int) -> int:
    if tile is None:
        return 14 * patch
    if tile < patch or tile % patch:
        raise InputError(f"tile must be a positive multiple of the backbone's patch size {patch}, got {tile}")
    return int(tile)


def _config(
    config_cls: type,
    task: str,
    head: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    cache: str | None,
    cache_dir: str | Path | None,
    finetune: bool,
    augment: str | None,
    patience: int | None,
    seed: int,
    progress: bool,
) -> Any:
    """HeadTrainConfig with the per-task / per-head defaults and the caller's values (None: default)."""
    values: dict[str, Any] = {"epochs": _TASK_EPOCHS[task], **_HEAD_DEFAULTS[head]}
    given = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "cache_dir": None if cache_dir is None else Path(cache_dir),
        "patience": patience,
    }
    values.update({k: v for k, v in given.items() if v is not None})
    values.update(cache=cache, finetune=finetune, augment=augment, seed=seed, progress=progress)
    known = {f.name for f in fields(config_cls)}
    return config_cls(**{k: v for k, v in values.items() if k in known})
