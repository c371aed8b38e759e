"""Running a list of independent chunk tasks with Dask: threads, sync, a LocalCluster or a remote scheduler.

Every task is one Dask task (``func(item, context)``); ``context`` enters the graph once under its own key, so the
distributed scheduler ships it to each worker once rather than once per task. Progress is shown with
``dask.diagnostics.ProgressBar`` for the local schedulers and ``distributed.progress`` for clusters.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import dask

from geodino.errors import SchedulerError
from geodino.workflows.model_thread import serve_forwards

Scheduler = Literal["threads", "sync", "distributed"]
_SCHEDULERS = ("threads", "sync", "distributed")

#: Seconds to wait for an existing Dask scheduler to answer before giving up (distributed's own default is 30 s,
#: retried; a scheduler that is up answers in milliseconds, one on another continent in well under a second).
CONNECT_TIMEOUT_S = 10.0


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
    client: Any = None,
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
        client: A ``distributed.Client`` already connected (see :func:`connect`); used instead of a new one.
        device: The model's device; "cuda" on a cluster gives each worker its own GPU
            (:mod:`geodino.workflows.devices`).

    Returns:
        The tasks' results, in the order of ``items``.

    Raises:
        The first task's exception, once (other tasks' failures are not reported again).
        SchedulerError: The scheduler at ``address`` does not answer within :data:`CONNECT_TIMEOUT_S`.
    """
    if address is not None or client is not None:
        scheduler = "distributed"
    if scheduler not in _SCHEDULERS:
        raise ValueError(f"scheduler must be one of {_SCHEDULERS}, got {scheduler!r}")
    if not items:
        return []
    graph = build_graph(func, items, context, name)
    if scheduler == "distributed":
        if client is not None:
            return _gather(client, graph, progress)
        with distributed_client(workers, address, device) as new:
            return _gather(new, graph, progress)
    bar = _local_progress() if progress else contextlib.nullcontext()
    with bar:
        kwargs: dict[str, Any] = {"scheduler": scheduler}
        if scheduler == "sync":  # the tasks run on this thread, forward passes included
            return list(dask.compute(*graph, **kwargs))
        if workers:
            kwargs["num_workers"] = int(workers)
        # The tasks run on the scheduler's threads; their forward passes run here (geodino.workflows.model_thread).
        return serve_forwards(lambda: list(dask.compute(*graph, **kwargs)))


@contextlib.contextmanager
def _local_progress() -> Iterator[None]:
    from dask.diagnostics import ProgressBar

    with ProgressBar(minimum=0.5):
        yield


@contextlib.contextmanager
def connect(
    scheduler: str, workers: int | None = None, address: str | None = None, device: str | None = None
) -> Iterator[Any]:
    """The ``distributed.Client`` a run needs (None for the local schedulers), connected before anything is written.

    Args:
        scheduler: "threads", "sync" or "distributed".
        workers: LocalCluster worker processes (distributed without ``address``).
        address: An existing scheduler's address.
        device: The model's device; "cuda" gives each worker its own GPU (:mod:`geodino.workflows.devices`).

    Raises:
        SchedulerError: The scheduler does not answer within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    if scheduler == "distributed" or address is not None:
        with distributed_client(workers, address, device) as client:
            yield client
    else:
        yield None


@contextlib.contextmanager
def distributed_client(
    workers: int | None = None, address: str | None = None, device: str | None = None
) -> Iterator[Any]:
    """A ``distributed.Client``: connected to ``address``, or to a new LocalCluster of ``workers`` processes.

    A cluster created here is closed on exit; an existing scheduler is left running. A LocalCluster's workers log
    errors only (a failing task is reported once, by :func:`run_tasks`, not as one traceback per worker).
    With ``device="cuda"``, each worker is pinned to one GPU: a local cluster has one worker per visible GPU
    (``workers`` of them if given), the workers of an existing scheduler use the GPUs of their own machines.

    Raises:
        SchedulerError: The scheduler at ``address`` does not answer within :data:`CONNECT_TIMEOUT_S` seconds.
    """
    from distributed import Client, LocalCluster

    from geodino.workflows import devices

    if address is not None:
        try:
            _probe(address)
            client = Client(address, timeout=f"{CONNECT_TIMEOUT_S}s")
        except (OSError, TimeoutError) as err:
            raise SchedulerError(
                f"no Dask scheduler answered at {address} within {CONNECT_TIMEOUT_S:g} s ({type(err).__name__}); "
                "check the --scheduler address, or leave it out to run on this machine"
            ) from None
        with client:
            if devices.wants_gpu_per_worker(device):
                devices.pin_workers(client)
            yield client
        return
    if devices.wants_gpu_per_worker(device):
        cluster = devices.gpu_local_cluster(devices.assign_gpus(workers, devices.visible_gpus()))
    else:
        cluster = LocalCluster(
            n_workers=int(workers or 2),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )
    with cluster, Client(cluster) as client:
        client.run(one_line_warnings)
        yield client


def one_line_warnings() -> None:
    """Run on a LocalCluster's workers: warnings on one line, as the CLI prints them (no Python source line)."""
    import warnings

    from geodino.errors import show_warning

    warnings.showwarning = show_warning


def _probe(address: str) -> None:
    """Fail at once when nothing listens at a ``tcp://host:port`` address (distributed retries for its timeout).

    Raises:
        OSError: Connection refused, or no answer within :data:`CONNECT_TIMEOUT_S`.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp" or parts.hostname is None or parts.port is None:
        return  # other transports (tls, inproc, ucx): left to distributed
    with socket.create_connection((parts.hostname, parts.port), timeout=CONNECT_TIMEOUT_S):
        pass


def _gather(client: Any, graph: list[Any], progress: bool) -> list[Any]:
    """Compute the graph on a cluster (``distributed.progress`` when asked); the first failure cancels the rest."""
    from distributed import progress as show_progress

    futures = client.compute(graph)
    try:
        if progress:
            show_progress(futures)
        return client.gather(futures)
    except BaseException:
        client.cancel(futures)
        raise
