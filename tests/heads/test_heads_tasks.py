"""Task losses against hand computations on tiny tensors, head models per task, and the saved-model fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geodino.bundle import load_model, read_model_info, save_model
from geodino.heads.bins import BinsConfig
from geodino.heads.data.chips import IGNORE_INDEX
from geodino.heads.tasks import build_head_model, decode_outputs, model_info_fields, task_loss
from geodino.heads.tasks.canopy_height import REGRESSION_BINS
from geodino.modelinfo import ModelInfo

NAN = float("nan")


def heights(values) -> torch.Tensor:
    """(1, 1, H, W) outputs from a nested list."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


# -------------------------------------------------------------------------------------------- canopy height
def test_l1_masks_nan_and_counts_zero_metres() -> None:
    pred = heights([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[[0.0, NAN], [5.0, 4.0]]])
    # |1 - 0| + |3 - 5| + |4 - 4| over the 3 labelled pixels (0 m is a height, NaN is not)
    assert task_loss("canopy-height", "l1")(pred, target).item() == pytest.approx(3.0 / 3.0)


def test_binned_trains_with_l1_on_the_height() -> None:
    pred, target = heights([[2.0, 6.0]]), torch.tensor([[[1.0, 2.0]]])
    assert task_loss("canopy-height", "binned")(pred, target).item() == pytest.approx(2.5)


def test_silog_matches_the_formula() -> None:
    p = np.array([1.0, 2.0, 8.0, 0.5], np.float64)
    t = np.array([0.0, 3.0, 8.0, NAN], np.float64)
    for lam, eps in ((0.85, 0.1), (0.0, 1.0), (1.0, 0.1)):
        d = np.log(p[:3] + eps) - np.log(t[:3] + eps)
        expect = math.sqrt(max(np.mean(d**2) - lam * np.mean(d) ** 2, 1e-12))
        loss = task_loss("canopy-height", "silog", silog_lambda=lam, silog_eps=eps)
        got = loss(heights([p.tolist()]), torch.tensor([[t.tolist()]], dtype=torch.float32))
        assert got.item() == pytest.approx(expect, rel=1e-5)
    # lambda = 1 is scale-invariant: every height off by the same factor costs nothing
    t = torch.tensor([[[1.0, 3.0, 7.0]]])
    scaled = heights([(2.0 * (t[0, 0] + 0.1) - 0.1).tolist()])
    assert task_loss("canopy-height", "silog", silog_lambda=1.0)(scaled, t).item() < 1e-4


def test_losses_without_labels_are_zero_and_keep_the_graph() -> None:
    pred = heights([[1.0, 2.0]]).requires_grad_(True)
    for name in ("l1", "silog"):
        loss = task_loss("canopy-height", name)(pred, torch.full((1, 1, 2), NAN))
        assert loss.item() == 0.0
        loss.backward()
    logits = torch.zeros(1, 3, 1, 2, requires_grad=True)
    loss = task_loss("land-cover", "ce+dice")(logits, torch.full((1, 1, 2), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()


# ----------------------------------------------------------------------------------------------- land cover
def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=0, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=0, keepdims=True))


def test_cross_entropy_with_class_weights_and_ignore() -> None:
    z = np.array([[2.0, 0.0, 1.0, 5.0], [0.0, 1.0, 1.0, -5.0], [1.0, 3.0, 0.0, 0.0]], np.float32)  # (K=3, 4 px)
    y = np.array([0, 2, 1, IGNORE_INDEX])
    w = np.array([1.0, 2.0, 0.5])
    ls = _log_softmax(z.astype(np.float64))
    nll = np.array([-ls[y[i], i] for i in range(3)])
    expect = (w[y[:3]] * nll).sum() / w[y[:3]].sum()
    logits = torch.from_numpy(z)[None, :, None, :]
    target = torch.from_numpy(y)[None, None, :]
    got = task_loss("land-cover", "ce", class_weights=w.tolist())(logits, target)
    assert got.item() == pytest.approx(expect, rel=1e-5)
    assert task_loss("land-cover", "ce")(logits, target).item() == pytest.approx(nll.mean(), rel=1e-5)


def test_dice_on_softmax_over_labelled_pixels() -> None:
    z = np.array([[3.0, 0.0, 0.0, 9.0], [0.0, 2.0, 1.0, -9.0]], np.float32)  # (K=2, 4 px), last px unlabelled
    y = np.array([0, 1, 0, IGNORE_INDEX])
    p = np.exp(_log_softmax(z.astype(np.float64)))[:, :3]
    onehot = np.stack([y[:3] == c for c in range(2)]).astype(np.float64)
    dice = (2 * (p * onehot).sum(1) + 1.0) / (p.sum(1) + onehot.sum(1) + 1.0)
    ce = np.mean([-_log_softmax(z.astype(np.float64))[y[i], i] for i in range(3)])
    logits = torch.from_numpy(z)[None, :, None, :]
    target = torch.from_numpy(y)[None, None, :]
    got = task_loss("land-cover", "ce+dice", dice_weight=0.5)(logits, target)
    assert got.item() == pytest.approx(ce + 0.5 * (1.0 - dice.mean()), rel=1e-5)


