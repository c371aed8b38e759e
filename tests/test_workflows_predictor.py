"""The Predictor interface: builders, metadata, batching, per-process cache, pickling."""

from __future__ import annotations

import importlib.util
import pickle

import model_factories as mf
import numpy as np
import pytest
import torch

from geodino.workflows.predictor import (
    Predictor,
    PredictorInfo,
    SpecLoader,
    build_predictor,
    check_bands,
    clear_model_cache,
    from_backbone,
    from_bundle,
    from_callable,
    from_spec,
    resolve_spec,
)


def _batch(n: int, bands: int = 3, side: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, bands, side, side)).astype(np.float32)


def test_spec_factory_gives_model_and_metadata() -> None:
    predictor = from_spec("model_factories:classifier", batch_size=4)
    assert isinstance(predictor.loader, SpecLoader)
    assert predictor.kind == "classification" and predictor.out_channels == 4 and predictor.in_bands == 3
    assert predictor.class_names == ("water", "forest", "field", "urban")
    out = predictor(_batch(6))
    assert out.shape == (6, 4, 32, 32) and out.dtype == np.float32
    # Classification models return logits; the predictor applies softmax before blending.
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_padding_to_fixed_batches_does_not_change_predictions() -> None:
    predictor = from_spec("model_factories:small_conv", batch_size=4)
    x = _batch(7)
    together = predictor(x)
    one_by_one = np.concatenate([predictor(x[i : i + 1]) for i in range(7)])
    assert np.array_equal(together, one_by_one)
    with torch.inference_mode():
        direct = predictor.model()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(together, direct, rtol=1e-5, atol=1e-6)


def test_non_contiguous_batches_match_contiguous_ones() -> None:
    predictor = from_spec("model_factories:pointwise", batch_size=2)
    x = _batch(2, side=48)
    view = np.asfortranarray(x)
    assert np.array_equal(predictor(view), predictor(x))


def test_output_stride_and_shape_check() -> None:
    predictor = from_spec("model_factories:coarse")
    assert predictor(_batch(3)).shape == (3, 5, 8, 8)
    wrong = from_callable(mf.Coarse(), PredictorInfo(in_bands=3, out_channels=5, factor=2))
    with pytest.raises(ValueError, match=r"expected \(3, 5, 16, 16\)"):
        wrong(_batch(3))
    with pytest.raises(ValueError, match=r"expected a \(B, 3, H, W\) batch"):
        predictor(_batch(1, bands=4))


def test_model_built_once_per_process_and_shared() -> None:
    clear_model_cache()
    predictor = from_spec("model_factories:pointwise")
    copy = pickle.loads(pickle.dumps(predictor))
    assert copy.model() is predictor.model()
    # The spec travels, not the weights.
    assert len(pickle.dumps(predictor)) < 2000


def test_rebuilt_from_spec_in_a_fresh_cache_gives_same_outputs() -> None:
    predictor = from_spec("model_factories:small_conv")
    before = predictor(_batch(2))
    clear_model_cache()
    assert np.array_equal(pickle.loads(pickle.dumps(predictor))(_batch(2)), before)


def test_in_memory_module_key_follows_weights() -> None:
    a, b = from_callable(mf.pointwise()), from_callable(mf.pointwise())
    assert a.key == b.key
    c = from_callable(mf.Pointwise(seed=3), PredictorInfo(in_bands=3, out_channels=2))
    assert c.key != a.key


def test_resolve_spec_accepts_instances_and_dotted_attributes() -> None:
    assert isinstance(resolve_spec("model_factories:Pointwise"), mf.Pointwise)  # a class is a factory
    assert isinstance(resolve_spec("torch.nn:Identity"), torch.nn.Identity)
    with pytest.raises(ValueError, match="must look like"):
        resolve_spec("no-colon")


def test_backbone_embeddings() -> None:
    predictor = from_backbone("test", batch_size=2)
    assert predictor.kind == "embedding" and predictor.factor == 16 and predictor.out_channels == 64
    model = predictor.model()
    meta = model.meta
    assert predictor.normalization_for(np.uint8).mean == tuple(meta.mean)
    assert predictor.normalization_for(np.uint8).scale == pytest.approx(1 / 255)
    x = _batch(3, side=64)
    out = predictor(x)
    assert out.shape == (3, 64, 4, 4)
    with torch.inference_mode():
        tokens = model.backbone.get_intermediate_layers(torch.from_numpy(x), n=1, reshape=True, norm=True)[0]
    np.testing.assert_allclose(out, tokens.numpy(), rtol=1e-4, atol=1e-5)
    # Random "test" weights are seeded: a rebuilt backbone is the same model.
    clear_model_cache()
    assert np.array_equal(from_backbone("test", batch_size=2)(x), out)


def test_backbone_module_and_unknown_name() -> None:
    from geodino import hub

    predictor = build_predictor(hub.dinov3_vit_test())
    assert predictor.factor == 16 and predictor.info.tile == 224
    with pytest.raises(ValueError, match="neither a checkpoint file nor a hub name"):
        from_backbone("vit_nonexistent")


def test_bundle_hook(tmp_path) -> None:
    path = tmp_path / "model.geodino"
    path.write_bytes(b"x")
    if importlib.util.find_spec("geodino.bundle") is None:
        with pytest.raises(ValueError, match=r"geodino\.bundle"):
            from_bundle(path)
        with pytest.raises(ValueError, match=r"geodino\.bundle"):
            build_predictor(str(path))
    else:
        with pytest.raises(Exception):  # noqa: B017  (any error: garbage is not a bundle)
            from_bundle(path)


def test_check_bands_message() -> None:
    predictor = Predictor(SpecLoader("model_factories:pointwise"), PredictorInfo(3, 2, band_names=("r", "g", "b")))
    check_bands(predictor, 3, ("a", "b", "c"), "x.tif")
    with pytest.raises(ValueError, match=r"x\.tif: model 'model' expects 3 bands \(r, g, b\), the input has 1 bands"):
        check_bands(predictor, 1, ("chm",), "x.tif")


def test_info_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        PredictorInfo(3, 2, kind="segmentation")
    with pytest.raises(ValueError, match="mean has 2 values"):
        PredictorInfo(3, 2, mean=(0.0, 0.0))
    info = PredictorInfo.coerce({"in_bands": 3, "out_channels": 2, "mean": [0.1, 0.2, 0.3], "kind": "regression"})
    assert info.mean == (0.1, 0.2, 0.3) and info.output_activation == "none"


def test_threads_build_the_model_once() -> None:
    from concurrent.futures import ThreadPoolExecutor

    clear_model_cache()
    before = mf.BUILDS["counted"]
    predictor = Predictor(SpecLoader("model_factories:counted_pointwise"), PredictorInfo(3, 2))
    with ThreadPoolExecutor(8) as pool:
        models = list(pool.map(lambda _: predictor.model(), range(8)))
    assert mf.BUILDS["counted"] == before + 1
    assert all(m is models[0] for m in models)
