"""``geodino pretrain`` and ``geodino plot-run`` in-process: real rasters, shared imagery, and bad inputs (exit 2)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from rasters import write_raster
from training_data_helpers import NEON_RGB, S2_13BAND, single_thread, tiny_args, write_rgb  # noqa: F401 (single_thread is a fixture)
from typer.testing import CliRunner

from geodino.cli import app
from geodino.models.checkpoint import load_backbone

pytestmark = pytest.mark.usefixtures("single_thread")  # imported fixture: one torch thread


def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _steps(run_dir) -> list[int]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_pretrain_resume_and_plot_run(tmp_path):
    image = write_rgb(tmp_path / "scene.tif", size=96)
    run = tmp_path / "run"
    res = _invoke(
        tiny_args(image, run, 2, "train.diagnostic_every=2", "train.checkpoint_every=1", "train.num_workers=2")
    )
    assert res.exit_code == 0, res.output
    assert (run / "config.yaml").is_file() and (run / "backbone.pth").is_file()
    assert _steps(run) == [1, 2]
    res = _invoke(["pretrain", "--resume", "--out", run, "--steps", 3])
    assert res.exit_code == 0, res.output
    assert _steps(run) == [1, 2, 3]
    res = _invoke(["plot-run", run])
    assert res.exit_code == 0, res.output
    png = run / "run.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert load_backbone(run / "backbone.pth").embed_dim == 64


@pytest.mark.shared_data
@pytest.mark.skipif(not NEON_RGB.is_file(), reason=f"shared raster not found: {NEON_RGB}")
def test_pretrain_on_neon_rgb(tmp_path):
    run = tmp_path / "neon"
    res = _invoke(tiny_args(NEON_RGB, run, 3))
    assert res.exit_code == 0, res.output
    model = load_backbone(run / "backbone.pth")
    assert model.in_chans == 3 and model.meta.gsd == pytest.approx(0.1)


@pytest.mark.shared_data
@pytest.mark.skipif(not S2_13BAND.is_file(), reason=f"shared raster not found: {S2_13BAND}")
def test_pretrain_on_sentinel2_13_bands_with_probe(tmp_path):
    run = tmp_path / "s2"
    labels = S2_13BAND.parent / "eolearn_lulc.tif"
    res = _invoke(
        tiny_args(S2_13BAND, run, 3, "student.in_chans=13", "train.diagnostic_every=3",
                  f"diagnostics.probe_labels={labels}", "diagnostics.probe_steps=10", "diagnostics.probe_tile=32")
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    model = load_backbone(run / "backbone.pth")
    assert model.in_chans == 13 and len(model.meta.mean) == 13
    with (run / "metrics.csv").open(newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert 0 <= float(last["probe_miou"]) <= 1 and float(last["patch_sim_mean"]) <= 1


def _refused(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    err = res.stderr
    assert err.startswith("error: ") and len(err.strip().splitlines()) <= 2, err
    assert "Traceback" not in res.output and "Traceback" not in err
    for word in words:
        assert word in err, err


def test_bad_inputs_exit_2_without_traceback(tmp_path):
    from geodino.models.checkpoint import save_backbone
    from geodino.models.config import ARCHS
    from geodino.models.vit import DinoVisionTransformer

    rgb = write_rgb(tmp_path / "rgb.tif", size=96)
    (tmp_path / "fake.tif").write_text("not a raster")
    (tmp_path / "empty").mkdir()
    _refused(_invoke(tiny_args(tmp_path / "fake.tif", tmp_path / "a")), "fake.tif", "cannot be opened")
    _refused(_invoke(tiny_args(tmp_path / "empty", tmp_path / "b")), "holds no raster")
    _refused(_invoke(tiny_args(tmp_path / "missing.tif", tmp_path / "b2")), "missing.tif")
    _refused(_invoke(tiny_args(rgb, tmp_path / "c", 3, "student.in_chans=4")), "3 band", "takes 4")
    small = write_raster(tmp_path / "small.tif", np.full((3, 48, 48), 100, np.uint8))
    _refused(_invoke(tiny_args(small, tmp_path / "d")), "larger than every raster")
    _refused(_invoke(tiny_args(rgb, tmp_path / "e", 3, "optim.learning_rate=1")), "unknown config key")
    wide = DinoVisionTransformer(ARCHS["dinov3_vit_test"].replace(embed_dim=128, patch_size=8))
    teacher = save_backbone(wide, tmp_path / "wide.pth")
    _refused(
        _invoke(tiny_args(rgb, tmp_path / "f", 3, "gram.enabled=true", f"gram.teacher={teacher}")),
        "Gram teacher", "embed dim 128",
    )  # fmt: skip
    res = _invoke(["pretrain", "--resume", "--out", tmp_path / "nothing"])
    _refused(res, "no run to resume")
    _refused(_invoke(["pretrain", "--out", tmp_path / "g"]), "no training data")
    _refused(_invoke(["plot-run", tmp_path / "empty"]), "metrics.csv")
