"""Helpers of the workflow tests (imported by name; conftest.py only holds fixtures, since every test folder has one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

#: A run of many one-patch chunks, one forward pass per chunk, in order (so a crash leaves a known prefix done).
STEPWISE: dict[str, Any] = {"tile": 64, "overlap": 0, "chunk": 4, "batch_size": 1, "scheduler": "sync",
                            "progress": False}  # fmt: skip


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
