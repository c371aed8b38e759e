"""Mapping benchmark: overhead over the bare model, memory flatness, and geodino versus a naive in-memory loop.

Not a test: it prints ratios measured against baselines taken in the same run.

(a) End-to-end ``map_raster`` time divided by the time of the bare model forward over the same patches (every
    patch of the global grid once, in full batches: the model work any tiled mapping must do), with a ViT-S/16
    backbone (random weights) and a linear head upsampled to pixels, on CPU, on generated 3-band rasters: at the
    default 224-px tile (overlap 56) on ``--size`` x ``--size``, and at the satellite models' 512-px tile
    (overlap 64) on 2048 x 2048 and 4096 x 4096 (``--tile512-sizes``). Also printed: the rows sent to the model
    (padding included) against the grid's patches; at most ``patches + batch - 1`` (one padded last batch).
    Target <= 1.10 at both tile sizes. The allocator is tuned first, as ``geodino map`` does
    (:mod:`geodino.workflows.allocator`), so the bare forwards run with the same settings as the mapping;
    ``GEODINO_TUNE_MALLOC=0`` measures both with glibc's defaults.
(b) Peak resident memory (VmHWM) of a mapping of a ``--rss-large``\\ :sup:`2` raster divided by that of a
    ``--rss-small``\\ :sup:`2` one, each in a fresh subprocess, with a cheap per-pixel model (1x1 convolutions).
    Target <= 1.25.
(c) geodino versus a naive in-memory loop (read the whole raster, tile it on the same global grid, accumulate
    full-size float32 arrays, write the result), same cheap model, same raster, each in a fresh subprocess:
    time and peak-memory ratios.
(d) As (a) with a DPT head (``geodino.heads.dpt``, random weights) on the ViT-S/16 instead of the linear head, at
    the 512-px tile (overlap 64) on a ``--dpt-size`` x ``--dpt-size`` raster (2048). Target <= 1.15. Skipped, with a
    message, where ``geodino.heads.dpt`` is not installed. Not run by default (the bare DPT forward alone takes
    minutes on a small CPU): ask for it with ``--only d``.

Run: ``python benchmarks/mapping.py --size 2048 --rss-large 8192`` for a quick run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window as RioWindow
from torch import nn

from geodino.raster.source import READ_CACHE_BYTES
from geodino.workflows.allocator import allocator_state, tune_allocator
from geodino.workflows.predictor import PredictorInfo, from_callable

CHEAP_TILE, CHEAP_OVERLAP = 256, 32
#: Default output chunk of both rasters in (b): the same chunk, so only the raster size differs, and small enough
#: (4 strides of 224 px) that the small raster also keeps every thread on a full chunk.
RSS_CHUNK = 896
#: geodino's children run with its own GDAL block-cache ceiling (READ_CACHE_BYTES, applied while it reads); the
#: naive loop gets the same ceiling through GDAL_CACHEMAX, so (c) compares the algorithms, not cache settings.
NAIVE_GDAL_CACHE_MB = READ_CACHE_BYTES // 2**20


# ----------------------------------------------------------------------------------------------------------------
# Inputs and models.


def make_raster(path: Path, size: int, bands: int = 3) -> Path:
    """A smooth uint8 ``bands x size x size`` GeoTIFF written strip by strip (bounded memory)."""
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "count": bands,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 4100000, 0.6, 0.6),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
    }
    cols = np.arange(size, dtype=np.float32)[None, :]
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 512):
            rows = np.arange(r0, min(r0 + 512, size), dtype=np.float32)[:, None]
            strip = np.stack(
                [127 + 100 * np.sin(rows / (70 + 30 * b)) * np.cos(cols / (90 + 20 * b)) for b in range(bands)]
            )
            dst.write(strip.astype(np.uint8), window=RioWindow(0, r0, size, len(rows)))
    return path


class LinearSegmenter(nn.Module):
    """ViT patch tokens -> 1x1 conv (a linear head) -> bilinear upsampling to pixels."""

    def __init__(self, backbone: nn.Module, classes: int = 8):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Conv2d(backbone.meta.embed_dim, classes, 1)
        self.patch = backbone.meta.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.backbone.get_intermediate_layers(x, n=1, reshape=True, norm=True)[0]
        return nn.functional.interpolate(self.head(tokens), scale_factor=self.patch, mode="bilinear")


def vit_linear_predictor(batch_size: int) -> Any:
    """ViT-S/16 (random, seeded weights) + linear head, as a classification Predictor."""
    from geodino import hub

    torch.manual_seed(0)
    backbone = hub.dinov3_vits16()
    return _classifier(
        LinearSegmenter(backbone).eval(), backbone, tile=224, name="vits16+linear", batch_size=batch_size
    )


def _classifier(model: nn.Module, backbone: Any, *, tile: int, name: str, batch_size: int) -> Any:
    """An 8-class CPU Predictor for ``model``, normalised as its backbone."""
    info = PredictorInfo(
        in_bands=3,
        out_channels=8,
        kind="classification",
        mean=tuple(backbone.meta.mean),
        std=tuple(backbone.meta.std),
        tile=tile,
        multiple=16,
        name=name,
    )
    return from_callable(model, info, batch_size=batch_size, device="cpu")


def vit_dpt_predictor(batch_size: int) -> Any:
    """ViT-S/16 (random, seeded weights) + DPT head (8 classes) as a classification Predictor.

    Raises:
        ImportError: Where the dense heads (``geodino.heads.dpt``) are not installed.
    """
    from geodino import hub
    from geodino.heads.dpt import dpt_head
    from geodino.heads.model import DenseModel

    torch.manual_seed(0)
    backbone = hub.dinov3_vits16()
    model = DenseModel(backbone, dpt_head(backbone, out_channels=8, kind="classification")).eval()
    return _classifier(model, backbone, tile=512, name="vits16+dpt", batch_size=batch_size)


class Cheap(nn.Module):
    """Per-pixel model: 1x1 conv, tanh, 1x1 conv (3 bands -> 1 channel)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def cheap_predictor(batch_size: int = 4) -> Any:
    info = PredictorInfo(in_bands=3, out_channels=1, kind="regression", tile=CHEAP_TILE, name="cheap-1x1")
    return from_callable(Cheap().eval(), info, batch_size=batch_size, device="cpu")


