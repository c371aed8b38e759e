"""A backbone and a dense head as one model: images (B, C, H, W) in, a dense map out.

Size rule: the input is zero-padded (after normalisation) up to a multiple of the patch size and of the head's
`input_multiple`, centred (left/top get the smaller half, the CHMv2 convention); the head's output is then
resized, if its size differs, to the padded input size (bilinear, align_corners=False: output and padded input
cover the same ground) and the padding is cropped off. So with ``output_size="input"`` (default) the map has the
input's size and pixel grid. ``output_size="padded"`` returns the head's output as it is (Meta's depther does
this: for CHMv2 the padded input rounded up to a multiple of 32).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.heads.base import DenseHead, HeadError
from geodino.heads.features import take_features

if TYPE_CHECKING:  # pragma: no cover
    from geodino.models.vit import DinoVisionTransformer

OutputSize = Literal["input", "padded"]


def centre_padding(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) zero padding that brings `size` up to a multiple: before gets the smaller half."""
    pad = -size % multiple
    return pad // 2, pad - pad // 2


def check_head_fits(backbone: DinoVisionTransformer, head: DenseHead) -> None:
    """Refuse a head made for another backbone width or for blocks the backbone does not have."""
    width = getattr(head, "embed_dim", None)
    if width is not None and width != backbone.embed_dim:
        raise HeadError(
            f"the head reads features {width} wide, the backbone {backbone.meta.name} is {backbone.embed_dim} wide"
        )
    bad = [i for i in head.layers if not 0 <= i < backbone.n_blocks]
    if bad:
        raise HeadError(
            f"the head reads blocks {head.layers}, but the backbone {backbone.meta.name} has {backbone.n_blocks} "
            f"blocks (0..{backbone.n_blocks - 1}): {bad} do not exist"
        )


class DenseModel(nn.Module):
    """Backbone + head.

    Args:
        backbone: the DINOv3 ViT.
        head: a `DenseHead` (linear, DPT, smp).
        output_size: "input" (default: the map has the input's size, see the module doc) or "padded".
        freeze_backbone: no gradients into the backbone, which stays in eval mode (the DINOv3 evaluation setup).
    """

    def __init__(
        self,
        backbone: DinoVisionTransformer,
        head: DenseHead,
        output_size: OutputSize = "input",
        freeze_backbone: bool = True,
    ) -> None:
        super().__init__()
        if output_size not in ("input", "padded"):
            raise ValueError(f"output_size must be 'input' or 'padded', got {output_size!r}")
        check_head_fits(backbone, head)
        self.backbone = backbone
        self.head = head
        self.output_size: OutputSize = output_size
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            backbone.requires_grad_(False)
            backbone.eval()

    @property
    def multiple(self) -> int:
        """Inputs are padded to multiples of this."""
        return math.lcm(self.backbone.patch_size, self.head.input_multiple)

    def train(self, mode: bool = True) -> DenseModel:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def describe(self) -> dict[str, Any]:
        """The head's description with the backbone's input facts (bands, normalisation, GSD)."""
        meta = self.backbone.meta
        info = self.head.describe()
        info.update(
            backbone=meta.name,
            in_bands=self.backbone.in_chans,
            bands=meta.bands,
            mean=meta.mean,
            std=meta.std,
            gsd=meta.gsd,
            patch_size=self.backbone.patch_size,
            pad_multiple=self.multiple,
            output_size=self.output_size,
        )
        if self.output_size == "padded":
            info["factor"] = None  # the output grid is not a fixed stride of the input grid
        return info

    def pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int, int, int]]:
        """Centre zero-padding of (B, C, H, W) to `multiple`; returns the padded batch and (top, bottom, left, right)."""
        m = self.multiple
        top, bottom = centre_padding(x.shape[-2], m)
        left, right = centre_padding(x.shape[-1], m)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return x, (top, bottom, left, right)

    def features(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Backbone features of a padded batch, as the head reads them."""
        norm = self.head.use_backbone_norm
        if self.freeze_backbone:
            with torch.no_grad():
                return take_features(self.backbone, x, self.head.layers, norm=norm)
        return take_features(self.backbone, x, self.head.layers, norm=norm)

    def forward(self, x: Tensor, **head_kwargs: Any) -> Tensor:
        """(B, C, H, W) -> (B, K, H, W) (``output_size="input"``) or the head's raw output size ("padded").

        Keyword arguments go to the head (e.g. ``return_uncertainty=True`` for binned heads).
        """
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got a tensor of shape {tuple(x.shape)}")
        xp, _ = self.pad(x)
        return self.forward_features(self.features(xp), tuple(x.shape[-2:]), **head_kwargs)

    def forward_features(
        self, features: list[tuple[Tensor, Tensor]], size: tuple[int, int], **head_kwargs: Any
    ) -> Tensor:
        """The second half of `forward`: backbone features of the padded batch -> the map of an (H, W) input.

        Lets a caller that already holds the features (e.g. `geodino.heads.feature_cache.FeatureCache`) run the
        head with the same size rule as `forward`.
        """
        H, W = size
        top, bottom = centre_padding(H, self.multiple)
        left, right = centre_padding(W, self.multiple)
        Hp, Wp = H + top + bottom, W + left + right
        out = self.head(features, (Hp, Wp), **head_kwargs)
        if self.output_size == "padded":
            return out
        if out.shape[-2:] != (Hp, Wp):
            out = F.interpolate(out, size=(Hp, Wp), mode="bilinear", align_corners=False)
        return out[..., top : top + H, left : left + W]
