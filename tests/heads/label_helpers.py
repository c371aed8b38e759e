"""Test helpers for label pairing and splits: analytic label fields written as real GeoTIFFs on any grid and CRS.

Import as ``from label_helpers import ...``, like heads_helpers (pytest's default import mode puts the test
folder on ``sys.path``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.transform import array_bounds
from rasterio.warp import transform, transform_bounds
from rasters import write_raster

#: Imagery CRS of the synthetic scenes, and the grid's origin (as tests/rasters.py: UTM 33N, 10 m).
IMAGE_CRS = "EPSG:32633"
X0, Y0 = 500000.0, 4100000.0

Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


def height_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth canopy heights (m) at UTM 33N map coordinates: 15 +- 10 m, wavelengths 800 m and 1000 m."""
    return 15.0 + 10.0 * np.sin(2 * np.pi * (x - X0) / 800.0) * np.cos(2 * np.pi * (y - Y0) / 1000.0)


def class_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Land-cover values 10, 20, 30, 40 from thresholds of :func:`height_field` (broad patches)."""
    return (10 * (1 + np.digitize(height_field(x, y), [10.0, 15.0, 20.0]))).astype(np.int64)


def pixel_centres(transform_: Affine, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) x and y map coordinates of the pixel centres of a grid."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    x = transform_.c + transform_.a * (cols + 0.5) + transform_.b * (rows + 0.5)
    y = transform_.f + transform_.d * (cols + 0.5) + transform_.e * (rows + 0.5)
    return x, y


def field_on_grid(field: Field, crs: str, transform_: Affine, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) values of a field (defined in IMAGE_CRS) at the pixel centres of a grid in ``crs``."""
    x, y = pixel_centres(transform_, shape)
    if crs != IMAGE_CRS:
        xs, ys = transform(crs, IMAGE_CRS, x.ravel(), y.ravel())
        x, y = np.asarray(xs).reshape(shape), np.asarray(ys).reshape(shape)
    return field(x, y)


def covering_grid(
    image_transform: Affine, image_shape: tuple[int, int], crs: str, res: float, shift: float, margin: float
) -> tuple[Affine, tuple[int, int]]:
    """A north-up grid in ``crs`` of pixel size ``res`` covering the image (plus ``margin`` map units), its origin
    moved off any round number by ``shift`` pixels."""
    bounds = array_bounds(image_shape[0], image_shape[1], image_transform)
    left, bottom, right, top = transform_bounds(IMAGE_CRS, crs, *bounds, densify_pts=21)
    left, top = left - margin - shift * res, top + margin + shift * res
    width = math.ceil((right + margin - left) / res)
    height = math.ceil((top - (bottom - margin)) / res)
    return Affine(res, 0.0, left, 0.0, -res, top), (height, width)


def write_field(
    path: Path,
    field: Field,
    crs: str,
    transform_: Affine,
    shape: tuple[int, int],
    dtype: str = "float32",
    nodata: float | None = None,
) -> np.ndarray:
    """Write a field sampled on a grid as a 1-band GeoTIFF; returns the (H, W) values written."""
    values = field_on_grid(field, crs, transform_, shape).astype(dtype)
    write_raster(path, values[None], crs=crs, transform=transform_, nodata=nodata)
    return values
