"""Shared fixtures of the workflow tests: small scenes, tiny backbone checkpoints, a run interrupted midway."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from rasters import smooth_scene, write_raster

warnings.filterwarnings("ignore", message=".*consolidated.*")


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    from geodino.workflows.predictor import clear_model_cache

    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A 3-band uint8 128 x 192 GeoTIFF (2 x 3 one-patch chunks with STEPWISE settings for a ViT/16)."""
    return write_raster(tmp_path / "scene.tif", smooth_scene(3, 128, 192, seed=3, dtype=np.uint8))
