"""Band stacks: per-band files read as one image (RasterSource(..., stack=True)) on real GeoTIFFs."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasters import default_transform, smooth_scene, write_raster

from geodino.raster.source import RasterSource, RasterSourceError, band_label
from geodino.raster.windows import Window

H, W = 96, 128
WINDOWS = [
    Window(0, 0, H, W),
    Window(10, 20, 40, 50),
    Window(-16, -16, 64, 64),  # reflected corner
    Window(H - 30, W - 20, 64, 64),
    Window(-2 * H, 3 * W, 20, 30),  # far outside
]


def _assert_same_reads(a: RasterSource, b: RasterSource) -> None:
    for window in WINDOWS:
        for fill in ("reflect", "constant"):
            da, va = a.read(window, fill=fill)
            db, vb = b.read(window, fill=fill)
            assert np.array_equal(da, db), (window, fill)
            assert np.array_equal(va, vb), (window, fill)


@pytest.fixture
def bands_u16(tmp_path: Path) -> tuple[list[Path], Path, np.ndarray]:
    """Three single-band files (B3, B2, B1 of one scene, nodata in different places) and the stacked file."""
    scene = smooth_scene(3, H, W, seed=3, dtype=np.uint16)
    scene[0, 5:15, 7:30] = 0
    scene[2, 40:60, 90:100] = 0
    scene[1, 0, :] = 0
    names = ["LT05_L1TP_B3.TIF", "LT05_L1TP_B2.TIF", "LT05_L1TP_B1.TIF"]
    paths = [write_raster(tmp_path / n, scene[i : i + 1], nodata=0, blocksize=32) for i, n in enumerate(names)]
    stacked = write_raster(tmp_path / "stacked.tif", scene, nodata=0, blocksize=32)
    return paths, stacked, scene


def test_stack_equals_stacked_geotiff(bands_u16: tuple[list[Path], Path, np.ndarray]) -> None:
    paths, stacked, scene = bands_u16
    with RasterSource(paths, stack=True) as stack, RasterSource(stacked) as whole:
        assert stack.stack and not whole.stack
        assert (stack.height, stack.width, stack.count) == (H, W, 3)
        assert stack.transform == whole.transform and stack.crs == whole.crs and stack.dtype == whole.dtype
        assert stack.band_names == ("B03", "B02", "B01")  # from the file names ('..._B3.TIF' -> 'B03')
        _assert_same_reads(stack, whole)
        data, valid = stack.read(stack.window())
    # Nodata combined across the files: a pixel is invalid where any band is.
    assert np.array_equal(valid, (scene != 0).all(axis=0))
    assert np.array_equal(data, scene.astype(np.float32))


def test_stack_threads_and_pickle(bands_u16: tuple[list[Path], Path, np.ndarray]) -> None:
    paths, stacked, _ = bands_u16
    with RasterSource(paths, stack=True) as stack, RasterSource(stacked) as whole:
        clone = pickle.loads(pickle.dumps(stack))
        assert clone.band_names == stack.band_names and clone.tiles == stack.tiles
        _assert_same_reads(clone, whole)
        windows = [Window(r, c, 32, 32) for r in range(-8, H, 24) for c in range(-8, W, 40)]
        with ThreadPoolExecutor(max_workers=3) as pool:
            threaded = list(pool.map(clone.read, windows))
        for window, (d, v) in zip(windows, threaded, strict=True):
            dw, vw = whole.read(window)
            assert np.array_equal(d, dw) and np.array_equal(v, vw)
        clone.close()


def test_without_stack_covering_files_are_refused(bands_u16: tuple[list[Path], Path, np.ndarray]) -> None:
    # The case: `geodino embed B3 B2 B1 --bands 1,1,1` equalled B3 alone (a "mosaic", first file wins).
    paths, _, _ = bands_u16
    with pytest.raises(RasterSourceError, match=r"B3\.TIF and .*B2\.TIF overlap on 96 x 128 pixels.*--stack"):
        RasterSource(paths, bands=[1, 1, 1])


def test_band_selection_counts_over_the_stack(tmp_path: Path) -> None:
    scene = smooth_scene(5, 32, 40, seed=4, dtype=np.uint16)
    rgb = write_raster(tmp_path / "rgb.tif", scene[:3], descriptions=["red", "green", "blue"])
    nir = write_raster(tmp_path / "LC08_L2SP_044034_SR_B5.TIF", scene[3:4])
    plain = write_raster(tmp_path / "slope.tif", scene[4:5])
    with RasterSource([rgb, nir, plain], stack=True) as src:
        assert src.available_band_names == ("red", "green", "blue", "B05", "slope")
        assert src.count == 5
    with RasterSource([rgb, nir, plain], stack=True, bands=["B5", 3, "slope", "red"]) as src:
        assert src.bands == (4, 3, 5, 1) and src.band_names == ("B05", "blue", "slope", "red")
        assert src.describe()["band_files"] == [str(nir), str(rgb), str(plain), str(rgb)]
        data, _ = src.read(Window(0, 0, 32, 40))
        assert np.array_equal(data, scene[[3, 2, 4, 0]].astype(np.float32))
    with RasterSource([rgb, nir], stack=True, bands=[4]) as src:  # only the second file is read
        assert src.band_names == ("B05",) and src.describe()["band_files"] == [str(nir)]
    with pytest.raises(RasterSourceError, match=r"stacked band 1 \(red, from .*rgb\.tif\) more than once.*1\.\.4"):
        RasterSource([rgb, nir], stack=True, bands=[1, 1, 4])
    with pytest.raises(ValueError, match="out of range"):
        RasterSource([rgb, nir], stack=True, bands=[5])


def test_band_label() -> None:
    assert band_label("T32TQM_20200101T101031_B04_10m") == "B04"
    assert band_label("LC08_L2SP_044034_20200101_02_T1_SR_B4") == "B04"
    assert band_label("S2A_MSIL2A_20170617T113321_36_85_B8A") == "B8A"
    assert band_label("B11") == "B11"
    assert band_label("slope") is None


def test_duplicate_band_names_are_made_unique(tmp_path: Path) -> None:
    scene = smooth_scene(2, 16, 16, seed=5, dtype=np.uint16)
    a = write_raster(tmp_path / "2020_B04.tif", scene[:1])
    b = write_raster(tmp_path / "2021_B04.tif", scene[1:])
    with RasterSource([a, b], stack=True) as src:
        assert src.band_names == ("2020_B04:B04", "2021_B04:B04")
    with pytest.raises(ValueError, match="unknown band name 'B04'"):  # ambiguous: two dates hold B04
        RasterSource([a, b], stack=True, bands=["B04"])


def _coarse_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    fine = smooth_scene(1, H, W, seed=6, dtype=np.uint16)
    coarse = smooth_scene(1, H // 2, W // 2, seed=7, dtype=np.uint16)
    a = write_raster(tmp_path / "x_B02.tif", fine)
    b = write_raster(tmp_path / "x_B05.tif", coarse, transform=from_origin(500000, 4100000, 20, 20))
    return a, b, fine, coarse


def test_coarser_band_is_resampled_onto_the_finest_grid(tmp_path: Path) -> None:
    a, b, fine, coarse = _coarse_pair(tmp_path)
    for order in ([a, b], [b, a]):  # the grid is the finest file's whatever the order
        with RasterSource(order, stack=True, resampling="nearest") as src:
            assert (src.height, src.width) == (H, W) and src.transform == default_transform()
            data, valid = src.read(src.window())
            assert valid.all()
            i_fine = src.band_names.index("B02")
            assert np.array_equal(data[i_fine], fine[0].astype(np.float32))  # read as it is
            # nearest: every 20 m pixel covers 2 x 2 pixels of the 10 m grid
            up = np.repeat(np.repeat(coarse[0], 2, axis=0), 2, axis=1).astype(np.float32)
            assert np.array_equal(data[1 - i_fine], up)
            assert src.describe()["resampled"] == [str(b)]
    with RasterSource([a, b], stack=True) as src:  # bilinear by default: smooth, between the coarse neighbours
        data, valid = src.read(Window(0, 0, H, W))
        assert valid.all()
        inner = data[1, 2:-2, 2:-2]
        up = np.repeat(np.repeat(coarse[0], 2, axis=0), 2, axis=1).astype(np.float64)[2:-2, 2:-2]
        assert not np.array_equal(inner, up) and np.abs(inner - up).max() < 0.05 * 65535
        # Windowed reads equal the whole read (the resampling does not depend on the window).
        part, _ = src.read(Window(30, 40, 20, 24))
        assert np.array_equal(part, data[:, 30:50, 40:64])
    with RasterSource([a, b], stack=True, target_resolution=20, resampling="nearest") as src:
        assert (src.height, src.width) == (H // 2, W // 2) and src.res == (20.0, 20.0)
        data, _ = src.read(src.window())
        assert np.array_equal(data[1], coarse[0].astype(np.float32))


def test_stack_refusals(tmp_path: Path) -> None:
    scene = smooth_scene(2, 64, 64, seed=8, dtype=np.uint16)
    a = write_raster(tmp_path / "a_B02.tif", scene[:1])
    # The same place in the neighbouring UTM zone.
    with RasterSource(a, target_crs="EPSG:32632", resampling="nearest") as moved:
        data, valid = moved.read(moved.window(), fill="constant")
        data[:, ~valid] = 0
        other = write_raster(
            tmp_path / "b_B03.tif", data.astype(np.uint16), crs="EPSG:32632", transform=moved.transform, nodata=0
        )
    with pytest.raises(RasterSourceError, match=r"mixed CRS in stack: .*b_B03\.tif is EPSG:32632.*--target-crs"):
        RasterSource([a, other], stack=True)
    with RasterSource([a, other], stack=True, target_crs="EPSG:32633") as src:
        assert src.crs.to_epsg() == 32633 and src.count == 2
        assert src.read(src.window())[1].mean() > 0.5  # two rotated footprints on one north-up grid
    beside = write_raster(tmp_path / "beside_B03.tif", scene[1:], transform=from_origin(500640, 4100000, 10, 10))
    with pytest.raises(RasterSourceError, match=r"beside_B03\.tif .* do not overlap.*mosaic"):
        RasterSource([a, beside], stack=True)
    offgrid = write_raster(tmp_path / "off_B03.tif", scene[1:], transform=from_origin(500003, 4100000, 10, 10))
    with pytest.raises(RasterSourceError, match=r"off_B03\.tif.*pixel grid.*--target-resolution"):
        RasterSource([a, offgrid], stack=True)


def test_mosaic_of_stacks(tmp_path: Path) -> None:
    scene = smooth_scene(2, H, W, seed=9, dtype=np.uint16)
    scene[0, 50:60, 10:20] = 0
    tiles, stacked = [], []
    for j, (c0, c1) in enumerate([(0, 70), (64, W)]):  # the two tiles share a 6-pixel border strip
        t = default_transform() @ rasterio.Affine.translation(c0, 0)
        part = scene[:, :, c0:c1]
        tiles.append([write_raster(tmp_path / f"t{j}_B{k + 2}.tif", part[k : k + 1], transform=t, nodata=0)
                      for k in range(2)])  # fmt: skip
        stacked.append(write_raster(tmp_path / f"t{j}.tif", part, transform=t, nodata=0))
    with RasterSource(tiles) as mosaic, RasterSource(stacked) as reference:
        assert (
            mosaic.stack
            and mosaic.band_names == ("B02", "B03")
            and mosaic.tiles == tuple(tuple(str(p) for p in t) for t in tiles)
        )
        assert (mosaic.height, mosaic.width) == (H, W)
        _assert_same_reads(mosaic, reference)
    with pytest.raises(RasterSourceError, match=r"t1_B3\.tif: holds band B03 where .*t0_B2\.tif.*same order"):
        RasterSource([tiles[0], tiles[1][::-1]])
    with pytest.raises(RasterSourceError, match="same files"):
        RasterSource([tiles[0], tiles[1][:1]])
    with pytest.raises(ValueError, match="not a mix"):
        RasterSource([tiles[0], stacked[1]])


DATA = Path(__file__).parents[3] / "shared" / "data" / "sentinel2" / "bigearthnet"


@pytest.mark.shared_data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"BigEarthNet patches not found at {DATA}")
def test_bigearthnet_patch_onto_the_10m_grid() -> None:
    patch = sorted(DATA.iterdir())[0]
    files = sorted(patch.glob("*_B*.tif"))
    assert len(files) == 12
    ten = next(f for f in files if f.stem.endswith("_B02"))
    with rasterio.open(ten) as ds:
        t10, crs10 = ds.transform, ds.crs
    with RasterSource(files, stack=True, resampling="nearest") as src:
        assert (src.height, src.width, src.count) == (120, 120, 12)
        assert src.transform == t10 and src.crs == crs10 and src.res == (10.0, 10.0)
        assert src.band_names == tuple(f.stem.rsplit("_", 1)[1] for f in files)
        assert src.band_names[:3] == ("B01", "B02", "B03") and "B8A" in src.band_names
        data, valid = src.read(src.window())
        assert valid.all()
        for i, f in enumerate(files):
            with rasterio.open(f) as ds:
                raw = ds.read(1)
                factor = 120 // ds.height
            up = np.repeat(np.repeat(raw, factor, axis=0), factor, axis=1).astype(np.float32)
            assert np.array_equal(data[i], up), f.name  # nearest: each coarse pixel over factor x factor
    with RasterSource(files, stack=True, bands=["B04", "B03", "B02"]) as rgb:  # all 10 m: read as they are
        assert rgb.describe()["resampled"] == [] and rgb.transform == t10


def test_band_statistics_of_a_stack(bands_u16: tuple[list[Path], Path, np.ndarray], tmp_path: Path) -> None:
    from geodino.raster.stats import band_statistics

    paths, stacked, scene = bands_u16
    for max_pixels in (10**6, 1000):  # whole and decimated: the same pixels as the stacked file's
        assert band_statistics(paths, stack=True, max_pixels=max_pixels) == band_statistics(
            stacked, max_pixels=max_pixels
        )
    mean, std = band_statistics(paths, ["B01", "B03"], stack=True)
    valid = (scene[[2, 0]] != 0).all(axis=0)  # the selected bands' validity (band 2's hole is not read)
    expected = scene[[2, 0]][:, valid].astype(np.float64) / 10000
    np.testing.assert_allclose(mean, expected.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, expected.std(axis=1), rtol=1e-12)
    # A coarser band is sampled on the stack's grid (nearest).
    a, b, fine, coarse = _coarse_pair(tmp_path)
    (m_fine, m_coarse), _ = band_statistics([a, b], stack=True)
    assert m_fine == pytest.approx(fine.mean() / 10000, rel=1e-12)
    assert m_coarse == pytest.approx(coarse.mean() / 10000, rel=1e-12)  # each coarse pixel 2 x 2 times
    with pytest.raises(TypeError, match="stack=True"):
        band_statistics([a, b])


def test_band_statistics_refuses_complex(tmp_path: Path) -> None:
    from geodino.raster.stats import band_statistics

    slc = (np.ones((1, 8, 8)) + 1j).astype(np.complex64)
    path = write_raster(tmp_path / "slc.tif", slc)
    with pytest.raises(RasterSourceError, match=r"slc\.tif: holds complex values"):
        band_statistics(path)
    with pytest.raises(RasterSourceError, match=r"slc\.tif: holds complex values"):
        band_statistics([path], stack=True)
