"""The per-process store of border-patch predictions shared between chunks."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from geodino.workflows.shared_patches import SharedPredictions, chunks_of, sharing_key


def test_sharing_key_lists_the_chunks_a_patch_touches() -> None:
    grid = (3, 4)  # chunk rows x cols, chunks of 10 x 10 output pixels
    assert sharing_key(0, 0, 8, (10, 10), grid) == (0, 0, 0, 0)
    assert sharing_key(6, 0, 8, (10, 10), grid) == (0, 1, 0, 0)
    assert sharing_key(6, 36, 8, (10, 10), grid) == (0, 1, 3, 3)  # last column: clipped to the grid
    assert sharing_key(26, 16, 8, (10, 10), grid) == (2, 2, 1, 2)  # hangs over the bottom edge
    assert chunks_of((0, 1, 2, 3)) == [(0, 2), (0, 3), (1, 2), (1, 3)]


def test_claim_publish_take_until_every_user_had_it() -> None:
    store = SharedPredictions()
    group = np.ones((2, 1, 4, 4), np.float32)
    assert store.claim("run", (0, 0, 0, 1)) is True
    assert store.claim("run", (0, 0, 0, 1)) is False  # being predicted
    store.publish("run", (0, 0, 0, 1), group, users=3)
    assert store.claim("other-run", (0, 0, 0, 1)) is True  # runs never mix
    assert store.claim("run", (0, 0, 0, 1)) is group
    assert store.wait("run", (0, 0, 0, 1)) is group
    assert store.nbytes == 0  # the third user took it: gone
    assert store.claim("run", (0, 0, 0, 1)) is True


def test_full_budget_refuses_new_groups_and_abandon_releases_waiters() -> None:
    store = SharedPredictions(budget_bytes=2 * 64)
    for i in range(3):
        assert store.claim("r", (i, i, 0, 1)) is True
        store.publish("r", (i, i, 0, 1), np.full((1, 1, 4, 4), i, np.float32), users=2)  # 64 bytes each
    assert store.nbytes == 128
    assert store.claim("r", (2, 2, 0, 1)) is True  # did not fit: its other user predicts it again
    store.abandon("r", (2, 2, 0, 1))
    assert store.wait("r", (2, 2, 0, 1)) is None
    assert float(store.claim("r", (0, 0, 0, 1))[0, 0, 0, 0]) == 0.0  # the oldest were kept
    store.drop_run("r")
    assert store.nbytes == 0


def test_threads_racing_for_groups_predict_each_once() -> None:
    store = SharedPredictions()
    computed: list[int] = []
    lock = threading.Lock()

    def chunk(keys: list[int]) -> dict[int, float]:
        got, waiting = {}, []
        claimed = []
        for key in keys:
            res = store.claim("r", (key, key, 0, 1))
            if res is True:
                claimed.append(key)
            elif res is False:
                waiting.append(key)
            else:
                got[key] = float(res[0, 0, 0, 0])
        for key in claimed:
            time.sleep(0.01)
            with lock:
                computed.append(key)
            store.publish("r", (key, key, 0, 1), np.full((1, 1, 1, 1), key, np.float32), users=4)
            got[key] = key
        for key in waiting:
            res = store.wait("r", (key, key, 0, 1))
            got[key] = float(res[0, 0, 0, 0])
        return got

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(chunk, [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1]]))
    assert sorted(computed) == [0, 1, 2]
    assert all(r == {0: 0.0, 1: 1.0, 2: 2.0} for r in results)
    assert store.nbytes == 0


def test_local_schedulers_run_chunks_in_order() -> None:
    """Row-major execution keeps the border patches waiting for the next chunk row few and small."""
    from geodino.workflows.execution import run_tasks

    for scheduler in ("sync", "threads"):
        seen: list[int] = []
        run_tasks(lambda item, _ctx, seen=seen: seen.append(item), list(range(23)), None, scheduler=scheduler,
                  workers=1, progress=False)  # fmt: skip
        assert seen == list(range(23))
