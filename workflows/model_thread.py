"""Every forward pass of a threaded run on one thread: the one that started the run.

Under Dask's threaded scheduler the chunk tasks run in the scheduler's worker threads, and a batch used to run on
whichever of them asked for it. Forward passes then alternated between threads, each with its own OpenMP team and
its own glibc arena (a non-main arena maps and unmaps buffers above 64 MB, and drops its heaps when they empty, so
every batch faulted its activations in again). :func:`serve_forwards` instead runs the scheduler in a helper
thread while the calling thread, the one that started the run (the main thread in a script, a notebook or the
CLI), runs every forward pass handed to it through :func:`run_forward`: one OpenMP team, glibc's main arena.

Measured on the 2-core development machine, mapping 2048² at tile 512 with a ViT-S/16 built before the first run
(so that arenas already existed when :func:`geodino.workflows.allocator.tune_allocator` ran): 330,000-380,000
minor page faults per run with the forward passes on the worker threads, 120,000 on the calling thread, and
18.9 s against 20.0 s (medians of 4 interleaved runs). Where the allocator was tuned before the model was built,
both placements ran equally fast.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Longest the calling thread waits for the scheduler's thread to wind down after Ctrl-C before re-raising.
INTERRUPT_JOIN_S = 10.0


class RunInterruptedError(RuntimeError):
    """The thread that runs the forward passes stopped (Ctrl-C) before it ran this one."""


class _Job(Generic[T]):
    """One call handed to the model thread, and its outcome."""

    def __init__(self, fn: Callable[[], T]):
        self.fn = fn
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Run the call on this thread; an ``Exception`` goes back to the caller, anything else also goes up here."""
        try:
            self.result = self.fn()
        except Exception as err:
            self.error = err
        except BaseException as err:  # KeyboardInterrupt: the caller gets it too, and this thread stops serving
            self.error = err
            raise
        finally:
            self.done.set()

    def fail(self, err: BaseException) -> None:
        self.error = err
        self.done.set()

    def wait(self) -> T:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class _ModelThread:
    """The thread serving forward passes for a run (the thread that created it)."""

    def __init__(self) -> None:
        self.thread = threading.current_thread()
        self.jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()

    def drain(self, err: BaseException | None) -> None:
        """Run (or, after an interruption, fail with ``err``) the jobs still queued."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.fail(err) if err is not None else job.run()


_LOCK = threading.Lock()
_ACTIVE: list[_ModelThread] = []


def run_forward(fn: Callable[[], T]) -> T:
    """``fn()`` on the thread serving the forward passes of a run in progress, else on this thread.

    Raises:
        Whatever ``fn`` raises; :class:`RunInterruptedError` if the serving thread stopped before running it.
    """
    with _LOCK:
        server = _ACTIVE[-1] if _ACTIVE else None
        if server is None or server.thread is threading.current_thread():
            job = None
        else:
            job = _Job(fn)
            server.jobs.put(job)
    return fn() if job is None else job.wait()


def serve_forwards(work: Callable[[], T], name: str = "geodino-scheduler") -> T:
    """Run ``work()`` in a helper thread while this thread runs the forward passes it hands over.

    Args:
        work: Runs the scheduler (its tasks call :func:`run_forward`, directly or through the batch queues).
        name: The helper thread's name.

    Returns:
        What ``work`` returned.

    Raises:
        Whatever ``work`` raised; KeyboardInterrupt on Ctrl-C (queued forward passes then fail with
        :class:`RunInterruptedError`, so the tasks waiting for them stop).
    """
    server = _ModelThread()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:
            outcome["error"] = err
        finally:
            server.jobs.put(None)  # wakes the serving loop

    helper = threading.Thread(target=target, name=name, daemon=True)
    with _LOCK:
        _ACTIVE.append(server)
    try:
        helper.start()
        while (job := server.jobs.get()) is not None:
            job.run()
    except BaseException:
        _retire(server, RunInterruptedError("the mapping run was interrupted before this batch ran"))
        helper.join(INTERRUPT_JOIN_S)
        raise
    _retire(server, None)
    helper.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _retire(server: _ModelThread, err: BaseException | None) -> None:
    """Stop handing jobs to ``server``, then run (or fail) what it still holds."""
    with _LOCK:
        if server in _ACTIVE:
            _ACTIVE.remove(server)
    server.drain(err)
