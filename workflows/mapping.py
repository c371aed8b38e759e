"""Map rasters of any size: read -> normalise -> batch patches -> model -> blend -> crop -> write -> mark.

:func:`map_raster` plans a global patch grid over the input (:mod:`geodino.raster.plan`), pre-creates a
georeferenced Zarr store (:mod:`geodino.workflows.sink`) and runs one Dask task per output chunk
(:mod:`geodino.workflows.execution`). A task holds only its chunk: the input window it reads (core plus margin),
one batch of predictions at a time, and two float32 accumulators of the chunk's size. Patches are blended one by
one in the global patch order, so a pixel's value is the same however the raster is chunked.
"""

from __future__ import annotations

import dataclasses
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geodino.errors import IncompleteStoreError, InputError, StoreMismatchError
from geodino.raster.blend import accumulate_patch, argmax_channels, finalize, valid_to_output, window_weights
from geodino.raster.normalize import Normalization
from geodino.raster.plan import ChunkTask, PatchGrid, chunk_grid_shape, plan_chunks
from geodino.raster.source import RasterSource
from geodino.raster.windows import Window
from geodino.workflows import manifest as _manifest
from geodino.workflows.allocator import release_after_chunk, release_after_run, tune_allocator
from geodino.workflows.batching import ChunksAhead, PatchStream, batch_queue, on_cluster_worker
from geodino.workflows.execution import connect, run_tasks
from geodino.workflows.options import MapOptions
from geodino.workflows.predictor import Predictor, bands_by_name, build_predictor, check_bands, from_backbone
from geodino.workflows.shared_patches import SHARED, SharingKey, chunks_of, sharing_key
from geodino.workflows.sink import CLASS_NODATA, DONE_VAR, OutputVar, ZarrSink

#: Default tile for models that do not name one (a ViT/16's 14 x 14 tokens).
DEFAULT_TILE = 224
#: Default chunk side, in input pixels, that chunks aim for.
TARGET_CHUNK_INPUT_PX = 2048
#: Longest a chunk waits for a border-patch group another chunk claimed before predicting it itself (a claimant
#: opened ahead of its task publishes once that task starts, which the local schedulers do in order, soon).
SHARED_WAIT_S = 120.0
#: Upper bound on one chunk's float32 accumulators, in bytes.
MAX_CHUNK_BYTES = 256 * 2**20

_OUTPUTS = {
    "classification": ("probabilities", "classes"),
    "regression": ("prediction",),
    "embedding": ("embedding",),
}


# ----------------------------------------------------------------------------------------------------------------
# Defaults derived from the model.


