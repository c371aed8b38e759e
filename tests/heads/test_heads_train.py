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
    with pytest.raises(TrainError, match="cache='disk' needs cache_dir"):
        quick(cache="disk")


def test_schedule_warms_up_then_decays_to_zero() -> None:
    values = [lr_factor(s, 10, 2) for s in range(10)]
    assert values[:3] == [0.0, 0.5, 1.0]
    assert all(a > b for a, b in itertools.pairwise(values[2:]))
    assert lr_factor(10, 10, 2) == pytest.approx(0.0)
