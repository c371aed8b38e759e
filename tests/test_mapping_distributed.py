"""dask.distributed: a LocalCluster of 2 worker processes writes the same bytes as the threaded scheduler."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from rasters import smooth_scene, write_raster

from geodino.workflows.mapping import map_raster

warnings.filterwarnings("ignore", message=".*consolidated.*")


@pytest.mark.slow
def test_local_cluster_matches_threads(tmp_path: Path, monkeypatch) -> None:
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", tests_dir)  # worker processes import model_factories by name
    path = write_raster(tmp_path / "s.tif", smooth_scene(3, 300, 500, seed=8, dtype=np.uint16))
    spec = "model_factories:small_conv"
    threads = map_raster(path, spec, tmp_path / "t.zarr", chunk=96, progress=False)
    cluster = map_raster(path, spec, tmp_path / "d.zarr", chunk=96, workers=2, scheduler="distributed")
    assert np.array_equal(threads.prediction.values, cluster.prediction.values)
    for chunk in sorted((tmp_path / "t.zarr" / "prediction").rglob("*")):
        if chunk.is_file() and chunk.name != "zarr.json":
            twin = tmp_path / "d.zarr" / chunk.relative_to(tmp_path / "t.zarr")
            assert twin.read_bytes() == chunk.read_bytes(), chunk
