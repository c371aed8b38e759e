"""Tiny torch.distributed helpers that are no-ops in a single process.

Every loss that reduces over the batch (Sinkhorn-Knopp, centring, distributed KoLeo) calls these, so the same code
is correct in one process and across ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_gather_with_grad", "all_reduce", "get_rank", "get_world_size", "is_enabled"]


def is_enabled() -> bool:
    """True when torch.distributed is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_enabled() else 1


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_enabled() else 0


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """Reduce `tensor` in place across ranks ("sum" or "mean") and return it; unchanged in a single process."""
    if op not in ("sum", "mean"):
        raise ValueError(f"all_reduce op must be 'sum' or 'mean', got {op!r}")
    if not is_enabled():
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    if op == "mean":
        tensor /= dist.get_world_size()
    return tensor


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums every rank's gradient and returns this rank's slice.

    Implemented with all_reduce only (gloo has no reduce_scatter), so it works on every backend.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """(B, ...) on each rank -> (world * B, ...), rank-major; gradients flow back to every rank's input.

    Every rank must pass the same B. In a single process returns `x` itself.
    """
    if not is_enabled() or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
