"""Running a list of independent chunk tasks with Dask: threads, sync, a LocalCluster or a remote scheduler.

Every task is one Dask task (``func(item, context)``); ``context`` enters the graph once under its own key, so the
distributed scheduler ships it to each worker once rather than once per task. Progress is shown with
``dask.diagnostics.ProgressBar`` for the local schedulers and ``distributed.progress`` for clusters.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import dask

Scheduler = Literal["threads", "sync", "distributed"]
_SCHEDULERS = ("threads", "sync", "distributed")


def build_graph(func: Callable[[Any, Any], Any], items: Sequence[Any], context: Any, name: str) -> list[Any]:
    """One delayed task per item, all sharing one ``context`` node.

    Args:
        func: ``func(item, context) -> result``; must be importable (pickled by reference) for clusters.
        items: Task inputs (picklable).
        context: Shared, picklable state (source, model, sink...).
        name: Prefix of the task keys (shown by progress bars and dashboards).

    Returns:
        Delayed objects, one per item.
    """
    token = uuid.uuid4().hex[:8]
    shared = dask.delayed(context, name=f"{name}-context-{token}", traverse=False)
    task = dask.delayed(func, pure=False)
    # Dask runs independent tasks in descending key order; zero-padded descending suffixes make that the items'
    # order (row-major chunks: border patches shared with the next chunk row wait the shortest time).
    n = len(items)
    width = len(str(max(n - 1, 0)))
    return [task(item, shared, dask_key_name=f"{name}-{token}-{n - 1 - i:0{width}d}") for i, item in enumerate(items)]


def run_tasks(
    func: Callable[[Any, Any], Any],
    items: Sequence[Any],
    context: Any,
    *,
    scheduler: Scheduler = "threads",
    workers: int | None = None,
    address: str | None = None,
    progress: bool = True,
    name: str = "geodino-chunk",
    device: str | None = None,
) -> list[Any]:
    """Run ``func(item, context)`` for every item and return the results in order.

    Args:
        func: The task function.
        items: Task inputs.
        context: Shared state, sent to each worker once.
        scheduler: "threads" (default, one process), "sync" (no parallelism; debugging), or "distributed"
            (a ``LocalCluster`` of ``workers`` processes, or the scheduler at ``address``).
        workers: Threads for "threads"; worker processes for a LocalCluster.
        address: Address of an existing Dask scheduler (implies "distributed").
        progress: Show a progress bar.
        name: Task-key prefix.
        device: The model's device; "cuda" on a cluster gives each worker its own GPU
            (:mod:`geodino.workflows.devices`).

    Returns:
        The tasks' results, in the order of ``items``.
    """
    if address is not None:
        scheduler = "distributed"
    if scheduler not in _SCHEDULERS:
        raise ValueError(f"scheduler must be one of {_SCHEDULERS}, got {scheduler!r}")
    if not items:
        return []
    graph = build_graph(func, items, context, name)
    if scheduler == "distributed":
        return _run_distributed(graph, workers=workers, address=address, progress=progress, device=device)
    bar = _local_progress() if progress else contextlib.nullcontext()
    with bar:
        kwargs: dict[str, Any] = {"scheduler": scheduler}
        if scheduler == "threads" and workers:
            kwargs["num_workers"] = int(workers)
        return list(dask.compute(*graph, **kwargs))


@contextlib.contextmanager
def _local_progress() -> Iterator[None]:
    from dask.diagnostics import ProgressBar

    with ProgressBar(minimum=0.5):
        yield


@contextlib.contextmanager
def distributed_client(
    workers: int | None = None, address: str | None = None, device: str | None = None
) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``address``, or to a new LocalCluster of ``workers`` processes.

    With ``device="cuda"``, each worker is pinned to one GPU: a local cluster has one worker per visible GPU
    (``workers`` of them if given), the workers of an existing scheduler use the GPUs of their own machines.
    A cluster created here is closed on exit; an existing scheduler is left running.
    """
    from distributed import Client, LocalCluster

    from geodino.workflows import devices

    if address is not None:
        with Client(address) as client:
            if devices.wants_gpu_per_worker(device):
                devices.pin_workers(client)
            yield client
        return
    if devices.wants_gpu_per_worker(device):
        cluster = devices.gpu_local_cluster(devices.assign_gpus(workers, devices.visible_gpus()))
    else:
        cluster = LocalCluster(
            n_workers=int(workers or 2), threads_per_worker=1, processes=True, dashboard_address=None
        )
    with cluster, Client(cluster) as client:
        yield client


def _run_distributed(
    graph: list[Any], *, workers: int | None, address: str | None, progress: bool, device: str | None = None
) -> list[Any]:
    """Compute the graph on a cluster, with ``distributed.progress`` when asked."""
    from distributed import progress as show_progress

    with distributed_client(workers, address, device) as client:
        futures = client.compute(graph)
        if progress:
            show_progress(futures)
        return client.gather(futures)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on other C libraries and platforms."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> None:
    """Hand memory freed by finished work back to the OS (glibc's ``malloc_trim(0)``; a no-op elsewhere).

    glibc keeps freed chunk-sized buffers in its per-thread arenas (and raises its mmap threshold after each large
    free, so later buffers of that size come from the arenas too); without trimming, a process's resident memory
    creeps up with the number of chunks a run has processed. Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` for the
    same reason; this does it for the threaded scheduler too. Costs about a millisecond per call.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
