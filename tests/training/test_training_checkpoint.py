"""Resumable checkpoints: what they hold, corrupt ones skipped, keep-last-k + milestones, DCP folders, 2 -> 1 ranks."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from training_data_helpers import assert_same_state, single_thread, write_rgb  # noqa: F401 (single_thread is a fixture)

from geodino.models.checkpoint import load_backbone
from geodino.training import checkpoint as ck
from geodino.training.config import load_config
from geodino.training.data import RasterWindows, open_sources
from geodino.training.loop import train, train_step
from geodino.training.meta_arch import SSLMetaArch
from geodino.training.schedules import build_schedules

pytestmark = pytest.mark.usefixtures("single_thread")  # imported fixture: one torch thread


def _quiet(*_):
    pass


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return write_rgb(tmp_path_factory.mktemp("scene") / "scene.tif", size=96, seed=2)


def _run_args(image: Path, *extra: str) -> list[str]:
    return [
        f"data.paths=['{image}']",
        "train.batch_size=4",
        "crops.n_local=2",
        "train.log_every=1",
        "train.diagnostic_every=0",
        *extra,
    ]


# ------------------------------------------------------------------------------------------------ content
def test_a_checkpoint_holds_models_centres_optimiser_rng_and_stream_position(tmp_path, batch_factory, image):
    cfg = load_config(
        "tiny",
        [
            "crops.n_local=2",
            "train.batch_size=4",
            "loss.centering=softmax",
            "gram.enabled=true",
            "gram.start_iteration=1",
        ],
    )
    model = SSLMetaArch(cfg)
    optimizer = model.make_optimizer()
    schedules = build_schedules(cfg)
    for it in range(3):
        train_step(model, optimizer, schedules, batch_factory(cfg, 4, seed=it), it)
    windows = RasterWindows(open_sources([image], window_size=32), 32, seed=4)
    windows.num_workers = 2
    for last in (2, 1, 4):  # batches from workers 0, 1, 0 (their last windows' indices; 3 skipped)
        windows.advance(last)
    path = ck.save_checkpoint(
        tmp_path, model, optimizer, 3, rank_state={"data": windows.state_dict()}, meta={"steps": 9}
    )
    assert path.name == "checkpoint_00000003.pth" and (path.parent / "checkpoint_00000003.pth.sha256").is_file()
    draws = (random.random(), np.random.rand(), torch.rand(3))  # what comes after the checkpoint

    torch.manual_seed(99)
    fresh = SSLMetaArch(cfg)
    fresh_opt = fresh.make_optimizer()
    state = ck.load_checkpoint(path, fresh, fresh_opt)
    assert (state.iteration, state.world_size, state.meta) == (3, 1, {"steps": 9})
    saved, loaded = model.state_dict(), fresh.state_dict()
    assert any(k.startswith("gram_teacher.") for k in saved) and any(k.startswith("teacher.dino_head") for k in saved)
    assert saved["dino_loss.center"].abs().sum() > 0 and saved["ibot_loss.center"].abs().sum() > 0
    assert_same_state(saved, loaded)  # student, EMA teacher, Gram teacher, both heads, DINO and iBOT centres
    assert_same_state(optimizer.state_dict(), fresh_opt.state_dict())  # moments, step counts, param groups
    ck.restore_rng(state.for_rank(0)["rng"])
    assert random.random() == draws[0] and np.random.rand() == draws[1] and torch.equal(torch.rand(3), draws[2])
    # The stream continues where it stopped: worker 0 of the restored loader serves the shard whose turn is next.
    restored = RasterWindows(open_sources([image], window_size=32), 32, seed=4)
    restored.num_workers = 2
    assert restored.load_state_dict(state.for_rank(0)["data"]) is True
    assert restored.shard_of(0, 2) == 1 and next(restored.shard_indices(0, 2)) == 3
    assert restored.shard_of(1, 2) == 0 and next(restored.shard_indices(1, 2)) == 6
    # Restored on another sharding (2 ranks x 1 worker): past the furthest index reached, no window seen twice.
    other = RasterWindows(open_sources([image], window_size=32), 32, seed=4, rank=1, world_size=2)
    assert other.load_state_dict(state.for_rank(0)["data"], state.ranks and [r["data"] for r in state.ranks]) is False
    assert next(other.shard_indices(0, 1)) == 7  # the first index of shard 1 of 2 at or past 6
    with pytest.raises(ValueError, match="seed 4"):
        RasterWindows(open_sources([image], window_size=32), 32, seed=5).load_state_dict(state.for_rank(0)["data"])


# -------------------------------------------------------------------------------------- keep, atomicity
def test_keep_last_k_plus_milestones_and_an_interrupted_write(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 11):
        ck.save_checkpoint(tmp_path, model, optimizer, step, keep=2, milestone_every=4)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [4, 8, 9, 10]
    sums = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.sha256"))
    assert sums == [f"checkpoint_{s:08d}.pth.sha256" for s in (4, 8, 9, 10)]

    # A write that dies after the data is on disk but before the rename leaves no checkpoint under a final name.
    def die(_path):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(ck, "_sha256", die)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, model, optimizer, 11, keep=2)
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / "checkpoint_00000011.pth.tmp").is_file()
    assert ck.latest_checkpoint(tmp_path).name == "checkpoint_00000010.pth"
    assert ck.resumable_checkpoint(tmp_path).name == "checkpoint_00000010.pth"
    ck.save_checkpoint(tmp_path, model, optimizer, 12, keep=2, milestone_every=4)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert "checkpoint_00000011.pth.tmp" not in names  # the stale temporary is cleaned up
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [4, 8, 10, 12]


# ---------------------------------------------------------------------------------------- corruption
def test_a_checkpoint_cut_in_half_is_detected_and_the_previous_one_used(tmp_path, image):
    # Two loader workers and a resume after an odd number of batches: the restored loader must start with worker 1.
    args = _run_args(image, "train.steps=6", "train.checkpoint_every=3", "train.num_workers=2")
    run = tmp_path / "run"
    train(load_config("tiny", args), run, log=_quiet)
    last = run / "checkpoints" / "checkpoint_00000006.pth"
    original = torch.load(last, weights_only=False)
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointInvalidError, match=r"checkpoint_00000006\.pth: corrupt or truncated"):
        ck.verify_checkpoint(last)
    with pytest.warns(UserWarning, match=r"checkpoint_00000006\.pth: corrupt or truncated.*previous checkpoint"):
        result = train(load_config(run / "config.yaml"), run, resume=True, log=_quiet)
    assert result.start_iteration == 3  # resumed from the previous checkpoint and redid steps 4 to 6
    redone = torch.load(last, weights_only=False)
    assert_same_state(original["model"], redone["model"])
    assert_same_state(original["optimizer"], redone["optimizer"])
    # Every checkpoint corrupt: a clear refusal, not a fresh start.
    for _, path in ck.list_checkpoints(run):
        path.write_bytes(b"\0" * 100)
    with pytest.warns(UserWarning), pytest.raises(ck.RunError, match=r"every checkpoint .* is corrupt"):
        train(load_config(run / "config.yaml", ["train.steps=8"]), run, resume=True, log=_quiet)


def test_sharded_dcp_folders_in_one_process_resume_exactly_export_and_a_flipped_byte_is_caught(tmp_path, image):
    args = _run_args(image, "train.steps=4", "train.checkpoint_every=2", "checkpoint.format=dcp")
    whole = tmp_path / "whole"
    train(load_config("tiny", args), whole, log=_quiet)
    folders = [p for _, p in ck.list_checkpoints(whole)]
    assert [p.name for p in folders] == ["checkpoint_00000002.dcp", "checkpoint_00000004.dcp"]
    assert {"MANIFEST.sha256", ".metadata", "extra.pt"} <= {p.name for p in folders[1].iterdir()}
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "checkpoints" / "checkpoint_00000004.dcp")
    result = train(load_config(resumed / "config.yaml"), resumed, resume=True, log=_quiet)
    assert result.start_iteration == 2
    assert_same_state(
        torch.load(whole / "backbone.pth")["state_dict"], torch.load(resumed / "backbone.pth")["state_dict"]
    )
    # Any checkpoint exports its EMA teacher as a backbone file, with the run's bands and normalisation.
    exported = load_backbone(ck.export_backbone(folders[1], tmp_path / "teacher_4.pth"))
    final = load_backbone(whole / "backbone.pth")
    assert_same_state(exported.state_dict(), final.state_dict())
    assert exported.meta.replace(source=final.meta.source) == final.meta and final.meta.weights == "geodino"
    earlier = load_backbone(ck.export_backbone(folders[0], tmp_path / "teacher_2.pth"))
    assert not torch.equal(earlier.blocks[0].mlp.fc1.weight, final.blocks[0].mlp.fc1.weight)
    shard = next(p for p in folders[1].iterdir() if p.suffix == ".distcp")
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match=rf"{shard.name}: corrupt or truncated"):
        assert ck.resumable_checkpoint(whole) == folders[0]


# ------------------------------------------------------------------------- FSDP2 on 2 ranks -> 1 rank
WORLD, K, N, GLOBAL_BATCH = 2, 2, 4, 8


def _fsdp_cfg():
    # KoLeo off: on the untrained tiny model its gradients are ~1e4 times the others' and cancel across images, so
    # one batch of 8 and two of 4 (another summation order) differ by percents in the weight gradients; its
    # cross-rank equivalence is tested in test_training_distributed.
    return load_config("tiny", ["crops.n_local=2", f"train.batch_size={GLOBAL_BATCH}", "loss.koleo_weight=0.0"])


def shard_model(model: SSLMetaArch) -> None:
    """FSDP2 on student and EMA teacher alike (per block, then backbone and heads), so the EMA pairs shards."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for part in (model.student, model.teacher):
        for block in part["backbone"].blocks:
            fully_shard(block)
        for name in ("backbone", "dino_head", "ibot_head"):
            fully_shard(part[name])
        register_fsdp_forward_method(part["backbone"], "forward_features")


