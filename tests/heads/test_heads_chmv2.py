"""The CHMv2 canopy-height model: assembly, files recognised by content, output-size rule, fp32 metres."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_backbone

from geodino.heads.chmv2 import build_chmv2, chmv2_head
from geodino.heads.model import DenseModel
from geodino.models.checkpoint import load_backbone


def seeded_head_file(path, embed_dim: int = 64, seed: int = 3) -> None:
    """A CHMv2-shaped head state dict with non-trivial random weights, saved under `path`."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in chmv2_head(embed_dim).state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        sd[key] = noise / (noise[0].numel() ** 0.5) if value.ndim >= 2 else noise * 0.1
    torch.save(sd, path)


def reference_fp32(backbone, head, x: torch.Tensor) -> torch.Tensor:
    """Meta's fp32 path, step by step: CenterPadding(16), get_intermediate_layers, DPT logits, bins."""
    H, W = x.shape[-2:]
    ph, pw = -H % 16, -W % 16
    xp = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    feats = backbone.get_intermediate_layers(xp, n=head.layers, reshape=True, return_class_token=True, norm=True)
    return head.finish(head.logits(list(feats)))


@pytest.fixture
def chm(tmp_path):
    """A tiny SAT-style backbone (with local_cls_norm) and a CHMv2 head, loaded from files with odd names."""
    backbone_file, head_file = tmp_path / "my backbone.weights", tmp_path / "canopy.bin"
    torch.save(make_tiny_backbone(local_cls_norm=True).state_dict(), backbone_file)
    seeded_head_file(head_file)
    backbone = load_backbone(backbone_file, pretraining="sat493m")
    assert backbone.local_cls_norm is not None  # inferred from the keys, not the name
    return backbone, head_file


