"""The feature interface every head consumes: forward_intermediates, n_blocks / embed_dims, named layer sets."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_backbone
from timm.models.eva import checkpoint_filter_fn

from geodino.models.features import feature_take_indices, named_layers


def test_named_layer_sets() -> None:
    assert named_layers("four_even", 24) == [5, 11, 17, 23]  # CHMv2's layers on the ViT-L
    assert named_layers("four_even", 12) == [2, 5, 8, 11]
    assert named_layers("last_four", 12) == [8, 9, 10, 11]
    assert named_layers("last", 2) == [1]
    with pytest.raises(ValueError, match="at least 4 blocks"):
        named_layers("four_even", 2)
    with pytest.raises(ValueError, match="unknown layer set"):
        named_layers("every_other", 12)


def test_feature_take_indices() -> None:
    assert feature_take_indices(6) == (list(range(6)), 5)
    assert feature_take_indices(6, 2) == ([4, 5], 5)
    assert feature_take_indices(6, [-1, 0, 3]) == ([5, 0, 3], 5)
    assert feature_take_indices(24, "four_even") == ([5, 11, 17, 23], 23)
    for bad in (0, 7, [6], [-7], []):
        with pytest.raises(ValueError):
            feature_take_indices(6, bad)


def test_attributes(tiny_backbone) -> None:
    assert tiny_backbone.n_blocks == 4
    assert tiny_backbone.embed_dims == [64, 64, 64, 64]


@pytest.mark.parametrize("indices", [[0, 2], [-1], "last_four", 2, [3, 1]])
def test_forward_intermediates_equals_get_intermediate_layers(tiny_backbone, indices) -> None:
    model = tiny_backbone
    x = torch.randn(2, 3, 48, 64)
    n = indices if not isinstance(indices, str) else [0, 1, 2, 3]
    with torch.inference_mode():
        ref = model.get_intermediate_layers(x, n=n, reshape=True, return_class_token=True, norm=True)
        final, inter = model.forward_intermediates(x, indices, norm=True, return_prefix_tokens=True)
        nlc = model.forward_intermediates(x, indices, norm=False, output_fmt="NLC", intermediates_only=True)
        raw = model.get_intermediate_layers(x, n=n, norm=False)
        feats = model.forward_features(x)
    assert len(inter) == len(ref) == len(nlc)
    for (patches, prefix), (ref_patches, ref_cls) in zip(inter, ref, strict=True):
        assert patches.shape == (2, 64, 3, 4) and prefix.shape == (2, 5, 64)
        assert torch.equal(patches, ref_patches)
        assert torch.equal(prefix[:, 0], ref_cls)
    for ours, theirs in zip(nlc, raw, strict=True):
        assert torch.equal(ours, theirs)
    assert torch.equal(final[:, 5:], feats["x_norm_patchtokens"])
    assert torch.equal(final[:, 0], feats["x_norm_clstoken"])


def test_forward_intermediates_matches_timm() -> None:
    """Against timm's DINOv3 (Eva) implementation of the same method, on the same weights."""
    import timm

    model = make_tiny_backbone(depth=3)
    twin = timm.create_model(
        "vit_small_patch16_dinov3_qkvb", pretrained=False, embed_dim=64, depth=3, num_heads=4
    ).eval()
    twin.load_state_dict(checkpoint_filter_fn(model.state_dict(), twin), strict=True)
    x = torch.randn(1, 3, 32, 80)
    with torch.inference_mode():
        ours = model.forward_intermediates(x, [0, 2], norm=True, intermediates_only=True)
        ref = twin.forward_intermediates(x, indices=[0, 2], norm=True, intermediates_only=True)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-5


def test_bad_output_format(tiny_backbone) -> None:
    with pytest.raises(ValueError, match="output_fmt"):
        tiny_backbone.forward_intermediates(torch.randn(1, 3, 32, 32), output_fmt="NHWC")


def test_intermediates_only_stops_after_the_deepest_block(tiny_backbone) -> None:
    calls = []
    hooks = [b.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, b in enumerate(tiny_backbone.blocks)]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tiny_backbone.forward_intermediates(x, [1], intermediates_only=True)
        assert calls == [0, 1]
        calls.clear()
        final, _ = tiny_backbone.forward_intermediates(x, [1])
        assert calls == [0, 1, 2, 3] and final.shape == (1, 5 + 4, 64)
    for h in hooks:
        h.remove()
