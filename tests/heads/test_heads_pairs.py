"""Labels onto the imagery grid through CRS + geotransform, and chips on the global patch grid."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from label_helpers import (
    IMAGE_CRS,
    X0,
    Y0,
    class_field,
    covering_grid,
    field_on_grid,
    height_field,
    write_field,
)
from rasterio.transform import from_origin
from rasters import smooth_scene, write_raster

from geodino.errors import InputError
from geodino.heads.data import pairs
from geodino.heads.data.chips import IGNORE_INDEX
from geodino.heads.data.pairs import ClassMap, LabelError, labels_on_grid, make_chips, resolve_classes
from geodino.raster.normalize import Normalization
from geodino.raster.windows import Window

SHAPE = (96, 120)
TRANSFORM = from_origin(X0, Y0, 10, 10)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_raster(
        tmp_path / "image.tif", smooth_scene(3, *SHAPE, seed=1, dtype=np.uint16), crs=IMAGE_CRS, transform=TRANSFORM
    )


def _on_image(labels: Path | list[Path], task: str, **kwargs) -> np.ndarray:
    return labels_on_grid(labels, task=task, crs=IMAGE_CRS, transform=TRANSFORM, shape=SHAPE, **kwargs)


def _interior(classes: np.ndarray, radius: int = 2) -> np.ndarray:
    """(H, W) bool: pixels whose (2r+1)^2 neighbourhood holds one class (away from class edges and the border)."""
    h, w = classes.shape
    out = np.zeros((h, w), dtype=bool)
    core = classes[radius : h - radius, radius : w - radius]
    same = np.ones_like(core, dtype=bool)
    for dr in range(-radius, radius + 1):
        for dc in range(-radius, radius + 1):
            same &= classes[radius + dr : h - radius + dr, radius + dc : w - radius + dc] == core
    out[radius : h - radius, radius : w - radius] = same
    return out


def test_heights_on_the_imagery_grid_are_read_exactly(tmp_path: Path) -> None:
    written = write_field(tmp_path / "h.tif", height_field, IMAGE_CRS, TRANSFORM, SHAPE, nodata=-9999.0)
    got = _on_image(tmp_path / "h.tif", "canopy-height")
    assert got.dtype == np.float32 and got.shape == SHAPE
    assert np.array_equal(got, written)
    window = Window(10, 20, 30, 40)
    assert np.array_equal(_on_image(tmp_path / "h.tif", "canopy-height", window=window), written[10:40, 20:60])


@pytest.mark.parametrize("crs", ["EPSG:32634", "EPSG:4326"])
def test_heights_from_a_shifted_grid_in_another_crs_match_within_resampling_tolerance(tmp_path: Path, crs: str) -> None:
    """UTM 34N (rotated ~3.6 deg from 33N here) at 10 m, or lon/lat at ~1e-4 deg, origin off by 0.37 pixel.

    Tolerance: AVERAGE blends the label cells a pixel overlaps, a smoothing over about one pixel; for this field
    (amplitude 10 m, wavelengths >= 800 m) curvature bounds that by 10 m * (2 pi 10 / 800)^2 / 2 ~ 0.03 m. Measured:
    max 0.023 / 0.035 m, mean 0.008 / 0.012 m (UTM 34N / lon-lat); asserted: max < 0.1 m, mean < 0.03 m."""
    res = 10.0 if crs == "EPSG:32634" else 1e-4
    margin = 5 * res
    transform, shape = covering_grid(TRANSFORM, SHAPE, crs, res, shift=0.37, margin=margin)
    write_field(tmp_path / "h.tif", height_field, crs, transform, shape, nodata=-9999.0)
    truth = field_on_grid(height_field, IMAGE_CRS, TRANSFORM, SHAPE)
    got = _on_image(tmp_path / "h.tif", "canopy-height")
    assert np.isfinite(got).all()
    error = np.abs(got - truth)
    assert error.max() < 0.1 and error.mean() < 0.03, (error.max(), error.mean())
    # Index alignment would be badly wrong: the label array's pixel (i, j) is elsewhere on the ground.
    written = field_on_grid(height_field, crs, transform, shape)
    assert np.abs(written[: SHAPE[0], : SHAPE[1]] - truth).mean() > 1.0


@pytest.mark.parametrize("crs", ["EPSG:32634", "EPSG:4326"])
def test_classes_from_a_shifted_grid_in_another_crs_agree_away_from_class_edges(tmp_path: Path, crs: str) -> None:
    res = 10.0 if crs == "EPSG:32634" else 1e-4
    transform, shape = covering_grid(TRANSFORM, SHAPE, crs, res, shift=0.37, margin=5 * res)
    write_field(tmp_path / "c.tif", class_field, crs, transform, shape, dtype="uint8")
    class_map = ClassMap((10, 20, 30, 40), ("a", "b", "c", "d"))
    truth = field_on_grid(class_field, IMAGE_CRS, TRANSFORM, SHAPE) // 10 - 1
    got = _on_image(tmp_path / "c.tif", "land-cover", class_map=class_map)
    assert got.dtype == np.int64 and (got != IGNORE_INDEX).all()
    interior = _interior(truth)
    assert interior.mean() > 0.5 and len(np.unique(truth[interior])) == 4
    assert (got[interior] == truth[interior]).mean() >= 0.999
    assert (got == truth).mean() > 0.9  # NEAREST differs only next to class edges


@pytest.mark.parametrize(
    ("fine_origin", "coarse_origin"),
    [((X0, Y0), (X0 - 0.3, Y0 + 0.2)), ((257957.6, 4110508.8), (257958.0, 4110509.0))],  # the second: NEON SJER
)
def test_coarse_heights_onto_fine_imagery_give_the_covering_cell(
    tmp_path: Path, fine_origin: tuple[float, float], coarse_origin: tuple[float, float]
) -> None:
    """1 m labels, origin off by a few 0.1 m, onto 0.1 m pixels: a pixel inside one cell gets that cell's value;
    pixels outside the label raster (or on a nodata cell) stay unlabelled, also where rounding makes them touch."""
    fine = from_origin(*fine_origin, 0.1, 0.1)
    coarse = from_origin(*coarse_origin, 1.0, 1.0)
    heights = np.arange(12 * 12, dtype=np.float32).reshape(12, 12) / 4
    heights[5, 5] = -9999.0
    write_raster(tmp_path / "chm.tif", heights[None], crs=IMAGE_CRS, transform=coarse, nodata=-9999.0)
    got = labels_on_grid(tmp_path / "chm.tif", task="canopy-height", crs=IMAGE_CRS, transform=fine, shape=(130, 130))
    rows, cols = np.mgrid[0:130, 0:130]
    # Hand computation through the two geotransforms: the 1 m cell holding each 0.1 m pixel's centre.
    x, y = fine.c + 0.1 * (cols + 0.5), fine.f - 0.1 * (rows + 0.5)
    crow, ccol = np.floor(coarse.f - y).astype(int), np.floor(x - coarse.c).astype(int)
    inside = (crow >= 0) & (crow < 12) & (ccol >= 0) & (ccol < 12)
    expect = np.full((130, 130), np.nan, np.float32)
    expect[inside] = heights[crow[inside], ccol[inside]]
    expect[expect == -9999.0] = np.nan
    assert np.array_equal(np.isnan(got), np.isnan(expect))
    assert np.allclose(got[np.isfinite(got)], expect[np.isfinite(expect)], atol=1e-4)
    assert np.isnan(got).sum() == 100 + (~inside).sum()  # the nodata cell covers exactly 10 x 10 fine pixels
    assert (~inside).any()


def test_fine_heights_onto_coarse_imagery_average_the_labelled_part(tmp_path: Path) -> None:
    """1 m labels onto 10 m pixels: the mean of the labelled cells; under half the area labelled -> unlabelled."""
    heights = np.full((30, 30), 4.0, np.float32)
    heights[:, 15:] = 8.0
    heights[10:20, :4] = -1.0  # pixel (1, 0): 40% nodata -> mean of the rest
    heights[20:30, 10:16] = -1.0  # pixel (2, 1): 60% nodata -> unlabelled
    write_raster(tmp_path / "h.tif", heights[None], crs=IMAGE_CRS, transform=from_origin(X0, Y0, 1, 1), nodata=-1.0)
    got = labels_on_grid(
        tmp_path / "h.tif", task="canopy-height", crs=IMAGE_CRS, transform=from_origin(X0, Y0, 10, 10), shape=(4, 4)
    )
    assert got[0].tolist()[:3] == [4.0, pytest.approx(4.0 * 5 / 10 + 8.0 * 5 / 10), 8.0]
    assert got[1, 0] == 4.0 and np.isnan(got[2, 1]) and np.isnan(got[3]).all() and np.isnan(got[:, 3]).all()


def test_label_mosaic_first_labelled_tile_wins(tmp_path: Path) -> None:
    truth = field_on_grid(height_field, IMAGE_CRS, TRANSFORM, SHAPE).astype(np.float32)
    left = from_origin(X0, Y0, 10, 10)
    right = from_origin(X0 + 600, Y0, 10, 10)
    write_raster(tmp_path / "a.tif", truth[None, :, :64], crs=IMAGE_CRS, transform=left, nodata=-1.0)
    write_raster(tmp_path / "b.tif", truth[None, :, 60:], crs=IMAGE_CRS, transform=right, nodata=-1.0)
    got = _on_image([tmp_path / "a.tif", tmp_path / "b.tif"], "canopy-height")
    assert np.allclose(got, truth)


def test_nodata_and_ignore_values_leave_pixels_unlabelled(tmp_path: Path) -> None:
    values = field_on_grid(class_field, IMAGE_CRS, TRANSFORM, SHAPE).astype(np.uint8)
    values[:10] = 0
    values[10:20] = 99
    write_raster(tmp_path / "c.tif", values[None], crs=IMAGE_CRS, transform=TRANSFORM)
    class_map = resolve_classes([tmp_path / "c.tif"], nodata=0, ignore_values=[99])
    assert class_map.values == (10, 20, 30, 40) and class_map.names == ("10", "20", "30", "40")
    got = _on_image(tmp_path / "c.tif", "land-cover", class_map=class_map, nodata=0, ignore_values=[99])
    assert (got[:20] == IGNORE_INDEX).all()
    assert np.array_equal(got[20:], values[20:] // 10 - 1)
    named = resolve_classes(
        [tmp_path / "c.tif"], classes=["40=d", "30=c", "20=b", "10=a"], nodata=0, ignore_values=[99]
    )
    assert named.names == ("d", "c", "b", "a")
    got = _on_image(tmp_path / "c.tif", "land-cover", class_map=named, nodata=0, ignore_values=[99])
    assert np.array_equal(got[20:], 4 - values[20:] // 10)


def test_make_chips_on_the_global_patch_grid(tmp_path: Path, image: Path) -> None:
    heights = write_field(tmp_path / "h.tif", height_field, IMAGE_CRS, TRANSFORM, SHAPE, nodata=-9999.0)
    heights_masked = heights.copy()
    heights_masked[:40, :] = -9999.0  # only rows 40.. are labelled
    write_raster(tmp_path / "h.tif", heights_masked[None], crs=IMAGE_CRS, transform=TRANSFORM, nodata=-9999.0)
    chips = make_chips([image], [tmp_path / "h.tif"], task="canopy-height", tile=32, stride=16)
    assert chips.tile == 32 and chips.in_bands == 3 and chips.task == "canopy-height"
    assert (chips.origins % 16 == 0).all()
    # Rows 0..39 unlabelled: chips starting at rows 0 (covers 0..31) have no label; row 16 (16..47) has some.
    assert set(chips.origins[:, 0]) == {16, 32, 48, 64}  # PatchGrid: the last origin 64 reaches row 95
    assert set(chips.origins[:, 1]) == {0, 16, 32, 48, 64, 80, 96}  # the last reaches past column 119
    assert chips.gsd == 10.0 and chips.grids[0].name == "image.tif" and chips.grids[0].shape == SHAPE
    raw = smooth_scene(3, *SHAPE, seed=1, dtype=np.uint16).astype(np.float32)
    for n in range(len(chips)):
        r, c = chips.origins[n]
        h, w = min(32, SHAPE[0] - r), min(32, SHAPE[1] - c)
        assert np.allclose(chips.images[n, :, :h, :w], raw[:, r : r + h, c : c + w] / 10000.0, atol=1e-6)
        expect = heights_masked[r : r + h, c : c + w]
        assert np.array_equal(chips.targets[n, :h, :w], np.where(expect == -9999.0, np.nan, expect), equal_nan=True)
        assert np.isnan(chips.targets[n, h:, :]).all() and np.isnan(chips.targets[n, :, w:]).all()
    assert chips.normalization == Normalization(1e-4, (0.0,) * 3, (1.0,) * 3)


def test_min_labelled_and_image_nodata(tmp_path: Path) -> None:
    data = smooth_scene(3, *SHAPE, seed=1, dtype=np.uint16)
    data[:, :, :50] = 0  # nodata strip in the imagery
    write_raster(tmp_path / "img.tif", data, crs=IMAGE_CRS, transform=TRANSFORM, nodata=0)
    write_field(tmp_path / "h.tif", height_field, IMAGE_CRS, TRANSFORM, SHAPE, nodata=-9999.0)
    chips = make_chips([tmp_path / "img.tif"], [tmp_path / "h.tif"], task="canopy-height", tile=32)
    assert set(chips.origins[:, 1]) == {32, 64, 96}  # column-0 chips see only nodata imagery
    first = np.flatnonzero(chips.origins[:, 1] == 32)[0]
    assert np.isnan(chips.targets[first, :, :18]).all() and (chips.images[first, :, :, :18] == 0).all()
    assert np.isfinite(chips.targets[first, :, 18:]).all()
    few = make_chips([tmp_path / "img.tif"], [tmp_path / "h.tif"], task="canopy-height", tile=32, min_labelled=32 * 32)
    assert set(few.origins[:, 1]) == {64}  # 32 has 18 nodata columns, 96 reaches past the raster


def test_raster_smaller_than_a_tile_gives_one_padded_chip(tmp_path: Path) -> None:
    write_raster(tmp_path / "img.tif", smooth_scene(2, 20, 30, dtype=np.uint8), crs=IMAGE_CRS, transform=TRANSFORM)
    values = field_on_grid(class_field, IMAGE_CRS, TRANSFORM, (20, 30)).astype(np.uint8)
    write_raster(tmp_path / "c.tif", values[None], crs=IMAGE_CRS, transform=TRANSFORM)
    chips = make_chips([tmp_path / "img.tif"], [tmp_path / "c.tif"], task="land-cover", tile=64)
    assert len(chips) == 1 and chips.images.shape == (1, 2, 64, 64) and chips.origins.tolist() == [[0, 0]]
    assert chips.class_names == tuple(str(v) for v in np.unique(values))
    assert (chips.targets[0, 20:] == IGNORE_INDEX).all() and (chips.targets[0, :, 30:] == IGNORE_INDEX).all()
    assert (chips.targets[0, :20, :30] != IGNORE_INDEX).all()
    # Reflect padding: row 20 mirrors row 18.
    assert np.array_equal(chips.images[0, :, 20, :30], chips.images[0, :, 18, :30])


def test_band_stack_imagery_and_expected_bands(tmp_path: Path) -> None:
    data = smooth_scene(3, *SHAPE, seed=2, dtype=np.uint16)
    files = [
        write_raster(tmp_path / f"s_B0{b + 1}.tif", data[b : b + 1], crs=IMAGE_CRS, transform=TRANSFORM)
        for b in range(3)
    ]
    write_field(tmp_path / "h.tif", height_field, IMAGE_CRS, TRANSFORM, SHAPE)
    chips = make_chips([files], [tmp_path / "h.tif"], task="canopy-height", tile=48, stack=True, expected_bands=3)
    assert chips.in_bands == 3 and len(chips) == 6
    assert np.allclose(chips.images[0], data[:, :48, :48] / 10000.0, atol=1e-6)
    with pytest.raises(LabelError, match=r"s_B01.tif: expected 4 imagery bands, found 3"):
        make_chips([files], [tmp_path / "h.tif"], task="canopy-height", tile=48, stack=True, expected_bands=4)


# ------------------------------------------------------------------------------------------------ vectors
def _pixel_box(row0: float, col0: float, row1: float, col1: float) -> shapely.Polygon:
    """A box in UTM 33N from fractional pixel coordinates of the test image grid."""
    return shapely.box(X0 + 10 * col0, Y0 - 10 * row1, X0 + 10 * col1, Y0 - 10 * row0)


def _write_layer(path: Path, geoms: list, crs: str = "EPSG:4326", **columns) -> Path:
    layer = gpd.GeoDataFrame(columns, geometry=geoms, crs=IMAGE_CRS).to_crs(crs)
    if path.suffix == ".parquet":
        layer.to_parquet(path)
    else:
        layer.to_file(path)
    return path


def _has_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    "suffix",
    [".geojson", ".gpkg", pytest.param(".parquet", marks=pytest.mark.skipif(not _has_pyarrow(), reason="no pyarrow"))],
)
def test_polygons_with_a_string_class_column_in_lonlat_over_a_utm_image(tmp_path: Path, suffix: str) -> None:
    geoms = [_pixel_box(5, 10, 30, 40), _pixel_box(50, 60, 90, 110), _pixel_box(40, 0, 45, 120)]
    path = _write_layer(tmp_path / f"lc{suffix}", geoms, landcover=["forest", "water", "road"], id=[1, 2, 3])
    class_map = resolve_classes([path], label_column="landcover")
    assert class_map.values == ("forest", "road", "water")  # sorted when not declared
    got = _on_image(path, "land-cover", class_map=class_map, label_column="landcover")
    expect = np.full(SHAPE, IGNORE_INDEX)
    expect[5:30, 10:40], expect[50:90, 60:110], expect[40:45, :] = 0, 2, 1
    assert np.array_equal(got, expect)
    declared = resolve_classes([path], label_column="landcover", classes=["water", "forest", "road", "field"])
    got = _on_image(path, "land-cover", class_map=declared, label_column="landcover")
    assert (got[50:90, 60:110] == 0).all() and (got[5:30, 10:40] == 1).all() and (got[40:45] == 2).all()


def test_overlapping_polygons_of_two_classes_leave_the_overlap_unlabelled(tmp_path: Path) -> None:
    path = _write_layer(tmp_path / "lc.gpkg", [_pixel_box(0, 0, 20, 20), _pixel_box(10, 10, 30, 30)], cls=["a", "b"])
    got = _on_image(path, "land-cover", class_map=ClassMap(("a", "b"), ("a", "b")), label_column="cls")
    assert (got[10:20, 10:20] == IGNORE_INDEX).all()
    assert (got[:10, :20] == 0).all() and (got[20:30, 10:30] == 1).all()


def test_all_touched_labels_every_pixel_a_geometry_touches(tmp_path: Path) -> None:
    # Edges 0.4 pixel inside pixels 10 and 20 (rows 5 and 15), and a sliver touching no pixel centre.
    geoms = [_pixel_box(5.6, 10.6, 15.4, 20.4), _pixel_box(60.1, 0.0, 60.4, 120.0)]
    path = _write_layer(tmp_path / "lc.geojson", geoms, cls=["a", "b"])
    class_map = ClassMap(("a", "b"), ("a", "b"))
    centre = _on_image(path, "land-cover", class_map=class_map, label_column="cls")
    touched = _on_image(path, "land-cover", class_map=class_map, label_column="cls", all_touched=True)
    rows, cols = np.nonzero(centre == 0)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 14, 11, 19)  # centres inside
    rows, cols = np.nonzero(touched == 0)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 15, 10, 20)  # every pixel touched
    assert not (centre == 1).any() and (touched == 1).sum() == 120  # the sliver: one row, only when touched


def test_sparse_points_give_a_few_labelled_pixels_and_chips(tmp_path: Path, image: Path) -> None:
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, SHAPE[0], 3000), rng.integers(0, SHAPE[1], 3000)
    # 3000 points (some share a pixel): sparse labels, ~20% of the pixels.
    points = [shapely.Point(X0 + 10 * (c + 0.5), Y0 - 10 * (r + 0.5)) for r, c in zip(rows, cols, strict=True)]
    truth = field_on_grid(height_field, IMAGE_CRS, TRANSFORM, SHAPE)
    path = _write_layer(tmp_path / "pts.gpkg", points, crs="EPSG:32634", height=truth[rows, cols])
    got = _on_image(path, "canopy-height", label_column="height")
    labelled = np.isfinite(got)
    assert labelled.sum() == len(set(zip(rows.tolist(), cols.tolist(), strict=True)))
    assert np.allclose(got[rows, cols], truth[rows, cols], atol=1e-4)
    chips = make_chips([image], [path], task="canopy-height", tile=32, label_column="height")
    assert chips.labelled().sum() == labelled.sum()
    kinds = np.digitize(truth[rows, cols], [15.0]).astype(str)
    path = _write_layer(tmp_path / "cls.gpkg", points, kind=kinds)
    chips = make_chips([image], [path], task="land-cover", tile=32, label_column="kind", min_labelled=5)
    assert chips.class_names == ("0", "1") and (chips.labelled().sum(axis=(1, 2)) >= 5).all()
    for n, (r, c) in enumerate(chips.origins):
        rr, cc = np.nonzero(chips.labelled()[n])
        assert np.array_equal(chips.targets[n, rr, cc], (truth[r + rr, c + cc] >= 15.0).astype(np.int64))


# --------------------------------------------------------------------------------------------- bad inputs
def test_labels_that_do_not_overlap_the_imagery_are_refused(tmp_path: Path, image: Path) -> None:
    far = from_origin(X0 + 50_000, Y0, 10, 10)
    write_field(tmp_path / "far.tif", height_field, IMAGE_CRS, far, SHAPE)
    with pytest.raises(
        LabelError,
        match=r"far.tif: the labels \(bounds \(550000, 4099040, 551200, 4100000\) in EPSG:32633\) do not "
        r"overlap the imagery grid of image.tif \(bounds \(500000, 4099040, 501200, 4100000\)",
    ):
        make_chips([image], [tmp_path / "far.tif"], task="canopy-height", tile=32)
    path = _write_layer(tmp_path / "far.gpkg", [shapely.box(X0 + 50_000, Y0 - 100, X0 + 50_100, Y0)], cls=["a"])
    with pytest.raises(LabelError, match=r"far.gpkg: the labels \(bounds .* in EPSG:4326\) do not overlap"):
        make_chips([image], [path], task="land-cover", tile=32, label_column="cls")
    with pytest.raises(LabelError, match=r"do not overlap"):
        _on_image(tmp_path / "far.tif", "canopy-height")


def test_label_values_outside_the_declared_classes_are_refused(tmp_path: Path, image: Path) -> None:
    values = field_on_grid(class_field, IMAGE_CRS, TRANSFORM, SHAPE).astype(np.uint8)
    write_raster(tmp_path / "c.tif", values[None], crs=IMAGE_CRS, transform=TRANSFORM)
    with pytest.raises(
        LabelError,
        match=r"c.tif: label values outside the declared classes: found 30, 40; "
        r"expected one of 10=a, 20=b",
    ):
        make_chips([image], [tmp_path / "c.tif"], task="land-cover", tile=32, classes=["10=a", "20=b"])
    with pytest.raises(LabelError, match=r"found 40"):
        _on_image(tmp_path / "c.tif", "land-cover", class_map=ClassMap((10, 20, 30), ("a", "b", "c")))
    with pytest.raises(LabelError, match=r"raster labels hold numbers.*got 'forest'"):
        resolve_classes([tmp_path / "c.tif"], classes=["forest"])
    path = _write_layer(
        tmp_path / "lc.gpkg", [_pixel_box(0, 0, 9, 9), _pixel_box(20, 20, 29, 29)], cls=["forest", "wetland"]
    )
    with pytest.raises(
        LabelError,
        match=r"lc.gpkg: label values outside the declared classes: found wetland; "
        r"expected one of forest, water",
    ):
        make_chips([image], [path], task="land-cover", tile=32, label_column="cls", classes=["forest", "water"])


def test_a_label_column_that_does_not_exist_lists_the_columns(tmp_path: Path, image: Path) -> None:
    path = _write_layer(tmp_path / "lc.gpkg", [_pixel_box(0, 0, 9, 9)], cls=["forest"], area=[1.0])
    with pytest.raises(LabelError, match=r"lc.gpkg: .* it has no column 'class'; columns: cls, area"):
        make_chips([image], [path], task="land-cover", tile=32, label_column="class")
    with pytest.raises(LabelError, match=r"lc.gpkg: vector labels need a label column .*no label column was given"):
        make_chips([image], [path], task="land-cover", tile=32)


def test_imagery_band_counts_must_match(tmp_path: Path, image: Path) -> None:
    other = write_raster(
        tmp_path / "four.tif", smooth_scene(4, *SHAPE, dtype=np.uint16), crs=IMAGE_CRS, transform=TRANSFORM
    )
    write_field(tmp_path / "h.tif", height_field, IMAGE_CRS, TRANSFORM, SHAPE)
    with pytest.raises(LabelError, match=r"image.tif: expected 4 imagery bands, found 3"):
        make_chips([image], [tmp_path / "h.tif"], task="canopy-height", tile=32, expected_bands=4)
    with pytest.raises(LabelError, match=r"four.tif: 4 imagery bands, but image.tif has 3"):
        make_chips([image, other], [tmp_path / "h.tif"], task="canopy-height", tile=32)
    norm = Normalization(1.0, (0.0,) * 2, (1.0,) * 2)
    with pytest.raises(LabelError, match=r"image.tif: the normalisation has 2 bands, the imagery 3"):
        make_chips([image], [tmp_path / "h.tif"], task="canopy-height", tile=32, normalization=norm)


def test_no_chip_with_labels_is_refused(tmp_path: Path, image: Path) -> None:
    write_raster(
        tmp_path / "empty.tif", np.full((1, *SHAPE), -1.0, np.float32), crs=IMAGE_CRS, transform=TRANSFORM, nodata=-1.0
    )
    with pytest.raises(LabelError, match=r"no chip of 32x32 pixels has 1 or more labelled pixels .*empty.tif"):
        make_chips([image], [tmp_path / "empty.tif"], task="canopy-height", tile=32)
    with pytest.raises(LabelError, match=r"empty.tif: no labelled pixel or feature found"):
        make_chips([image], [tmp_path / "empty.tif"], task="land-cover", tile=32)


def test_other_bad_label_files(tmp_path: Path, image: Path) -> None:
    with pytest.raises(LabelError, match=r"label file not found: .*missing.tif"):
        make_chips([image], [tmp_path / "missing.tif"], task="canopy-height")
    write_raster(tmp_path / "two.tif", np.zeros((2, 8, 8), np.float32), crs=IMAGE_CRS, transform=TRANSFORM)
    with pytest.raises(LabelError, match=r"two.tif: a label raster must have 1 band, found 2"):
        make_chips([image], [tmp_path / "two.tif"], task="canopy-height")
    write_raster(tmp_path / "nocrs.tif", np.zeros((1, 8, 8), np.float32), crs=None, transform=TRANSFORM)
    with pytest.raises(LabelError, match=r"nocrs.tif: label raster has no CRS"):
        make_chips([image], [tmp_path / "nocrs.tif"], task="canopy-height")
    (tmp_path / "bad.gpkg").write_text("not a geopackage")
    with pytest.raises(LabelError, match=r"bad.gpkg: cannot be read as a vector layer"):
        make_chips([image], [tmp_path / "bad.gpkg"], task="land-cover", label_column="x")
    frac = np.full((1, *SHAPE), 1.5, np.float32)
    write_raster(tmp_path / "frac.tif", frac, crs=IMAGE_CRS, transform=TRANSFORM)
    with pytest.raises(LabelError, match=r"frac.tif: land-cover labels must be whole numbers"):
        _on_image(tmp_path / "frac.tif", "land-cover", class_map=ClassMap((1,), ("a",)))
    assert issubclass(LabelError, InputError)  # the CLI reports it in one line with exit status 2


@pytest.mark.parametrize("strip_rows", [32, 70])
def test_labels_placed_strip_by_strip_give_the_same_chips(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch, strip_rows: int
) -> None:
    transform, shape = covering_grid(TRANSFORM, SHAPE, "EPSG:32634", 7.0, shift=0.37, margin=35.0)
    write_field(tmp_path / "h.tif", height_field, "EPSG:32634", transform, shape, nodata=-9999.0)
    path = _write_layer(tmp_path / "lc.gpkg", [_pixel_box(5, 10, 30, 40), _pixel_box(50, 60, 90, 110)], cls=["a", "b"])
    whole_h = make_chips([image], [tmp_path / "h.tif"], task="canopy-height", tile=32, stride=16)
    whole_c = make_chips([image], [path], task="land-cover", tile=32, stride=16, label_column="cls")
    monkeypatch.setattr(pairs, "STRIP_ROWS", strip_rows)
    strips_h = make_chips([image], [tmp_path / "h.tif"], task="canopy-height", tile=32, stride=16)
    strips_c = make_chips([image], [path], task="land-cover", tile=32, stride=16, label_column="cls")
    for whole, strips in ((whole_h, strips_h), (whole_c, strips_c)):
        assert np.array_equal(whole.origins, strips.origins)
        assert np.array_equal(whole.targets, strips.targets, equal_nan=True)
        assert np.array_equal(whole.images, strips.images)
    assert len(whole_c) < len(whole_h)


def test_sources_with_bands_in_another_order_are_refused(tmp_path: Path) -> None:
    data = smooth_scene(3, *SHAPE, seed=2, dtype=np.uint16)
    names = ["B04", "B03", "B02"]
    a = write_raster(tmp_path / "a.tif", data, crs=IMAGE_CRS, transform=TRANSFORM, descriptions=names)
    b = write_raster(tmp_path / "b.tif", data, crs=IMAGE_CRS, transform=TRANSFORM, descriptions=names[::-1])
    write_field(tmp_path / "h.tif", height_field, IMAGE_CRS, TRANSFORM, SHAPE)
    with pytest.raises(LabelError, match=r"b.tif: band 1 is B02 where a.tif has B04"):
        make_chips([a, b], [tmp_path / "h.tif"], task="canopy-height", tile=48)


def test_shared_labels_skip_sources_they_do_not_reach(tmp_path: Path, image: Path) -> None:
    far = write_raster(
        tmp_path / "far.tif",
        smooth_scene(3, *SHAPE, dtype=np.uint16),
        crs=IMAGE_CRS,
        transform=from_origin(X0 + 50_000, Y0, 10, 10),
    )
    write_field(tmp_path / "h.tif", height_field, IMAGE_CRS, TRANSFORM, SHAPE)
    with pytest.warns(UserWarning, match=r"h.tif: labels do not reach far.tif"):
        chips = make_chips([far, image], [tmp_path / "h.tif"], task="canopy-height", tile=48)
    assert [g.name for g in chips.grids] == ["far.tif", "image.tif"] and set(chips.source.tolist()) == {1}
    with pytest.raises(LabelError, match=r"h.tif: the labels overlap none of the imagery \(far.tif, far.tif\)"):
        make_chips([far, far], [tmp_path / "h.tif"], task="canopy-height", tile=48)


def test_vector_nodata_and_ignore_values(tmp_path: Path) -> None:
    geoms = [_pixel_box(0, 0, 10, 10), _pixel_box(20, 20, 30, 30), _pixel_box(40, 40, 50, 50)]
    path = _write_layer(tmp_path / "lc.gpkg", geoms, cls=["forest", "unknown", None])
    class_map = resolve_classes([path], label_column="cls", ignore_values=["unknown"])
    assert class_map.values == ("forest",)
    got = _on_image(path, "land-cover", class_map=class_map, label_column="cls", ignore_values=["unknown"])
    assert (got[:10, :10] == 0).all() and (got != IGNORE_INDEX).sum() == 100
    path = _write_layer(tmp_path / "h.gpkg", geoms, height=[0.0, -1.0, 7.5])
    got = _on_image(path, "canopy-height", label_column="height", nodata=-1.0)
    assert (got[:10, :10] == 0.0).all() and (got[40:50, 40:50] == 7.5).all() and np.isfinite(got).sum() == 200


@pytest.mark.skipif(_has_pyarrow(), reason="pyarrow installed: GeoParquet reads")
def test_geoparquet_without_pyarrow_says_what_is_missing(tmp_path: Path, image: Path) -> None:
    (tmp_path / "lc.parquet").write_bytes(b"PAR1")
    with pytest.raises(LabelError, match=r"lc.parquet: reading GeoParquet labels needs pyarrow"):
        make_chips([image], [tmp_path / "lc.parquet"], task="land-cover", label_column="cls")
