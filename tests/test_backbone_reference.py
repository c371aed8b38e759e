"""The backbone against the references: timm's vit_*_patch16_dinov3 and Hugging Face's DINOv3ViTModel."""

from __future__ import annotations

import pytest
import torch
from timm.models.eva import checkpoint_filter_fn

from geodino.models.config import ARCHS, VitConfig
from geodino.models.vit import DinoVisionTransformer

TOL = 1e-5


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random non-trivial values everywhere (LayerScale, biases incl. the masked k bias, norms)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.05
            is_norm_scale = name.endswith("weight") and "norm" in name
            p.copy_(noise + (1.0 if is_norm_scale else 0.0))
            if name.endswith(".gamma"):
                p.mul_(10)  # LayerScale ~0.5: blocks matter


def timm_twin(model: DinoVisionTransformer, timm_name: str, **kwargs) -> torch.nn.Module:
    import timm

    twin = timm.create_model(timm_name, pretrained=False, **kwargs).eval()
    twin.load_state_dict(checkpoint_filter_fn(model.state_dict(), twin), strict=True)
    return twin


def assert_close_to_timm(model: DinoVisionTransformer, twin: torch.nn.Module, x: torch.Tensor) -> None:
    depth = len(model.blocks)
    with torch.inference_mode():
        feats = model.forward_features(x)
        ref = twin.forward_features(x)
        ours_raw = model.get_intermediate_layers(x, n=depth, return_class_token=True, norm=False)
        ours_norm = model.get_intermediate_layers(x, n=depth, reshape=True, norm=True)
        ref_raw = twin.forward_intermediates(
            x, indices=depth, return_prefix_tokens=True, norm=False, output_fmt="NLC", intermediates_only=True
        )
        ref_norm = twin.forward_intermediates(x, indices=depth, norm=True, output_fmt="NCHW", intermediates_only=True)
    assert (feats["x_norm_patchtokens"] - ref[:, 5:]).abs().max() <= TOL
    assert (feats["x_norm_clstoken"] - ref[:, 0]).abs().max() <= TOL
    assert (feats["x_storage_tokens"] - ref[:, 1:5]).abs().max() <= TOL
    assert len(ours_raw) == len(ref_raw) == depth
    for (patches, cls), (ref_patches, ref_prefix) in zip(ours_raw, ref_raw, strict=True):
        assert (patches - ref_patches).abs().max() <= TOL
        assert (cls - ref_prefix[:, 0]).abs().max() <= TOL
    for ours, theirs in zip(ours_norm, ref_norm, strict=True):
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max() <= TOL


@pytest.mark.parametrize(
    ("name", "timm_name", "overrides", "timm_kwargs"),
    [
        ("dinov3_vits16", "vit_small_patch16_dinov3_qkvb", {}, {}),
        ("dinov3_vits16plus", "vit_small_plus_patch16_dinov3_qkvb", {}, {}),
        # 7B-style: SwiGLU-64, no qkv bias, head dim 128, local_cls_norm, reduced width and depth.
        (
            "dinov3_vit7b16",
            "vit_7b_patch16_dinov3",
            {"embed_dim": 512, "depth": 3, "num_heads": 4},
            {"embed_dim": 512, "depth": 3, "num_heads": 4},
        ),
    ],
)
def test_matches_timm(name: str, timm_name: str, overrides: dict, timm_kwargs: dict) -> None:
    cfg = ARCHS[name].replace(**overrides)
    model = DinoVisionTransformer(cfg).eval()
    randomize(model)
    twin = timm_twin(model, timm_name, **timm_kwargs)
    torch.manual_seed(1)
    assert_close_to_timm(model, twin, torch.randn(2, 3, 64, 112))  # non-square: 4 x 7 patches


@pytest.mark.slow
def test_vitl_with_local_cls_norm_matches_timm() -> None:
    """Full-size ViT-L carrying the SAT-493M local_cls_norm key (unused at inference)."""
    cfg = ARCHS["dinov3_vitl16"].replace(local_cls_norm=True)
    model = DinoVisionTransformer(cfg).eval()
    randomize(model)
    assert "local_cls_norm.weight" in model.state_dict() and len(model.state_dict()) == 370
    twin = timm_twin(model, "vit_large_patch16_dinov3_qkvb")
    torch.manual_seed(2)
    assert_close_to_timm(model, twin, torch.randn(1, 3, 48, 80))


def test_key_counts_match_official() -> None:
    """Key counts of the published state dicts (dinov3-reference.md)."""
    counts = {"dinov3_vits16": 188, "dinov3_vits16plus": 212}
    for name, count in counts.items():
        with torch.device("meta"):
            model = DinoVisionTransformer(ARCHS[name])
        assert len(model.state_dict()) == count


