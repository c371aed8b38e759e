"""A real ``geodino pretrain`` process killed with SIGKILL mid-run, then resumed, matches an uninterrupted run.

Both runs (with Gram anchoring from step 6, its teacher refreshed every 8 steps) are subprocesses (``python -m geodino.training.cli pretrain``) on the tiny recipe on CPU, one intra-op
thread, two data-loader workers (so the resumed loader must rotate its workers to hand over the same batches).
Expected: every metrics.csv value but the timing columns (loop.TIMING_COLUMNS) is equal, and model, optimiser and the
exported backbone at the last step are bit-identical (``torch.equal``).
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from training_data_helpers import assert_same_state, write_rgb

from geodino.models.checkpoint import load_backbone
from geodino.training.checkpoint import list_checkpoints
from geodino.training.loop import TIMING_COLUMNS

STEPS = 32
EVERY = 4


def _command(image: Path, run: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "geodino.training.cli",
        "pretrain",
        "--recipe",
        "tiny",
        "--data",
        str(image),
        "--out",
        str(run),
        "--steps",
        str(STEPS),
        "train.batch_size=4",
        "crops.n_local=2",
        "train.num_workers=2",
        "train.log_every=3",  # rows 1, 3, 6, ...: a resumed run must not add a row at its first step
        f"train.checkpoint_every={EVERY}",
        "train.diagnostic_every=10",
        "checkpoint.keep=3",
        # Iteration-driven state that must come back: a Gram teacher copied from the EMA teacher at 6 and refreshed
        # every 8 steps (held in the checkpoint between copies), and the heads' last layer frozen for 10 steps.
        "gram.enabled=true",
        "gram.start_iteration=6",
        "gram.update_frequency=8",
        "optim.freeze_last_layer_iters=10",
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def _final(run: Path) -> dict:
    return torch.load(run / "checkpoints" / f"checkpoint_{STEPS:08d}.pth", map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_kill_minus_nine_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    image = write_rgb(tmp_path / "scene.tif", size=96, seed=5)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = subprocess.run(_command(image, whole), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    # The same run, killed with SIGKILL once a checkpoint beyond the first is on disk.
    proc = subprocess.Popen(_command(image, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if any(step >= 2 * EVERY for step, _ in list_checkpoints(killed)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-training"
    reached = max(step for step, _ in list_checkpoints(killed))
    assert 2 * EVERY <= reached < STEPS and not (killed / "backbone.pth").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "geodino.training.cli", "pretrain", "--resume", "--out", str(killed)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"steps {reached}..{STEPS}" in resumed.stdout
    assert "window stream continues past" not in resumed.stderr  # same sharding: the exact stream

    assert _rows(killed) == _rows(whole)  # every loss term, schedule value and diagnostic, row for row
    logged = sorted({1, STEPS, *range(3, STEPS, 3), *range(10, STEPS, 10)})  # log_every, diagnostic_every
    assert [int(r["step"]) for r in _rows(whole)] == logged
    assert all(float(r["gram"]) > 0 for r in _rows(whole) if int(r["step"]) > 6)
    a, b = _final(whole), _final(killed)
    assert a["iteration"] == b["iteration"] == STEPS
    assert_same_state(a["model"], b["model"])  # student, EMA teacher, heads, loss centres
    assert_same_state(a["optimizer"], b["optimizer"])
    assert a["ranks"][0]["data"] == b["ranks"][0]["data"]  # the window stream reached the same place
    # The teacher exported after the resume is the uninterrupted run's, and load_backbone reads it.
    ta, tb = load_backbone(whole / "backbone.pth"), load_backbone(killed / "backbone.pth")
    assert_same_state(ta.state_dict(), tb.state_dict())
    assert tb.meta.replace(source=ta.meta.source) == ta.meta and tb.embed_dim == 64  # source: the file's path
