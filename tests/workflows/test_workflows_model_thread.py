"""Forward passes of a threaded run happen on the thread that started it (one OpenMP team, glibc's main arena)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from model_factories import Pointwise
from rasters import smooth_scene, write_raster
from torch import nn

from geodino.workflows.mapping import map_raster
from geodino.workflows.model_thread import RunInterruptedError, run_forward, serve_forwards
from geodino.workflows.predictor import PredictorInfo


class ThreadRecorder(nn.Module):
    """``Pointwise``, recording the thread of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Pointwise()
        self.threads: list[int] = []
        self.geodino_info = PredictorInfo(in_bands=3, out_channels=2, kind="regression", name="recorder", tile=64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.threads.append(threading.get_ident())
        return self.inner(x)


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_every_forward_pass_runs_on_the_calling_thread(tmp_path: Path, scheduler: str) -> None:
    scene = write_raster(tmp_path / "scene.tif", smooth_scene(3, 128, 192, seed=3, dtype=np.uint8))
    model = ThreadRecorder().eval()
    map_raster(
        scene, model, tmp_path / "out.zarr", tile=64, overlap=16, chunk=48, batch_size=2, workers=2,
        scheduler=scheduler, progress=False,
    )  # fmt: skip
    assert len(model.threads) >= 6
    assert set(model.threads) == {threading.get_ident()}


def test_the_result_does_not_depend_on_the_thread(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "scene.tif", smooth_scene(3, 128, 192, seed=3, dtype=np.uint8))
    kwargs = {"tile": 64, "overlap": 16, "chunk": 48, "batch_size": 2, "progress": False}
    threaded = map_raster(scene, "model_factories:pointwise", tmp_path / "t.zarr", workers=2, **kwargs)
    sync = map_raster(scene, "model_factories:pointwise", tmp_path / "s.zarr", scheduler="sync", **kwargs)
    np.testing.assert_array_equal(threaded["prediction"].values, sync["prediction"].values)


def _in_threads(count: int, fn) -> list[object]:  # type: ignore[no-untyped-def]
    """``fn()`` in ``count`` threads at once; their results (or exceptions), in order."""
    results: list[object] = [None] * count

    def one(i: int) -> None:
        try:
            results[i] = fn()
        except BaseException as err:
            results[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_serve_forwards_runs_handed_calls_here_and_returns_the_work() -> None:
    here = threading.get_ident()
    got = serve_forwards(lambda: _in_threads(4, lambda: run_forward(threading.get_ident)))
    assert got == [here] * 4
    # Outside a run, a call runs on the thread that makes it.
    assert _in_threads(1, lambda: run_forward(threading.get_ident)) != [here]


def test_errors_reach_the_caller_of_the_forward_and_of_the_run() -> None:
    def boom() -> None:
        raise ValueError("bad batch")

    got = serve_forwards(lambda: _in_threads(2, lambda: run_forward(boom)))
    assert all(isinstance(e, ValueError) and str(e) == "bad batch" for e in got)

    def work() -> None:
        raise OSError("read failed")

    with pytest.raises(OSError, match="read failed"):
        serve_forwards(work)


def test_ctrl_c_on_the_serving_thread_stops_the_run_and_fails_the_waiting_calls() -> None:
    """A KeyboardInterrupt raised by a forward pass on the serving thread ends the serving (re-raised there), and
    the calls still queued fail with RunInterruptedError instead of waiting for ever."""
    outcomes: list[object] = []
    started = threading.Event()

    def interrupted() -> None:
        started.set()
        time.sleep(0.2)  # the other call queues meanwhile
        raise KeyboardInterrupt

    def work() -> None:
        def first() -> None:
            try:
                run_forward(interrupted)
            except BaseException as err:
                outcomes.append(err)

        t = threading.Thread(target=first)
        t.start()
        started.wait()
        try:
            run_forward(lambda: "never")
        except BaseException as err:
            outcomes.append(err)
        t.join()

    with pytest.raises(KeyboardInterrupt):
        serve_forwards(work)
    deadline = time.monotonic() + 10
    while len(outcomes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(type(e).__name__ for e in outcomes) == ["KeyboardInterrupt", "RunInterruptedError"]
    assert any(isinstance(e, RunInterruptedError) for e in outcomes)
