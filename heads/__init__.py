"""geodino.heads: dense heads (linear, DPT, smp) on the DINOv3 backbone, bins, and the CHMv2 canopy-height model.

Every head is a `DenseHead`: it reads ``(patches, cls)`` features of chosen backbone layers and describes itself
(`describe()`, `config()`), so a saved model can name its class by import path and rebuild it from the config.
`DenseModel` puts a backbone and a head together (images in, a map at the input size out).

Training heads: `train_head` (imagery + labels -> a saved model `geodino map` runs) glues `make_chips` (labels
onto the imagery grid, chips), `spatial_split`, `build_head_model` and `fit_head` (frozen backbone, `FeatureCache`);
reports and figures in `geodino.heads.report`, pure metrics in `geodino.heads.metrics`, plots in `geodino.heads.plots`.

Importing this package is cheap: submodules (and torch, smp) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from geodino.heads.api import TrainHeadResult, train_head
    from geodino.heads.base import DenseHead, HeadError, head_from_config
    from geodino.heads.bins import BinsConfig
    from geodino.heads.chmv2 import build_chmv2, chmv2_head, load_chmv2
    from geodino.heads.data.chips import ChipSet
    from geodino.heads.data.pairs import ClassMap, LabelError, labels_on_grid, make_chips, resolve_classes
    from geodino.heads.data.splits import spatial_split, split_by_polygons, split_by_source
    from geodino.heads.dpt import DPTHead, dpt_head
    from geodino.heads.feature_cache import FeatureCache
    from geodino.heads.linear import LinearHead, linear_head
    from geodino.heads.model import DenseModel
    from geodino.heads.plots import plot_classes, plot_embedding, plot_heights, plot_output
    from geodino.heads.report import canopy_height_report, land_cover_report, write_report
    from geodino.heads.smp import SmpHead, smp_head
    from geodino.heads.tasks import build_head_model, model_info_fields, task_loss
    from geodino.heads.train import FitResult, HeadTrainConfig, TrainError, fit_head

_LAZY = {
    "DenseHead": "geodino.heads.base",
    "HeadError": "geodino.heads.base",
    "head_from_config": "geodino.heads.base",
    "BinsConfig": "geodino.heads.bins",
    "build_chmv2": "geodino.heads.chmv2",
    "chmv2_head": "geodino.heads.chmv2",
    "load_chmv2": "geodino.heads.chmv2",
    "DPTHead": "geodino.heads.dpt",
    "dpt_head": "geodino.heads.dpt",
    "LinearHead": "geodino.heads.linear",
    "linear_head": "geodino.heads.linear",
    "DenseModel": "geodino.heads.model",
    "SmpHead": "geodino.heads.smp",
    "smp_head": "geodino.heads.smp",
    "train_head": "geodino.heads.api",
    "TrainHeadResult": "geodino.heads.api",
    "build_head_model": "geodino.heads.tasks",
    "task_loss": "geodino.heads.tasks",
    "model_info_fields": "geodino.heads.tasks",
    "HeadTrainConfig": "geodino.heads.train",
    "FitResult": "geodino.heads.train",
    "fit_head": "geodino.heads.train",
    "TrainError": "geodino.heads.train",
    "FeatureCache": "geodino.heads.feature_cache",
    "ChipSet": "geodino.heads.data.chips",
    "ClassMap": "geodino.heads.data.pairs",
    "LabelError": "geodino.heads.data.pairs",
    "labels_on_grid": "geodino.heads.data.pairs",
    "make_chips": "geodino.heads.data.pairs",
    "resolve_classes": "geodino.heads.data.pairs",
    "spatial_split": "geodino.heads.data.splits",
    "split_by_polygons": "geodino.heads.data.splits",
    "split_by_source": "geodino.heads.data.splits",
    "canopy_height_report": "geodino.heads.report",
    "land_cover_report": "geodino.heads.report",
    "write_report": "geodino.heads.report",
    "plot_classes": "geodino.heads.plots",
    "plot_embedding": "geodino.heads.plots",
    "plot_heights": "geodino.heads.plots",
    "plot_output": "geodino.heads.plots",
}

__all__ = [
    "BinsConfig",
    "ChipSet",
    "ClassMap",
    "DPTHead",
    "DenseHead",
    "DenseModel",
    "FeatureCache",
    "FitResult",
    "HeadError",
    "HeadTrainConfig",
    "LabelError",
    "LinearHead",
    "SmpHead",
    "TrainError",
    "TrainHeadResult",
    "build_chmv2",
    "build_head_model",
    "canopy_height_report",
    "chmv2_head",
    "dpt_head",
    "fit_head",
    "head_from_config",
    "labels_on_grid",
    "land_cover_report",
    "linear_head",
    "load_chmv2",
    "make_chips",
    "model_info_fields",
    "plot_classes",
    "plot_embedding",
    "plot_heights",
    "plot_output",
    "resolve_classes",
    "smp_head",
    "spatial_split",
    "split_by_polygons",
    "split_by_source",
    "task_loss",
    "train_head",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Resolve public names on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geodino.heads' has no attribute {name!r}")
