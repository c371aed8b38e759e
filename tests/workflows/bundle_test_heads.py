"""Small importable heads for the saved-model tests (a stand-in until geodino.heads provides real ones).

``TinyHead`` follows the head protocol of :mod:`geodino.bundle`: ``config()`` rebuilds it, ``describe()`` gives
its outputs and the backbone layers it reads. ``Joined`` is the module joining a backbone and a head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class TinyHead(nn.Module):
    """BatchNorm + 1x1 conv over the concatenated patch features of ``layers``, upsampled to the input size."""

    def __init__(
        self,
        embed_dim: int = 64,
        out_channels: int = 3,
        layers: tuple[int, ...] | list[int] = (0, 1),
        kind: str = "classification",
        class_names: list[str] | None = None,
        units: str | None = None,
        valid_range: list[float] | None = None,
        channel_names: list[str] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.embed_dim, self.out_channels, self.layers = embed_dim, out_channels, tuple(layers)
        self.kind, self.class_names, self.units = kind, class_names, units
        self.valid_range, self.channel_names, self.seed = valid_range, channel_names, seed
        width = embed_dim * len(self.layers)
        self.bn = nn.BatchNorm2d(width)
        self.conv = nn.Conv2d(width, out_channels, 1)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # non-trivial weights and running statistics, so a round trip is tested
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.3)
            self.conv.bias.copy_(torch.randn(out_channels, generator=gen))
            self.bn.running_mean.copy_(torch.randn(width, generator=gen) * 0.1)
            self.bn.running_var.copy_(torch.rand(width, generator=gen) + 0.5)

    def config(self) -> dict[str, Any]:
        return {
            "embed_dim": self.embed_dim,
            "out_channels": self.out_channels,
            "layers": list(self.layers),
            "kind": self.kind,
            "class_names": self.class_names,
            "units": self.units,
            "valid_range": self.valid_range,
            "channel_names": self.channel_names,
            "seed": self.seed,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "out_channels": self.out_channels,
            "factor": 1,
            "class_names": self.class_names,
            "units": self.units,
            "valid_range": self.valid_range,
            "channel_names": self.channel_names,
            "activation": None,
            "layers": list(self.layers),
        }

    def forward(self, features: list[Tensor], size: tuple[int, int]) -> Tensor:
        y = self.conv(self.bn(torch.cat(features, dim=1)))
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class Joined(nn.Module):
    """Backbone features of the head's layers -> head -> (B, K, H, W)."""

    def __init__(self, backbone: nn.Module, head: TinyHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone.get_intermediate_layers(x, n=list(self.head.layers), reshape=True, norm=True)
        return self.head(list(features), tuple(x.shape[-2:]))


def tiny_model(seed: int = 0, **head: Any) -> Joined:
    """The test backbone (seeded) + a TinyHead."""
    from geodino import hub

    torch.manual_seed(seed)
    return Joined(hub.dinov3_vit_test(), TinyHead(seed=seed, **head)).eval()


class ScaledJoined(Joined):
    """``Joined`` times a constant that its (missing) config() would not record."""

    def __init__(self, backbone: nn.Module, head: TinyHead, scale: float = 1.0):
        super().__init__(backbone, head)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * self.scale
