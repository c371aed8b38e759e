"""RasterSource on real GeoTIFFs written with rasterio in tmp_path."""

from __future__ import annotations

import itertools
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasters import default_transform, smooth_scene, write_raster

from geodino.raster.source import RasterSource, RasterSourceError, reflect_indices
from geodino.raster.windows import Window

H, W = 300, 500


@pytest.fixture(scope="module")
def scene_u16() -> np.ndarray:
    return smooth_scene(4, H, W, seed=11, dtype=np.uint16)


@pytest.fixture(scope="module")
def tif_u16(tmp_path_factory: pytest.TempPathFactory, scene_u16: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("src") / "scene.tif"
    return write_raster(path, scene_u16, descriptions=["B02", "B03", "B04", "B08 (nir)"], blocksize=128)


def test_properties(tif_u16: Path) -> None:
    with RasterSource(tif_u16) as src:
        assert (src.height, src.width, src.count) == (H, W, 4)
        assert src.band_names == ("B02", "B03", "B04", "B08 (nir)")
        assert src.dtype == np.uint16
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)
        assert src.transform == default_transform()
        assert src.res == (10.0, 10.0)
        assert src.nodata is None
        assert src.paths == (str(tif_u16),)
        t16 = src.output_transform(16)
        assert t16 == from_origin(500000, 4100000, 160, 160)
        assert t16 @ (0, 0) == src.transform @ (0, 0)


def test_window_inside(tif_u16: Path, scene_u16: np.ndarray) -> None:
    with RasterSource(tif_u16) as src:
        data, valid = src.read(Window(17, 230, 64, 100))
    assert data.dtype == np.float32 and data.shape == (4, 64, 100)
    assert np.array_equal(data, scene_u16[:, 17:81, 230:330].astype(np.float32))
    assert valid.all()


@pytest.mark.parametrize(
    "window",
    [
        Window(-20, -30, 64, 64),  # top-left corner
        Window(H - 40, W - 10, 100, 80),  # bottom-right corner
        Window(100, -5, 50, W + 10),  # both sides
        Window(-30, -3, 40, 20),  # the pad is larger than the part inside: mirrors pixels outside the window
        Window(H - 5, W - 5, 40, 40),
        Window(-2 * H, 3 * W, 40, 60),  # far outside
        Window(-H - 50, -W - 50, 3 * H, 3 * W),  # larger than the raster on every side
    ],
)
def test_reflect_and_constant_fill(tif_u16: Path, scene_u16: np.ndarray, window: Window) -> None:
    with RasterSource(tif_u16) as src:
        data, valid = src.read(window)
        const, cvalid = src.read(window, fill="constant", fill_value=-7.0)
    rows = reflect_indices(np.arange(window.row, window.bottom), H)
    cols = reflect_indices(np.arange(window.col, window.right), W)
    assert np.array_equal(data, scene_u16[:, rows][:, :, cols].astype(np.float32))
    assert valid.all()
    r = np.arange(window.row, window.bottom)
    c = np.arange(window.col, window.right)
    in_r, in_c = (r >= 0) & (r < H), (c >= 0) & (c < W)
    mask = in_r[:, None] & in_c[None, :]
    assert np.array_equal(cvalid, mask)
    assert (const[:, ~mask] == -7.0).all()
    assert np.array_equal(const[:, mask], data[:, mask])


def test_reflect_matches_numpy_pad() -> None:
    a = np.arange(7)
    padded = np.pad(a, 12, mode="reflect")
    assert np.array_equal(a[reflect_indices(np.arange(-12, 19), 7)], padded)
    assert reflect_indices(np.arange(-3, 4), 1).tolist() == [0] * 7


def test_tiny_raster_reflect_large_pad(tmp_path: Path) -> None:
    # A 224 tile over a 100 x 101 raster (the Sentinel-2 sample's size).
    scene = smooth_scene(2, 100, 101, seed=1, dtype=np.float32)
    path = write_raster(tmp_path / "tiny.tif", scene, tiled=False)
    with RasterSource(path) as src:
        data, valid = src.read(Window(0, 0, 224, 224))
    assert data.shape == (2, 224, 224) and valid.all()
    assert np.array_equal(data[:, :100, :101], scene)
    assert np.array_equal(data[:, 100, :101], scene[:, 98])  # first reflected row mirrors row 98
    assert np.array_equal(data, np.pad(scene, ((0, 0), (0, 124), (0, 123)), mode="reflect"))


