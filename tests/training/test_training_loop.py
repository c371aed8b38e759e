"""The pretraining loop on a raster the test writes: loss falls, metrics, diagnostics and probe, export, resume."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
from training_data_helpers import single_thread, write_labels_for, write_rgb  # noqa: F401 (single_thread is a fixture)

from geodino.models.checkpoint import load_backbone
from geodino.training.config import load_config
from geodino.training.loop import COLUMNS, RunError, latest_checkpoint, train

pytestmark = pytest.mark.usefixtures("single_thread")  # imported fixture: one torch thread


def _rows(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scene")
    image = write_rgb(folder / "scene.tif", size=128, seed=3)
    return image, write_labels_for(image, folder / "labels.tif")


def test_loss_falls_metrics_diagnostics_probe_and_export(scene, tmp_path):
    image, labels = scene
    cfg = load_config(
        "tiny",
        [
            f"data.paths=['{image}']",
            "train.steps=30",
            "train.log_every=1",
            "train.diagnostic_every=15",
            f"diagnostics.probe_labels={labels}",
            "diagnostics.probe_steps=20",
            "diagnostics.probe_windows=4",
        ],
    )
    run = tmp_path / "run"
    lines = []
    result = train(cfg, run, log=lines.append)
    header, rows = _rows(run)
    assert tuple(header) == COLUMNS
    assert [int(r["step"]) for r in rows] == list(range(1, 31))
    losses = [float(r["loss"]) for r in rows]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (first, last)  # the tiny recipe learns on a fixed raster
    for r in rows:
        assert float(r["lr"]) >= 0 and 0 < float(r["momentum"]) <= 1 and float(r["images_per_s"]) > 0
        assert float(r["dino_global"]) > 0 and float(r["ibot"]) >= 0
        assert r["gram"] == "0" and r["gram_weight"] == "0"
    diag = [int(r["step"]) for r in rows if r["patch_sim_mean"]]
    assert diag == [15, 30]
    for r in rows:
        if r["patch_sim_mean"]:
            assert -1 <= float(r["patch_sim_q05"]) <= float(r["patch_sim_mean"]) <= 1
            assert 0 <= float(r["probe_miou"]) <= 1
            assert r["gram_distance"] == ""  # no Gram teacher in this run
    assert any("patch_sim" in line for line in lines)
    # config.yaml reads back to the same configuration; backbone.pth loads with the run's normalisation.
    assert load_config(run / "config.yaml") == cfg
    model = load_backbone(result.backbone)
    assert model.embed_dim == 64 and model.patch_size == 8
    assert model.meta.weights == "geodino" and model.meta.gsd == 10.0
    assert all(0.2 < m < 0.8 for m in model.meta.mean) and all(0.0 < s < 0.5 for s in model.meta.std)
    x = torch.zeros(1, 3, 32, 32)
    assert model.forward_features(x)["x_norm_patchtokens"].shape == (1, 16, 64)


def test_resume_continues_from_the_last_checkpoint(scene, tmp_path):
    image, _ = scene
    base = [f"data.paths=['{image}']", "train.log_every=1", "train.checkpoint_every=3", "train.diagnostic_every=0"]
    run = tmp_path / "run"
    train(load_config("tiny", [*base, "train.steps=6"]), run, log=lambda *_: None)
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "checkpoint_00000006.pth"
    assert len(list((run / "checkpoints").glob("*.pth"))) == 2  # the last two kept
    saved = torch.load(ckpt, weights_only=False)
    assert saved["iteration"] == 6 and saved["optimizer"]["state"]
    with pytest.raises(RunError, match="already holds a run"):
        train(load_config("tiny", [*base, "train.steps=6"]), run)
    with pytest.raises(RunError, match="already reached step 6"):
        train(load_config("tiny", [*base, "train.steps=6"]), run, resume=True)
    # Interrupt-like: drop the last checkpoint so the run resumes from step 3 and redoes 4..9.
    ckpt.unlink()
    result = train(load_config("tiny", [*base, "train.steps=9"]), run, resume=True, log=lambda *_: None)
    assert (result.start_iteration, result.end_iteration) == (3, 9)
    _, rows = _rows(run)
    assert [int(r["step"]) for r in rows] == list(range(1, 10))  # rows past the resumed step were replaced
    assert torch.load(latest_checkpoint(run), weights_only=False)["iteration"] == 9
    with pytest.raises(RunError, match="no checkpoint"):
        shutil.rmtree(run / "checkpoints")
        train(load_config("tiny", [*base, "train.steps=9"]), run, resume=True)


def test_gram_anchoring_high_res_from_ema_then_from_the_runs_backbone(scene, tmp_path):
    image, _ = scene
    base = [f"data.paths=['{image}']", "train.log_every=1", "train.diagnostic_every=4", "train.steps=4"]
    gram = ["gram.enabled=true", "gram.high_res=true", "gram.start_iteration=2", "gram.weight=2.0"]
    first = train(load_config("tiny", [*base, *gram]), tmp_path / "ema", log=lambda *_: None)
    _, rows = _rows(tmp_path / "ema")
    assert [float(r["gram_weight"]) for r in rows] == [0.0, 0.0, 2.0, 2.0]
    assert [float(r["gram"]) > 0 for r in rows] == [False, False, True, True]
    assert float(rows[-1]["gram_distance"]) > 0  # the student has moved away from the teacher copied at step 2
    # A Gram stage started from the run's own exported teacher (a fixed Gram teacher).
    stage = [*base, "gram.enabled=true", f"gram.teacher={first.backbone}", f"student.weights={first.backbone}"]
    train(load_config("tiny", [*stage, "train.diagnostic_every=1"]), tmp_path / "stage", log=lambda *_: None)
    _, rows = _rows(tmp_path / "stage")
    assert all(float(r["gram"]) > 0 for r in rows)  # masked, RoPE-augmented student vs its frozen teacher
    # The EMA teacher starts as the Gram teacher (lr is 0 at the first step), then drifts away from it.
    assert float(rows[0]["gram_distance"]) < 1e-9 and float(rows[-1]["gram_distance"]) > 0