def _step(model, optimizer, schedules, batch, it) -> torch.Tensor:
    """One training step (as the loop's, without its flat gradient all-reduce: FSDP2 reduces gradients itself)."""
    from geodino.training.checkpoint import uses_fsdp
    from geodino.training.param_groups import apply_schedules

    values = schedules.at(it)
    apply_schedules(optimizer, values["lr"], values["weight_decay"], freeze_last_layer=False)
    optimizer.zero_grad(set_to_none=True)
    total, _ = model.forward_backward(batch, iteration=it, teacher_temp=values["teacher_temp"])
    if uses_fsdp(model):
        from torch.distributed.fsdp import FSDPModule

        for module in model.teacher.modules():  # a no-grad root keeps its parameters gathered: shard them again
            if isinstance(module, FSDPModule):
                module.reshard()
    model.clip_gradients()
    optimizer.step()
    model.update_teacher(values["momentum"])
    return total


def _global_batch(cfg, it: int, make_batch) -> dict:
    return make_batch(cfg, GLOBAL_BATCH, seed=100 + it)


def _rank_slice(batch: dict, rank: int) -> dict:
    """This rank's images of a crop-major batch (every crop's rows of images rank*B/2 .. (rank+1)*B/2)."""
    half = GLOBAL_BATCH // WORLD

    def part(x):
        if x is None:
            return None
        return x.unflatten(0, (-1, GLOBAL_BATCH))[:, rank * half : (rank + 1) * half].flatten(0, 1)

    keys = ("global_crops", "local_crops", "masks", "gram_crops")
    return {k: part(v) if k in keys else v for k, v in batch.items()}


