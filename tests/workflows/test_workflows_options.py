"""MapOptions: one typed object for a run's settings, shared by the CLI, the Python API and the resume check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from rasters import smooth_scene, write_raster
from typer.testing import CliRunner

from geodino.cli import app
from geodino.errors import InputError, StoreMismatchError
from geodino.workflows.manifest import read_manifest
from geodino.workflows.mapping import map_raster
from geodino.workflows.options import MapOptions, cli_flags


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "s.tif", smooth_scene(3, 150, 200, seed=5, dtype=np.uint16))


def test_every_setting_has_a_kind_and_the_cli_flags_come_from_the_fields() -> None:
    for f in dataclasses.fields(MapOptions):
        assert f.metadata["kind"] in ("result", "run"), f.name
    runner = CliRunner()
    for command in ("map", "embed"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        for name, _default, flag in cli_flags(command):
            assert flag.names(name)[0].split("/")[0] in text, (command, name)
    embed_only = {name for name, _, _ in cli_flags("embed")} - {name for name, _, _ in cli_flags("map")}
    assert embed_only == {"pretraining", "random_weights"}
    assert "outputs" in {name for name, _, _ in cli_flags("map")}


def test_validation_names_the_field_and_its_flag() -> None:
    with pytest.raises(InputError, match=r"batch_size \(--batch-size\) must be at least 1, got 0"):
        MapOptions(batch_size=0)
    with pytest.raises(InputError, match=r"tta \(--tta\) must be one of flips, d4"):
        MapOptions(tta="rot90")
    with pytest.raises(InputError, match="empty selection"):
        MapOptions(bands=[])
    with pytest.raises(TypeError, match=r"unknown mapping option.*'tile_size'"):
        MapOptions().replace(tile_size=3)


def test_options_object_and_keywords_are_the_same_run(scene: Path, tmp_path: Path) -> None:
    options = MapOptions(chunk=96, tile=64, blend="center", progress=False)
    a = map_raster(scene, "model_factories:small_conv", tmp_path / "a.zarr", options)
    b = map_raster(scene, "model_factories:small_conv", tmp_path / "b.zarr", chunk=96, tile=64, blend="center",
                   progress=False)  # fmt: skip
    c = map_raster(scene, "model_factories:small_conv", tmp_path / "c.zarr", options, chunk=144)
    assert np.array_equal(a.prediction.values, b.prediction.values)
    assert np.array_equal(a.prediction.values, c.prediction.values)  # chunking never changes the values
    assert read_manifest(tmp_path / "a.zarr")["options"] == options.to_dict() == read_manifest(tmp_path / "b.zarr")[
        "options"]  # fmt: skip
    assert MapOptions(**read_manifest(tmp_path / "a.zarr")["options"]) == options  # the manifest round-trips
    assert read_manifest(tmp_path / "c.zarr")["options"]["chunk"] == 144


def test_resume_compares_the_result_fields_and_names_those_that_differ(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    map_raster(scene, "model_factories:pointwise", out, chunk=96, progress=False)
    # Run fields (how it runs) may change on resume: same bytes.
    map_raster(scene, "model_factories:pointwise", out, chunk=96, batch_size=3, workers=1, scheduler="sync",
               resume=True, progress=False)  # fmt: skip
    with pytest.raises(StoreMismatchError) as info:
        map_raster(scene, "model_factories:pointwise", out, chunk=96, blend="uniform", target_crs="EPSG:3857",
                   resume=True, progress=False)  # fmt: skip
    message = str(info.value)
    assert "options.blend: 'hann' -> 'uniform'" in message and "options.target_crs: None -> 'EPSG:3857'" in message
    assert "raster.crs differs" in message and "PROJCS" not in message and len(message) < 700
    with pytest.raises(StoreMismatchError, match=r"options\.bands: None -> \[3, 2, 1\]"):
        map_raster(scene, "model_factories:pointwise", out, chunk=96, bands=[3, 2, 1], resume=True, progress=False)


def test_map_refuses_backbone_only_settings(scene: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="use embed_raster"):
        map_raster(scene, "model_factories:pointwise", tmp_path / "o.zarr", random_weights=True)


def test_tta_reaches_the_predictor_and_the_manifest(scene: Path, tmp_path: Path) -> None:
    ds = map_raster(scene, "model_factories:pointwise", tmp_path / "o.zarr", tta="flips", progress=False)
    assert read_manifest(tmp_path / "o.zarr")["options"]["tta"] == "flips" and ds.prediction.shape[0] == 2


def test_resume_compares_model_defaults_by_their_resolved_values(scene: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.zarr"
    map_raster(scene, "model_factories:pointwise", out, tile=64, chunk=96, progress=False)  # 64: the model's tile
    map_raster(scene, "model_factories:pointwise", out, chunk=96, resume=True, progress=False)
    with pytest.raises(StoreMismatchError, match=r"resolved\.tile: 64 -> 32; resolved\.stride: 48 -> 24"):
        map_raster(scene, "model_factories:pointwise", out, tile=32, chunk=96, resume=True, progress=False)
