"""Checkpoint loading: any file name, three formats, strict and actionable failures."""

from __future__ import annotations

import pytest
import torch
from test_backbone_reference import randomize, timm_twin

import geodino
from geodino import hub
from geodino.models.checkpoint import CheckpointError, save_backbone
from geodino.models.config import ARCHS
from geodino.models.meta import SAT_MEAN, WEB_MEAN
from geodino.models.vit import DinoVisionTransformer


@pytest.fixture
def small() -> DinoVisionTransformer:
    model = hub.dinov3_vit_test().eval()
    randomize(model, seed=3)
    return model


def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.forward_features(x)["x_norm_patchtokens"]


X = torch.randn(2, 3, 32, 48)


@pytest.mark.parametrize("name", ["renamed.bin", "weights", "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"])
def test_meta_state_dict_loads_under_any_name(tmp_path, small, name) -> None:
    """The file name never decides anything: even a misleading one."""
    path = tmp_path / name
    torch.save(small.state_dict(), path)
    loaded = geodino.load_backbone(path, pretraining="lvd1689m")
    assert torch.equal(features(loaded, X), features(small, X))
    assert loaded.meta.name == "dinov3_vit_test" and loaded.meta.checkpoint_format == "meta"
    assert loaded.meta.mean == WEB_MEAN


def test_training_checkpoint_container_is_unwrapped(tmp_path, small) -> None:
    sd = {f"backbone.{k}": v for k, v in small.state_dict().items()}
    sd["dino_head.mlp.0.weight"] = torch.zeros(3, 3)
    torch.save({"teacher": sd, "iteration": 10}, tmp_path / "ckpt.pt")
    loaded = geodino.load_backbone(tmp_path / "ckpt.pt", pretraining="lvd1689m")
    assert torch.equal(features(loaded, X), features(small, X))


def test_timm_state_dict_loads(tmp_path, small) -> None:
    import timm

    twin = timm_twin(small, "vit_small_patch16_dinov3_qkvb", embed_dim=64, depth=2, num_heads=4)
    torch.save(twin.state_dict(), tmp_path / "timm.pth")
    loaded = hub.dinov3_vit_test(weights=tmp_path / "timm.pth", pretraining="lvd1689m")
    assert loaded.meta.checkpoint_format == "timm"
    with torch.inference_mode():
        assert (features(loaded, X) - twin.forward_features(X)[:, 5:]).abs().max() <= 1e-5
    # timm's bias-free variant (distilled models had zero biases) also loads
    plain = timm.create_model("vit_small_patch16_dinov3", embed_dim=64, depth=2, num_heads=4).eval()
    torch.save(plain.state_dict(), tmp_path / "plain.pth")
    loaded = geodino.load_backbone(tmp_path / "plain.pth", pretraining="lvd1689m")
    with torch.inference_mode():
        assert (features(loaded, X) - plain.forward_features(X)[:, 5:]).abs().max() <= 1e-5


def test_hf_safetensors_file_renamed_loads_with_its_normalisation(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, num_register_tokens=4
    )
    ref = transformers.DINOv3ViTModel(cfg).eval()
    ref.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(
        '{"image_mean": [0.43, 0.411, 0.296], "image_std": [0.213, 0.156, 0.143]}'
    )
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "hf" / "anything.safetensors")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        geodino.load_backbone(tmp_path / "hf")
    loaded = geodino.load_backbone(tmp_path / "hf" / "anything.safetensors")
    assert loaded.meta.checkpoint_format == "hf" and loaded.meta.weights == "sat493m"
    assert loaded.meta.mean == (0.43, 0.411, 0.296)  # what the file says wins over our default
    with torch.inference_mode():
        ref_out = ref(pixel_values=X).last_hidden_state[:, 5:]
    assert (features(loaded, X) - ref_out).abs().max() <= 1e-5


