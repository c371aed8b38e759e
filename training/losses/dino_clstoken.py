"""DINO loss on class tokens: student log-probabilities against teacher targets, over crop pairs.

Follows the DINOv3 release's names and semantics (dinov3-reference.md, section 2); computed in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.training.distributed import all_reduce, get_world_size

__all__ = ["DINOLoss", "sinkhorn_knopp"]


def _total_samples(n_local: int, n_samples: Tensor | int | None) -> float:
    if n_samples is None:
        return float(n_local * get_world_size())
    return float(n_samples.item() if isinstance(n_samples, Tensor) else n_samples)


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, n_samples: Tensor | int | None = None, n_iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp targets: rows (samples) sum to 1, each prototype gets an equal share of the global batch.

    ``Q = exp(logits / temp)`` seen as a (K, N) matrix is scaled to total mass 1, then `n_iterations` times the
    rows (prototypes) are scaled to sum 1/K and the columns (samples) to sum 1/N, where N counts the samples of all
    ranks. Sums over samples are all-reduced, so the result is the same as one process on the concatenated batch.
    The returned (N_local, K) matrix is multiplied by N: after the last (sample) step each sample's row sums to 1
    exactly; the prototype marginals (summed over all ranks) approach N/K as the iterations converge.

    Implementation: the iterates are kept as ``diag(a) E diag(b)`` with ``E = exp((logits - m_k) / temp)``, where
    ``m_k`` is each prototype's maximum over the global batch (a per-prototype factor, which the first prototype
    step cancels exactly, so the result is unchanged while exp() cannot overflow); each step is then a
    matrix-vector product instead of a pass rewriting the (N, K) matrix. If some sample's whole row of E
    underflows to 0 (on any rank), every rank switches to the same iterates in the log domain instead.

    Args:
        logits: (N_local, K) teacher head outputs.
        temp: teacher temperature.
        n_samples: total samples over all ranks (a tensor or int); None counts N_local * world size.
        n_iterations: alternations of prototype and sample normalisation.

    Returns:
        (N_local, K) float32 targets.
    """
    logits = logits.float()
    N, K = _total_samples(logits.shape[0], n_samples), logits.shape[1]
    if N == 0:  # no sample on any rank (N is global, so every rank returns here, before any collective)
        return logits.new_zeros(logits.shape)
    if n_iterations == 0:  # no prototype step to cancel the shift below: plain normalised exp()
        return _sinkhorn_log_domain(logits, temp, N, 0)
    shift = _global_max(logits, dim=0)  # (1, K): each prototype's maximum over every rank's samples
    E = torch.sub(logits, shift).div_(temp).exp_()  # (N_local, K), every prototype's maximum is exp(0) = 1
    underflow = (E.sum(dim=1) == 0).any().float().reshape(1)
    if all_reduce(underflow).item() > 0:
        return _sinkhorn_log_domain(logits, temp, N, n_iterations)
    # Q = diag(a) E diag(b): prototype k's mass is b_k (E^T a)_k, sample n's is a_n (E b)_n.
    a = E.new_ones(E.shape[0])
    b = E.new_ones(K)
    for _ in range(n_iterations):
        b = 1.0 / (K * all_reduce(E.t() @ a))  # each prototype's mass over the global batch -> 1/K
        a = 1.0 / (N * (E @ b))  # each sample's mass -> 1/N
    return E.mul_(a.unsqueeze(1) * N).mul_(b.unsqueeze(0))


def _global_max(x: Tensor, dim: int) -> Tensor:
    """Maximum of x along `dim` over every rank (keepdim); 0 where no rank holds an element."""
    if x.shape[dim] > 0:
        m = x.amax(dim=dim, keepdim=True).detach().clone()
    else:  # this rank holds no sample (e.g. no masked patch): it still joins the collectives
        m = x.new_full((*x.shape[:dim], 1, *x.shape[dim + 1 :]), -math.inf)
    if get_world_size() > 1:
        import torch.distributed as dist

        dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _global_logsumexp(x: Tensor, dim: int) -> Tensor:
    """logsumexp of x along `dim`, where that dimension is split across ranks (max-shifted, all-reduced)."""
    m = _global_max(x, dim)
    return m + torch.log(all_reduce(torch.exp(x - m).sum(dim=dim, keepdim=True)))


