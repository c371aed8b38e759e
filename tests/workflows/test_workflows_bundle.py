"""Saved models (geodino.bundle): round trips, refusals, the Predictor of a saved model."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_test_heads import Joined, ScaledJoined, TinyHead, tiny_model

import geodino
from geodino import hub
from geodino.bundle import FORMAT_VERSION, ModelFileError, describe_model, load_model, read_model_info, save_model
from geodino.models.checkpoint import save_backbone
from geodino.workflows.predictor import clear_model_cache, load_predictor

CLASSES = ["water", "tree", "grass"]


def _x(side: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((2, 3, side, side)).astype(np.float32))


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    with torch.inference_mode():
        assert torch.equal(a.eval()(_x()), b.eval()(_x()))


@pytest.fixture
def model() -> Joined:
    return tiny_model(class_names=CLASSES)


def test_round_trip_embedded(model: Joined, tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.gdm", model, class_colours=[(0, 0, 255), (0, 128, 0), (200, 200, 0)])
    loaded = load_model(path)
    assert isinstance(loaded, Joined) and isinstance(loaded.head, TinyHead)
    _same_outputs(model, loaded)
    info = loaded.geodino_info
    assert info == read_model_info(path)
    assert info.kind == "classification" and info.class_names == tuple(CLASSES) and info.out_channels == 3
    assert info.class_colours[1] == (0, 128, 0) and info.factor == 1 and info.multiple == 16
    assert info.mean == model.backbone.meta.mean and info.band_names == ("red", "green", "blue")
    assert loaded.backbone.meta == model.backbone.meta
    assert loaded.head.config() == model.head.config()


def test_round_trip_referenced_backbone(model: Joined, tmp_path: Path) -> None:
    weights = save_backbone(model.backbone, tmp_path / "backbone.pt")
    embedded = save_model(tmp_path / "embedded.gdm", model)
    referenced = save_model(tmp_path / "referenced.gdm", model, backbone_file=weights)
    assert referenced.stat().st_size < embedded.stat().st_size / 4
    loaded = load_model(referenced)
    _same_outputs(model, loaded)
    assert loaded.geodino_info == load_model(embedded).geodino_info
    assert "referenced: " in describe_model(referenced) and "present" in describe_model(referenced)


def test_referenced_backbone_also_found_beside_a_moved_model(model: Joined, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    weights = save_backbone(model.backbone, tmp_path / "a" / "backbone.pt")
    save_model(tmp_path / "a" / "m.gdm", model, backbone_file=weights)
    (tmp_path / "a").rename(tmp_path / "b")
    _same_outputs(model, load_model(tmp_path / "b" / "m.gdm"))


def test_referenced_file_must_hold_the_models_backbone(model: Joined, tmp_path: Path) -> None:
    other = save_backbone(hub.dinov3_vit_test(), tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="does not hold the model's backbone weights"):
        save_model(tmp_path / "m.gdm", model, backbone_file=other)


def test_missing_and_changed_referenced_backbone_are_refused(model: Joined, tmp_path: Path) -> None:
    weights = save_backbone(model.backbone, tmp_path / "backbone.pt")
    path = save_model(tmp_path / "m.gdm", model, backbone_file=weights)
    save_backbone(hub.dinov3_vit_test(), weights)  # same architecture, other weights
    with pytest.raises(ModelFileError, match=r"has changed since the model was saved .*SHA-256"):
        load_model(path)
    weights.unlink()
    with pytest.raises(ModelFileError, match=r"referenced, not embedded, and the file .*backbone\.pt is missing"):
        load_model(path)
    assert "MISSING" in describe_model(path)


def test_backbone_alone_is_an_embedding_model(tmp_path: Path) -> None:
    backbone = hub.dinov3_vit_test()
    path = geodino.save_model(tmp_path / "b.gdm", backbone)
    loaded = geodino.load_model(path)
    assert isinstance(loaded, geodino.DinoVisionTransformer)
    info = loaded.geodino_info
    assert info.kind == "embedding" and info.out_channels == 64 and info.factor == 16
    predictor = load_predictor(path, batch_size=2)
    x = _x(32).numpy()
    with torch.inference_mode():
        tokens = backbone.get_intermediate_layers(torch.from_numpy(x), n=1, reshape=True, norm=True)[0]
    np.testing.assert_allclose(predictor(x), tokens.numpy(), rtol=1e-5, atol=1e-6)


def test_truncated_foreign_and_future_files_are_refused(model: Joined, tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.gdm", model)
    data = path.read_bytes()
    (tmp_path / "cut.gdm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a geodino model, or a truncated one"):
        load_model(tmp_path / "cut.gdm")
    (tmp_path / "pickle.gdm").write_bytes(pickle.dumps(zipfile.ZipInfo("x")))  # any foreign python object
    with pytest.raises(ModelFileError, match="not a geodino model"):
        load_model(tmp_path / "pickle.gdm")
    with zipfile.ZipFile(tmp_path / "foreign.gdm", "w") as zf:
        zf.writestr("hello.txt", "not a model")
    with pytest.raises(ModelFileError, match="not a geodino model"):
        load_model(tmp_path / "foreign.gdm")
    torch.save(model.backbone.state_dict(), tmp_path / "sd.pth")
    with pytest.raises(ModelFileError, match=r"not a geodino model .*top-level keys"):
        load_model(tmp_path / "sd.pth")
    save_backbone(model.backbone, tmp_path / "bb.pt")
    with pytest.raises(ModelFileError, match=r"a geodino backbone checkpoint: load it with geodino\.load_backbone"):
        load_model(tmp_path / "bb.pt")
    payload = torch.load(path, weights_only=True)
    payload["version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.gdm")
    with pytest.raises(ModelFileError, match=f"format version {FORMAT_VERSION + 1}, written by a newer geodino"):
        load_model(tmp_path / "future.gdm")


def test_head_that_does_not_fit_its_backbone_is_refused(model: Joined, tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.gdm", model)
    payload = torch.load(path, weights_only=True)
    payload["head"]["description"]["layers"] = [0, 5]
    torch.save(payload, tmp_path / "layers.gdm")
    with pytest.raises(ModelFileError, match=r"reads backbone layers \[0, 5\], but the backbone has 2 blocks"):
        load_model(tmp_path / "layers.gdm")
    # The backbone entry of a wider model: the 64-wide head cannot read its 128-wide features.
    torch.manual_seed(1)
    wide = geodino.DinoVisionTransformer(hub.build("dinov3_vit_test").config.replace(embed_dim=128))
    other = save_model(tmp_path / "wide.gdm", wide)
    payload = torch.load(path, weights_only=True)
    payload["backbone"] = torch.load(other, weights_only=True)["backbone"]
    torch.save(payload, tmp_path / "mismatch.gdm")
    with pytest.raises(ModelFileError, match=r"the head does not fit its backbone \(width 128\)"):
        load_model(tmp_path / "mismatch.gdm")


def test_saving_refuses_what_would_not_load_back(model: Joined, tmp_path: Path) -> None:
    class LocalHead(TinyHead):
        pass

    with pytest.raises(ModelFileError, match="cannot be imported by another process"):
        save_model(tmp_path / "a.gdm", Joined(model.backbone, LocalHead()))
    head = TinyHead()
    head.config = lambda: {"embed_dim": np.int64(64)}  # type: ignore[method-assign]
    with pytest.raises(ModelFileError, match=r"head config\.embed_dim: holds a int64"):
        save_model(tmp_path / "b.gdm", Joined(model.backbone, head))
    with pytest.raises(ModelFileError, match=r"metadata promise \(1, 4, 64, 64\)"):
        save_model(tmp_path / "c.gdm", model, out_channels=4, class_names=None)
    with pytest.raises(ModelFileError, match="unknown model-info fields"):
        save_model(tmp_path / "d.gdm", model, colour="red")
    with pytest.raises(ModelFileError, match="takes a geodino backbone"):
        save_model(tmp_path / "e.gdm", torch.nn.Conv2d(3, 3, 1))
    # A constructor argument the file does not record: the rebuilt model would compute something else.
    with pytest.raises(ModelFileError, match=r"rebuilt from the file computes something else"):
        save_model(tmp_path / "f.gdm", ScaledJoined(model.backbone, model.head, scale=2.0))
    save_model(tmp_path / "g.gdm", ScaledJoined(model.backbone, model.head, scale=1.0)).unlink()
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_predictor_key_comes_from_content_not_path(model: Joined, tmp_path: Path) -> None:
    a = save_model(tmp_path / "a.gdm", model)
    (tmp_path / "copy.gdm").write_bytes(a.read_bytes())
    other = save_model(tmp_path / "o.gdm", tiny_model(seed=3, class_names=CLASSES))
    pa, pc, po = (load_predictor(p) for p in (a, tmp_path / "copy.gdm", other))
    assert pa.key == pc.key != po.key
    assert pa.key.startswith("saved:")
    # Rebuilt in a fresh process cache (as a Dask worker does) it predicts the same.
    x = _x(32).numpy()
    before = pa(x)
    clear_model_cache()
    assert np.array_equal(pickle.loads(pickle.dumps(pa))(x), before)
    # A file changed under a predictor is refused when a worker rebuilds it.
    clear_model_cache()
    a.write_bytes(other.read_bytes())
    with pytest.raises(ModelFileError, match="changed while in use"):
        pa(x)


def test_regression_units_and_describe(tmp_path: Path) -> None:
    model = tiny_model(
        out_channels=2, kind="regression", units="m", valid_range=[0.0, 96.0], channel_names=["height", "uncertainty"]
    )
    path = save_model(tmp_path / "chm.gdm", model, name="tiny-chm", tile=64)
    info = load_model(path).geodino_info
    assert info.units == "m" and info.valid_range == (0.0, 96.0) and info.channel_names == ("height", "uncertainty")
    assert info.output_attrs()["units"] == "m"
    text = describe_model(path)
    for expected in ("tiny-chm", "regression", "units", "0 .. 96", "height, uncertainty", "embedded", "TinyHead"):
        assert expected in text, text


def test_map_takes_tile_overlap_and_named_bands_from_the_file(model: Joined, tmp_path: Path) -> None:
    from rasters import smooth_scene, write_raster

    from geodino.workflows.mapping import map_raster

    data = smooth_scene(4, 80, 96, seed=3, dtype=np.uint8)
    scene = write_raster(tmp_path / "nbgr.tif", data, descriptions=["NIR", "Blue", "Green", "Red"])
    path = save_model(tmp_path / "m.gdm", model, tile=64, overlap=16)
    auto = map_raster(scene, path, tmp_path / "auto.zarr", progress=False)
    assert auto.attrs["input_bands"] == ["Red", "Green", "Blue"]
    assert auto.attrs["tile"] == 64 and auto.attrs["stride"] == 48
    explicit = map_raster(scene, path, tmp_path / "explicit.zarr", bands=[4, 3, 2], progress=False)
    assert np.array_equal(auto.probabilities.values, explicit.probabilities.values, equal_nan=True)
    # Names the model does not use select nothing: 2 bands for 3 is an error naming both.
    plain = write_raster(tmp_path / "plain.tif", data[:2], descriptions=["Red", "NIR"])
    with pytest.raises(ValueError, match=r"expects 3 bands \(red, green, blue\), the input has 2 bands \(Red, NIR\)"):
        map_raster(plain, path, tmp_path / "plain.zarr", progress=False)
