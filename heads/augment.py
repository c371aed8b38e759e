"""Augmentations valid for overhead imagery: the 8 symmetries of the square (dihedral group D4), applied to
images and targets together.

Transform t in 0..7: first a left-right flip (mirror of the column axis) when ``t >= 4``, then a rotation by
``t % 4`` quarter turns counter-clockwise (`torch.rot90` / `numpy.rot90` over the last two axes). So t = 0 is the
identity, 1..3 the rotations, 4 the left-right flip, 6 the up-down flip (flip + half turn), 5 and 7 the two
diagonal mirrors. The index is what the feature cache keys on: features of chip i under transform t are computed
once and reused whenever the same (i, t) comes up again.

Sets: "d4" = all 8, "flips" = {0, 2, 4, 6} (identity, half turn, the two axis flips), None = {0}.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

__all__ = ["AUGMENT_SETS", "N_TRANSFORMS", "apply_d4", "draw_transforms", "invert_d4", "transform_set"]

N_TRANSFORMS = 8
AUGMENT_SETS: dict[str | None, tuple[int, ...]] = {"d4": tuple(range(8)), "flips": (0, 2, 4, 6), None: (0,)}

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def transform_set(augment: str | None) -> tuple[int, ...]:
    """The transform indices of an augmentation name ("d4", "flips" or None)."""
    if augment not in AUGMENT_SETS:
        raise ValueError(f"augment must be one of {list(AUGMENT_SETS)}, got {augment!r}")
    return AUGMENT_SETS[augment]


def _check(t: int) -> int:
    t = int(t)
    if not 0 <= t < N_TRANSFORMS:
        raise ValueError(f"D4 transform index must be 0..7, got {t}")
    return t


def apply_d4(x: Array, t: int) -> Array:
    """Transform `t` of an array or tensor over its last two axes (..., H, W); H = W for rotations by 1 or 3.

    Works on images (N, C, T, T) and targets (N, T, T) alike, so the same `t` keeps them aligned.
    """
    t = _check(t)
    if isinstance(x, torch.Tensor):
        y = torch.flip(x, dims=(-1,)) if t >= 4 else x
        return torch.rot90(y, t % 4, dims=(-2, -1)) if t % 4 else y
    y = x[..., ::-1] if t >= 4 else x
    return np.ascontiguousarray(np.rot90(y, t % 4, axes=(-2, -1)))


def invert_d4(t: int) -> int:
    """The index of the inverse transform: rotations invert to the opposite turn, flips are their own inverse."""
    t = _check(t)
    return t if t >= 4 else (4 - t) % 4


def draw_transforms(n: int, augment: str | None, rng: np.random.Generator) -> np.ndarray:
    """(n,) int64 transform indices drawn uniformly from the set `augment`, reproducible by `rng`."""
    choices = np.asarray(transform_set(augment), dtype=np.int64)
    if len(choices) == 1:
        return np.zeros(n, dtype=np.int64)
    return rng.choice(choices, size=n)
