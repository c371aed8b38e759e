"""The mapping's allocator settings: large buffers reused from batch to batch, never trimmed after each chunk.

The page-fault cases run in fresh interpreters: the settings are process-wide and permanent, and a process whose
environment names glibc malloc parameters must be left alone.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rasters import smooth_scene, write_raster

from geodino.workflows import allocator
from geodino.workflows.mapping import map_raster

glibc = pytest.mark.skipif(allocator._libc() is None, reason="glibc only")

#: A worker thread allocates and frees buffers the sizes of a ViT block's activations, ROUNDS times, and prints
#: the minor page faults of each round. Untuned, glibc maps buffers above 32 MB (its largest dynamic mmap threshold)
#: afresh every time, so their pages fault in again each round; tuned, the thread reuses them once the heap has
#: grown to hold them. torch's CPU buffers, unlike numpy's, are not backed by transparent huge pages, which would
#: hide the faults; one torch thread keeps the work on the thread that allocates.
_CHILD = """
import json, resource, threading
import torch
from geodino.workflows.allocator import allocator_state, tune_allocator
torch.set_num_threads(1)
ROUNDS, SIZES_MB = 16, (12, 38, 50, 12)
tuned = tune_allocator()
faults = []
def work():
    for _ in range(ROUNDS):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        held = [torch.ones(mb * 2**20 // 4) for mb in SIZES_MB]
        del held
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start()
thread.join()
print(json.dumps({"tuned": tuned, "why": allocator_state()[1], "faults": faults}))
"""


def _child(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in allocator.MALLOC_ENV and k != allocator.OPT_OUT_ENV}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], env=clean | env, capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_tuned_allocator_reuses_large_buffers_across_a_threads_batches() -> None:
    tuned = _child()
    untuned = _child(**{allocator.OPT_OUT_ENV: "0"})
    assert tuned["tuned"] is True and untuned["tuned"] is False
    mapped_afresh = (38 + 50) * 2**20 // 4096  # pages of the buffers above 32 MB
    # The last 6 rounds: untuned, each faults the large buffers in again; tuned, all are reused.
    assert sum(untuned["faults"][-6:]) >= 6 * mapped_afresh * 0.9, untuned
    assert sum(tuned["faults"][-6:]) <= 0.1 * mapped_afresh, tuned


@glibc
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "65536"),  # what Dask's nanny sets for its workers
        ("MALLOC_ARENA_MAX", "4"),
        ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=131072"),
        (allocator.OPT_OUT_ENV, "off"),
    ],
)
def test_malloc_parameters_chosen_in_the_environment_are_left_alone(name: str, value: str) -> None:
    got = _child(**{name: value})
    assert got["tuned"] is False
    assert name in str(got["why"])


def test_untuned_process_trims_after_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: calls.append(1))
    monkeypatch.setitem(allocator._STATE, "tuned", False)
    allocator.release_after_chunk()
    assert calls == [1]
    monkeypatch.setitem(allocator._STATE, "tuned", True)
    allocator.release_after_chunk()
    assert calls == [1]


def test_run_end_keeps_freed_memory_up_to_an_eighth_of_memory_when_tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(allocator, "release_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(allocator, "memory_limit_bytes", lambda: 24 * 2**30)  # this development machine
    monkeypatch.setitem(allocator._STATE, "tuned", True)
    keep = 3 * 2**30
    assert allocator.keep_after_run_bytes() == keep
    # 1.8-2.0 GB: what a 4096² run at tile 512 left free here; it used to be trimmed (the bound was 1 GiB).
    for free, trims in ((0, 0), (2 * 10**9, 0), (keep, 0), (keep + 1, 1), (None, 1)):
        calls.clear()
        monkeypatch.setattr(allocator, "free_heap_bytes", lambda free=free: free)
        allocator.release_after_run()
        assert len(calls) == trims, free
    monkeypatch.setitem(allocator._STATE, "tuned", False)  # untuned: always, whatever is free
    monkeypatch.setattr(allocator, "free_heap_bytes", lambda: 0)
    calls.clear()
    allocator.release_after_run()
    assert calls == [1]


@pytest.mark.parametrize(
    ("limit", "keep"),
    [(None, allocator.TRIM_THRESHOLD_BYTES), (4 * 2**30, allocator.TRIM_THRESHOLD_BYTES), (64 * 2**30, 8 * 2**30)],
)
def test_keep_after_run_is_an_eighth_of_memory_but_at_least_the_trim_threshold(
    monkeypatch: pytest.MonkeyPatch, limit: int | None, keep: int
) -> None:
    monkeypatch.setattr(allocator, "memory_limit_bytes", lambda: limit)
    assert allocator.keep_after_run_bytes() == keep


def test_memory_limit_is_the_lower_of_physical_memory_and_the_cgroup_limit(tmp_path: Path) -> None:
    physical = allocator.memory_limit_bytes(cgroup_files=())
    assert physical is not None and physical == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    files = (str(v2), str(v1))
    assert allocator.memory_limit_bytes(cgroup_files=files) == physical  # neither file: no cgroup limit
    v1.write_text(f"{2**31}\n")
    assert allocator.memory_limit_bytes(cgroup_files=files) == min(physical, 2**31)
    v2.write_text("max\n")  # v2 first: unlimited there
    assert allocator.memory_limit_bytes(cgroup_files=files) == physical
    v2.write_text(f"{physical * 4}\n")  # above physical memory (v1's "no limit" is 2^63 rounded to pages)
    assert allocator.memory_limit_bytes(cgroup_files=files) == physical
    v2.write_text(f"{3 * 2**30}\n")
    assert allocator.memory_limit_bytes(cgroup_files=files) == min(physical, 3 * 2**30)


def test_cgroup_limit_files_start_with_this_processs_own_v2_cgroup(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/slurm-job-7.scope\n")
    assert allocator._cgroup_limit_files(str(proc)) == (
        "/sys/fs/cgroup/system.slice/slurm-job-7.scope/memory.max",
        *allocator.CGROUP_MEMORY_LIMITS,
    )
    proc.write_text("12:memory:/\n0::/\n")  # the root cgroup (or v1 only): the container's view
    assert allocator._cgroup_limit_files(str(proc)) == allocator.CGROUP_MEMORY_LIMITS
    assert allocator._cgroup_limit_files(str(tmp_path / "absent")) == allocator.CGROUP_MEMORY_LIMITS


@glibc
def test_free_heap_bytes_sees_freed_buffers() -> None:
    if not hasattr(allocator._libc(), "mallinfo2"):
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    libc = allocator._libc()
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 256 blocks of 64 KiB: below glibc's smallest mmap threshold (128 KiB) and above its tcache and fastbins, so
    # they come from this thread's heap; a guard block after them keeps them off the heap's top, which could be
    # trimmed when they are freed. Freed, they stay in the free lists: 16 MiB more free bytes.
    size, count = 64 * 2**10, 256
    blocks = [libc.malloc(size) for _ in range(count)]
    guard = libc.malloc(size)
    held = allocator.free_heap_bytes()
    for block in blocks:
        libc.free(block)
    after = allocator.free_heap_bytes()
    libc.free(guard)
    assert held is not None and after is not None
    assert after - held >= size * count


@glibc
def test_map_raster_tunes_the_allocator_and_never_trims_small_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In this process (whose environment sets no malloc parameter): tuned before the run, no trim per chunk and none
    at its end while little is free; untuned, one per chunk and one at the end; the stores are the same."""
    for name in (*allocator.MALLOC_ENV, allocator.OPT_OUT_ENV):
        monkeypatch.delenv(name, raising=False)
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        pytest.skip("this process's environment sets glibc malloc tunables")
    scene = write_raster(tmp_path / "scene.tif", smooth_scene(3, 128, 192, seed=3, dtype=np.uint8))
    trims: list[int] = []

    monkeypatch.setattr(allocator, "release_freed_memory", lambda: trims.append(1))
    monkeypatch.setattr(allocator, "free_heap_bytes", lambda: 2**20)  # what this run left free: 1 MB
    kwargs = {"tile": 64, "overlap": 16, "chunk": 48, "progress": False}
    tuned = map_raster(scene, "model_factories:small_conv", tmp_path / "tuned.zarr", **kwargs)
    assert allocator.allocator_state() == (True, "tuned")
    assert trims == []  # 12 chunks, and the run's end with 1 MB free

    trims.clear()
    monkeypatch.setitem(allocator._STATE, "tuned", False)
    untuned = map_raster(scene, "model_factories:small_conv", tmp_path / "untuned.zarr", **kwargs)
    assert len(trims) == 12 + 1  # every chunk, and the run's end
    np.testing.assert_array_equal(tuned["prediction"].values, untuned["prediction"].values)