def _fsdp_worker(rank: int, store: str, out: str, make_batch) -> None:
    from geodino.training.distributed import all_reduce

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        cfg = _fsdp_cfg()
        torch.manual_seed(0)
        model = SSLMetaArch(cfg)
        shard_model(model)
        optimizer = model.make_optimizer()
        schedules = build_schedules(cfg)
        losses = []
        for it in range(N):
            if it == K:
                data = {"rank": rank}
                ck.save_checkpoint(Path(out) / "dcp", model, optimizer, K, rank_state=data)  # sharded: FSDP2
                ck.save_checkpoint(Path(out) / "file", model, optimizer, K, rank_state=data, sharded=False)
            total = _step(model, optimizer, schedules, _rank_slice(_global_batch(cfg, it, make_batch), rank), it)
            losses.append(float(all_reduce(total.detach().clone(), op="mean")))
        full, _ = get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            torch.save({"model": full, "losses": losses}, Path(out) / "reference.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path, batch_factory):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    args = (str(tmp_path / "store"), str(tmp_path), batch_factory)
    mp.start_processes(_fsdp_worker, args=args, nprocs=WORLD, join=True, start_method="fork")
    sharded = ck.resumable_checkpoint(tmp_path / "dcp")
    assert sharded.name == f"checkpoint_{K:08d}.dcp"
    assert len([p for p in sharded.iterdir() if p.suffix == ".distcp"]) == WORLD  # one shard file per rank
    reference = torch.load(tmp_path / "reference.pt", weights_only=False)
    cfg = _fsdp_cfg()
    schedules = build_schedules(cfg)
    runs = []
    for source in (sharded, ck.resumable_checkpoint(tmp_path / "file")):
        torch.manual_seed(7)  # another initialisation: everything must come from the checkpoint
        model = SSLMetaArch(cfg)
        optimizer = model.make_optimizer()
        state = ck.load_checkpoint(source, model, optimizer)
        assert (state.iteration, state.world_size) == (K, WORLD)
        assert [r["rank"] for r in state.ranks] == [0, 1]
        ck.restore_rng(state.for_rank(0)["rng"])
        snapshot = ({k: v.clone() for k, v in model.state_dict().items()}, optimizer.state_dict())
        losses = [
            float(_step(model, optimizer, schedules, _global_batch(cfg, it, batch_factory), it)) for it in range(K, N)
        ]
        runs.append((snapshot, losses, model.state_dict()))
    (dcp_snap, dcp_losses, dcp_final), (file_snap, file_losses, file_final) = runs
    # The 2-rank shards, loaded in 1 process, are exactly the full state the 2 ranks gathered at step K ...
    assert_same_state(dcp_snap[0], file_snap[0])
    assert_same_state(dcp_snap[1], file_snap[1])
    # ... and the single process continues from either identically.
    assert dcp_losses == file_losses
    assert_same_state(dcp_final, file_final)
    # Against the 2-rank run that never stopped: the same losses and weights up to the float differences of one
    # batch of 8 against two of 4 (summation order). Measured: losses equal to 7 digits, weights within 3e-7.
    torch.testing.assert_close(torch.tensor(dcp_losses), torch.tensor(reference["losses"][K:]), rtol=1e-5, atol=0)
    for key, value in reference["model"].items():
        torch.testing.assert_close(dcp_final[key], value, rtol=0, atol=1e-5, msg=key)


# ------------------------------------------------------------------------------ the loop on 2 gloo ranks
def _loop_worker(rank: int, store: str, run_dir: str, overrides: list[str], resume: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        cfg = load_config(Path(run_dir) / "config.yaml") if resume else load_config("tiny", overrides)
        train(cfg, run_dir, resume=resume, log=_quiet)
    finally:
        dist.destroy_process_group()


def _spawn_loop(tmp_path: Path, run: Path, overrides: list[str], resume: bool) -> None:
    store = tmp_path / f"store-{run.name}-{int(resume)}"
    args = (str(store), str(run), overrides, resume)
    mp.start_processes(_loop_worker, args=args, nprocs=WORLD, join=True, start_method="fork")


@pytest.mark.slow
def test_a_two_rank_run_resumes_exactly_on_two_ranks_and_with_a_warning_on_one(tmp_path, image):
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    overrides = _run_args(image, "train.steps=4", "train.checkpoint_every=2", "checkpoint.keep=5")
    whole = tmp_path / "whole"
    _spawn_loop(tmp_path, whole, overrides, resume=False)
    saved = torch.load(whole / "checkpoints" / "checkpoint_00000004.pth", weights_only=False)
    assert saved["world_size"] == WORLD and [r["data"]["rank"] for r in saved["ranks"]] == [0, 1]
    nexts = [r["data"]["next"] for r in saved["ranks"]]
    assert set(nexts[0]) == {0} and set(nexts[1]) == {1}  # each rank's own shard of the window stream

    def interrupted(name: str) -> Path:
        run = tmp_path / name
        shutil.copytree(whole, run)
        (run / "checkpoints" / "checkpoint_00000004.pth").unlink()
        (run / "backbone.pth").unlink()
        return run

    again = interrupted("again")
    _spawn_loop(tmp_path, again, overrides, resume=True)
    redone = torch.load(again / "checkpoints" / "checkpoint_00000004.pth", weights_only=False)
    assert_same_state(saved["model"], redone["model"])  # every rank restored its own RNG and stream position
    assert_same_state(saved["optimizer"], redone["optimizer"])
    assert_same_state(saved["ranks"], redone["ranks"])

    one = interrupted("one")
    with pytest.warns(UserWarning, match=r"saved on 2 rank\(s\) x 1 worker\(s\), resumed on 1 x 1"):
        result = train(load_config(one / "config.yaml"), one, resume=True, log=_quiet)
    assert result.start_iteration == 2
    state = torch.load(one / "checkpoints" / "checkpoint_00000004.pth", weights_only=False)
    at_two = torch.load(one / "checkpoints" / "checkpoint_00000002.pth", weights_only=False)
    furthest = max(v for r in at_two["ranks"] for v in r["data"]["next"].values())
    # One rank continued past every window the two ranks had read: B windows per step from index `furthest` on.
    assert state["world_size"] == 1 and state["ranks"][0]["data"]["next"] == {0: furthest + 2 * 4}
