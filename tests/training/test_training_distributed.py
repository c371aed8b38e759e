"""Losses across two real gloo processes against one process on the concatenated batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geodino.training.distributed import all_reduce, get_rank, get_world_size
from geodino.training.losses import DINOLoss, KoLeoLoss, KoLeoLossDistributed, iBOTPatchLoss
from geodino.training.losses.dino_clstoken import sinkhorn_knopp

WORLD = 2


def _data() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    return {
        "feats": torch.randn(2 * 5, 6, generator=gen),  # 5 samples per rank
        "logits": torch.randn(2 * 4, 7, generator=gen) * 2,  # 4 samples per rank
        "patch_logits": torch.randn(3 + 5, 7, generator=gen) * 2,  # unequal: 3 masked patches on rank 0, 5 on 1
        # Rank 0's rows underflow (the log-domain path), rank 1's do not: both ranks must switch together.
        # (sample 1 lies 100 below sample 0 on every prototype: exp(-100 / 0.04) is 0 in float32).
        "extreme": torch.cat([torch.full((1, 7), 100.0), torch.zeros(1, 7), torch.randn(6, 7, generator=gen)]),
    }


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        d = _data()
        x = d["feats"][rank * 5 : (rank + 1) * 5].clone().requires_grad_(True)
        koleo = KoLeoLossDistributed()(x)
        koleo.backward()
        dino = DINOLoss(7)
        sk = dino.sinkhorn_knopp_teacher(d["logits"][rank * 4 : (rank + 1) * 4], 0.05)
        rows = slice(0, 3) if rank == 0 else slice(3, 8)
        n_local = torch.tensor(rows.stop - rows.start)
        sk_patch = iBOTPatchLoss(7).sinkhorn_knopp_teacher(d["patch_logits"][rows], 0.05, n_local)
        # Rank 0 without any masked patch: it still joins the collectives, rank 1 gets the full result.
        rows0 = slice(0, 0) if rank == 0 else slice(0, 8)
        sk_empty = iBOTPatchLoss(7).sinkhorn_knopp_teacher(
            d["patch_logits"][rows0], 0.05, torch.tensor(rows0.stop - rows0.start)
        )
        sk_extreme = sinkhorn_knopp(d["extreme"][rank * 4 : (rank + 1) * 4], 0.04)
        dino.update_center(d["logits"][rank * 4 : (rank + 1) * 4])
        total = all_reduce(torch.tensor([1.0 + rank]))
        torch.save(
            {
                "koleo": koleo.detach(),
                "grad": x.grad,
                "sk": sk,
                "sk_patch": sk_patch,
                "sk_empty": sk_empty,
                "sk_extreme": sk_extreme,
                "center": dino.center,
                "world": get_world_size(),
                "rank": get_rank(),
                "sum": total,
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    r = [torch.load(tmp_path / f"rank{i}.pt") for i in range(WORLD)]
    assert [x["world"] for x in r] == [2, 2] and [x["rank"] for x in r] == [0, 1]
    assert float(r[0]["sum"]) == float(r[1]["sum"]) == 3.0
    d = _data()
    # KoLeo: the mean over ranks equals the single-process loss on all 10 samples, and so do the gradients
    # (each rank's input gradient sums every rank's loss: world x the gradient of the mean).
    x = d["feats"].clone().requires_grad_(True)
    single = KoLeoLoss()(x)
    single.backward()
    torch.testing.assert_close((r[0]["koleo"] + r[1]["koleo"]) / 2, single.detach())
    torch.testing.assert_close(torch.cat([r[0]["grad"], r[1]["grad"]]) / WORLD, x.grad)
    # A rank-local KoLeo would differ: nearest neighbours come from the other rank too.
    local_mean = (KoLeoLoss()(d["feats"][:5]) + KoLeoLoss()(d["feats"][5:])) / 2
    assert not torch.isclose(local_mean, single)
    # Sinkhorn-Knopp: each rank's rows of the single-process result on the concatenated batch.
    torch.testing.assert_close(torch.cat([r[0]["sk"], r[1]["sk"]]), sinkhorn_knopp(d["logits"], 0.05))
    torch.testing.assert_close(torch.cat([r[0]["sk_patch"], r[1]["sk_patch"]]), sinkhorn_knopp(d["patch_logits"], 0.05))
    assert r[0]["sk_empty"].shape == (0, 7)
    torch.testing.assert_close(r[1]["sk_empty"], sinkhorn_knopp(d["patch_logits"], 0.05))
    extreme = sinkhorn_knopp(d["extreme"], 0.04)
    assert torch.isfinite(extreme).all()
    torch.testing.assert_close(torch.cat([r[0]["sk_extreme"], r[1]["sk_extreme"]]), extreme)
    # Centre update: the mean over every rank's samples.
    expected_center = 0.1 * d["logits"].mean(dim=0, keepdim=True)
    torch.testing.assert_close(r[0]["center"], expected_center)
    torch.testing.assert_close(r[1]["center"], expected_center)