@pytest.mark.parametrize("gated", [False, True])
def test_matches_huggingface(tmp_path, gated: bool) -> None:
    import geodino

    transformers = pytest.importorskip("transformers")
    config = transformers.DINOv3ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256 if not gated else 176,
        use_gated_mlp=gated,
        hidden_act="silu" if gated else "gelu",
        num_register_tokens=4,
        layerscale_value=0.5,
    )
    torch.manual_seed(0)
    reference = transformers.DINOv3ViTModel(config).eval()
    randomize(reference)
    reference.save_pretrained(tmp_path / "hf")
    model = geodino.load_backbone(tmp_path / "hf", pretraining="lvd1689m")
    x = torch.randn(2, 3, 48, 80)
    with torch.inference_mode():
        out = reference(pixel_values=x, output_hidden_states=True)
        feats = model.forward_features(x)
        layers = model.get_intermediate_layers(x, n=2, norm=False, return_class_token=True)
    assert (out.last_hidden_state[:, 5:] - feats["x_norm_patchtokens"]).abs().max() <= TOL
    assert (out.pooler_output - feats["x_norm_clstoken"]).abs().max() <= TOL
    for i, (patches, cls) in enumerate(layers):
        assert (out.hidden_states[i + 1][:, 5:] - patches).abs().max() <= TOL
        assert (out.hidden_states[i + 1][:, 0] - cls).abs().max() <= TOL


def test_sides_not_multiple_of_patch_are_padded_or_rejected() -> None:
    model = DinoVisionTransformer(ARCHS["dinov3_vit_test"]).eval()
    x = torch.randn(1, 3, 250, 241)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        model.forward_features(x)
    model.input_padding = "center"
    feats = model.forward_features(x)
    assert feats["x_norm_patchtokens"].shape[1] == 16 * 16  # 256 x 256 after padding, nothing cropped
    padded = torch.nn.functional.pad(x, (7, 8, 3, 3))
    model.input_padding = "error"
    same = model.forward_features(padded)["x_norm_patchtokens"]
    assert torch.equal(feats["x_norm_patchtokens"], same)


def test_masks_replace_patch_tokens_with_mask_token() -> None:
    model = DinoVisionTransformer(ARCHS["dinov3_vit_test"]).eval()
    with torch.no_grad():
        model.mask_token.normal_()
    x = torch.randn(2, 3, 32, 32)
    masks = torch.zeros(2, 4, dtype=torch.bool)
    masks[0, 1] = True
    tokens, _ = model.prepare_tokens(x, masks)
    assert torch.equal(tokens[0, 5 + 1], model.mask_token[0])
    assert not torch.equal(tokens[1, 5 + 1], model.mask_token[0])
    out = model.forward_features(x, masks=masks)
    assert out["masks"] is masks
    assert not torch.equal(out["x_norm_patchtokens"][0], model.forward_features(x)["x_norm_patchtokens"][0])


def test_wrong_band_count_is_named() -> None:
    model = DinoVisionTransformer(ARCHS["dinov3_vit_test"]).eval()
    with pytest.raises(ValueError, match="takes 3 bands"):
        model(torch.randn(1, 4, 32, 32))


def test_rope_rescale_only_in_training() -> None:
    model = DinoVisionTransformer(ARCHS["dinov3_vit_test"])
    model.eval()
    a = model.rope_embed.coords(4, 4, torch.device("cpu"))
    b = model.rope_embed.coords(4, 4, torch.device("cpu"))
    assert torch.equal(a, b) and a.min() == -0.75 and a.max() == 0.75  # (0 + 0.5) / 4 * 2 - 1
    model.train()
    torch.manual_seed(0)
    c = model.rope_embed.coords(4, 4, torch.device("cpu"))
    ratio = c / a
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))  # one global scale
    assert 0.5 <= ratio.flatten()[0] <= 2.0 and not torch.equal(a, c)


def test_get_intermediate_layers_indices_and_flags() -> None:
    model = DinoVisionTransformer(VitConfig(64, 4, 4)).eval()
    x = torch.randn(1, 3, 32, 48)
    last2 = model.get_intermediate_layers(x, n=2)
    by_index = model.get_intermediate_layers(x, n=[2, 3])
    assert all(torch.equal(a, b) for a, b in zip(last2, by_index, strict=True))
    ((patches, cls, extra),) = model.get_intermediate_layers(
        x, n=[-1], reshape=True, return_class_token=True, return_extra_tokens=True
    )
    assert patches.shape == (1, 64, 2, 3) and cls.shape == (1, 64) and extra.shape == (1, 4, 64)
    assert torch.equal(cls, model(x))
    with pytest.raises(ValueError, match="outside"):
        model.get_intermediate_layers(x, n=[4])


def test_drop_path_only_in_training_and_all_parameters_get_gradients() -> None:
    model = DinoVisionTransformer(ARCHS["dinov3_vit_test"], drop_path_rate=0.5)
    randomize(model)
    x = torch.randn(8, 3, 32, 32)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.equal(a, b)
    model.forward_features(x)["x_norm_patchtokens"].sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []  # mask_token included, so DDP sees every parameter used
