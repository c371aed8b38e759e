"""Depth (height) bins and the normalisations that turn bin logits into metres: pure functions over tensors.

A binned head predicts N logits per pixel; a normalisation turns them into weights w_k >= 0 with sum 1, and the
height is the weighted mean of the bin centres b_k. Strategies (dpt-chmv2-reference.md, section 3):

- bins "linear": ``linspace(d_min, d_max, N)``; "log": ``exp(linspace(ln d_min, ln d_max, N))``;
  "chmv2_mixlog": a blend that starts logarithmic and ends linear, over ``[d_min, d_max / 8]``.
- norms "linear": ``(relu(z) + 0.1) / sum``; "softmax"; "sigmoid": ``sigmoid(z) / sum``; "chmv2_mixlog":
  ``(relu(z) + 1e-8) / sum`` and a final x8 that undoes the /8 of the mixlog bins.

Meta's code lets bins and norm be chosen separately; mixing "chmv2_mixlog" with another strategy scales the
result by 8 too much or too little, silently, so geodino refuses that combination.
With N = 1 there are no bins: the height is ``relu(z) + d_min`` (plain regression).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

BinsStrategy = Literal["linear", "log", "chmv2_mixlog"]
NormStrategy = Literal["linear", "softmax", "sigmoid", "chmv2_mixlog"]
BINS_STRATEGIES = ("linear", "log", "chmv2_mixlog")
NORM_STRATEGIES = ("linear", "softmax", "sigmoid", "chmv2_mixlog")

# chmv2_mixlog: bins cover [d_min, d_max / MIXLOG_SCALE]; the normalisation multiplies by it again.
MIXLOG_SCALE = 8.0


@dataclass(frozen=True)
class BinsConfig:
    """How a binned head's logits become a height.

    Attributes:
        n_bins: number of logits per pixel (1: plain regression, no bins).
        min_depth: smallest height d_min, in `units`.
        max_depth: largest height d_max.
        bins_strategy: "linear", "log" or "chmv2_mixlog".
        norm_strategy: "linear", "softmax", "sigmoid" or "chmv2_mixlog".
    """

    n_bins: int = 256
    min_depth: float = 0.001
    max_depth: float = 96.0
    bins_strategy: BinsStrategy = "chmv2_mixlog"
    norm_strategy: NormStrategy = "chmv2_mixlog"

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {self.n_bins}")
        if self.bins_strategy not in BINS_STRATEGIES:
            raise ValueError(f"bins_strategy must be one of {BINS_STRATEGIES}, got {self.bins_strategy!r}")
        if self.norm_strategy not in NORM_STRATEGIES:
            raise ValueError(f"norm_strategy must be one of {NORM_STRATEGIES}, got {self.norm_strategy!r}")
        if (self.bins_strategy == "chmv2_mixlog") != (self.norm_strategy == "chmv2_mixlog"):
            raise ValueError(
                f"bins_strategy={self.bins_strategy!r} with norm_strategy={self.norm_strategy!r}: chmv2_mixlog bins "
                f"stop at max_depth/8 and only the chmv2_mixlog norm multiplies by 8 again; use both or neither"
            )
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth} and {self.max_depth}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_channels(self, n_channels: int, what: str = "the head") -> None:
        """Refuse a head whose logit count differs from `n_bins`."""
        if n_channels != self.n_bins:
            raise ValueError(
                f"bins configuration expects {self.n_bins} logits per pixel, but {what} has {n_channels} output "
                f"channels"
            )


def make_bins(
    strategy: BinsStrategy, n_bins: int, min_depth: float, max_depth: float, device: torch.device | None = None
) -> Tensor:
    """Bin centres b_k, (N,) float32, built with `torch.linspace` as the reference does (bit for bit)."""
    if strategy == "linear":
        return torch.linspace(min_depth, max_depth, n_bins, device=device)
    if strategy == "log":
        lo, hi = torch.log(torch.tensor(min_depth)), torch.log(torch.tensor(max_depth))  # float32 scalars
        return torch.exp(torch.linspace(float(lo), float(hi), n_bins, device=device))
    if strategy == "chmv2_mixlog":
        top = max_depth / MIXLOG_SCALE
        lin = torch.linspace(min_depth, top, n_bins, device=device)
        lo, hi = torch.log(torch.tensor(min_depth)), torch.log(torch.tensor(top))
        log = torch.exp(torch.linspace(float(lo), float(hi), n_bins, device=device))
        t = torch.linspace(1.0, 0.0, n_bins, device=device)  # 1 = fully logarithmic, 0 = fully linear
        return t * log + (1.0 - t) * lin
    raise ValueError(f"unknown bins strategy {strategy!r}; known: {BINS_STRATEGIES}")


def bin_weights(logits: Tensor, strategy: NormStrategy) -> Tensor:
    """Logits (B, N, H, W) -> weights (B, N, H, W), non-negative, summing to 1 over N (in the logits' dtype)."""
    if strategy == "chmv2_mixlog":
        y = torch.relu(logits)
        # Shift so the smallest weight is positive; y >= 0, so this is 1e-8 unless there are NaNs.
        shift = torch.clamp(-y.amin(dim=1, keepdim=True), 0.0, 1e-4) + 1e-8
        y = y + shift
        total = torch.nan_to_num(y.sum(dim=1, keepdim=True), nan=1.0, posinf=1.0, neginf=1.0).clamp_min(1e-12)
        return y / total
    if strategy == "linear":
        y = torch.relu(logits) + 0.1
        return y / y.sum(dim=1, keepdim=True)
    if strategy == "softmax":
        return torch.softmax(logits, dim=1)
    if strategy == "sigmoid":
        y = torch.sigmoid(logits)
        return y / y.sum(dim=1, keepdim=True)
    raise ValueError(f"unknown norm strategy {strategy!r}; known: {NORM_STRATEGIES}")


def _scaled_bins(bins: Tensor, strategy: NormStrategy) -> tuple[Tensor, float]:
    """Bin centres as the norm uses them and the factor applied to the weighted mean."""
    if strategy == "chmv2_mixlog":
        return bins.clamp_min(1e-12), MIXLOG_SCALE
    return bins, 1.0


def logits_to_depth(logits: Tensor, bins: Tensor, strategy: NormStrategy, min_depth: float = 0.001) -> Tensor:
    """Bin logits (B, N, H, W) -> height (B, 1, H, W): ``scale * sum_k w_k b_k`` (N = 1: relu(z) + d_min)."""
    if logits.shape[1] == 1:
        return torch.relu(logits) + min_depth
    weights = bin_weights(logits, strategy)
    b, scale = _scaled_bins(bins.to(weights.dtype), strategy)
    depth = torch.einsum("bnhw,n->bhw", weights, b).unsqueeze(1)
    if strategy == "chmv2_mixlog":
        return scale * depth.clamp_min(1e-12)
    return depth


def depth_and_spread(
    logits: Tensor, bins: Tensor, strategy: NormStrategy, min_depth: float = 0.001
) -> tuple[Tensor, Tensor]:
    """Height and the spread of the bin distribution, each (B, 1, H, W), in the height's units.

    The spread is the standard deviation of the height under the bin weights,
    ``sqrt(sum_k w_k (s b_k - d)^2)`` with d the height and s the norm's scale: 0 when one bin holds all the
    weight, large when the weight is spread over distant bins. Plain regression (N = 1) has no spread (zeros).
    """
    depth = logits_to_depth(logits, bins, strategy, min_depth)
    if logits.shape[1] == 1:
        return depth, torch.zeros_like(depth)
    weights = bin_weights(logits, strategy)
    b, scale = _scaled_bins(bins.to(weights.dtype), strategy)
    centres = (scale * b).view(1, -1, 1, 1)
    variance = (weights * (centres - depth) ** 2).sum(dim=1, keepdim=True)
    return depth, variance.clamp_min(0.0).sqrt()
