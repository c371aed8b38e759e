"""Importable test models for ``--model tests_module:attr`` specs and the mapping tests.

Every model is tiny, seeded and deterministic. Each carries ``geodino_info`` (the metadata the workflows read).
``slow_pointwise`` also appends one line per forward pass to the file named by ``GEODINO_TEST_LOG`` and sleeps
``GEODINO_TEST_SLEEP`` seconds, so tests can count model calls across processes and kill a run midway.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch import nn

from geodino.workflows.predictor import PredictorInfo


def _seeded_conv(in_ch: int, out_ch: int, kernel: int, seed: int) -> nn.Conv2d:
    """A conv layer with seeded weights (same weights in every process)."""
    gen = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / (in_ch * kernel * kernel) ** 0.5)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
    return conv


class Pointwise(nn.Module):
    """A per-pixel model: 1x1 conv, tanh, 1x1 conv. Receptive field one pixel."""

    def __init__(self, in_ch: int = 3, out_ch: int = 2, seed: int = 0):
        super().__init__()
        self.a = _seeded_conv(in_ch, 8, 1, seed)
        self.b = _seeded_conv(8, out_ch, 1, seed + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


class SmallConv(nn.Module):
    """Two 3x3 convs: receptive field 5 x 5 pixels, well inside the blending margin."""

    def __init__(self, in_ch: int = 3, out_ch: int = 2, seed: int = 0):
        super().__init__()
        self.a = _seeded_conv(in_ch, 8, 3, seed)
        self.b = _seeded_conv(8, out_ch, 3, seed + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


class Coarse(nn.Module):
    """Average-pools by 4 then a 1x1 conv: output stride 4 (a stand-in for patch-embedding models)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 5, seed: int = 0):
        super().__init__()
        self.pool = nn.AvgPool2d(4)
        self.conv = _seeded_conv(in_ch, out_ch, 1, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class Logged(nn.Module):
    """Wraps a model; logs each forward pass to $GEODINO_TEST_LOG and sleeps $GEODINO_TEST_SLEEP s.

    A log line is ``pid batch real``: ``real`` counts the patches that are not batch padding (all-zero inputs).
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log = os.environ.get("GEODINO_TEST_LOG")
        if log:
            with open(log, "a") as fh:
                real = int((x.flatten(1).abs().sum(dim=1) > 0).sum())
                fh.write(f"{os.getpid()} {x.shape[0]} {real}\n")
        delay = float(os.environ.get("GEODINO_TEST_SLEEP", "0"))
        if delay:
            time.sleep(delay)
        return self.inner(x)


def _with_info(model: nn.Module, **info: Any) -> nn.Module:
    model.geodino_info = PredictorInfo(**info)
    return model


def pointwise() -> nn.Module:
    """3 bands -> 2 regression channels, per pixel."""
    return _with_info(Pointwise(), in_bands=3, out_channels=2, kind="regression", name="pointwise", tile=64)


def small_conv() -> nn.Module:
    """3 bands -> 2 regression channels, 5 x 5 receptive field."""
    return _with_info(SmallConv(), in_bands=3, out_channels=2, kind="regression", name="small_conv", tile=64)


def classifier() -> nn.Module:
    """3 bands -> 4 classes (logits), per pixel, with class names and colours."""
    return _with_info(
        Pointwise(out_ch=4, seed=7),
        in_bands=3,
        out_channels=4,
        kind="classification",
        name="classifier",
        tile=64,
        class_names=("water", "forest", "field", "urban"),
        class_colours=((0, 0, 255), (0, 128, 0), (255, 255, 0), (200, 0, 0)),
    )


def coarse() -> nn.Module:
    """3 bands -> 5 channels at output stride 4."""
    return _with_info(Coarse(), in_bands=3, out_channels=5, kind="embedding", factor=4, name="coarse", tile=64)


def slow_pointwise() -> nn.Module:
    """``pointwise`` with a call log and an optional delay (see the module docstring)."""
    return _with_info(
        Logged(Pointwise()), in_bands=3, out_channels=2, kind="regression", name="slow_pointwise", tile=64
    )


def one_band() -> nn.Module:
    """1 band -> 1 regression channel (for single-band rasters such as canopy height)."""
    return _with_info(Pointwise(in_ch=1, out_ch=1), in_bands=1, out_channels=1, kind="regression", name="one_band")


BUILDS = {"counted": 0}


def counted_pointwise() -> nn.Module:
    """``pointwise``, counting how many times this process built it (in ``BUILDS["counted"]``)."""
    BUILDS["counted"] += 1
    time.sleep(0.05)  # widen the window in which racing threads could build twice
    return _with_info(Pointwise(), in_bands=3, out_channels=2, kind="regression", name="counted")