def test_land_cover_refuses_targets_outside_the_classes() -> None:
    logits = torch.zeros(1, 2, 1, 3)
    with pytest.raises(ValueError, match=r"range 0\.\.2, but the head has 2 classes"):
        task_loss("land-cover", "ce")(logits, torch.tensor([[[0, 1, 2]]]))
    with pytest.raises(ValueError, match="class_weights must be 2"):
        task_loss("land-cover", "ce", class_weights=[1.0])(logits, torch.tensor([[[0, 1, 1]]]))


def test_bad_loss_and_task_names() -> None:
    with pytest.raises(ValueError, match="canopy-height losses"):
        task_loss("canopy-height", "ce")
    with pytest.raises(ValueError, match="land-cover losses"):
        task_loss("land-cover", "l1")
    with pytest.raises(ValueError, match="task must be one of"):
        task_loss("roads", "ce")
    with pytest.raises(ValueError, match="class_weights are for land cover"):
        task_loss("canopy-height", "l1", class_weights=[1.0])


# ----------------------------------------------------------------------------------------------- the models
@torch.no_grad()
def test_canopy_height_models_output_non_negative_metres(tiny_backbone) -> None:
    x = torch.randn(2, 3, 32, 32)
    direct = build_head_model(tiny_backbone, task="canopy-height", head="linear")
    assert direct.task_spec["loss"] == "l1" and direct.head.bins == REGRESSION_BINS
    out = direct(x)
    assert out.shape == (2, 1, 32, 32) and float(out.min()) >= 0.0
    assert direct.describe()["valid_range"] == (0.0, None) and direct.describe()["units"] == "m"
    binned = build_head_model(tiny_backbone, task="canopy-height", head="dpt", channels=16, n_hidden_channels=8)
    assert binned.task_spec["loss"] == "binned" and binned.head.n_logits == 256
    out = binned(x)
    assert out.shape == (2, 1, 32, 32) and float(out.min()) >= 0.0 and float(out.max()) <= 96.0
    small = BinsConfig(n_bins=8, min_depth=0.1, max_depth=20.0, bins_strategy="linear", norm_strategy="softmax")
    custom = build_head_model(tiny_backbone, task="canopy-height", loss="binned", bins=small, uncertainty=True)
    assert custom(x).shape == (2, 2, 32, 32)
    assert decode_outputs("canopy-height", custom(x)).shape == (2, 32, 32)


@torch.no_grad()
def test_land_cover_models_output_logits(tiny_backbone) -> None:
    names = ("water", "forest", "field")
    for head in ("linear", "dpt", "upernet"):
        model = build_head_model(tiny_backbone, task="land-cover", head=head, class_names=names).eval()
        out = model(torch.randn(1, 3, 64, 64))
        assert out.shape == (1, 3, 64, 64), head
        assert model.describe()["class_names"] == names and model.describe()["kind"] == "classification"
        assert decode_outputs("land-cover", out).dtype == torch.int64
    assert build_head_model(tiny_backbone, task="land-cover", n_classes=4).head.out_channels == 4


def test_build_head_model_refuses_what_does_not_fit(tiny_backbone) -> None:
    with pytest.raises(ValueError, match="head must be one of"):
        build_head_model(tiny_backbone, task="land-cover", head="segformer", n_classes=2)
    with pytest.raises(ValueError, match="n_classes=3 does not apply"):
        build_head_model(tiny_backbone, task="canopy-height", n_classes=3)
    with pytest.raises(ValueError, match="needs n_classes or class_names"):
        build_head_model(tiny_backbone, task="land-cover")
    with pytest.raises(ValueError, match="need loss 'binned'"):
        build_head_model(tiny_backbone, task="canopy-height", loss="l1", bins=BinsConfig())
    with pytest.raises(ValueError, match="2 class names for n_classes=3"):
        build_head_model(tiny_backbone, task="land-cover", n_classes=3, class_names=("a", "b"))


def test_model_info_fields_make_a_valid_model_info(tiny_backbone, tmp_path) -> None:
    fields = model_info_fields("canopy-height")
    assert fields["units"] == "m" and fields["valid_range"] == (0.0, None) and fields["kind"] == "regression"
    ModelInfo(in_bands=3, **fields)
    binned = build_head_model(tiny_backbone, task="canopy-height", head="dpt", channels=16, n_hidden_channels=8)
    assert model_info_fields("canopy-height", model=binned)["valid_range"] == (0.0, 96.0)
    colours = ((0, 0, 255), (0, 128, 0))
    fields = model_info_fields("land-cover", class_names=("water", "forest"), class_colours=colours)
    assert ModelInfo(in_bands=3, **fields).class_colours == colours
    with pytest.raises(ValueError, match="1 class colours for 2 classes"):
        model_info_fields("land-cover", class_names=("water", "forest"), class_colours=colours[:1])
    # a direct-regression model saves with these fields and loads back to the same outputs
    model = build_head_model(tiny_backbone, task="canopy-height", head="linear", loss="silog").eval()
    path = save_model(tmp_path / "chm.gdm", model, **model_info_fields("canopy-height", model=model))
    loaded = load_model(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert read_model_info(path).valid_range == (0.0, None)
