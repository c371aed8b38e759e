"""The linear head against a hand computation (explicit torch ops), and on a backbone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_backbone

from geodino.heads.base import HeadError, head_from_config
from geodino.heads.linear import LinearHead
from geodino.heads.model import DenseModel


def randomise_bn(head: LinearHead, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    bn = head.batchnorm_layer
    with torch.no_grad():
        n = bn.num_features
        bn.running_mean.copy_(torch.randn(n, generator=gen))
        bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        bn.weight.copy_(torch.randn(n, generator=gen))
        bn.bias.copy_(torch.randn(n, generator=gen))
        head.conv.weight.normal_(generator=gen)
        head.conv.bias.normal_(generator=gen)


@pytest.mark.parametrize("use_cls_token", [False, True])
def test_matches_hand_computation(use_cls_token: bool) -> None:
    head = LinearHead([3, 2], [0, 1], out_channels=4, use_cls_token=use_cls_token).eval()
    randomise_bn(head)
    gen = torch.Generator().manual_seed(1)
    feats = [
        (torch.randn(2, 3, 2, 3, generator=gen), torch.randn(2, 3, generator=gen)),
        (torch.randn(2, 2, 1, 2, generator=gen), torch.randn(2, 2, generator=gen)),  # a coarser grid: resized
    ]
    with torch.no_grad():
        out = head(feats, (8, 12))

    # By hand: layer maps (+ cls), resize to layer 0's 2x3 grid, concatenate, BN (eval), 1x1 conv, upsample.
    parts = []
    for patches, cls in feats:
        if use_cls_token:
            patches = torch.cat([patches, cls[:, :, None, None].repeat(1, 1, *patches.shape[-2:])], dim=1)
        parts.append(F.interpolate(patches, size=(2, 3), mode="bilinear", align_corners=False))
    x = torch.cat(parts, dim=1)
    bn = head.batchnorm_layer
    x = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + 1e-5)
    x = x * bn.weight[:, None, None] + bn.bias[:, None, None]
    w = head.conv.weight[:, :, 0, 0]
    logits = torch.einsum("kc,bchw->bkhw", w, x) + head.conv.bias[None, :, None, None]
    expected = F.interpolate(logits, size=(8, 12), mode="bilinear", align_corners=False)
    assert out.shape == (2, 4, 8, 12)
    assert torch.allclose(out, expected, atol=1e-5)
    assert head.conv.weight.shape == (4, 10 if use_cls_token else 5, 1, 1)


def test_keys_dropout_and_config_roundtrip() -> None:
    head = LinearHead(64, [3], out_channels=5, class_names=list("abcde"))
    assert set(head.state_dict()) == {
        "batchnorm_layer.weight",
        "batchnorm_layer.bias",
        "batchnorm_layer.running_mean",
        "batchnorm_layer.running_var",
        "batchnorm_layer.num_batches_tracked",
        "conv.weight",
        "conv.bias",
    }
    assert 0.005 < head.conv.weight.std().item() < 0.015 and head.conv.bias.abs().max() == 0
    rebuilt = head_from_config(head.describe()["head_class"], head.config())
    rebuilt.load_state_dict(head.state_dict())
    feats = [(torch.randn(2, 64, 4, 4), torch.randn(2, 64))]
    head.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(head(feats, (64, 64)), rebuilt(feats, (64, 64)))
        head.train()
        assert not torch.equal(head(feats, (64, 64)), rebuilt(feats, (64, 64)))  # dropout and BN batch stats


def test_on_a_backbone_classification_and_binned_regression() -> None:
    backbone = make_tiny_backbone()
    seg = DenseModel(backbone, LinearHead(64, [1, 3], out_channels=3)).eval()
    depth = DenseModel(
        backbone,
        LinearHead(
            64,
            [3],
            kind="regression",
            out_channels=16,
            units="m",
            bins={
                "n_bins": 16,
                "min_depth": 0.001,
                "max_depth": 10.0,
                "bins_strategy": "linear",
                "norm_strategy": "linear",
            },
            use_cls_token=True,
        ),
    ).eval()
    x = torch.randn(1, 3, 40, 56)  # padded to 48 x 64, cropped back
    with torch.no_grad():
        logits = seg(x)
        metres = depth(x)
        both = depth(x, return_uncertainty=True)
    assert logits.shape == (1, 3, 40, 56)
    assert metres.shape == (1, 1, 40, 56) and metres.dtype == torch.float32
    assert (metres > 0).all() and (metres <= 10).all()
    assert both.shape == (1, 2, 40, 56) and torch.equal(both[:, :1], metres)
    assert seg.describe()["kind"] == "classification" and depth.describe()["units"] == "m"


def test_bad_configurations() -> None:
    with pytest.raises(HeadError, match="2 embed_dims for 1 layers"):
        LinearHead([64, 64], [3])
    with pytest.raises(HeadError, match="need kind='regression'"):
        LinearHead(64, [3], out_channels=256, bins={"n_bins": 256})
    with pytest.raises(HeadError, match="expects 256 logits per pixel, but the head has 10"):
        LinearHead(64, [3], kind="regression", out_channels=10, bins={"n_bins": 256})
    with pytest.raises(HeadError, match="needs bins"):
        LinearHead(64, [3], kind="regression", uncertainty=True)
    with pytest.raises(HeadError, match="reads features 32 wide"):
        DenseModel(make_tiny_backbone(), LinearHead(32, [3]))


def test_builders_resolve_named_layer_sets() -> None:
    import geodino.heads as gh

    backbone = make_tiny_backbone()
    assert gh.linear_head(backbone, out_channels=2).layers == [3]
    assert gh.linear_head(backbone, "last_four", out_channels=2).embed_dims == [64] * 4
    assert gh.dpt_head(backbone, kind="regression", out_channels=1).layers == [0, 1, 2, 3]
    assert gh.smp_head(backbone, "fpn", decoder_options={"segmentation_channels": 32}).layers == [0, 1, 2, 3]
