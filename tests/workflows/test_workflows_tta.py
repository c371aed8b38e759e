"""Test-time augmentation in the Predictor: dihedral transforms averaged after the activation."""

from __future__ import annotations

import pickle

import model_factories as mf
import numpy as np
import pytest
import torch
from rasters import smooth_scene, write_raster

from geodino.workflows.mapping import map_raster
from geodino.workflows.predictor import PredictorInfo, from_callable, from_spec


def _batch(n: int = 3, side: int = 16, seed: int = 0, bands: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, bands, side, side)).astype(np.float32)


def _images(x: np.ndarray) -> dict[str, np.ndarray]:
    """The 8 dihedral images of (B, C, H, W) patches, written out by hand (T = transpose of the last two axes)."""
    t = np.swapaxes(x, -1, -2)
    return {
        "id": x,
        "lr": x[..., ::-1],
        "ud": x[..., ::-1, :],
        "rot180": x[..., ::-1, ::-1],
        "T": t,
        "T-lr": t[..., ::-1],
        "T-ud": t[..., ::-1, :],
        "T-rot180": t[..., ::-1, ::-1],
    }


# Each image above maps back by: its own inverse (flips, rot180 and T are involutions; T-lr^-1 = lr-T...).
_UNDO = {
    "id": lambda y: y,
    "lr": lambda y: y[..., ::-1],
    "ud": lambda y: y[..., ::-1, :],
    "rot180": lambda y: y[..., ::-1, ::-1],
    "T": lambda y: np.swapaxes(y, -1, -2),
    "T-lr": lambda y: np.swapaxes(y[..., ::-1], -1, -2),
    "T-ud": lambda y: np.swapaxes(y[..., ::-1, :], -1, -2),
    "T-rot180": lambda y: np.swapaxes(y[..., ::-1, ::-1], -1, -2),
}


def _hand_average(model: torch.nn.Module, x: np.ndarray, names: list[str], softmax: bool) -> np.ndarray:
    outputs = []
    for name in names:
        with torch.inference_mode():
            y = model(torch.from_numpy(np.ascontiguousarray(_images(x)[name])))
            y = torch.softmax(y, dim=1) if softmax else y
        outputs.append(_UNDO[name](y.numpy()))
    return np.mean(outputs, axis=0)


def test_d4_equals_a_hand_average_of_the_eight_images() -> None:
    predictor = from_spec("model_factories:small_conv", batch_size=4).with_options(tta="d4")
    x = _batch()
    expected = _hand_average(predictor.model(), x, list(_UNDO), softmax=False)
    np.testing.assert_allclose(predictor(x), expected, rtol=1e-5, atol=1e-6)
    plain = predictor.with_options(tta=None)(x)
    assert np.abs(plain - expected).max() > 1e-3  # the 3x3 convs are not symmetric: TTA changes the result


def test_flips_average_probabilities_not_logits() -> None:
    predictor = from_spec("model_factories:classifier", batch_size=2).with_options(tta="flips")
    model = mf.SmallConv(out_ch=4, seed=7)
    predictor = from_callable(model, predictor.info).with_options(tta="flips")
    x = _batch(n=2, side=8)
    out = predictor(x)
    np.testing.assert_allclose(
        out, _hand_average(model, x, ["id", "lr", "ud", "rot180"], softmax=True), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    logits = _hand_average(model, x, ["id", "lr", "ud", "rot180"], softmax=False)
    assert np.abs(out - torch.softmax(torch.from_numpy(logits), 1).numpy()).max() > 1e-4


def test_d4_output_is_invariant_under_the_group() -> None:
    predictor = from_spec("model_factories:small_conv", batch_size=4).with_options(tta="d4")
    x = _batch(seed=2)
    out = predictor(x)
    for name, image in _images(x).items():
        np.testing.assert_allclose(
            predictor(np.ascontiguousarray(image)), _images(out)[name], rtol=1e-5, atol=1e-6, err_msg=name
        )


def test_flips_work_on_rectangles_and_d4_refuses_them() -> None:
    predictor = from_spec("model_factories:small_conv", batch_size=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 12)).astype(np.float32)
    assert predictor.with_options(tta="flips")(x).shape == (2, 2, 8, 12)
    with pytest.raises(ValueError, match="must be square; got 8x12"):
        predictor.with_options(tta="d4")(x)


def test_tta_with_output_stride() -> None:
    predictor = from_spec("model_factories:coarse", batch_size=2).with_options(tta="d4")
    x = _batch(n=2, side=16)
    out = predictor(x)
    assert out.shape == (2, 5, 4, 4)
    np.testing.assert_allclose(
        out, _hand_average(predictor.model(), x, list(_UNDO), softmax=False), rtol=1e-5, atol=1e-6
    )


def test_tta_is_part_of_the_identity_and_survives_pickling() -> None:
    base = from_spec("model_factories:small_conv")
    d4 = base.with_options(tta="d4")
    assert d4.key != base.key and d4.model_key == base.model_key
    assert d4.describe()["tta"] == "d4" and base.describe()["tta"] is None
    assert d4.with_options(batch_size=2).tta == "d4"  # kept when not named
    assert d4.with_options(tta=None).tta is None and d4.with_options(tta="none").tta is None
    assert pickle.loads(pickle.dumps(d4)).tta == "d4"
    assert d4.model() is base.model()  # one model in memory
    with pytest.raises(ValueError, match="tta must be one of"):
        base.with_options(tta="rot90")


def test_tta_map_is_identical_across_chunkings(tmp_path) -> None:
    scene = write_raster(tmp_path / "s.tif", smooth_scene(3, 150, 130, seed=4, dtype=np.uint8))
    predictor = from_spec("model_factories:small_conv", batch_size=4).with_options(tta="d4")
    a = map_raster(scene, predictor, tmp_path / "a.zarr", tile=32, overlap=8, chunk=48, progress=False)
    b = map_raster(scene, predictor, tmp_path / "b.zarr", tile=32, overlap=8, chunk=(72, 144), progress=False)
    assert np.array_equal(a.prediction.values, b.prediction.values, equal_nan=True)
    # A resumed run must not mix TTA and plain chunks: the fingerprint differs.
    with pytest.raises(ValueError, match=r"model\.tta"):
        map_raster(
            scene,
            predictor.with_options(tta=None),
            tmp_path / "a.zarr",
            tile=32,
            overlap=8,
            chunk=48,
            progress=False,
            resume=True,
        )


def test_info_alias_still_validates() -> None:
    assert PredictorInfo(3, 2).kind == "regression"
