"""The C allocator under a mapping: keep the forward pass's buffers mapped between batches (glibc only).

A ViT forward allocates and frees the same large activation buffers in every batch (a ViT-S/16 on 8 x 512² patches:
tens of buffers of 12-64 MB). glibc serves buffers above its mmap threshold (at most 32 MB, dynamically) with fresh
``mmap`` calls and unmaps them on ``free``; smaller ones come from per-thread arenas, which give their free tops
back past the trim threshold; and the mapping used to trim every arena after each chunk. Each page handed back is
faulted in and zeroed again by the next batch: mapping 4096² at tile 512 on the 2-core development machine took
about 3.1 million minor page faults (280,000 per forward pass, a gigabyte zeroed each time), against 240,000 with
the settings below; the mapping's CPU time over the bare forward passes' went from 1.14-1.16x to 1.02-1.10x
(benchmark (a) and ``benchmarks/profile_mapping.py``).

:func:`tune_allocator` therefore sets, once per process, one arena for the threads that start afterwards, an mmap
threshold of 256 MiB and a trim threshold of 1 GiB (``mallopt``), so the forward's buffers are reused from batch to
batch; the mapping then never trims after a chunk, and at a run's end only when more is free than an eighth of the
machine's memory (at least the trim threshold; :func:`release_after_run`), so the next run reuses the rest. These
settings are process-wide and last for the process's life (glibc cannot return to its dynamic thresholds). Memory
stays bounded by what one forward pass and the chunks in flight need, not the raster: the heap keeps what they held
at their peak, plus what ``posix_memalign``'s padding strands between buffers (measured: mapping 2048² at tile 512
peaked at 1.4-1.6 GB tuned and 1.4-1.5 GB untuned; buffers the sizes of a ViT-L/16's activations, allocated in a
loop, 0.9-1.2 GB tuned against 0.4 GB untuned, which mapped them afresh, 1.8 million faults per 10 rounds).
``GEODINO_TUNE_MALLOC=0`` trades that speed back for memory.

Left alone: other C libraries and platforms (a no-op), a process whose environment already sets glibc's malloc
parameters (``MALLOC_ARENA_MAX``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``GLIBC_TUNABLES`` with ``glibc.malloc``; Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` for its workers), and any
process with ``GEODINO_TUNE_MALLOC=0``. There the mapping trims after every chunk, as before.

glibc chooses a thread's arena at its first allocation, so the earlier the better: :func:`~geodino.workflows.
mapping.map_raster` calls this before it builds its model, and a script that builds its own model first can call it
before that. The forward passes themselves run on the thread that started the run
(:mod:`geodino.workflows.model_thread`), the main thread in scripts and the CLI, whose arena is always glibc's main
one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import threading
from typing import Any

#: Environment variable that turns the tuning off ("0", "false", "no", "off").
OPT_OUT_ENV = "GEODINO_TUNE_MALLOC"
#: glibc malloc parameters set through the environment; any of them means the user (or Dask's nanny) chose.
MALLOC_ENV = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
#: Buffers below this size come from the heap and are reused: a ViT-L/16's largest activations at 8 x 512² patches
#: (MLP hidden, 135 MB) included. (With 64 MiB, those were still mapped afresh for every block of every batch.)
MMAP_THRESHOLD_BYTES = 256 * 2**20
#: The heap keeps up to this much free memory at its top instead of giving it back to the OS.
TRIM_THRESHOLD_BYTES = 2**30
#: A finished run keeps what it freed (for the next run) while that is at most this share of the memory the
#: process may use (physical memory, or its cgroup's limit), and never less than ``TRIM_THRESHOLD_BYTES``.
KEEP_AFTER_RUN_SHARE = 1 / 8
#: Where a cgroup (v2, then v1) states the memory limit of the processes in it, as seen from inside a container.
CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")

# mallopt parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"tuned": False, "why": "not tried yet"}


@functools.cache
def _libc() -> Any | None:
    """glibc, or None on other C libraries and platforms."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p  # absent from musl and others: AttributeError
        libc.gnu_get_libc_version()
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


