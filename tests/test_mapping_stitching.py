"""Stitching: chunk-independent results, whole-raster equality, no seams, nodata, odd and tiny sizes."""

from __future__ import annotations

import warnings
from pathlib import Path

import model_factories as mf
import numpy as np
import pytest
import torch
import zarr
from rasters import smooth_scene, write_raster

from geodino.raster.plan import PatchGrid, plan_chunks
from geodino.raster.source import RasterSource
from geodino.raster.windows import Window
from geodino.workflows.mapping import map_raster
from geodino.workflows.predictor import build_predictor

warnings.filterwarnings("ignore", message=".*consolidated.*")


def _values(ds, var: str = "prediction") -> np.ndarray:
    return np.asarray(ds[var].values)


def _whole_pass(model_spec: str, path: Path) -> np.ndarray:
    """The model run once on the whole normalised raster (no tiling): (K, H, W)."""
    predictor = build_predictor(model_spec)
    source = RasterSource(path)
    raw, valid = source.read(source.window())
    data = predictor.normalization_for(source.dtype).apply(raw, valid)
    with torch.inference_mode():
        return predictor.model()(torch.from_numpy(np.ascontiguousarray(data))[None])[0].numpy()


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "scene.tif", smooth_scene(3, 300, 500, seed=3, dtype=np.uint16))


@pytest.mark.parametrize("spec", ["model_factories:pointwise", "model_factories:small_conv"])
@pytest.mark.parametrize("blend", ["hann", "center"])
def test_two_chunkings_are_bit_identical(scene: Path, tmp_path: Path, spec: str, blend: str) -> None:
    a = map_raster(scene, spec, tmp_path / "a.zarr", chunk=96, blend=blend, progress=False)
    b = map_raster(scene, spec, tmp_path / "b.zarr", chunk=(144, 240), blend=blend, progress=False)
    assert a.prediction.encoding["chunks"] != b.prediction.encoding["chunks"]
    va, vb = _values(a), _values(b)
    assert va.shape == (2, 300, 500)
    assert np.isfinite(va).all()
    assert np.array_equal(va, vb)


def test_equals_whole_raster_pass_for_pointwise_model(scene: Path, tmp_path: Path) -> None:
    ds = map_raster(scene, "model_factories:pointwise", tmp_path / "o.zarr", chunk=96, progress=False)
    whole = _whole_pass("model_factories:pointwise", scene)
    np.testing.assert_allclose(_values(ds), whole, rtol=1e-5, atol=1e-6)


def test_small_conv_matches_whole_pass_away_from_patch_borders(scene: Path, tmp_path: Path) -> None:
    """With centre-crop stitching, every pixel comes from a patch interior where zero padding is out of reach."""
    ds = map_raster(scene, "model_factories:small_conv", tmp_path / "o.zarr", blend="center", progress=False)
    whole = _whole_pass("model_factories:small_conv", scene)
    # The raster's own 2-pixel border differs: whole pass zero-pads, tiles reflect.
    np.testing.assert_allclose(_values(ds)[:, 2:-2, 2:-2], whole[:, 2:-2, 2:-2], rtol=1e-4, atol=1e-4)


def test_constant_input_gives_constant_output(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "flat.tif", np.full((3, 200, 260), 1234, dtype=np.uint16))
    ds = map_raster(path, "model_factories:pointwise", tmp_path / "o.zarr", chunk=48, progress=False)
    values = _values(ds)
    for band in values:
        assert np.ptp(band) <= 1e-6 * max(1.0, float(np.abs(band).max()))


def test_smooth_input_gives_smooth_output_across_chunk_borders(scene: Path, tmp_path: Path) -> None:
    ds = map_raster(scene, "model_factories:small_conv", tmp_path / "o.zarr", chunk=96, progress=False)
    values = _values(ds)[0]
    dx = np.abs(np.diff(values, axis=1))
    dy = np.abs(np.diff(values, axis=0))
    border_cols = [c - 1 for c in range(96, 500, 96)]
    border_rows = [r - 1 for r in range(96, 300, 96)]
    interior_cols = [c for c in range(dx.shape[1]) if c not in border_cols]
    interior_rows = [r for r in range(dy.shape[0]) if r not in border_rows]
    assert dx[:, border_cols].max() <= 1.5 * dx[:, interior_cols].max()
    assert dy[border_rows].max() <= 1.5 * dy[interior_rows].max()


