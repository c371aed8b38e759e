"""Georeferencing of the outputs: rioxarray for Zarr formats 2 and 3, GDAL for format 2, COG export."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray  # noqa: F401
import xarray as xr
import zarr
from affine import Affine
from rasters import smooth_scene, write_raster

from geodino.workflows.cog import export_cog
from geodino.workflows.mapping import embed_raster, map_raster

warnings.filterwarnings("ignore", message=".*consolidated.*")

CRS = "EPSG:32618"
TRANSFORM = Affine(2.5, 0.0, 301234.5, 0.0, -2.5, 4501020.0)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    data = smooth_scene(3, 150, 230, seed=2, dtype=np.uint8)
    data[:, 32:64, 96:144] = 255
    return write_raster(tmp_path / "scene.tif", data, crs=CRS, transform=TRANSFORM, nodata=255)


def _check_rio(ds: xr.Dataset, transform: Affine) -> None:
    assert ds.rio.crs == rasterio.crs.CRS.from_string(CRS)
    assert ds.rio.transform() == transform
    assert ds.x.values[0] == transform.c + transform.a / 2
    assert ds.y.values[0] == transform.f + transform.e / 2
    assert ds.x.values[-1] == pytest.approx(transform.c + transform.a * (ds.sizes["x"] - 0.5))
    # GDAL order in the CF attribute agrees with the affine order.
    gdal = [float(v) for v in ds.spatial_ref.attrs["GeoTransform"].split()]
    assert Affine.from_gdal(*gdal) == transform


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_reopened_store_has_source_crs_and_transform(scene: Path, tmp_path: Path, zarr_format: int) -> None:
    out = tmp_path / "o.zarr"
    map_raster(scene, "model_factories:classifier", out, zarr_format=zarr_format, chunk=48, progress=False)
    ds = xr.open_zarr(out, decode_coords="all")
    _check_rio(ds, TRANSFORM)
    assert ds.probabilities.encoding["grid_mapping"] == "spatial_ref"
    # nodata in -> NaN out (never zeros); the class map holds 255 there.
    probs = ds.probabilities.values
    assert np.isnan(probs[:, 32:64, 96:144]).all()
    assert np.isfinite(np.delete(probs, np.s_[32:64], axis=1)).all()
    raw = xr.open_zarr(out, decode_coords="all", mask_and_scale=False)
    assert (raw.classes.values[32:64, 96:144] == 255).all()
    with rasterio.open(scene) as src:
        assert ds.rio.crs == src.crs and ds.rio.transform() == src.transform
    # Blosc LZ4 with byte shuffling (cheaper and smaller than zarr's default Zstandard on float maps).
    codec = zarr.open_array(str(out), path="probabilities").compressors[0]
    assert "lz4" in repr(codec).lower() and "shuffle" in repr(codec).lower()


def test_gdal_reads_format_2(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    ds = map_raster(scene, "model_factories:classifier", out, zarr_format=2, chunk=48, progress=False)
    with rasterio.open(f'ZARR:"{out}":/classes') as src:
        assert src.crs == rasterio.crs.CRS.from_string(CRS)
        assert src.transform == TRANSFORM
        assert src.nodata == 255
        assert np.array_equal(src.read(1), ds.classes.values)
    with rasterio.open(f'ZARR:"{out}":/probabilities') as src:
        assert src.count == 4 and src.transform == TRANSFORM
        np.testing.assert_array_equal(src.read(2), ds.probabilities.values[1])


def test_embedding_has_coarser_transform(scene: Path, tmp_path: Path) -> None:
    ds = embed_raster(scene, "test", tmp_path / "e.zarr", zarr_format=2, progress=False)
    assert ds.embedding.shape == (64, -(-150 // 16), -(-230 // 16))
    coarse = TRANSFORM * Affine.scale(16)
    _check_rio(ds, coarse)
    with rasterio.open(f'ZARR:"{tmp_path / "e.zarr"}":/embedding') as src:
        assert src.transform == coarse and src.crs == rasterio.crs.CRS.from_string(CRS)
    # A 16 x 16 cell over nodata only is NaN; partly covered cells keep a value.
    assert np.isnan(ds.embedding.values[:, 3, 7]).all()
    assert np.isfinite(ds.embedding.values[:, 0, 0]).all()


@pytest.mark.parametrize("var", ["classes", "probabilities"])
def test_export_cog(scene: Path, tmp_path: Path, var: str) -> None:
    out = tmp_path / "o.zarr"
    ds = map_raster(scene, "model_factories:classifier", out, chunk=48, progress=False)
    tif = export_cog(out, var, tmp_path / f"{var}.tif", blocksize=64)
    with rasterio.open(tif) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.crs == rasterio.crs.CRS.from_string(CRS) and src.transform == TRANSFORM
        assert src.overviews(1), "expected overviews"
        data = src.read()
        if var == "classes":
            assert src.nodata == 255
            assert np.array_equal(data[0], ds.classes.values)
            assert src.colormap(1)[1] == (0, 128, 0, 255)
        else:
            assert np.isnan(src.nodata)
            assert src.descriptions == ("water", "forest", "field", "urban")
            np.testing.assert_array_equal(data, ds.probabilities.values)
        # Overviews hold data, not zeros.
        overview = src.read(1, out_shape=(src.height // 2, src.width // 2))
        assert np.nanmax(overview) > 0


def test_export_cog_single_band_by_name(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    ds = map_raster(scene, "model_factories:classifier", out, outputs=["probabilities"], progress=False)
    tif = export_cog(out, "probabilities", tmp_path / "forest.tif", band="forest", overviews=False)
    with rasterio.open(tif) as src:
        assert src.count == 1 and not src.overviews(1)
        np.testing.assert_array_equal(src.read(1), ds.probabilities.values[1])
    with pytest.raises(ValueError, match="unknown band 'desert'"):
        export_cog(out, "probabilities", tmp_path / "x.tif", band="desert")
    with pytest.raises(ValueError, match="no variable 'classes'"):
        export_cog(out, "classes", tmp_path / "x.tif")
