"""What every geodino head shares: the feature input, the output stage (logits, regression or bins -> height)
and the self-description a saved model stores (`describe`, `config`).

A head consumes backbone features as returned by `geodino.heads.features.take_features`: one ``(patches, cls)``
pair per layer, patches (B, D, h, w) and cls (B, D), in the order of ``head.layers``. Its forward takes those and
the (padded) input size (H, W) and returns a dense map (B, K, H', W'); `geodino.heads.model.DenseModel` turns it
into a map at the input size.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from geodino.heads.bins import BinsConfig, depth_and_spread, logits_to_depth, make_bins

Kind = Literal["classification", "regression"]
Features = list[tuple[Tensor, Tensor]]


class HeadError(ValueError):
    """A head, a head checkpoint or a bins configuration that does not fit."""


def pyramid_widths(embed_dim: int) -> list[int]:
    """Default widths of a 4-level feature pyramid over a ViT (strides 4, 8, 16, 32): D/8, D/4, D/2, D.

    DPT's reassemble channels for a ViT-L (128, 256, 512, 1024 from D = 1024) follow this rule; the smp adapter
    uses it too.
    """
    return [embed_dim // d for d in (8, 4, 2, 1)]


def class_path(obj: object) -> str:
    """Import path of an object's class, e.g. "geodino.heads.dpt.DPTHead"."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def head_from_config(path: str, config: Mapping[str, Any]) -> DenseHead:
    """Rebuild a head from its class import path and `config()`, with no registry."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise HeadError(f"head class {path!r} cannot be imported: {exc}") from exc
    return cls(**dict(config))


class DenseHead(nn.Module):
    """Base of the dense heads: layer choice, output stage and self-description.

    Args:
        layers: backbone block indices the head reads (0-based, in order).
        kind: "classification" (outputs logits; softmax turns them into probabilities) or "regression".
        out_channels: classes or regression targets; with `bins`, the number of bin logits.
        class_names: one name per class (classification).
        units: units of a regression output, e.g. "m".
        valid_range: (low, high) of a regression output; None on a side: unbounded.
        bins: turn `bins.n_bins` logits into one height channel (dict or `BinsConfig`); regression only.
        uncertainty: with bins, also output the spread (std) of the bin distribution: channels [height, std].
        use_backbone_norm: ask the backbone for final-norm features (the DINOv3 evaluation default).
    """

    input_multiple: int = 1  # input sides must be multiples of this (on top of the patch size)

    def __init__(
        self,
        layers: Sequence[int],
        *,
        kind: Kind = "classification",
        out_channels: int = 1,
        class_names: Sequence[str] | None = None,
        units: str | None = None,
        valid_range: tuple[float | None, float | None] | None = None,
        bins: BinsConfig | Mapping[str, Any] | None = None,
        uncertainty: bool = False,
        use_backbone_norm: bool = True,
    ) -> None:
        super().__init__()
        self.layers = [int(i) for i in layers]
        if not self.layers:
            raise HeadError("a head needs at least one backbone layer")
        if kind not in ("classification", "regression"):
            raise HeadError(f"kind must be 'classification' or 'regression', got {kind!r}")
        self.kind = kind
        try:
            self.bins = BinsConfig(**bins) if isinstance(bins, Mapping) else bins
            if self.bins is not None:
                self.bins.check_channels(out_channels)
        except (TypeError, ValueError) as exc:
            raise HeadError(f"bins configuration {bins}: {exc}") from exc
        if self.bins is not None and kind != "regression":
            raise HeadError("bins turn logits into a height: they need kind='regression'")
        if uncertainty and self.bins is None:
            raise HeadError("uncertainty is the spread of the bin distribution: it needs bins")
        if class_names is not None and (kind != "classification" or len(class_names) != out_channels):
            raise HeadError(f"{len(class_names)} class names for a {kind} head with {out_channels} outputs")
        self.n_logits = out_channels
        self.class_names = tuple(class_names) if class_names is not None else None
        self.units = units
        self.valid_range = tuple(valid_range) if valid_range is not None else None
        self.uncertainty = uncertainty
        self.use_backbone_norm = use_backbone_norm
        self._base_config: dict[str, Any] = {
            "layers": self.layers,
            "kind": kind,
            "out_channels": out_channels,
            "class_names": list(self.class_names) if self.class_names else None,
            "units": units,
            "valid_range": list(self.valid_range) if self.valid_range else None,
            "bins": self.bins.to_dict() if self.bins else None,
            "uncertainty": uncertainty,
            "use_backbone_norm": use_backbone_norm,
        }

    # ---------------------------------------------------------------------------------------- description
    def head_config(self) -> dict[str, Any]:
        """Arguments specific to a head class (subclasses override)."""
        return {}

    def config(self) -> dict[str, Any]:
        """Plain (JSON-able) keyword arguments from which ``type(self)(**config)`` rebuilds this head."""
        return {**self.head_config(), **self._base_config}

    @property
    def out_channels(self) -> int:
        """Channels of the final output: logits / targets, or 1 height (+1 std) with bins."""
        if self.bins is None:
            return self.n_logits
        return 2 if self.uncertainty else 1

    @property
    def channel_names(self) -> tuple[str, ...] | None:
        if self.bins is not None:
            return ("height", "height_std") if self.uncertainty else ("height",)
        return self.class_names

    def describe(self) -> dict[str, Any]:
        """What a saved model and the mapping workflows need to know about this head's output."""
        valid_range = self.valid_range
        if self.bins is not None and valid_range is None:
            valid_range = (0.0, self.bins.max_depth)
        return {
            "head_class": class_path(self),
            "kind": self.kind,
            "out_channels": self.out_channels,
            "factor": 1,
            "class_names": self.class_names,
            "channel_names": self.channel_names,
            "units": self.units,
            "valid_range": valid_range,
            "activation": "softmax" if self.kind == "classification" else "none",
            "layers": list(self.layers),
            "input_multiple": self.input_multiple,
            "use_backbone_norm": self.use_backbone_norm,
        }

    # --------------------------------------------------------------------------------------------- output
    def check_features(self, features: Features) -> None:
        if len(features) != len(self.layers):
            raise HeadError(f"this head reads {len(self.layers)} layers {self.layers}, got {len(features)} features")

    def finish(self, logits: Tensor, return_uncertainty: bool | None = None) -> Tensor:
        """Logits (B, K, H, W) -> the head's output; with bins, float32 height (and std) (B, 1 or 2, H, W)."""
        if self.bins is None:
            if return_uncertainty:
                raise HeadError("this head has no bins, so no uncertainty to return")
            return logits
        cfg = self.bins
        with torch.autocast(logits.device.type, enabled=False):
            z = logits.float()  # bins in float32 whatever the compute dtype of the layers
            bins = make_bins(cfg.bins_strategy, cfg.n_bins, cfg.min_depth, cfg.max_depth, device=z.device)
            want_std = self.uncertainty if return_uncertainty is None else return_uncertainty
            if not want_std:
                return logits_to_depth(z, bins, cfg.norm_strategy, cfg.min_depth)
            depth, std = depth_and_spread(z, bins, cfg.norm_strategy, cfg.min_depth)
            return torch.cat([depth, std], dim=1)


# ------------------------------------------------------------------------------------------------ loading
def read_head_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A head's flat state dict from a ``.pth`` file (weights only; a ``state_dict`` wrapper is unwrapped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise HeadError(f"{path}: no such head checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many types
        raise HeadError(f"{path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()) or not data:
        raise HeadError(f"{path}: expected a flat state dict of tensors, found a {type(data).__name__}")
    return dict(data)


def load_state_dict_checked(module: nn.Module, sd: Mapping[str, Tensor], source: str | Path) -> None:
    """Strict load naming the file, the missing / unexpected keys and the first shape mismatch."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise HeadError(
            f"{source}: does not fit this {type(module).__name__} ({len(expected)} keys expected, {len(sd)} found); "
            f"missing: {_preview(missing)}; unexpected: {_preview(unexpected)}"
        )
    for key, value in sd.items():
        if value.shape != expected[key].shape:
            raise HeadError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, this head expects {tuple(expected[key].shape)}"
            )
    module.load_state_dict(sd, strict=True)


def _preview(keys: list[str], n: int = 6) -> str:
    if not keys:
        return "none"
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
