"""Bad inputs fail early (before any store is created or task runs) with messages naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rasters import smooth_scene, write_raster

from geodino.workflows.mapping import map_raster


def _scene(path: Path, bands: int = 3, dtype: type = np.uint8, **kwargs) -> Path:
    return write_raster(path, smooth_scene(bands, 120, 140, seed=1, dtype=dtype), **kwargs)


def test_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"this is not a GeoTIFF" * 100)
    with pytest.raises(ValueError, match=r"corrupt\.tif"):
        map_raster(bad, "model_factories:pointwise", tmp_path / "o.zarr", progress=False)
    assert not (tmp_path / "o.zarr").exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.tif"):
        map_raster(tmp_path / "nowhere.tif", "model_factories:pointwise", tmp_path / "o.zarr", progress=False)


def test_no_crs_refused_unless_allowed(tmp_path: Path) -> None:
    path = _scene(tmp_path / "nocrs.tif", crs=None)
    with pytest.raises(ValueError, match=r"nocrs.tif.*no CRS"):
        map_raster(path, "model_factories:pointwise", tmp_path / "o.zarr", progress=False)
    assert not (tmp_path / "o.zarr").exists()
    ds = map_raster(path, "model_factories:pointwise", tmp_path / "o.zarr", allow_no_crs=True, progress=False)
    assert ds.rio.crs is None and ds.prediction.shape == (2, 120, 140)


def test_wrong_band_count(tmp_path: Path) -> None:
    path = _scene(tmp_path / "four.tif", bands=4, dtype=np.uint16)  # uint8 x 4 would read as RGB + alpha
    with pytest.raises(ValueError, match=r"four.tif.*expects 3 bands.*has 4 bands.*--bands"):
        map_raster(path, "model_factories:pointwise", tmp_path / "o.zarr", progress=False)
    assert not (tmp_path / "o.zarr").exists()
    ds = map_raster(path, "model_factories:pointwise", tmp_path / "o.zarr", bands=[3, 2, 1], progress=False)
    assert ds.prediction.shape == (2, 120, 140)


def test_band_names_not_found(tmp_path: Path) -> None:
    path = _scene(tmp_path / "named.tif", descriptions=["red", "green", "blue"])
    with pytest.raises(ValueError, match=r"unknown band name 'nir'.*red, green, blue"):
        map_raster(path, "model_factories:pointwise", tmp_path / "o.zarr", bands=["red", "nir", "blue"])
    ds = map_raster(path, "model_factories:pointwise", tmp_path / "o.zarr", bands=["blue", "GREEN", "red"])
    assert ds.attrs["input_bands"] == ["blue", "green", "red"]


def test_mixed_crs_mosaic_refused(tmp_path: Path) -> None:
    a = _scene(tmp_path / "a.tif")
    b = _scene(tmp_path / "b.tif", crs="EPSG:32634")
    with pytest.raises(ValueError, match="mixed CRS"):
        map_raster([a, b], "model_factories:pointwise", tmp_path / "o.zarr", progress=False)


def test_bad_tile_overlap_chunk_and_outputs(tmp_path: Path) -> None:
    path = _scene(tmp_path / "s.tif")
    spec = "model_factories:coarse"  # output stride 4
    with pytest.raises(ValueError, match="tile 30 must be a positive multiple of 4"):
        map_raster(path, spec, tmp_path / "o.zarr", tile=30)
    with pytest.raises(ValueError, match="overlap 6"):
        map_raster(path, spec, tmp_path / "o.zarr", overlap=6)
    with pytest.raises(ValueError, match="multiple of stride"):
        map_raster(path, spec, tmp_path / "o.zarr", chunk=13)
    with pytest.raises(ValueError, match="not available"):
        map_raster(path, spec, tmp_path / "o.zarr", outputs=["classes"])
    assert not (tmp_path / "o.zarr").exists()


def test_bad_model_specs(tmp_path: Path) -> None:
    path = _scene(tmp_path / "s.tif")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        map_raster(path, "no_such_module:model", tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="has no attribute 'nothing'"):
        map_raster(path, "model_factories:nothing", tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="carries no metadata"):
        map_raster(path, "model_factories:Pointwise", tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="neither an existing file nor"):
        map_raster(path, "just-a-name", tmp_path / "o.zarr")
