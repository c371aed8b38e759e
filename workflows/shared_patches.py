"""Patches that straddle chunk borders: predicted once per process, handed to every chunk that needs them.

A patch whose footprint touches the cores of several chunks is needed by each of them. Recomputing it in each
chunk costs up to ``(1 + stride / chunk)^2`` times the model work (17% on a 4096-pixel raster in 1512-pixel
chunks). Instead the patches are grouped by the set of chunks they touch (a "sharing key"); the first chunk that
needs a group claims it, predicts it in its own batches, publishes it, and the group is kept until every pending
chunk of the key has taken it (or the memory budget pushes it out, and a later chunk predicts it again).

A chunk first claims what nobody else is predicting, predicts and publishes that, and only then waits for groups
other threads are predicting: no thread waits while holding a claim, so threads never wait on each other in a
cycle. Which chunk predicts a shared patch varies between runs, so the batch it rides in varies too: outputs stay
bit-identical as long as a model's output for one sample does not depend on the other samples of its
(fixed-size) batch, which holds for inference-mode CNNs and ViTs on the CPU here and is what the chunking tests
check.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SharingKey = tuple[int, int, int, int]  # first/last chunk row, first/last chunk col touched

#: Default memory budget of the groups kept waiting for their other chunks, per process. A chunk row's bottom
#: edges wait for the next row, so what is held grows with the raster's width until this caps it; beyond it,
#: chunks predict their border patches themselves, as without sharing.
DEFAULT_BUDGET_BYTES = 256 * 2**20


def sharing_key(
    out_row: int, out_col: int, out_patch: int, chunk: tuple[int, int], grid_shape: tuple[int, int]
) -> SharingKey:
    """Chunk rows and cols whose cores an output-pixel patch footprint touches (clipped to the chunk grid)."""
    (ch, cw), (ny, nx) = chunk, grid_shape
    first_r, first_c = max(out_row, 0) // ch, max(out_col, 0) // cw
    last_r = min((out_row + out_patch - 1) // ch, ny - 1)
    last_c = min((out_col + out_patch - 1) // cw, nx - 1)
    return first_r, last_r, first_c, last_c


def chunks_of(key: SharingKey) -> list[tuple[int, int]]:
    """The (iy, ix) chunks of a sharing key."""
    r0, r1, c0, c1 = key
    return [(iy, ix) for iy in range(r0, r1 + 1) for ix in range(c0, c1 + 1)]


@dataclass
class _Entry:
    payload: Any
    nbytes: int
    remaining: int


@dataclass
class SharedPredictions:
    """A per-process store of border-patch predictions, bounded in bytes, safe across threads.

    Entries are dropped once every expected user took them; a group that does not fit the budget is not kept,
    and its later users predict it themselves.
    """

    budget_bytes: int = DEFAULT_BUDGET_BYTES
    _entries: dict[tuple[str, SharingKey], _Entry] = field(default_factory=dict)
    _running: dict[tuple[str, SharingKey], threading.Event] = field(default_factory=dict)
    _states: dict[tuple[str, str], Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    _nbytes: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of predictions held."""
        return self._nbytes

    def claim(self, run: str, key: SharingKey) -> Any:
        """The group's predictions if ready (counting this use); else True if the caller must predict and
        `publish` it, False if another thread is predicting it (then call `wait`)."""
        slot = (run, key)
        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None:
                return self._use(slot, entry)
            if slot in self._running:
                return False
            self._running[slot] = threading.Event()
            return True

    def publish(self, run: str, key: SharingKey, payload: Any, users: int, nbytes: int | None = None) -> None:
        """Store a claimed group (predictions, or crops of them) for its `users - 1` other users and wake those
        waiting for it. `nbytes` defaults to ``payload.nbytes``."""
        slot = (run, key)
        with self._lock:
            if users > 1:
                self._store(slot, _Entry(payload, payload.nbytes if nbytes is None else nbytes, users - 1))
            self._running.pop(slot).set()

    def abandon(self, run: str, key: SharingKey) -> None:
        """Release a claim without a result (the claimant failed); waiters then predict the group themselves."""
        with self._lock:
            event = self._running.pop((run, key), None)
        if event is not None:
            event.set()

    def wait(self, run: str, key: SharingKey, timeout: float | None = None) -> Any:
        """Wait for a group another thread is predicting; None if it is not available after all (failure,
        eviction, or ``timeout`` seconds passed), in which case the caller predicts it."""
        slot = (run, key)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                entry = self._entries.get(slot)
                if entry is not None:
                    return self._use(slot, entry)
                event = self._running.get(slot)
            if event is None:
                return None
            if not event.wait(None if deadline is None else max(0.0, deadline - time.monotonic())):
                return None

    def _use(self, slot: tuple[str, SharingKey], entry: _Entry) -> Any:
        """Count one use of an entry, dropping it after the last (caller holds the lock)."""
        entry.remaining -= 1
        if entry.remaining <= 0:
            self._drop(slot)
        return entry.payload

    def _drop(self, slot: tuple[str, SharingKey]) -> None:
        self._nbytes -= self._entries.pop(slot).nbytes

    def _store(self, slot: tuple[str, SharingKey], entry: _Entry) -> None:
        """Keep an entry if it fits the budget (caller holds the lock).

        A full store refuses new entries rather than evicting old ones: chunks run roughly row by row, so the
        oldest entries (the bottom edges of the previous chunk row) are the ones needed soonest.
        """
        if self._nbytes + entry.nbytes <= self.budget_bytes:
            self._entries[slot] = entry
            self._nbytes += entry.nbytes

    def run_state(self, run: str, name: str, factory: Callable[[], Any]) -> Any:
        """This process's object ``name`` for a run, made by ``factory()`` on first use (once, across threads);
        :meth:`drop_run` calls its ``close()``."""
        with self._lock:
            state = self._states.get((run, name))
            if state is None:
                state = self._states[(run, name)] = factory()
            return state

    def drop_run(self, run: str) -> None:
        """Forget every group of a finished run, and close its run states."""
        with self._lock:
            for slot in [s for s in self._entries if s[0] == run]:
                self._drop(slot)
            states = [self._states.pop(k) for k in [k for k in self._states if k[0] == run]]
        for state in states:
            close = getattr(state, "close", None)
            if close is not None:
                close()


def _budget_from_env() -> int:
    """``GEODINO_SHARED_PATCH_MB`` overrides the default budget (0 turns sharing off)."""
    value = os.environ.get("GEODINO_SHARED_PATCH_MB")
    return DEFAULT_BUDGET_BYTES if value is None else int(float(value) * 2**20)


#: The store of this process (each Dask worker process has its own).
SHARED = SharedPredictions(_budget_from_env())
