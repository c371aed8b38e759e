"""One Dask worker per GPU: the assignment logic with faked device counts, on real CPU clusters."""

from __future__ import annotations

import os

import pytest
from distributed import Client, LocalCluster

from geodino.workflows import devices
from geodino.workflows.execution import distributed_client


@pytest.fixture(autouse=True)
def _unpinned():
    devices._PINNED = None
    yield
    devices._PINNED = None


def test_visible_gpus_follow_cuda_visible_devices() -> None:
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}) == ["0", "1"]
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 2"}) == ["3", "2"]
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-aa,GPU-bb"}) == ["GPU-aa", "GPU-bb"]
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]  # CUDA stops at an invalid entry
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert devices.visible_gpus({}, count=3) == ["0", "1", "2"]
    assert devices.visible_gpus({}, count=0) == []


def test_assign_one_worker_per_gpu_round_robin_beyond() -> None:
    assert devices.assign_gpus(None, ["0", "1", "2", "3"]) == ["0", "1", "2", "3"]
    assert devices.assign_gpus(2, ["0", "1", "2", "3"]) == ["0", "1"]
    assert devices.assign_gpus(5, ["4", "7"]) == ["4", "7", "4", "7", "4"]
    with pytest.raises(ValueError, match="no GPU is visible"):
        devices.assign_gpus(2, [])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        devices.assign_gpus(0, ["0"])


def test_local_ranks_count_per_host() -> None:
    hosts = {
        "tcp://10.0.0.2:4001": "b",
        "tcp://10.0.0.1:4002": "a",
        "tcp://10.0.0.1:4001": "a",
        "tcp://10.0.0.2:4000": "b",
    }
    assert devices.local_ranks(hosts) == {
        "tcp://10.0.0.1:4001": 0,
        "tcp://10.0.0.1:4002": 1,
        "tcp://10.0.0.2:4000": 0,
        "tcp://10.0.0.2:4001": 1,
    }


def test_pinned_process_resolves_cuda_to_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.resolve_device("cuda") == "cuda"
    assert devices._pin(3, count=2) == "cuda:1"
    assert devices.resolve_device("cuda") == "cuda:1"
    assert devices.resolve_device("cuda:0") == "cuda:0" and devices.resolve_device("cpu") == "cpu"
    assert devices._pin(3, count=0) is None and devices.resolve_device("cuda") == "cuda"


def test_local_gpu_cluster_gives_each_worker_its_own_gpu() -> None:
    with devices.gpu_local_cluster(["1", "0"]) as cluster, Client(cluster) as client:
        seen = client.run(os.getenv, "CUDA_VISIBLE_DEVICES")
    assert sorted(seen.values()) == ["0", "1"]


def test_distributed_client_with_cuda_starts_one_worker_per_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")  # faked: read by the assignment, never used by CPU torch
    with distributed_client(device="cuda") as client:
        seen = client.run(os.getenv, "CUDA_VISIBLE_DEVICES")
    assert sorted(seen.values()) == ["5", "6"]


def test_workers_of_an_existing_scheduler_use_their_machines_gpus() -> None:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster.scheduler_address) as client,  # connected by address, as with --scheduler
    ):
        pinned = devices.pin_workers(client, count=2)
        assert sorted(pinned.values()) == ["cuda:0", "cuda:1"]
        assert client.run(devices.pinned_device) == pinned
        resolved = client.run(devices.resolve_device, "cuda")
        assert sorted(resolved.values()) == ["cuda:0", "cuda:1"]
        assert sorted(devices.pin_workers(client, count=1).values()) == ["cuda:0", "cuda:0"]
        assert set(devices.pin_workers(client, count=0).values()) == {None}
