"""DPT head (Ranftl et al. 2021, as configured in DINOv3's depth evaluation), with Meta's module and key names,
so that a state dict of the official head (e.g. the CHMv2 canopy-height head, 68 keys) loads strictly.

Shapes for a backbone of width D, patch grid h x w, levels i = 0..3 with widths C_i (`post_process_channels`):

1. reassemble: readout ("project": [patch, cls] -> Linear 2D -> D -> GELU), 1x1 conv D -> C_i, then resize to
   4h, 2h, h, ceil(h/2) (transposed convs k4/s4 and k2/s2, identity, 3x3 conv stride 2);
2. `convs.i`: 3x3 conv C_i -> `channels` (no bias): L0..L3;
3. fusion, coarse to fine: out = F0(L3); out = F1(out, L2); F2(out, L1); F3(out, L0), where each block adds a
   residual-conv-unit of the skip (resized to the coarse map) and doubles the size (align_corners=True);
4. `conv_depth.head`: 3x3 conv -> channels/2, x2 upsampling, 3x3 conv -> n_hidden, ReLU, 1x1 conv -> outputs.

The output is 32 * ceil(h / 2) pixels high for a 16-pixel patch (dpt-chmv2-reference.md, section 1.4): the padded
input size when h is even, a little more when h is odd.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.heads.base import DenseHead, Features, HeadError, load_state_dict_checked, pyramid_widths

Readout = Literal["project", "ignore"]


class ConvUnit(nn.Module):
    """A conv held as ``.conv`` (Meta's ConvModule naming), no norm, no activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: ``x + conv2(relu(conv1(relu(x))))``, 3x3 convs, no norm."""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = ConvUnit(channels, channels, 3, bias)
        self.conv2 = ConvUnit(channels, channels, 3, bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """``x = coarse (+ rcu1(skip resized to coarse))``; ``rcu2``; x2 bilinear (align_corners=True); 1x1 conv."""

    def __init__(self, channels: int, with_skip: bool, bias: bool = True) -> None:
        super().__init__()
        self.project = ConvUnit(channels, channels, 1, bias=True)
        self.res_conv_unit1 = ResidualConvUnit(channels, bias) if with_skip else None
        self.res_conv_unit2 = ResidualConvUnit(channels, bias)

    def forward(self, coarse: Tensor, skip: Tensor | None = None) -> Tensor:
        x = coarse
        if skip is not None:
            if self.res_conv_unit1 is None:
                raise HeadError("the first fusion block takes no skip connection")
            if skip.shape != coarse.shape:
                skip = F.interpolate(skip, size=coarse.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.res_conv_unit1(skip)
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class ReassembleBlocks(nn.Module):
    """Per level: readout, 1x1 projection to C_i, resize to strides 4, 8, 16, 32 (for a 16-pixel patch)."""

    def __init__(self, embed_dim: int, out_channels: Sequence[int], readout: Readout) -> None:
        super().__init__()
        if len(out_channels) != 4:
            raise HeadError(f"the DPT head has 4 levels, got post_process_channels={list(out_channels)}")
        self.readout = readout
        self.projects = nn.ModuleList(ConvUnit(embed_dim, c, 1) for c in out_channels)
        c0, c1, _, c3 = out_channels
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(c0, c0, kernel_size=4, stride=4, padding=0),
                nn.ConvTranspose2d(c1, c1, kernel_size=2, stride=2, padding=0),
                nn.Identity(),
                nn.Conv2d(c3, c3, kernel_size=3, stride=2, padding=1),
            ]
        )
        if readout == "project":
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in out_channels
            )
        elif readout != "ignore":
            raise HeadError(f"readout must be 'project' or 'ignore', got {readout!r}")

    def forward(self, features: Features) -> list[Tensor]:
        out = []
        for i, (patches, cls) in enumerate(features):
            x = patches
            if self.readout == "project":
                B, D, h, w = x.shape
                tokens = x.flatten(2).transpose(1, 2)  # (B, hw, D)
                readout = cls.unsqueeze(1).expand_as(tokens)
                x = self.readout_projects[i](torch.cat([tokens, readout], dim=-1))
                x = x.transpose(1, 2).reshape(B, D, h, w)
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class UpConvHead(nn.Module):
    """conv 3x3 -> channels/2, x2 bilinear (align_corners=True), conv 3x3 -> n_hidden, ReLU, conv 1x1 -> n_out."""

    def __init__(self, channels: int, n_hidden: int, n_out: int) -> None:
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, n_hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(n_hidden, n_out, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)


