"""Per-band normalisation of raw raster values before they reach a model (pure numpy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Normalization", "default_scale"]


def default_scale(dtype: Any) -> float:
    """The conventional factor from a raster dtype's raw values to the [0, 1]-ish range models expect.

    uint8 imagery -> 1/255; uint16 -> 1/10000 (the Sentinel-2 / Landsat surface-reflectance convention of
    reflectance x 10000); floating point (assumed already in physical units or reflectance) -> 1.0. Other
    integer types (int16 elevations, int32 counts...) have no convention: 1.0, values are used as they are.
    """
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return 1.0 / 255.0
    if dt == np.uint16:
        return 1.0 / 10000.0
    if np.issubdtype(dt, np.number) or dt == np.bool_:
        return 1.0
    raise ValueError(f"no default scale for non-numeric dtype {dt}")


@dataclass(frozen=True)
class Normalization:
    """``(x * scale - mean) / std`` per band, with nodata pixels zeroed.

    Attributes:
        scale: Factor applied to raw values first (see :func:`default_scale`).
        mean: Per-band mean, after scaling.
        std: Per-band standard deviation, after scaling (> 0).
    """

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) != len(self.std):
            raise ValueError(f"{len(self.mean)} means but {len(self.std)} standard deviations")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"standard deviations must be > 0, got {self.std}")

    @classmethod
    def for_dtype(cls, dtype: Any, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        """A normalisation with the :func:`default_scale` of ``dtype``."""
        return cls(default_scale(dtype), tuple(mean), tuple(std))

    @property
    def bands(self) -> int:
        """Number of bands C this normalisation expects."""
        return len(self.mean)

    def apply(self, data: np.ndarray, valid: np.ndarray, *, in_place: bool = False) -> np.ndarray:
        """Normalise raw values.

        Args:
            data: (C, h, w) raw values (float32 from :meth:`RasterSource.read`).
            valid: (h, w) bool; False pixels are set to 0.0 in every band, so nodata values (e.g. -3.4e38, NaN)
                never reach a model.
            in_place: Overwrite ``data`` (float32 only) instead of allocating the result: a chunk's raw window is
                the largest buffer of a mapping task, and it is not needed afterwards.

        Returns:
            (C, h, w) float32.

        Raises:
            ValueError: If C differs from the number of bands of this normalisation, or shapes disagree.
        """
        if data.ndim != 3 or data.shape[0] != self.bands:
            raise ValueError(
                f"normalisation expects (C, h, w) data with C = {self.bands} bands, got shape {data.shape}"
            )
        if valid.shape != data.shape[1:]:
            raise ValueError(f"valid mask of shape {valid.shape} does not match data of shape {data.shape}")
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        out = data if in_place and data.dtype == np.float32 else None
        with np.errstate(over="ignore", invalid="ignore"):
            # (x * scale - mean) / std in float32, one buffer, no temporaries.
            out = np.multiply(data, np.float32(self.scale), out=out, dtype=np.float32)
            out -= mean
            out /= std
        out[:, ~valid] = 0.0
        return out
