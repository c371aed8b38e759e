"""Spatial, by-source and by-polygon splits of chip sets, checked against footprints computed independently."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from label_helpers import IMAGE_CRS, X0, Y0, height_field, write_field
from rasterio.transform import from_origin
from rasters import smooth_scene, write_raster

from geodino.heads.data.chips import ChipSet
from geodino.heads.data.pairs import LabelError, make_chips
from geodino.heads.data.splits import spatial_split, split_by_polygons, split_by_source

SHAPE = (160, 192)
TRANSFORM = from_origin(X0, Y0, 10, 10)
TILE = 16


def _chips(
    tmp_path: Path, name: str = "a", transform: Affine = TRANSFORM, seed: int = 0, stride: int = TILE
) -> ChipSet:
    image = write_raster(
        tmp_path / f"{name}.tif", smooth_scene(2, *SHAPE, seed=seed, dtype=np.uint8), crs=IMAGE_CRS, transform=transform
    )
    labels = tmp_path / f"{name}_h.tif"
    write_field(labels, height_field, IMAGE_CRS, transform, SHAPE, nodata=-1.0)
    return make_chips([image], [labels], task="canopy-height", tile=TILE, stride=stride)


@pytest.fixture
def chips(tmp_path: Path) -> ChipSet:
    return _chips(tmp_path)


def _boxes(chips: ChipSet, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Shapely boxes of size x size pixel blocks at (row, col) of chip n's grid, through its GridRef transform."""
    out = []
    for n in range(len(chips)):
        a = Affine(*chips.grids[chips.source[n]].transform)
        r, c = rows[n] + chips.origins[n, 0], cols[n] + chips.origins[n, 1]
        x0, y0 = a * (c, r)
        x1, y1 = a * (c + size, r + size)
        out.extend(
            np.atleast_1d(shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)))
        )
    return np.asarray(out, dtype=object)


def _footprints(chips: ChipSet) -> np.ndarray:
    """One box per chip: the T x T pixels from its origin."""
    zeros = [np.zeros(1, dtype=np.int64)] * len(chips)
    return _boxes(chips, zeros, zeros, chips.tile)


def _labelled_pixels(chips: ChipSet) -> np.ndarray:
    """One box per labelled pixel of every chip."""
    where = [np.nonzero(m) for m in chips.labelled()]
    return _boxes(chips, [w[0] for w in where], [w[1] for w in where], 1)


@pytest.mark.parametrize(("buffer", "stride"), [(0.0, TILE), (25.0, TILE), (160.0, TILE), (0.0, 8), (40.0, 8)])
def test_no_evaluation_pixel_lies_within_the_buffer_of_a_training_chip(
    tmp_path: Path, buffer: float, stride: int
) -> None:
    """Also with overlapping chips (stride 8 < tile 16): an evaluation chip sharing pixels with a train chip goes."""
    chips = _chips(tmp_path, stride=stride)
    parts = spatial_split(chips, block_size=480.0, buffer=buffer, fractions=(0.6, 0.2, 0.2), seed=3)
    assert set(parts) == {"train", "val", "test"}
    train_area = shapely.union_all(_footprints(parts["train"]))
    for name in ("val", "test"):
        assert len(parts[name]) > 0, name
        pixels = _labelled_pixels(parts[name])
        assert len(pixels) > 0
        assert shapely.area(shapely.intersection(pixels, train_area)).max() == 0.0
        assert shapely.distance(pixels, train_area).min() >= buffer - 1e-6
    kept = sum(len(p) for p in parts.values())
    dropped = parts["val"].meta["dropped_by_buffer"] + parts["test"].meta["dropped_by_buffer"]
    assert kept + dropped == len(chips)
    if buffer > 0:
        assert dropped > 0  # chips next to a train block went
    # Chips of one block stay together: a chip's split is the split of its block.
    for name, part in parts.items():
        assert part.meta["split"] == name


def test_buffer_drops_exactly_the_chips_near_training(chips: ChipSet) -> None:
    loose = spatial_split(chips, block_size=480.0, buffer=0.0, fractions=(0.6, 0.2, 0.2), seed=3)
    tight = spatial_split(chips, block_size=480.0, buffer=25.0, fractions=(0.6, 0.2, 0.2), seed=3)
    assert np.array_equal(loose["train"].origins, tight["train"].origins)
    train_area = shapely.union_all(_footprints(loose["train"]))
    for name in ("val", "test"):
        near = shapely.distance(_footprints(loose[name]), train_area) < 25.0
        assert 0 < near.sum() < len(near)
        assert np.array_equal(loose[name].origins[~near], tight[name].origins)


def test_same_seed_same_split_other_seed_other_split(chips: ChipSet) -> None:
    a = spatial_split(chips, block_size=640.0, buffer=10.0, seed=7)
    b = spatial_split(chips, block_size=640.0, buffer=10.0, seed=7)
    c = spatial_split(chips, block_size=640.0, buffer=10.0, seed=8)
    for name in ("train", "val", "test"):
        assert np.array_equal(a[name].origins, b[name].origins)
        assert np.array_equal(a[name].images, b[name].images)
    assert not np.array_equal(a["val"].origins, c["val"].origins)
    assert len(a["test"]) == 0  # default fractions (0.8, 0.2, 0.0)
    assert len(a["val"]) > 0


