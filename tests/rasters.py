"""Shared test helper: seeded synthetic scenes written as real GeoTIFFs.

Import from tests as ``from rasters import write_raster, smooth_scene`` (``tests/`` is on ``sys.path`` through
pytest's ``pythonpath`` setting).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.transform import from_origin

DEFAULT_CRS = "EPSG:32633"


def default_transform() -> Affine:
    """The default test geotransform: 10 m pixels, upper-left corner at (500000, 4100000) in UTM 33N."""
    return from_origin(500000, 4100000, 10, 10)


def write_raster(
    path: str | Path,
    data: np.ndarray,
    *,
    crs: Any = DEFAULT_CRS,
    transform: Affine | None = None,
    nodata: float | None = None,
    descriptions: Sequence[str | None] | None = None,
    tiled: bool = True,
    blocksize: int = 256,
    compress: str | None = None,
) -> Path:
    """Write a (C, H, W) array to a GeoTIFF with a real CRS and geotransform.

    Args:
        path: Output file.
        data: (C, H, W) array; its dtype becomes the file's dtype.
        crs: Anything rasterio accepts as a CRS, or None to write a file without one.
        transform: Affine geotransform; defaults to 10 m pixels at (500000, 4100000).
        nodata: Nodata value stored in the file's metadata (values are written as given).
        descriptions: One band description (name) per band, or None.
        tiled: Write a tiled GeoTIFF (blocks of ``blocksize``); stripped otherwise.
        blocksize: Tile size in pixels; a multiple of 16 (GeoTIFF rule), used only when tiled.
        compress: GDAL compression name (e.g. "deflate") or None.

    Returns:
        The path written.
    """
    path = Path(path)
    if data.ndim != 3:
        raise ValueError(f"write_raster expects a (C, H, W) array, got shape {data.shape}")
    count, height, width = data.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform if transform is not None else default_transform(),
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if compress is not None:
        profile["compress"] = compress
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions is not None:
            if len(descriptions) != count:
                raise ValueError(f"{len(descriptions)} descriptions for {count} bands")
            for index, name in enumerate(descriptions, start=1):
                if name is not None:
                    dst.set_band_description(index, name)
    return path


def smooth_scene(bands: int, height: int, width: int, seed: int = 0, dtype: Any = np.float32) -> np.ndarray:
    """A seeded, smoothly varying synthetic scene.

    Each band is a sum of a few low-frequency 2-D sinusoids with random frequencies and phases, rescaled to
    [0, 1] and then into the dtype's range (integers: [1, max - 1] so that 0 and max stay free for nodata;
    floats: [0, 1]).

    Args:
        bands: Number of bands C.
        height: Rows H.
        width: Columns W.
        seed: Seed of the random frequencies and phases.
        dtype: Output dtype.

    Returns:
        (C, H, W) array of ``dtype``.
    """
    rng = np.random.default_rng(seed)
    yy = np.arange(height, dtype=np.float64)[:, None]
    xx = np.arange(width, dtype=np.float64)[None, :]
    out = np.empty((bands, height, width), dtype=np.float64)
    for band in range(bands):
        field = np.zeros((height, width), dtype=np.float64)
        for _ in range(4):
            # Periods between 40 and 400 pixels, random orientation and phase.
            fy, fx = rng.uniform(1 / 400, 1 / 40, size=2) * rng.choice([-1, 1], size=2)
            phase = rng.uniform(0, 2 * np.pi)
            field += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
        lo, hi = field.min(), field.max()
        out[band] = (field - lo) / (hi - lo) if hi > lo else 0.5
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        lo_v, hi_v = max(info.min, 0) + 1, info.max - 1
        return np.round(lo_v + out * (hi_v - lo_v)).astype(dt)
    return out.astype(dt)
