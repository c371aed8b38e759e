"""geodino.heads: dense heads (linear, DPT, smp) on the DINOv3 backbone, bins, and the CHMv2 canopy-height model.

Every head is a `DenseHead`: it reads ``(patches, cls)`` features of chosen backbone layers and describes itself
(`describe()`, `config()`), so a saved model can name its class by import path and rebuild it from the config.
`DenseModel` puts a backbone and a head together (images in, a map at the input size out).

Importing this package is cheap: submodules (and torch, smp) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from geodino.heads.base import DenseHead, HeadError, head_from_config
    from geodino.heads.bins import BinsConfig
    from geodino.heads.chmv2 import build_chmv2, chmv2_head, load_chmv2
    from geodino.heads.dpt import DPTHead, dpt_head
    from geodino.heads.linear import LinearHead, linear_head
    from geodino.heads.model import DenseModel
    from geodino.heads.smp import SmpHead, smp_head

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
}

__all__ = [
    "BinsConfig",
    "DPTHead",
    "DenseHead",
    "DenseModel",
    "HeadError",
    "LinearHead",
    "SmpHead",
    "build_chmv2",
    "chmv2_head",
    "dpt_head",
    "head_from_config",
    "linear_head",
    "load_chmv2",
    "smp_head",
]


def __getattr__(name: str) -> Any:
    """Resolve public names on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geodino.heads' has no attribute {name!r}")
