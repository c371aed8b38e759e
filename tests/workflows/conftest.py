"""Shared fixtures of the workflow tests: small scenes, tiny backbone checkpoints, a run interrupted midway."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rasters import smooth_scene, write_raster

warnings.filterwarnings("ignore", message=".*consolidated.*")

#: A run of many one-patch chunks, one forward pass per chunk, in order (so a crash leaves a known prefix done).
STEPWISE: dict[str, Any] = {"tile": 64, "overlap": 0, "chunk": 4, "batch_size": 1, "scheduler": "sync",
                            "progress": False}  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    from geodino.workflows.predictor import clear_model_cache

    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """A 3-band uint8 128 x 192 GeoTIFF (2 x 3 one-patch chunks with STEPWISE settings for a ViT/16)."""
    return write_raster(tmp_path / "scene.tif", smooth_scene(3, 128, 192, seed=3, dtype=np.uint8))


def save_test_backbone(path: Path, seed: int) -> Path:
    """A tiny backbone's state dict saved as a Meta-style .pth (seeded: equal seeds, equal bytes)."""
    from geodino import hub

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(hub.dinov3_vit_test(weights=None).state_dict(), path)
    return path


def interrupt(run: Callable[[], Any], monkeypatch: pytest.MonkeyPatch, after: int = 2) -> None:
    """Run ``run`` with every backbone's forward pass failing after ``after`` calls: a run that died midway."""
    from geodino.workflows.predictor import EmbeddingModel

    original = EmbeddingModel.forward
    calls = {"n": 0}

    def failing(self: Any, x: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > after:
            raise RuntimeError("simulated crash")
        return original(self, x)

    monkeypatch.setattr(EmbeddingModel, "forward", failing)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run()
    finally:
        monkeypatch.setattr(EmbeddingModel, "forward", original)
