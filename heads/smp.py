"""segmentation-models-pytorch decoders (UPerNet, FPN, UNet) on the DINOv3 ViT, through a feature pyramid.

A ViT has one scale (stride 16). The adapter reassembles four chosen layers into a pyramid at strides 4, 8, 16
and 32 (per level: 1x1 conv D -> C_i, then a 4x4/stride-4 transposed conv, a 2x2/stride-2 transposed conv, the
identity, a 3x3/stride-2 conv; as in DPT), and hands smp's decoders the feature list they expect:
``[stride 1, 2, 4, 8, 16, 32]``, where the two finest entries hold no channels (the ViT has nothing that fine;
UNet's last two blocks then upsample without a skip). A segmentation conv (smp's SegmentationHead) follows and
the result is bilinearly resized to the input size. Inputs are padded to multiples of 32 (``input_multiple``) so
every pyramid level is exactly half the size of the one before (FPN adds levels upsampled by exactly 2).

smp is imported when a head is built, not when `geodino.heads` is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from geodino.heads.base import DenseHead, Features, HeadError, pyramid_widths

Decoder = Literal["upernet", "fpn", "unet"]
DECODERS = ("upernet", "fpn", "unet")


class FeaturePyramid(nn.Module):
    """Four (B, D, h, w) maps -> (B, C_i, 4h / 2h / h / h/2 ...) at strides 4, 8, 16, 32 of a 16-pixel patch."""

    def __init__(self, embed_dim: int, channels: Sequence[int]) -> None:
        super().__init__()
        c0, c1, _, c3 = channels
        self.projects = nn.ModuleList(nn.Conv2d(embed_dim, c, 1) for c in channels)
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [resize(project(x)) for x, project, resize in zip(maps, self.projects, self.resize_layers, strict=True)]


def _build_decoder(
    name: Decoder, encoder_channels: list[int], options: Mapping[str, Any]
) -> tuple[nn.Module, int, int]:
    """The smp decoder, its output channels and the kernel of the segmentation conv smp pairs it with."""
    try:
        from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
        from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
        from segmentation_models_pytorch.decoders.upernet.decoder import UPerNetDecoder
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "smp heads need segmentation-models-pytorch >= 0.5 (pip install segmentation-models-pytorch)"
        ) from exc
    opts = dict(options)
    if name == "upernet":
        channels = opts.setdefault("decoder_channels", 256)
        return UPerNetDecoder(encoder_channels, encoder_depth=5, **opts), channels, 1
    if name == "fpn":
        decoder = FPNDecoder(encoder_channels, encoder_depth=5, **opts)
        return decoder, decoder.out_channels, 1
    if name == "unet":
        channels = list(opts.pop("decoder_channels", (256, 128, 64, 32, 16)))
        return UnetDecoder(encoder_channels, channels, n_blocks=len(channels), **opts), channels[-1], 3
    raise HeadError(f"unknown smp decoder {name!r}; known: {', '.join(DECODERS)}")


class SmpHead(DenseHead):
    """An smp decoder over a pyramid of four ViT layers.

    Args:
        embed_dim: backbone width D.
        layers: four backbone blocks, shallow to deep (e.g. the "four_even" set).
        decoder: "upernet", "fpn" or "unet".
        pyramid_channels: widths of the stride-4, 8, 16, 32 levels; None: [D/8, D/4, D/2, D] (DPT's).
        decoder_options: keyword arguments of the smp decoder class (e.g. ``decoder_channels`` for UPerNet and
            UNet, ``pyramid_channels`` / ``segmentation_channels`` for FPN; FPN uses GroupNorm(32, ...), so its
            segmentation channels must be a multiple of 32).
        **kwargs: `DenseHead` output options (kind, out_channels, class_names, bins, ...).
    """

    input_multiple = 32

    def __init__(
        self,
        embed_dim: int,
        layers: Sequence[int],
        *,
        decoder: Decoder = "upernet",
        pyramid_channels: Sequence[int] | None = None,
        decoder_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(layers, **kwargs)
        if len(self.layers) != 4:
            raise HeadError(f"the smp adapter builds a 4-level pyramid from 4 layers, got {self.layers}")
        if decoder not in DECODERS:
            raise HeadError(f"unknown smp decoder {decoder!r}; known: {', '.join(DECODERS)}")
        pyramid = list(pyramid_channels) if pyramid_channels is not None else pyramid_widths(embed_dim)
        if len(pyramid) != 4:
            raise HeadError(f"pyramid_channels needs 4 widths, got {pyramid}")
        self.embed_dim = embed_dim
        self.decoder_name = decoder
        self._head_config = {
            "embed_dim": embed_dim,
            "decoder": decoder,
            "pyramid_channels": pyramid,
            "decoder_options": dict(decoder_options or {}),
        }
        from segmentation_models_pytorch.base import SegmentationHead

        self.pyramid = FeaturePyramid(embed_dim, pyramid)
        self.decoder, channels, kernel = _build_decoder(decoder, [0, 0, *pyramid], decoder_options or {})
        self.segmentation_head = SegmentationHead(channels, self.n_logits, kernel_size=kernel)

    def head_config(self) -> dict[str, Any]:
        return {**self._head_config, "decoder_options": dict(self._head_config["decoder_options"])}

    def encoder_features(self, features: Features, size: tuple[int, int]) -> list[Tensor]:
        """smp's encoder output: [stride 1, 2 (no channels), stride 4, 8, 16, 32 pyramid levels]."""
        self.check_features(features)
        levels = self.pyramid([patches for patches, _ in features])
        B, H, W = levels[0].shape[0], size[0], size[1]
        like = levels[0]
        empty = [like.new_zeros(B, 0, H, W), like.new_zeros(B, 0, H // 2, W // 2)]
        return empty + levels

    def forward(
        self, features: Features, size: tuple[int, int] | None = None, return_uncertainty: bool | None = None
    ) -> Tensor:
        """Features -> (B, K, H, W) at `size` (the padded input; default 16x the patch grid)."""
        if size is None:
            size = (features[0][0].shape[-2] * 16, features[0][0].shape[-1] * 16)
        if size[0] % 32 or size[1] % 32:
            raise HeadError(f"smp heads need input sides that are multiples of 32, got {size[0]}x{size[1]}")
        decoded = self.decoder(self.encoder_features(features, size))
        out = self.segmentation_head(decoded)
        if out.shape[-2:] != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return self.finish(out, return_uncertainty)


def smp_head(backbone: Any, decoder: Decoder = "upernet", layers: Any = "four_even", **kwargs: Any) -> SmpHead:
    """An `SmpHead` for `backbone`, reading the named layer set (or indices) `layers`."""
    from geodino.heads.features import resolve_layers

    return SmpHead(backbone.embed_dim, resolve_layers(backbone, layers), decoder=decoder, **kwargs)


__all__ = ["DECODERS", "FeaturePyramid", "SmpHead", "smp_head"]
