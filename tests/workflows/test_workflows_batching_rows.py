"""Rows the model runs per mapping: every grid patch once, and padding for at most one last batch per run.

A chunk at a 512-pixel tile holds only a handful of patches; before the batch queue took patches from chunks that
had not started yet, nearly every chunk ended in a padded batch (104 rows for the 81 patches of a 4096 x 4096
raster at batch 8). These runs go through ``map_raster`` with the threaded scheduler, count the rows each forward
pass receives (padding included), and check that two chunkings still give the same bytes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from rasters import smooth_scene, write_raster
from torch import nn

from geodino.raster.plan import PatchGrid
from geodino.workflows.mapping import map_raster
from geodino.workflows.predictor import PredictorInfo, clear_model_cache, from_callable

BATCH = 8


class RowCounter(nn.Module):
    """A per-pixel model (1x1 conv) recording, per forward pass, the rows it got and how many are real patches
    (the Predictor pads a short batch with all-zero rows; normalised scene patches are never all zero)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 2, 1)
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        real = int((x.flatten(1).abs().sum(dim=1) > 0).sum())
        with self._lock:
            self.calls.append((x.shape[0], real))
        return self.conv(x)


def _predictor(model: RowCounter, tile: int | None):
    info = PredictorInfo(in_bands=3, out_channels=2, kind="regression", tile=tile, name="row-counter")
    return from_callable(model, info, batch_size=BATCH, device="cpu")


@pytest.fixture(autouse=True)
def _fresh_models():
    clear_model_cache()  # a fresh queue per test: its statistics and feeders start empty
    yield
    clear_model_cache()


def _map(path: Path, out: Path, tile: int | None, overlap: int | None, chunk: int | None, workers: int | None):
    """One mapping with a new model (a fresh cache: the Predictor would find an equal model's earlier copy)."""
    clear_model_cache()
    model = RowCounter()
    ds = map_raster(
        path,
        _predictor(model, tile),
        out,
        tile=tile,
        overlap=overlap,
        chunk=chunk,
        scheduler="threads",
        workers=workers,
        progress=False,
    )
    return np.asarray(ds["prediction"].values), model.calls


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "other_chunk", "workers"),
    [
        (2048, 512, 64, 896, None),  # 25 patches: 2 x 2 chunks by default; one thread per core
        (2048, 512, 64, 896, 1),  # one thread: nothing to batch with but chunks that have not started
        pytest.param(4096, 512, 64, 1344, None, marks=pytest.mark.slow),  # 81 patches: 3 x 3 chunks by default
        (1024, None, None, 504, None),  # the default 224 tile (overlap 56): 36 patches
        (1024, None, None, 504, 1),
    ],
)
def test_rows_are_the_patches_plus_one_padded_batch(
    tmp_path: Path, size: int, tile: int | None, overlap: int | None, other_chunk: int, workers: int | None
) -> None:
    path = write_raster(tmp_path / "scene.tif", smooth_scene(3, size, size, seed=1, dtype=np.uint8), blocksize=512)
    patch = tile or 224
    grid = PatchGrid(size, size, patch, patch - (overlap if overlap is not None else 56))
    first, calls = _map(path, tmp_path / "a.zarr", tile, overlap, None, workers)
    second, other_calls = _map(path, tmp_path / "b.zarr", tile, overlap, other_chunk, workers)
    for run in (calls, other_calls):
        rows = sum(rows for rows, _ in run)
        assert all(rows == BATCH for rows, _ in run)  # fixed-size batches (one shape per forward)
        assert sum(real for _, real in run) == grid.num_patches  # every patch once: none predicted twice
        assert rows <= grid.num_patches + BATCH - 1, f"{rows} rows for {grid.num_patches} patches: {run}"
        assert sum(real < BATCH for _, real in run) <= 1  # one short batch at most
    assert np.isfinite(first).all()
    assert np.array_equal(first, second)  # the same bytes over both chunkings


def test_single_batch_output_is_not_copied_and_equals_the_multi_batch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call of at most one batch (what the batch queue sends) returns that batch's output without concatenating
    it into a copy, with the same bytes as the same patches predicted among more batches."""
    from geodino.workflows import predictor as predictor_module

    torch.manual_seed(0)
    model = nn.Conv2d(3, 4, 1).eval()
    info = predictor_module.PredictorInfo(in_bands=3, out_channels=4, kind="regression")
    predictor = predictor_module.from_callable(model, info, batch_size=4)
    x = np.random.default_rng(0).normal(size=(7, 3, 8, 8)).astype(np.float32)
    both = predictor(x)  # two batches: concatenated
    concatenated = []
    real = np.concatenate
    monkeypatch.setattr(predictor_module.np, "concatenate", lambda *a, **k: concatenated.append(1) or real(*a, **k))
    one = predictor(x[:3])
    assert not concatenated
    assert one.shape == (3, 4, 8, 8)
    assert one.tobytes() == both[:3].tobytes()
