"""Training data from overhead imagery: random raster windows, multi-crop augmentation, iBOT masks, collate."""

from __future__ import annotations

from geodino.training.data.collate import MultiCropCollate, crops_first
from geodino.training.data.masking import BlockMaskGenerator, sample_masks
from geodino.training.data.multicrop import MultiCrop, default_band_groups
from geodino.training.data.windows import (
    RasterWindows,
    TrainingDataError,
    WindowRef,
    expand_paths,
    normalization_stats,
    open_sources,
)

__all__ = [
    "BlockMaskGenerator",
    "MultiCrop",
    "MultiCropCollate",
    "RasterWindows",
    "TrainingDataError",
    "WindowRef",
    "crops_first",
    "default_band_groups",
    "expand_paths",
    "normalization_stats",
    "open_sources",
    "sample_masks",
]
