"""End to end through the CLI on the real rasters of ../shared/data: train-head -> map -> evaluate.

Each training run writes a model that ``geodino map`` runs with no other flag, and ``geodino evaluate`` writes a
report whose numbers are RECOMPUTED here, independently with numpy, from the mapped output (prediction.zarr) and
the label files (read with rasterio and placed through the geotransforms by hand). The tiny built-in ``test``
backbone (random weights) keeps each run to seconds: these tests check the plumbing and the arithmetic, not the
quality of a model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
NEON = DATA / "neon"
S2 = DATA / "sentinel2"
BEN = S2 / "bigearthnet" / "S2A_MSIL2A_20170617T113321_4_55"
#: BigEarthNet L2A bands in Sentinel-2 order (no B10), the order of the eo-learn frame without its B10.
BEN_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
EOLEARN_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
LULC_VALUES = (1, 2, 3, 4, 8)  # README: 1 cultivated land, 2 forest, 3 grassland, 4 shrubland, 8 artificial surface
LULC_CLASSES = "1=cultivated,2=forest,3=grassland,4=shrubland,8=artificial"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent"),
]


def geodino(*args: str | Path) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [sys.executable, "-m", "geodino.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    return res


def open_output(store: Path):
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    return xr.open_zarr(store, decode_coords="all")


def covering_values(label_path: Path, ds) -> np.ndarray:
    """Label value of the label cell containing each output pixel's centre (NaN outside / at nodata).

    Independent of geodino: pixel centres of the output grid -> the label raster's row/col by its inverse
    geotransform (both grids in the same CRS here), then plain indexing.
    """
    with rasterio.open(label_path) as src:
        assert src.crs == ds.rio.crs
        values = src.read(1).astype(np.float64)
        if src.nodata is not None:
            values[values == src.nodata] = np.nan
        inverse = ~src.transform
    t = ds.rio.transform()
    h, w = ds.rio.height, ds.rio.width
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    x, y = t.c + cols * t.a, t.f + rows * t.e
    lc, lr = inverse * (x, y)
    lr, lc = np.floor(lr).astype(np.int64), np.floor(lc).astype(np.int64)
    inside = (lr >= 0) & (lr < values.shape[0]) & (lc >= 0) & (lc < values.shape[1])
    out = np.full((h, w), np.nan)
    out[inside] = values[lr[inside], lc[inside]]
    return out


def block_r2_by_hand(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray, block: int, crop: int, min_valid: float):
    """CHMv1 block-R²: crop the border, whole block x block blocks, R² of block means over blocks valid enough."""
    h, w = pred.shape
    means_p, means_t = [], []
    for r in range(crop, h - crop - block + 1, block):
        for c in range(crop, w - crop - block + 1, block):
            m = valid[r : r + block, c : c + block]
            if m.sum() >= min_valid * block * block:
                means_p.append(pred[r : r + block, c : c + block][m].mean())
                means_t.append(truth[r : r + block, c : c + block][m].mean())
    p, t = np.array(means_p), np.array(means_t)
    if len(t) < 2 or np.all(t == t[0]):
        return None
    return 1 - np.sum((p - t) ** 2) / np.sum((t - t.mean()) ** 2)


def test_canopy_height_trained_on_sjer_evaluated_on_jerc(tmp_path) -> None:
    from geodino.heads.metrics import BLOCK, CROP, MIN_BLOCK_VALID

    model = tmp_path / "chm.gdm"
    res = geodino(
        "train-head", "--task", "canopy-height", "--images", NEON / "SJER_052_rgb.tif",
        "--labels", NEON / "SJER_052_chm.tif", "--backbone", "test", "--head", "linear", "--out", model,
        "--tile", "112", "--epochs", "3", "--no-progress",
    )  # fmt: skip
    assert "RANDOM" in res.stdout and model.exists()
    summary = json.loads((tmp_path / "chm.summary.json").read_text())
    assert summary["task"] == "canopy-height" and summary["split"]["chips"]["train"] > 0
    assert (tmp_path / "chm.history.csv").read_text().count("\n") >= 2

    # The saved model maps with no other flag.
    geodino("map", NEON / "JERC_049_rgb.tif", "--model", model, "--out", tmp_path / "jerc.zarr", "--no-progress")
    mapped = open_output(tmp_path / "jerc.zarr")
    assert mapped["prediction"].attrs.get("units") == "m" and mapped.rio.crs.to_epsg() == 32616

    report_dir = tmp_path / "report"
    geodino(
        "evaluate", model, "--images", NEON / "JERC_049_rgb.tif", "--labels", NEON / "JERC_049_chm.tif",
        "--out", report_dir, "--no-progress",
    )  # fmt: skip
    report = json.loads((report_dir / "report.json").read_text())
    assert {"mae", "rmse", "r2", "bias", "block_r2", "n_pixels"} <= set(report)

    ds = open_output(report_dir / "prediction.zarr")
    pred = ds["prediction"].isel(band=0).values.astype(np.float64)
    truth = covering_values(NEON / "JERC_049_chm.tif", ds)  # 1 m cells cover whole 0.1 m pixels (offsets 0.5, 0.3 m)
    valid = np.isfinite(pred) & np.isfinite(truth)
    assert (truth[valid] == 0).any()  # 0 m ground is a valid height and is counted
    e = pred[valid] - truth[valid]
    t = truth[valid]
    assert report["n_pixels"] == int(valid.sum())
    assert report["mae"] == pytest.approx(np.abs(e).mean(), rel=1e-5)
    assert report["rmse"] == pytest.approx(np.sqrt((e**2).mean()), rel=1e-5)
    assert report["bias"] == pytest.approx(e.mean(), rel=1e-4, abs=1e-6)
    assert report["r2"] == pytest.approx(1 - (e**2).sum() / ((t - t.mean()) ** 2).sum(), rel=1e-5)
    expected_block = block_r2_by_hand(pred, truth, valid, BLOCK, CROP, MIN_BLOCK_VALID)
    if expected_block is None:
        assert report["block_r2"] is None
    else:
        assert report["block_r2"] == pytest.approx(expected_block, rel=1e-5)
    assert sorted(p.suffix for p in report_dir.glob("*.png")) and all(
        p.stat().st_size > 1000 for p in report_dir.glob("*.png")
    )


def _check_land_cover_report(report: dict, pred: np.ndarray, truth_values: np.ndarray, n_classes: int) -> None:
    """Recompute the land-cover report from class indices (pred) and raw label values, with numpy."""
    truth = np.full(truth_values.shape, -1, np.int64)
    for k, v in enumerate(LULC_VALUES):
        truth[truth_values == v] = k
    valid = (truth >= 0) & (pred != 255)
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (truth[valid], pred[valid].astype(np.int64)), 1)
    assert report["n_pixels"] == int(valid.sum())
    assert report["confusion_matrix"] == cm.tolist()
    assert report["overall_accuracy"] == pytest.approx(np.trace(cm) / cm.sum(), rel=1e-9)
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    assert report["miou"] == pytest.approx(np.nanmean(iou), rel=1e-9)
    for name, value in zip(report["class_names"], iou, strict=True):
        got = report["per_class_iou"][name]
        assert (got is None) if np.isnan(value) else got == pytest.approx(value, rel=1e-9)


def test_land_cover_on_the_13_band_eolearn_frame(tmp_path) -> None:
    image, labels = S2 / "eolearn_s2l1c_13band_2015-07-11.tif", S2 / "eolearn_lulc.tif"
    model = tmp_path / "lulc.gdm"
    geodino(
        "train-head", "--task", "land-cover", "--images", image, "--labels", labels, "--label-nodata", "0",
        "--classes", LULC_CLASSES, "--backbone", "test", "--head", "linear", "--out", model, "--tile", "32",
        "--epochs", "3", "--split", "none", "--no-progress",
    )  # fmt: skip
    geodino("map", image, "--model", model, "--out", tmp_path / "map.zarr", "--no-progress")
    mapped = open_output(tmp_path / "map.zarr")
    assert mapped["classes"].attrs["class_names"] == ["cultivated", "forest", "grassland", "shrubland", "artificial"]

    report_dir = tmp_path / "report"
    geodino("evaluate", model, "--images", image, "--labels", labels, "--out", report_dir, "--no-progress")
    report = json.loads((report_dir / "report.json").read_text())
    assert set(report) >= {"miou", "overall_accuracy", "per_class_iou", "f1", "confusion_matrix", "class_names"}
    ds = open_output(report_dir / "prediction.zarr")
    pred = ds["classes"].values
    truth_values = covering_values(labels, ds)  # the same grid: every output pixel is its label pixel
    truth_values[truth_values == 0] = np.nan  # 0 = no data (README)
    _check_land_cover_report(report, pred, truth_values, 5)


def test_a_12_band_model_maps_the_bigearthnet_band_files_as_a_stack(tmp_path) -> None:
    image, labels = S2 / "eolearn_s2l1c_13band_2015-07-11.tif", S2 / "eolearn_lulc.tif"
    keep = [str(i + 1) for i, b in enumerate(EOLEARN_BANDS) if b != "B10"]  # L2A has no cirrus band B10
    model = tmp_path / "s2_12.gdm"
    geodino(
        "train-head", "--task", "land-cover", "--images", image, "--labels", labels, "--label-nodata", "0",
        "--classes", LULC_CLASSES, "--bands", ",".join(keep), "--backbone", "test", "--out", model,
        "--tile", "32", "--epochs", "2", "--split", "none", "--no-progress",
    )  # fmt: skip
    from geodino.bundle import read_model_info

    assert read_model_info(model).in_bands == 12
    files = [BEN / f"{BEN.name}_{b}.tif" for b in BEN_BANDS]
    geodino("map", *files, "--stack", "--model", model, "--out", tmp_path / "ben.zarr", "--no-progress")
    ds = open_output(tmp_path / "ben.zarr")
    assert ds["classes"].shape == (120, 120) and ds.rio.crs.to_epsg() == 32629
    classes = ds["classes"].values
    assert classes.max() < 5  # every pixel got a class (uint16 reflectance scaled like the float frame)
