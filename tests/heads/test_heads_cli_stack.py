"""``geodino train-head --stack``: an image given as one file per band (comma-joined), then mapped as a stack."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import rasterio

from geodino.workflows.landscape import CLASS_NAMES, landscape, write_landscape


def _bands(src_path, out_dir, stem):
    """Split a 3-band GeoTIFF into red / green / blue single-band files (same grid)."""
    paths = []
    with rasterio.open(src_path) as src:
        profile = src.profile | {"count": 1}
        for i, name in enumerate(("red", "green", "blue"), start=1):
            path = out_dir / f"{stem}_{name}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(i), 1)
            paths.append(str(path))
    return paths


def test_train_on_a_band_stack_and_map_it_as_one(tmp_path) -> None:
    paths = write_landscape(landscape(128, seed=7), tmp_path, split_col=64)
    train_bands, hold_bands = _bands(paths["train"], tmp_path, "train"), _bands(paths["holdout"], tmp_path, "hold")
    model = tmp_path / "stack.gdm"
    classes = ",".join(f"{i}={n}" for i, n in enumerate(CLASS_NAMES))
    cmd = [sys.executable, "-m", "geodino.cli"]
    res = subprocess.run(
        [*cmd, "train-head", "--task", "land-cover", "--images", ",".join(train_bands), "--stack",
         "--labels", str(paths["classes"]), "--classes", classes, "--backbone", "test", "--out", str(model),
         "--tile", "32", "--epochs", "1", "--split", "none", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((tmp_path / "stack.summary.json").read_text())
    assert summary["stack"] is True and summary["images"] == [train_bands]
    assert summary["split"]["chips"]["train"] == (128 // 32) * (64 // 32)
    res = subprocess.run(
        [*cmd, "map", *hold_bands, "--stack", "--model", str(model), "--out", str(tmp_path / "m.zarr"),
         "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    import xarray as xr

    classes_map = xr.open_zarr(tmp_path / "m.zarr")["classes"].values
    assert classes_map.shape == (128, 64) and np.isin(classes_map, [0, 1, 2, 3]).all()
