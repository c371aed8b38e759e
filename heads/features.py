"""Backbone features as heads consume them: one ``(patches, cls)`` pair per chosen layer.

Layer choices (named sets "last", "four_even", "last_four", an int, or a list) are resolved by
`geodino.models.features.feature_take_indices`, the one index helper; this module only adapts the backbone's
`forward_intermediates` output to the pair format of the heads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from geodino.models.features import LAYER_SETS, LayerSpec, feature_take_indices, named_layers

if TYPE_CHECKING:  # pragma: no cover
    from geodino.models.vit import DinoVisionTransformer

__all__ = ["LAYER_SETS", "named_layers", "resolve_layers", "take_features"]


def resolve_layers(backbone: DinoVisionTransformer, layers: LayerSpec) -> list[int]:
    """Block indices (0-based, non-negative) of `layers` on `backbone`."""
    return feature_take_indices(backbone.n_blocks, layers)[0]


def take_features(
    backbone: DinoVisionTransformer, x: Tensor, layers: LayerSpec, norm: bool = True
) -> list[tuple[Tensor, Tensor]]:
    """(B, C, H, W) -> per layer (patches (B, D, h, w), cls (B, D)), in the order of `layers`.

    Args:
        backbone: the DINOv3 ViT.
        x: input batch, sides multiples of the patch size (or as the backbone's `input_padding` allows).
        layers: which blocks (see `geodino.models.features.feature_take_indices`).
        norm: apply the backbone's final norm to each layer's tokens (DINOv3's heads do).
    """
    pairs = backbone.forward_intermediates(x, layers, norm=norm, intermediates_only=True, return_prefix_tokens=True)
    return [(patches, prefix[:, 0]) for patches, prefix in pairs]