def peak_rss_mb() -> float:
    """Peak resident set size of this process image, MB.

    Read from ``VmHWM`` in /proc/self/status, which starts afresh at exec; ``ru_maxrss`` would carry over the
    parent's peak through fork + exec on Linux.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------------------------
# (a) overhead over the bare model.


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ThreadStat(NamedTuple):
    """One thread's counters (cumulative, or between two snapshots with :func:`thread_delta`)."""

    name: str
    on_core: float  # seconds on a core (its CPU time)
    waiting: float  # seconds runnable but waiting for a core
    faults: int  # minor page faults


def thread_stats() -> dict[int, ThreadStat]:
    """Every live thread of this process by native id, from ``/proc/self/task`` (empty where there is none)."""
    tasks = Path("/proc/self/task")
    out: dict[int, ThreadStat] = {}
    for tid in os.listdir(tasks) if tasks.is_dir() else []:
        try:
            on_core, waiting = (tasks / tid / "schedstat").read_text().split()[:2]  # nanoseconds
            stat = (tasks / tid / "stat").read_text()
            name = (tasks / tid / "comm").read_text().strip()
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
        minflt = int(stat[stat.rindex(")") + 2 :].split()[7])
        out[int(tid)] = ThreadStat(name, int(on_core) / 1e9, int(waiting) / 1e9, minflt)
    return out


