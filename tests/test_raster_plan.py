"""Pure tests of windows, the global patch grid and the chunk plan."""

from __future__ import annotations

import numpy as np
import pytest

from geodino.raster.plan import (
    PatchGrid,
    chunk_grid_shape,
    default_margin,
    extract_patches,
    plan_chunks,
)
from geodino.raster.windows import Window

# (height, width, patch, stride, factor, chunk in output pixels)
CASES = [
    (2049, 3071, 224, 112, 1, 448),
    (100, 101, 224, 112, 1, 112),  # raster smaller than one patch
    (896, 672, 224, 224, 1, 224),  # exact multiples, no overlap
    (896, 672, 224, 112, 1, (336, 560)),  # exact multiples, rectangular chunks
    (300, 500, 64, 48, 1, 96),
    (2049, 3071, 224, 112, 16, 21),  # ViT/16 embeddings: 14 x 14 tokens per patch
    (100, 101, 224, 112, 16, 7),
    (1000, 777, 32, 16, 16, 3),
]


def _brute_touching(grid: PatchGrid, core: Window) -> list[tuple[int, int]]:
    p = grid.out_patch
    return [
        (int(r), int(c))
        for r in grid.row_origins()
        for c in grid.col_origins()
        if Window(int(r) // grid.factor, int(c) // grid.factor, p, p).intersection(core) is not None
    ]


def test_window_arithmetic() -> None:
    a = Window(-5, 10, 20, 30)
    assert (a.bottom, a.right, a.shape) == (15, 40, (20, 30))
    assert a.intersection(Window(0, 0, 100, 100)) == Window(0, 10, 15, 30)
    assert a.intersection(Window(15, 0, 5, 5)) is None
    assert a.clip(10, 12) == Window(0, 10, 10, 2)
    assert Window(2, 3, 4, 5).slices_in(Window(0, 0, 10, 10)) == (slice(2, 6), slice(3, 8))
    assert Window(-2, -3, 4, 5).slices_in(Window(-4, -4, 10, 10)) == (slice(2, 6), slice(1, 6))
    with pytest.raises(ValueError, match="does not lie inside"):
        Window(0, 0, 11, 1).slices_in(Window(0, 0, 10, 10))
    assert a.union(Window(30, 0, 1, 1)) == Window(-5, 0, 36, 40)
    assert Window(np.int64(3), 4, 5, 6) == Window(3, 4, 5, 6)
    rio = Window(1, 2, 3, 4).to_rasterio()
    assert (rio.row_off, rio.col_off, rio.height, rio.width) == (1, 2, 3, 4)
    with pytest.raises(ValueError):
        Window(0, 0, -1, 3)


def test_grid_validation() -> None:
    with pytest.raises(ValueError, match="stride"):
        PatchGrid(100, 100, 64, 96)
    with pytest.raises(ValueError, match="multiples of factor"):
        PatchGrid(100, 100, 224, 100, 16)
    with pytest.raises(ValueError, match="positive"):
        PatchGrid(0, 100, 64, 32)
    grid = PatchGrid(300, 500, 64, 48)
    with pytest.raises(ValueError, match="multiple of stride"):
        plan_chunks(grid, 100)
    assert default_margin(224, 112) == 112 == PatchGrid(10, 10, 224, 112).margin


@pytest.mark.parametrize(
    ("size", "patch", "stride", "expected"),
    [
        (100, 224, 112, [0]),
        (224, 224, 112, [0]),
        (225, 224, 112, [0, 112]),
        (448, 224, 224, [0, 224]),
        (449, 224, 224, [0, 224, 448]),
    ],
)
def test_origins_hand_computed(size: int, patch: int, stride: int, expected: list[int]) -> None:
    grid = PatchGrid(size, size, patch, stride)
    assert grid.row_origins().tolist() == expected
    assert grid.col_origins().tolist() == expected


@pytest.mark.parametrize(("height", "width", "patch", "stride", "factor", "chunk"), CASES)
def test_grid_covers_raster(height: int, width: int, patch: int, stride: int, factor: int, chunk) -> None:
    grid = PatchGrid(height, width, patch, stride, factor)
    rows, cols = grid.row_origins(), grid.col_origins()
    assert rows[0] == 0 and cols[0] == 0
    assert np.all(np.diff(rows) == stride) and np.all(np.diff(cols) == stride)
    # The last patch reaches the last pixel; the one before it does not (no useless extra patch).
    assert rows[-1] + patch >= height and (len(rows) == 1 or rows[-2] + patch < height)
    assert cols[-1] + patch >= width and (len(cols) == 1 or cols[-2] + patch < width)
    cover = np.zeros((grid.out_height, grid.out_width), dtype=np.int32)
    p = grid.out_patch
    for r in rows // factor:
        for c in cols // factor:
            cover[r : r + p, c : c + p] += 1
    assert cover.min() >= 1
    assert grid.out_height == -(-height // factor) and grid.out_width == -(-width // factor)


@pytest.mark.parametrize(("height", "width", "patch", "stride", "factor", "chunk"), CASES)
def test_cores_partition_output(height: int, width: int, patch: int, stride: int, factor: int, chunk) -> None:
    grid = PatchGrid(height, width, patch, stride, factor)
    tasks = plan_chunks(grid, chunk)
    ny, nx = chunk_grid_shape(grid, chunk)
    assert len(tasks) == ny * nx
    assert [(t.iy, t.ix) for t in tasks] == [(iy, ix) for iy in range(ny) for ix in range(nx)]
    owner = np.zeros((grid.out_height, grid.out_width), dtype=np.int32)
    for task in tasks:
        assert task.core.clip(grid.out_height, grid.out_width) == task.core
        owner[task.core.slices()] += 1
    assert np.all(owner == 1)


@pytest.mark.parametrize(("height", "width", "patch", "stride", "factor", "chunk"), CASES)
def test_task_patches_are_exactly_those_touching_core(
    height: int, width: int, patch: int, stride: int, factor: int, chunk
) -> None:
    grid = PatchGrid(height, width, patch, stride, factor)
    tasks = plan_chunks(grid, chunk)
    for task in tasks[:: max(1, len(tasks) // 7)]:  # a spread of tasks, corners included
        listed = list(zip(task.patch_rows.tolist(), task.patch_cols.tolist(), strict=True))
        assert listed == _brute_touching(grid, task.core)  # same set, global row-major order
        union = Window(listed[0][0], listed[0][1], patch, patch)
        for r, c in listed:
            union = union.union(Window(r, c, patch, patch))
        assert task.read == union
        # The read window holds the core's input pixels plus context.
        core_in = Window(
            task.core.row * factor, task.core.col * factor, task.core.height * factor, task.core.width * factor
        ).clip(height, width)
        assert task.read.contains(core_in)
        lr, lc = task.local_origins()
        assert lr.min() == 0 and lc.min() == 0


def test_global_patch_set_independent_of_chunking() -> None:
    grid = PatchGrid(2049, 3071, 224, 112)
    full = {(int(r), int(c)) for r in grid.row_origins() for c in grid.col_origins()}
    per_chunking = []
    for chunk in (112, 448, (224, 1120), 4032):
        seen = set()
        for task in plan_chunks(grid, chunk):
            seen |= set(zip(task.patch_rows.tolist(), task.patch_cols.tolist(), strict=True))
        per_chunking.append(seen)
    assert all(s == full for s in per_chunking)
    assert len(full) == grid.num_patches


def test_single_chunk_for_large_chunk() -> None:
    grid = PatchGrid(100, 101, 224, 112)
    (task,) = plan_chunks(grid, 1120)
    assert task.core == Window(0, 0, 100, 101)
    assert task.read == Window(0, 0, 224, 224)  # reaches past the raster: readers pad it
    assert task.num_patches == 1


def test_extract_patches_positions() -> None:
    grid = PatchGrid(300, 500, 64, 48)
    task = plan_chunks(grid, 96)[5]
    data = np.arange(2 * task.read.height * task.read.width, dtype=np.float32).reshape(2, *task.read.shape)
    patches = extract_patches(data, task, 64)
    assert patches.shape == (task.num_patches, 2, 64, 64)
    lr, lc = task.local_origins()
    for k in (0, task.num_patches - 1):
        assert np.array_equal(patches[k], data[:, lr[k] : lr[k] + 64, lc[k] : lc[k] + 64])
    with pytest.raises(ValueError, match="read window"):
        extract_patches(data[:, 1:], task, 64)
