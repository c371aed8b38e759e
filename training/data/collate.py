"""Batch the crops of several windows into the student/teacher batch, with iBOT masks.

The batch (agreed with :mod:`geodino.training.meta_arch`):

- ``global_crops`` (n_global * B, C, Hg, Wg) float32, crops first: every image's crop 0, then every image's crop 1;
- ``local_crops`` (n_local * B, C, Hl, Wl), same order, or None when n_local == 0;
- ``masks`` (n_global * B, Ng) bool, Ng = (Hg / p) * (Wg / p) patches per global crop (True: masked);
- ``gram_crops`` (n_global * B, C, Hgt, Wgt) or None;
- ``n_global``, ``n_local`` ints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geodino.training.data.masking import BlockMaskGenerator, sample_masks

__all__ = ["MultiCropCollate", "crops_first"]


def crops_first(samples: Sequence[dict[str, Any]], key: str) -> Tensor | None:
    """Stack ``samples[b][key][k]`` as crop-major (n * B, C, H, W); None if the key holds no crop."""
    lists = [s[key] for s in samples]
    if lists[0] is None or len(lists[0]) == 0:
        return None
    n = len(lists[0])
    return torch.stack([lists[b][k] for k in range(n) for b in range(len(samples))])


@dataclass
class MultiCropCollate:
    """``collate_fn`` for a DataLoader over :class:`~geodino.training.data.multicrop.MultiCrop` items.

    Args:
        patch_size: backbone patch size.
        global_size: global crop side (for the mask grid).
        mask_probability: fraction of global crops that get a mask.
        mask_ratio: (min, max) mask ratio.
        min_block: fewest patches per mask block.
        aspect: block aspect-ratio range.
    """

    patch_size: int
    global_size: int
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    min_block: int = 4
    aspect: tuple[float, float] = (0.3, 1 / 0.3)

    def __post_init__(self) -> None:
        if self.global_size % self.patch_size:
            raise ValueError(f"global crop size {self.global_size} is not a multiple of the patch {self.patch_size}")
        side = self.global_size // self.patch_size
        self.generator = BlockMaskGenerator((side, side), min_block=self.min_block, aspect=self.aspect)

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Batch ``samples`` (the masks are seeded by the samples' seeds, so batches are reproducible)."""
        global_crops = crops_first(samples, "global_crops")
        assert global_crops is not None
        n_global = len(samples[0]["global_crops"])
        n_local = len(samples[0]["local_crops"] or [])
        rng = np.random.default_rng([int(s["seed"]) for s in samples])
        masks = sample_masks(
            n_global * len(samples),
            self.generator,
            rng,
            probability=self.mask_probability,
            ratio_range=self.mask_ratio,
        )
        return {
            "global_crops": global_crops,
            "local_crops": crops_first(samples, "local_crops"),
            "masks": torch.from_numpy(masks),
            "gram_crops": crops_first(samples, "gram_crops"),
            "n_global": n_global,
            "n_local": n_local,
        }