@pytest.mark.parametrize(
    ("dtype", "nodata"),
    [(np.uint8, 0), (np.uint8, 255), (np.float32, -3.4e38), (np.float32, float("nan")), (np.int16, -9999)],
)
def test_nodata_values(tmp_path: Path, dtype: type, nodata: float) -> None:
    scene = smooth_scene(3, 120, 150, seed=2, dtype=dtype)
    hole = np.zeros((120, 150), dtype=bool)
    hole[30:60, 40:90] = True
    scene[1, hole] = nodata  # nodata in one band only: the pixel is invalid
    scene[:, 0, 0] = nodata
    path = write_raster(tmp_path / "nd.tif", scene, nodata=nodata)
    expected = ~hole
    expected[0, 0] = False
    with RasterSource(path) as src:
        _, valid = src.read(Window(-10, -10, 140, 170), fill="constant")
        assert np.array_equal(valid[10:130, 10:160], expected)
        assert not valid[:10].any()
        inner, ivalid = src.read(Window(0, 0, 120, 150))
        assert np.array_equal(ivalid, expected)
        assert np.array_equal(inner[:, expected], scene[:, expected].astype(np.float32))
        # Reflected pixels carry the validity of the pixel they mirror: (-1, -1) mirrors (1, 1), (0, -1) mirrors (0, 1).
        _, rvalid = src.read(Window(-1, -1, 3, 3))
        assert rvalid.tolist() == [[True, True, True], [True, False, True], [True, True, True]]


def test_nan_without_nodata_is_invalid(tmp_path: Path) -> None:
    scene = smooth_scene(2, 64, 64, seed=4, dtype=np.float32)
    scene[0, 5, 7] = np.nan
    with RasterSource(write_raster(tmp_path / "nan.tif", scene)) as src:
        _, valid = src.read(Window(0, 0, 64, 64))
    assert (~valid).sum() == 1 and not valid[5, 7]


def test_nodata_override(tmp_path: Path) -> None:
    scene = smooth_scene(1, 64, 64, seed=5, dtype=np.uint8)
    scene[0, :10] = 7
    path = write_raster(tmp_path / "ov.tif", scene, nodata=0)
    with RasterSource(path, nodata=7) as src:
        assert src.nodata == 7
        _, valid = src.read(Window(0, 0, 64, 64))
    assert not valid[:10].any() and valid[10:].all()


def test_alpha_band(tmp_path: Path) -> None:
    rgb = smooth_scene(3, 80, 96, seed=6, dtype=np.uint8)
    alpha = np.full((1, 80, 96), 255, dtype=np.uint8)
    alpha[0, 20:40, :30] = 0
    path = tmp_path / "rgba.tif"
    with rasterio.open(
        path, "w", driver="GTiff", height=80, width=96, count=4, dtype="uint8", crs="EPSG:32633",
        transform=default_transform(), photometric="RGB", alpha="YES",
    ) as dst:  # fmt: skip
        dst.write(np.concatenate([rgb, alpha]))
    with RasterSource(path) as src:
        assert src.count == 3  # the alpha band is validity, not a band to feed the model
        data, valid = src.read(Window(0, 0, 80, 96))
    assert np.array_equal(data, rgb.astype(np.float32))
    assert np.array_equal(valid, alpha[0] > 0)


def test_internal_mask_band(tmp_path: Path) -> None:
    scene = smooth_scene(2, 64, 64, seed=7, dtype=np.uint16)
    mask = np.full((64, 64), 255, dtype=np.uint8)
    mask[:, 50:] = 0
    path = write_raster(tmp_path / "msk.tif", scene)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        dst.write_mask(mask)
    with RasterSource(path) as src:
        _, valid = src.read(Window(0, 0, 64, 64))
    assert np.array_equal(valid, mask > 0)