def thread_delta(before: dict[int, ThreadStat], after: dict[int, ThreadStat]) -> dict[int, ThreadStat]:
    """Per thread alive in ``after``, its counters since ``before`` (threads started since count from zero)."""
    out = {}
    for tid, now in after.items():
        then = before.get(tid, ThreadStat(now.name, 0.0, 0.0, 0))
        out[tid] = ThreadStat(
            now.name, now.on_core - then.on_core, now.waiting - then.waiting, now.faults - then.faults
        )
    return out


def _team_loss(used: dict[int, ThreadStat], team: set[int], caller: int, wall: float) -> dict[str, float]:
    """Figures of one mapping that a busy host does not skew (each is a share within the same seconds).

    ``pipeline``: on-core time of the threads outside the model's team over the team's. ``off_core``: share of the
    wall time in which the calling thread (it runs the forward passes) was not on a core: waiting for a batch, or
    preempted. ``loss``: the calling thread's time off its core plus the time its OpenMP workers waited for a core
    (the calling thread spins at the next barrier meanwhile), over the remaining time. Bare forward passes have a
    loss of their own (the calling thread also sleeps at barriers where a worker is slower: 0.8-4% of their time
    on the development VM), so the ratio is estimated as ``(1 + loss of the mapping) / (1 + loss of the bare
    passes)`` (:func:`bench_overhead`). It leaves out slower kernels from shared caches.
    """
    if caller not in used or wall <= 0:
        return {"pipeline": math.nan, "off_core": math.nan, "loss": math.nan}
    in_team = sum(used[t].on_core for t in team if t in used)
    others = sum(stat.on_core for t, stat in used.items() if t not in team)
    off = max(0.0, wall - used[caller].on_core)
    workers_waited = sum(used[t].waiting for t in team if t in used and t != caller)
    lost = off + workers_waited
    return {
        "pipeline": others / in_team if in_team else math.nan,
        "off_core": off / wall,
        "loss": lost / (wall - lost) if wall > lost else math.nan,
    }


