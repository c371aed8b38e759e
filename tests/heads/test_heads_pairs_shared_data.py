"""Label pairing on the real rasters of ../shared/data (skipped when the folder is absent).

NEON: 0.1 m RGB with a 1 m lidar CHM whose origin is offset by a fraction of a CHM cell — each RGB pixel must get
the height of the CHM cell holding it (checked by hand through both geotransforms). eo-learn: the 13-band
Sentinel-2 frame with its land-cover mask (0 = no data; classes 1, 2, 3, 4, 8).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geodino.heads.data.chips import IGNORE_INDEX
from geodino.heads.data.pairs import LabelError, labels_on_grid, make_chips, resolve_classes

DATA = Path(__file__).parents[3] / "shared" / "data"
pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"shared rasters not found at {DATA}"),
]


def _covering_height(chm: np.ndarray, chm_transform, nodata: float, rgb_transform, row: int, col: int) -> float:
    """Hand computation: the CHM cell holding the centre of RGB pixel (row, col), through both geotransforms."""
    x = rgb_transform.c + rgb_transform.a * (col + 0.5)
    y = rgb_transform.f + rgb_transform.e * (row + 0.5)
    ccol = math.floor((x - chm_transform.c) / chm_transform.a)
    crow = math.floor((y - chm_transform.f) / chm_transform.e)
    if not (0 <= crow < chm.shape[0] and 0 <= ccol < chm.shape[1]) or chm[crow, ccol] == nodata:
        return math.nan
    return float(chm[crow, ccol])


@pytest.mark.parametrize("plot", ["SJER_052", "JERC_049"])
def test_neon_chm_onto_the_finer_rgb_grid_through_geotransforms(plot: str) -> None:
    rgb_path, chm_path = DATA / "neon" / f"{plot}_rgb.tif", DATA / "neon" / f"{plot}_chm.tif"
    with rasterio.open(rgb_path) as rgb, rasterio.open(chm_path) as chm_ds:
        rgb_t, shape, crs = rgb.transform, rgb.shape, rgb.crs
        chm, chm_t, nodata = chm_ds.read(1), chm_ds.transform, chm_ds.nodata
    assert (chm_t.c - rgb_t.c, chm_t.f - rgb_t.f) != (0.0, 0.0)  # offset origins: index alignment would be wrong
    got = labels_on_grid(chm_path, task="canopy-height", crs=crs, transform=rgb_t, shape=shape)
    assert got.shape == shape == (400, 400)
    picks = [(0, 0), (0, 5), (7, 3), (8, 4), (123, 45), (200, 200), (333, 391), (397, 12), (399, 399)]
    picks += [tuple(p) for p in np.argwhere(np.isfinite(got) & (got == 0))[:3]]  # 0 m is a valid height
    for row, col in picks:
        expect = _covering_height(chm, chm_t, nodata, rgb_t, row, col)
        if math.isnan(expect):
            assert np.isnan(got[row, col]), (row, col)
        else:
            assert got[row, col] == pytest.approx(expect, abs=1e-3), (row, col)
    # Every pixel: the offsets are whole 0.1 m pixels, so each RGB pixel lies inside one CHM cell.
    rows, cols = np.mgrid[0:400, 0:400]
    ccol = np.floor((rgb_t.c + 0.1 * (cols + 0.5) - chm_t.c) / chm_t.a).astype(int)
    crow = np.floor((rgb_t.f - 0.1 * (rows + 0.5) - chm_t.f) / chm_t.e).astype(int)
    inside = (ccol >= 0) & (ccol < 40) & (crow >= 0) & (crow < 40)
    expect = np.full(shape, np.nan, np.float32)
    expect[inside] = chm[crow[inside], ccol[inside]]
    expect[expect == np.float32(nodata)] = np.nan
    assert np.array_equal(np.isnan(got), np.isnan(expect))
    assert np.allclose(got[~np.isnan(got)], expect[~np.isnan(expect)], atol=1e-3)
    assert (~inside).any()  # the offset leaves an uncovered strip along two edges


def test_neon_chips_keep_zero_heights_and_mask_rgb_nodata() -> None:
    rgb_path, chm_path = DATA / "neon" / "SJER_052_rgb.tif", DATA / "neon" / "SJER_052_chm.tif"
    chips = make_chips([rgb_path], [chm_path], task="canopy-height", tile=224, expected_bands=3)
    assert chips.origins.tolist() == [[0, 0], [0, 224], [224, 0], [224, 224]]
    assert chips.gsd == pytest.approx(0.1) and chips.band_names is not None and len(chips.band_names) == 3
    with rasterio.open(rgb_path) as rgb:
        raw = rgb.read()
        on_grid = labels_on_grid(chm_path, task="canopy-height", crs=rgb.crs, transform=rgb.transform, shape=rgb.shape)
    nodata = (raw == 255).any(axis=0)
    assert nodata.any()
    for n, (r, c) in enumerate(chips.origins):
        h, w = min(224, 400 - r), min(224, 400 - c)
        expect = np.where(nodata, np.nan, on_grid)[r : r + h, c : c + w]
        assert np.array_equal(chips.targets[n, :h, :w], expect, equal_nan=True)
        assert np.isnan(chips.targets[n, h:]).all() and np.isnan(chips.targets[n, :, w:]).all()
        assert (chips.images[n, :, :h, :w][:, nodata[r : r + h, c : c + w]] == 0).all()
    assert (chips.targets == 0).sum() > 1000  # bare ground: labelled 0 m, not "no data"


def test_eolearn_13_band_frame_with_its_land_cover_mask() -> None:
    image = DATA / "sentinel2" / "eolearn_s2l1c_13band_2015-07-11.tif"
    mask = DATA / "sentinel2" / "eolearn_lulc.tif"
    classes = ["1=cultivated", "2=forest", "3=grassland", "4=shrubland", "8=artificial"]
    class_map = resolve_classes([mask], classes=classes, nodata=0)
    assert class_map.values == (1, 2, 3, 4, 8)
    chips = make_chips([image], [mask], task="land-cover", tile=64, classes=classes, label_nodata=0, expected_bands=13)
    assert chips.in_bands == 13 and chips.class_names == (
        "cultivated",
        "forest",
        "grassland",
        "shrubland",
        "artificial",
    )
    assert chips.origins.tolist() == [[0, 0], [0, 64], [64, 0], [64, 64]]
    with rasterio.open(mask) as ds:
        raw = ds.read(1)
    lookup = np.full(256, IGNORE_INDEX, np.int64)
    lookup[[1, 2, 3, 4, 8]] = np.arange(5)
    expect = lookup[raw]  # same grid as the frame: every pixel maps to its own value
    for n, (r, c) in enumerate(chips.origins):
        h, w = min(64, raw.shape[0] - r), min(64, raw.shape[1] - c)
        assert np.array_equal(chips.targets[n, :h, :w], expect[r : r + h, c : c + w])
    counts = np.bincount(chips.targets[chips.labelled()], minlength=5)
    assert counts.tolist() == [11, 7601, 1777, 358, 198]  # the mask's own class counts; 155 nodata pixels left out
    with pytest.raises(LabelError, match=r"eolearn_lulc.tif: label values outside the declared classes: found 8"):
        make_chips([image], [mask], task="land-cover", tile=64, classes=classes[:4], label_nodata=0)
    with pytest.raises(LabelError, match=r"expected 12 imagery bands, found 13"):
        make_chips([image], [mask], task="land-cover", tile=64, label_nodata=0, expected_bands=12)