def test_band_selection(tif_u16: Path, scene_u16: np.ndarray) -> None:
    with RasterSource(tif_u16, bands=[3, 1]) as src:
        assert src.band_names == ("B04", "B02") and src.count == 2
        data, _ = src.read(Window(0, 0, 8, 8))
        assert np.array_equal(data, scene_u16[[2, 0], :8, :8].astype(np.float32))
    with RasterSource(tif_u16, bands=["b04", "B8", "B02"]) as src:  # case-insensitive; 'B8' matches 'B08 (nir)'
        assert src.bands == (3, 4, 1)
        data, _ = src.read(Window(0, 0, 8, 8))
        assert np.array_equal(data, scene_u16[[2, 3, 0], :8, :8].astype(np.float32))
    with pytest.raises(ValueError, match=r"unknown band name 'B05'.*B02, B03, B04, B08 \(nir\)"):
        RasterSource(tif_u16, bands=["B05"])
    with pytest.raises(ValueError, match="out of range"):
        RasterSource(tif_u16, bands=[5])


def test_unnamed_bands_get_default_names(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "plain.tif", smooth_scene(2, 16, 16, seed=0, dtype=np.uint8))
    with RasterSource(path, bands=["band_2"]) as src:
        assert src.available_band_names == ("band_1", "band_2") and src.bands == (2,)


