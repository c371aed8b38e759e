"""The DPT head against dpt-chmv2-reference.md: official keys and shapes, recipe B, the output-size table."""

from __future__ import annotations

import pytest
import torch

from geodino.heads.base import HeadError, read_head_state_dict
from geodino.heads.chmv2 import chmv2_head
from geodino.heads.dpt import DPTHead

# Section 2.6 of the reference: the 68 keys of Meta's CHMv2 head and their shapes, in the official order.
_RB = "reassemble_blocks."
OFFICIAL: dict[str, tuple[int, ...]] = {}
for i, c in enumerate((128, 256, 512, 1024)):
    OFFICIAL[f"{_RB}projects.{i}.conv.weight"] = (c, 1024, 1, 1)
    OFFICIAL[f"{_RB}projects.{i}.conv.bias"] = (c,)
for i, (c, k) in {0: (128, 4), 1: (256, 2), 3: (1024, 3)}.items():
    OFFICIAL[f"{_RB}resize_layers.{i}.weight"] = (c, c, k, k)
    OFFICIAL[f"{_RB}resize_layers.{i}.bias"] = (c,)
for i in range(4):
    OFFICIAL[f"{_RB}readout_projects.{i}.0.weight"] = (1024, 2048)
    OFFICIAL[f"{_RB}readout_projects.{i}.0.bias"] = (1024,)
for i, c in enumerate((128, 256, 512, 1024)):
    OFFICIAL[f"convs.{i}.conv.weight"] = (256, c, 3, 3)
for j in range(4):
    OFFICIAL[f"fusion_blocks.{j}.project.conv.weight"] = (256, 256, 1, 1)
    OFFICIAL[f"fusion_blocks.{j}.project.conv.bias"] = (256,)
    for unit in (1, 2) if j else (2,):
        for conv in (1, 2):
            OFFICIAL[f"fusion_blocks.{j}.res_conv_unit{unit}.conv{conv}.conv.weight"] = (256, 256, 3, 3)
            OFFICIAL[f"fusion_blocks.{j}.res_conv_unit{unit}.conv{conv}.conv.bias"] = (256,)
for idx, shape in {0: (128, 256, 3, 3), 2: (128, 128, 3, 3), 4: (256, 128, 1, 1)}.items():
    OFFICIAL[f"conv_depth.head.{idx}.weight"] = shape
    OFFICIAL[f"conv_depth.head.{idx}.bias"] = (shape[0],)


