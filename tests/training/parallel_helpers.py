"""Helpers of the DDP/FSDP2 tests (imported by name: ``from parallel_helpers import ...``)."""

from __future__ import annotations

from typing import Any

import torch

#: keys of the batch format whose rows are (crops * images), crop-major
ROW_KEYS = ("global_crops", "local_crops", "masks", "gram_crops")


def shard_batch(batch: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    """Rank ``rank``'s part of a global batch: its B images of every crop, as one process of B images would get.

    Rows are crop-major (every image's crop 0, then crop 1, ...), so each crop's block is split, not the rows.
    """
    out = dict(batch)
    for key in ROW_KEYS:
        x = batch.get(key)
        if x is None:
            continue
        n = int(batch["n_global"] if key != "local_crops" else batch["n_local"])
        per_crop = x.unflatten(0, (n, -1))  # (crops, images, ...)
        b = per_crop.shape[1] // world
        out[key] = per_crop[:, rank * b : (rank + 1) * b].flatten(0, 1).contiguous()
    return out


def random_batch(cfg: Any, batch_size: int, seed: int) -> dict[str, Any]:
    """A seeded batch in the meta-architecture's format, shaped by ``cfg``; every image's first global crop masked."""
    gen = torch.Generator().manual_seed(seed)
    c, p = cfg.crops, cfg.student.patch_size
    C = cfg.student.in_chans
    g = torch.randn(c.n_global * batch_size, C, c.global_size, c.global_size, generator=gen)
    local = torch.randn(c.n_local * batch_size, C, c.local_size, c.local_size, generator=gen) if c.n_local else None
    n_patches = (c.global_size // p) ** 2
    masks = torch.zeros(c.n_global * batch_size, n_patches, dtype=torch.bool)
    masks[:batch_size] = torch.rand(batch_size, n_patches, generator=gen) < 0.3
    masks[:batch_size, 0] = True
    gram_crops = None
    if cfg.gram.enabled and cfg.gram.high_res:
        s = cfg.gram_teacher_size
        gram_crops = torch.nn.functional.interpolate(g, size=(s, s), mode="bilinear", align_corners=False)
    return {
        "global_crops": g,
        "local_crops": local,
        "masks": masks,
        "gram_crops": gram_crops,
        "n_global": c.n_global,
        "n_local": c.n_local,
    }