def _bare_forward(model: nn.Module, x: torch.Tensor, batches: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``batches`` forward passes of ``x``."""
    with torch.inference_mode():
        wall, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(batches):
            model(x)
        return time.perf_counter() - wall, cpu_seconds() - cpu


def bare_forward_threads(model: nn.Module, x: torch.Tensor, batches: int) -> tuple[float, float, dict[int, ThreadStat]]:
    """Wall and CPU seconds of ``batches`` forward passes of ``x``, and every thread's counters over them."""
    before = thread_stats()
    wall, cpu = _bare_forward(model, x, batches)
    return wall, cpu, thread_delta(before, thread_stats())


def _bare_run(
    model: nn.Module, x: torch.Tensor, batches: int, team: set[int], caller: int
) -> tuple[float, float, float]:
    """Wall and CPU seconds of ``batches`` forward passes of ``x``, and their ``loss`` (:func:`_team_loss`)."""
    wall, cpu, used = bare_forward_threads(model, x, batches)
    return wall, cpu, _team_loss(used, team, caller, wall)["loss"]


def bench_overhead(
    raster: Path,
    work: Path,
    batch_size: int,
    repeats: int,
    tile: int | None = None,
    overlap: int | None = None,
    build: Any = None,
) -> dict[str, Any]:
    """End-to-end mapping time / bare forward time over the same patches.

    Bare forwards and mappings alternate ``repeats`` times (bare first and last). Reported: the fastest of each
    (the machine may be shared), the median of the per-round ratios (each mapping against the mean of the bare
    runs either side of it), CPU-time ratios, and per mapping the rows the model ran (padding included) and the
    patches among them.

    Also reported, per mapping, figures that a busy host cannot skew (on the 2-core development VM the same
    forward passes took from 0.81x to 1.23x their median time from one 5-s stretch to the next, CPU time alike):
    the on-core time of every thread outside the model's team (the pipeline: reads, blending, compression,
    writes) as a share of the team's, the share of the run in which the calling thread was off its core, and from
    these an estimate of the ratio: the mapping's loss (:func:`_team_loss`) against the mean loss of the bare runs
    either side of it, which are measured the same way. The team is the threads that ran the warm-up forward pass
    (the calling thread and its OpenMP workers).
    """
    from geodino.raster.plan import plan_chunks
    from geodino.raster.source import RasterSource
    from geodino.workflows.batching import batch_queue
    from geodino.workflows.mapping import _plan_grid, default_chunk, map_raster

    predictor = (build or vit_linear_predictor)(batch_size)
    source = RasterSource(raster)
    grid = _plan_grid(source, predictor, tile, overlap)
    chunk = default_chunk(grid, predictor.out_channels)
    tasks = plan_chunks(grid, chunk)
    batches = math.ceil(grid.num_patches / batch_size)
    model = predictor.model()
    queue = batch_queue(predictor)
    x = torch.randn(batch_size, 3, grid.patch, grid.patch)
    threads = thread_stats()
    _bare_forward(model, x, 1)  # warm-up
    on_core = {tid: stat.on_core for tid, stat in thread_delta(threads, thread_stats()).items()}
    team = {tid for tid, on in on_core.items() if on > 0.3 * max(on_core.values(), default=0.0)}
    caller = threading.get_native_id()
    bares, maps, runs, rows, real = [_bare_run(model, x, batches, team, caller)], [], [], [], []
    losses = []
    for _ in range(repeats):
        before, rows_before = queue.batches, queue.rows
        threads = thread_stats()
        wall, cpu = time.perf_counter(), cpu_seconds()
        map_raster(raster, predictor, work / "a.zarr", tile=tile, overlap=overlap, overwrite=True, progress=False)
        maps.append((time.perf_counter() - wall, cpu_seconds() - cpu))
        losses.append(_team_loss(thread_delta(threads, thread_stats()), team, caller, maps[-1][0]))
        runs.append(queue.batches - before)
        rows.append(runs[-1] * batch_size)
        real.append(queue.rows - rows_before)
        bares.append(_bare_run(model, x, batches, team, caller))
    rounds = [m[0] / ((b0[0] + b1[0]) / 2) for m, b0, b1 in zip(maps, bares, bares[1:], strict=False)]
    # Each mapping's loss against the bare passes' either side of it: the part they share is not the pipeline's.
    estimates = [
        (1 + loss["loss"]) / (1 + (b0[2] + b1[2]) / 2) for loss, b0, b1 in zip(losses, bares, bares[1:], strict=False)
    ]
    return {
        "tile": grid.patch,
        "overlap": grid.patch - grid.stride,
        "chunk": chunk[0],
        "chunks": len(tasks),
        "patches": grid.num_patches,
        "min_batches": batches,
        "mapping_batches": runs,
        "rows": rows,
        "real_rows": real,
        "bare_s": [round(b[0], 1) for b in bares],
        "mapping_s": [round(m[0], 1) for m in maps],
        "ratio_same_patches": min(maps)[0] / min(bares)[0],
        "median_round_ratio": float(np.median(rounds)),
        "cpu_ratio_same_patches": min(m[1] for m in maps) / min(b[1] for b in bares),
        "round_ratios": [round(r, 3) for r in rounds],
        "pipeline_cpu_share": [round(loss["pipeline"], 3) for loss in losses],
        "caller_off_core": [round(loss["off_core"], 3) for loss in losses],
        "estimated_ratio": [round(e, 3) for e in estimates],
        "bare_loss": [round(b[2], 3) for b in bares],
    }


def format_overhead(
    res: dict[str, Any], size: int, batch_size: int, target: float, part: str = "(a)", head: str = "linear head"
) -> str:
    """One line of (a) or (d)."""
    padded_max = res["patches"] + batch_size - 1
    return (
        f"{part} ViT-S/16 + {head}, {size}^2, tile {res['tile']} overlap {res['overlap']}, chunk {res['chunk']} "
        f"({res['chunks']} chunks), batch {batch_size}: mapping runs {res['mapping_s']} s; bare forward over the "
        f"{res['patches']} grid patches {res['bare_s']} s -> best/best ratio {res['ratio_same_patches']:.3f} "
        f"(target <= {target:.2f}), median per-round ratio {res['median_round_ratio']:.3f}, CPU-time ratio "
        f"{res['cpu_ratio_same_patches']:.3f}; rows sent per mapping {res['rows']} for {res['patches']} patches "
        f"(patches run {res['real_rows']}; at most {padded_max}), forward passes {res['mapping_batches']} "
        f"(minimum {res['min_batches']}); per-round ratios {res['round_ratios']}; pipeline threads' CPU / model "
        f"team's {res['pipeline_cpu_share']}; calling thread off its core {res['caller_off_core']} of the run; "
        f"ratio estimated from the team's scheduler times {res['estimated_ratio']} (the bare runs' own loss "
        f"{res['bare_loss']})"
    )


# ----------------------------------------------------------------------------------------------------------------
# (b), (c): children run in fresh processes and print one JSON line.


def child_geodino(raster: Path, out: Path, chunk: int | None) -> dict[str, float]:
    from geodino.workflows.mapping import map_raster

    base = peak_rss_mb()
    start = time.perf_counter()
    predictor = cheap_predictor()
    map_raster(raster, predictor, out, overlap=CHEAP_OVERLAP, chunk=chunk, overwrite=True, progress=False)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "import_rss_mb": base}


