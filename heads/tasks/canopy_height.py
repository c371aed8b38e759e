"""Canopy height: the head's outputs, losses, decoding and saved-model fields.

Two ways to predict a height in metres, both giving a non-negative (B, 1, H, W) map from the model's forward:

- "binned" (the CHMv2 recipe, default for the DPT head): the head emits the 256 CHMv2 bin logits and
  `geodino.heads.bins` turns them into a height (a weighted mean of mixed log/linear bin centres, 0..96 m). The
  loss is L1 on that height (no per-bin targets). Not SiLog, as depth heads often are: at lambda = 0.85 it
  weighs the absolute scale by only 0.15, and a binned head starts far off scale (uniform bin weights: ~26 m);
  on the synthetic test chips (heights 0..10 m, linear head, 15 epochs) SiLog left an MAE of 8.8 m, L1 3.4 m.
- "l1" / "silog" (direct regression, default "l1" for the other heads): one output channel, made non-negative by
  the bins module's one-bin case, ``height = relu(z) + d_min`` with d_min = 1 mm (`REGRESSION_BINS`).

Targets are (B, H, W) float32 metres with NaN where unlabelled; 0 m is a valid height and is never masked.

SiLog (scale-invariant log error; Eigen et al. 2014, in the square-root form of BTS / AdaBins, without their x10):
with ``d_i = ln(pred_i + eps) - ln(target_i + eps)`` over the n labelled pixels of the batch,

    silog = sqrt( mean(d^2) - lambda * mean(d)^2 ),   lambda = 0.85 (BTS, AdaBins), eps = 0.1 m.

eps keeps the 0 m of bare ground finite (the literature's depth maps have no zeros); lambda = 0 gives the RMSE
of log heights, lambda = 1 the fully scale-invariant error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from geodino.heads.bins import BinsConfig
from geodino.heads.chmv2 import CHMV2_BINS

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

TASK = "canopy-height"
LOSSES = ("binned", "l1", "silog")
SILOG_LAMBDA = 0.85
SILOG_EPS = 0.1
UNITS = "m"
# One "bin": the height is relu(z) + 1 mm (see geodino.heads.bins.logits_to_depth); max_depth is not used.
REGRESSION_BINS = BinsConfig(
    n_bins=1, min_depth=0.001, max_depth=CHMV2_BINS.max_depth, bins_strategy="linear", norm_strategy="linear"
)

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_loss(head: str) -> str:
    """ "binned" for the DPT head (CHMv2), "l1" for the others."""
    return "binned" if head == "dpt" else "l1"


def head_kwargs(loss: str, n_classes: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """`DenseHead` output options for a canopy-height head trained with `loss`.

    Args:
        loss: "binned", "l1" or "silog".
        n_classes: must be None or 1 (a height is one channel).
        options: the caller's head keyword arguments; ``bins`` (a `BinsConfig` or dict) is taken from here for
            "binned" (default: the CHMv2 bins); ``uncertainty`` passes through.
    """
    if loss not in LOSSES:
        raise ValueError(f"canopy-height losses are {LOSSES}, got {loss!r}")
    if n_classes not in (None, 1):
        raise ValueError(f"canopy height is one channel of metres; n_classes={n_classes} does not apply")
    bins = options.pop("bins", None)
    if loss == "binned":
        cfg = BinsConfig(**bins) if isinstance(bins, dict) else (bins or CHMV2_BINS)
        if cfg.n_bins < 2:
            raise ValueError(f"loss 'binned' needs 2 or more bins, got n_bins={cfg.n_bins}; use 'l1' or 'silog'")
        return {
            "kind": "regression",
            "out_channels": cfg.n_bins,
            "bins": cfg,
            "units": UNITS,
            "valid_range": (0.0, cfg.max_depth),
        }
    if bins is not None:
        raise ValueError(f"loss {loss!r} is direct regression (one channel); bins={bins} need loss 'binned'")
    if options.get("uncertainty"):
        raise ValueError("uncertainty is the spread of the bin distribution: it needs loss 'binned'")
    return {
        "kind": "regression",
        "out_channels": 1,
        "bins": REGRESSION_BINS,
        "units": UNITS,
        "valid_range": (0.0, None),
    }


def _heights_and_mask(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Predicted heights (B, H, W) from channel 0, the targets and their labelled mask, checked."""
    if outputs.ndim != 4 or targets.ndim != 3 or outputs.shape[0] != targets.shape[0]:
        raise ValueError(f"expected outputs (B, K, H, W) and targets (B, H, W), got {outputs.shape}, {targets.shape}")
    if outputs.shape[-2:] != targets.shape[-2:]:
        raise ValueError(f"outputs are {tuple(outputs.shape[-2:])} pixels, targets {tuple(targets.shape[-2:])}")
    valid = torch.isfinite(targets)
    return outputs[:, 0], targets, valid


