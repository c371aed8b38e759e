"""Bins and normalisations against the hand values of dpt-chmv2-reference.md, section 3."""

from __future__ import annotations

import math

import pytest
import torch

from geodino.heads.bins import BinsConfig, bin_weights, depth_and_spread, logits_to_depth, make_bins

MIXLOG = {
    0: 0.00099999993,
    1: 0.0012219023,
    2: 0.0018139657,
    3: 0.0027762249,
    4: 0.0041087177,
    5: 0.0058114803,
    125: 2.9346898,
    128: 3.0793970,
    250: 11.729761,
    254: 11.951427,
    255: 12.0,
}


def test_chmv2_mixlog_bins_match_reference_values() -> None:
    b = make_bins("chmv2_mixlog", 256, 0.001, 96.0)
    assert b.dtype == torch.float32 and b.shape == (256,)
    for k, value in MIXLOG.items():
        assert b[k].item() == pytest.approx(value, rel=2e-7), k
    assert b.double().sum().item() == pytest.approx(1060.70207, abs=2e-4)
    assert b.mean().item() == pytest.approx(4.1433675, rel=1e-6)


def test_linear_and_log_bins() -> None:
    lin = make_bins("linear", 5, 1.0, 5.0)
    assert lin.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    log = make_bins("log", 3, 0.01, 100.0)
    assert log.tolist() == pytest.approx([0.01, 1.0, 100.0], rel=1e-5)


def _one_hot_logits(k: int, n: int = 256) -> torch.Tensor:
    """One logit of 3 at bin k, the others negative (the reference's single-positive-logit checks)."""
    z = -torch.ones(1, n, 1, 1)
    z[0, k] = 3.0
    return z


def test_chmv2_mixlog_norm_hand_values() -> None:
    b = make_bins("chmv2_mixlog", 256, 0.001, 96.0)
    uniform = logits_to_depth(-torch.rand(2, 256, 3, 3), b, "chmv2_mixlog")  # all logits <= 0
    assert uniform.shape == (2, 1, 3, 3)
    assert torch.allclose(uniform, torch.full_like(uniform, 33.146942), atol=2e-5)
    assert logits_to_depth(_one_hot_logits(255), b, "chmv2_mixlog").item() == pytest.approx(95.99995, abs=1e-4)
    assert logits_to_depth(_one_hot_logits(0), b, "chmv2_mixlog").item() == pytest.approx(0.0080283, abs=1e-6)


def test_other_norms_by_hand() -> None:
    z = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1)
    b = torch.tensor([1.0, 2.0, 4.0])
    lin = torch.tensor([1.1, 0.1, 0.6]) / 1.8
    assert bin_weights(z, "linear").flatten().tolist() == pytest.approx(lin.tolist(), rel=1e-6)
    e = [math.exp(v) for v in (1.0, -2.0, 0.5)]
    assert bin_weights(z, "softmax").flatten().tolist() == pytest.approx([v / sum(e) for v in e], rel=1e-6)
    s = [1 / (1 + math.exp(-v)) for v in (1.0, -2.0, 0.5)]
    assert bin_weights(z, "sigmoid").flatten().tolist() == pytest.approx([v / sum(s) for v in s], rel=1e-6)
    assert logits_to_depth(z, b, "linear").item() == pytest.approx(float((lin * b).sum()), rel=1e-6)
    # One channel: plain regression, relu(z) + d_min.
    assert logits_to_depth(torch.tensor([-1.0, 2.0]).view(2, 1, 1, 1), b[:1], "linear", 0.5).flatten().tolist() == [
        0.5,
        2.5,
    ]


def test_spread_is_the_std_of_the_bin_distribution() -> None:
    b = make_bins("chmv2_mixlog", 256, 0.001, 96.0)
    depth, std = depth_and_spread(_one_hot_logits(128), b, "chmv2_mixlog")
    assert std.item() < 0.05  # nearly all the weight in one bin
    z = torch.full((1, 256, 1, 1), -1.0)
    z[0, [10, 250]] = 3.0  # two equal peaks far apart: std = half their distance (x8 scale)
    depth, std = depth_and_spread(z, b, "chmv2_mixlog")
    expected = 8 * (b[250] - b[10]).item() / 2
    assert std.item() == pytest.approx(expected, rel=1e-4)
    assert depth.item() == pytest.approx(8 * (b[250] + b[10]).item() / 2, rel=1e-4)
    assert torch.equal(depth, logits_to_depth(z, b, "chmv2_mixlog"))


def test_inconsistent_bins_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="use both or neither"):
        BinsConfig(bins_strategy="chmv2_mixlog", norm_strategy="linear")
    with pytest.raises(ValueError, match="use both or neither"):
        BinsConfig(bins_strategy="linear", norm_strategy="chmv2_mixlog")
    with pytest.raises(ValueError, match="min_depth"):
        BinsConfig(min_depth=10.0, max_depth=1.0, bins_strategy="linear", norm_strategy="softmax")
    with pytest.raises(ValueError, match="expects 256 logits per pixel, but the head has 128"):
        BinsConfig().check_channels(128)
