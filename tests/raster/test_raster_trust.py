"""RasterSource refuses or warns instead of a silent wrong result (issue 7 items 3, 4, 7, 8), on real GeoTIFFs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin
from rasters import default_transform, smooth_scene, write_raster

from geodino.raster.source import RasterSource, RasterSourceError, RasterSourceWarning
from geodino.raster.windows import Window


def _no_warning() -> warnings.catch_warnings:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("error", RasterSourceWarning)
    return ctx


# ---------------------------------------------------------------------------------------------- overlapping tiles
def test_tiles_covering_each_other_are_refused(tmp_path: Path) -> None:
    scene = smooth_scene(1, 64, 80, seed=1, dtype=np.uint16)
    a = write_raster(tmp_path / "date1.tif", scene)
    b = write_raster(tmp_path / "date2.tif", scene + 1)
    with pytest.raises(
        RasterSourceError, match=r"date1\.tif and .*date2\.tif overlap on 64 x 80 pixels \(100% .*completely.*--stack"
    ):
        RasterSource([a, b])


def test_tiles_overlapping_beyond_a_border_are_refused(tmp_path: Path) -> None:
    scene = smooth_scene(1, 100, 100, seed=2, dtype=np.uint16)
    a = write_raster(tmp_path / "a.tif", scene[:, :, :80])
    # 10 pixels to the right: 70 of b's 80 columns lie on a.
    b = write_raster(
        tmp_path / "b.tif", scene[:, :, 10:90] + 1, transform=default_transform() @ Affine.translation(10, 0)
    )
    with pytest.raises(RasterSourceError, match=r"a\.tif and .*b\.tif overlap on 100 x 70 pixels.*allow_overlap"):
        RasterSource([a, b])
    with RasterSource([a, b], allow_overlap=True) as src:  # asked for: first listed wins
        data, valid = src.read(src.window())
        assert valid.all() and src.width == 90
        assert np.array_equal(data[0, :, :80], scene[0, :, :80].astype(np.float32))


@pytest.mark.parametrize("strip", [1, 8, 24])  # 24 of 60 rows: 40% of the smaller tile
def test_tiles_sharing_a_border_strip_stay_a_mosaic(tmp_path: Path, strip: int) -> None:
    # Four tiles of a 2 x 2 mosaic, neighbours sharing `strip` pixels (Sentinel-2 MGRS tiles share 9%).
    scene = smooth_scene(2, 120, 160, seed=3, dtype=np.uint16)
    paths = []
    for r0, r1 in [(0, 60 + strip), (60, 120)]:
        for c0, c1 in [(0, 80 + strip), (80, 160)]:
            t = default_transform() @ Affine.translation(c0, r0)
            paths.append(write_raster(tmp_path / f"t{r0}_{c0}.tif", scene[:, r0:r1, c0:c1], transform=t))
    with RasterSource(paths) as src:
        data, valid = src.read(src.window())
    assert valid.all() and np.array_equal(data, scene.astype(np.float32))


# ---------------------------------------------------------------------------------------------- complex values
def test_complex_values_refused_or_read_as_magnitude(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    slc = (rng.normal(size=(1, 40, 48)) + 1j * rng.normal(size=(1, 40, 48))).astype(np.complex64)
    path = write_raster(tmp_path / "slc.tif", slc)
    with pytest.raises(RasterSourceError, match=r"slc\.tif: holds complex values \(complex64.*--complex magnitude"):
        RasterSource(path)
    with pytest.warns(RasterSourceWarning, match=r"slc\.tif: complex values .* magnitude"):
        src = RasterSource(path, complex_mode="magnitude")
    with src:
        assert src.dtype == np.float32 and src.complex_mode == "magnitude"
        assert "magnitude" in src.describe()["notes"][0] and "magnitude" in repr(src)
        data, valid = src.read(Window(-4, -4, 48, 56))
        assert valid.all() and data.dtype == np.float32
        expected = np.abs(slc[0]).astype(np.float32)
        assert np.array_equal(data[0, 4:44, 4:52], expected)  # not the real part
        assert not np.allclose(data[0, 4:44, 4:52], slc[0].real)
    with pytest.raises(ValueError, match="complex_mode"):
        RasterSource(path, complex_mode="phase")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- clear messages
def test_rotated_geotransform_names_file_and_its_transform(tmp_path: Path) -> None:
    rotated = from_origin(500000, 4100000, 10, 10) @ Affine.rotation(30)
    path = write_raster(tmp_path / "rotated.tif", smooth_scene(1, 32, 32, seed=4, dtype=np.uint8), transform=rotated)
    with pytest.raises(RasterSourceError) as err:
        RasterSource(path)
    message = str(err.value)
    assert "rotated.tif" in message and "--target-resolution" in message
    assert f"({rotated.c:g}, {rotated.a:g}, {rotated.b:g}" in message  # the INPUT's transform, 10 m pixels
    assert "160" not in message
    with RasterSource(path, target_resolution=10) as src:  # warped onto a north-up grid
        assert src.transform.b == 0 and src.transform.d == 0 and src.res == (10.0, 10.0)


def test_corrupt_tile_error_has_gdal_detail_file_and_window(tmp_path: Path) -> None:
    path = tmp_path / "truncated.tif"
    data = np.random.default_rng(1).integers(0, 255, (3, 512, 512), dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", width=512, height=512, count=3, dtype="uint8", crs="EPSG:32633",
        transform=default_transform(), tiled=True, blockxsize=256, blockysize=256, compress="jpeg",
    ) as dst:  # fmt: skip
        dst.write(data)
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) * 2 // 3)
    with RasterSource(path) as src:
        src.read(Window(0, 0, 64, 64))  # the first tile is intact
        with pytest.raises(RasterSourceError) as err:
            src.read(Window(300, 300, 100, 100))
    message = str(err.value)
    assert "truncated.tif" in message and "rows 300..399, columns 300..399" in message
    assert "See previous exception" not in message
    assert "TIFFReadEncodedTile" in message or "Read error" in message  # GDAL's own words


def test_messages_name_cli_flags(tmp_path: Path) -> None:
    scene = smooth_scene(1, 32, 32, seed=5, dtype=np.uint8)
    nocrs = write_raster(tmp_path / "nocrs.tif", scene, crs=None)
    with pytest.raises(RasterSourceError, match=r"nocrs\.tif.*--allow-no-crs"):
        RasterSource(nocrs)
    a = write_raster(tmp_path / "a.tif", scene)
    b = write_raster(tmp_path / "b.tif", scene, crs="EPSG:32632", transform=from_origin(500320, 4100000, 10, 10))
    with pytest.raises(RasterSourceError, match=r"b\.tif is EPSG:32632.*--target-crs"):
        RasterSource([a, b])
    c = write_raster(tmp_path / "c.tif", scene, transform=from_origin(500320, 4100000, 20, 20))
    with pytest.raises(RasterSourceError, match=r"c\.tif: resolution.*--target-resolution"):
        RasterSource([a, c])
    with pytest.raises(ValueError, match="--target-resolution"):
        RasterSource(a, target_resolution=-1)


# ---------------------------------------------------------------------------------------------- minor
@pytest.mark.parametrize(("dtype", "nodata"), [(np.uint8, 0), (np.float32, float("nan")), (np.int16, -9999)])
def test_all_nodata_input_warns(tmp_path: Path, dtype: type, nodata: float) -> None:
    empty = np.full((2, 50, 60), nodata, dtype=dtype)
    path = write_raster(tmp_path / "empty.tif", empty, nodata=nodata)
    with pytest.warns(RasterSourceWarning, match=r"empty\.tif: no valid pixel"):
        RasterSource(path).close()
    some = empty.copy()
    some[:, 20, 30] = 1
    ok = write_raster(tmp_path / "one_pixel.tif", some, nodata=nodata)
    ctx = _no_warning()
    try:
        RasterSource(ok).close()
        RasterSource(
            [
                ok,
                write_raster(tmp_path / "e2.tif", empty, nodata=nodata, transform=from_origin(500600, 4100000, 10, 10)),
            ]
        ).close()
    finally:
        ctx.__exit__(None, None, None)


def test_all_nodata_band_of_a_stack_warns(tmp_path: Path) -> None:
    scene = smooth_scene(1, 40, 40, seed=6, dtype=np.uint16)
    a = write_raster(tmp_path / "x_B02.tif", scene, nodata=0)
    b = write_raster(tmp_path / "x_B03.tif", np.zeros_like(scene), nodata=0)
    with pytest.warns(RasterSourceWarning, match=r"x_B03\.tif: no valid pixel"):
        RasterSource([a, b], stack=True).close()


def test_all_nodata_file_with_overviews_warns(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "ov.tif", np.zeros((1, 512, 512), dtype=np.uint8), nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4, 8])
    with pytest.warns(RasterSourceWarning, match=r"ov\.tif: no valid pixel"):
        RasterSource(path).close()


def test_datum_realisations_are_not_mixed_silently(tmp_path: Path) -> None:
    # NAD83(HARN) / North Carolina (EPSG:3358) and NAD83 / North Carolina (EPSG:32119): same projection.
    scene = smooth_scene(1, 40, 40, seed=7, dtype=np.uint16)
    a = write_raster(tmp_path / "harn.tif", scene, crs="EPSG:3358", transform=from_origin(600000, 200000, 10, 10))
    b = write_raster(tmp_path / "nad83.tif", scene, crs="EPSG:32119", transform=from_origin(600400, 200000, 10, 10))
    with pytest.raises(RasterSourceError, match=r"EPSG:32119.*EPSG:3358.*datum realisation.*--target-crs"):
        RasterSource([a, b])
    with pytest.warns(RasterSourceWarning, match=r"harn\.tif is in EPSG:3358.*nad83\.tif in EPSG:32119.*datum"):
        src = RasterSource([a, b], target_crs="EPSG:32119")
    src.close()
    c = write_raster(tmp_path / "utm.tif", scene, transform=from_origin(500400, 4100000, 10, 10))
    ctx = _no_warning()
    try:  # two unrelated CRSs warped together: no datum warning
        RasterSource([write_raster(tmp_path / "utm33.tif", scene), c], target_crs="EPSG:32633").close()
    finally:
        ctx.__exit__(None, None, None)


def test_empty_band_selection_refused(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "s.tif", smooth_scene(2, 16, 16, seed=8, dtype=np.uint8))
    with pytest.raises(ValueError, match="no band selected"):
        RasterSource(path, bands=[])
    with pytest.raises(ValueError, match="no band selected"):
        RasterSource([path], stack=True, bands=[])


def test_bands_needing_different_scales_are_refused(tmp_path: Path) -> None:
    # One input scale applies to every band: uint16 reflectance x 10000 next to a uint8 band would be mis-scaled.
    u16 = write_raster(tmp_path / "x_B04.tif", smooth_scene(1, 32, 32, seed=9, dtype=np.uint16))
    u8 = write_raster(tmp_path / "mask.tif", smooth_scene(1, 32, 32, seed=9, dtype=np.uint8))
    with pytest.raises(RasterSourceError, match=r"mask\.tif is uint8 but .*x_B04\.tif is uint16.*one dtype"):
        RasterSource([u16, u8], stack=True)
    beside = write_raster(
        tmp_path / "east.tif",
        smooth_scene(1, 32, 32, seed=9, dtype=np.uint8),
        transform=from_origin(500320, 4100000, 10, 10),
    )
    with pytest.raises(RasterSourceError, match=r"east\.tif is uint8"):
        RasterSource([u16, beside])  # mosaic tiles too
    f32 = write_raster(tmp_path / "dem.tif", smooth_scene(1, 32, 32, seed=9, dtype=np.float32))
    i16 = write_raster(tmp_path / "i16.tif", smooth_scene(1, 32, 32, seed=9, dtype=np.int16))
    with RasterSource([f32, i16], stack=True) as src:  # both scale 1: fine
        assert src.dtype == np.float32
