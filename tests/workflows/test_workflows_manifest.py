"""The run manifest in every output store, and ``geodino info OUT.zarr``."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from rasters import smooth_scene, write_raster
from typer.testing import CliRunner
from workflows_helpers import save_test_backbone

import geodino
from geodino.cli import app
from geodino.workflows import manifest as manifest_module
from geodino.workflows.manifest import read_manifest
from geodino.workflows.mapping import embed_raster, map_raster
from geodino.workflows.options import MapOptions


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_inputs_model_options_times_and_chunks(tmp_path: Path, monkeypatch) -> None:
    scene = write_raster(tmp_path / "s.tif", smooth_scene(3, 128, 192, seed=7, dtype=np.uint8))
    ckpt = save_test_backbone(tmp_path / "w" / "m.pth", seed=4)
    link = tmp_path / "link.tif"
    link.symlink_to(scene)
    out = tmp_path / "e.zarr"
    monkeypatch.chdir(tmp_path)
    embed_raster("link.tif", "w/m.pth", out, pretraining="sat493m", chunk=4, tile=64, overlap=0, progress=False)
    m = read_manifest(out)
    assert m["geodino_version"] == geodino.__version__ and m["manifest_version"] == 1
    assert m["inputs"] == [{"path": str(scene), "size": scene.stat().st_size, "sha256": _sha256(scene)}]
    model = m["model"]
    assert model["digest"] == f"sha256:{_sha256(ckpt)}" and model["source"] == str(ckpt.resolve())
    assert model["pretraining"] == "sat493m" and model["random_weights"] is False
    assert model["name"] == "dinov3_vit_test" and model["kind"] == "embedding"
    assert m["options"] == MapOptions(pretraining="sat493m", chunk=4, tile=64, overlap=0, progress=False).to_dict()
    assert m["resolved"]["tile"] == 64 and m["resolved"]["chunk"] == [4, 4] and m["resolved"]["factor"] == 16
    run = m["run"]
    started, finished = (dt.datetime.fromisoformat(run[k]) for k in ("started", "finished"))
    assert started <= finished and run["status"] == "complete"
    flags = np.asarray(zarr.open_array(str(out), path="chunk_done", mode="r")[...])
    assert run["chunks_total"] == run["chunks_done"] == flags.size == 6
    attrs = xr.open_zarr(out).attrs  # consolidated metadata sees the final manifest too
    assert attrs["geodino_manifest"]["run"]["status"] == "complete" and attrs["weights"] == "sat493m"


def test_format_2_stores_reconsolidate_the_final_manifest(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "s.tif", smooth_scene(3, 64, 64, seed=7, dtype=np.uint8))
    map_raster(scene, "model_factories:pointwise", tmp_path / "o.zarr", zarr_format=2, progress=False)
    attrs = xr.open_zarr(tmp_path / "o.zarr", consolidated=True).attrs
    assert attrs["geodino_manifest"]["run"]["status"] == "complete"
    assert attrs["geodino_manifest"]["run"]["finished"] is not None


def test_digests_are_computed_once_per_run_not_per_chunk(tmp_path: Path, monkeypatch) -> None:
    scene = write_raster(tmp_path / "s.tif", smooth_scene(3, 300, 500, seed=7, dtype=np.uint16))
    calls: list[str] = []
    original = manifest_module.file_sha256
    monkeypatch.setattr(manifest_module, "file_sha256", lambda p: calls.append(str(p)) or original(p))
    ds = map_raster(scene, "model_factories:pointwise", tmp_path / "o.zarr", chunk=48, progress=False)
    assert ds.prediction.encoding["chunks"] == (2, 48, 48)  # 7 x 11 = 77 chunks
    assert calls == [os.path.realpath(scene)]


def test_info_prints_the_manifest_and_completeness(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "s.tif", smooth_scene(3, 96, 96, seed=7, dtype=np.uint8))
    out = tmp_path / "o.zarr"
    map_raster(scene, "model_factories:classifier", out, chunk=48, progress=False)
    result = CliRunner().invoke(app, ["info", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert f"{out}: 4 of 4 chunks done (complete)" in text
    assert "model: classifier (classification, weights as given), state:" in text
    assert f"input: {scene} (" in text and f"sha256 {_sha256(scene)[:16]}" in text
    assert "chunk=48" in text and "(complete), geodino" in text


def test_a_store_from_before_manifests_is_not_resumed(tmp_path: Path) -> None:
    scene = write_raster(tmp_path / "s.tif", smooth_scene(3, 64, 64, seed=7, dtype=np.uint8))
    out = tmp_path / "o.zarr"
    map_raster(scene, "model_factories:pointwise", out, progress=False)
    group = zarr.open_group(str(out), mode="r+")
    group.attrs["geodino_run"] = {"old": True}
    del group.attrs["geodino_manifest"]
    with pytest.raises(ValueError, match=r"older geodino.*--overwrite"):
        map_raster(scene, "model_factories:pointwise", out, resume=True, progress=False)