def _skip_reason() -> str | None:
    """Why the allocator must be left as it is, or None."""
    if os.environ.get(OPT_OUT_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return f"{OPT_OUT_ENV}={os.environ[OPT_OUT_ENV]}"
    chosen = [name for name in MALLOC_ENV if name in os.environ]
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        return f"malloc parameters set in the environment ({', '.join(chosen)})"
    if _libc() is None:
        return "not glibc"
    return None


def tune_allocator() -> bool:
    """Keep freed large buffers mapped for reuse (one arena, 256 MiB mmap and 1 GiB trim thresholds); once per process.

    Returns:
        True if the settings are in place (now or from an earlier call), False where they were left alone (see the
        module docstring; :func:`allocator_state` says why).
    """
    with _LOCK:
        if _STATE["tuned"] or _STATE["why"] != "not tried yet":
            return bool(_STATE["tuned"])
        why = _skip_reason()
        if why is None:
            libc = _libc()
            # Arenas first: threads that allocate from now on share the main arena (an sbrk heap, whose buffers
            # of any size can be reused; other arenas cap theirs at 64 MB and mmap anything larger).
            ok = all(
                libc.mallopt(param, value) == 1
                for param, value in (
                    (_M_ARENA_MAX, 1),
                    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                    (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                )
            )
            why = None if ok else "mallopt refused a setting"
        _STATE.update(tuned=why is None, why=why or "tuned")
        return bool(_STATE["tuned"])


def allocator_state() -> tuple[bool, str]:
    """``(tuned, why)``: whether :func:`tune_allocator` changed the allocator in this process, and why not."""
    with _LOCK:
        return bool(_STATE["tuned"]), str(_STATE["why"])


def release_freed_memory() -> None:
    """Hand memory freed by finished work back to the OS (glibc's ``malloc_trim(0)``; a no-op elsewhere).

    Costs about a millisecond, and the next large allocations fault their pages in again.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (2.33 and later): every field a ``size_t``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def free_heap_bytes() -> int | None:
    """Bytes freed by the program that glibc still holds in its arenas (``mallinfo2().fordblks``, all arenas).

    Returns:
        The byte count, or None where it cannot be known (not glibc, or glibc older than 2.33).
    """
    libc = _libc()
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return int(mallinfo2().fordblks)


def release_after_chunk() -> None:
    """After a chunk: trim only where the allocator is not tuned.

    Untuned, glibc keeps freed chunk-sized buffers in its per-thread arenas (and raises its mmap threshold after
    each large free, so later buffers of that size come from the arenas too): without trimming, resident memory
    creeps up with the number of chunks a run has processed. Tuned, there is one arena whose free buffers the next
    chunk and batch reuse, and the run trims once at its end.
    """
    if not allocator_state()[0]:
        release_freed_memory()


def _cgroup_limit_files(proc_cgroup: str = "/proc/self/cgroup") -> tuple[str, ...]:
    """This process's own cgroup v2 ``memory.max`` (named in ``proc_cgroup``; a batch job's or a service's slice),
    then :data:`CGROUP_MEMORY_LIMITS`."""
    own: tuple[str, ...] = ()
    try:
        with open(proc_cgroup) as file:
            for line in file:
                if line.startswith("0::/") and line.strip() != "0::/":
                    own = (f"/sys/fs/cgroup{line.strip()[3:]}/memory.max",)
    except OSError:
        pass
    return own + CGROUP_MEMORY_LIMITS


def memory_limit_bytes(cgroup_files: tuple[str, ...] | None = None) -> int | None:
    """The memory this process may use: physical memory, or its cgroup's limit where one is set and lower.

    Args:
        cgroup_files: Files that may hold the cgroup's limit in bytes (the first readable one counts; "max" or a
            value above physical memory means no limit); default: :func:`_cgroup_limit_files`.

    Returns:
        Bytes, or None where physical memory cannot be read (``os.sysconf`` unsupported).
    """
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    for name in _cgroup_limit_files() if cgroup_files is None else cgroup_files:
        try:
            with open(name) as file:
                text = file.read().strip()
        except OSError:
            continue
        return min(physical, int(text)) if text.isdigit() else physical
    return physical


def keep_after_run_bytes() -> int:
    """Most freed memory a finished run keeps for the next one: ``KEEP_AFTER_RUN_SHARE`` of
    :func:`memory_limit_bytes`, at least ``TRIM_THRESHOLD_BYTES`` (that alone where the limit is unknown)."""
    limit = memory_limit_bytes()
    return TRIM_THRESHOLD_BYTES if limit is None else max(TRIM_THRESHOLD_BYTES, int(limit * KEEP_AFTER_RUN_SHARE))


def release_after_run() -> None:
    """At a run's end: trim, unless the allocator is tuned and holds at most :func:`keep_after_run_bytes` freed.

    Keeping what a finished run freed lets the next run in this process (a script or notebook mapping one scene
    after another) reuse it instead of faulting it in and zeroing it again. A run's free memory at its end is about
    its pipeline's peak (chunks in flight, accumulators, reads opened ahead), which grows with the chunk and the
    thread count, not with the raster. Measured on the 2-core development machine (24 GiB) with a ViT-S/16, run
    after run in one process (``benchmarks/mapping_repeat.py``; ``--keep-mib 1024`` for the former bound):

    - 2048² at tile 224: 37,000-78,000 minor page faults and 0.8-1.3 s of system time per run with a trim at each
      run's end, against 70-16,000 faults and 0.2-0.3 s without; 300-800 MB was free at the end.
    - 4096²: 1.1-1.2 GB was free at tile 224 and 1.8-2.0 GB at tile 512, above the former fixed bound of 1 GiB.
      Trimmed, every later run faulted 0.4-0.9 GB in again as transparent huge pages (50,000-200,000 faults and
      2.8-3.6 s of system time per run of about 50 s); kept, 70-4,500 faults and 1.2-1.4 s.

    Where more is free, or the amount cannot be read, or the allocator was not tuned, everything free is handed
    back (:func:`release_freed_memory`).
    """
    if allocator_state()[0]:
        free = free_heap_bytes()
        if free is not None and free <= keep_after_run_bytes():
            return
    release_freed_memory()
