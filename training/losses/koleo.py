"""KoLeo regulariser: spread L2-normalised features by penalising small nearest-neighbour distances.

``loss = -mean_i log(d_i + eps)``, with ``d_i`` the Euclidean distance from sample i to its nearest other sample
(Kozachenko-Leonenko entropy estimator). Computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.training.distributed import all_gather_with_grad, get_rank, get_world_size

__all__ = ["KoLeoLoss", "KoLeoLossDistributed"]


def _nearest_distance(x: Tensor, pool: Tensor, self_offset: int) -> Tensor:
    """Distance from each row of x (B, D) to its nearest row of pool (P, D), excluding pool row self_offset + i.

    Inputs are L2-normalised, so the nearest neighbour is the one with the largest dot product.
    """
    B = x.shape[0]
    with torch.no_grad():
        dots = x @ pool.t()  # (B, P)
        rows = torch.arange(B, device=x.device)
        dots[rows, rows + self_offset] = -2.0  # below any cosine: a sample is not its own neighbour
        nn_index = dots.argmax(dim=1)
    return (x - pool[nn_index]).norm(dim=-1)


class KoLeoLoss(nn.Module):
    """KoLeo over this process's batch."""

    def forward(self, student_output: Tensor, eps: float = 1e-8) -> Tensor:
        """(B, D) features (normalised here) -> scalar ``-mean(log(d_nn + eps))``; needs B >= 2."""
        if student_output.ndim != 2 or student_output.shape[0] < 2:
            raise ValueError(f"KoLeo needs a (B, D) batch with B >= 2, got {tuple(student_output.shape)}")
        x = F.normalize(student_output.float(), p=2, dim=-1, eps=eps)
        return -torch.log(_nearest_distance(x, x, 0) + eps).mean()


class KoLeoLossDistributed(nn.Module):
    """KoLeo with neighbours searched among every rank's samples (all-gathered, gradients flow back).

    Each rank returns the mean over its own samples; with equal batch sizes the mean over ranks (what data-parallel
    gradient averaging optimises) equals `KoLeoLoss` on the concatenated batch. Identical to `KoLeoLoss` in a
    single process.
    """

    def forward(self, student_output: Tensor, eps: float = 1e-8) -> Tensor:
        """(B, D) features of this rank -> scalar loss over this rank's samples."""
        if student_output.ndim != 2:
            raise ValueError(f"KoLeo needs a (B, D) batch, got {tuple(student_output.shape)}")
        x = F.normalize(student_output.float(), p=2, dim=-1, eps=eps)
        pool = all_gather_with_grad(x)  # (world * B, D), rank-major
        if pool.shape[0] < 2:
            raise ValueError("KoLeo needs at least 2 samples over all ranks")
        offset = get_rank() * x.shape[0] if get_world_size() > 1 else 0
        # x must be this rank's slice of pool for the self-exclusion; take it from pool so both paths share grads.
        local = pool[offset : offset + x.shape[0]]
        return -torch.log(_nearest_distance(local, pool, offset) + eps).mean()
