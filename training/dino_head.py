"""Projection head of the DINO and iBOT losses (dinov3-reference.md, section 2)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """MLP (GELU) -> bottleneck -> L2-normalise -> plain Linear (no weight norm, no bias) to the prototypes.

    Args:
        in_dim: backbone width D.
        out_dim: number of prototypes K.
        hidden_dim: MLP hidden width.
        bottleneck_dim: width before the normalisation.
        nlayers: linear layers in the MLP (>= 1): in -> hidden (-> hidden)* -> bottleneck.
    """

    def __init__(
        self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, nlayers: int = 3
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Truncated-normal (std 0.02) weights, zero biases."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim) prototype logits."""
        x = self.mlp(x)
        # eps 1e-6 under reduced precision, where 1e-12 underflows
        x = F.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype in (torch.float16, torch.bfloat16) else 1e-12)
        return self.last_layer(x)