def _sinkhorn_log_domain(logits: Tensor, temp: float, N: float, n_iterations: int) -> Tensor:
    """The iterates of `sinkhorn_knopp` in the log domain: slower, immune to underflow. (N_local, K) -> same."""
    log_q = logits.float().t() / temp  # (K, N_local)
    K = log_q.shape[0]
    # Total mass 1: log Q -= log sum over every prototype and sample.
    log_q = log_q - _global_logsumexp(torch.logsumexp(log_q, dim=0, keepdim=True), dim=1)
    for _ in range(n_iterations):
        log_q = log_q - _global_logsumexp(log_q, dim=1) - math.log(K)  # each prototype sums to 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(N)  # each sample sums to 1/N
    return torch.exp(log_q + math.log(N)).t()


class DINOLoss(nn.Module):
    """Cross-entropy between student crops and teacher crops of the same images.

    Args:
        out_dim: number of prototypes K (the DINO head's output width).
        student_temp: student softmax temperature.
        center_momentum: EMA momentum of the teacher centre (only for `softmax_center_teacher`).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(
        self, teacher_output: Tensor, teacher_temp: float, update_centers: bool = True
    ) -> Tensor:
        """DINO-style targets: ``softmax((t - center) / temp)``; optionally update the centre from this batch.

        Args:
            teacher_output: (..., K) teacher logits.
            teacher_temp: teacher temperature.
            update_centers: move the centre towards this batch's mean (after computing the targets).

        Returns:
            (..., K) float32 probabilities.
        """
        teacher_output = teacher_output.float()
        probs = F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)
        if update_centers:
            self.update_center(teacher_output)
        return probs

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """``center = m * center + (1 - m) * mean(teacher_output)``, the mean over every rank's samples.

        Args:
            teacher_output: (..., K) teacher logits.
        """
        flat = teacher_output.float().reshape(-1, self.out_dim)
        batch_sum = all_reduce(flat.sum(dim=0, keepdim=True))
        batch_center = batch_sum / (flat.shape[0] * get_world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1 - self.center_momentum)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output: Tensor, teacher_temp: float, n_iterations: int = 3) -> Tensor:
        """Sinkhorn-Knopp targets of (N, K) teacher logits (see `sinkhorn_knopp`); correct across ranks."""
        return sinkhorn_knopp(teacher_output, teacher_temp, None, n_iterations)

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, ignore_diagonal: bool = False) -> Tensor:
        """Mean cross-entropy over (student crop, teacher crop, image) triples.

        ``loss = -sum_{s,t,b,k} p_t[b,k] log_softmax(x_s[b] / student_temp)[k] / (B * S * T)``. With
        `ignore_diagonal` the pairs s == t (the same global crop seen by both) are left out and the sum is divided
        by ``B * (S * T - min(S, T))``: the crosswise global term (student crop A vs teacher crop B).

        Args:
            student_logits: (S, B, K) student head outputs, crops first.
            teacher_probs: (T, B, K) teacher targets (each row sums to 1).
            ignore_diagonal: skip the s == t pairs.

        Returns:
            scalar float32 loss.
        """
        if student_logits.ndim != 3 or teacher_probs.ndim != 3 or student_logits.shape[1:] != teacher_probs.shape[1:]:
            raise ValueError(
                f"expected student (S, B, K) and teacher (T, B, K) with the same B and K, got "
                f"{tuple(student_logits.shape)} and {tuple(teacher_probs.shape)}"
            )
        S, B, _ = student_logits.shape
        T = teacher_probs.shape[0]
        log_p = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        # pair_ce[s, t] = -sum over images and prototypes of p_t * log p_s
        pair_ce = -torch.einsum("sbk,tbk->st", log_p, teacher_probs.float())
        if not ignore_diagonal:
            return pair_ce.sum() / (B * S * T)
        n_diag = min(S, T)
        if n_diag == S * T:
            raise ValueError("ignore_diagonal with a single student and teacher crop leaves no pair to compare")
        off_diagonal = ~torch.eye(S, T, dtype=torch.bool, device=pair_ce.device)
        return pair_ce[off_diagonal].sum() / (B * (S * T - n_diag))