def default_tile(predictor: Predictor) -> int:
    """The model's own tile, else 224 (rounded up to a multiple of the model's input multiple and factor)."""
    tile = predictor.info.tile or DEFAULT_TILE
    step = math.lcm(predictor.factor, predictor.info.multiple)
    return -(-tile // step) * step


def default_overlap(tile: int, factor: int) -> int:
    """A quarter of the tile, rounded to the nearest multiple of ``factor`` (at least ``factor`` when f < tile)."""
    overlap = round(tile / 4 / factor) * factor
    return min(max(overlap, factor if factor < tile else 0), tile - factor)


def default_chunk(grid: PatchGrid, channels: int) -> tuple[int, int]:
    """Output chunk (rows, cols): a multiple of the output stride near 2048 input pixels, bounded in memory.

    Each axis is cut into equal parts no larger than the target, so the last chunk is not a sliver.

    Args:
        grid: The global patch grid.
        channels: Output channels K (the accumulators hold K + 1 float32 values per output pixel).
    """
    step = grid.out_stride
    target = max(1, TARGET_CHUNK_INPUT_PX // grid.factor)
    by_memory = int(math.sqrt(MAX_CHUNK_BYTES / (4 * (channels + 1))))
    limit = max(step, min(target, by_memory) // step * step)
    sizes = []
    for extent in (grid.out_height, grid.out_width):
        parts = -(-extent // limit)
        per_part = -(-extent // parts)
        sizes.append(-(-per_part // step) * step)
    return sizes[0], sizes[1]


# ----------------------------------------------------------------------------------------------------------------
# The per-chunk task.


@dataclass(frozen=True)
class ChunkContext:
    """Everything a chunk task needs; picklable, sent to each worker once.

    Attributes:
        source: The input raster.
        predictor: The model and its metadata.
        normalization: Raw values -> model inputs.
        grid: The global patch grid.
        weights: (p, p) float32 blending window in output pixels.
        sink: The pre-created output store.
        outputs: Names of the variables to write.
        chunk: Output chunk (rows, cols).
        run: Token of this run (keys the border patches shared between its chunks).
        pending: The (iy, ix) chunks this run computes (how many chunks will ask for a shared patch group).
    """

    source: RasterSource
    predictor: Predictor
    normalization: Normalization
    grid: PatchGrid
    weights: np.ndarray
    sink: ZarrSink
    outputs: tuple[str, ...]
    chunk: tuple[int, int]
    run: str
    pending: frozenset[tuple[int, int]]


def _split_shared(
    keep: Sequence[int], out_rows: np.ndarray, out_cols: np.ndarray, ctx: ChunkContext
) -> tuple[list[int], dict[SharingKey, list[int]]]:
    """Patches only this chunk needs, and the others grouped by the set of chunks they touch (global order kept)."""
    grid_shape = chunk_grid_shape(ctx.grid, ctx.chunk)
    interior: list[int] = []
    shared: dict[SharingKey, list[int]] = {}
    if SHARED.budget_bytes == 0:  # sharing turned off: every chunk predicts all its patches
        return list(keep), shared
    for k in keep:
        key = sharing_key(int(out_rows[k]), int(out_cols[k]), ctx.grid.out_patch, ctx.chunk, grid_shape)
        if key[0] == key[1] and key[2] == key[3]:
            interior.append(k)
        else:
            shared.setdefault(key, []).append(k)
    return interior, shared


@dataclass
class _OpenChunk:
    """A chunk read and normalised, its patches listed; its stream holds the patches only this chunk needs.

    Attributes:
        data: (C, H, W) float32 normalised read window.
        valid: (H, W) bool, True where the input has data.
        footprints: Per patch of the task, its (rows, cols) in the read window.
        keep: Patches with at least one valid pixel, in the global patch order.
        interior: Those of ``keep`` only this chunk needs.
        shared: The others, by sharing key.
        ready: Predictions of shared groups already published when the chunk was opened (patch -> (K, p, p)).
        claimed: The groups this chunk claimed (it predicts and publishes them).
        waiting: The groups other chunks claimed first.
        stream: For the model's queue: the patches of ``claimed`` (first, to publish them early), then
            ``interior``, in blending order.
        run: The run's token.
    """

    data: np.ndarray
    valid: np.ndarray
    footprints: list[tuple[slice, slice]]
    keep: list[int]
    interior: list[int]
    shared: dict[SharingKey, list[int]]
    ready: dict[int, np.ndarray]
    claimed: list[SharingKey]
    waiting: list[SharingKey]
    stream: PatchStream
    run: str

    def close(self) -> None:
        """Withdraw the queued patches and release the claims (an opened chunk whose task never started)."""
        self.stream.close()
        for key in self.claimed:
            SHARED.abandon(self.run, key)

    @property
    def nbytes(self) -> int:
        """Bytes held by the input window and its mask."""
        return self.data.nbytes + self.valid.nbytes

    def patch(self, k: int) -> np.ndarray:
        """(C, P, P) view of patch ``k``'s input."""
        return self.data[(slice(None), *self.footprints[k])]


def _open_chunk(task: ChunkTask, ctx: ChunkContext) -> _OpenChunk:
    """Read a chunk's window, normalise it, and split the patches with valid pixels into its own and shared ones."""
    p = ctx.grid.patch
    raw, valid = ctx.source.read(task.read, fill="reflect")
    data = ctx.normalization.apply(raw, valid, in_place=True)
    del raw
    local_rows, local_cols = task.local_origins()
    footprints = [(slice(r, r + p), slice(c, c + p)) for r, c in zip(local_rows, local_cols, strict=True)]
    keep = [k for k in range(task.num_patches) if valid[footprints[k]].any()]
    out_rows, out_cols = task.output_origins(ctx.grid.factor)
    interior, shared = _split_shared(keep, out_rows, out_cols, ctx)
    ready, claimed, waiting = _claim_groups(shared, ctx)
    keys = [k for key in claimed for k in shared[key]] + interior
    stream = PatchStream(batch_queue(ctx.predictor), keys, lambda k: data[(slice(None), *footprints[k])])
    return _OpenChunk(data, valid, footprints, keep, interior, shared, ready, claimed, waiting, stream, ctx.run)


def _chunks_ahead(ctx: ChunkContext) -> ChunksAhead[ChunkTask, _OpenChunk] | None:
    """This run's chunks not yet started in this process, to open early rather than pad a batch (threads and
    sync schedulers only: on a cluster the chunk may run elsewhere)."""
    if on_cluster_worker():
        return None
    queue = batch_queue(ctx.predictor)

    def make() -> ChunksAhead[ChunkTask, _OpenChunk]:
        tasks = [t for t in plan_chunks(ctx.grid, ctx.chunk) if (t.iy, t.ix) in ctx.pending]
        return ChunksAhead(queue, tasks, lambda t: (t.iy, t.ix), lambda t: _open_chunk(t, ctx))

    return SHARED.run_state(ctx.run, f"ahead:{id(queue)}", make)


def predict_chunk(task: ChunkTask, ctx: ChunkContext) -> tuple[np.ndarray, int]:
    """Blend the predictions of every patch touching a chunk's core.

    Patches that also touch other chunks go through :data:`~geodino.workflows.shared_patches.SHARED`: predicted
    once per process by the first chunk that claims them, then handed to the others. Patches go to the model
    through the process's :func:`~geodino.workflows.batching.batch_queue`, which fills batches across the chunks
    running at once (and with the first patches of chunks not started yet, rather than pad a batch). Every patch
    is blended in the global patch order, so the result does not depend on which chunk predicted what.

    Args:
        task: The chunk task (core in output pixels, read window and patch origins in input pixels).
        ctx: Shared context.

    Returns:
        ``(values, patches)``: (K, h, w) float32 over ``task.core`` (NaN where no valid input), and the number of
        patches this chunk sent to the model (patches without any valid pixel are skipped).
    """
    f = ctx.grid.factor
    out_rows, out_cols = task.output_origins(f)
    queue = batch_queue(ctx.predictor)
    ahead = _chunks_ahead(ctx)
    with queue.client():  # from before the read: others wait for this chunk's patches rather than pad a batch
        chunk = (ahead.start(task) if ahead is not None else None) or _open_chunk(task, ctx)
        valid, shared, stream = chunk.valid, chunk.shared, chunk.stream
        ready, claimed, waiting = chunk.ready, chunk.claimed, chunk.waiting
        stream.attach()
        try:
            _publish_claimed(claimed, shared, stream, ready, (out_rows, out_cols), task, ctx)
            fallback = 0
            for key in waiting:  # predicted by other threads; only now, holding no claim, wait for them
                with queue.idle():
                    crops = SHARED.wait(ctx.run, key, timeout=SHARED_WAIT_S)
                if crops is None:  # its claimant failed (or, opened ahead, has not started): predict it here
                    patches = [chunk.patch(k) for k in shared[key]]
                    ready.update(zip(shared[key], queue.predict(patches), strict=True))
                    fallback += len(shared[key])
                else:
                    pairs = zip(shared[key], crops, strict=True)
                    ready.update((k, _uncrop(crop, ctx.grid.out_patch)) for k, crop in pairs)
            acc = np.zeros((ctx.predictor.out_channels, *task.core.shape), dtype=np.float32)
            wsum = np.zeros(task.core.shape, dtype=np.float32)
            for k in chunk.keep:  # global patch order
                pred = ready.pop(k) if k in ready else stream.get(k)
                mask = valid_to_output(valid[chunk.footprints[k]], f)
                accumulate_patch(acc, wsum, pred, int(out_rows[k]), int(out_cols[k]), task.core, ctx.weights, mask)
        finally:
            stream.close()
    if ahead is not None:
        ahead.finish()
    return finalize(acc, wsum, in_place=True), stream.submitted + fallback


def _publish_claimed(
    claimed: list[SharingKey],
    shared: dict[SharingKey, list[int]],
    stream: PatchStream,
    ready: dict[int, np.ndarray],
    origins: tuple[np.ndarray, np.ndarray],
    task: ChunkTask,
    ctx: ChunkContext,
) -> None:
    """Predict each claimed group and publish the parts its other pending chunks blend (abandon all on failure)."""
    out_rows, out_cols = origins
    try:
        for key in claimed:
            ready.update((k, stream.get(k)) for k in shared[key])
            others = [c for c in chunks_of(key) if c in ctx.pending and c != (task.iy, task.ix)]
            crops = [_crop_for(ready[k], int(out_rows[k]), int(out_cols[k]), others, ctx) for k in shared[key]]
            SHARED.publish(ctx.run, key, crops, 1 + len(others), nbytes=sum(c[0].nbytes for c in crops))
    except BaseException:
        for key in claimed:  # a no-op for the groups already published
            SHARED.abandon(ctx.run, key)
        raise


def _claim_groups(
    shared: dict[SharingKey, list[int]], ctx: ChunkContext
) -> tuple[dict[int, np.ndarray], list[SharingKey], list[SharingKey]]:
    """Shared groups already predicted (patch index -> prediction), those to predict here, those to wait for."""
    ready: dict[int, np.ndarray] = {}
    claimed: list[SharingKey] = []
    waiting: list[SharingKey] = []
    for key in sorted(shared):
        got = SHARED.claim(ctx.run, key)
        if got is True:
            claimed.append(key)
        elif got is False:
            waiting.append(key)
        else:
            ready.update((k, _uncrop(crop, ctx.grid.out_patch)) for k, crop in zip(shared[key], got, strict=True))
    return ready, claimed, waiting


Crop = tuple[np.ndarray, int, int]  # (K, h, w) part of a patch prediction, and its offset in the patch


def _crop_for(pred: np.ndarray, row: int, col: int, others: Sequence[tuple[int, int]], ctx: ChunkContext) -> Crop:
    """The part of a (K, p, p) patch prediction at output origin (row, col) that the chunks `others` blend:
    the bounding box of its overlaps with their cores (a border patch reaches only a margin into a neighbour)."""
    footprint = Window(row, col, pred.shape[-2], pred.shape[-1])
    ch, cw = ctx.chunk
    box: Window | None = None
    for iy, ix in others:
        part = footprint.intersection(Window(iy * ch, ix * cw, ch, cw))
        if part is not None:
            box = part if box is None else box.union(part)
    if box is None:
        return pred[:, :0, :0].copy(), 0, 0
    r, c = box.row - row, box.col - col
    return np.ascontiguousarray(pred[:, r : r + box.height, c : c + box.width]), r, c


def _uncrop(crop: Crop, patch: int) -> np.ndarray:
    """A (K, p, p) prediction holding `crop` at its offset, zeros elsewhere (never blended by the taker)."""
    values, r, c = crop
    full = np.zeros((values.shape[0], patch, patch), dtype=values.dtype)
    full[:, r : r + values.shape[1], c : c + values.shape[2]] = values
    return full


def chunk_outputs(values: np.ndarray, outputs: Sequence[str], kind: str) -> dict[str, np.ndarray]:
    """The arrays to store for one chunk.

    Args:
        values: (K, h, w) float32 blended predictions (NaN = nodata).
        outputs: Variable names to produce.
        kind: The model kind.

    Returns:
        Per variable: (K, h, w) float32 for probabilities / prediction / embedding; (h, w) uint8 class indices
        for ``classes`` (255 where there is no valid input).
    """
    arrays: dict[str, np.ndarray] = {}
    for name in outputs:
        if name == "classes":
            # finalize() sets every channel of a pixel to NaN together, so channel 0 tells where nodata is.
            classes = argmax_channels(values)
            classes[np.isnan(values[0])] = CLASS_NODATA
            arrays[name] = classes
        else:
            arrays[name] = values
    return arrays


def run_chunk(task: ChunkTask, ctx: ChunkContext) -> int:
    """One Dask task: predict a chunk, write it to the store once, then mark it complete.

    Returns:
        The number of patches the model ran on.
    """
    tune_allocator()  # once per process: this one, or a cluster worker's
    try:
        values, patches = predict_chunk(task, ctx)
    except (ValueError, OSError) as err:  # anticipated: reported to the user as one line
        clean = portable_error(err)
    else:
        clean = None
    if clean is not None:
        raise clean  # outside the except block: no chained context travels with it
    ctx.sink.write(task.core, chunk_outputs(values, ctx.outputs, ctx.predictor.kind))
    ctx.sink.mark_done(task.iy, task.ix)
    del values
    release_after_chunk()
    return patches


def portable_error(err: BaseException) -> BaseException:
    """The same error without its chain of causes, whose details move into the message when it lacks them.

    A task's exception crosses process boundaries under ``dask.distributed``, which pickles its causes too; some
    (rasterio's GDAL errors) cannot be unpickled, and the client then sees a bare ``Exception`` instead of the
    error. Messages such as "Read failed. See previous exception for details." get that detail appended.
    """
    causes = []
    cause = err.__cause__ or err.__context__
    while cause is not None and len(causes) < 4:
        text = " ".join(str(cause).split())
        seen = [str(err), *causes]
        if text and not any(text in s for s in seen) and "See previous exception" not in text:
            causes.append(text)
        cause = cause.__cause__ or cause.__context__
    message = str(err) + (f" ({'; '.join(causes)})" if causes and "See previous exception" in str(err) else "")
    try:
        clean = type(err)(message) if len(err.args) <= 1 else type(err)(*err.args)
    except Exception:
        return err
    return clean


# ----------------------------------------------------------------------------------------------------------------
# Planning a run.


def _variables(predictor: Predictor, outputs: Sequence[str], storage_dtype: str | None) -> list[OutputVar]:
    """Output variables for the model kind and the requested outputs."""
    float_dtype = np.dtype(storage_dtype or "float32").name
    if float_dtype not in ("float32", "float16"):
        raise ValueError(f"storage_dtype must be float32 or float16, got {storage_dtype!r}")
    allowed = _OUTPUTS[predictor.kind]
    unknown = [o for o in outputs if o not in allowed]
    if unknown or not outputs:
        raise ValueError(f"outputs {list(outputs)} not available for a {predictor.kind} model; choose from {allowed}")
    attrs = predictor.info.output_attrs()
    k = predictor.out_channels
    variables = []
    for name in outputs:
        if name == "classes":
            if k > CLASS_NODATA:
                raise ValueError(f"a uint8 class map holds at most {CLASS_NODATA} classes, the model has {k}")
            variables.append(OutputVar(name, None, dtype="uint8", fill=CLASS_NODATA, attrs=attrs))
        elif name == "probabilities":
            variables.append(OutputVar(name, k, "class", float_dtype, attrs=attrs))
        elif name == "embedding":
            variables.append(OutputVar(name, k, "feature", float_dtype, attrs=attrs))
        else:
            variables.append(OutputVar(name, k, "band", float_dtype, attrs=attrs))
    return variables


class IncompleteStoreWarning(UserWarning):
    """An incomplete store was opened on purpose (``allow_incomplete=True``): its missing chunks read as nodata."""


def open_output(out: str | Path, *, allow_incomplete: bool = False) -> xr.Dataset:
    """Open a mapping output lazily with its CRS (``decode_coords="all"``); class maps stay uint8.

    The completion flags (``chunk_done``) are left out.

    Args:
        out: The store.
        allow_incomplete: Open a store whose run did not finish (with an :class:`IncompleteStoreWarning` giving the
            count); its missing chunks read as NaN (class maps: 255).

    Raises:
        IncompleteStoreError: Some chunks were never written, and ``allow_incomplete`` is False.
        StoreMismatchError: The folder is not a geodino mapping store.
    """
    path = str(out)
    check_complete(path, allow_incomplete=allow_incomplete, stacklevel=3)
    kwargs: dict[str, Any] = {"decode_coords": "all", "drop_variables": [DONE_VAR]}
    ds = xr.open_zarr(path, mask_and_scale=False, **kwargs)
    masked = {name: name != "classes" for name in ds.data_vars}
    ds.close()
    return xr.open_zarr(path, mask_and_scale=masked, **kwargs)


def check_complete(path: str | Path, *, allow_incomplete: bool = False, stacklevel: int = 2) -> tuple[int, int]:
    """``(done, total)`` chunks of a store; refuse (or, when allowed, warn about) an incomplete one.

    Raises:
        IncompleteStoreError: Chunks are missing and ``allow_incomplete`` is False.
        StoreMismatchError: ``path`` has no completion record (not a geodino mapping store).
    """
    try:
        done, total = _manifest.completeness(path)
    except FileNotFoundError:
        if not Path(path).exists():
            raise FileNotFoundError(f"output store not found: {path}") from None
        raise StoreMismatchError(f"{path}: no {DONE_VAR} record; not a store written by geodino map / embed") from None
    if done < total:
        what = f"{path}: {total - done} of {total} chunks are missing (the run that wrote it did not finish)"
        if not allow_incomplete:
            raise IncompleteStoreError(
                f"{what}; resume it with --resume, or allow an incomplete store explicitly "
                "(--allow-incomplete / allow_incomplete=True; missing chunks read as NaN, class maps 255)",
                missing=total - done,
                total=total,
            )
        warnings.warn(
            f"{what}; missing chunks read as NaN (class maps 255)", IncompleteStoreWarning, stacklevel=stacklevel
        )
    return done, total


def map_raster(
    inputs: str | Path | Sequence[str | Path],
    model: Any,
    out: str | Path,
    options: MapOptions | None = None,
    **overrides: Any,
) -> xr.Dataset:
    """Run a model over a raster of any size and write a georeferenced, chunked Zarr store with a run manifest.

    Args:
        inputs: One raster (GeoTIFF / COG / VRT) or several tiles of one mosaic (or, with ``stack=True``, one band
            file per band).
        model: A Predictor, a ``"package.module:attr"`` spec, a saved geodino model path, a backbone, or an
            ``nn.Module`` / callable with ``geodino_info``.
        out: Output store (``.zarr`` directory).
        options: The run's settings (:class:`~geodino.workflows.options.MapOptions`); default: all defaults.
        **overrides: Fields of :class:`~geodino.workflows.options.MapOptions` to change, by name: ``tile``,
            ``overlap``, ``chunk``, ``batch_size``, ``outputs``, ``blend``, ``bands``, ``zarr_format``,
            ``scheduler``, ``workers``, ``address``, ``resume``, ``overwrite``, ``progress``, ``allow_no_crs``,
            ``target_crs``, ``target_resolution``, ``storage_dtype``, ``nodata``, ``device``, ``tta``, ``stack``...

    Returns:
        The output, opened lazily with ``xr.open_zarr(out, decode_coords="all")`` (class maps kept as uint8).

    Raises:
        InputError / ValueError: On bad inputs or settings, before any store is created or task runs.
        StoreMismatchError: ``resume`` into a store made by another run (names the fields that differ).
        SchedulerError: The Dask scheduler does not answer (before any store is created).
    """
    tune_allocator()  # before any thread this run starts first allocates (see geodino.workflows.allocator)
    options = _options(options, overrides)
    if options.pretraining is not None or options.random_weights:
        raise InputError("pretraining / random_weights choose a backbone's weights: use embed_raster (geodino embed)")
    check_device(options.device)
    predictor = build_predictor(model, batch_size=options.batch_size, device=options.device)
    return _run(inputs, predictor, out, options)


def embed_raster(
    inputs: str | Path | Sequence[str | Path],
    backbone: Any,
    out: str | Path,
    options: MapOptions | None = None,
    **overrides: Any,
) -> xr.Dataset:
    """Backbone patch embeddings of a raster, at patch resolution (a transform ``patch_size`` times coarser).

    Args:
        inputs: One raster or several tiles of one mosaic.
        backbone: A backbone module (with ``.meta``), a checkpoint path, or a hub name: "test" (the built-in tiny
            test model) or, with ``random_weights=True`` only, an architecture such as "vits16".
        out: Output store.
        options: The run's settings; ``pretraining`` ("sat493m" / "lvd1689m", for a checkpoint that cannot tell:
            Meta's .pth files other than the SAT-493M ViT-L) picks the normalisation the weights were trained with;
            ``random_weights`` allows a hub architecture without weights.
        **overrides: :class:`~geodino.workflows.options.MapOptions` fields by name, as :func:`map_raster`.

    Returns:
        The store opened lazily; variable ``embedding`` (feature, y, x).
    """
    tune_allocator()  # before any thread this run starts first allocates (see geodino.workflows.allocator)
    options = _options(options, overrides)
    check_device(options.device)
    predictor = from_backbone(
        backbone,
        batch_size=options.batch_size or 8,
        device=options.device,
        pretraining=options.pretraining,
        random_weights=options.random_weights,
    )
    return _run(inputs, predictor, out, options)


def _options(options: MapOptions | None, overrides: dict[str, Any]) -> MapOptions:
    base = options if options is not None else MapOptions()
    return base.replace(**overrides) if overrides else base


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, before any model is built.

    Raises:
        InputError: Not a torch device name, or a CUDA device without a visible GPU (or with too few).
    """
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"--device {device}: no CUDA GPU is visible to torch on this machine; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")


def _raster_record(source: RasterSource) -> dict[str, Any]:
    """What the source reads, for the manifest: grid, bands, stack layout, notes; paths are left to ``inputs``
    (recorded by content there), so a respelled path still names the same run."""
    record = {k: v for k, v in source.describe().items() if k not in ("tiles", "band_files", "resampled")}
    return record | {"dtype": str(source.dtype)}


def _source(inputs: str | Path | Sequence[str | Path], options: MapOptions) -> RasterSource:
    """The input raster (a file, a mosaic or, with ``stack``, a band stack) read as the options say."""
    return RasterSource(
        _absolute(inputs),
        bands=options.bands,
        nodata=options.nodata,
        allow_no_crs=options.allow_no_crs,
        target_crs=options.target_crs,
        target_resolution=options.target_resolution,
        stack=options.stack,
        complex_mode=options.complex_mode or "refuse",  # type: ignore[arg-type]
        allow_overlap=options.allow_overlap,
    )


def _run(
    inputs: str | Path | Sequence[str | Path], predictor: Predictor, out: str | Path, options: MapOptions
) -> xr.Dataset:
    """Plan, check, connect, create (or reopen) the store, run the pending chunks, record the run's end."""
    if options.tta is not None:
        predictor = predictor.with_options(tta=options.tta)
    source = _source(inputs, options)
    by_name = bands_by_name(predictor, source.available_band_names) if options.bands is None else None
    if by_name is not None:  # the model names its bands and the file names them all: take those, in its order
        options = dataclasses.replace(options, bands=tuple(by_name))
        source = _source(inputs, options)
    check_bands(predictor, source.count, source.band_names, ", ".join(source.paths))
    grid = _plan_grid(source, predictor, options.tile, options.overlap)
    chunk_hw = default_chunk(grid, predictor.out_channels) if options.chunk is None else _as_pair(options.chunk)
    tasks = plan_chunks(grid, chunk_hw)
    outputs = tuple(options.outputs) if options.outputs else _OUTPUTS[predictor.kind]
    variables = _variables(predictor, outputs, options.storage_dtype)
    normalization = predictor.normalization_for(source.dtype)
    weights = window_weights(grid.out_patch, options.blend, grid.out_stride)
    manifest = _new_manifest(options, source, predictor, grid, chunk_hw, outputs, normalization, len(tasks))
    with connect(
        options.scheduler, options.workers, options.address, predictor.device
    ) as client:  # before any store exists
        sink = ZarrSink.create(
            out,
            variables=variables,
            height=grid.out_height,
            width=grid.out_width,
            transform=source.output_transform(grid.factor),
            crs=source.crs,
            chunk=chunk_hw,
            manifest=manifest,
            zarr_format=options.zarr_format,
            attrs=_root_attrs(source, predictor, grid, chunk_hw, manifest["model"]),
            resume=options.resume,
            overwrite=options.overwrite,
        )
        done = sink.done() if options.resume else set()
        pending = [t for t in tasks if (t.iy, t.ix) not in done]
        run = uuid.uuid4().hex
        pending_ids = frozenset((t.iy, t.ix) for t in pending)
        ctx = ChunkContext(source, predictor, normalization, grid, weights, sink, outputs, chunk_hw, run, pending_ids)
        status = "failed"
        try:
            run_tasks(
                run_chunk,
                pending,
                ctx,
                scheduler=options.scheduler,
                workers=options.workers,
                address=options.address,
                progress=options.progress,
                client=client,
                device=predictor.device,
            )
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except Exception as err:
            status = f"failed: {type(err).__name__}: {' '.join(str(err).split())}"[:300]
            raise
        finally:
            SHARED.drop_run(run)
            _record_end(sink, status)
            release_after_run()  # the run's buffers, kept for reuse from batch to batch
    return open_output(out)


def _record_end(sink: ZarrSink, status: str) -> None:
    """Write the run's end into the manifest; never hides the run's own error (best effort when it failed)."""
    try:
        sink.finish(status)
    except Exception:
        if status == "complete":
            raise


def _new_manifest(
    options: MapOptions,
    source: RasterSource,
    predictor: Predictor,
    grid: PatchGrid,
    chunk: tuple[int, int],
    outputs: Sequence[str],
    normalization: Normalization,
    chunks_total: int,
) -> dict[str, Any]:
    """The run manifest: options, resolved settings, input and model identities (digests: once per run)."""
    return _manifest.build_manifest(
        options=options,
        inputs=_manifest.input_records(source.paths),
        model=_manifest.model_record(predictor),
        raster=_raster_record(source),
        resolved={
            "tile": grid.patch,
            "stride": grid.stride,
            "factor": grid.factor,
            "chunk": list(chunk),
            "outputs": list(outputs),
            "storage_dtype": options.storage_dtype or "float32",
            "normalization": [normalization.scale, list(normalization.mean), list(normalization.std)],
        },
        chunks_total=chunks_total,
    )


def _absolute(inputs: str | Path | Sequence[str | Path]) -> list[str]:
    """Existing local paths made absolute (workers of a remote cluster do not share our working directory)."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    return [os.path.abspath(p) if Path(p).exists() else str(p) for p in items]


def _as_pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int | np.integer):
        return int(value), int(value)
    rows, cols = value
    return int(rows), int(cols)


def _plan_grid(source: RasterSource, predictor: Predictor, tile: int | None, overlap: int | None) -> PatchGrid:
    """The global patch grid, validating tile and overlap against the model."""
    f = predictor.factor
    tile = default_tile(predictor) if tile is None else int(tile)
    step = math.lcm(f, predictor.info.multiple)
    if tile < step or tile % step:
        raise ValueError(
            f"tile {tile} must be a positive multiple of {step} for model {predictor.name!r} "
            f"(output stride {f}, input multiple {predictor.info.multiple})"
        )
    if overlap is None:  # the model's own overlap where it fits this tile, else a quarter of the tile
        preferred = predictor.info.overlap
        fits = preferred is not None and preferred < tile and preferred % f == 0
        overlap = preferred if fits else default_overlap(tile, f)
    overlap = int(overlap)
    if not 0 <= overlap < tile or overlap % f:
        raise ValueError(f"overlap {overlap} must be in [0, tile={tile}) and a multiple of the output stride {f}")
    return PatchGrid(source.height, source.width, tile, tile - overlap, f)


def _root_attrs(
    source: RasterSource, predictor: Predictor, grid: PatchGrid, chunk: tuple[int, int], model: dict[str, Any]
) -> dict[str, Any]:
    """Descriptive root attributes of the store (``weights: random`` says loudly what a random model made)."""
    from geodino import __version__

    attrs: dict[str, Any] = {
        "title": f"geodino {predictor.kind} map",
        "model": predictor.name,
        "weights": "random" if model["random_weights"] else (model["pretraining"] or "as given"),
        "model_digest": model["digest"],
        "geodino_version": __version__,
        "kind": predictor.kind,
        "source": [os.path.basename(p) for p in source.paths],
        "input_bands": list(source.band_names),
        "tile": grid.patch,
        "stride": grid.stride,
        "factor": grid.factor,
        "chunk_grid": list(chunk_grid_shape(grid, chunk)),
    }
    if predictor.class_names:
        attrs["class_names"] = list(predictor.class_names)
    if predictor.class_colours:
        attrs["class_colours"] = [list(c) for c in predictor.class_colours]
    return attrs
