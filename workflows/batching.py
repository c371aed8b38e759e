"""Full batches across chunk tasks: one queue of patches per model in a process, padded at most once per run.

A chunk rarely holds a whole number of batches, and a Predictor pads a partial batch to its fixed batch size (one
input shape per forward; see :mod:`geodino.workflows.predictor`). Run chunk by chunk, that padding costs about
half a batch per chunk; at a 512-pixel tile a chunk holds only a few patches, and nearly every forward pass was
padded. Here the chunk tasks of a process put their patches into one FIFO queue per model instead; any task
waiting for results runs the next batch, made of whichever patches are queued, from any chunk.

A short batch would waste rows, so before running one the queue asks its *feeders* for more patches: first the
patch streams of the chunks in progress (patches they would have queued later), then the run's :class:`ChunksAhead`,
which opens the next chunk that has not started yet in this process (reads it and queues its patches; the chunk's
own task later takes them over). Only when no feeder has anything left, and every task in the queue is itself
waiting, does a short batch run: under the threaded and sync schedulers that is the run's last batch.

Results do not depend on which patches share a batch: models are per-sample in eval mode, and every forward pass
still has the same batch size (the kernels chosen, hence the rounding, depend on it).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from geodino.workflows.model_thread import run_forward

#: How often a short batch held back for an arriving chunk task re-checks that one is still on its way.
ARRIVAL_POLL_S = 1.0
#: A thread between two chunk tasks (writing one) for longer than this no longer holds back short batches.
ARRIVAL_TIMEOUT_S = 120.0

#: Input windows held by chunks opened ahead of their tasks, per run and process, beyond which no other opens.
AHEAD_BUDGET_BYTES = 128 * 2**20

#: A feeder queues up to ``need`` more patches when asked (no queue lock held) and returns how many it queued.
Feeder = Callable[[int], int]


@dataclass(eq=False)
class _Item:
    """One queued patch and, once its batch ran, its prediction or the batch's error."""

    patch: np.ndarray | None
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class BatchQueue:
    """Pools the patches of concurrent callers into batches of ``batch_size`` for one model.

    Args:
        run: ``run(batch) -> predictions``: (b, C, H, W) float32 -> (b, K, h, w), b <= ``batch_size`` (pads
            partial batches itself, as :class:`~geodino.workflows.predictor.Predictor` does).
        batch_size: Patches per forward pass.
        linger_s: Longest a caller with queued patches waits for other callers before a short batch runs anyway;
            None (default): wait as long as any caller can still add patches (they always come, or the caller
            goes idle, within a chunk's blending time).
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], batch_size: int, linger_s: float | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._run = run
        self.batch_size = int(batch_size)
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._feeders: list[Feeder] = []
        self._arrivals: list[Callable[[], bool]] = []
        self._clients = 0  # threads that may still put patches in
        self._idle = 0  # of those, threads that cannot right now (waiting for predictions or for other chunks)
        self._busy = False  # a batch is running, or a thread is asking the feeders
        self.batches = 0  # forward passes run (statistics)
        self.padded = 0  # of those, partial ones
        self.rows = 0  # patches run (the model saw ``batches * batch_size`` rows, padding included)

    @contextlib.contextmanager
    def client(self) -> Iterator[BatchQueue]:
        """Register the calling thread as one that puts patches in (a chunk task), for the ``with`` block."""
        with self._cond:
            self._clients += 1
        try:
            yield self
        finally:
            with self._cond:
                self._clients -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Declare the calling client blocked on something else (so others need not wait for its patches)."""
        with self._cond:
            self._idle += 1
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._idle -= 1

    def add_feeder(self, feeder: Feeder, arriving: Callable[[], bool] | None = None) -> None:
        """Ask ``feeder`` for patches before running a short batch (in the order added).

        Args:
            feeder: Queues up to ``need`` more patches, returns how many.
            arriving: True while a thread that will start another chunk (and become a client) is on its way:
                then a short batch waits for it.
        """
        with self._cond:
            self._feeders.append(feeder)
            if arriving is not None:
                self._arrivals.append(arriving)

    def remove_feeder(self, feeder: Feeder, arriving: Callable[[], bool] | None = None) -> None:
        """Stop asking ``feeder`` (and ``arriving``); a no-op for those not added."""
        with self._cond:
            with contextlib.suppress(ValueError):
                self._feeders.remove(feeder)
            with contextlib.suppress(ValueError):
                if arriving is not None:
                    self._arrivals.remove(arriving)
            self._cond.notify_all()

    def submit(self, patches: Sequence[np.ndarray]) -> list[_Item]:
        """Queue ``patches`` ((C, H, W) each, kept by reference until their batch runs); returns at once."""
        items = [_Item(p) for p in patches]
        with self._cond:
            self._queue.extend(items)
            self._cond.notify_all()
        return items

    def results(self, items: Sequence[_Item]) -> list[np.ndarray]:
        """Predictions of submitted ``items``, in order; runs queued batches (anyone's) until they are done.

        Raises:
            BaseException: Whatever the model raised on a batch holding one of these items.
        """
        with self._cond:
            self._idle += 1
            try:
                self._serve(list(items))
            finally:
                self._idle -= 1
        for item in items:
            if item.error is not None:
                raise item.error
        return [item.result for item in items]  # type: ignore[misc]

    def predict(self, patches: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``results(submit(patches))``."""
        return self.results(self.submit(patches))

    def cancel(self, items: Sequence[_Item]) -> int:
        """Take items that have not started out of the queue (nobody will ask for them); how many were."""
        drop = set(map(id, items))
        with self._cond:
            kept = [item for item in self._queue if id(item) not in drop]
            removed = len(self._queue) - len(kept)
            self._queue.clear()
            self._queue.extend(kept)
        return removed

    # ------------------------------------------------------------------------------------------------------------
    # Called with the condition held.

    def _serve(self, items: list[_Item]) -> None:
        """Run batches (or wait for the runner) until every one of ``items`` is done."""
        deadline: float | None = None
        while not all(item.done for item in items):
            if self._busy:
                self._cond.wait()
                continue
            if not any(item in self._queue for item in items if not item.done):
                raise RuntimeError("waiting for patches that were cancelled (PatchStream.close while in use?)")
            if len(self._queue) < self.batch_size:
                if self._idle < self._clients and not self._lingered(deadline):
                    # Someone can still add patches: wait for them (or for them to wait too).
                    if deadline is None and self._linger_s is not None:
                        deadline = time.monotonic() + self._linger_s
                    self._cond.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
                    continue
                if self._feed(self.batch_size - len(self._queue)):
                    continue
                if not self._lingered(deadline) and any(arriving() for arriving in self._arrivals):
                    self._cond.wait(ARRIVAL_POLL_S)  # woken when it registers as a client
                    continue
            batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            self._busy = True
            self._cond.release()
            try:
                self._execute(batch)
            finally:
                self._cond.acquire()
                self._busy = False
                self._cond.notify_all()

    def _lingered(self, deadline: float | None) -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def _feed(self, need: int) -> int:
        """Ask the feeders, in order, for up to ``need`` patches (without the lock); how many came."""
        feeders = list(self._feeders)
        if not feeders:
            return 0
        self._busy = True  # nobody runs a short batch meanwhile
        self._cond.release()
        got = 0
        try:
            for feeder in feeders:
                got += feeder(need - got)
                if got >= need:
                    break
        finally:
            self._cond.acquire()
            self._busy = False
            self._cond.notify_all()
        return got

    # ------------------------------------------------------------------------------------------------------------

    def _execute(self, batch: list[_Item]) -> None:
        """Run one batch without the lock; hand each item its prediction or the batch's error."""
        try:
            stacked = np.stack([item.patch for item in batch])
            out = run_forward(lambda: self._run(stacked))  # on the run's model thread, if it has one
            for item, pred in zip(batch, out, strict=True):
                item.result = pred
        except BaseException as err:  # every owner re-raises it
            for item in batch:
                item.error = err
        finally:
            for item in batch:
                item.patch = None
                item.done = True
        self.batches += 1
        self.padded += len(batch) < self.batch_size
        self.rows += len(batch)


class PatchStream:
    """One task's patches, queued a batch ahead of the one it asks for, so its batches stay full.

    Also a feeder (:meth:`feed`): the queue may take more of its patches early rather than run a short batch.

    Args:
        queue: The model's queue.
        keys: Patch keys in the order the task will ask for them.
        patch: ``patch(key)`` -> (C, H, W) input (a view is fine; it is copied when its batch runs).
        lookahead: Patches queued beyond the one asked for (default: one batch).
    """

    def __init__(
        self, queue: BatchQueue, keys: Sequence[int], patch: Callable[[int], np.ndarray], lookahead: int | None = None
    ):
        self._queue = queue
        self._keys = list(keys)
        self._index = {k: i for i, k in enumerate(self._keys)}
        self._patch = patch
        self._lookahead = queue.batch_size if lookahead is None else int(lookahead)
        self._items: dict[int, _Item] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._feeding = False
        self.submitted = 0  # keys queued so far

    def __contains__(self, key: int) -> bool:
        return key in self._index

    def get(self, key: int) -> np.ndarray:
        """The prediction for ``key`` (each key once), waiting for (or running) its batch."""
        with self._lock:
            self._submit_to(self._index[key] + 1 + self._lookahead)
            item = self._items.pop(key)
        return self._queue.results([item])[0]

    def feed(self, need: int) -> int:
        """Queue up to ``need`` more of this task's patches now; how many (0 once all are queued or closed)."""
        with self._lock:
            if self._closed:
                return 0
            before = self.submitted
            self._submit_to(self.submitted + need)
            return self.submitted - before

    def attach(self) -> PatchStream:
        """Offer this stream's patches to the queue before it runs a short batch (until :meth:`close`)."""
        self._queue.add_feeder(self.feed)
        self._feeding = True
        return self

    def close(self) -> None:
        """Withdraw the patches queued but never asked for (the task failed or stopped early)."""
        if self._feeding:
            self._queue.remove_feeder(self.feed)
            self._feeding = False
        with self._lock:
            self._closed = True
            self._queue.cancel(list(self._items.values()))
            self._items.clear()

    def _submit_to(self, end: int) -> None:
        """Queue keys up to index ``end`` (caller holds the stream's lock)."""
        end = min(end, len(self._keys))
        if end <= self.submitted:
            return
        keys = self._keys[self.submitted : end]
        self._items.update(zip(keys, self._queue.submit([self._patch(k) for k in keys]), strict=True))
        self.submitted = end


# ----------------------------------------------------------------------------------------------------------------
# Chunks opened ahead of their tasks.


class OpenedChunk(Protocol):
    """What :class:`ChunksAhead` needs of an opened chunk: a stream of the patches it will predict, its size, and
    ``close()`` (withdraw its patches and release what it claimed, when its task never starts)."""

    stream: PatchStream

    @property
    def nbytes(self) -> int: ...

    def close(self) -> None: ...


TaskT = TypeVar("TaskT")
OpenedT = TypeVar("OpenedT", bound=OpenedChunk)


class ChunksAhead(Generic[TaskT, OpenedT]):
    """A run's chunks that have not started in this process, opened early to fill batches that would run short.

    A feeder of the model's queue. Asked for patches, it queues more of the opened chunks' streams, else opens the
    next chunk in run order that has not started (``open_chunk(task)``: read, normalise, claim its border
    groups, list the patches it will predict) and queues its first patches. When the chunk's own task starts,
    :meth:`start` hands it the opened chunk, predictions included. Only for schedulers that run every chunk of
    the run in this process (threads, sync): on a cluster another worker might run the chunk, and the work would be
    done twice. A chunk waiting for a border group that a chunk opened ahead claimed is released by that chunk's
    task, which the local schedulers start in run order, hence before the waiter's.

    Args:
        queue: The model's queue (this registers itself as one of its feeders until :meth:`close`).
        tasks: The run's pending chunk tasks, in the order the scheduler starts them.
        key: ``key(task)`` -> a hashable id of the task.
        open_chunk: Opens a chunk (called without any queue lock).
        budget_bytes: Opens no further chunk while those open ahead of their tasks hold this much (their input
            windows); one is always allowed.
    """

    def __init__(
        self,
        queue: BatchQueue,
        tasks: Sequence[TaskT],
        key: Callable[[TaskT], Hashable],
        open_chunk: Callable[[TaskT], OpenedT],
        budget_bytes: int = AHEAD_BUDGET_BYTES,
    ):
        self._queue = queue
        self._key = key
        self._open_chunk = open_chunk
        self._budget = budget_bytes
        self._todo: deque[TaskT] = deque(tasks)  # not started, not opened
        self._opened: dict[Hashable, OpenedT] = {}  # opened, not started (in opening order)
        self._started: set[Hashable] = set()
        self._unstarted = len(tasks)
        self._transit: dict[int, float] = {}  # threads between two chunk tasks -> since when
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # chunks opened ahead (statistics)
        queue.add_feeder(self, self.arriving)

    def start(self, task: TaskT) -> OpenedT | None:
        """Mark a task started; its chunk if it was opened ahead (the caller attaches and drains its stream)."""
        key = self._key(task)
        with self._lock:  # held while a chunk is being opened: the task waits for it rather than reading twice
            self._transit.pop(threading.get_ident(), None)
            if key not in self._started:
                self._started.add(key)
                self._unstarted -= 1
            return self._opened.pop(key, None)

    def finish(self) -> None:
        """The calling thread is done with its chunk's patches; it may start another chunk (see ``arriving``)."""
        with self._lock:
            if self._unstarted:
                self._transit[threading.get_ident()] = time.monotonic()

    def arriving(self) -> bool:
        """Some chunks have not started, and a thread that finished one is on its way to start the next.

        Under the threaded and sync schedulers such a thread gets the next task as soon as it is free, so a short
        batch can wait for its patches.
        """
        with self._lock:
            if self._closed or not self._unstarted:
                return False
            now = time.monotonic()
            return any(now - since < ARRIVAL_TIMEOUT_S for since in self._transit.values())

    def __call__(self, need: int) -> int:
        """Queue up to ``need`` patches of chunks that have not started; how many."""
        got = 0
        with self._lock:
            if self._closed:
                return 0
            for opened in list(self._opened.values()):
                got += opened.stream.feed(need - got)
                if got >= need:
                    return got
            while got < need and self._todo and self._may_open():
                task = self._todo.popleft()
                key = self._key(task)
                if key in self._started:
                    continue
                opened = self._opened[key] = self._open_chunk(task)
                self.opened += 1
                got += opened.stream.feed(need - got)
        return got

    def _may_open(self) -> bool:
        """Room for one more chunk opened ahead (caller holds the lock)."""
        return not self._opened or sum(o.nbytes for o in self._opened.values()) < self._budget

    def close(self) -> None:
        """Stop feeding; withdraw the patches of chunks opened but never started (the run ended or failed)."""
        self._queue.remove_feeder(self, self.arriving)
        with self._lock:
            self._closed = True
            for opened in self._opened.values():
                opened.close()
            self._opened.clear()
            self._todo.clear()


def on_cluster_worker() -> bool:
    """True inside a ``dask.distributed`` worker (where chunks of one run are spread over processes)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


_QUEUES: dict[tuple[Any, ...], BatchQueue] = {}
_QUEUES_LOCK = threading.Lock()


def batch_queue(predictor: Any) -> BatchQueue:
    """This process's queue for a Predictor: one per model key, device, batch size and metadata.

    The metadata is part of the key because it changes what a forward pass returns (the output activation, for
    one): the same weights mapped once as logits and once as probabilities must not share a queue.
    """
    key = (predictor.key, predictor.device, predictor.batch_size, predictor.info)
    with _QUEUES_LOCK:
        queue = _QUEUES.get(key)
        if queue is None:
            queue = _QUEUES[key] = BatchQueue(predictor, predictor.batch_size)
        return queue


def clear_batch_queues() -> None:
    """Forget this process's queues (and the predictors they hold); called by ``clear_model_cache``."""
    with _QUEUES_LOCK:
        _QUEUES.clear()
