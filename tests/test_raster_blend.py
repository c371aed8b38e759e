"""Pure tests of blending: chunking-independent stitching, seams, nodata."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from rasters import smooth_scene, write_raster

from geodino.raster.blend import (
    accumulate_patch,
    argmax_channels,
    blend_patches,
    finalize,
    valid_to_output,
    window_weights,
)
from geodino.raster.normalize import Normalization, default_scale
from geodino.raster.plan import PatchGrid, extract_patches, plan_chunks
from geodino.raster.source import RasterSource, reflect_indices
from geodino.raster.windows import Window

Model = Callable[[np.ndarray], np.ndarray]  # (K, C, P, P) -> (K, C', P/f, P/f)


def _read_array(image: np.ndarray, valid: np.ndarray, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Reflect-padded window of an in-memory (C, H, W) image, as RasterSource.read does for files."""
    rows = reflect_indices(np.arange(window.row, window.bottom), image.shape[1])
    cols = reflect_indices(np.arange(window.col, window.right), image.shape[2])
    index = np.ix_(rows, cols)
    return image[(slice(None), *index)], valid[index]


def _map(image: np.ndarray, valid: np.ndarray, grid: PatchGrid, chunk, model: Model, kind: str) -> np.ndarray:
    """The whole tiling pipeline on arrays: plan, read core + margin, patches, model, blend, crop to core."""
    out: np.ndarray | None = None
    weights = window_weights(grid.out_patch, kind, grid.out_stride)  # type: ignore[arg-type]
    for task in plan_chunks(grid, chunk):
        data, ok = _read_array(image, valid, task.read)
        preds = model(extract_patches(data, task, grid.patch))
        pvalid = valid_to_output(extract_patches(ok, task, grid.patch), grid.factor)
        rows, cols = task.output_origins(grid.factor)
        acc, wsum = blend_patches(preds, rows, cols, task.core, weights, pvalid)
        if out is None:
            out = np.full((preds.shape[1], grid.out_height, grid.out_width), -1.0, dtype=np.float32)
        out[(slice(None), *task.core.slices())] = finalize(acc, wsum)
    assert out is not None
    return out


def _pointwise(x: np.ndarray) -> np.ndarray:
    return (np.tanh(x * 0.01) * 3.0 + x[:, :1] * 0.5).astype(np.float32)


