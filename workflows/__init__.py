"""geodino.workflows: Dask workflows that map rasters of any size into georeferenced Zarr."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from geodino.workflows.cog import export_cog
    from geodino.workflows.mapping import embed_raster, map_raster, open_output
    from geodino.workflows.options import MapOptions
    from geodino.workflows.predictor import Predictor, PredictorInfo, build_predictor, load_predictor

__all__ = [
    "MapOptions",
    "Predictor",
    "PredictorInfo",
    "build_predictor",
    "embed_raster",
    "export_cog",
    "load_predictor",
    "map_raster",
    "open_output",
]

_LAZY = {
    "map_raster": "geodino.workflows.mapping",
    "embed_raster": "geodino.workflows.mapping",
    "open_output": "geodino.workflows.mapping",
    "export_cog": "geodino.workflows.cog",
    "MapOptions": "geodino.workflows.options",
    "Predictor": "geodino.workflows.predictor",
    "PredictorInfo": "geodino.workflows.predictor",
    "build_predictor": "geodino.workflows.predictor",
    "load_predictor": "geodino.workflows.predictor",
}


def __getattr__(name: str) -> Any:
    """Load the public functions on first use, so importing the package stays cheap (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geodino.workflows' has no attribute {name!r}")