def child_naive(raster: Path, out: Path, chunk: int | None) -> dict[str, float]:
    """Read everything, tile on the same global grid, accumulate full-size arrays, write once."""
    from geodino.raster.blend import window_weights
    from geodino.raster.plan import PatchGrid

    base = peak_rss_mb()
    start = time.perf_counter()
    predictor = cheap_predictor()
    model = predictor.model()
    with rasterio.open(raster) as src:
        data = src.read().astype(np.float32)
    norm = predictor.normalization_for(np.uint8)
    data = norm.apply(data, np.ones(data.shape[1:], dtype=bool))
    h, w = data.shape[1:]
    grid = PatchGrid(h, w, CHEAP_TILE, CHEAP_TILE - CHEAP_OVERLAP)
    weights = window_weights(CHEAP_TILE, "hann")
    pad_h = grid.row_origins()[-1] + CHEAP_TILE - h
    pad_w = grid.col_origins()[-1] + CHEAP_TILE - w
    data = np.pad(data, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    acc = np.zeros((1, h + pad_h, w + pad_w), dtype=np.float32)
    wsum = np.zeros((h + pad_h, w + pad_w), dtype=np.float32)
    with torch.inference_mode():
        for r in grid.row_origins():
            for c in grid.col_origins():
                patch = torch.from_numpy(np.ascontiguousarray(data[None, :, r : r + CHEAP_TILE, c : c + CHEAP_TILE]))
                pred = model(patch)[0].numpy()
                acc[:, r : r + CHEAP_TILE, c : c + CHEAP_TILE] += weights * pred
                wsum[r : r + CHEAP_TILE, c : c + CHEAP_TILE] += weights
    result = (acc / wsum)[:, :h, :w]
    np.save(out.with_suffix(".npy"), result)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "import_rss_mb": base}


