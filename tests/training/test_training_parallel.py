"""DDP and FSDP2 across two real gloo processes against one process on the same global batch.

Each rank trains on its half of every global batch (B = 2 images per rank, 4 in all); the reference is one process
training on the whole batches. Sinkhorn-Knopp and KoLeo (``loss.koleo_distributed``, on by default) see every
rank's samples, so the rank-mean of each loss term equals the one-process term and the averaged gradients equal the
one-process gradients: losses and weights agree to float32 round-off (tolerances below).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from parallel_helpers import random_batch, shard_batch

from geodino.training.config import load_config
from geodino.training.loop import train_step
from geodino.training.meta_arch import LOSS_KEYS, SSLMetaArch
from geodino.training.parallel import gathered_state, load_state, wrap_model
from geodino.training.schedules import build_schedules

WORLD, B, STEPS = 2, 2, 3
# Gram anchoring on from step 1 and refreshed every step: the Gram teacher is sharded and copied too under FSDP2.
OVERRIDES = ["crops.n_local=2", "gram.enabled=true", "gram.start_iteration=1", "gram.update_frequency=1"]
LOSS_TOL = {"rtol": 1e-5, "atol": 1e-6}
# Measured: |loss difference| <= 1e-6 (losses ~7), |weight difference| <= 9e-8 after 3 AdamW steps (both strategies).
WEIGHT_TOL = {"rtol": 1e-5, "atol": 1e-6}


def _config(strategy: str, *extra: str):
    return load_config("tiny", [*OVERRIDES, f"parallel.strategy={strategy}", *extra])


def _model(cfg):
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)
    # LayerScale starts at 1e-5: the blocks are then near identities and every image's cls token almost the same,
    # so KoLeo, -log(nearest-neighbour distance), would amplify float32 round-off. Full residuals spread them.
    with torch.no_grad():
        for tree in filter(None, (model.student, model.teacher, model.gram_teacher)):
            for name, p in tree.named_parameters():
                if name.endswith(("ls1.gamma", "ls2.gamma")):
                    p.fill_(1.0)
    wrap_model(model, cfg.parallel, torch.device("cpu"))
    model.train()
    return model, model.make_optimizer()


def _losses(total: torch.Tensor, parts: dict) -> torch.Tensor:
    return torch.stack([total.float().reshape(()), *(parts[k].float().reshape(()) for k in LOSS_KEYS)])


def _state_via_file(model, opt, tmp: Path) -> tuple[dict, dict]:
    """As the loop does: rank 0 writes the (gathered, under FSDP2) state, every rank reads it back."""
    from geodino.training.distributed import get_rank, is_enabled

    gathered = gathered_state(model, opt)
    path = tmp / "state.pt"
    if get_rank() == 0:
        torch.save(gathered or (model.state_dict(), opt.state_dict()), path)
    if is_enabled():
        dist.barrier()
    return torch.load(path, weights_only=False)


def _train(cfg, batches: list[dict], tmp: Path) -> tuple:
    """STEPS steps; then step STEPS twice from the same RNG state: by this model and by a fresh one that loads
    this model's gathered state (a resume)."""
    model, opt = _model(cfg)
    schedules = build_schedules(cfg)
    losses = [_losses(*train_step(model, opt, schedules, b, it)[:2]) for it, b in enumerate(batches[:STEPS])]
    state = _state_via_file(model, opt, tmp)
    student = {k: v.clone() for k, v in state[0].items()}
    resumed, resumed_opt = _model(cfg)
    load_state(resumed, resumed_opt, *state)
    rng = torch.get_rng_state()
    next_loss = _losses(*train_step(model, opt, schedules, batches[STEPS], STEPS)[:2])
    torch.set_rng_state(rng)
    resumed_loss = _losses(*train_step(resumed, resumed_opt, schedules, batches[STEPS], STEPS)[:2])
    return torch.stack(losses), student, state, next_loss, resumed_loss, model


