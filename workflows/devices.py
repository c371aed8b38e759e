"""Which GPU each Dask worker uses: one worker per visible GPU, each pinned to its own device.

On one machine (``geodino map ... --workers N --device cuda``), :func:`gpu_local_cluster` starts one worker process
per GPU with ``CUDA_VISIBLE_DEVICES`` set to that GPU alone (through the nanny, before CUDA starts), so "cuda" in
worker i is GPU i. More workers than GPUs share them round-robin; fewer use the first ones.

With an existing scheduler (``--scheduler ADDRESS``), the workers were started by someone else, possibly on several
machines: :func:`pin_workers` ranks the workers of each host (by address) and pins worker r of a host to its
``r mod n``-th visible GPU, n counted on that host. A pinned process resolves "cuda" to its own ``cuda:i``
(:func:`resolve_device`); an explicit ``cuda:i`` is never changed.

The assignment is pure (:func:`visible_gpus`, :func:`assign_gpus`, :func:`local_ranks`), so it is tested without GPUs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

_PINNED: str | None = None  # this process's "cuda:i", once pin_workers chose it


def resolve_device(device: str) -> str:
    """The torch device this process should use for ``device``: a pinned worker's own GPU for "cuda"."""
    if device == "cuda" and _PINNED is not None:
        return _PINNED
    return device


def pinned_device() -> str | None:
    """This process's pinned GPU ("cuda:i"), or None."""
    return _PINNED


def wants_gpu_per_worker(device: str | None) -> bool:
    """True for "cuda" (let geodino spread workers over GPUs); an explicit "cuda:i" or "cpu" is used as given."""
    return device == "cuda"


def visible_gpus(environ: Mapping[str, str] | None = None, count: int | None = None) -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (indexes or UUIDs).

    Args:
        environ: Environment to read (default: ``os.environ``).
        count: Number of GPUs CUDA reports when ``CUDA_VISIBLE_DEVICES`` is unset (default:
            ``torch.cuda.device_count()``).

    Returns:
        The entries of ``CUDA_VISIBLE_DEVICES`` up to the first invalid one ("-1" hides every GPU, as in CUDA),
        else "0" .. "count-1".
    """
    env = os.environ if environ is None else environ
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        ids: list[str] = []
        for item in (v.strip() for v in value.split(",")):
            if not item or item.startswith("-"):
                break  # CUDA ignores this entry and every one after it
            ids.append(item)
        return ids
    if count is None:
        import torch

        count = torch.cuda.device_count()
    return [str(i) for i in range(count)]


def assign_gpus(n_workers: int | None, gpus: Sequence[str]) -> list[str]:
    """The GPU of each worker: one worker per GPU by default, round-robin when there are more workers.

    Raises:
        ValueError: If no GPU is visible or ``n_workers`` < 1.
    """
    if not gpus:
        raise ValueError(
            "--device cuda with several workers, but no GPU is visible here (CUDA_VISIBLE_DEVICES or the driver); "
            "use --device cpu"
        )
    n = len(gpus) if n_workers is None else int(n_workers)
    if n < 1:
        raise ValueError(f"workers must be >= 1, got {n}")
    return [gpus[i % len(gpus)] for i in range(n)]


def local_ranks(hosts: Mapping[str, str]) -> dict[str, int]:
    """Rank of each worker among the workers of its host.

    Args:
        hosts: Worker address -> host name (``client.scheduler_info()["workers"][a]["host"]``).

    Returns:
        Worker address -> 0, 1, ... in address order within each host.
    """
    by_host: dict[str, list[str]] = {}
    for address, host in hosts.items():
        by_host.setdefault(host, []).append(address)
    return {a: r for addresses in by_host.values() for r, a in enumerate(sorted(addresses))}


def gpu_local_cluster(gpus: Sequence[str], *, threads_per_worker: int = 1) -> Any:
    """A local Dask cluster of one worker process per entry of ``gpus``, each seeing only that GPU.

    Args:
        gpus: One ``CUDA_VISIBLE_DEVICES`` value per worker (see :func:`assign_gpus`).
        threads_per_worker: Threads of each worker.

    Returns:
        A started ``distributed.SpecCluster`` (close it, or use it as a context manager).
    """
    from distributed import Nanny, Scheduler, SpecCluster

    workers = {
        f"gpu{i}": {
            "cls": Nanny,
            "options": {"nthreads": threads_per_worker, "env": {"CUDA_VISIBLE_DEVICES": str(gpu)}},
        }
        for i, gpu in enumerate(gpus)
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None, "host": "127.0.0.1"}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40, name="geodino-gpus")


def _pin(rank: int, count: int | None = None) -> str | None:
    """Pin this process to its ``rank mod n``-th visible GPU (run on each worker); None where no GPU is visible."""
    global _PINNED
    gpus = visible_gpus(count=count)
    _PINNED = f"cuda:{rank % len(gpus)}" if gpus else None
    return _PINNED


def pin_workers(client: Any, *, count: int | None = None) -> dict[str, str | None]:
    """Pin each worker of a connected cluster to one GPU of its own machine.

    Args:
        client: A ``distributed.Client``.
        count: Fake GPU count for every worker (tests); default: what each worker's CUDA reports.

    Returns:
        Worker address -> the device it now resolves "cuda" to (None: no GPU on that worker).
    """
    workers = client.scheduler_info()["workers"]
    ranks = local_ranks({a: str(w.get("host", a)) for a, w in workers.items()})
    return {a: client.run(_pin, r, count, workers=[a])[a] for a, r in ranks.items()}
