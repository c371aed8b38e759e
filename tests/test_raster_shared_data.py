"""RasterSource on the real rasters of ../shared/data (skipped when the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from geodino.raster.normalize import Normalization
from geodino.raster.plan import PatchGrid, plan_chunks
from geodino.raster.source import RasterSource
from geodino.raster.windows import Window

DATA = Path(__file__).parents[2] / "shared" / "data"
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"shared rasters not found at {DATA}"),
]


def _straddling(src: RasterSource, size: int) -> Window:
    """A size x size window hanging over the raster's bottom-right corner by a quarter of its size."""
    return Window(src.height - 3 * size // 4, src.width - 3 * size // 4, size, size)


def test_landsat_black_collar_is_nodata() -> None:
    path = DATA / "landsat" / "RGB.byte.tif"
    with RasterSource(path) as src, rasterio.open(path) as ds:
        assert src.nodata == 0 and src.count == 3 and src.crs.to_epsg() == 32618
        _, valid = src.read(src.window())
        # Same rule as GDAL's per-dataset mask: a pixel is valid only if no band is nodata.
        expected = (ds.read_masks() > 0).all(axis=0)
        assert np.array_equal(valid, expected)
        assert 0.2 < (~valid).mean() < 0.5  # the collar is about a third of the scene
        assert valid[src.height // 2, src.width // 2] and not valid[0, 0]
        edge, evalid = src.read(_straddling(src, 224))
        assert edge.shape == (3, 224, 224)
        assert np.array_equal(evalid[:168, :168], valid[-168:, -168:])
        assert np.array_equal(evalid[168:, :168], valid[-2:-58:-1, -168:])  # reflected about the last row


@pytest.mark.parametrize("plot", ["SJER_052", "JERC_049", "OSBS_029"])
def test_neon_rgb_nodata_255(plot: str) -> None:
    path = DATA / "neon" / f"{plot}_rgb.tif"
    with RasterSource(path) as src, rasterio.open(path) as ds:
        assert src.nodata == 255 and src.res == pytest.approx((0.1, 0.1))
        data, valid = src.read(_straddling(src, 256), fill="constant")
        raw = ds.read(window=_straddling(src, 256).clip(400, 400).to_rasterio())
        assert np.array_equal(valid[:192, :192], (raw != 255).all(axis=0))
        assert not valid[192:].any() and not valid[:, 192:].any()
        assert np.array_equal(data[:, :192, :192], raw.astype(np.float32))
        # The whole plot: a pixel with 255 in any band is invalid (these plots hold some).
        _, whole = src.read(src.window())
        saturated = (ds.read() == 255).any(axis=0)
        assert saturated.any() and np.array_equal(whole, ~saturated)


@pytest.mark.parametrize("plot", ["SJER_052", "JERC_049"])
def test_neon_chm_nodata_is_invalid(plot: str, tmp_path: Path) -> None:
    path = DATA / "neon" / f"{plot}_chm.tif"
    with RasterSource(path) as src:
        assert src.nodata == pytest.approx(-3.4e38, rel=1e-6)
        data, valid = src.read(Window(-8, -8, 56, 56))
        assert data.shape == (1, 56, 56) and valid.all()  # these plots have no gap
    # The plot with a gap punched in, written with the file's own profile and nodata value.
    with rasterio.open(path) as ds:
        profile, chm = ds.profile, ds.read()
    chm[0, 10:20, 5:15] = profile["nodata"]
    holed = tmp_path / f"{plot}_chm_holed.tif"
    with rasterio.open(holed, "w", **profile) as dst:
        dst.write(chm)
    with RasterSource(holed) as src:
        data, valid = src.read(Window(-8, -8, 56, 56))
        # 100 gap pixels, plus their 10 x 4 mirror image in the reflected columns left of the raster.
        assert (~valid[18:28, 13:23]).all() and (~valid[18:28, 0:4]).all() and (~valid).sum() == 140
        assert np.all(data[:, ~valid] < -1e38) and np.all(data[:, valid] > -1000)
        x = Normalization(scale=1.0, mean=(10.0,), std=(5.0,)).apply(data, valid)
        assert np.isfinite(x).all() and np.abs(x).max() < 100  # nodata never reaches a model


def test_sentinel2_13_bands() -> None:
    path = DATA / "sentinel2" / "eolearn_s2l1c_13band_2015-07-11.tif"
    with RasterSource(path, bands=[4, 3, 2]) as src:
        assert (src.height, src.width) == (101, 100) and src.count == 3
        assert src.dtype == np.float32 and src.crs.to_epsg() == 32633
        # A 224-pixel tile on this 101 x 100 raster: reflect padding far beyond the raster.
        grid = PatchGrid(src.height, src.width, patch=224, stride=112)
        (task,) = plan_chunks(grid, 112)
        data, valid = src.read(task.read)
        assert data.shape == (3, 224, 224) and valid.all()
        assert data.min() >= 0 and data.max() <= 1  # reflectance
    with RasterSource(path) as all_bands:
        assert all_bands.count == 13


def test_bigearthnet_10m_band() -> None:
    folders = sorted((DATA / "sentinel2" / "bigearthnet").iterdir())
    folder = next(f for f in folders if f.is_dir())
    path = folder / f"{folder.name}_B04.tif"
    with RasterSource(path) as src:
        assert (src.height, src.width) == (120, 120) and src.res == (10.0, 10.0)
        assert src.dtype == np.uint16 and src.crs.to_epsg() == 32629
        data, valid = src.read(Window(100, -10, 40, 40))
        assert valid.all() and data.shape == (1, 40, 40)
        with rasterio.open(path) as ds:
            raw = ds.read(1)
        assert np.array_equal(data[0, :20, 10:], raw[100:, :30].astype(np.float32))
    # The 20 m band of the same patch warped to 10 m lands on the same grid as the 10 m band.
    with RasterSource(folder / f"{folder.name}_B05.tif", target_resolution=10) as b05:
        assert (b05.height, b05.width) == (120, 120) and b05.transform == src.transform
