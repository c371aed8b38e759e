"""AdamW parameter groups: layer-wise lr decay, patch-embedding lr multiplier, no weight decay on 1-D parameters.

Layers of a ViT of depth L: the patch embedding and the cls / storage / mask tokens are layer 0, block i is layer
i + 1, and everything above (final norms, projection heads) is layer L + 1. A parameter of layer l gets the lr
multiplier ``layerwise_decay ** (L + 1 - l)``, times `patch_embed_lr_mult` for the patch embedding. Biases, norm
weights, LayerScale gammas and the tokens get no weight decay. Parameters with the same multipliers share a group;
each group carries ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer`` (the heads' prototype layers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "apply_schedules",
    "build_optimizer",
    "get_param_groups",
    "last_layer_frozen",
    "layer_id",
    "no_weight_decay",
]

_LAYER0 = ("cls_token", "storage_tokens", "mask_token", "patch_embed.", "rope_embed.")
_TOKENS = ("cls_token", "storage_tokens", "mask_token")


def layer_id(name: str, depth: int) -> int:
    """Layer index of a backbone parameter name (as in ``backbone.named_parameters()``)."""
    if name.startswith(_LAYER0):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norms, LayerScale gammas, tokens and any other 1-D parameter are not decayed."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf == "bias" or "norm" in name or leaf == "gamma" or name.split(".")[-1] in _TOKENS


def get_param_groups(
    backbone: nn.Module,
    heads: Mapping[str, nn.Module] | None = None,
    *,
    layerwise_decay: float = 1.0,
    patch_embed_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Param groups for AdamW over a backbone and its heads (trainable parameters only).

    Args:
        backbone: a `DinoVisionTransformer` (needs ``.blocks``).
        heads: named head modules (e.g. {"dino_head": ..., "ibot_head": ...}); their ``last_layer`` is flagged.
        layerwise_decay: lr factor per layer below the top (1.0: off).
        patch_embed_lr_mult: extra lr factor of the patch embedding.

    Returns:
        groups with keys ``params``, ``names``, ``lr_multiplier``, ``wd_multiplier``, ``is_last_layer``.
    """
    depth = len(backbone.blocks)
    entries: list[tuple[str, nn.Parameter, float, float, bool]] = []
    for name, p in backbone.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        lr_mult = layerwise_decay ** (depth + 1 - lid)
        if name.startswith("patch_embed."):
            lr_mult *= patch_embed_lr_mult
        entries.append((f"backbone.{name}", p, lr_mult, 0.0 if no_weight_decay(name, p) else 1.0, False))
    for head_name, head in (heads or {}).items():
        for name, p in head.named_parameters():
            if not p.requires_grad:
                continue
            is_last = name.startswith("last_layer.")
            entries.append((f"{head_name}.{name}", p, 1.0, 0.0 if no_weight_decay(name, p) else 1.0, is_last))
    groups: dict[tuple[float, float, bool], dict[str, Any]] = {}
    for full_name, p, lr_mult, wd_mult, is_last in entries:
        key = (lr_mult, wd_mult, is_last)
        group = groups.setdefault(
            key,
            {"params": [], "names": [], "lr_multiplier": lr_mult, "wd_multiplier": wd_mult, "is_last_layer": is_last},
        )
        group["params"].append(p)
        group["names"].append(full_name)
    return list(groups.values())


def last_layer_frozen(iteration: int, freeze_last_layer_iters: int) -> bool:
    """Whether the heads' prototype layers stay frozen at `iteration` (the first `freeze_last_layer_iters`)."""
    return iteration < freeze_last_layer_iters


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float, *, freeze_last_layer: bool = False) -> None:
    """Set each group's lr and weight decay from the scheduled values and the group's multipliers.

    With `freeze_last_layer` the prototype layers get lr 0 (AdamW's decoupled decay is scaled by lr, so they do
    not move at all).
    """
    for group in optimizer.param_groups:
        frozen = freeze_last_layer and group.get("is_last_layer", False)
        group["lr"] = 0.0 if frozen else lr * group.get("lr_multiplier", 1.0)
        group["weight_decay"] = wd * group.get("wd_multiplier", 1.0)


def build_optimizer(groups: Iterable[dict[str, Any]], betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW over `groups` (lr and weight decay are set per step by `apply_schedules`)."""
    # fused: one kernel over all tensors (CPU and CUDA); 4-5x faster than the per-tensor loop on CPU for ViT-S + heads
    return torch.optim.AdamW(list(groups), lr=0.0, weight_decay=0.0, betas=betas, fused=True)
