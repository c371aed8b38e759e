"""Pure planning of a raster's patch grid and output chunks (no I/O).

The patch grid is **global**: anchored at input pixel (0, 0), with origins ``0, S, 2S, ...`` on both axes. An output
chunk owns a core window of output pixels; its task lists every patch of the global grid that touches the core,
in row-major order. A pixel's prediction therefore comes from the same patches, blended in the same order, however
the raster is cut into chunks.

Two pixel spaces appear here: *input* pixels (the raster's) and *output* pixels (the prediction's), with
``factor`` input pixels per output pixel along each axis (1 for dense heads, 16 for ViT/16 patch embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geodino.raster.windows import Window

__all__ = [
    "ChunkTask",
    "PatchGrid",
    "chunk_grid_shape",
    "default_margin",
    "extract_patches",
    "plan_chunks",
]


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class PatchGrid:
    """Global patch grid anchored at input pixel (0, 0), independent of chunking.

    Attributes:
        height: Raster rows, in input pixels.
        width: Raster columns, in input pixels.
        patch: Model tile size P, in input pixels.
        stride: Step S between tiles (<= patch), in input pixels.
        factor: Input pixels per output pixel (1 for dense predictions, 16 for ViT/16 patch embeddings);
            ``patch`` and ``stride`` must be multiples of it.
    """

    height: int
    width: int
    patch: int
    stride: int
    factor: int = 1

    def __post_init__(self) -> None:
        for name in ("height", "width", "patch", "stride", "factor"):
            object.__setattr__(self, name, _positive_int(name, getattr(self, name)))
        if self.stride > self.patch:
            raise ValueError(f"stride ({self.stride}) must be <= patch ({self.patch}); gaps would stay unpredicted")
        if self.patch % self.factor or self.stride % self.factor:
            raise ValueError(
                f"patch ({self.patch}) and stride ({self.stride}) must be multiples of factor ({self.factor})"
            )

    @property
    def out_height(self) -> int:
        """Output rows: ``ceil(height / factor)``."""
        return -(-self.height // self.factor)

    @property
    def out_width(self) -> int:
        """Output columns: ``ceil(width / factor)``."""
        return -(-self.width // self.factor)

    @property
    def out_patch(self) -> int:
        """Patch size in output pixels."""
        return self.patch // self.factor

    @property
    def out_stride(self) -> int:
        """Stride in output pixels."""
        return self.stride // self.factor

    @property
    def margin(self) -> int:
        """Input pixels a chunk reads beyond its core on each side at most (``patch - stride``)."""
        return default_margin(self.patch, self.stride)

    def _origins(self, size: int) -> np.ndarray:
        # Origins 0, S, 2S, ... up to the first one whose patch reaches pixel size - 1: n = 1 + ceil((size-P)/S).
        count = 1 + max(0, -(-(size - self.patch) // self.stride))
        return np.arange(count, dtype=np.int64) * self.stride

    def row_origins(self) -> np.ndarray:
        """(Ny,) input-pixel row origins of the patches; at least one even if the raster is smaller than a patch."""
        return self._origins(self.height)

    def col_origins(self) -> np.ndarray:
        """(Nx,) input-pixel column origins of the patches."""
        return self._origins(self.width)

    @property
    def num_patches(self) -> int:
        """Patches in the whole grid."""
        return len(self.row_origins()) * len(self.col_origins())


@dataclass(frozen=True)
class ChunkTask:
    """One output chunk: the output pixels it owns, what to read, and which patches to run.

    Attributes:
        iy: Chunk row index in the output chunk grid.
        ix: Chunk column index.
        core: OUTPUT-pixel window this chunk owns (clipped to the output raster).
        read: INPUT-pixel window to read: the union of all patches touching the core (may extend past the
            raster's last row/column; readers pad it).
        patch_rows: (K,) global input-pixel row origin of every patch touching the core, row-major order.
        patch_cols: (K,) global input-pixel column origins, same order.
    """

    iy: int
    ix: int
    core: Window
    read: Window
    patch_rows: np.ndarray = field(repr=False)
    patch_cols: np.ndarray = field(repr=False)

    @property
    def num_patches(self) -> int:
        """K, the number of patches of this chunk."""
        return len(self.patch_rows)

    def local_origins(self) -> tuple[np.ndarray, np.ndarray]:
        """(K,), (K,) patch origins relative to the ``read`` window (indices into the array read)."""
        return self.patch_rows - self.read.row, self.patch_cols - self.read.col

    def output_origins(self, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """(K,), (K,) global OUTPUT-pixel patch origins (what :func:`blend_patches` takes)."""
        return self.patch_rows // factor, self.patch_cols // factor


def default_margin(patch: int, stride: int) -> int:
    """Input pixels of context a chunk needs beyond its core on each side at most: ``patch - stride``."""
    if stride > patch:
        raise ValueError(f"stride ({stride}) must be <= patch ({patch})")
    return patch - stride


def _chunk_shape(grid: PatchGrid, chunk: int | tuple[int, int]) -> tuple[int, int]:
    ch, cw = (chunk, chunk) if isinstance(chunk, int | np.integer) else tuple(chunk)
    ch, cw = _positive_int("chunk height", ch), _positive_int("chunk width", cw)
    step = grid.out_stride
    if ch % step or cw % step:
        raise ValueError(
            f"chunk ({ch}, {cw}) output pixels must be a multiple of stride // factor "
            f"({grid.stride} // {grid.factor} = {step})"
        )
    return ch, cw


def chunk_grid_shape(grid: PatchGrid, chunk: int | tuple[int, int]) -> tuple[int, int]:
    """Number of output chunks along (rows, columns) for chunks of ``chunk`` output pixels."""
    ch, cw = _chunk_shape(grid, chunk)
    return -(-grid.out_height // ch), -(-grid.out_width // cw)


def _touching(origins_out: np.ndarray, patch_out: int, start: int, stop: int) -> np.ndarray:
    # A patch covering output pixels [o, o + p) touches [start, stop) when o < stop and o + p > start.
    return origins_out[(origins_out < stop) & (origins_out + patch_out > start)]


def plan_chunks(grid: PatchGrid, chunk: int | tuple[int, int]) -> list[ChunkTask]:
    """Cut the output raster into chunks and list, for each, the global patches touching it.

    Args:
        grid: The global patch grid.
        chunk: Chunk size in OUTPUT pixels (int, or ``(rows, cols)``); a multiple of ``stride // factor``.

    Returns:
        Tasks in row-major chunk order. Every output pixel belongs to exactly one task's core.

    Raises:
        ValueError: If the chunk size is not a positive multiple of ``stride // factor``.
    """
    ch, cw = _chunk_shape(grid, chunk)
    ny, nx = chunk_grid_shape(grid, (ch, cw))
    f, p = grid.factor, grid.out_patch
    row_orig, col_orig = grid.row_origins(), grid.col_origins()
    rows_out, cols_out = row_orig // f, col_orig // f
    col_sets = []
    for ix in range(nx):
        c0 = ix * cw
        col_sets.append(_touching(cols_out, p, c0, min(c0 + cw, grid.out_width)) * f)
    tasks: list[ChunkTask] = []
    for iy in range(ny):
        r0 = iy * ch
        r1 = min(r0 + ch, grid.out_height)
        rows = _touching(rows_out, p, r0, r1) * f
        for ix in range(nx):
            c0 = ix * cw
            c1 = min(c0 + cw, grid.out_width)
            cols = col_sets[ix]
            read = Window(
                int(rows[0]), int(cols[0]), int(rows[-1] + grid.patch - rows[0]), int(cols[-1] + grid.patch - cols[0])
            )
            tasks.append(
                ChunkTask(
                    iy=iy,
                    ix=ix,
                    core=Window(r0, c0, r1 - r0, c1 - c0),
                    read=read,
                    patch_rows=np.repeat(rows, len(cols)),
                    patch_cols=np.tile(cols, len(rows)),
                )
            )
    return tasks


def extract_patches(array: np.ndarray, task: ChunkTask, patch: int) -> np.ndarray:
    """Cut a task's patches out of the array read for it.

    Args:
        array: (..., h, w) array covering ``task.read`` (e.g. (C, h, w) data or (h, w) validity).
        task: The chunk task.
        patch: Patch size P in input pixels.

    Returns:
        (K, ..., P, P) copy, patches in the task's order.
    """
    if array.shape[-2:] != task.read.shape:
        raise ValueError(f"array of shape {array.shape} does not cover the read window {task.read}")
    lr, lc = task.local_origins()
    out = np.empty((task.num_patches, *array.shape[:-2], patch, patch), dtype=array.dtype)
    for k, (r, c) in enumerate(zip(lr.tolist(), lc.tolist(), strict=True)):
        out[k] = array[..., r : r + patch, c : c + patch]
    return out