def recipe_b_state_dict() -> dict[str, torch.Tensor]:
    """Recipe B weights: sorted keys, one generator seeded 0, randn scaled by 1/sqrt(fan) (>= 2-D) or 0.1."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for key in sorted(OFFICIAL):
        shape = OFFICIAL[key]
        value = torch.randn(shape, generator=gen)
        sd[key] = value / (value.numel() / shape[0]) ** 0.5 if len(shape) >= 2 else value * 0.1
    return sd


def recipe_b_features() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    feats = []
    for _ in range(4):
        patches = torch.randn(1, 1024, 16, 16, generator=gen)
        feats.append((patches, torch.randn(1, 1024, generator=gen)))
    return feats


def test_chmv2_head_has_the_official_keys_shapes_and_order() -> None:
    sd = chmv2_head().state_dict()
    assert len(sd) == 68
    assert list(sd) == list(OFFICIAL)  # same names, same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == OFFICIAL
    assert sum(v.numel() for v in sd.values()) == 33_747_200
    assert all(v.dtype == torch.float32 for v in sd.values())


def test_recipe_b(tmp_path) -> None:
    """Section 5 B: an official-shaped random state dict, loaded strictly from a file, gives the reference figures."""
    path = tmp_path / "any-name.bin"
    torch.save(recipe_b_state_dict(), path)
    head = chmv2_head().eval()
    head.load_official(read_head_state_dict(path), source=str(path))
    feats = recipe_b_features()
    with torch.no_grad():
        logits = head.logits(feats)
        depth = head(feats)
    assert logits.shape == (1, 256, 256, 256)
    assert logits.mean().item() == pytest.approx(-0.008655, abs=1e-4)
    assert logits.std().item() == pytest.approx(0.919993, abs=1e-4)
    assert logits.min().item() == pytest.approx(-3.770924, abs=1e-4)
    assert logits.max().item() == pytest.approx(3.525884, abs=1e-4)
    assert (logits <= 0).double().mean().item() == pytest.approx(0.51432, abs=1e-5)
    expected_logits = torch.tensor([-0.192015, 0.155432, -0.349791, -0.024141])
    assert torch.allclose(logits[0, :4, 0, 0], expected_logits, atol=1e-4)
    assert depth.shape == (1, 1, 256, 256) and depth.dtype == torch.float32
    assert depth.mean().item() == pytest.approx(33.021858, abs=1e-4)
    assert depth.std().item() == pytest.approx(1.410240, abs=1e-4)
    assert depth.min().item() == pytest.approx(28.690660, abs=1e-4)
    assert depth.max().item() == pytest.approx(38.952877, abs=1e-4)
    # The reference's float64 sum of 65,536 float32 depths near 33 m, where one float32 step is 3.8e-6 m: kernels
    # for other CPU instruction sets round differently (AVX2 here gave 2164120.350, 1.3e-6 m per pixel off, about a
    # third of a step), so the sum is held to 1 m in all, 1.5e-5 m per pixel on average (4 steps).
    assert depth.double().sum().item() == pytest.approx(2164120.435, abs=1.0)
    assert torch.allclose(depth[0, 0, 0, :4], torch.tensor([32.348900, 34.861622, 34.306938, 33.780403]), atol=1e-4)
    assert depth[0, 0, 128, 128].item() == pytest.approx(32.674328, abs=1e-4)
    assert depth[0, 0, 255, 255].item() == pytest.approx(36.133797, abs=1e-4)


# Section 1.4: input -> padded (multiple of 16) -> DPT output (multiple of 32).
SIZE_TABLE = [
    ((256, 256), (256, 256), (256, 256)),
    ((250, 250), (256, 256), (256, 256)),
    ((240, 240), (240, 240), (256, 256)),
    ((240, 320), (240, 320), (256, 320)),
    ((200, 304), (208, 304), (224, 320)),
    ((224, 224), (224, 224), (224, 224)),
    ((512, 512), (512, 512), (512, 512)),
]


def tiny_dpt(embed_dim: int = 64, **kwargs) -> DPTHead:
    return DPTHead(
        embed_dim, [0, 1, 2, 3], post_process_channels=[8, 16, 32, 64], channels=16, n_hidden_channels=8, **kwargs
    ).eval()


@pytest.mark.parametrize(("size", "padded", "output"), SIZE_TABLE)
def test_output_size_table(size, padded, output) -> None:
    from geodino.heads.model import DenseModel

    assert tuple(-(-s // 16) * 16 for s in size) == padded
    head = tiny_dpt(kind="regression", out_channels=1)
    h, w = padded[0] // 16, padded[1] // 16
    feats = [(torch.randn(1, 64, h, w), torch.randn(1, 64)) for _ in range(4)]
    with torch.no_grad():
        assert head(feats).shape[-2:] == output
    if size[0] * size[1] <= 256 * 256:  # through a backbone too, padded and at the input size
        from heads_helpers import make_tiny_backbone

        backbone = make_tiny_backbone()
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert DenseModel(backbone, head, output_size="padded")(x).shape[-2:] == output
            assert DenseModel(backbone, head)(x).shape[-2:] == size


def test_official_names_load_into_a_tiny_head_and_roundtrip_config() -> None:
    head = tiny_dpt(kind="classification", out_channels=3, class_names=["a", "b", "c"])
    again = type(head)(**head.config())
    again.load_official(head.state_dict())
    feats = [(torch.randn(2, 64, 3, 5), torch.randn(2, 64)) for _ in range(4)]
    with torch.no_grad():
        assert torch.equal(head(feats), again(feats))
    info = head.describe()
    assert info["head_class"] == "geodino.heads.dpt.DPTHead"
    assert info["kind"] == "classification" and info["out_channels"] == 3 and info["factor"] == 1
    assert info["class_names"] == ("a", "b", "c") and info["activation"] == "softmax"
    assert info["layers"] == [0, 1, 2, 3]


def test_head_checkpoint_for_another_backbone_width_is_refused(tmp_path) -> None:
    path = tmp_path / "head.pth"
    torch.save(tiny_dpt(embed_dim=32, kind="regression", out_channels=256).state_dict(), path)
    head = tiny_dpt(kind="regression", out_channels=256)
    with pytest.raises(
        HeadError, match=r"head\.pth: a DPT head for a backbone 32 wide .* this head reads a backbone 64"
    ):
        head.load_official(read_head_state_dict(path), source=str(path))


def test_head_checkpoint_with_other_levels_or_bins_is_refused() -> None:
    head = chmv2_head(embed_dim=64)
    sd = {k: v for k, v in head.state_dict().items() if "s.3." not in k}  # drop level 3
    with pytest.raises(HeadError, match="3 feature levels; this head reads 4 layers"):
        head.load_official(sd, source="three.pth")
    other = tiny_dpt(kind="regression", out_channels=128).state_dict()
    with pytest.raises(HeadError, match=r"outputs 128 channels .* configured for 256 \(bins: n_bins=256\)"):
        chmv2_head(embed_dim=64).load_official(
            {**head.state_dict(), "conv_depth.head.4.weight": other["conv_depth.head.4.weight"]}, source="x.pth"
        )
    with pytest.raises(HeadError, match="expects 256 logits per pixel, but the head has 128 output channels"):
        DPTHead(64, [0, 1, 2, 3], kind="regression", out_channels=128, bins={"n_bins": 256})
    with pytest.raises(HeadError, match="4 backbone layers"):
        DPTHead(64, [0, 1, 2])


def test_foreign_and_truncated_files_are_refused(tmp_path) -> None:
    from heads_helpers import make_tiny_backbone

    backbone_file = tmp_path / "backbone.pth"
    torch.save(make_tiny_backbone().state_dict(), backbone_file)
    with pytest.raises(HeadError, match=r"backbone\.pth: not a DPT head state dict"):
        chmv2_head(64).load_official(read_head_state_dict(backbone_file), source=str(backbone_file))
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(backbone_file.read_bytes()[:1000])
    with pytest.raises(HeadError, match=r"cut\.pth: cannot be read"):
        read_head_state_dict(truncated)
    with pytest.raises(HeadError, match="no such head checkpoint"):
        read_head_state_dict(tmp_path / "missing.pth")
