"""Per-band normalisation statistics of a raster, for backbones adapted to new bands (`geodino.models.bands`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError

from geodino.raster.normalize import default_scale
from geodino.raster.source import RasterSourceError, resolve_bands

__all__ = ["band_statistics", "decimated_shape"]


def decimated_shape(height: int, width: int, max_pixels: int) -> tuple[int, int]:
    """Shape of a read decimated by one integer factor so that it holds at most `max_pixels` pixels.

    Args:
        height: raster rows.
        width: raster columns.
        max_pixels: pixel budget (>= 1).

    Returns:
        (rows, cols): the full shape when it fits, else ``ceil(side / f)`` for the smallest integer f that fits.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    factor = max(1, math.ceil(math.sqrt(height * width / max_pixels)))
    while math.ceil(height / factor) * math.ceil(width / factor) > max_pixels:
        factor += 1
    return math.ceil(height / factor), math.ceil(width / factor)


def _read(ds: rasterio.DatasetReader, indexes: list[int], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) values and (h, w) validity: False where any selected band is nodata, masked or NaN."""
    data = ds.read(indexes, out_shape=(len(indexes), *shape), resampling=Resampling.nearest)
    valid = np.ones(shape, dtype=bool)
    need = [b for b in indexes if set(ds.mask_flag_enums[b - 1]) != {MaskFlags.all_valid}]
    if need:
        masks = ds.read_masks(need, out_shape=(len(need), *shape), resampling=Resampling.nearest)
        valid &= (masks > 0).all(axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    return data, valid


def _scale(ds: rasterio.DatasetReader, indexes: list[int], path: str) -> float:
    """The default scale of the selected bands' dtype; mixed dtypes need an explicit scale."""
    dtypes = {ds.dtypes[b - 1] for b in indexes}
    if len(dtypes) > 1:
        raise ValueError(f"{path}: bands {indexes} have different dtypes {sorted(dtypes)}; pass scale= explicitly")
    return default_scale(dtypes.pop())


def band_statistics(
    path: str | os.PathLike[str],
    bands: Sequence[int | str] | None = None,
    *,
    scale: float | None = None,
    max_pixels: int = 2_000_000,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and standard deviation of a raster's valid pixels, after scaling.

    The raster is read once, decimated (nearest neighbour, one integer factor for both axes) so that at most
    `max_pixels` pixels are read. A pixel counts when every selected band is valid there: GDAL's mask (nodata
    value, alpha band or per-dataset mask) is set and no value is NaN — the same rule as `RasterSource`.

    Args:
        path: a raster file GDAL can open (GeoTIFF, COG, VRT...).
        bands: 1-based band indexes and/or band names (descriptions); None takes every band.
        scale: factor applied to raw values, e.g. 1/10000 for reflectance x 10000; None uses the dtype's
            convention (uint8 1/255, uint16 1/10000, floating point 1.0; see `geodino.raster.normalize.default_scale`).
        max_pixels: most pixels (per band) to read.

    Returns:
        (mean, std): one float per selected band each, population standard deviation (ddof 0), in the same
        units as the model's inputs (raw value x scale) — ready for ``adapt_bands(..., mean=mean, std=std)``.

    Raises:
        FileNotFoundError: no such file.
        RasterSourceError: the file cannot be read as a raster, or holds no valid pixel.
        ValueError: unknown band names or indexes.
    """
    path = os.fspath(path)
    if "://" not in path and not path.startswith("/vsi") and not Path(path).exists():
        raise FileNotFoundError(f"raster file not found: {path}")
    try:
        with rasterio.open(path) as ds:
            names = tuple(d or f"band{i + 1}" for i, d in enumerate(ds.descriptions))
            indexes = resolve_bands(list(bands) if bands is not None else list(range(1, ds.count + 1)), names, path)
            factor = _scale(ds, indexes, path) if scale is None else float(scale)
            data, valid = _read(ds, indexes, decimated_shape(ds.height, ds.width, max_pixels))
    except RasterioError as exc:
        raise RasterSourceError(f"{path}: cannot be read as a raster (expected a GeoTIFF/COG/VRT): {exc}") from exc
    count = int(valid.sum())
    if count == 0:
        raise RasterSourceError(
            f"{path}: no valid pixel in bands {indexes} (all nodata, masked or NaN in a {valid.shape} decimated read)"
        )
    mean, std = [], []
    for band in data:
        values = band[valid].astype(np.float64) * factor
        mean.append(float(values.mean()))
        std.append(float(values.std()))
    return tuple(mean), tuple(std)
