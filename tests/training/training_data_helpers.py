"""Helpers for the pretraining data/loop/CLI tests (imported explicitly: ``from training_data_helpers import ...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
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


@pytest.fixture
def single_thread():
    """Run torch on one thread: on a loaded 2-core machine, intra-op threads of tiny ops spin far more than they help."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_labels_for(image: Path, path: Path) -> Path:
    """Two classes (1, 2) split at the median of the image's first band, on the image's grid."""
    import rasterio

    with rasterio.open(image) as src:
        band = src.read(1).astype(np.float32)
        transform, crs = src.transform, src.crs
    labels = np.where(band > np.median(band), 2, 1).astype(np.uint8)[None]
    return write_raster(path, labels, crs=crs, transform=transform)


def tiny_args(data: Path | list[Path], out: Path, steps: int = 3, *extra: str) -> list[str]:
    """``geodino pretrain`` arguments of a quick tiny-recipe run (no worker processes, few crops)."""
    paths = data if isinstance(data, list) else [data]
    args = ["pretrain", "--recipe", "tiny", "--out", str(out), "--steps", str(steps)]
    for p in paths:
        args += ["--data", str(p)]
    return [*args, "train.batch_size=4", "train.log_every=1", "train.diagnostic_every=0", *extra]


def assert_same_state(a: Any, b: Any) -> None:
    """Nested dicts / lists / tuples of tensors (and NumPy generator states) are bit-identical."""
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    else:
        assert a == b
