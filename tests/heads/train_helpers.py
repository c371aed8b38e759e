"""Synthetic, learnable chip sets for the head-training tests (in memory, seeded).

Each chip is a grid of 16 x 16 pixel blocks (one ViT patch each) of random brightness b in [0, 1] (all bands alike
plus a little noise, normalised with mean 0.5 / std 0.25). Canopy height: ``10 * b`` metres per block (so 0 m
occurs); land cover: class 1 ("bright") where b > 0.5, else 0 ("dark"). Optionally a fraction of the pixels is
unlabelled (NaN / IGNORE_INDEX).
"""

from __future__ import annotations

import numpy as np

from geodino.heads.data.chips import IGNORE_INDEX, ChipSet, GridRef, Task
from geodino.raster.normalize import Normalization

BLOCK = 16
NORM = Normalization(scale=1.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def synthetic_chips(
    task: Task, n: int = 8, tile: int = 32, *, seed: int = 0, unlabelled: float = 0.0, bands: int = 3
) -> ChipSet:
    """`n` chips of side `tile` (a multiple of 16) for `task`; `unlabelled`: fraction of pixels without a target."""
    rng = np.random.default_rng(seed)
    blocks = tile // BLOCK
    b = rng.uniform(0.0, 1.0, size=(n, blocks, blocks)).astype(np.float32)
    if task == "canopy-height":
        b[:, 0, 0] = 0.0  # some bare ground: 0 m is a valid height
    bright = np.kron(b, np.ones((BLOCK, BLOCK), np.float32))  # (n, T, T)
    raw = bright[:, None] + rng.normal(0.0, 0.02, size=(n, bands, tile, tile)).astype(np.float32)
    images = ((raw - 0.5) / 0.25).astype(np.float32)
    missing = rng.uniform(size=(n, tile, tile)) < unlabelled
    if task == "canopy-height":
        targets = (10.0 * bright).astype(np.float32)
        targets[missing] = np.nan
        names = None
    else:
        targets = (bright > 0.5).astype(np.int64)
        targets[missing] = IGNORE_INDEX
        names = ("dark", "bright")
    origins = np.stack([np.arange(n) * tile, np.zeros(n)], axis=1).astype(np.int64)
    grid = GridRef("synthetic", None, (1.0, 0.0, 0.0, 0.0, -1.0, 0.0), (n * tile, tile))
    norm = Normalization(NORM.scale, NORM.mean[:1] * bands, NORM.std[:1] * bands)
    return ChipSet(
        images=images,
        targets=targets,
        origins=origins,
        source=np.zeros(n, np.int64),
        grids=(grid,),
        task=task,
        normalization=norm,
        class_names=names,
    )


def marked_chip(tile: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """An image (2, T, T) and a target (T, T) with the top-left corner marked (band 0 = 1, target = 7) and a
    distinct value at the pixel right of it (so flips and rotations are told apart)."""
    image = np.zeros((2, tile, tile), np.float32)
    target = np.zeros((tile, tile), np.int64)
    image[0, 0, 0], target[0, 0] = 1.0, 7
    image[1, 0, 1], target[0, 1] = 2.0, 3
    return image, target
