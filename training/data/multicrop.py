"""Multi-crop augmentation of one training window: global, local and Gram-teacher crops, valid seen from above.

A window (C, S, S) in scaled units (see :class:`~geodino.training.data.windows.RasterWindows`) becomes
``n_global`` global crops, ``n_local`` local crops and, optionally, one Gram-teacher crop per global crop (the same
box, rotation and flip at the Gram teacher's size, without colour distortion), all normalised per band.

Augmentations (DINOv3 recipe, dinov3-reference.md section 3, adapted to overhead imagery):

- random resized crops (global scale 0.32-1.0, local 0.05-0.32, aspect 3/4-4/3);
- a random 90-degree rotation and a random horizontal flip per crop (with the rotations this gives all eight
  symmetries of the square; there is no "up" in imagery seen from above);
- colour jitter with probability 0.8: brightness 0.4, contrast 0.4, saturation 0.2, in random order, each factor
  drawn per *band group* (for multispectral imagery, e.g. visible / red-edge / SWIR vary independently); the
  reference's hue jitter (0.1) has no N-band meaning and is left out;
- grayscale with probability 0.2 (per band group: every band of the group replaced by the group mean);
- Gaussian blur (sigma 0.1-2.0) with probability 1.0 on the first global crop, 0.1 on the second and 0.5 on local
  crops — the intended probabilities, not the release's inverted ones;
- solarize (values >= 0.5 become 1 - value, in scaled units) with probability 0.2 on the second global crop.

Nodata pixels are filled with the band mean before resizing and set to 0 after normalisation wherever the resized
validity falls below one half.

Mixed crop sizes (high-resolution adaptation, e.g. global 512/768 with Gram-teacher crops 768/1152, local
112-336): the crops of one batch must share a size to be stacked, so :class:`MixedSizeCollate` draws the sizes per
batch (from the batch's window seeds, so a batch is reproducible) and makes the crops there, in the data-loader
worker, with :meth:`MultiCrop.make`; :meth:`MultiCrop.__call__` then passes the window through untouched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Box", "MixedSizeCollate", "MultiCrop", "default_band_groups"]


def default_band_groups(n_bands: int) -> list[list[int]]:
    """Band groups for colour jitter: one group for up to 4 bands, else consecutive groups of 3 (last may be 1-2)."""
    if n_bands <= 4:
        return [list(range(n_bands))]
    return [list(range(i, min(i + 3, n_bands))) for i in range(0, n_bands, 3)]


@dataclass(frozen=True)
class Box:
    """A crop box in window pixels and its geometric augmentation."""

    top: int
    left: int
    height: int
    width: int
    rot90: int = 0  # quarter turns, counter-clockwise
    flip: bool = False  # horizontal flip after the rotation


@dataclass
class MultiCrop:
    """Make the crops of one window.

    Args:
        mean: per-band mean in scaled units (the normalisation).
        std: per-band std in scaled units.
        global_size: global crop side in pixels (a multiple of the patch size).
        local_size: local crop side.
        n_global: number of global crops (2 in the recipe).
        n_local: number of local crops (8 in the recipe; 0 for none).
        global_scale: area fraction range of global crops.
        local_scale: area fraction range of local crops.
        gram_size: Gram-teacher crop side (e.g. 2 x global_size), or None for no Gram-teacher crops.
        band_groups: channel indexes of each jitter group; default :func:`default_band_groups`.
        rotate90: draw random quarter turns.
        flip: draw random horizontal flips.
        jitter: (probability, brightness, contrast, saturation).
        grayscale_p: grayscale probability.
        blur_p: blur probabilities (first global, other globals, local).
        solarize_p: solarize probability on the second global crop.
        defer: return windows untouched from ``__call__`` (a :class:`MixedSizeCollate` makes the crops per batch).
    """

    mean: Sequence[float]
    std: Sequence[float]
    global_size: int = 224
    local_size: int = 96
    n_global: int = 2
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    gram_size: int | None = None
    band_groups: list[list[int]] | None = None
    rotate90: bool = True
    flip: bool = True
    jitter: tuple[float, float, float, float] = (0.8, 0.4, 0.4, 0.2)
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)
    solarize_p: float = 0.2
    defer: bool = False
    _mean: Tensor = field(init=False, repr=False)
    _std: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"{len(self.mean)} means but {len(self.std)} stds")
        if self.n_global < 1:
            raise ValueError(f"n_global must be >= 1, got {self.n_global}")
        self._mean = torch.tensor(list(self.mean), dtype=torch.float32)[:, None, None]
        self._std = torch.tensor(list(self.std), dtype=torch.float32)[:, None, None]
        if self.band_groups is None:
            self.band_groups = default_band_groups(len(self.mean))
        covered = sorted(i for g in self.band_groups for i in g)
        if covered != list(range(len(self.mean))):
            raise ValueError(f"band_groups {self.band_groups} must cover bands 0..{len(self.mean) - 1} once each")

    # ------------------------------------------------------------------ geometry
    def sample_box(self, size: int, scale: tuple[float, float], g: torch.Generator) -> Box:
        """A random resized-crop box inside a ``size`` x ``size`` window, with rotation and flip."""
        area = size * size
        box = None
        for _ in range(10):
            target = area * _uniform(g, *scale)
            ratio = math.exp(_uniform(g, math.log(3 / 4), math.log(4 / 3)))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < h <= size and 0 < w <= size:
                top = int(torch.randint(0, size - h + 1, (1,), generator=g))
                left = int(torch.randint(0, size - w + 1, (1,), generator=g))
                box = (top, left, h, w)
                break
        if box is None:  # fall back to the whole window
            box = (0, 0, size, size)
        rot = int(torch.randint(0, 4, (1,), generator=g)) if self.rotate90 else 0
        flip = bool(_uniform(g) < 0.5) if self.flip else False
        return Box(*box, rot90=rot, flip=flip)

    @staticmethod
    def apply_box(x: Tensor, box: Box, out: int) -> Tensor:
        """Crop ``box`` from (K, S, S), resize to (K, out, out) (bilinear, antialiased), rotate and flip."""
        crop = x[:, box.top : box.top + box.height, box.left : box.left + box.width]
        crop = F.interpolate(crop[None], size=(out, out), mode="bilinear", antialias=True, align_corners=False)[0]
        if box.rot90:
            crop = torch.rot90(crop, box.rot90, dims=(1, 2))
        if box.flip:
            crop = torch.flip(crop, dims=(2,))
        return crop

    # ------------------------------------------------------------------ colour
    def _group_mean(self, x: Tensor, group: list[int]) -> Tensor:
        return x[group].mean(dim=0, keepdim=True)

    def colour(self, x: Tensor, g: torch.Generator) -> Tensor:
        """Colour jitter and grayscale, per band group, on (C, h, w) in scaled units."""
        p, b, c, s = self.jitter
        out = x.clone()
        for group in self.band_groups or []:
            part = out[group]
            if _uniform(g) < p:
                ops = torch.randperm(3, generator=g).tolist()
                for op in ops:
                    if op == 0 and b > 0:
                        part = part * _uniform(g, 1 - b, 1 + b)
                    elif op == 1 and c > 0:
                        m = part.mean()
                        part = (part - m) * _uniform(g, 1 - c, 1 + c) + m
                    elif op == 2 and s > 0 and len(group) > 1:
                        gray = part.mean(dim=0, keepdim=True)
                        part = gray + (part - gray) * _uniform(g, 1 - s, 1 + s)
            if len(group) > 1 and _uniform(g) < self.grayscale_p:
                part = part.mean(dim=0, keepdim=True).expand_as(part)
            out[group] = part
        return out

    @staticmethod
    def blur(x: Tensor, sigma: float) -> Tensor:
        """Separable Gaussian blur of (C, h, w), reflect padding, kernel radius ceil(3 sigma)."""
        radius = max(1, math.ceil(3 * sigma))
        radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
        t = torch.arange(-radius, radius + 1, dtype=x.dtype)
        k = torch.exp(-0.5 * (t / sigma) ** 2)
        k = k / k.sum()
        C = x.shape[0]
        y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
        y = F.conv2d(y, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
        y = F.conv2d(y, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
        return y[0]

    @staticmethod
    def solarize(x: Tensor, threshold: float = 0.5) -> Tensor:
        """Values at or above ``threshold`` become ``1 - value`` (scaled units)."""
        return torch.where(x >= threshold, 1.0 - x, x)

    def _photometric(self, x: Tensor, blur_p: float, solarize_p: float, g: torch.Generator) -> Tensor:
        x = self.colour(x, g)
        if _uniform(g) < blur_p:
            x = self.blur(x, _uniform(g, 0.1, 2.0))
        if _uniform(g) < solarize_p:
            x = self.solarize(x)
        return x

    def _normalise(self, x: Tensor, valid: Tensor) -> Tensor:
        out = (x - self._mean) / self._std
        return out.masked_fill(valid < 0.5, 0.0).contiguous()

    # ------------------------------------------------------------------ main
    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        """Crops of one window at the configured sizes (see :meth:`make`); the window itself when ``defer``."""
        return item if self.defer else self.make(item)

    def make(
        self,
        item: dict[str, Any],
        global_size: int | None = None,
        local_size: int | None = None,
        gram_size: int | None = None,
    ) -> dict[str, Any]:
        """Crops of one window.

        Args:
            item: ``image`` (C, S, S) float32 scaled units, ``valid`` (S, S) bool, ``seed`` int (and any others,
                passed through).
            global_size / local_size / gram_size: sides for this window; None: the configured ones.

        Returns:
            ``global_crops`` list of n_global (C, Hg, Wg), ``local_crops`` list of n_local (C, Hl, Wl),
            ``gram_crops`` list of n_global (C, Hgt, Wgt) or None, all float32 normalised; plus the item's other
            keys except ``image`` / ``valid``.
        """
        global_size = global_size or self.global_size
        local_size = local_size or self.local_size
        gram_size = gram_size or self.gram_size
        image, valid = item["image"], item["valid"]
        if image.shape[0] != len(self.mean):
            raise ValueError(f"window has {image.shape[0]} bands, the normalisation {len(self.mean)}")
        g = torch.Generator().manual_seed(int(item["seed"]))
        size = image.shape[-1]
        v = valid.to(torch.float32)[None]
        # Nodata pixels take the band mean, so resizing never mixes nodata values into valid ones.
        filled = torch.where(valid[None], image, self._mean.expand_as(image))
        stack = torch.cat([filled, v], dim=0)  # (C + 1, S, S): validity rides along with the bands
        globals_, grams, locals_ = [], [], []
        for i in range(self.n_global):
            box = self.sample_box(size, self.global_scale, g)
            crop = self.apply_box(stack, box, global_size)
            blur_p = self.blur_p[0] if i == 0 else self.blur_p[1]
            sol_p = self.solarize_p if i == 1 else 0.0
            globals_.append(self._normalise(self._photometric(crop[:-1], blur_p, sol_p, g), crop[-1:]))
            if gram_size is not None:
                gram = self.apply_box(stack, box, gram_size)
                grams.append(self._normalise(gram[:-1], gram[-1:]))
        for _ in range(self.n_local):
            box = self.sample_box(size, self.local_scale, g)
            crop = self.apply_box(stack, box, local_size)
            locals_.append(self._normalise(self._photometric(crop[:-1], self.blur_p[2], 0.0, g), crop[-1:]))
        out = {k: val for k, val in item.items() if k not in ("image", "valid")}
        out.update(global_crops=globals_, local_crops=locals_, gram_crops=grams if gram_size else None)
        return out


@dataclass
class MixedSizeCollate:
    """``collate_fn`` drawing one global (and Gram-teacher) and one local crop size per batch.

    The draw is uniform over the sizes, from a generator seeded by the batch's window seeds: the same windows give
    the same sizes (a resumed run repeats them), different batches draw independently. Each rank and worker draws
    for its own batches, so two ranks may train one step at different sizes.

    Args:
        crops: the augmentation, built with ``defer=True`` (it receives raw windows).
        global_sizes: global crop sides.
        local_sizes: local crop sides.
        gram_sizes: Gram-teacher side paired with each global side, or None for no Gram-teacher crops.
        collate: batch and mask crops of one global side (e.g. a partial of
            :class:`~geodino.training.data.collate.MultiCropCollate` taking ``global_size``).
    """

    crops: MultiCrop
    global_sizes: Sequence[int]
    local_sizes: Sequence[int]
    gram_sizes: Sequence[int] | None
    collate: Any
    _collates: dict[int, Any] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not self.crops.defer:
            raise ValueError("MixedSizeCollate needs a MultiCrop built with defer=True (it makes the crops itself)")
        if self.gram_sizes is not None and len(self.gram_sizes) != len(self.global_sizes):
            raise ValueError(f"{len(self.gram_sizes)} Gram-teacher sizes for {len(self.global_sizes)} global sizes")

    def sizes_for(self, samples: Sequence[dict[str, Any]]) -> tuple[int, int, int | None]:
        """(global side, local side, Gram-teacher side or None) of the batch of ``samples``."""
        import numpy as np

        rng = np.random.default_rng([*(int(s["seed"]) for s in samples), 2])  # 2: not the masks' stream
        i, j = int(rng.integers(len(self.global_sizes))), int(rng.integers(len(self.local_sizes)))
        gram = None if self.gram_sizes is None else int(self.gram_sizes[i])
        return int(self.global_sizes[i]), int(self.local_sizes[j]), gram

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The batch of ``samples`` (raw windows), every crop of a kind at the batch's size."""
        size, local, gram = self.sizes_for(samples)
        made = [self.crops.make(s, size, local, gram) for s in samples]
        if size not in self._collates:
            self._collates[size] = self.collate(global_size=size)
        return self._collates[size](made)


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    """One float uniform in [lo, hi) from ``g``."""
    return lo + (hi - lo) * float(torch.rand((), generator=g))
