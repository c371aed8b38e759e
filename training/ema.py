"""Exponential moving average of the student into the teacher."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_update"]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for every parameter, matched by name.

    Args:
        teacher: the EMA copy (same architecture as `student`).
        student: the trained model.
        momentum: in [0, 1]; 1 leaves the teacher unchanged, 0 copies the student.

    Raises:
        ValueError: the two modules do not have the same parameter names and shapes.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    t_params = dict(teacher.named_parameters())
    s_params = dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        missing = sorted(set(s_params) ^ set(t_params))[:5]
        raise ValueError(f"teacher and student parameters differ (e.g. {missing})")
    t_list = [t_params[k] for k in s_params]
    s_list = [s_params[k].detach().to(t.dtype) for k, t in zip(s_params, t_list, strict=True)]
    for t, s in zip(t_list, s_list, strict=True):
        if t.shape != s.shape:
            raise ValueError(f"teacher parameter shape {tuple(t.shape)} differs from the student's {tuple(s.shape)}")
    # t + (1 - m) (s - t) = m t + (1 - m) s, in one fused pass per tensor list
    torch._foreach_lerp_(t_list, s_list, 1.0 - momentum)
