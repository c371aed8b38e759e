"""Shared fixtures of the head tests: a tiny, seeded DINOv3 backbone with 4 blocks (enough for 4-layer heads)."""

from __future__ import annotations

import pytest
import torch

from geodino.models.config import ARCHS
from geodino.models.vit import DinoVisionTransformer


def make_tiny_backbone(seed: int = 0, depth: int = 4, local_cls_norm: bool = False, **kwargs) -> DinoVisionTransformer:
    """The test ViT (64 wide, 4 heads) with `depth` blocks and seeded, non-trivial weights, in eval mode.

    LayerScale is raised to ~0.5 so that every block changes the features (at its 1e-5 init, all layers
    would look alike and a wrong layer index could go unnoticed).
    """
    torch.manual_seed(seed)
    model = DinoVisionTransformer(
        ARCHS["dinov3_vit_test"].replace(depth=depth, local_cls_norm=local_cls_norm), **kwargs
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.fill_(0.5)
    return model.eval()


@pytest.fixture
def tiny_backbone() -> DinoVisionTransformer:
    return make_tiny_backbone()