def test_sat_vitl_is_recognised_by_local_cls_norm(tmp_path) -> None:
    cfg = ARCHS["dinov3_vitl16"].replace(depth=24, local_cls_norm=True)
    with torch.device("meta"):
        model = DinoVisionTransformer(cfg)
    # zero-stride tensors: torch.save writes one element per key, not 1.2 GB
    sd = {k: torch.zeros(1).expand(v.shape) for k, v in model.state_dict().items()}
    torch.save(sd, tmp_path / "x.pth")
    loaded = geodino.load_backbone(tmp_path / "x.pth")
    assert loaded.meta.name == "dinov3_vitl16" and loaded.meta.weights == "sat493m"
    assert loaded.meta.mean == SAT_MEAN and loaded.meta.gsd == 0.6
    assert loaded.local_cls_norm is not None


def test_unknown_pretraining_warns_and_explicit_wins(tmp_path, small) -> None:
    torch.save(small.state_dict(), tmp_path / "w.pth")
    with pytest.warns(UserWarning, match="pretraining='sat493m'"):
        geodino.load_backbone(tmp_path / "w.pth")
    assert geodino.load_backbone(tmp_path / "w.pth", pretraining="sat493m").meta.mean == SAT_MEAN


def test_wrong_architecture_for_constructor(tmp_path, small) -> None:
    torch.save(small.state_dict(), tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"expected a dinov3_vitl16 checkpoint.*found dinov3_vit_test"):
        hub.dinov3_vitl16(weights=tmp_path / "w.pth")


def test_truncated_file(tmp_path, small) -> None:
    torch.save(small.state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*truncated"):
        geodino.load_backbone(tmp_path / "cut.pth")


def test_missing_file_and_foreign_checkpoint(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such file"):
        geodino.load_backbone(tmp_path / "nope.pth")
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3), "fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"resnet\.pth: not a DINOv3 backbone.*conv1\.weight"):
        geodino.load_backbone(tmp_path / "resnet.pth")


def test_unexpected_missing_and_misshapen_keys(tmp_path, small) -> None:
    sd = small.state_dict()
    torch.save({**sd, "head.weight": torch.zeros(3)}, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: head\.weight"):
        geodino.load_backbone(tmp_path / "extra.pth", pretraining="lvd1689m")
    loaded = geodino.load_backbone(tmp_path / "extra.pth", pretraining="lvd1689m", ignore_keys=[r"^head\."])
    assert loaded.meta.ignored_keys == ("head.weight",)
    no_norm = {k: v for k, v in sd.items() if k != "blocks.1.norm2.bias"}
    torch.save(no_norm, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.norm2\.bias"):
        geodino.load_backbone(tmp_path / "missing.pth", pretraining="lvd1689m")
    bad = dict(sd)
    bad["blocks.0.ls1.gamma"] = torch.zeros(65)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ls1\.gamma.*\(65,\).*\(64,\)"):
        geodino.load_backbone(tmp_path / "shape.pth", pretraining="lvd1689m")
    nan = dict(sd)
    nan["norm.weight"] = torch.full((64,), float("nan"))
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        geodino.load_backbone(tmp_path / "nan.pth", pretraining="lvd1689m")


def test_geodino_format_round_trip_keeps_metadata(tmp_path, small) -> None:
    small.meta = small.meta.replace(weights="sat493m", mean=SAT_MEAN, gsd=0.6)
    save_backbone(small, tmp_path / "m.geodino")
    loaded = geodino.load_backbone(tmp_path / "m.geodino")
    assert loaded.meta.gsd == 0.6 and loaded.meta.mean == SAT_MEAN and loaded.meta.checkpoint_format == "geodino"
    assert torch.equal(features(loaded, X), features(small, X))


def test_bf16_periods_from_meta_files_are_kept(tmp_path, small) -> None:
    """Official files store RoPE periods rounded to bfloat16; loading them is what matches the reference."""
    sd = small.state_dict()
    sd["rope_embed.periods"] = sd["rope_embed.periods"].to(torch.bfloat16)
    torch.save(sd, tmp_path / "p.pth")
    loaded = geodino.load_backbone(tmp_path / "p.pth", pretraining="lvd1689m")
    assert torch.equal(loaded.rope_embed.periods, sd["rope_embed.periods"].float())