def _patch_dependent(x: np.ndarray) -> np.ndarray:
    # Depends on the whole patch (its mean): only a global patch grid makes this chunking-independent.
    return (x + x.mean(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


def _pool16(x: np.ndarray) -> np.ndarray:
    k, c, p, _ = x.shape
    return x.reshape(k, c, p // 16, 16, p // 16, 16).mean(axis=(3, 5)).astype(np.float32)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    return smooth_scene(3, 301, 437, seed=3, dtype=np.float32) * 255


@pytest.mark.parametrize("kind", ["hann", "center", "uniform"])
@pytest.mark.parametrize("model", [_pointwise, _patch_dependent])
def test_chunkings_bit_identical(scene: np.ndarray, kind: str, model: Model) -> None:
    valid = np.ones(scene.shape[1:], dtype=bool)
    grid = PatchGrid(*scene.shape[1:], patch=64, stride=32)
    whole = _map(scene, valid, grid, 4096 // 32 * 32, model, kind)
    a = _map(scene, valid, grid, 96, model, kind)
    b = _map(scene, valid, grid, (64, 160), model, kind)
    assert np.array_equal(whole, a) and np.array_equal(whole, b)
    assert np.isfinite(whole).all()
    if model is _pointwise:
        # Every patch predicts the same value for a pixel, so blending returns that value.
        np.testing.assert_allclose(whole, _pointwise(scene[None])[0], rtol=1e-5, atol=1e-5)


def test_factor16_embeddings_bit_identical(scene: np.ndarray) -> None:
    valid = np.ones(scene.shape[1:], dtype=bool)
    grid = PatchGrid(*scene.shape[1:], patch=64, stride=32, factor=16)
    whole = _map(scene, valid, grid, 64, _pool16, "hann")
    chunked = _map(scene, valid, grid, 4, _pool16, "hann")
    assert whole.shape == (3, 19, 28)
    assert np.array_equal(whole, chunked)
    # Interior cells equal the mean of their 16 x 16 block (the last row/column are reflect-padded blocks).
    expected = scene[:, :288, :432].reshape(3, 18, 16, 27, 16).mean(axis=(2, 4))
    np.testing.assert_allclose(whole[:, :18, :27], expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["hann", "center"])
def test_constant_input_gives_constant_output(kind: str) -> None:
    image = np.full((2, 250, 333), 7.25, dtype=np.float32)
    valid = np.ones(image.shape[1:], dtype=bool)
    grid = PatchGrid(250, 333, patch=48, stride=16)
    out = _map(image, valid, grid, 64, lambda x: x.copy(), kind)
    np.testing.assert_allclose(out, 7.25, rtol=1e-6)
    # No seam: neighbouring pixels across chunk borders differ by rounding only.
    assert np.abs(np.diff(out, axis=1)).max() < 1e-5 and np.abs(np.diff(out, axis=2)).max() < 1e-5


def test_nodata_becomes_nan(scene: np.ndarray) -> None:
    valid = np.ones(scene.shape[1:], dtype=bool)
    valid[100:180, 50:300] = False
    image = scene.copy()
    image[:, ~valid] = np.nan  # a model must never see these; blending must ignore them anyway
    grid = PatchGrid(*scene.shape[1:], patch=64, stride=32)
    out = _map(image, valid, grid, 96, lambda x: np.nan_to_num(x) * 2, "hann")
    assert np.isnan(out[:, ~valid]).all()
    assert np.isfinite(out[:, valid]).all()
    np.testing.assert_allclose(out[:, valid], scene[:, valid] * 2, rtol=1e-5)
    assert np.array_equal(
        out, _map(image, valid, grid, (32, 224), lambda x: np.nan_to_num(x) * 2, "hann"), equal_nan=True
    )


def test_all_nodata_chunk_is_all_nan(scene: np.ndarray) -> None:
    valid = np.ones(scene.shape[1:], dtype=bool)
    valid[:, :200] = False  # the left chunks see no valid pixel at all
    grid = PatchGrid(*scene.shape[1:], patch=64, stride=32)
    tasks = plan_chunks(grid, 96)
    out = _map(scene, valid, grid, 96, lambda x: x.copy(), "center")
    first = tasks[0].core
    assert first.right <= 200
    assert np.isnan(out[(slice(None), *first.slices())]).all()
    assert np.isfinite(out[:, :, 200:]).all()


def test_blend_hand_computed() -> None:
    # Two 2x2 uniform-weight patches overlapping on one column: overlap is the mean of the two predictions.
    preds = np.stack([np.full((1, 2, 2), 1.0), np.full((1, 2, 2), 3.0)]).astype(np.float32)
    weights = window_weights(2, "uniform")
    acc, wsum = blend_patches(preds, np.array([0, 0]), np.array([0, 1]), Window(0, 0, 2, 3), weights)
    assert wsum.tolist() == [[1, 2, 1], [1, 2, 1]]
    assert finalize(acc, wsum)[0].tolist() == [[1, 2, 3], [1, 2, 3]]
    # Canvas offset and partial overlap: only the part of the patch inside the canvas is added.
    acc, wsum = blend_patches(preds[:1], np.array([5]), np.array([7]), Window(6, 6, 3, 3), weights)
    assert wsum.tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 0]]
    out = finalize(acc, wsum)
    assert out[0, 0, 1] == 1 and np.isnan(out[0, 1:]).all()
    with pytest.raises(ValueError, match="weights"):
        blend_patches(preds, np.array([0, 0]), np.array([0, 1]), Window(0, 0, 2, 3), window_weights(3))


def test_invalid_pixels_get_zero_weight() -> None:
    preds = np.stack([np.full((1, 2, 2), 1.0), np.full((1, 2, 2), np.nan)]).astype(np.float32)
    valid = np.ones((2, 2, 2), dtype=bool)
    valid[1] = False
    acc, wsum = blend_patches(preds, np.array([0, 0]), np.array([0, 0]), Window(0, 0, 2, 2), window_weights(2), valid)
    assert np.array_equal(finalize(acc, wsum), np.ones((1, 2, 2), dtype=np.float32))


def test_patch_by_patch_accumulation_equals_batch_blend() -> None:
    rng = np.random.default_rng(3)
    preds = rng.normal(size=(5, 3, 8, 8)).astype(np.float32)
    rows, cols = np.array([0, 0, 4, 4, 9]), np.array([0, 5, 0, 5, 9])
    valid = rng.random((5, 8, 8)) > 0.2
    canvas, weights = Window(2, 3, 10, 9), window_weights(8, "hann")
    acc, wsum = blend_patches(preds, rows, cols, canvas, weights, valid)
    acc2 = np.zeros_like(acc)
    wsum2 = np.zeros_like(wsum)
    for k in range(5):
        accumulate_patch(acc2, wsum2, preds[k], int(rows[k]), int(cols[k]), canvas, weights, valid[k])
    assert np.array_equal(acc, acc2) and np.array_equal(wsum, wsum2)
    # finalize in place gives the same bytes and writes into the sums
    expected = finalize(acc, wsum)
    assert np.array_equal(finalize(acc2, wsum2, in_place=True), expected, equal_nan=True)
    assert np.array_equal(acc2, expected, equal_nan=True)


def test_argmax_channels_matches_numpy_with_ties() -> None:
    rng = np.random.default_rng(4)
    values = rng.integers(0, 4, size=(6, 40, 50)).astype(np.float32)  # many ties: the first maximum must win
    assert np.array_equal(argmax_channels(values), np.argmax(values, axis=0).astype(np.uint8))
    one = rng.random((1, 3, 3)).astype(np.float32)
    assert argmax_channels(one).tolist() == [[0] * 3] * 3
    with pytest.raises(ValueError, match="1 to 256"):
        argmax_channels(np.zeros((257, 2, 2), np.float32))


@pytest.mark.parametrize("kind", ["hann", "center", "uniform"])
def test_window_weights_shape_and_positivity(kind: str) -> None:
    w = window_weights(14, kind, 7)  # type: ignore[arg-type]
    assert w.shape == (14, 14) and w.dtype == np.float32
    assert (w > 0).all()
    np.testing.assert_allclose(w, np.outer(w[:, 7], w[7, :]) / w[7, 7], rtol=1e-5)  # separable
    np.testing.assert_allclose(w, w.T)


def test_window_weights_values() -> None:
    hann = window_weights(8, "hann")
    assert hann.max() <= 1 and hann[0, 0] < 1e-2 and hann[3, 3] > 0.9
    center = window_weights(8, "center", 4)
    assert (center[2:6, 2:6] == 1).all() and center[0, 0] < 1e-9 and center[1, 4] < 1e-5
    # Central squares of patches every `stride` tile the plane exactly once.
    line = np.zeros(64)
    for o in range(0, 56, 4):
        line[o : o + 8] += (center[4] >= 1).astype(float)
    assert (line[6:54] == 1).all()
    with pytest.raises(ValueError, match="stride"):
        window_weights(8, "center")
    with pytest.raises(ValueError, match="unknown"):
        window_weights(8, "triangle")  # type: ignore[arg-type]


def test_valid_to_output_any_rule() -> None:
    valid = np.zeros((5, 7), dtype=bool)
    valid[0, 0] = True  # one valid input pixel makes its 2x2 block valid
    valid[4, 6] = True  # the partial last block counts too
    out = valid_to_output(valid, 2)
    assert out.shape == (3, 4)
    assert out.tolist() == [[True, False, False, False], [False, False, False, False], [False, False, False, True]]
    stacked = valid_to_output(np.stack([valid, ~valid]), 2)
    assert stacked.shape == (2, 3, 4) and stacked[1, :2].all()
    assert not stacked[1, 2, 3]  # its only real pixel is invalid; the padding outside the raster never counts
    assert np.array_equal(valid_to_output(valid, 1), valid)


def test_normalization() -> None:
    data = np.array([[[0, 255], [51, -3.4e38]], [[5, 10], [20, np.nan]]], dtype=np.float32)
    valid = np.array([[True, True], [True, False]])
    valid &= ~np.isnan(data).any(axis=0)
    norm = Normalization(scale=1 / 255, mean=(0.5, 0.0), std=(0.5, 2.0))
    out = norm.apply(data, valid)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 0], (51 / 255 - 0.5) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(out[1, 0, 0], 5 / 255 / 2.0, rtol=1e-6)
    assert out[:, 1, 1].tolist() == [0.0, 0.0]
    assert np.isfinite(out).all()
    raw = data.copy()
    in_place = norm.apply(raw, valid, in_place=True)
    assert in_place is raw and np.array_equal(in_place, out)  # same float32 bytes, no new buffer
    with pytest.raises(ValueError, match="C = 2 bands"):
        norm.apply(data[:1], valid)
    with pytest.raises(ValueError, match="> 0"):
        Normalization(1.0, (0.0,), (0.0,))
    assert default_scale(np.uint8) == 1 / 255 and default_scale("uint16") == 1e-4 and default_scale(np.float32) == 1.0


@pytest.mark.slow
def test_odd_size_raster_from_file_two_chunkings(tmp_path: Path) -> None:
    """2049 x 3071 GeoTIFF through RasterSource: chunkings agree bit for bit; last row and column are right."""
    scene = smooth_scene(1, 2049, 3071, seed=9, dtype=np.uint8)
    grid = PatchGrid(2049, 3071, patch=224, stride=112)
    weights = window_weights(grid.out_patch, "hann")
    outs = []
    with RasterSource(write_raster(tmp_path / "odd.tif", scene, nodata=0)) as src:
        for chunk in (448, (1120, 2240)):
            out = np.full((1, 2049, 3071), -1.0, dtype=np.float32)
            for task in plan_chunks(grid, chunk):
                data, ok = src.read(task.read)
                preds = _pointwise(extract_patches(data, task, grid.patch))
                acc, wsum = blend_patches(
                    preds, task.patch_rows, task.patch_cols, task.core, weights, extract_patches(ok, task, grid.patch)
                )
                out[(slice(None), *task.core.slices())] = finalize(acc, wsum)
            outs.append(out)
    assert np.array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], _pointwise(scene[None].astype(np.float32))[0], rtol=1e-5, atol=1e-5)
    assert np.isfinite(outs[0][:, -1, :]).all() and np.isfinite(outs[0][:, :, -1]).all()
