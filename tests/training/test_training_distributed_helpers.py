"""The distributed helpers are no-ops without a process group."""

from __future__ import annotations

import pytest
import torch

from geodino.training.distributed import all_gather_with_grad, all_reduce, get_rank, get_world_size, is_enabled


def test_single_process_helpers_are_no_ops() -> None:
    assert not is_enabled() and get_world_size() == 1 and get_rank() == 0
    x = torch.tensor([1.0, 2.0])
    assert all_reduce(x) is x and x.tolist() == [1.0, 2.0]
    assert all_reduce(x, op="mean").tolist() == [1.0, 2.0]
    assert all_gather_with_grad(x) is x
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        all_reduce(x, op="max")
