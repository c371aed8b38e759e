"""Mapping run after run in one process: what each run costs in page faults and system time, next to bare forwards.

Not a test. Maps benchmark (a)'s model (ViT-S/16 + linear head, random weights, CPU) over a generated raster
``--runs`` times in one process, with a bare forward over the same number of batches after each run, and prints per
run: wall, user and system time, minor page faults, transparent huge pages faulted in (``thp_fault_alloc`` from
``/proc/vmstat``, system-wide), and the heap's free bytes at the end (glibc ``mallinfo2``). This is where a trim at a
run's end shows: every later run faults the trimmed memory in again.

``--keep-mib N`` replaces :func:`geodino.workflows.allocator.keep_after_run_bytes` with N MiB (1024: the fixed
bound used before; compare with the default).

Run: ``python benchmarks/mapping_repeat.py --size 4096 --tile 512 --overlap 64``
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mapping import make_raster, vit_linear_predictor  # benchmarks/mapping.py


def _usage() -> tuple[float, float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def _huge_pages() -> int:
    """Transparent huge pages faulted in so far, system-wide (-1 where the kernel does not say)."""
    try:
        stats = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
    except OSError:
        return -1
    return int(stats.get("thp_fault_alloc", -1))


def _line(label: str, start: tuple[float, tuple[float, float, int], int], extra: str = "") -> str:
    wall, (user, system, faults), huge = start
    now_user, now_system, now_faults = _usage()
    return (
        f"{label}: wall {time.perf_counter() - wall:6.2f} s  user {now_user - user:6.2f} s  "
        f"system {now_system - system:5.2f} s  minor faults {now_faults - faults:7d}  "
        f"huge pages {_huge_pages() - huge:4d}{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tile", type=int, default=224)
    parser.add_argument("--overlap", type=int, default=56)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep-mib", type=int, default=None, help="freed memory a run keeps, instead of the default")
    args = parser.parse_args()

    from geodino.workflows import allocator

    allocator.tune_allocator()  # as geodino map does, before any model is built
    if args.keep_mib is not None:
        allocator.keep_after_run_bytes = lambda: args.keep_mib * 2**20
    from geodino.raster.source import RasterSource
    from geodino.workflows.mapping import _plan_grid, map_raster

    print(f"allocator: {allocator.allocator_state()[1]}; keeps up to {allocator.keep_after_run_bytes() >> 20} MiB")
    predictor = vit_linear_predictor(args.batch_size)
    model = predictor.model()
    with tempfile.TemporaryDirectory() as tmp:
        raster = make_raster(Path(tmp) / "r.tif", args.size)
        grid = _plan_grid(RasterSource(raster), predictor, args.tile, args.overlap)
        batches = math.ceil(grid.num_patches / args.batch_size)
        x = torch.randn(args.batch_size, 3, grid.patch, grid.patch)
        for run in range(args.runs):
            start = (time.perf_counter(), _usage(), _huge_pages())
            map_raster(raster, predictor, Path(tmp) / "a.zarr", tile=args.tile, overlap=args.overlap,
                       overwrite=True, progress=False)  # fmt: skip
            free = allocator.free_heap_bytes()
            print(_line(f"map  {run}", start, "" if free is None else f"  free at the end {free >> 20} MiB"))
            start = (time.perf_counter(), _usage(), _huge_pages())
            with torch.inference_mode():
                for _ in range(batches):
                    model(x)
            print(_line(f"bare {run}", start), flush=True)


if __name__ == "__main__":
    main()