def test_nodata_becomes_nan_and_all_nodata_chunks_skip_the_model(tmp_path: Path, monkeypatch) -> None:
    data = smooth_scene(3, 300, 500, seed=5, dtype=np.uint8)
    data[:, :150, :200] = 0  # covers the whole chunk (0, 0) of 96 x 96 and more
    data[:, 200:203, 300:340] = 0
    path = write_raster(tmp_path / "nd.tif", data, nodata=0)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("GEODINO_TEST_LOG", str(log))
    ds = map_raster(
        path, "model_factories:slow_pointwise", tmp_path / "o.zarr", chunk=96, batch_size=64, progress=False
    )
    values = _values(ds)
    invalid = (data == 0).any(axis=0)
    assert np.isnan(values[:, invalid]).all()
    assert np.isfinite(values[:, ~invalid]).all()
    # The model saw each grid patch holding a valid pixel exactly once (border patches are shared between
    # chunks), and no other: chunk (0, 0), whose patches are all nodata, never ran it.
    source = RasterSource(path)
    tasks = plan_chunks(PatchGrid(300, 500, 64, 48), 96)
    origins = {(r, c) for t in tasks for r, c in zip(t.patch_rows, t.patch_cols, strict=True)}
    with_data = [o for o in origins if source.read(Window(o[0], o[1], 64, 64))[1].any()]
    seen = sum(int(line.split()[2]) for line in log.read_text().splitlines())
    assert seen == len(with_data) < len(origins)
    assert np.asarray(zarr.open_array(str(tmp_path / "o.zarr"), path="chunk_done")[...]).all()
    # Every chunk is on disk, the all-nodata one too: writes skip zarr's whole-chunk comparison with the fill value.
    stored = zarr.open_array(str(tmp_path / "o.zarr"), path="prediction")
    assert stored.nchunks_initialized == stored.nchunks == 4 * 6


def test_classification_outputs(scene: Path, tmp_path: Path) -> None:
    data = smooth_scene(3, 300, 500, seed=3, dtype=np.uint16)
    data[:, 10:20, 10:30] = 0
    path = write_raster(tmp_path / "c.tif", data, nodata=0)
    ds = map_raster(path, "model_factories:classifier", tmp_path / "o.zarr", chunk=96, progress=False)
    probs, classes = _values(ds, "probabilities"), _values(ds, "classes")
    assert classes.dtype == np.uint8
    assert ds.classes.attrs["class_names"] == ["water", "forest", "field", "urban"]
    valid = ~np.isnan(probs).any(axis=0)
    np.testing.assert_allclose(probs[:, valid].sum(axis=0), 1.0, atol=1e-5)
    assert np.array_equal(classes[valid], probs[:, valid].argmax(axis=0))
    assert (classes[~valid] == 255).all() and (~valid).sum() == 10 * 20
    assert len(np.unique(classes[valid])) > 1


def test_raster_smaller_than_one_patch(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "tiny.tif", smooth_scene(3, 37, 51, seed=1, dtype=np.uint8))
    ds = map_raster(path, "model_factories:pointwise", tmp_path / "o.zarr", progress=False)
    assert ds.prediction.shape == (2, 37, 51)
    np.testing.assert_allclose(_values(ds), _whole_pass("model_factories:pointwise", path), rtol=1e-5, atol=1e-6)


def test_output_stride_model_chunkings_identical(scene: Path, tmp_path: Path) -> None:
    a = map_raster(scene, "model_factories:coarse", tmp_path / "a.zarr", chunk=12, progress=False)
    b = map_raster(scene, "model_factories:coarse", tmp_path / "b.zarr", chunk=36, progress=False)
    assert a.embedding.shape == (5, 75, 125)
    assert np.array_equal(_values(a, "embedding"), _values(b, "embedding"))
    assert np.isfinite(_values(a, "embedding")).all()


def test_float16_storage(scene: Path, tmp_path: Path) -> None:
    a = map_raster(scene, "model_factories:pointwise", tmp_path / "a.zarr", progress=False)
    h = map_raster(scene, "model_factories:pointwise", tmp_path / "h.zarr", storage_dtype="float16", progress=False)
    assert h.prediction.dtype == np.float16
    assert np.array_equal(_values(h), _values(a).astype(np.float16))


def test_in_memory_module_and_batch_size_do_not_change_results(scene: Path, tmp_path: Path) -> None:
    a = map_raster(scene, "model_factories:pointwise", tmp_path / "a.zarr", batch_size=8, progress=False)
    b = map_raster(scene, mf.pointwise(), tmp_path / "b.zarr", batch_size=8, scheduler="sync", progress=False)
    assert np.array_equal(_values(a), _values(b))


@pytest.mark.slow
def test_odd_size_2049_x_3071(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "odd.tif", smooth_scene(3, 2049, 3071, seed=9, dtype=np.uint8), blocksize=512)
    spec = "model_factories:pointwise"
    a = map_raster(path, spec, tmp_path / "a.zarr", tile=128, overlap=32, chunk=960, progress=False)
    b = map_raster(path, spec, tmp_path / "b.zarr", tile=128, overlap=32, chunk=(672, 1248), progress=False)
    va = _values(a)
    assert va.shape == (2, 2049, 3071)
    assert np.array_equal(va, _values(b))
    whole = _whole_pass(spec, path)
    np.testing.assert_allclose(va, whole, rtol=1e-5, atol=1e-6)
    # Last row and column come out right too.
    np.testing.assert_allclose(va[:, -1], whole[:, -1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(va[:, :, -1], whole[:, :, -1], rtol=1e-5, atol=1e-6)


def test_progress_bar_and_predictor_batch_size_kept(scene: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    # The bar shows for runs longer than half a second; full batches mean few forward passes (2 here): slow them.
    monkeypatch.setenv("GEODINO_TEST_SLEEP", "0.4")
    predictor = build_predictor("model_factories:slow_pointwise", batch_size=64)
    ds = map_raster(scene, predictor, tmp_path / "o.zarr", chunk=96)
    assert "100% Completed" in capsys.readouterr().out
    assert ds.prediction.shape == (2, 300, 500)
    assert build_predictor(predictor).batch_size == 64
