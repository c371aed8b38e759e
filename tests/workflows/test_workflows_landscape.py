"""The demo's generated landscape: deterministic, with the truth it claims, written where its geotransform says."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import from_bounds

from geodino.workflows.landscape import CLASS_NAMES, CRS, landscape, write_landscape


def test_same_seed_same_landscape_other_seed_other() -> None:
    a, b, c = landscape(128, seed=3), landscape(128, seed=3), landscape(128, seed=4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.classes, b.classes)
    assert np.array_equal(a.heights, b.heights)
    assert not np.array_equal(a.classes, c.classes)


def test_every_class_present_and_heights_only_where_trees() -> None:
    s = landscape(256, seed=0)
    assert s.image.shape == (3, 256, 256) and s.image.dtype == np.uint8
    fractions = np.bincount(s.classes.ravel(), minlength=len(CLASS_NAMES)) / s.classes.size
    assert fractions.min() > 0.05, fractions  # water ~12 %, bare soil ~16-20 %, forest and grassland the rest
    assert s.heights.dtype == np.float32 and s.heights.min() == 0.0  # 0 m is a valid height, and common
    forest, bare = CLASS_NAMES.index("forest"), CLASS_NAMES.index("bare soil")
    # Forests are mostly canopy; bare soil only holds the edges of crowns rooted next to it.
    assert (s.heights[s.classes == forest] > 0).mean() > 0.6
    assert (s.heights[s.classes == bare] > 0).mean() < 0.1
    assert 10.0 < s.heights.max() < 30.0


def test_image_brightness_tells_tree_height() -> None:
    s = landscape(256, seed=1)
    green = s.image[1].astype(np.float64)
    crown = s.heights > 0
    # The rendering rule: crown green grows with height; so within crowns the two correlate strongly.
    r = np.corrcoef(green[crown], s.heights[crown])[0, 1]
    assert r > 0.8, r


def test_written_rasters_are_georeferenced_and_the_split_lies_where_its_transform_says(tmp_path) -> None:
    s = landscape(128, seed=2)
    paths = write_landscape(s, tmp_path, split_col=96)
    with rasterio.open(paths["scene"]) as src:
        assert src.crs.to_string() == CRS and src.res == (1.0, 1.0) and src.count == 3
        assert np.array_equal(src.read(), s.image)
    with rasterio.open(paths["heights"]) as src:
        assert np.array_equal(src.read(1), s.heights) and src.nodata == -9999.0
    with rasterio.open(paths["holdout"]) as hold, rasterio.open(paths["classes"]) as truth:
        assert hold.shape == (128, 32)
        # The held-out image's footprint, read from the whole truth raster through coordinates.
        win = from_bounds(*hold.bounds, transform=truth.transform)
        assert (round(win.col_off), round(win.width)) == (96, 32)
        assert np.array_equal(truth.read(1, window=win.round_offsets().round_lengths()), s.classes[:, 96:])
        assert np.array_equal(hold.read(), s.image[:, :, 96:])


def test_too_small_or_bad_split_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="at least 64"):
        landscape(32)
    with pytest.raises(ValueError, match="split_col"):
        write_landscape(landscape(64), tmp_path, split_col=64)
