"""Per-band normalisation statistics of a raster, for backbones adapted to new bands (`geodino.models.bands`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def _read(
    ds: rasterio.DatasetReader, indexes: list[int], shape: tuple[int, int], window: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """(C, h, w) values and (h, w) validity: False where any selected band is nodata, masked or NaN.

    ``window`` (a rasterio window, may reach outside the file: those pixels are invalid) defaults to the file."""
    boundless = window is not None
    kw: dict[str, Any] = {"out_shape": (len(indexes), *shape), "resampling": Resampling.nearest}
    if boundless:
        kw.update(window=window, boundless=True)
    data = ds.read(indexes, **kw)
    valid = np.ones(shape, dtype=bool)
    need = [b for b in indexes if boundless or set(ds.mask_flag_enums[b - 1]) != {MaskFlags.all_valid}]
    if need:
        masks = ds.read_masks(need, **{**kw, "out_shape": (len(need), *shape)})
        valid &= (masks > 0).all(axis=0)
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    return data, valid


def _scale(dtypes: set[str], indexes: Sequence[int], path: str) -> float:
    """The default scale of the selected bands' dtype; mixed dtypes need an explicit scale."""
    if len(dtypes) > 1:
        raise ValueError(
            f"{path}: bands {list(indexes)} have different dtypes {sorted(dtypes)}; pass scale= explicitly"
        )
    return default_scale(next(iter(dtypes)))


def _refuse_complex(dtypes: set[str], path: str) -> None:
    complex_ = sorted(d for d in dtypes if np.issubdtype(np.dtype(d), np.complexfloating))
    if complex_:
        raise RasterSourceError(
            f"{path}: holds complex values ({complex_[0]}, e.g. SAR SLC); statistics need real bands: compute them "
            "on the magnitude (stack=True with RasterSource(complex_mode='magnitude')) or a detected product"
        )


def band_statistics(
    path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    bands: Sequence[int | str] | None = None,
    *,
    scale: float | None = None,
    max_pixels: int = 2_000_000,
    stack: bool = False,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and standard deviation of a raster's valid pixels, after scaling.

    The raster is read once, decimated (nearest neighbour, one integer factor for both axes) so that at most
    `max_pixels` pixels are read. A pixel counts when every selected band is valid there: GDAL's mask (nodata
    value, alpha band or per-dataset mask) is set and no value is NaN — the same rule as `RasterSource`.

    Args:
        path: a raster file GDAL can open (GeoTIFF, COG, VRT...); with ``stack=True``, the files of one band
            stack (as ``RasterSource(paths, stack=True)``: bands counted and named over the stacked files, each
            file sampled on the stack's grid, decimated).
        bands: 1-based band indexes and/or band names (descriptions); None takes every band.
        scale: factor applied to raw values, e.g. 1/10000 for reflectance x 10000; None uses the dtype's
            convention (uint8 1/255, uint16 1/10000, floating point 1.0; see `geodino.raster.normalize.default_scale`).
        max_pixels: most pixels (per band) to read.
        stack: read ``path`` (a list of files) as one band stack.

    Returns:
        (mean, std): one float per selected band each, population standard deviation (ddof 0), in the same
        units as the model's inputs (raw value x scale) — ready for ``adapt_bands(..., mean=mean, std=std)``.

    Raises:
        FileNotFoundError: no such file.
        RasterSourceError: the file cannot be read as a raster, or holds no valid pixel.
        ValueError: unknown band names or indexes.
    """
    if stack:
        if isinstance(path, str | os.PathLike):
            path = [path]
        data, valid, indexes, dtypes, where = _read_stack([os.fspath(p) for p in path], bands, max_pixels)
        factor = _scale(dtypes, indexes, where) if scale is None else float(scale)
    else:
        if not isinstance(path, str | os.PathLike):
            raise TypeError("band_statistics takes one raster path; pass stack=True for a list of per-band files")
        path = where = os.fspath(path)
        if "://" not in path and not path.startswith("/vsi") and not Path(path).exists():
            raise FileNotFoundError(f"raster file not found: {path}")
        try:
            with rasterio.open(path) as ds:
                names = tuple(d or f"band{i + 1}" for i, d in enumerate(ds.descriptions))
                selection = list(bands) if bands is not None else list(range(1, ds.count + 1))
                indexes = resolve_bands(selection, names, path)
                dtypes = {ds.dtypes[b - 1] for b in indexes}
                _refuse_complex(dtypes, path)
                factor = _scale(dtypes, indexes, path) if scale is None else float(scale)
                data, valid = _read(ds, indexes, decimated_shape(ds.height, ds.width, max_pixels))
        except RasterioError as exc:
            raise RasterSourceError(f"{path}: cannot be read as a raster (expected a GeoTIFF/COG/VRT): {exc}") from exc
    count = int(valid.sum())
    if count == 0:
        raise RasterSourceError(
            f"{where}: no valid pixel in bands {list(indexes)} (all nodata, masked or NaN in a {valid.shape} "
            "decimated read)"
        )
    mean, std = [], []
    for band in data:
        values = band[valid].astype(np.float64) * factor
        mean.append(float(values.mean()))
        std.append(float(values.std()))
    return tuple(mean), tuple(std)


def _read_stack(
    paths: list[str], bands: Sequence[int | str] | None, max_pixels: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], set[str], str]:
    """Decimated (C, h, w) values and (h, w) validity of a band stack on its grid (see :func:`band_statistics`).

    Returns:
        (data, valid, stacked band indexes, dtypes of the selected bands, a name of the stack for messages).
    """
    from rasterio.windows import from_bounds

    from geodino.raster.source import RasterSource

    with RasterSource(paths, stack=True, bands=bands, allow_no_crs=True) as src:
        info = src.describe()
        shape = decimated_shape(src.height, src.width, max_pixels)
        t = src.transform
        grid_bounds = (t.c, t.f + t.e * src.height, t.c + t.a * src.width, t.f)
        indexes = src.bands
    where = f"the stack {', '.join(paths)}"
    data = np.empty((len(indexes), *shape), dtype=np.float64)
    valid = np.ones(shape, dtype=bool)
    dtypes: set[str] = set()
    files = list(dict.fromkeys(info["band_files"]))
    try:
        for f in files:
            channels = [c for c, bf in enumerate(info["band_files"]) if bf == f]
            file_bands = [info["file_bands"][c] for c in channels]
            with rasterio.open(f) as ds:
                dtypes |= {ds.dtypes[b - 1] for b in file_bands}
                window = from_bounds(*grid_bounds, transform=ds.transform)
                d, v = _read(ds, file_bands, shape, window)
            data[channels] = d
            valid &= v
    except RasterioError as exc:
        raise RasterSourceError(f"{where}: cannot be read: {exc}") from exc
    return data, valid, indexes, dtypes, where
