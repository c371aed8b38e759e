"""The batch queue's feeders: patches from running streams and from chunks opened ahead, before any padding."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from geodino.workflows.batching import BatchQueue, ChunksAhead, PatchStream


class Recorder:
    """A 'model' doubling its input and recording the real batch sizes it was given."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        return batch * 2


def _data(n: int, start: int = 0) -> dict[int, np.ndarray]:
    return {k: np.full((1, 1, 1), start + k, dtype=np.float32) for k in range(n)}


def test_a_short_batch_takes_patches_from_a_stream_first() -> None:
    model = Recorder()
    queue = BatchQueue(model, 4)
    data = _data(6)
    other = PatchStream(queue, [3, 4, 5], data.__getitem__, lookahead=0).attach()
    mine = queue.predict([data[0], data[1], data[2]])  # 3 patches: the stream lends the 4th
    assert [float(m[0, 0, 0]) for m in mine] == [0.0, 2.0, 4.0]
    assert model.calls == [4] and other.submitted == 1
    assert float(other.get(3)[0, 0, 0]) == 6.0  # already predicted
    other.close()
    assert other.feed(4) == 0  # closed streams feed nothing


@dataclass
class Opened:
    stream: PatchStream
    nbytes: int = 100

    def close(self) -> None:
        self.stream.close()


def test_chunks_ahead_opens_in_order_within_its_budget_hands_over_and_withdraws() -> None:
    model = Recorder()
    queue = BatchQueue(model, 4)
    data = _data(40)
    opened: list[int] = []

    def open_chunk(task: int) -> Opened:  # one patch of its own per chunk, 100 bytes held
        opened.append(task)
        return Opened(PatchStream(queue, [10 * task], data.__getitem__))

    ahead = ChunksAhead(queue, [0, 1, 2, 3], lambda t: t, open_chunk, budget_bytes=150)
    assert ahead.start(0) is None  # chunk 0 starts normally: never opened
    out = queue.predict([data[5]])  # chunks 1 and 2 lend a patch each; then the budget is spent: a short batch
    assert float(out[0][0, 0, 0]) == 10.0 and opened == [1, 2] and model.calls == [3]
    chunk1 = ahead.start(1)
    assert chunk1 is not None and chunk1.stream.submitted == 1
    assert float(chunk1.stream.get(10)[0, 0, 0]) == 20.0  # predicted while chunk 1 had not started
    assert ahead(1) == 1 and opened == [1, 2, 3]  # room again: chunk 3 queues its patch
    ahead.close()  # the run ended: chunk 3's patch is withdrawn unrun
    assert ahead(4) == 0 and ahead.start(2) is None
    queue.predict([data[6]])
    assert model.calls == [3, 1]


def test_a_short_batch_waits_for_a_thread_on_its_way_to_the_next_chunk() -> None:
    model = Recorder()
    queue = BatchQueue(model, 4)
    data = _data(8)
    ahead = ChunksAhead(queue, [0, 1], lambda t: t, lambda t: Opened(PatchStream(queue, [], data.__getitem__)))
    results: dict[str, list[np.ndarray]] = {}
    finished = threading.Event()

    def first_chunk() -> None:  # finishes chunk 0, writes it (1 s), then starts chunk 1 with 2 patches
        with queue.client():
            ahead.start(0)
        ahead.finish()
        finished.set()
        time.sleep(1.0)
        with queue.client():
            ahead.start(1)
            results["late"] = queue.predict([data[6], data[7]])

    thread = threading.Thread(target=first_chunk)
    thread.start()
    finished.wait(timeout=60)
    with queue.client():
        results["early"] = queue.predict([data[0], data[1]])  # held back for the other thread's patches
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert model.calls == [4]
    assert [float(r[0, 0, 0]) for r in results["early"] + results["late"]] == [0.0, 2.0, 12.0, 14.0]
    ahead.close()