def _no_labels(outputs: Tensor) -> Tensor:
    """A zero loss still attached to the graph (a batch without labelled pixels teaches nothing)."""
    return outputs.sum() * 0.0


def l1_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """Mean |pred - target| over labelled pixels, in metres.

    Args:
        outputs: (B, K, H, W); channel 0 is the height.
        targets: (B, H, W) metres, NaN where unlabelled.
    """
    pred, target, valid = _heights_and_mask(outputs, targets)
    n = int(valid.sum())
    if not n:
        return _no_labels(outputs)
    # masked sum instead of boolean indexing (a gather over the batch); NaN targets zeroed so no NaN gradient
    return ((pred - torch.nan_to_num(target)).abs() * valid).sum() / n


def silog_loss(outputs: Tensor, targets: Tensor, *, lam: float = SILOG_LAMBDA, eps: float = SILOG_EPS) -> Tensor:
    """SiLog over the batch's labelled pixels (formula in the module doc).

    Args:
        outputs: (B, K, H, W); channel 0 is the height (>= 0).
        targets: (B, H, W) metres, NaN where unlabelled.
        lam: lambda, the weight of the squared mean log error (0..1).
        eps: added to heights before the log, metres.
    """
    if not 0.0 <= lam <= 1.0 or eps <= 0:
        raise ValueError(f"SiLog needs 0 <= lambda <= 1 and eps > 0, got lambda={lam}, eps={eps}")
    pred, target, valid = _heights_and_mask(outputs, targets)
    if not bool(valid.any()):
        return _no_labels(outputs)
    d = torch.log(pred[valid].clamp_min(0.0) + eps) - torch.log(target[valid] + eps)
    # mean(d^2) - lam mean(d)^2 >= (1 - lam) var(d) >= 0 up to rounding; the floor keeps sqrt's gradient finite
    return (d.square().mean() - lam * d.mean().square()).clamp_min(1e-12).sqrt()


def loss_fn(loss: str, *, silog_lambda: float = SILOG_LAMBDA, silog_eps: float = SILOG_EPS) -> LossFn:
    """The training loss of `loss` ("binned" and "l1": L1 on the height; "silog": SiLog)."""
    if loss not in LOSSES:
        raise ValueError(f"canopy-height losses are {LOSSES}, got {loss!r}")
    if loss in ("l1", "binned"):
        return l1_loss

    def silog(outputs: Tensor, targets: Tensor) -> Tensor:
        return silog_loss(outputs, targets, lam=silog_lambda, eps=silog_eps)

    return silog


def decode(outputs: Tensor) -> Tensor:
    """Model outputs (B, K, H, W) -> heights (B, H, W) in metres (channel 0; a second channel is the spread)."""
    return outputs[:, 0]


def info_fields(model: nn.Module | None = None) -> dict[str, Any]:
    """ModelInfo fields of a saved canopy-height model: regression, metres, valid from 0 m (to the bins' top).

    Channel names come from the head's ``describe()`` ("height", with a binned head's spread "height_std").

    Args:
        model: the trained `DenseModel`, when at hand: a binned head bounds the range at its largest bin and an
            uncertainty head adds a second channel.
    """
    head = getattr(model, "head", None)
    bins = getattr(head, "bins", None)
    top = bins.max_depth if bins is not None and bins.n_bins > 1 else None
    uncertainty = bool(getattr(head, "uncertainty", False))
    return {
        "kind": "regression",
        "out_channels": 2 if uncertainty else 1,
        "units": UNITS,
        "valid_range": (0.0, top),
        "activation": "none",
    }