# The full CHMv2 head costs ~50 GFLOP per 256x256 forward: the padded case runs always, the two others as slow.
@pytest.mark.parametrize(
    ("size", "padded_out"),
    [
        pytest.param((256, 256), (256, 256), marks=pytest.mark.slow),
        ((250, 241), (256, 256)),
        pytest.param((240, 320), (256, 320), marks=pytest.mark.slow),
    ],
)
def test_output_rule_against_the_reference_path(chm, size, padded_out) -> None:
    backbone, head_file = chm
    model = build_chmv2(backbone, head_file)
    padded = build_chmv2(backbone, head_file, output_size="padded")
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        raw = padded(x)
        out = model(x)
        if size == (250, 241):  # the case with padding on every side: check against Meta's steps too
            assert torch.equal(raw, reference_fp32(model.backbone, model.head, x))
    assert raw.shape == (1, 1, *padded_out)
    assert out.shape == (1, 1, *size) and out.dtype == torch.float32
    H, W = size
    Hp, Wp = -(-H // 16) * 16, -(-W // 16) * 16
    resized = raw if raw.shape[-2:] == (Hp, Wp) else F.interpolate(raw, size=(Hp, Wp), mode="bilinear")
    top, left = (Hp - H) // 2, (Wp - W) // 2
    assert torch.equal(out, resized[..., top : top + H, left : left + W])
    if size == (256, 256):
        assert torch.equal(out, raw)  # sides multiples of 32: identical to the reference
    assert out.min() > 0.0 and out.max() <= 96.0


def test_uncertainty_channel(chm) -> None:
    backbone, head_file = chm
    model = build_chmv2(backbone, head_file, uncertainty=True)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        both = model(x)
        height = build_chmv2(backbone, head_file)(x)
        asked = build_chmv2(backbone, head_file)(x, return_uncertainty=True)
    assert both.shape == (1, 2, 32, 48)
    assert torch.equal(both[:, :1], height) and torch.equal(both, asked)
    assert (both[:, 1] > 0).all()
    info = model.describe()
    assert info["out_channels"] == 2 and info["channel_names"] == ("height", "height_std")
    assert info["units"] == "m" and info["kind"] == "regression" and info["valid_range"] == (0.0, 96.0)
    assert info["bands"] == ("red", "green", "blue") and info["mean"] == (0.420, 0.411, 0.296)


def test_head_for_another_width_or_depth_is_refused(tmp_path) -> None:
    from geodino.heads.base import HeadError

    head_file = tmp_path / "head.pth"
    seeded_head_file(head_file, embed_dim=1024)
    with pytest.raises(HeadError, match=r"head\.pth: a DPT head for a backbone 1024 wide \(e\.g\. ViT-L/16\)"):
        build_chmv2(make_tiny_backbone(), head_file)
    with pytest.raises(HeadError, match="has 4 blocks"):
        DenseModel(make_tiny_backbone(), chmv2_head(64, layers=[5, 11, 17, 23]))
    with pytest.raises(HeadError, match="features 1024 wide"):
        DenseModel(make_tiny_backbone(), chmv2_head(1024, layers=[0, 1, 2, 3]))


def test_no_bfloat16_on_cpu(chm) -> None:
    """Meta's depther silently autocasts to bf16 without CUDA; geodino keeps float32 throughout."""
    backbone, head_file = chm
    model = build_chmv2(backbone, head_file)
    seen = set()
    hooks = [
        m.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
        for m in model.head.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == {torch.float32}


@pytest.mark.slow
def test_vitl_chmv2_from_renamed_files(tmp_path) -> None:
    """Full size: a SAT-style ViT-L (local_cls_norm) and the 68-key head, under names without any hash."""
    import geodino.hub

    start = time.perf_counter()
    torch.manual_seed(0)
    from geodino.models.config import ARCHS
    from geodino.models.vit import DinoVisionTransformer

    vitl = DinoVisionTransformer(ARCHS["dinov3_vitl16"].replace(local_cls_norm=True))
    assert len(vitl.state_dict()) == 370
    torch.save(vitl.state_dict(), tmp_path / "backbone.pt")
    del vitl
    seeded_head_file(tmp_path / "head.pt", embed_dim=1024)
    model = geodino.hub.dinov3_vitl16_chmv2(weights=tmp_path / "head.pt", backbone_weights=tmp_path / "backbone.pt")
    assert model.backbone.local_cls_norm is not None and model.backbone.meta.weights == "sat493m"
    assert model.head.layers == [5, 11, 17, 23]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 250, 241))
    assert out.shape == (1, 1, 250, 241) and out.dtype == torch.float32
    print(f"ViT-L CHMv2 build + save + load + forward: {time.perf_counter() - start:.1f} s")


def test_chmv2_head_config_rebuilds_it() -> None:
    import json

    from geodino.heads.base import head_from_config

    head = chmv2_head(64, layers=[0, 1, 2, 3], uncertainty=True)
    config = json.loads(json.dumps(head.config()))  # plain JSON: what a saved model can store
    again = head_from_config(head.describe()["head_class"], config)
    assert again.describe() == head.describe()
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in head.state_dict().items()}
    assert again.bins == head.bins and again.uncertainty


def test_hub_refuses_swapped_or_wrong_size_files(tmp_path) -> None:
    import geodino.hub
    from geodino.models.checkpoint import CheckpointError

    head_file, tiny_file = tmp_path / "a.pth", tmp_path / "b.pth"
    seeded_head_file(head_file, embed_dim=1024)
    torch.save(make_tiny_backbone(local_cls_norm=True).state_dict(), tiny_file)
    with pytest.raises(CheckpointError, match=r"a\.pth: not a DINOv3 backbone checkpoint"):
        geodino.hub.dinov3_vitl16_chmv2(weights=tiny_file, backbone_weights=head_file)
    with pytest.raises(CheckpointError, match=r"b\.pth: expected a dinov3_vitl16 checkpoint"):
        geodino.hub.dinov3_vitl16_chmv2(weights=head_file, backbone_weights=tiny_file)