class DPTHead(DenseHead):
    """DPT decoder over four backbone layers.

    Args:
        embed_dim: backbone width D (1024 for a ViT-L).
        layers: the four backbone blocks read, shallow to deep (CHMv2: [5, 11, 17, 23]).
        post_process_channels: widths C_0..C_3 of the reassembled levels; None: [D/8, D/4, D/2, D] (the
            DPTHead default for a ViT-L, [128, 256, 512, 1024]).
        channels: width of the fusion path (256).
        n_hidden_channels: hidden width of the output head (CHMv2: 128).
        readout: "project" uses the cls token (Meta's use_cls_token=True), "ignore" drops it.
        use_bias: biases in the residual conv units (CHMv2: True).
        **kwargs: output options of `DenseHead` (kind, out_channels, bins, uncertainty, ...); with bins,
            out_channels is the number of bin logits.
    """

    def __init__(
        self,
        embed_dim: int,
        layers: Sequence[int],
        *,
        post_process_channels: Sequence[int] | None = None,
        channels: int = 256,
        n_hidden_channels: int = 128,
        readout: Readout = "project",
        use_bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(layers, **kwargs)
        if len(self.layers) != 4:
            raise HeadError(f"the DPT head reads 4 backbone layers, got {len(self.layers)}: {self.layers}")
        pp = list(post_process_channels) if post_process_channels is not None else pyramid_widths(embed_dim)
        self.embed_dim = embed_dim
        self._head_config = {
            "embed_dim": embed_dim,
            "post_process_channels": pp,
            "channels": channels,
            "n_hidden_channels": n_hidden_channels,
            "readout": readout,
            "use_bias": use_bias,
        }
        # Registration order = Meta's key order: reassemble_blocks, convs, fusion_blocks, conv_depth.
        self.reassemble_blocks = ReassembleBlocks(embed_dim, pp, readout)
        self.convs = nn.ModuleList(ConvUnit(c, channels, 3, bias=False) for c in pp)
        self.fusion_blocks = nn.ModuleList(FusionBlock(channels, with_skip=j > 0, bias=use_bias) for j in range(4))
        self.project = nn.Identity()  # Meta's projection_after_fusion=False
        self.conv_depth = UpConvHead(channels, n_hidden_channels, self.n_logits)

    def head_config(self) -> dict[str, Any]:
        return dict(self._head_config)

    def logits(self, features: Features) -> Tensor:
        """Features (4 pairs of (B, D, h, w) patches and (B, D) cls) -> logits (B, K, 32 ceil(h/2), 32 ceil(w/2))."""
        self.check_features(features)
        levels = [conv(x) for conv, x in zip(self.convs, self.reassemble_blocks(features), strict=True)]
        out = self.fusion_blocks[0](levels[3])
        for j in (1, 2, 3):
            out = self.fusion_blocks[j](out, levels[3 - j])
        return self.conv_depth(self.project(out))

    def forward(
        self, features: Features, size: tuple[int, int] | None = None, return_uncertainty: bool | None = None
    ) -> Tensor:
        """Features -> output (B, K, H', W') at the DPT's own resolution (`size` is not used: see the module doc)."""
        return self.finish(self.logits(features), return_uncertainty)

    def load_official(self, sd: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Load a state dict with Meta's key names strictly, explaining a width or level mismatch first."""
        check_dpt_state_dict(self, sd, source)
        load_state_dict_checked(self, sd, source)


def check_dpt_state_dict(head: DPTHead, sd: Mapping[str, Tensor], source: str) -> None:
    """Name the likely cause when a DPT state dict was made for another backbone width, level count or bins."""
    key = "reassemble_blocks.projects.0.conv.weight"
    if key not in sd:
        raise HeadError(f"{source}: not a DPT head state dict (no {key!r}; found {', '.join(list(sd)[:5])}, ...)")
    width = sd[key].shape[1]
    if width != head.embed_dim:
        raise HeadError(
            f"{source}: a DPT head for a backbone {width} wide (e.g. {_arch_for_width(width)}); this head reads "
            f"a backbone {head.embed_dim} wide"
        )
    levels = sorted({int(k.split(".")[2]) for k in sd if k.startswith("reassemble_blocks.projects.")})
    if len(levels) != len(head.layers):
        raise HeadError(
            f"{source}: a DPT head with {len(levels)} feature levels; this head reads {len(head.layers)} layers "
            f"{head.layers}"
        )
    out_key = "conv_depth.head.4.weight"
    if out_key in sd and sd[out_key].shape[0] != head.n_logits:
        found = sd[out_key].shape[0]
        raise HeadError(
            f"{source}: the head outputs {found} channels ({out_key} is {tuple(sd[out_key].shape)}); this head "
            f"is configured for {head.n_logits}" + (f" (bins: n_bins={head.bins.n_bins})" if head.bins else "")
        )


def _arch_for_width(width: int) -> str:
    names = {384: "ViT-S/16 or S+/16", 768: "ViT-B/16", 1024: "ViT-L/16", 1280: "ViT-H+/16", 4096: "ViT-7B/16"}
    return names.get(width, "an unknown backbone")


def dpt_head(backbone: Any, layers: Any = "four_even", **kwargs: Any) -> DPTHead:
    """A `DPTHead` for `backbone`, reading the named layer set (or four indices) `layers`."""
    from geodino.heads.features import resolve_layers

    return DPTHead(backbone.embed_dim, resolve_layers(backbone, layers), **kwargs)
