"""Blockwise iBOT masks over the patch grid of global crops (pure numpy).

Facts from the DINOv3 recipe (dinov3-reference.md section 2): half of the global crops get a mask; the masked
crops' ratios are spread linearly over ``[0.1, 0.5]`` (crop ``i`` of ``n`` draws its ratio uniformly in the i-th of
``n`` equal sub-intervals); masks are unions of rectangular blocks of at least 4 patches with aspect ratio in
``[0.3, 1/0.3]``, each block at most half the grid.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["BlockMaskGenerator", "sample_masks"]


class BlockMaskGenerator:
    """Masks of an exact number of patches, made of rectangular blocks.

    Args:
        grid: patch grid ``(h, w)`` of a global crop.
        min_block: fewest patches in one block (4 in the recipe).
        max_block: most patches in one block; default half the grid.
        aspect: aspect-ratio range ``(lo, hi)`` of a block (height / width), drawn log-uniformly.
        attempts: block placements tried per block before giving up on blocks.
    """

    def __init__(
        self,
        grid: tuple[int, int],
        *,
        min_block: int = 4,
        max_block: int | None = None,
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        attempts: int = 10,
    ) -> None:
        self.height, self.width = int(grid[0]), int(grid[1])
        self.num_patches = self.height * self.width
        self.min_block = int(min_block)
        self.max_block = int(max_block) if max_block is not None else max(self.min_block, self.num_patches // 2)
        self.aspect = (float(aspect[0]), float(aspect[1]))
        self.log_aspect = (math.log(aspect[0]), math.log(aspect[1]))
        self.attempts = int(attempts)

    def _block(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> int:
        """Add one block masking at most ``budget`` new patches; returns how many it masked (0: none fitted)."""
        for _ in range(self.attempts):
            area = rng.uniform(self.min_block, max(self.min_block, min(budget, self.max_block)))
            ratio = math.exp(rng.uniform(*self.log_aspect))
            h = round(math.sqrt(area * ratio))
            w = round(math.sqrt(area / ratio))
            if h * w < self.min_block or h > self.height or w > self.width:
                continue
            if not self.aspect[0] <= h / w <= self.aspect[1]:  # rounding to whole patches can leave the range
                continue
            top = int(rng.integers(0, self.height - h + 1))
            left = int(rng.integers(0, self.width - w + 1))
            region = mask[top : top + h, left : left + w]
            new = h * w - int(region.sum())
            if 0 < new <= budget:
                region[...] = True
                return new
        return 0

    def _grow(self, mask: np.ndarray, budget: int, rng: np.random.Generator) -> None:
        """Mask ``budget`` more patches next to masked ones (keeps every masked region connected to a block)."""
        for _ in range(budget):
            border = np.zeros_like(mask)
            border[1:] |= mask[:-1]
            border[:-1] |= mask[1:]
            border[:, 1:] |= mask[:, :-1]
            border[:, :-1] |= mask[:, 1:]
            candidates = np.flatnonzero(border & ~mask)
            if candidates.size == 0:
                candidates = np.flatnonzero(~mask)
            mask.flat[int(rng.choice(candidates))] = True

    def __call__(self, num_masked: int, rng: np.random.Generator) -> np.ndarray:
        """A (h, w) bool mask with exactly ``num_masked`` True patches (0 gives an empty mask).

        A non-zero request smaller than ``min_block`` is raised to ``min_block``, so a mask is always made of
        blocks of at least that size.
        """
        mask = np.zeros((self.height, self.width), dtype=bool)
        if num_masked <= 0:
            return mask
        target = min(self.num_patches, max(int(num_masked), self.min_block))
        masked = 0
        while masked < target:
            added = self._block(mask, target - masked, rng)
            if added == 0:
                break
            masked += added
        if masked == 0:  # no block fitted (a grid too small for the aspect range): seed one patch, grow a block
            mask.flat[int(rng.integers(self.num_patches))] = True
            masked = 1
        self._grow(mask, target - masked, rng)
        return mask


def sample_masks(
    n_crops: int,
    generator: BlockMaskGenerator,
    rng: np.random.Generator,
    *,
    probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
) -> np.ndarray:
    """Masks for ``n_crops`` global crops: ``int(n_crops * probability)`` masked, with stratified ratios.

    Args:
        n_crops: number of global crops in the batch (n_global x B).
        generator: the block mask generator for the crops' patch grid.
        rng: random generator.
        probability: fraction of crops that get a mask (0.5 in the recipe).
        ratio_range: ``(min, max)`` mask ratio (0.1, 0.5 in the recipe).

    Returns:
        (n_crops, h * w) bool, masked crops at random positions in the batch.
    """
    n_masked = int(n_crops * probability)
    edges = np.linspace(ratio_range[0], ratio_range[1], n_masked + 1)
    masks = []
    for i in range(n_masked):
        ratio = rng.uniform(edges[i], edges[i + 1])
        masks.append(generator(round(ratio * generator.num_patches), rng).reshape(-1))
    empty = np.zeros(generator.num_patches, dtype=bool)
    masks.extend(empty for _ in range(n_crops - n_masked))
    order = rng.permutation(n_crops)
    return np.stack(masks)[order] if masks else np.zeros((0, generator.num_patches), dtype=bool)