def run_child(mode: str, raster: Path, out: Path, chunk: int | None = None) -> dict[str, float]:
    """Run one child role in a fresh interpreter and parse its JSON line."""
    cmd = [sys.executable, __file__, "--child", mode, "--raster", str(raster), "--out", str(out)]
    if chunk:
        cmd += ["--chunk", str(chunk)]
    env = dict(os.environ)
    if mode == "naive":
        env.setdefault("GDAL_CACHEMAX", str(NAIVE_GDAL_CACHE_MB))
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096, help="raster side for (a) at 224 px and for (c)")
    parser.add_argument(
        "--tile512-sizes", type=int, nargs="*", default=[2048, 4096], help="raster sides for (a) at 512 px"
    )
    parser.add_argument("--rss-small", type=int, default=2048, help="small raster side for (b)")
    parser.add_argument("--rss-large", type=int, default=16384, help="large raster side for (b)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="mapping runs in (a), alternating with bare runs")
    parser.add_argument("--rss-chunk", type=int, default=RSS_CHUNK, help="output chunk of both rasters in (b)")
    parser.add_argument("--dpt-size", type=int, default=2048, help="raster side for (d)")
    parser.add_argument("--only", choices=["a", "b", "c", "d"], action="append", help="run only these parts")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", choices=["geodino", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--raster", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role = child_geodino if args.child == "geodino" else child_naive
        print(json.dumps(role(args.raster, args.out, args.chunk)))
        return
    parts = args.only or ["a", "b", "c"]
    # As `geodino map` does before it builds a model; the bare forwards of (a) and (d) run with the same settings.
    tune_allocator()
    why = allocator_state()[1]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"torch threads: {torch.get_num_threads()}; CPU only; allocator: {why}")
        if "a" in parts or "c" in parts:
            raster = make_raster(work / f"r{args.size}.tif", args.size)
        if "a" in parts:
            cases = [(args.size, None, None, 1.10)] + [(size, 512, 64, 1.10) for size in args.tile512_sizes]
            for size, tile, overlap, target in cases:
                tif = raster if size == args.size else make_raster(work / f"r{size}.tif", size)
                res = bench_overhead(tif, work, args.batch_size, args.repeats, tile, overlap)
                print(format_overhead(res, size, args.batch_size, target), flush=True)
        if "d" in parts:
            try:
                import geodino.heads.dpt  # noqa: F401
            except ImportError as err:
                print(f"(d) skipped: the DPT head is not available here ({err})")
            else:
                tif = make_raster(work / f"d{args.dpt_size}.tif", args.dpt_size)
                res = bench_overhead(tif, work, args.batch_size, args.repeats, 512, 64, vit_dpt_predictor)
                print(format_overhead(res, args.dpt_size, args.batch_size, 1.15, "(d)", "DPT head"), flush=True)
        if "b" in parts:
            small_tif = make_raster(work / "small.tif", args.rss_small)
            small = run_child("geodino", small_tif, work / "small.zarr", args.rss_chunk)
            large_tif = make_raster(work / "large.tif", args.rss_large)
            large = run_child("geodino", large_tif, work / "large.zarr", args.rss_chunk)
            print(
                f"(b) cheap 1x1-conv model, tile {CHEAP_TILE}, chunk {args.rss_chunk}: peak RSS {args.rss_large}^2 {large['peak_rss_mb']:.0f} MB "
                f"({large['seconds']:.1f} s) / {args.rss_small}^2 {small['peak_rss_mb']:.0f} MB "
                f"({small['seconds']:.1f} s) = {large['peak_rss_mb'] / small['peak_rss_mb']:.3f} (target <= 1.25); "
                f"after-import baseline {small['import_rss_mb']:.0f} MB; GDAL_CACHEMAX "
                f"{os.environ.get('GDAL_CACHEMAX', f'unset (geodino read ceiling {NAIVE_GDAL_CACHE_MB} MB)')}"
            )
        if "c" in parts:
            geo = run_child("geodino", raster, work / "c.zarr")
            naive = run_child("naive", raster, work / "naive")
            print(
                f"(c) cheap model, {args.size}^2: geodino {geo['seconds']:.1f} s / {geo['peak_rss_mb']:.0f} MB, "
                f"naive in-memory loop {naive['seconds']:.1f} s / {naive['peak_rss_mb']:.0f} MB -> time ratio "
                f"{geo['seconds'] / naive['seconds']:.2f}, peak-memory ratio "
                f"{geo['peak_rss_mb'] / naive['peak_rss_mb']:.2f} (geodino / naive)"
            )


if __name__ == "__main__":
    main()
