"""Land cover: a K-class head (logits), cross-entropy (+ Dice) with class weights, decoding and saved-model fields.

Targets are (B, H, W) int64 class indices 0..K-1, `IGNORE_INDEX` (-1) where unlabelled. Over the labelled pixels:

- CE: ``sum_i w_{y_i} (-log softmax(z_i)_{y_i}) / sum_i w_{y_i}`` (PyTorch's weighted mean; w = 1 without class
  weights).
- Dice (soft, on softmax probabilities p): per class c, ``D_c = (2 sum_i p_ic y_ic + s) / (sum_i p_ic +
  sum_i y_ic + s)`` with y the one-hot targets and s = 1 (smoothing, so a class absent from both the batch and the
  prediction scores 1); loss ``1 - mean_c D_c``, unweighted over the K classes.
- "ce+dice": ``CE + dice_weight * Dice``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from geodino.heads.data.chips import IGNORE_INDEX

TASK = "land-cover"
LOSSES = ("ce", "ce+dice")
DICE_SMOOTH = 1.0

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_loss(head: str) -> str:
    """Cross-entropy, whatever the head."""
    return "ce"


def head_kwargs(loss: str, n_classes: int | None, options: dict[str, Any]) -> dict[str, Any]:
    """`DenseHead` output options for a K-class head: classification logits, with class names when given.

    Args:
        loss: "ce" or "ce+dice".
        n_classes: K (None: the number of ``class_names`` in `options`).
        options: the caller's head keyword arguments; ``class_names`` is taken from here.
    """
    if loss not in LOSSES:
        raise ValueError(f"land-cover losses are {LOSSES}, got {loss!r}")
    names = options.pop("class_names", None)
    if n_classes is None:
        if names is None:
            raise ValueError("land cover needs n_classes or class_names")
        n_classes = len(names)
    if n_classes < 2:
        raise ValueError(f"land cover needs 2 or more classes, got n_classes={n_classes}")
    if names is not None and len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for n_classes={n_classes}")
    if options.get("bins") is not None or options.get("uncertainty"):
        raise ValueError("bins and uncertainty are for canopy-height heads, not land cover")
    return {
        "kind": "classification",
        "out_channels": int(n_classes),
        "class_names": tuple(names) if names is not None else None,
    }


def _check(outputs: Tensor, targets: Tensor) -> Tensor:
    """The labelled mask (B, H, W) after checking shapes and class indices."""
    if outputs.ndim != 4 or targets.ndim != 3 or outputs.shape[0] != targets.shape[0]:
        raise ValueError(f"expected logits (B, K, H, W) and targets (B, H, W), got {outputs.shape}, {targets.shape}")
    if outputs.shape[-2:] != targets.shape[-2:]:
        raise ValueError(f"logits are {tuple(outputs.shape[-2:])} pixels, targets {tuple(targets.shape[-2:])}")
    valid = targets != IGNORE_INDEX
    k = outputs.shape[1]
    if bool((valid & ((targets < 0) | (targets >= k))).any()):  # elementwise: no gather over the whole batch
        low, high = int(targets[valid].min()), int(targets[valid].max())
        raise ValueError(
            f"class targets range {low}..{high}, but the head has {k} classes (0..{k - 1}; {IGNORE_INDEX} = unlabelled)"
        )
    return valid


def _weights(class_weights: Sequence[float] | Tensor | None, k: int, like: Tensor) -> Tensor:
    """Class weights (K,) as a tensor next to the logits (ones when None)."""
    if class_weights is None:
        return torch.ones(k, dtype=like.dtype, device=like.device)
    w = torch.as_tensor(class_weights, dtype=like.dtype, device=like.device)
    if w.shape != (k,) or bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"class_weights must be {k} finite non-negative numbers, got {class_weights}")
    return w


def ce_loss(outputs: Tensor, targets: Tensor, class_weights: Sequence[float] | Tensor | None = None) -> Tensor:
    """Weighted cross-entropy over labelled pixels (formula in the module doc).

    Args:
        outputs: logits (B, K, H, W).
        targets: (B, H, W) int64 class indices, `IGNORE_INDEX` where unlabelled.
        class_weights: (K,) per-class weights, or None.
    """
    _check(outputs, targets)
    k = outputs.shape[1]
    w = _weights(class_weights, k, outputs)
    counts = torch.bincount((targets + 1).flatten(), minlength=k + 1)[1:]  # labelled pixels per class
    total = (counts.to(w.dtype) * w).sum()
    if not bool(total > 0):
        return outputs.sum() * 0.0
    nll = F.cross_entropy(outputs, targets, weight=w, ignore_index=IGNORE_INDEX, reduction="sum")
    return nll / total


def dice_loss(outputs: Tensor, targets: Tensor, smooth: float = DICE_SMOOTH) -> Tensor:
    """Soft multi-class Dice loss on softmax probabilities over labelled pixels (module doc).

    Args:
        outputs: logits (B, K, H, W).
        targets: (B, H, W) int64 class indices, `IGNORE_INDEX` where unlabelled.
        smooth: s, added to numerator and denominator.
    """
    valid = _check(outputs, targets)
    k = outputs.shape[1]
    if not bool(valid.any()):
        return outputs.sum() * 0.0
    m = valid.unsqueeze(1).to(outputs.dtype)  # (B, 1, H, W)
    p = torch.softmax(outputs, dim=1) * m
    y = F.one_hot(targets.clamp_min(0), k).permute(0, 3, 1, 2).to(outputs.dtype) * m
    inter = (p * y).sum(dim=(0, 2, 3))
    dice = (2.0 * inter + smooth) / (p.sum(dim=(0, 2, 3)) + y.sum(dim=(0, 2, 3)) + smooth)
    return 1.0 - dice.mean()


def loss_fn(loss: str, *, class_weights: Sequence[float] | Tensor | None = None, dice_weight: float = 1.0) -> LossFn:
    """The training loss of `loss`: "ce" or "ce+dice" (``CE + dice_weight * Dice``)."""
    if loss not in LOSSES:
        raise ValueError(f"land-cover losses are {LOSSES}, got {loss!r}")
    if dice_weight < 0:
        raise ValueError(f"dice_weight must be >= 0, got {dice_weight}")

    def ce(outputs: Tensor, targets: Tensor) -> Tensor:
        return ce_loss(outputs, targets, class_weights)

    def ce_dice(outputs: Tensor, targets: Tensor) -> Tensor:
        return ce_loss(outputs, targets, class_weights) + dice_weight * dice_loss(outputs, targets)

    return ce if loss == "ce" else ce_dice


def decode(outputs: Tensor) -> Tensor:
    """Logits (B, K, H, W) -> class indices (B, H, W) int64."""
    return outputs.argmax(dim=1)


def info_fields(
    class_names: Sequence[str] | None = None,
    class_colours: Sequence[Sequence[int]] | None = None,
    model: Any = None,
) -> dict[str, Any]:
    """ModelInfo fields of a saved land-cover model: classification, K classes, names and colours, softmax.

    Args:
        class_names: one name per class (default: the head's).
        class_colours: one (r, g, b) per class, 0..255, or None.
        model: the trained `DenseModel`, for its class count and names.
    """
    head = getattr(model, "head", None)
    names = tuple(class_names) if class_names is not None else getattr(head, "class_names", None)
    if names is None:
        raise ValueError("a land-cover model needs class_names")
    k = int(getattr(head, "out_channels", len(names)))
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a head with {k} classes")
    fields: dict[str, Any] = {
        "kind": "classification",
        "out_channels": k,
        "class_names": names,
        "activation": "softmax",
    }
    if class_colours is not None:
        colours = tuple(tuple(int(v) for v in c) for c in class_colours)
        if len(colours) != k:
            raise ValueError(f"{len(colours)} class colours for {k} classes")
        fields["class_colours"] = colours
    return fields
