"""Spatial, by-source and by-polygon splits of chip sets, checked against footprints computed independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from affine import Affine
from label_helpers import IMAGE_CRS, X0, Y0, height_field, write_field
from rasterio.transform import from_origin
from rasters import smooth_scene, write_raster

from geodino.heads.data.chips import ChipSet
from geodino.heads.data.pairs import LabelError, make_chips
from geodino.heads.data.splits import spatial_split

SHAPE = (160, 192)
TRANSFORM = from_origin(X0, Y0, 10, 10)
TILE = 16


def _chips(tmp_path: Path, name: str = "a", transform: Affine = TRANSFORM, seed: int = 0) -> ChipSet:
    image = write_raster(
        tmp_path / f"{name}.tif", smooth_scene(2, *SHAPE, seed=seed, dtype=np.uint8), crs=IMAGE_CRS, transform=transform
    )
    labels = tmp_path / f"{name}_h.tif"
    write_field(labels, height_field, IMAGE_CRS, transform, SHAPE, nodata=-1.0)
    return make_chips([image], [labels], task="canopy-height", tile=TILE)


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


@pytest.mark.parametrize("buffer", [0.0, 25.0, 160.0])
def test_no_evaluation_pixel_lies_within_the_buffer_of_a_training_chip(chips: ChipSet, buffer: float) -> None:
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
