"""Meta's CHMv2 canopy-height model: the SAT-493M ViT-L/16, a DPT head over blocks [5, 11, 17, 23] and 256
mixed log/linear bins -> canopy height in metres (dpt-chmv2-reference.md).

Differences from Meta's depther, on purpose:

- Output size: Meta returns the DPT's own grid, the input centre-padded to a multiple of 16 and then rounded up
  to a multiple of 32 (e.g. 240x320 -> 256x320), and leaves it to the caller to resize. geodino resizes that
  output to the padded input (bilinear, align_corners=False; only when a patch-grid side is odd) and crops the
  padding off, so the map has the input's size and pixel grid (`DenseModel`, ``output_size="input"``). When both
  sides are multiples of 32 nothing is resized or cropped and the output equals Meta's fp32 output. Meta's own
  grid is available with ``output_size="padded"``. (Meta's notebook instead resizes the whole padded output to the
  input size, which shifts pixels by up to half the padding.)
- Precision: Meta's depther runs under bfloat16 autocast whenever CUDA is absent, silently (up to 0.2 m off the
  fp32 result). geodino runs in the dtype you give it (float32 unless you wrap the call in ``torch.autocast``
  yourself) and always computes the bins in float32; the output is float32 metres.
- Files are recognised by their content: the SAT-493M backbone's ``local_cls_norm`` is read from its keys, not
  from the ``eadcf0ff`` hash in its file name.
- Uncertainty: with ``uncertainty=True`` a second channel holds the standard deviation (metres) of the height
  under the bin distribution: channels ``[height, height_std]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodino.heads.base import read_head_state_dict
from geodino.heads.bins import BinsConfig
from geodino.heads.dpt import DPTHead
from geodino.heads.features import resolve_layers
from geodino.heads.model import DenseModel, OutputSize

if TYPE_CHECKING:  # pragma: no cover
    from geodino.models.vit import DinoVisionTransformer

CHMV2_LAYERS = (5, 11, 17, 23)  # = named set "four_even" on 24 blocks
CHMV2_BINS = BinsConfig(
    n_bins=256, min_depth=0.001, max_depth=96.0, bins_strategy="chmv2_mixlog", norm_strategy="chmv2_mixlog"
)
# Meta's DPTHead defaults, which CHMv2 keeps (not the SYNTHMIX depther's [1024] * 4 and 512 channels).
CHMV2_DPT = {"post_process_channels": [128, 256, 512, 1024], "channels": 256, "n_hidden_channels": 128}


def chmv2_head(
    embed_dim: int = 1024, layers: tuple[int, ...] | list[int] = CHMV2_LAYERS, uncertainty: bool = False
) -> DPTHead:
    """The CHMv2 DPT head (random weights): 68 keys, 33.7M parameters for a 1024-wide backbone."""
    return DPTHead(
        embed_dim,
        layers,
        readout="project",  # Meta's use_cls_token=True
        use_bias=True,
        kind="regression",
        out_channels=CHMV2_BINS.n_bins,
        units="m",
        valid_range=(0.0, CHMV2_BINS.max_depth),
        bins=CHMV2_BINS,
        uncertainty=uncertainty,
        use_backbone_norm=True,
        **CHMV2_DPT,
    )


def build_chmv2(
    backbone: DinoVisionTransformer,
    weights: str | Path | None = None,
    *,
    uncertainty: bool = False,
    output_size: OutputSize = "input",
) -> DenseModel:
    """CHMv2 on `backbone` (blocks "four_even": [5, 11, 17, 23] on a ViT-L), loading the head file `weights`.

    Args:
        backbone: the SAT-493M ViT-L/16 (any backbone of 4+ blocks builds, for tests).
        weights: Meta's ``dinov3_vitl16_chmv2_dpt_head-*.pth`` (a flat state dict of 68 keys), under any name,
            or None for random head weights.
        uncertainty: output channels [height, height_std] instead of [height].
        output_size: "input" (the input's size and grid) or "padded" (Meta's raw output; see the module doc).
    """
    head = chmv2_head(backbone.embed_dim, resolve_layers(backbone, "four_even"), uncertainty=uncertainty)
    if weights is not None:
        head.load_official(read_head_state_dict(weights), source=str(weights))
        if backbone.meta.weights not in ("sat493m", "random"):
            warnings.warn(
                f"the CHMv2 head was trained on the SAT-493M ViT-L; this backbone's weights are "
                f"{backbone.meta.weights!r} ({backbone.meta.source}): heights will likely be wrong",
                stacklevel=2,
            )
    return DenseModel(backbone, head.eval(), output_size=output_size).eval()


def load_chmv2(
    weights: str | Path | None,
    backbone_weights: str | Path | None,
    **kwargs: Any,
) -> DenseModel:
    """CHMv2 from Meta's two files (head, backbone), whatever their names; None builds random weights.

    Keyword arguments: `build_chmv2`'s (uncertainty, output_size) and `DinoVisionTransformer`'s for the backbone.
    """
    from geodino.models.checkpoint import load_backbone
    from geodino.models.config import ARCHS
    from geodino.models.vit import DinoVisionTransformer

    options = {k: kwargs.pop(k) for k in ("uncertainty", "output_size") if k in kwargs}
    if backbone_weights is None:
        backbone = DinoVisionTransformer(ARCHS["dinov3_vitl16"].replace(local_cls_norm=True), **kwargs).eval()
    else:
        backbone = load_backbone(backbone_weights, expect="dinov3_vitl16", **kwargs)
    return build_chmv2(backbone, weights, **options)
