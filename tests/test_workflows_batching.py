"""The per-process batch queue that fills fixed-size batches across concurrent chunk tasks."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from geodino.workflows.batching import BatchQueue, PatchStream


class Recorder:
    """A 'model' that doubles its input and records the real batch sizes it was given (padding to ``size``)."""

    def __init__(self, size: int, fail_on: float | None = None):
        self.size = size
        self.fail_on = fail_on
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls.append(len(batch))
        if self.fail_on is not None and np.any(batch == self.fail_on):
            raise RuntimeError("model failed")
        return batch * 2


def _patches(start: int, n: int) -> list[np.ndarray]:
    return [np.full((1, 2, 2), start + i, dtype=np.float32) for i in range(n)]


def test_results_in_order_and_full_batches_for_one_caller() -> None:
    model = Recorder(4)
    queue = BatchQueue(model, 4)
    out = queue.predict(_patches(0, 10))
    assert [float(o[0, 0, 0]) for o in out] == [2.0 * i for i in range(10)]
    assert model.calls == [4, 4, 2]  # the only caller cannot be joined: its last batch runs short at once
    assert (queue.batches, queue.padded) == (3, 1)


def _two_clients(queue: BatchQueue, counts: tuple[int, int]) -> list[list[np.ndarray]]:
    """Two threads register, then each submits ``counts[i]`` patches and waits for them."""
    ready = threading.Barrier(2)
    results: list[list[np.ndarray]] = [[], []]

    def client(i: int) -> None:
        with queue.client():
            ready.wait()  # both are registered before either submits
            results[i] = queue.predict(_patches(100 * i, counts[i]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "batch queue deadlocked"
    return results


def test_partial_requests_of_two_clients_share_one_batch() -> None:
    model = Recorder(4)
    queue = BatchQueue(model, 4, linger_s=30.0)  # long linger: only the other client's patches end the wait
    results = _two_clients(queue, (2, 2))
    assert model.calls == [4]  # run one by one, each would have been a padded batch
    assert [float(r[0, 0, 0]) for r in results[0]] == [0.0, 2.0]
    assert [float(r[0, 0, 0]) for r in results[1]] == [200.0, 202.0]


def test_short_batch_runs_when_every_client_waits() -> None:
    model = Recorder(4)
    queue = BatchQueue(model, 4, linger_s=30.0)
    _two_clients(queue, (3, 2))  # 5 patches: one full batch, then nobody can add more -> short batch at once
    assert sorted(model.calls) == [1, 4]
    assert queue.padded == 1


def test_idle_client_does_not_hold_back_others() -> None:
    model = Recorder(4)
    queue = BatchQueue(model, 4, linger_s=30.0)
    registered, release = threading.Event(), threading.Event()

    def bystander() -> None:  # a chunk task blocked on another chunk's shared patches
        with queue.client(), queue.idle():
            registered.set()
            release.wait(timeout=60)

    thread = threading.Thread(target=bystander)
    thread.start()
    registered.wait(timeout=60)
    with queue.client():
        out = queue.predict(_patches(0, 3))  # would linger 30 s if the bystander counted as producing
    release.set()
    thread.join(timeout=60)
    assert [float(o[0, 0, 0]) for o in out] == [0.0, 2.0, 4.0]
    assert model.calls == [3]


def test_errors_reach_every_owner_and_the_queue_recovers() -> None:
    model = Recorder(4, fail_on=1.0)
    queue = BatchQueue(model, 4)
    with pytest.raises(RuntimeError, match="model failed"):
        queue.predict(_patches(0, 3))
    assert queue.predict(_patches(5, 2))[1][0, 0, 0] == 12.0


def test_stream_queues_ahead_and_withdraws_unused_patches() -> None:
    model = Recorder(2)
    queue = BatchQueue(model, 2)
    data = {k: np.full((1, 1, 1), k, dtype=np.float32) for k in range(7)}
    stream = PatchStream(queue, [3, 1, 4, 0, 6], data.__getitem__, lookahead=2)
    assert 4 in stream and 5 not in stream
    assert float(stream.get(3)[0, 0, 0]) == 6.0  # queued 3, 1, 4; ran [3, 1]
    assert float(stream.get(1)[0, 0, 0]) == 2.0  # already done; queued 0
    assert stream.submitted == 4
    stream.close()  # 4 and 0 were queued, never asked for
    assert queue.predict([data[5]])[0][0, 0, 0] == 10.0
    assert model.calls == [2, 1]  # the withdrawn patches never ran


def test_waiting_on_cancelled_items_fails_instead_of_hanging() -> None:
    queue = BatchQueue(Recorder(4), 4)
    items = queue.submit(_patches(0, 2))
    queue.cancel(items)
    with pytest.raises(RuntimeError, match="cancelled"):
        queue.results(items)


def test_one_queue_per_model_device_batch_size_and_metadata() -> None:
    from torch import nn

    from geodino.workflows.batching import batch_queue, clear_batch_queues
    from geodino.workflows.predictor import PredictorInfo, from_callable

    model = nn.Conv2d(3, 2, 1)
    info = PredictorInfo(in_bands=3, out_channels=2, kind="classification")
    logits = PredictorInfo(in_bands=3, out_channels=2, kind="classification", activation="none")
    first = from_callable(model, info, batch_size=4, device="cpu")
    try:
        assert batch_queue(first) is batch_queue(from_callable(model, info, batch_size=4, device="cpu"))
        assert batch_queue(first) is not batch_queue(from_callable(model, info, batch_size=2, device="cpu"))
        assert batch_queue(first) is not batch_queue(from_callable(model, logits, batch_size=4, device="cpu"))
    finally:
        clear_batch_queues()
