"""The linear head of DINOv3's segmentation evaluation (and its depth-style regression variant).

Per chosen layer: the patch map (B, D, h, w), with the cls token broadcast and appended along channels if
``use_cls_token``; every layer bilinearly resized (align_corners=False) to the first layer's grid and the layers
concatenated (C = sum of widths, x2 with the cls token); then Dropout2d(0.1), BatchNorm(C) and a 1x1 conv
C -> K: logits on the patch grid, bilinearly upsampled (align_corners=False) to the input size. Keys as Meta's
segmentation head: ``batchnorm_layer.*`` and ``conv.{weight,bias}``. With bins (regression) the upsampled
logits become a height, as a binned depth head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.heads.base import DenseHead, Features, HeadError


class LinearHead(DenseHead):
    """BatchNorm + dropout + 1x1 conv over the concatenated features of the chosen layers.

    Args:
        embed_dims: width of each chosen layer's features (an int: the same for every layer).
        layers: backbone block indices, shallow to deep (e.g. ``[23]`` for "last" on a ViT-L).
        use_batchnorm: BatchNorm over the concatenated channels (Meta's default: True).
        use_cls_token: append the cls token to every patch feature (segmentation default: False).
        dropout: Dropout2d probability before the norm (0.1).
        **kwargs: `DenseHead` output options (kind, out_channels, class_names, bins, uncertainty, ...).
    """

    def __init__(
        self,
        embed_dims: int | Sequence[int],
        layers: Sequence[int],
        *,
        use_batchnorm: bool = True,
        use_cls_token: bool = False,
        dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(layers, **kwargs)
        dims = [int(embed_dims)] * len(self.layers) if isinstance(embed_dims, int) else [int(d) for d in embed_dims]
        if len(dims) != len(self.layers):
            raise HeadError(f"{len(dims)} embed_dims for {len(self.layers)} layers {self.layers}")
        self.embed_dims = dims
        self.use_cls_token = use_cls_token
        self._head_config = {
            "embed_dims": dims,
            "use_batchnorm": use_batchnorm,
            "use_cls_token": use_cls_token,
            "dropout": dropout,
        }
        channels = sum(dims) * (2 if use_cls_token else 1)
        self.dropout = nn.Dropout2d(dropout)
        self.batchnorm_layer = nn.BatchNorm2d(channels) if use_batchnorm else nn.Identity()
        self.conv = nn.Conv2d(channels, self.n_logits, kernel_size=1)
        nn.init.normal_(self.conv.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv.bias)

    @property
    def embed_dim(self) -> int | None:
        """The backbone width this head reads, when every layer has the same."""
        return self.embed_dims[0] if len(set(self.embed_dims)) == 1 else None

    def head_config(self) -> dict[str, Any]:
        return dict(self._head_config)

    def concat(self, features: Features) -> Tensor:
        """Features -> (B, C, h0, w0): each layer (with its cls token if asked) resized to the first grid."""
        self.check_features(features)
        maps = []
        for (patches, cls), dim in zip(features, self.embed_dims, strict=True):
            if patches.shape[1] != dim:
                raise HeadError(f"a layer of width {patches.shape[1]} for a head expecting {dim}")
            if self.use_cls_token:
                patches = torch.cat([patches, cls[:, :, None, None].expand_as(patches)], dim=1)
            maps.append(patches)
        size = maps[0].shape[-2:]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear") for m in maps]
        return torch.cat(maps, dim=1)

    def logits(self, features: Features) -> Tensor:
        """Features -> logits (B, K, h0, w0) on the first layer's patch grid."""
        return self.conv(self.batchnorm_layer(self.dropout(self.concat(features))))

    def forward(
        self, features: Features, size: tuple[int, int] | None = None, return_uncertainty: bool | None = None
    ) -> Tensor:
        """Features -> (B, K, H, W): logits upsampled bilinearly to `size` (the padded input), then `finish`."""
        logits = self.logits(features)
        if size is not None and logits.shape[-2:] != tuple(size):
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
        return self.finish(logits, return_uncertainty)


def linear_head(backbone: Any, layers: Any = "last", **kwargs: Any) -> LinearHead:
    """A `LinearHead` for `backbone`, reading the named layer set (or indices) `layers` (default: the last block)."""
    from geodino.heads.features import resolve_layers

    take = resolve_layers(backbone, layers)
    return LinearHead([backbone.embed_dim] * len(take), take, **kwargs)
