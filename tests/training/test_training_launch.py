"""``geodino pretrain --nproc 2``: real subprocesses, torchrun underneath, one run folder; refusals exit 2."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from training_data_helpers import single_thread, tiny_args, write_rgb  # noqa: F401 (single_thread is a fixture)
from typer.testing import CliRunner

from geodino.cli import app
from geodino.models.checkpoint import load_backbone
from geodino.training.launch import torchrun_command

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
)


def _geodino(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "geodino.cli", *(str(a) for a in args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_nproc_2_fsdp2_trains_one_run_folder_and_resumes(tmp_path: Path) -> None:
    image = write_rgb(tmp_path / "scene.tif", size=128)
    run = tmp_path / "run"
    args = tiny_args(image, run, 2, "train.diagnostic_every=2", "train.checkpoint_every=1")
    res = _geodino(*args, "--nproc", 2, "--strategy", "fsdp2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 ranks (fsdp2)" in res.stdout and res.stdout.count("wrote ") == 1  # rank 0 alone reports
    rows = _rows(run)
    assert [int(r["step"]) for r in rows] == [1, 2]  # one writer, not one per rank
    assert all(float(r["images_per_s"]) > 0 and r["mfu"] == "" and float(r["data_wait_s"]) >= 0 for r in rows)
    assert float(rows[-1]["patch_sim_mean"]) <= 1  # diagnostics on the gathered teacher
    model = load_backbone(run / "backbone.pth")  # exported from the shards: a whole model
    assert model.embed_dim == 64 and model.cls_token.shape == (1, 1, 64)
    # Under FSDP2 every rank writes its shards: checkpoints are torch.distributed.checkpoint folders.
    assert len(list((run / "checkpoints").glob("checkpoint_*.dcp"))) == 2
    assert not list((run / "checkpoints").glob("checkpoint_*.pth"))
    # Resume the 2-process FSDP2 run in one process: a sharded checkpoint loads on another world size.
    res = _geodino("pretrain", "--resume", "--out", run, "--steps", 3)
    assert res.returncode == 0, res.stdout + res.stderr
    assert [int(r["step"]) for r in _rows(run)] == [1, 2, 3]
    # (Sharding a whole checkpoint on load is tested in test_training_parallel; each launch here costs ~30 s.)


@pytest.mark.slow
def test_nproc_2_bad_data_exits_2_with_one_line(tmp_path: Path) -> None:
    res = _geodino(*tiny_args(tmp_path / "missing.tif", tmp_path / "run"), "--nproc", 2)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.tif" in err[0], res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.usefixtures("single_thread")
def test_nproc_refusals_before_any_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_rgb(tmp_path / "scene.tif", size=96)
    runner = CliRunner()
    res = runner.invoke(app, [*tiny_args(image, tmp_path / "a"), "--nproc", "0"])
    assert res.exit_code == 2 and "--nproc must be at least 1" in res.stderr, res.output
    res = runner.invoke(app, [*tiny_args(image, tmp_path / "b"), "--nproc", "2", "--strategy", "zero3"])
    assert res.exit_code == 2 and "parallel.strategy" in res.stderr and "fsdp2" in res.stderr, res.output
    assert not (tmp_path / "b").exists()
    # Under a torchrun that started 4 local processes, --nproc 2 is a contradiction, not a second launch.
    for key, value in {"RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(key, value)
    res = runner.invoke(app, [*tiny_args(image, tmp_path / "c"), "--nproc", "2"])
    assert res.exit_code == 2 and "already runs under torchrun with 4" in res.stderr, res.output


def test_torchrun_command_is_torchs_launcher() -> None:
    cmd = torchrun_command(3, ["pretrain", "--out", "x"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in cmd and "--standalone" in cmd
    assert cmd[-5:] == ["-m", "geodino.training.cli", "pretrain", "--out", "x"]
