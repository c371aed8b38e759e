"""Full batches across chunk tasks: one queue of patches per model in a process.

A chunk rarely holds a whole number of batches, and a Predictor pads the last, partial batch of a call to its fixed
batch size (one input shape per forward; see :mod:`geodino.workflows.predictor`). Run chunk by chunk, that
padding costs about half a batch per chunk: 4 of 83 forward passes for a 4096 x 4096 raster in 3 x 3 chunks of a
ViT-S at batch 8. Here the chunk tasks of a process put their patches into one FIFO queue per model instead; any
task waiting for results runs the next batch, made of whichever patches are queued, from any chunk. A partial
batch runs only when no task could add patches (every task in the queue is itself waiting) or when a waiting task
has lingered for a while; so padding is paid about once per process and run, not once per chunk.

Results do not depend on which patches share a batch: models are per-sample in eval mode, and every forward pass
still has the same batch size (the kernels chosen, hence the rounding, depend on it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Longest a task with queued patches waits for other tasks to fill its batch, in multiples of the last forward
#: pass's duration (bounded below by ``MIN_LINGER_S``).
LINGER_BATCHES = 2.0
MIN_LINGER_S = 0.05


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
        linger_s: How long a caller with queued patches waits for others to fill its batch; default: twice the
            last forward pass, at least ``MIN_LINGER_S``.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], batch_size: int, linger_s: float | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._run = run
        self.batch_size = int(batch_size)
        self._linger_s = linger_s
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._clients = 0  # threads that may still put patches in
        self._idle = 0  # of those, threads that cannot right now (waiting for predictions or for other chunks)
        self._busy = False  # a batch is running
        self._last_batch_s = 0.0
        self.batches = 0  # forward passes run (statistics)
        self.padded = 0  # of those, partial ones

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

    def cancel(self, items: Sequence[_Item]) -> None:
        """Take items that have not started out of the queue (a task giving up; nobody will ask for them)."""
        drop = set(map(id, items))
        with self._cond:
            kept = [item for item in self._queue if id(item) not in drop]
            self._queue.clear()
            self._queue.extend(kept)

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
            if len(self._queue) < self.batch_size and not self._may_run_partial(deadline):
                if deadline is None:
                    deadline = time.monotonic() + self._linger()
                self._cond.wait(max(0.0, deadline - time.monotonic()))
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

    def _linger(self) -> float:
        if self._linger_s is not None:
            return self._linger_s
        return max(MIN_LINGER_S, LINGER_BATCHES * self._last_batch_s)

    def _may_run_partial(self, deadline: float | None) -> bool:
        """A short batch (holding some of the caller's patches) may run: nobody can add patches now, or the
        caller lingered long enough."""
        if self._idle >= self._clients:
            return True
        return deadline is not None and time.monotonic() >= deadline

    # ------------------------------------------------------------------------------------------------------------

    def _execute(self, batch: list[_Item]) -> None:
        """Run one batch without the lock; hand each item its prediction or the error."""
        start = time.perf_counter()
        try:
            out = self._run(np.stack([item.patch for item in batch]))
            for item, pred in zip(batch, out, strict=True):
                item.result = pred
        except BaseException as err:  # every owner re-raises it
            for item in batch:
                item.error = err
        finally:
            for item in batch:
                item.patch = None
                item.done = True
        self._last_batch_s = time.perf_counter() - start
        self.batches += 1
        self.padded += len(batch) < self.batch_size


class PatchStream:
    """One task's patches, queued a batch ahead of the one it asks for, so its batches stay full.

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
        self.submitted = 0  # keys queued so far

    def __contains__(self, key: int) -> bool:
        return key in self._index

    def get(self, key: int) -> np.ndarray:
        """The prediction for ``key`` (each key once), waiting for (or running) its batch."""
        self._submit_to(self._index[key] + 1 + self._lookahead)
        return self._queue.results([self._items.pop(key)])[0]

    def close(self) -> None:
        """Withdraw the patches queued but never asked for (the task failed or stopped early)."""
        self._queue.cancel(list(self._items.values()))
        self._items.clear()

    def _submit_to(self, end: int) -> None:
        end = min(end, len(self._keys))
        if end <= self.submitted:
            return
        keys = self._keys[self.submitted : end]
        self._items.update(zip(keys, self._queue.submit([self._patch(k) for k in keys]), strict=True))
        self.submitted = end


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
