"""The mapping commands through typer (own app + register) and as ``python -m geodino.workflows.cli``."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import typer
import xarray as xr
from rasters import smooth_scene, write_raster
from typer.testing import CliRunner

from geodino.workflows.cli import register

warnings.filterwarnings("ignore", message=".*consolidated.*")


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "s.tif", smooth_scene(3, 120, 150, seed=6, dtype=np.uint8))


def test_map_then_export_cog(app: typer.Typer, scene: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "o.zarr"
    args = ["map", str(scene), "--model", "model_factories:classifier", "--out", str(out)]
    args += ["--zarr-format", "2", "--chunk", "48", "--outputs", "classes", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ds = xr.open_zarr(out, decode_coords="all", mask_and_scale=False)
    assert sorted(ds.data_vars) == ["chunk_done", "classes"]
    assert ds.classes.shape == (120, 150) and ds.classes.encoding["chunks"] == (48, 48)
    result = runner.invoke(app, ["export-cog", str(out), "classes", str(tmp_path / "c.tif")])
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "c.tif") as src:
        assert np.array_equal(src.read(1), ds.classes.values)
    # A second run into the same store without --resume / --overwrite fails cleanly.
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--overwrite" in result.output and "Traceback" not in result.output


def test_embed_command(app: typer.Typer, scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.zarr"
    args = ["embed", str(scene), "--backbone", "test", "--out", str(out), "--bands", "3,2,1", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert xr.open_zarr(out).embedding.shape == (64, 8, 10)


def test_embed_pretraining_sets_normalisation_of_meta_checkpoints(
    app: typer.Typer, scene: Path, tmp_path: Path
) -> None:
    import torch

    from geodino import hub
    from geodino.models.meta import SAT_MEAN, WEB_MEAN
    from geodino.workflows.manifest import read_manifest

    torch.manual_seed(0)
    ckpt = tmp_path / "dinov3_vit_test_pretrain.pth"  # a Meta-style state dict: it does not say what it saw
    torch.save(hub.dinov3_vit_test(weights=None).state_dict(), ckpt)
    means = {}
    for tag in ("sat493m", None):
        out = tmp_path / f"{tag}.zarr"
        args = ["embed", str(scene), "--backbone", str(ckpt), "--out", str(out), "--no-progress"]
        result = CliRunner().invoke(app, [*args, *(["--pretraining", tag] if tag else [])])
        assert result.exit_code == 0, result.output
        means[tag] = read_manifest(out)["resolved"]["normalization"][1]
    assert means["sat493m"] == pytest.approx(SAT_MEAN) and means[None] == pytest.approx(WEB_MEAN)
    bad = CliRunner().invoke(app, ["embed", str(scene), "--backbone", "test", "--out", str(tmp_path / "x.zarr"),
                                   "--pretraining", "sat493m"])  # fmt: skip
    assert bad.exit_code == 2 and "applies to checkpoint files" in bad.output and "Traceback" not in bad.output


def test_wrong_band_count_is_a_clean_error(app: typer.Typer, scene: Path, tmp_path: Path) -> None:
    args = ["map", str(scene), "--model", "model_factories:one_band", "--out", str(tmp_path / "o.zarr")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "expects 1 bands" in result.output and "s.tif" in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_python_m_entry_point(scene: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent))
    help_run = subprocess.run(
        [sys.executable, "-m", "geodino.workflows.cli", "--help"], capture_output=True, text=True, env=env
    )
    assert help_run.returncode == 0 and "export-cog" in help_run.stdout
    out = tmp_path / "o.zarr"
    cmd = [sys.executable, "-m", "geodino.workflows.cli", "map", str(scene), "--model", "model_factories:pointwise"]
    run = subprocess.run([*cmd, "--out", str(out), "--no-progress"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert xr.open_zarr(out).prediction.shape == (2, 120, 150)
