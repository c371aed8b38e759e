"""Helpers for the pretraining data/loop/CLI tests (imported explicitly: ``from training_data_helpers import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasters import smooth_scene, write_raster

DATA = Path(__file__).parents[3] / "shared" / "data"
NEON_RGB = DATA / "neon" / "SJER_052_rgb.tif"
S2_13BAND = DATA / "sentinel2" / "eolearn_s2l1c_13band_2015-07-11.tif"


def textured_scene(bands: int, size: int, seed: int = 0) -> np.ndarray:
    """(bands, size, size) uint8: a smooth scene plus seeded fine texture (so crops differ in content)."""
    base = smooth_scene(bands, size, size, seed=seed, dtype=np.float32)
    rng = np.random.default_rng(seed + 100)
    noise = rng.normal(0, 0.08, size=base.shape)
    return np.clip((base + noise) * 230 + 10, 1, 254).astype(np.uint8)


def write_rgb(path: Path, size: int = 128, seed: int = 0, bands: int = 3, nodata: float | None = None) -> Path:
    """A (bands, size, size) uint8 GeoTIFF in UTM 33N with 10 m pixels."""
    return write_raster(path, textured_scene(bands, size, seed), nodata=nodata)