def test_block_of_a_chip_is_the_block_holding_its_centre(chips: ChipSet) -> None:
    parts = spatial_split(chips, block_size=320.0, seed=1)
    split_of_block: dict[tuple[int, int], str] = {}
    for name, part in parts.items():
        for r, c in part.origins:
            x = X0 + 10 * (c + TILE / 2)
            y = Y0 - 10 * (r + TILE / 2)
            block = (int(np.floor(x / 320.0)), int(np.floor(y / 320.0)))
            assert split_of_block.setdefault(block, name) == name


def test_empty_train_split_names_block_size_and_buffer(chips: ChipSet) -> None:
    one = chips.subset(np.arange(1))
    with pytest.raises(LabelError, match=r"block size 1e\+06 and buffer 5 map units left no training chip"):
        spatial_split(chips.subset(np.arange(0)), block_size=1e6, buffer=5.0)
    assert len(spatial_split(one, block_size=1e6, buffer=5.0)["train"]) == 1  # one block: it trains
    with pytest.raises(LabelError, match="block_size must be > 0"):
        spatial_split(chips, block_size=0.0)


def test_split_by_source_holds_out_whole_sources(tmp_path: Path) -> None:
    a = _chips(tmp_path, "a")
    images = [
        tmp_path / "a.tif",
        write_raster(
            tmp_path / "b.tif",
            smooth_scene(2, *SHAPE, seed=1, dtype=np.uint8),
            crs=IMAGE_CRS,
            transform=from_origin(X0 + 5000, Y0, 10, 10),
        ),
    ]
    images.append(
        write_raster(
            tmp_path / "c.tif",
            smooth_scene(2, *SHAPE, seed=2, dtype=np.uint8),
            crs=IMAGE_CRS,
            transform=from_origin(X0, Y0 - 5000, 10, 10),
        )
    )
    labels = tmp_path / "all_h.tif"
    big = from_origin(X0, Y0, 10, 10)
    write_field(labels, height_field, IMAGE_CRS, big, (700, 700), nodata=-1.0)
    chips = make_chips(images, [labels], task="canopy-height", tile=TILE)
    assert len(chips.grids) == 3 and len(chips) == 3 * len(a)
    parts = split_by_source(chips, val=[1], test=[2])
    assert [set(parts[k].source.tolist()) for k in ("train", "val", "test")] == [{0}, {1}, {2}]
    assert np.array_equal(parts["train"].images, a.images)
    with pytest.raises(LabelError, match=r"source indexes \[3\] out of range"):
        split_by_source(chips, val=[3])
    with pytest.raises(LabelError, match=r"sources \[1\] are in both val and test"):
        split_by_source(chips, val=[1], test=[1])
    with pytest.raises(LabelError, match=r"left no training chip \(sources: a.tif, b.tif, c.tif"):
        split_by_source(chips, val=[0, 1], test=[2])


def test_split_by_polygons_assigns_chips_by_centre(tmp_path: Path, chips: ChipSet) -> None:
    # Left half train, a val box in the right half, test below it; lon/lat layer over the UTM chips.
    width, height = 10 * SHAPE[1], 10 * SHAPE[0]
    geoms = [
        shapely.box(X0, Y0 - height, X0 + width / 2, Y0),
        shapely.box(X0 + width / 2, Y0 - height / 2, X0 + width, Y0),
        shapely.box(X0 + width / 2, Y0 - height, X0 + width, Y0 - height * 3 / 4),
    ]
    layer = gpd.GeoDataFrame({"split": ["train", "Val", "test"]}, geometry=geoms, crs=IMAGE_CRS).to_crs("EPSG:4326")
    layer.to_file(tmp_path / "splits.gpkg")
    parts = split_by_polygons(chips, tmp_path / "splits.gpkg")
    centres_x = X0 + 10 * (chips.origins[:, 1] + TILE / 2)
    centres_y = Y0 - 10 * (chips.origins[:, 0] + TILE / 2)
    expect_train = centres_x < X0 + width / 2
    expect_val = ~expect_train & (centres_y > Y0 - height / 2)
    expect_test = ~expect_train & (centres_y < Y0 - height * 3 / 4)
    for name, mask in (("train", expect_train), ("val", expect_val), ("test", expect_test)):
        assert np.array_equal(parts[name].origins, chips.origins[mask]), name
    assert parts["val"].meta["dropped_outside"] == int((~(expect_train | expect_val | expect_test)).sum()) > 0
    layer.assign(split=["train", "holdout", "test"]).to_file(tmp_path / "bad.gpkg")
    with pytest.raises(LabelError, match=r"bad.gpkg: column 'split' must hold train / val / test, found holdout"):
        split_by_polygons(chips, tmp_path / "bad.gpkg")
    with pytest.raises(LabelError, match=r"splits.gpkg: .*no column 'fold'; columns: split"):
        split_by_polygons(chips, tmp_path / "splits.gpkg", column="fold")
