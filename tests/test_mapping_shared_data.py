"""Mapping every real raster in ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

import warnings
from pathlib import Path

import model_factories as mf
import numpy as np
import pytest
import rasterio
import xarray as xr

from geodino.raster.source import RasterSource
from geodino.workflows.mapping import embed_raster, map_raster
from geodino.workflows.predictor import PredictorInfo, from_callable

warnings.filterwarnings("ignore", message=".*consolidated.*")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RASTERS = sorted(SHARED.rglob("*.tif")) if SHARED.is_dir() else []

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent"),
]


@pytest.mark.parametrize("path", RASTERS, ids=[p.name for p in RASTERS])
def test_maps_every_shared_raster(path: Path, tmp_path: Path) -> None:
    source = RasterSource(path)
    model = mf.Pointwise(in_ch=source.count, out_ch=1)
    predictor = from_callable(model, PredictorInfo(in_bands=source.count, out_channels=1, tile=64, name="probe"))
    ds = map_raster(path, predictor, tmp_path / "o.zarr", chunk=48, zarr_format=2, progress=False)
    _, valid = source.read(source.window())
    values = ds.prediction.values[0]
    assert values.shape == (source.height, source.width)
    assert np.isnan(values[~valid]).all(), "nodata must come out as NaN"
    assert np.isfinite(values[valid]).all()
    with rasterio.open(path) as src:
        assert ds.rio.crs == src.crs
        assert ds.rio.transform() == src.transform
    with rasterio.open(f'ZARR:"{tmp_path / "o.zarr"}":/prediction') as gdal:
        # GDAL derives the geotransform from the x/y arrays: equal up to float rounding (1e-14 relative).
        assert gdal.crs == source.crs
        assert gdal.transform.almost_equals(source.transform, precision=1e-6)


@pytest.mark.skipif(not (SHARED / "landsat" / "RGB.byte.tif").exists(), reason="landsat raster absent")
def test_embed_landsat_scene(tmp_path: Path) -> None:
    path = SHARED / "landsat" / "RGB.byte.tif"
    ds = embed_raster(path, "test", tmp_path / "e.zarr", progress=False)
    reopened = xr.open_zarr(tmp_path / "e.zarr", decode_coords="all")
    with rasterio.open(path) as src:
        assert ds.embedding.shape == (64, -(-src.height // 16), -(-src.width // 16))
        assert reopened.rio.transform() == src.transform * rasterio.Affine.scale(16)
        assert reopened.rio.crs == src.crs
    emb = ds.embedding.values
    # The black collar (nodata 0) has whole 16 x 16 cells without data: NaN there, values elsewhere.
    assert np.isnan(emb[:, 0, 0]).all()
    assert np.isfinite(emb[:, emb.shape[1] // 2, emb.shape[2] // 2]).all()