def _worker(rank: int, store: str, strategy: str, batches: list[dict], out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        cfg = _config(strategy)
        losses, weights, state, next_loss, resumed_loss, model = _train(
            cfg, [shard_batch(b, rank, WORLD) for b in batches], Path(out_dir)
        )
        result = {
            "losses": losses,
            "weights": weights,
            "next": next_loss,
            "resumed": resumed_loss,
            "strategy": model.parallel_strategy,
            "sharded": type(model.student["backbone"].cls_token).__name__,
        }
        if rank == 0:
            result["state"] = state
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """One process on the global batches (4 images each): (batches, losses, weights, next-step loss)."""
    cfg = _config("none")
    batches = [random_batch(cfg, WORLD * B, seed=it) for it in range(STEPS + 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses, weights, _, next_loss, resumed_loss, _ = _train(cfg, batches, tmp_path_factory.mktemp("reference"))
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(resumed_loss, next_loss, rtol=0, atol=0)  # a plain resume is exact
    return batches, losses, weights, next_loss


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_match_one_process_on_the_global_batch(strategy: str, reference: tuple, tmp_path: Path) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    batches, ref_losses, ref_weights, ref_next = reference
    args = (str(tmp_path / "store"), strategy, batches, str(tmp_path))
    mp.start_processes(_worker, args=args, nprocs=WORLD, join=True, start_method="fork")
    r = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in range(WORLD)]
    assert [x["strategy"] for x in r] == [strategy] * WORLD
    assert r[0]["sharded"] == ("DTensor" if strategy == "fsdp2" else "Parameter")
    # Losses: the mean over ranks of each rank's loss (total and every term) is the one-process loss.
    mean = (r[0]["losses"] + r[1]["losses"]) / WORLD
    torch.testing.assert_close(mean, ref_losses, **LOSS_TOL)
    assert not torch.allclose(r[0]["losses"], r[1]["losses"])  # the ranks did see different images
    # Weights after STEPS updates (student, EMA teacher, Gram teacher, loss centres): the one-process weights.
    for rank in range(WORLD):
        weights = r[rank]["weights"]
        assert weights.keys() == ref_weights.keys()
        for key, value in ref_weights.items():
            torch.testing.assert_close(weights[key], value, **WEIGHT_TOL, msg=lambda m, k=key: f"{k}: {m}")
    # The gathered state has the one-process format: a plain model and optimiser load it and step on.
    cfg = _config("none")
    plain, plain_opt = _model(cfg)
    load_state(plain, plain_opt, *r[0]["state"])
    assert all(not isinstance(v, torch.distributed.tensor.DTensor) for v in r[0]["state"][0].values())
    # A resumed (fresh, loaded) model takes the same next step as the one that trained; both match one process.
    mean_next = (r[0]["next"] + r[1]["next"]) / WORLD
    mean_resumed = (r[0]["resumed"] + r[1]["resumed"]) / WORLD
    torch.testing.assert_close(mean_resumed, mean_next, rtol=0, atol=1e-7)
    torch.testing.assert_close(mean_next, ref_next, **LOSS_TOL)


def test_one_process_wraps_nothing_and_activation_checkpointing_keeps_the_math(tiny_cfg, batch_factory) -> None:
    """In one process no strategy wraps; recomputed activations give the same loss and gradients."""
    from geodino.training.distributed import is_enabled

    assert not is_enabled()
    batch = batch_factory(tiny_cfg(), batch_size=4)
    grads = []
    for extra in ([], ["parallel.activation_checkpointing=true"]):
        cfg = tiny_cfg("parallel.strategy=fsdp2", *extra)
        model, _ = _model(cfg)
        assert model.parallel_strategy == "none" and "get_student_output" not in model.__dict__
        torch.manual_seed(1)
        total, _ = model.forward_backward(batch, iteration=0, teacher_temp=0.05)
        grads.append((total, {k: p.grad.clone() for k, p in model.student.named_parameters()}))
    (t0, g0), (t1, g1) = grads
    assert list(g0) == list(g1)  # parameter names unchanged by checkpointing
    torch.testing.assert_close(t1, t0, rtol=0, atol=0)
    for key in g0:
        torch.testing.assert_close(g1[key], g0[key], rtol=1e-6, atol=1e-7)


def test_parallel_settings_are_checked() -> None:
    from geodino.training.config import ConfigError

    assert load_config("tiny").parallel.strategy == "ddp" and load_config("tiny").loss.koleo_distributed
    for override, words in (
        ("parallel.strategy=zero3", "'ddp', 'fsdp2'"),
        ("parallel.prefetch_factor=0", "must be >= 1"),
        ("parallel.peak_tflops=-1", "must be > 0"),
    ):
        with pytest.raises(ConfigError, match=words):
            load_config("tiny", [override])
