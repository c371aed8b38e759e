"""Anticipated failures end as one or two lines on stderr and exit 2 (Ctrl-C: 130), never as a traceback.

In-process through the ``geodino`` typer app where the process boundary does not matter (a traceback would show
as ``result.exception`` other than ``SystemExit``), in a subprocess where it does (Dask worker processes, SIGINT).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import zarr
from rasters import smooth_scene, write_raster
from typer.testing import CliRunner

from geodino.cli import app
from geodino.workflows.mapping import map_raster

TESTS = str(Path(__file__).parents[1])
MODEL = ["--model", "model_factories:pointwise"]


def _bad(*args: str, code: int = 2) -> str:
    """Run the CLI in-process; assert a clean failure; return its output."""
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return result.output


def _geodino(args: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=TESTS, **kwargs.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "geodino.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)  # fmt: skip


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "s.tif", smooth_scene(3, 96, 120, seed=2, dtype=np.uint8))


def test_an_output_under_a_regular_file_is_a_message(scene: Path, tmp_path: Path) -> None:
    out = _bad("map", str(scene), *MODEL, "--out", str(scene / "o.zarr"))
    assert f"{scene} is a file, not a folder" in out


def test_an_unreachable_scheduler_fails_fast_and_leaves_no_store(
    scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geodino.workflows import execution

    monkeypatch.setattr(execution, "CONNECT_TIMEOUT_S", 3.0)
    out = tmp_path / "o.zarr"
    start = time.monotonic()
    text = _bad("map", str(scene), *MODEL, "--out", str(out), "--scheduler", "tcp://127.0.0.1:9")
    assert time.monotonic() - start < 30
    assert "no Dask scheduler answered at tcp://127.0.0.1:9" in text and "--scheduler" in text
    assert not out.exists()  # the next run is not blocked by an empty store
    result = CliRunner().invoke(app, ["map", str(scene), *MODEL, "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--target-resolution", "abc"], "--target-resolution: expected a pixel size"),
        (["--batch-size", "0"], "batch_size (--batch-size) must be at least 1, got 0"),
        (["--workers", "0"], "workers (--workers) must be at least 1, got 0"),
        (["--bands", ""], "--bands: expected a comma-separated list"),
        (["--blend", "gaussian"], "blend (--blend) must be one of hann, center, uniform"),
        (["--resume", "--overwrite"], "--resume and --overwrite contradict"),
        (["--device", "tpu9"], "is not a torch device"),
    ],
)
def test_bad_flag_values_are_messages(scene: Path, tmp_path: Path, flags: list[str], expected: str) -> None:
    out = tmp_path / "o.zarr"
    assert expected in _bad("map", str(scene), *MODEL, "--out", str(out), *flags)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_on_a_machine_without_a_gpu_is_a_message(scene: Path, tmp_path: Path) -> None:
    text = _bad("embed", str(scene), "--backbone", "test", "--out", str(tmp_path / "o.zarr"), "--device", "cuda")
    assert "no CUDA GPU is visible" in text and "--device cpu" in text


def test_debug_keeps_the_traceback(scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODINO_DEBUG", "0")  # restored after the test (--debug sets it to 1)
    result = CliRunner().invoke(app, ["--debug", "map", str(scene), *MODEL, "--out", str(tmp_path / "o.zarr"),
                                      "--batch-size", "0"])  # fmt: skip
    assert result.exit_code == 1 and type(result.exception).__name__ == "InputError"


def test_a_bug_is_one_line_that_points_to_debug(scene: Path, tmp_path: Path, monkeypatch) -> None:
    from geodino.workflows import mapping

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(mapping, "predict_chunk", broken)
    text = _bad("map", str(scene), *MODEL, "--out", str(tmp_path / "o.zarr"), "--no-progress", code=1)
    assert "error: unexpected RuntimeError: a bug (run with --debug for the traceback)" in text


def test_export_cog_says_when_no_overviews_are_written(scene: Path, tmp_path: Path) -> None:
    map_raster(scene, "model_factories:pointwise", tmp_path / "o.zarr", progress=False)
    result = CliRunner().invoke(app, ["export-cog", str(tmp_path / "o.zarr"), "prediction", str(tmp_path / "p.tif")])
    assert result.exit_code == 0, result.output
    assert "warning: " in result.output and "no overviews" in result.output
    with rasterio.open(tmp_path / "p.tif") as src:
        assert src.overviews(1) == []


def test_info_takes_a_hub_name_and_geodino_exposes_hub() -> None:
    result = CliRunner().invoke(app, ["info", "test"])
    assert result.exit_code == 0 and "dinov3_vit_test" in result.output and "random" in result.output
    assert "not a hub name (known: test, vit7b16" in _bad("info", "no_such_model")
    code = "import geodino, sys; print(geodino.hub.resolve_name('vits16'), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["dinov3_vits16", "False"]


def _corrupt_tile(path: Path) -> Path:
    """A deflate-compressed tiled GeoTIFF whose tile (2, 2) holds garbage: it opens, and that read fails."""
    write_raster(path, smooth_scene(3, 256, 256, seed=1, dtype=np.uint8), compress="deflate", blocksize=64)
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_2", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_2_2", "TIFF", bidx=1))
    with open(path, "r+b") as fh:
        fh.seek(offset + 2)
        fh.write(b"\xff" * (size - 4))
    return path


@pytest.mark.slow
def test_a_read_error_under_workers_is_reported_once(tmp_path: Path) -> None:
    bad = _corrupt_tile(tmp_path / "bad.tif")
    proc = _geodino(["map", str(bad), *MODEL, "--out", str(tmp_path / "o.zarr"), "--workers", "2", "--chunk", "48",
                     "--no-progress"])  # fmt: skip
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert err.count("error:") == 1 and "bad.tif: reading rows" in err and "ZIPDecode" in err


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "s.tif", smooth_scene(3, 300, 500, seed=4, dtype=np.uint16))
    out = tmp_path / "o.zarr"
    # Batches of 8: 9 forward passes of 0.3 s, finishing 2-3 chunks each, so the interrupt comes with most of the
    # run still to do (with batches of 64, all 24 chunks finished within half a second).
    args = ["map", str(scene), "--model", "model_factories:slow_pointwise", "--out", str(out), "--chunk", "96"]
    args += ["--batch-size", "8", "--no-progress"]
    # The child gets SIGINT's default action, as a command typed in a terminal does, whatever this process inherited:
    # a suite started in the background by a non-interactive shell has SIGINT ignored, and its children with it.
    proc = _geodino(args, env={"GEODINO_TEST_SLEEP": "0.3"}, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if np.asarray(zarr.open_array(str(out), path="chunk_done", mode="r")[...]).sum() >= 2:
                break
        except Exception:  # the store may not exist yet
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; resume with --resume" in err
    from geodino.workflows.manifest import read_manifest

    assert read_manifest(out)["run"]["status"] == "interrupted"
    resumed = _geodino([*args, "--resume"])
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    manifest = read_manifest(out)
    assert manifest["run"]["status"] == "complete" and manifest["history"][0]["status"] == "interrupted"
