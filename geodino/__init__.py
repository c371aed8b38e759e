"""geodino: DINOv3 vision transformers for satellite and aerial imagery.

Importing the package is cheap: torch and the geospatial stack load only when a function that needs them runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from geodino import hub
    from geodino.bundle import describe_model, load_model, save_model
    from geodino.modelinfo import ModelInfo
    from geodino.models.checkpoint import load_backbone
    from geodino.models.vit import DinoVisionTransformer

__all__ = [
    "DinoVisionTransformer",
    "ModelInfo",
    "__version__",
    "describe_model",
    "hub",
    "load_backbone",
    "load_model",
    "save_model",
]

_LAZY = {
    "load_backbone": ("geodino.models.checkpoint", "load_backbone"),
    "DinoVisionTransformer": ("geodino.models.vit", "DinoVisionTransformer"),
    "ModelInfo": ("geodino.modelinfo", "ModelInfo"),
    "save_model": ("geodino.bundle", "save_model"),
    "load_model": ("geodino.bundle", "load_model"),
    "describe_model": ("geodino.bundle", "describe_model"),
}
_SUBMODULES = ("hub", "errors")


def __getattr__(name: str) -> Any:
    """Resolve heavy public names on first use (PEP 562)."""
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if name in _SUBMODULES:  # `import geodino; geodino.hub.dinov3_vitl16(...)`
        return importlib.import_module(f"geodino.{name}")
    raise AttributeError(f"module 'geodino' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
