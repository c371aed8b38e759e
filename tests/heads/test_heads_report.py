"""Report dicts have exactly the issue's keys and survive a JSON round trip; figures are real PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geodino.heads.metrics import BlockR2Accumulator, ConfusionAccumulator, RegressionAccumulator
from geodino.heads.report import (
    canopy_height_report,
    canopy_height_report_from,
    jsonable,
    land_cover_report,
    land_cover_report_from,
    write_report,
)

CANOPY_KEYS = {"mae", "rmse", "r2", "bias", "block_r2", "n_pixels"}
LAND_COVER_KEYS = {"miou", "overall_accuracy", "per_class_iou", "f1", "confusion_matrix", "class_names", "n_pixels"}


def _canopy(seed: int = 0, shape=(120, 110)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    truth = np.clip(20 * np.sin(xx / 17.0) * np.cos(yy / 23.0), 0, None).astype(np.float32)  # many 0 m pixels
    pred = (truth + rng.normal(0, 2, shape)).astype(np.float32)
    pred[:4, :10] = np.nan  # prediction nodata
    return pred, truth


def _land_cover(seed: int = 1, shape=(64, 48)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, shape).astype(np.uint8)  # class 3 ("water") never occurs
    pred = np.where(rng.random(shape) < 0.8, truth, rng.integers(0, 3, shape)).astype(np.uint8)
    truth[:5] = 255  # label nodata
    return pred, truth, truth != 255


def test_canopy_height_report_keys_and_values() -> None:
    pred, truth = _canopy()
    report = canopy_height_report(pred, truth)
    assert set(report) == CANOPY_KEYS
    ok = np.isfinite(pred)
    e = pred[ok].astype(np.float64) - truth[ok]
    assert report["n_pixels"] == ok.sum() == truth.size - 40
    assert report["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-12)
    assert report["bias"] == pytest.approx(e.mean(), rel=1e-9, abs=1e-12)
    assert 0.5 < report["block_r2"] <= 1.0  # 2 x 2 blocks of 50 px; noise averages out in the block means


def test_canopy_height_report_from_accumulators_equals_one_shot() -> None:
    pred, truth = _canopy(2)
    one = canopy_height_report(pred, truth)
    reg, blocks = RegressionAccumulator(), BlockR2Accumulator(truth.shape)
    for r0, r1 in ((0, 11), (11, 80), (80, 120)):
        reg.update(pred[r0:r1], truth[r0:r1])
        blocks.update(pred[r0:r1], truth[r0:r1], row=r0)
    chunked = canopy_height_report_from(reg, blocks)
    assert list(chunked) == list(one)
    assert chunked == pytest.approx(one, rel=1e-12)


def test_land_cover_report_keys_and_values() -> None:
    pred, truth, valid = _land_cover()
    names = ["forest", "grass", "crops", "water"]
    report = land_cover_report(pred, truth, names, valid)
    assert set(report) == LAND_COVER_KEYS
    assert report["n_pixels"] == int(valid.sum())
    assert report["overall_accuracy"] == pytest.approx(np.mean(pred[valid] == truth[valid]))
    assert report["per_class_iou"]["water"] is None
    assert report["class_names"] == names
    acc = ConfusionAccumulator(4)
    for rows in (slice(0, 9), slice(9, 10), slice(10, 64)):
        acc.update(pred[rows], truth[rows], valid[rows])
    assert land_cover_report_from(acc, names) == report


def test_write_report_round_trips_through_json_with_nulls(tmp_path: Path) -> None:
    pred, truth = _canopy()
    report = canopy_height_report(pred, truth)
    report["r2"] = float("nan")  # as for a constant truth
    report["block_r2"] = np.float32(0.5)  # a numpy scalar from a caller
    path = write_report(report, tmp_path / "new" / "dir")
    assert path == tmp_path / "new" / "dir" / "report.json"
    text = path.read_text()
    assert "NaN" not in text
    back = json.loads(text)
    assert set(back) == CANOPY_KEYS
    assert back["r2"] is None and back["block_r2"] == 0.5 and back["n_pixels"] == report["n_pixels"]
    assert back["mae"] == report["mae"]  # python floats survive exactly


def test_land_cover_report_round_trips(tmp_path: Path) -> None:
    pred, truth, valid = _land_cover()
    report = land_cover_report(pred, truth, ["forest", "grass", "crops", "water"], valid)
    back = json.loads(write_report(report, tmp_path).read_text())
    assert back == report  # None stays None, ints stay ints, nested dicts and lists as they were
    assert back["f1"]["per_class"]["water"] is None


def test_jsonable_converts_numpy_and_refuses_objects() -> None:
    value = {"a": np.int64(3), "b": np.array([[1.5, np.inf]]), "c": (np.bool_(True), Path("x/y")), 4: None}
    assert jsonable(value) == {"a": 3, "b": [[1.5, None]], "c": [True, "x/y"], "4": None}
    assert type(jsonable(np.int64(3))) is int
    with pytest.raises(TypeError, match="no JSON form"):
        jsonable({"model": object()})


def test_write_report_writes_image_figures(tmp_path: Path) -> None:
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :15, 0] = 255
    write_report({"n_pixels": 1}, tmp_path, figures={"preview": rgb, "grey.png": np.full((5, 6), 7, np.uint8)})
    with Image.open(tmp_path / "preview.png") as im:
        assert im.format == "PNG" and im.size == (30, 20)
        assert np.asarray(im)[0, 0].tolist() == [255, 0, 0]
    with Image.open(tmp_path / "grey.png") as im:
        assert im.size == (6, 5) and im.mode == "L"
    with pytest.raises(ValueError, match="figure name"):
        write_report({}, tmp_path / "bad", figures={"../escape": rgb})
    with pytest.raises(ValueError, match="uint8 image"):
        write_report({}, tmp_path / "bad", figures={"f": rgb.astype(float)})
    assert not (tmp_path / "bad").exists()  # nothing written when a figure is refused


def test_report_of_an_empty_evaluation_is_refused() -> None:
    pred, truth = _canopy()
    with pytest.raises(ValueError, match="no valid pixel"):
        canopy_height_report(pred, truth, np.zeros(truth.shape, bool))
    assert math.isnan(canopy_height_report(pred[:40, :40], truth[:40, :40])["block_r2"])  # no whole block


# ---------------------------------------------------------------------------------------------------------------
# Figures (matplotlib Figure objects: Agg, no pyplot state).


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_canopy_height_figures(tmp_path: Path) -> None:
    from geodino.heads.report import canopy_height_figures

    pred, truth = _canopy()
    valid = np.isfinite(pred)
    paths = canopy_height_figures(pred, truth, tmp_path / "a", valid=valid)
    assert [p.name for p in paths] == ["canopy_height_maps.png", "canopy_height_scatter.png"]
    maps, scatter = (_png(p) for p in paths)
    assert maps.shape == (480, 1600, 3) and scatter.shape == (560, 640, 3)
    for image in (maps, scatter):
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # drawn content, not a blank canvas
    again = canopy_height_figures(pred, truth, tmp_path / "b", valid=valid)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]  # same inputs, same files
    with pytest.raises(ValueError, match="NaN or infinite prediction"):
        canopy_height_figures(pred, truth, tmp_path / "c", valid=np.ones(truth.shape, bool))


def test_land_cover_figures(tmp_path: Path) -> None:
    from geodino.heads.report import land_cover_figures

    pred, truth, valid = _land_cover()
    colours = [(0, 100, 0), (150, 220, 90), (230, 200, 40), (0, 0, 255)]
    names = ["forest", "grass", "crops", "water"]
    paths = land_cover_figures(pred, truth, names, colours, tmp_path, valid=valid)
    assert [p.name for p in paths] == ["land_cover_maps.png", "land_cover_confusion.png"]
    maps, confusion = (_png(p) for p in paths)
    assert maps.shape == (560, 1300, 3)
    present = {tuple(c) for c in np.unique(maps.reshape(-1, 3), axis=0).tolist()}
    assert set(colours) <= present  # map pixels (and the legend, for water) in the class colours
    assert confusion.shape[0] > 300 and confusion.shape[1] > 300
    with pytest.raises(ValueError, match=r"truth holds values \[255\]"):
        land_cover_figures(pred, truth, names, colours, tmp_path / "x")  # nodata must be masked


# ---------------------------------------------------------------------------------------------------------------
# A real lidar canopy-height model (../shared/data; skipped when absent).

DATA = Path(__file__).parents[3] / "shared" / "data"


@pytest.mark.shared_data
@pytest.mark.skipif(not DATA.is_dir(), reason=f"shared rasters not found at {DATA}")
def test_report_on_the_neon_chm_counts_open_ground_and_refuses_unmasked_nodata(tmp_path: Path) -> None:
    """JERC's 1 m CHM as truth, a 3 x 3 box-blurred copy as the "prediction" (a model that smooths crowns)."""
    import rasterio

    with rasterio.open(DATA / "neon" / "JERC_049_chm.tif") as ds:
        truth, nodata = ds.read(1), ds.nodata
    assert nodata is not None and nodata < -1e38
    ground = truth == 0
    assert ground.sum() > 100  # open ground: 0 m heights, which must count
    padded = np.pad(truth.astype(np.float64), 1, mode="edge")
    pred = sum(padded[i : i + 40, j : j + 40] for i in range(3) for j in range(3)) / 9
    report = canopy_height_report(pred, truth)
    t = truth.astype(np.float64)
    e = pred - t
    assert report["n_pixels"] == truth.size == 1600
    assert report["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-9)
    assert report["rmse"] == pytest.approx(np.sqrt((e**2).mean()), rel=1e-9)
    assert report["r2"] == pytest.approx(1 - (e**2).sum() / ((t - t.mean()) ** 2).sum(), rel=1e-9)
    assert math.isnan(report["block_r2"])  # 40 px: no whole 50 px block
    # The same map with its nodata value written into a corner: refused unless masked.
    holes = truth.copy()
    holes[:3, :3] = nodata
    with pytest.raises(ValueError, match="9 counted truth values are nodata sentinels"):
        canopy_height_report(pred, holes)
    masked = canopy_height_report(pred, holes, holes != nodata)
    assert masked["n_pixels"] == 1600 - 9
    from geodino.heads.report import canopy_height_figures

    paths = canopy_height_figures(pred, holes, tmp_path, valid=holes != nodata)  # the sentinel never reaches a plot
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_figures_of_a_decimated_view_take_the_full_area_report(tmp_path: Path) -> None:
    """evaluate's bounded-memory path: metrics over every pixel chunk by chunk, figures from a strided view."""
    from geodino.heads.report import canopy_height_figures, land_cover_figures

    pred, truth = _canopy(4, (240, 200))
    full = canopy_height_report(pred, truth)
    view = (slice(None, None, 4), slice(None, None, 4))
    own = canopy_height_figures(pred[view], truth[view], tmp_path / "own")
    given = canopy_height_figures(pred[view], truth[view], tmp_path / "given", report=full)
    assert own[0].read_bytes() != given[0].read_bytes()  # the bias in the error title is the full area's
    assert own[1].read_bytes() != given[1].read_bytes()  # so are MAE, R² and the pixel count of the scatter
    from_json = json.loads(write_report(full | {"r2": float("nan")}, tmp_path).read_text())
    assert from_json["r2"] is None
    canopy_height_figures(pred[view], truth[view], tmp_path / "json", report=from_json)  # null R²: "undefined"
    with pytest.raises(ValueError, match="report lacks"):
        canopy_height_figures(pred[view], truth[view], tmp_path / "bad", report={"mae": 1.0})

    cls_pred, cls_truth, valid = _land_cover()
    names = ["forest", "grass", "crops", "water"]
    lc = land_cover_report(cls_pred, cls_truth, names, valid)
    paths = land_cover_figures(cls_pred[::2, ::2], cls_truth[::2, ::2], names, None, tmp_path / "lc",
                               valid=valid[::2, ::2], report=lc)  # fmt: skip
    assert len(paths) == 2
    with pytest.raises(ValueError, match="report is for classes"):
        land_cover_figures(cls_pred, cls_truth, names[::-1], None, tmp_path / "lc2", valid=valid, report=lc)
