"""Raster reading, pure window planning and blending.

The pure pieces (windows, plan, blend, normalize) import numpy only; :class:`RasterSource` (rasterio) loads on first
use, so ``import geodino.raster`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geodino.raster.blend import (
    accumulate_patch,
    argmax_channels,
    blend_patches,
    finalize,
    valid_to_output,
    window_weights,
)
from geodino.raster.normalize import Normalization, default_scale
from geodino.raster.plan import (
    ChunkTask,
    PatchGrid,
    chunk_grid_shape,
    default_margin,
    extract_patches,
    plan_chunks,
)
from geodino.raster.windows import Window

if TYPE_CHECKING:  # pragma: no cover
    from geodino.raster.source import RasterSource, RasterSourceError, RasterSourceWarning

__all__ = [
    "ChunkTask",
    "Normalization",
    "PatchGrid",
    "RasterSource",
    "RasterSourceError",
    "RasterSourceWarning",
    "Window",
    "accumulate_patch",
    "argmax_channels",
    "blend_patches",
    "chunk_grid_shape",
    "default_margin",
    "default_scale",
    "extract_patches",
    "finalize",
    "plan_chunks",
    "valid_to_output",
    "window_weights",
]


def __getattr__(name: str) -> Any:
    """Load the rasterio-backed reader on first use (PEP 562)."""
    if name in ("RasterSource", "RasterSourceError", "RasterSourceWarning"):
        from geodino.raster import source

        return getattr(source, name)
    raise AttributeError(f"module 'geodino.raster' has no attribute {name!r}")
