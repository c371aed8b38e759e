"""Shared fixtures of the head tests: a tiny, seeded DINOv3 backbone with 4 blocks (enough for 4-layer heads)."""

from __future__ import annotations

import pytest
from heads_helpers import make_tiny_backbone

from geodino.models.vit import DinoVisionTransformer


@pytest.fixture
def tiny_backbone() -> DinoVisionTransformer:
    return make_tiny_backbone()
