"""Where a mapping's CPU time goes, next to the bare forward over the same patches (robust to a loaded machine).

Not a test. Runs benchmark (a)'s model (ViT-S/16 + linear head, random weights, CPU) on a generated raster at the
given tile and overlap, once as bare forwards of full batches and once through ``map_raster``, and prints:

- process CPU time (user + system, all threads) and wall time of both, and their ratios;
- per component, the CPU time of the threads that ran it (``time.thread_time``; torch's OpenMP workers are not
  counted there, they appear per thread below): reading, normalising, the forward passes (and what the
  queue does around them), blending, finishing, class maps, Zarr writes, store creation and opening; and the
  wall time of their calls (with ``--scheduler sync`` nothing overlaps: a Zarr write's wall time includes the
  store's own I/O thread, which its CPU time does not);
- per thread alive at the end, its CPU time during the mapping (from ``/proc/self/task``), by name;
- the threads alive while forward passes run, and ``torch.get_num_threads()`` as seen from the calling threads;
- with ``--paired``, each forward pass of the mapping next to a bare forward run right after it: this machine's
  speed drifts by 10% and more within a minute, so whether the mapping's own passes are slower than bare ones can
  only be told from pairs measured at the same moment (the mapping's totals then include the paired passes).

Run: ``python benchmarks/profile_mapping.py --size 2048 --tile 512 --overlap 64``; where the time outside the
forward passes goes at the 224-px tile: ``--size 4096 --tile 224 --overlap 56 --scheduler sync``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mapping import (
    ThreadStat,
    bare_forward_threads,
    cpu_seconds,
    make_raster,
    thread_delta,
    thread_stats,
    vit_linear_predictor,
)

_CPU: dict[str, float] = defaultdict(float)
_WALL: dict[str, float] = defaultdict(float)
_CALLS: dict[str, int] = defaultdict(int)
_SEEN: dict[str, set[int]] = defaultdict(set)
_TORCH_THREADS: set[int] = set()
_THREADS_IN_FORWARD: list[int] = []
_PAIRS: list[tuple[float, float]] = []
_LOCK = threading.Lock()


def _timed(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` accumulating the calling thread's CPU time and the wall time of its calls under ``name`` (nested
    timers count in both)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start, wall = time.thread_time(), time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            spent, waited = time.thread_time() - start, time.perf_counter() - wall
            with _LOCK:
                _CPU[name] += spent
                _WALL[name] += waited
                _CALLS[name] += 1
                _SEEN[name].add(threading.get_ident())

    return wrapper


def _patch(obj: Any, attr: str, name: str) -> None:
    setattr(obj, attr, _timed(name, getattr(obj, attr)))


def instrument(paired: tuple[torch.nn.Module, torch.Tensor] | None = None) -> None:
    """Wrap the mapping's components with CPU-time accounting (module attributes, so the workflow's own calls
    go through the wrappers); with ``paired`` (model, batch), follow each forward pass with a bare one."""
    from geodino.raster import normalize, source
    from geodino.workflows import batching, mapping, predictor, sink

    _patch(source.RasterSource, "read", "read")
    _patch(normalize.Normalization, "apply", "normalise")
    _patch(mapping, "_open_chunk", "open chunk (read+normalise+plan)")
    _patch(mapping, "accumulate_patch", "blend: accumulate_patch")
    _patch(mapping, "valid_to_output", "blend: valid_to_output")
    _patch(mapping, "finalize", "finalize")
    _patch(mapping, "chunk_outputs", "class map (chunk_outputs)")
    _patch(mapping, "predict_chunk", "predict_chunk (all of it)")
    _patch(mapping, "release_after_chunk", "malloc_trim (untuned allocator only)")
    _patch(mapping.ZarrSink, "create", "store create")
    _patch(sink.ZarrSink, "write", "zarr write")
    _patch(sink.ZarrSink, "mark_done", "zarr mark_done")
    _patch(mapping, "open_output", "open_output")
    _patch(mapping, "_new_manifest", "manifest (digests)")
    _patch(batching.BatchQueue, "_execute", "batch: stack + predictor + hand out")
    _patch(predictor.Predictor, "__call__", "predictor call (pad, concat, check)")
    forward = predictor.Predictor._forward

    def counted_forward(self: Any, x: torch.Tensor) -> Any:
        with _LOCK:
            _THREADS_IN_FORWARD.append(threading.active_count())
            _TORCH_THREADS.add(torch.get_num_threads())
        return forward(self, x)

    timed = _timed("forward (calling thread only)", counted_forward)
    if paired is None:
        predictor.Predictor._forward = timed  # type: ignore[method-assign]
        return
    model, x = paired

    def paired_forward(self: Any, batch: torch.Tensor) -> Any:
        start = time.perf_counter()
        out = timed(self, batch)
        spent = time.perf_counter() - start
        with torch.inference_mode():
            start = time.perf_counter()
            model(x)
            _PAIRS.append((spent, time.perf_counter() - start))
        return out

    predictor.Predictor._forward = paired_forward  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="threads of the threaded scheduler")
    parser.add_argument(
        "--scheduler",
        choices=["threads", "sync"],
        default="threads",
        help="sync: every step on one thread, so the wall times of the components add up to the mapping's",
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads before running")
    parser.add_argument("--cprofile", type=Path, default=None, help="also write a cProfile of the mapping here")
    parser.add_argument(
        "--paired", action="store_true", help="follow each of the mapping's forward passes with a bare one (timed)"
    )
    args = parser.parse_args()

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    from geodino.workflows.allocator import tune_allocator

    tune_allocator()  # as geodino map does, before any model is built
    from geodino.raster.source import RasterSource
    from geodino.workflows.mapping import _plan_grid, map_raster

    predictor = vit_linear_predictor(args.batch_size)
    model = predictor.model()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raster = make_raster(work / "r.tif", args.size)
        grid = _plan_grid(RasterSource(raster), predictor, args.tile, args.overlap)
        batches = math.ceil(grid.num_patches / args.batch_size)
        x = torch.randn(args.batch_size, 3, grid.patch, grid.patch)
        bare_forward_threads(model, x, 1)  # warm-up
        # A warm-up mapping too (imports, Dask's thread pool, zarr codecs), uninstrumented.
        map_raster(raster, predictor, work / "w.zarr", tile=args.tile, overlap=args.overlap, progress=False)
        b_wall, b_cpu, b_threads = bare_forward_threads(model, x, batches)
        instrument((model, x) if args.paired else None)
        from geodino.workflows import mapping

        profiler = None
        if args.cprofile:
            import cProfile

            profiler = cProfile.Profile()
        before = thread_stats()
        wall, cpu = time.perf_counter(), cpu_seconds()
        if profiler:
            profiler.enable()
        mapping.map_raster(
            raster,
            predictor,
            work / "a.zarr",
            tile=args.tile,
            overlap=args.overlap,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=False,
        )
        if profiler:
            profiler.disable()
            profiler.dump_stats(str(args.cprofile))
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        m_threads = thread_delta(before, thread_stats())
        b2_wall, b2_cpu, _ = bare_forward_threads(model, x, batches)
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"{args.size}^2 tile {grid.patch} overlap {grid.patch - grid.stride}: {grid.num_patches} patches, "
        f"{batches} batches of {args.batch_size}; load {' '.join(load)}"
    )
    print(f"bare forward: wall {b_wall:.2f} / {b2_wall:.2f} s, CPU {b_cpu:.2f} / {b2_cpu:.2f} s (before / after)")
    bw, bc = (b_wall + b2_wall) / 2, (b_cpu + b2_cpu) / 2
    print(f"mapping:      wall {wall:.2f} s ({wall / bw:.3f}x), CPU {cpu:.2f} s ({cpu / bc:.3f}x)")
    print(f"extra CPU over the mean bare forward: {cpu - bc:.2f} s")
    print(f"component CPU (threads that called it) and wall time of the calls (summed over threads), {args.scheduler}:")
    for name in sorted(_CPU, key=lambda n: -_WALL[n]):
        print(
            f"  {name:42s} CPU {_CPU[name]:7.2f} s  wall {_WALL[name]:7.2f} s  calls {_CALLS[name]:4d}  "
            f"threads {len(_SEEN[name])}"
        )
    print("threads, CPU and minor page faults during the mapping (vs the first bare forward):")
    for tid, stat in sorted(m_threads.items(), key=lambda t: -t[1].on_core):
        b_stat = b_threads.get(tid, ThreadStat("", 0.0, 0.0, 0))
        if stat.on_core > 0.005 or b_stat.on_core > 0.005:
            print(
                f"  {tid:8d} {stat.name:16s} {stat.on_core:7.2f} s {stat.faults:8d} faults   "
                f"(bare {b_stat.on_core:.2f} s {b_stat.faults} faults)"
            )
    total = sum(t.faults for t in m_threads.values()), sum(t.faults for t in b_threads.values())
    print(f"minor page faults: mapping {total[0]}, bare forward {total[1]}")
    print(
        f"threads alive during forwards: {sorted(set(_THREADS_IN_FORWARD))}; torch.get_num_threads() in the "
        f"calling threads: {sorted(_TORCH_THREADS)}"
    )
    if _PAIRS:
        ours, theirs = (sum(p[i] for p in _PAIRS) for i in (0, 1))
        each = sorted(p[0] / p[1] for p in _PAIRS)
        print(
            f"paired ({len(_PAIRS)} pairs; the mapping's totals above include the bare passes): the mapping's "
            f"forward passes (softmax and output included) {ours:.2f} s, the bare passes right after them "
            f"{theirs:.2f} s: {ours / theirs:.3f}x in sum, median pair {each[len(each) // 2]:.3f}x"
        )


if __name__ == "__main__":
    main()
