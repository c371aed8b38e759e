"""The `geodino` command, run as a user would: in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from geodino import hub
from geodino.models.checkpoint import save_backbone

GEODINO = [sys.executable, "-m", "geodino.cli"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GEODINO, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_import_geodino_loads_no_heavy_library() -> None:
    code = "import sys, geodino, geodino.hub; print(sorted(m for m in ('torch', 'dask', 'rasterio', 'zarr', 'xarray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_info_reports_architecture_and_ignored_keys(tmp_path) -> None:
    model = hub.dinov3_vit_test()
    torch.save({**model.state_dict()}, tmp_path / "renamed.ckpt")
    res = run("info", str(tmp_path / "renamed.ckpt"), "--pretraining", "sat493m")
    assert res.returncode == 0, res.stderr
    assert "dinov3_vit_test" in res.stdout and "sat493m" in res.stdout and "0.420" in res.stdout
    n_params = sum(p.numel() for p in model.parameters())
    assert f"{n_params:,}" in res.stdout


def test_info_fails_clearly_on_a_foreign_file(tmp_path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    res = run("info", str(tmp_path / "junk.pth"))
    assert res.returncode == 2
    assert "junk.pth" in res.stderr and "cannot be read" in res.stderr and "Traceback" not in res.stderr


def test_info_on_geodino_file_needs_no_pretraining_flag(tmp_path) -> None:
    model = hub.dinov3_vit_test()
    model.meta = model.meta.replace(weights="sat493m", gsd=0.6)
    save_backbone(model, tmp_path / "m.pt")
    res = run("info", str(tmp_path / "m.pt"))
    assert res.returncode == 0 and "0.6 m" in res.stdout and "note:" not in res.stdout


def test_demo_trains_maps_and_scores_against_the_known_truth(tmp_path) -> None:
    import json

    import numpy as np
    import rasterio
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr
    from PIL import Image
    from rasterio.windows import from_bounds

    out = tmp_path / "d"
    res = run("demo", "--out", str(out), "--size", "256", "--epochs", "3")
    assert res.returncode == 0, res.stderr + res.stdout
    assert "RANDOM weights" in res.stdout
    for name in ("land-cover.gdm", "canopy-height.gdm", "land-cover.tif", "canopy-height.tif", "demo.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "land-cover" / "report.json").read_text())
    assert (
        f"mIoU {report['miou']:.3f}" in res.stdout
        and f"overall accuracy {report['overall_accuracy']:.3f}" in res.stdout
    )

    # The held-out map, scored again here against the truth raster, read through the held-out image's bounds.
    ds = xr.open_zarr(out / "land-cover" / "prediction.zarr", decode_coords="all")
    assert ds.rio.crs.to_epsg() == 32633 and ds["classes"].attrs["class_names"][0] == "water"
    with rasterio.open(out / "scene" / "holdout.tif") as hold, rasterio.open(out / "scene" / "truth_classes.tif") as t:
        window = from_bounds(*hold.bounds, transform=t.transform).round_offsets().round_lengths()
        truth = t.read(1, window=window)
    pred = ds["classes"].values
    assert pred.shape == truth.shape == (256, 64)  # the eastern quarter
    assert report["overall_accuracy"] == np.mean(pred == truth) and report["n_pixels"] == truth.size
    heights = json.loads((out / "canopy-height" / "report.json").read_text())
    assert f"MAE {heights['mae']:.3f} m" in res.stdout and heights["n_pixels"] == truth.size  # 0 m counted
    with rasterio.open(out / "canopy-height.tif") as cog:
        assert cog.crs.to_epsg() == 32633 and cog.shape == (256, 64)
    assert Image.open(out / "demo.png").size[1] == 256
