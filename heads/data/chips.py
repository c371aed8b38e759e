"""The chip set: the one in-memory form of labelled training data that pairing, splitting and training share.

Pairing (`geodino.heads.data.pairs`) reads imagery and labels onto one grid and cuts chips on the global patch
grid; splitting (`geodino.heads.data.splits`) assigns chips to train / validation / test; training
(`geodino.heads.train`) consumes a `ChipSet` per split. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from geodino.raster.normalize import Normalization

__all__ = ["IGNORE_INDEX", "TASKS", "ChipSet", "GridRef", "Task"]

Task = Literal["canopy-height", "land-cover"]
TASKS: tuple[Task, ...] = ("canopy-height", "land-cover")

IGNORE_INDEX = -1
"""Class target of unlabelled pixels (land cover); canopy-height targets use NaN."""


@dataclass(frozen=True)
class GridRef:
    """Where one imagery source lies: enough to put a chip back on the map.

    Attributes:
        name: A short name of the imagery (its first file's name), for messages and reports.
        crs: The grid's CRS as WKT (None for rasters without a CRS).
        transform: The grid's affine transform as the 6 numbers (a, b, c, d, e, f).
        shape: (height, width) of the grid in pixels.
    """

    name: str
    crs: str | None
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]


@dataclass(frozen=True)
class ChipSet:
    """N square chips of imagery with their per-pixel targets.

    Attributes:
        images: (N, C, T, T) float32, normalised with `normalization` (nodata pixels zeroed).
        targets: (N, T, T): float32 heights in metres, NaN where unlabelled or imagery is nodata (canopy height;
            0 m is a valid height); int64 class indices 0..K-1, `IGNORE_INDEX` where unlabelled (land cover).
        origins: (N, 2) int64 (row, col) of each chip's top-left pixel in its source's grid; chips lie on the
            global patch grid (origins are multiples of the chip stride).
        source: (N,) int64 index into `grids` of each chip's imagery.
        grids: One `GridRef` per imagery source.
        task: "canopy-height" or "land-cover".
        normalization: How raw pixel values became `images` (the saved model's ModelInfo carries the same).
        class_names: One name per class (land cover), else None.
        band_names: Names of the C input bands, when known.
        gsd: Ground sample distance of the imagery grid in metres, when known.
    """

    images: np.ndarray
    targets: np.ndarray
    origins: np.ndarray
    source: np.ndarray
    grids: tuple[GridRef, ...]
    task: Task
    normalization: Normalization
    class_names: tuple[str, ...] | None = None
    band_names: tuple[str, ...] | None = None
    gsd: float | None = None
    meta: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[2] != self.images.shape[3]:
            raise ValueError(f"images must be (N, C, T, T), got {self.images.shape}")
        if self.targets.shape != (n, *self.images.shape[2:]):
            raise ValueError(f"targets must be {(n, *self.images.shape[2:])}, got {self.targets.shape}")
        if self.origins.shape != (n, 2) or self.source.shape != (n,):
            raise ValueError(
                f"origins must be ({n}, 2) and source ({n},), got {self.origins.shape}, {self.source.shape}"
            )
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task == "land-cover" and not self.class_names:
            raise ValueError("land-cover chips need class_names")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def tile(self) -> int:
        """Chip side T in pixels."""
        return int(self.images.shape[-1])

    @property
    def in_bands(self) -> int:
        """Number of input bands C."""
        return int(self.images.shape[1])

    def labelled(self) -> np.ndarray:
        """(N, T, T) bool: True where a pixel has a target."""
        if self.task == "canopy-height":
            return np.isfinite(self.targets)
        return self.targets != IGNORE_INDEX

    def subset(self, index: np.ndarray) -> ChipSet:
        """The chips at `index` (integer indices or a boolean mask), sharing everything else."""
        index = np.asarray(index)
        return replace(
            self,
            images=self.images[index],
            targets=self.targets[index],
            origins=self.origins[index],
            source=self.source[index],
        )
