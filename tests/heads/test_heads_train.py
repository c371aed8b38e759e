"""fit_head on synthetic, learnable chips: it learns, is deterministic, caches features, stops early, resumes,
and fine-tunes with layer-wise decayed lrs; D4 augmentation keeps images and targets aligned."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
from heads_helpers import make_tiny_backbone
from train_helpers import marked_chip, synthetic_chips

from geodino.heads.augment import AUGMENT_SETS, apply_d4, draw_transforms, invert_d4
from geodino.heads.tasks import build_head_model
from geodino.heads.train import HeadTrainConfig, TrainError, fit_head, lr_factor


def quick(**changes) -> HeadTrainConfig:
    """A small, silent training configuration."""
    values = {"epochs": 6, "batch_size": 4, "lr": 3e-2, "progress": False, "patience": None, "num_threads": 1}
    values.update(changes)
    return HeadTrainConfig(**values)


def land_cover_model(seed: int = 0):
    return build_head_model(make_tiny_backbone(seed, depth=2), task="land-cover", class_names=("dark", "bright"))


def canopy_model(seed: int = 0):
    return build_head_model(make_tiny_backbone(seed, depth=2), task="canopy-height", head="linear", loss="l1")


def count_backbone_calls(model) -> list[int]:
    """A one-element counter, incremented by every backbone forward pass (a hook on the patch embedding)."""
    calls = [0]
    model.backbone.patch_embed.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def predict(model, chips) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(chips.images))


# ---------------------------------------------------------------------------------------------------- D4
def test_d4_moves_image_and_target_together() -> None:
    image, target = marked_chip(8)
    seen = set()
    for t in range(8):
        im, tg = apply_d4(image, t), apply_d4(target, t)
        corner = tuple(np.argwhere(im[0] == 1.0)[0])
        assert tuple(np.argwhere(tg == 7)[0]) == corner  # the marked corner moved to the same place
        assert tuple(np.argwhere(tg == 3)[0]) == tuple(np.argwhere(im[1] == 2.0)[0])
        seen.add((corner, tuple(np.argwhere(tg == 3)[0])))
        torch.testing.assert_close(apply_d4(torch.from_numpy(image), t), torch.from_numpy(im))
        np.testing.assert_array_equal(apply_d4(im, invert_d4(t)), image)
    assert len(seen) == 8  # eight different placements: the 8 symmetries of the square
    # the documented meanings: 1 = a quarter turn counter-clockwise, 4 = left-right flip, 6 = up-down flip
    assert tuple(np.argwhere(apply_d4(target, 1) == 7)[0]) == (7, 0)
    assert tuple(np.argwhere(apply_d4(target, 4) == 7)[0]) == (0, 7)
    assert tuple(np.argwhere(apply_d4(target, 6) == 7)[0]) == (7, 0) and apply_d4(target, 6)[7, 1] == 3


def test_draw_transforms_is_seeded_and_stays_in_its_set() -> None:
    a = draw_transforms(50, "flips", np.random.default_rng(3))
    np.testing.assert_array_equal(a, draw_transforms(50, "flips", np.random.default_rng(3)))
    assert set(a.tolist()) <= set(AUGMENT_SETS["flips"]) and len(set(a.tolist())) > 1
    assert set(draw_transforms(10, None, np.random.default_rng(0)).tolist()) == {0}
    with pytest.raises(ValueError, match="augment must be one of"):
        draw_transforms(3, "rot45", np.random.default_rng(0))


# ------------------------------------------------------------------------------------------------ learning
def test_land_cover_head_learns_bright_and_dark() -> None:
    train, val = synthetic_chips("land-cover", 16, seed=0), synthetic_chips("land-cover", 8, seed=1)
    model = land_cover_model()
    untrained = (predict(copy.deepcopy(model), val).argmax(1).numpy() == val.targets).mean()
    result = fit_head(model, train, val, quick(epochs=8), log=None)
    accuracy = (predict(result.model, val).argmax(1).numpy() == val.targets).mean()
    assert result.history[-1]["train_loss"] < 0.25 < result.history[0]["train_loss"]
    assert accuracy > 0.95 and accuracy > untrained + 0.3
    assert [row["epoch"] for row in result.history] == list(range(1, 9))


def test_canopy_height_head_learns_brightness_heights() -> None:
    train = synthetic_chips("canopy-height", 16, seed=0, unlabelled=0.2)
    val = synthetic_chips("canopy-height", 8, seed=1)
    model = canopy_model()

    def mae(pred, target):
        return float(np.nanmean(np.abs(pred - target)))

    untrained = mae(predict(copy.deepcopy(model), val)[:, 0].numpy(), val.targets)
    result = fit_head(model, train, val, quick(epochs=10, lr=0.1), val_metric=mae, higher_is_better=False, log=None)
    trained = mae(predict(result.model, val)[:, 0].numpy(), val.targets)
    assert trained < 0.5 * untrained, (trained, untrained)
    assert result.best_metric == pytest.approx(min(row["val_metric"] for row in result.history))
    assert result.best_metric == pytest.approx(trained, rel=1e-4)  # the best epoch's weights are the ones loaded


def test_two_runs_give_identical_weights() -> None:
    train, val = synthetic_chips("land-cover", 8, seed=0), synthetic_chips("land-cover", 4, seed=1)
    states = []
    for _ in range(2):
        result = fit_head(land_cover_model(), train, val, quick(epochs=3, augment="d4"), log=None)
        states.append(result.model.head.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key
    other = fit_head(land_cover_model(), train, val, quick(epochs=3, augment="d4", seed=1), log=None)
    assert not torch.equal(other.model.head.conv.weight, states[0]["conv.weight"])  # the seed matters


# ---------------------------------------------------------------------------------------------------- cache
def test_second_epoch_runs_no_backbone_forward() -> None:
    train, val = synthetic_chips("land-cover", 8, seed=0), synthetic_chips("land-cover", 4, seed=1)
    model = land_cover_model()
    calls = count_backbone_calls(model)
    per_epoch: list[int] = []
    fit_head(model, train, val, quick(epochs=3, augment=None), log=lambda _line: per_epoch.append(calls[0]))
    assert per_epoch[0] == 2 + 1  # 2 training batches of 4, 1 validation batch
    assert per_epoch[1] == per_epoch[2] == per_epoch[0]  # later epochs: every feature from the cache


def test_cache_changes_nothing_but_the_time() -> None:
    train, val = synthetic_chips("canopy-height", 8, seed=0), synthetic_chips("canopy-height", 4, seed=1)
    runs = {}
    for cache in ("memory", None):
        model = canopy_model()
        calls = count_backbone_calls(model)
        result = fit_head(model, train, val, quick(epochs=3, augment=None, cache=cache), log=None)
        runs[cache] = (result, calls[0])
    (cached, n_cached), (plain, n_plain) = runs["memory"], runs[None]
    assert n_cached == 3 and n_plain == 9
    for key, value in plain.model.head.state_dict().items():
        assert torch.equal(cached.model.head.state_dict()[key], value), key
    assert [r["train_loss"] for r in cached.history] == [r["train_loss"] for r in plain.history]
    assert cached.cache["hits"] == 2 * 12 and cached.cache["misses"] == 12 and plain.cache is None
    assert [r["cache_misses"] for r in cached.history] == [12, 0, 0]


def test_d4_cache_keys_on_chip_and_transform() -> None:
    train = synthetic_chips("land-cover", 8, seed=0)
    result = fit_head(land_cover_model(), train, None, quick(epochs=5, augment="d4"), log=None)
    drawn = {(i, int(t)) for epoch in range(1, 6) for i, t in enumerate(draw_transforms(8, "d4", _epoch_rng(epoch)))}
    assert result.cache["misses"] == len(drawn) == result.cache["entries"]
    assert result.cache["hits"] == 5 * 8 - len(drawn)


def _epoch_rng(epoch: int, seed: int = 0) -> np.random.Generator:
    """The generator fit_head uses for an epoch, advanced past its chip permutation."""
    rng = np.random.default_rng([seed, epoch])
    rng.permutation(8)
    return rng


# ------------------------------------------------------------------------------------------------ refusals
def test_bad_inputs_are_refused() -> None:
    train = synthetic_chips("land-cover", 4)
    empty = train.subset(np.zeros(4, bool))
    with pytest.raises(TrainError, match="training split is empty"):
        fit_head(land_cover_model(), empty, None, quick(), log=None)
    unlabelled = synthetic_chips("land-cover", 4, unlabelled=1.0)
    with pytest.raises(TrainError, match="validation split has no labelled pixel"):
        fit_head(land_cover_model(), train, unlabelled, quick(), log=None)
    with pytest.raises(TrainError, match="the model was built for 'canopy-height'"):
        fit_head(canopy_model(), train, None, quick(), log=None)
    with pytest.raises(TrainError, match="have 4 bands, the backbone"):
        fit_head(land_cover_model(), synthetic_chips("land-cover", 4, bands=4), None, quick(), log=None)
    with pytest.raises(TrainError, match="needs higher_is_better"):
        fit_head(land_cover_model(), train, train, quick(), val_metric=lambda p, t: 0.0, log=None)
    with pytest.raises(TrainError, match="epoch 1: the validation metric is nan"):
        fit_head(land_cover_model(), train, train, quick(), val_metric=lambda p, t: np.nan, higher_is_better=True)
    with pytest.raises(TrainError, match="cache='disk' needs cache_dir"):
        quick(cache="disk")


def test_schedule_warms_up_then_decays_to_zero() -> None:
    values = [lr_factor(s, 10, 2) for s in range(10)]
    assert values[:3] == [0.0, 0.5, 1.0]
    assert all(a > b for a, b in itertools.pairwise(values[2:]))
    assert lr_factor(10, 10, 2) == pytest.approx(0.0)


# ------------------------------------------------------------------------------- stopping and checkpoints
class StopRunError(Exception):
    """Raised by a log callback to cut a run short."""


def test_early_stopping_keeps_the_best_epoch(tmp_path) -> None:
    train, val = synthetic_chips("land-cover", 8, seed=0), synthetic_chips("land-cover", 4, seed=1)
    calls = []

    def worse_each_epoch(pred, target):  # epoch 1 is the best, then the metric only rises
        calls.append(pred.shape)
        return float(len(calls))

    config = quick(epochs=10, patience=2, checkpoint_dir=tmp_path / "ck", progress=True)
    result = fit_head(land_cover_model(), train, val, config, val_metric=worse_each_epoch, higher_is_better=False)
    assert result.stopped_early and len(result.history) == 3 and result.history[-1]["stopped"]
    assert result.best_epoch == 1 and result.best_metric == 1.0
    assert calls[0] == (4, 32, 32)  # decoded class maps of the whole validation set
    best = torch.load(tmp_path / "ck" / "best.pt", weights_only=True)
    assert best["epoch"] == 1
    for key, value in best["state_dict"].items():
        assert torch.equal(result.model.head.state_dict()[key], value), key
    last = torch.load(tmp_path / "ck" / "last.pt", weights_only=True)
    assert not torch.equal(last["model"]["conv.weight"], best["state_dict"]["conv.weight"])
    # resuming a run that stopped does not train again
    again = fit_head(land_cover_model(), train, val, config, val_metric=worse_each_epoch, higher_is_better=False)
    assert len(calls) == 3 and again.best_epoch == 1 and len(again.history) == 3
    assert torch.equal(again.model.head.conv.weight, best["state_dict"]["conv.weight"])


def test_resumed_run_equals_an_uninterrupted_one(tmp_path) -> None:
    train, val = synthetic_chips("land-cover", 8, seed=0), synthetic_chips("land-cover", 4, seed=1)
    whole = fit_head(land_cover_model(), train, val, quick(epochs=4, augment="d4"), log=None)
    config = quick(epochs=4, augment="d4", checkpoint_dir=tmp_path / "ck", cache="disk", cache_dir=tmp_path / "fc")

    def stop_after_two(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise StopRunError

    with pytest.raises(StopRunError):
        fit_head(land_cover_model(), train, val, config, log=stop_after_two)
    lines: list[str] = []
    resumed = fit_head(land_cover_model(), train, val, config, log=lines.append)
    assert lines[0].startswith("resumed from") and "after epoch 2" in lines[0]
    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    assert resumed.best_epoch == whole.best_epoch
    for key, value in whole.model.head.state_dict().items():
        assert torch.equal(resumed.model.head.state_dict()[key], value), key
    with pytest.raises(TrainError, match=r"another training configuration \(lr: 0\.03 in the checkpoint, 0\.01 now"):
        fit_head(land_cover_model(), train, val, quick(epochs=4, augment="d4", lr=0.01, checkpoint_dir=tmp_path / "ck"))


# -------------------------------------------------------------------------------------------- cache modes
def test_disk_cache_serves_a_second_fit_without_backbone_calls(tmp_path) -> None:
    train, val = synthetic_chips("canopy-height", 8, seed=0), synthetic_chips("canopy-height", 4, seed=1)
    config = quick(epochs=2, augment=None, cache="disk", cache_dir=tmp_path / "fc")
    first = fit_head(canopy_model(), train, val, config, log=None)
    assert len(list((tmp_path / "fc").glob("*.feat.pt"))) == 12 and first.cache["misses"] == 12
    model = canopy_model()
    calls = count_backbone_calls(model)
    second = fit_head(model, train, val, config, log=None)
    assert calls[0] == 0 and second.cache["misses"] == 0 and second.cache["hits"] == 24
    for key, value in first.model.head.state_dict().items():
        assert torch.equal(second.model.head.state_dict()[key], value), key
    # other chips under the same directory: recomputed, never read from the old entries
    other = synthetic_chips("canopy-height", 8, seed=5)
    third = fit_head(canopy_model(), other, val, config, log=None)
    assert third.cache["misses"] == 12


def test_cache_size_bound_in_a_fit(tmp_path) -> None:
    train = synthetic_chips("land-cover", 8, seed=0)
    free = fit_head(land_cover_model(), train, None, quick(epochs=3, augment=None), log=None)
    entry = free.cache["bytes"] // free.cache["entries"]
    bounded = fit_head(
        land_cover_model(), train, None, quick(epochs=3, augment=None, cache_max_bytes=3 * entry), log=None
    )
    assert bounded.cache["entries"] == 3 and bounded.cache["bytes"] <= 3 * entry
    assert bounded.cache["misses"] == 8 + 2 * 5 and bounded.cache["uncached"] == 5 + 2 * 5
    # the same training up to float rounding: recomputed entries run through the backbone in smaller batches
    for key, value in free.model.head.state_dict().items():
        torch.testing.assert_close(bounded.model.head.state_dict()[key], value, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------ finetune
def test_finetune_uses_layer_wise_decayed_lrs() -> None:
    from geodino.heads.train import param_groups

    train = synthetic_chips("land-cover", 8, seed=0)
    model = land_cover_model()
    config = quick(epochs=2, finetune=True, lr=0.1, backbone_lr=0.01, layer_decay=0.5)
    groups = param_groups(model, config)
    lr_of = {name: g["base_lr"] for g in groups for name in g["names"]}
    depth = 2
    assert lr_of["head.conv.weight"] == pytest.approx(0.1)
    assert lr_of["backbone.patch_embed.proj.weight"] == pytest.approx(0.01 * 0.5 ** (depth + 1))
    assert lr_of["backbone.blocks.0.attn.qkv.weight"] == pytest.approx(0.01 * 0.5**depth)
    assert lr_of["backbone.blocks.1.attn.qkv.weight"] == pytest.approx(0.01 * 0.5)
    assert lr_of["backbone.norm.weight"] == pytest.approx(0.01)
    assert all(g["weight_decay"] == 0.0 for g in groups if any(n.endswith(".bias") for n in g["names"]))
    frozen_lrs = {name for g in param_groups(model, quick()) for name in g["names"]}
    assert all(name.startswith("head.") for name in frozen_lrs)

    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    result = fit_head(model, train, None, config, log=None)
    assert result.cache is None  # the backbone changes: nothing to cache
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert "blocks.1.attn.qkv.weight" in changed and "patch_embed.proj.weight" in changed
    assert model.freeze_backbone and not any(p.requires_grad for p in model.backbone.parameters())
    assert not model.backbone.training