def test_no_crs(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "nocrs.tif", smooth_scene(1, 32, 32, seed=0, dtype=np.uint8), crs=None)
    with pytest.raises(RasterSourceError, match=r"nocrs\.tif.*no CRS"):
        RasterSource(path)
    with RasterSource(path, allow_no_crs=True) as src:
        assert src.crs is None
        data, _ = src.read(Window(0, 0, 32, 32))
        assert data.shape == (1, 32, 32)


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.tif"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RasterSourceError, match=r"garbage\.tif"):
        RasterSource(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        RasterSource(tmp_path / "missing.tif")


def _tiles(tmp_path: Path, scene: np.ndarray, cuts_r: list[int], cuts_c: list[int], **kw) -> list[Path]:
    paths = []
    base = default_transform()
    for i, (r0, r1) in enumerate(itertools.pairwise(cuts_r)):
        for j, (c0, c1) in enumerate(itertools.pairwise(cuts_c)):
            transform = base @ rasterio.Affine.translation(c0, r0)
            paths.append(
                write_raster(tmp_path / f"tile_{i}_{j}.tif", scene[:, r0:r1, c0:c1], transform=transform, **kw)
            )
    return paths


@pytest.mark.parametrize(
    ("cuts_r", "cuts_c"), [([0, H], [0, 200, W]), ([0, 130, H], [0, 333, W]), ([0, 100, H], [0, 77, 300, W])]
)
def test_mosaic_equals_whole(tmp_path: Path, scene_u16: np.ndarray, cuts_r: list[int], cuts_c: list[int]) -> None:
    paths = _tiles(tmp_path, scene_u16, cuts_r, cuts_c)
    with RasterSource(paths[::-1]) as mosaic:  # order of the list does not matter without overlap
        assert (mosaic.height, mosaic.width) == (H, W)
        assert mosaic.transform == default_transform()
        data, valid = mosaic.read(Window(0, 0, H, W))
        assert np.array_equal(data, scene_u16.astype(np.float32)) and valid.all()
        edge, _ = mosaic.read(Window(-16, 120, 64, 300))
        with RasterSource(write_raster(tmp_path / "whole.tif", scene_u16)) as whole:
            expected, _ = whole.read(Window(-16, 120, 64, 300))
        assert np.array_equal(edge, expected)


def test_mosaic_gap_and_overlap(tmp_path: Path, scene_u16: np.ndarray) -> None:
    base = default_transform()
    a = write_raster(tmp_path / "a.tif", scene_u16[:, :, :200], transform=base)
    shifted = scene_u16[:, :, 150:260].copy() + 1  # overlaps a on columns 150..199
    b = write_raster(tmp_path / "b.tif", shifted, transform=base @ rasterio.Affine.translation(150, 0))
    c = write_raster(tmp_path / "c.tif", scene_u16[:, :100, 300:], transform=base @ rasterio.Affine.translation(300, 0))
    with RasterSource([a, b, c]) as mosaic:
        assert (mosaic.height, mosaic.width) == (H, W)
        data, valid = mosaic.read(Window(0, 0, H, W))
    assert np.array_equal(data[:, :, :200], scene_u16[:, :, :200].astype(np.float32))  # first listed wins
    assert np.array_equal(data[:, :, 200:260], shifted[:, :, 50:].astype(np.float32))
    assert not valid[:, 260:300].any() and not valid[100:, 300:].any()
    assert valid[:, :260].all() and valid[:100, 300:].all()


def test_mosaic_refusals(tmp_path: Path, scene_u16: np.ndarray) -> None:
    a = write_raster(tmp_path / "utm33.tif", scene_u16[:, :, :250])
    b = write_raster(tmp_path / "utm32.tif", scene_u16[:, :, 250:], crs="EPSG:32632")
    with pytest.raises(RasterSourceError, match=r"mixed CRS.*utm32\.tif.*target_crs"):
        RasterSource([a, b])
    c = write_raster(tmp_path / "coarse.tif", scene_u16[:, :50, :50], transform=from_origin(502500, 4100000, 20, 20))
    with pytest.raises(RasterSourceError, match=r"coarse\.tif.*resolution"):
        RasterSource([a, c])
    d = write_raster(tmp_path / "offgrid.tif", scene_u16[:, :50, :50], transform=from_origin(502503, 4100000, 10, 10))
    with pytest.raises(RasterSourceError, match=r"offgrid\.tif.*pixel grid"):
        RasterSource([a, d])
    e = write_raster(tmp_path / "two.tif", scene_u16[:2, :, 250:], transform=from_origin(502500, 4100000, 10, 10))
    with pytest.raises(RasterSourceError, match=r"two\.tif.*2 bands"):
        RasterSource([a, e])


def test_mixed_crs_mosaic_warped(tmp_path: Path, scene_u16: np.ndarray) -> None:
    west = write_raster(tmp_path / "utm33.tif", scene_u16[:, :, :250], nodata=0)
    # The eastern half, moved to the neighbouring UTM zone (32632) by a nearest-neighbour warp.
    east33 = write_raster(
        tmp_path / "east33.tif", scene_u16[:, :, 250:], transform=from_origin(502500, 4100000, 10, 10)
    )
    with RasterSource(east33, target_crs="EPSG:32632", resampling="nearest") as east32:
        data, valid = east32.read(east32.window(), fill="constant")
        data[:, ~valid] = 0
        east = write_raster(
            tmp_path / "utm32.tif", data.astype(np.uint16), crs="EPSG:32632", transform=east32.transform, nodata=0
        )
    with RasterSource([west, east], target_crs="EPSG:32633", target_resolution=10, resampling="nearest") as mosaic:
        assert mosaic.crs == rasterio.crs.CRS.from_epsg(32633) and mosaic.res == (10.0, 10.0)
        # The grid is anchored on the member already in EPSG:32633: its pixels come through unchanged.
        col0, row0 = ~mosaic.transform @ (500000, 4100000)
        assert col0 == round(col0) and row0 == round(row0)
        data, valid = mosaic.read(Window(round(row0), round(col0), H, W), fill="constant")
    assert np.array_equal(data[:, :, :250], scene_u16[:, :, :250].astype(np.float32)) and valid[:, :250].all()
    # The east half went through two nearest-neighbour warps: nearly all valid, values close to the original.
    inner = (slice(None), slice(5, H - 5), slice(255, W - 5))
    assert valid[inner[1:]].mean() > 0.99
    ok = valid[inner[1:]]
    corr = np.corrcoef(data[inner][:, ok].ravel(), scene_u16[inner][:, ok].ravel().astype(np.float64))[0, 1]
    assert corr > 0.99


def test_warp_to_coarser_resolution(tif_u16: Path, scene_u16: np.ndarray) -> None:
    with RasterSource(tif_u16, target_resolution=20, resampling="average") as src:
        assert (src.height, src.width) == (H // 2, W // 2)
        assert src.transform == from_origin(500000, 4100000, 20, 20)
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)
        data, valid = src.read(Window(0, 0, H // 2, W // 2))
        assert valid.all()
        block_mean = scene_u16.astype(np.float64).reshape(4, H // 2, 2, W // 2, 2).mean(axis=(2, 4))
        np.testing.assert_allclose(data, block_mean, atol=1.0)  # integer output rounding
    with RasterSource(tif_u16, target_resolution=(5, 5)) as fine:
        assert (fine.height, fine.width) == (2 * H, 2 * W)


def test_warp_nodata_and_outside(tmp_path: Path) -> None:
    scene = smooth_scene(1, 120, 120, seed=8, dtype=np.uint8)
    scene[0, 40:80, 40:80] = 0
    path = write_raster(tmp_path / "hole.tif", scene, nodata=0)
    with RasterSource(path, target_crs="EPSG:4326") as src:
        data, valid = src.read(src.window())
        assert 0 < (~valid).mean() < 0.5  # the hole (and slivers outside the rotated footprint)
        assert (data[:, valid] > 0).all()
        # The hole's centre, mapped to lon/lat and then to a pixel of the warped grid, is invalid.
        lon, lat = rasterio.warp.transform("EPSG:32633", "EPSG:4326", [500000 + 600], [4100000 - 600])
        c, r = ~src.transform @ (lon[0], lat[0])
        assert not valid[int(r), int(c)]
        corner_lon, corner_lat = rasterio.warp.transform("EPSG:32633", "EPSG:4326", [500000 + 5], [4100000 - 5])
        c, r = ~src.transform @ (corner_lon[0], corner_lat[0])
        assert valid[int(r), int(c)]


def test_pickle_round_trip(tif_u16: Path) -> None:
    src = RasterSource(tif_u16, bands=["B03"])
    before = src.read(Window(-5, 10, 40, 40))
    clone = pickle.loads(pickle.dumps(src))
    after = clone.read(Window(-5, 10, 40, 40))
    assert clone.band_names == ("B03",) and clone.transform == src.transform
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    src.close()
    clone.close()
    # Reads after close reopen lazily.
    assert np.array_equal(src.read(Window(-5, 10, 40, 40))[0], before[0])
    src.close()
    with RasterSource(tif_u16, target_crs="EPSG:4326") as warped:
        clone = pickle.loads(pickle.dumps(warped))
        window = Window(warped.height // 2, -8, 32, 32)
        a, b = warped.read(window), clone.read(window)
        assert clone.crs == warped.crs and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        clone.close()


def test_reads_hold_gdal_block_cache_under_the_ceiling(tif_u16: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rasterio.env import get_gdal_config, set_gdal_config

    from geodino.raster import source as source_module

    seen: list[int] = []
    original = RasterSource._read_members

    def spy(self: RasterSource, window: Window) -> tuple[np.ndarray, np.ndarray]:
        seen.append(int(get_gdal_config("GDAL_CACHEMAX")))
        return original(self, window)

    monkeypatch.setattr(RasterSource, "_read_members", spy)
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    before = int(get_gdal_config("GDAL_CACHEMAX"))
    set_gdal_config("GDAL_CACHEMAX", 512 * 2**20)
    try:
        with RasterSource(tif_u16) as src:
            src.read(Window(0, 0, 64, 64))
            assert seen == [source_module.READ_CACHE_BYTES]  # lowered while reading...
            assert int(get_gdal_config("GDAL_CACHEMAX")) == 512 * 2**20  # ...and restored after
            monkeypatch.setenv("GDAL_CACHEMAX", "512")  # the user's own setting is left alone
            src.read(Window(0, 0, 64, 64))
            assert seen[-1] == 512 * 2**20
    finally:
        set_gdal_config("GDAL_CACHEMAX", before)


def test_threaded_reads_equal_serial(tif_u16: Path) -> None:
    windows = [Window(r, c, 64, 64) for r in range(-32, H, 48) for c in range(-32, W, 96)]
    with RasterSource(tif_u16) as src:
        serial = [src.read(w) for w in windows]
        with ThreadPoolExecutor(max_workers=4) as pool:
            threaded = list(pool.map(src.read, windows))
        assert len(src._opened) > 1  # threads opened their own handles
    for (d1, v1), (d2, v2) in zip(serial, threaded, strict=True):
        assert np.array_equal(d1, d2) and np.array_equal(v1, v2)


def test_bad_arguments(tif_u16: Path) -> None:
    with pytest.raises(ValueError, match="resampling"):
        RasterSource(tif_u16, resampling="fancy")
    with RasterSource(tif_u16) as src, pytest.raises(ValueError, match="fill"):
        src.read(Window(0, 0, 4, 4), fill="wrap")  # type: ignore[arg-type]
