"""Resume: a run killed with SIGKILL midway and resumed equals an uninterrupted run, without recomputing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from rasters import smooth_scene, write_raster

from geodino.raster.plan import PatchGrid, plan_chunks
from geodino.workflows.mapping import map_raster
from geodino.workflows.sink import StoreMismatchError

warnings.filterwarnings("ignore", message=".*consolidated.*")

TESTS = Path(__file__).parent
CHUNKS = 4 * 6  # 300 x 500 output in 96 x 96 chunks


def _cli(args: list[str], log: Path, sleep: float) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(TESTS), GEODINO_TEST_LOG=str(log), GEODINO_TEST_SLEEP=str(sleep))
    return subprocess.Popen(
        [sys.executable, "-m", "geodino.workflows.cli", "map", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _done_count(store: Path) -> int:
    try:
        return int(np.asarray(zarr.open_array(str(store), path="chunk_done", mode="r")[...]).sum())
    except Exception:  # the store may not exist yet
        return 0


def _calls(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def _patches_run(log: Path) -> int:
    """Patches the model saw (batch padding excluded), from the Logged model's log."""
    return sum(int(line.split()[2]) for line in log.read_text().splitlines()) if log.exists() else 0


def _patches_of(chunks: set[tuple[int, int]]) -> int:
    """Distinct patches touching the cores of `chunks` (tile 64, default overlap 16, chunk 96)."""
    tasks = plan_chunks(PatchGrid(300, 500, 64, 48), 96)
    origins = {(r, c) for t in tasks if (t.iy, t.ix) in chunks for r, c in zip(t.patch_rows, t.patch_cols, strict=True)}
    return len(origins)


def _done_chunks(store: Path) -> set[tuple[int, int]]:
    flags = np.asarray(zarr.open_array(str(store), path="chunk_done", mode="r")[...])
    return {(int(iy), int(ix)) for iy, ix in zip(*np.nonzero(flags), strict=True)}


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "scene.tif", smooth_scene(3, 300, 500, seed=4, dtype=np.uint16))


def test_kill_9_then_resume_gives_identical_output(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed.zarr"
    args = [str(scene), "--model", "model_factories:slow_pointwise", "--out", str(out)]
    args += ["--chunk", "96", "--batch-size", "64", "--scheduler", "sync", "--no-progress"]
    proc = _cli(args, tmp_path / "first.log", sleep=0.3)
    deadline = time.monotonic() + 120
    while _done_count(out) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    done = _done_count(out)
    assert 3 <= done < CHUNKS
    all_chunks = {(iy, ix) for iy in range(4) for ix in range(6)}
    pending = all_chunks - _done_chunks(out)

    resumed = _cli([*args, "--resume"], tmp_path / "second.log", sleep=0.0)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    # The resumed run predicted exactly the patches of the unfinished chunks, each once.
    assert _patches_run(tmp_path / "second.log") == _patches_of(pending) < _patches_of(all_chunks)
    assert _done_count(out) == CHUNKS

    reference = map_raster(
        scene, "model_factories:slow_pointwise", tmp_path / "ref.zarr", chunk=96, batch_size=64, progress=False
    )
    got = map_raster(scene, "model_factories:slow_pointwise", out, chunk=96, batch_size=64, resume=True, progress=False)
    assert np.array_equal(got.prediction.values, reference.prediction.values)
    assert np.isfinite(got.prediction.values).all()


def test_resume_of_a_complete_store_runs_nothing(scene: Path, tmp_path: Path, monkeypatch) -> None:
    log = tmp_path / "calls.log"
    monkeypatch.setenv("GEODINO_TEST_LOG", str(log))
    out = tmp_path / "o.zarr"
    kwargs = {"chunk": 96, "batch_size": 64, "progress": False}
    first = map_raster(scene, "model_factories:slow_pointwise", out, **kwargs).prediction.values
    calls = _calls(log)
    # every patch of the grid predicted exactly once, border patches shared between chunks included
    assert _patches_run(log) == _patches_of({(iy, ix) for iy in range(4) for ix in range(6)})
    again = map_raster(scene, "model_factories:slow_pointwise", out, resume=True, **kwargs).prediction.values
    assert _calls(log) == calls
    assert np.array_equal(first, again)


def test_resume_refuses_a_store_made_with_other_parameters(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    map_raster(scene, "model_factories:pointwise", out, chunk=96, progress=False)
    with pytest.raises(StoreMismatchError, match=r"different parameters.*--overwrite"):
        map_raster(scene, "model_factories:pointwise", out, chunk=144, resume=True, progress=False)
    with pytest.raises(StoreMismatchError, match="model"):
        map_raster(scene, "model_factories:small_conv", out, chunk=96, resume=True, progress=False)
    with pytest.raises(FileExistsError, match=r"--resume.*--overwrite"):
        map_raster(scene, "model_factories:pointwise", out, chunk=96, progress=False)
    ds = map_raster(scene, "model_factories:small_conv", out, chunk=144, overwrite=True, progress=False)
    assert ds.prediction.encoding["chunks"] == (2, 144, 144)


def test_overwrite_never_deletes_a_folder_that_is_not_a_store(scene: Path, tmp_path: Path) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a Zarr store"):
        map_raster(scene, "model_factories:pointwise", folder, overwrite=True, progress=False)
    assert (folder / "notes.txt").exists()
