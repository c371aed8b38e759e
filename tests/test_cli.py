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


def test_demo_writes_a_georeferenced_embedding(tmp_path) -> None:
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    res = run("demo", "--out", str(tmp_path / "d"), "--size", "256")
    assert res.returncode == 0, res.stderr + res.stdout
    ds = xr.open_zarr(tmp_path / "d" / "embedding.zarr", decode_coords="all")
    assert ds["embedding"].shape == (64, 16, 16)
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.rio.transform().a == 160.0  # 10 m pixels, 16-pixel patches
    assert (tmp_path / "d" / "embedding_pca.png").stat().st_size > 0
