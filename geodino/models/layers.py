"""Layers of the DINOv3 ViT: RoPE, attention with a masked k bias, FFNs, LayerScale, blocks.

Parameter and buffer names follow Meta's published state dicts so that their checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.models.config import VitConfig


class RopeEmbedding(nn.Module):
    """2-D rotary position embedding of patch tokens.

    Per head dimension d there are d/4 periods ``base ** (2i / (d/2))``; each patch centre gets normalised
    coordinates in [-1, 1] per axis, and angles ``2 pi coord / period`` for y then x, tiled to d.
    The periods are a persistent buffer, as in the official checkpoints (which store them rounded to bfloat16):
    loading that buffer is what makes outputs identical to the reference.
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 100.0,
        rescale: float | None = 2.0,
        shift: float | None = None,
        jitter: float | None = None,
    ) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"RoPE needs a head dimension divisible by 4, got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.rescale = rescale
        self.shift = shift
        self.jitter = jitter
        self.register_buffer("periods", self._default_periods(), persistent=True)

    def _default_periods(self) -> Tensor:
        quarter = self.head_dim // 4
        exponents = 2.0 * torch.arange(quarter, dtype=torch.float32) / (self.head_dim // 2)
        return self.base**exponents

    def reset_parameters(self) -> None:
        self.periods.copy_(self._default_periods())

    def coords(self, h: int, w: int, device: torch.device) -> Tensor:
        """Patch-centre coordinates, (h*w, 2) float32 in [-1, 1], y first; augmented while training."""
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1)
        grid = 2.0 * grid - 1.0
        if self.training:
            grid = self._augment(grid)
        return grid

    def _augment(self, grid: Tensor) -> Tensor:
        """Training-only shift (uniform), per-axis jitter and a global rescale (both log-uniform)."""
        dev = grid.device
        if self.shift:
            grid = grid + torch.empty(2, device=dev).uniform_(-self.shift, self.shift)
        if self.jitter:
            lim = math.log(self.jitter)
            grid = grid * torch.empty(2, device=dev).uniform_(-lim, lim).exp()
        if self.rescale:
            lim = math.log(self.rescale)
            grid = grid * torch.empty(1, device=dev).uniform_(-lim, lim).exp()
        return grid

    def forward(self, h: int, w: int, n_prefix: int) -> tuple[Tensor, Tensor]:
        """Sin and cos tables, each (n_prefix + h*w, d) float32; the first half of sin is negated (rotate-half
        sign, see `apply_rope`).

        Prefix (cls, storage) rows are sin 0, cos 1: ``q * 1 + rot(q) * 0`` leaves those tokens exactly as they are,
        which lets attention rotate the whole sequence without splitting it.
        """
        periods = self.periods.float()
        coords = self.coords(h, w, periods.device)
        angles = 2 * math.pi * coords[:, :, None] / periods[None, None, :]  # (hw, 2, d/4)
        angles = angles.flatten(1).repeat(1, 2)  # (hw, d)
        sin, cos = angles.sin(), angles.cos()
        sin[:, : self.head_dim // 2].neg_()
        if n_prefix:
            sin = torch.cat([sin.new_zeros(n_prefix, self.head_dim), sin])
            cos = torch.cat([cos.new_ones(n_prefix, self.head_dim), cos])
        return sin, cos


def apply_rope(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate (..., N, d) queries and/or keys by (N, d) tables, in float32, returned in the input dtype.

    Rotate-half RoPE is ``x cos + [-b, a] sin`` for ``x = [a, b]``; with the sign folded into the sin table
    (`RopeEmbedding` returns ``[-sin_a, sin_b]``) the rotated term is ``roll(x, d/2) * sin``, which saves the
    negation pass and stays bit-identical to the unfolded form (no fused multiply-add, which would round
    differently from the reference).
    """
    xf = x.float()
    return (xf * cos + xf.roll(xf.shape[-1] // 2, dims=-1) * sin).to(x.dtype)


class MaskedBiasLinear(nn.Linear):
    """The fused qkv projection: its bias is multiplied by ``bias_mask`` (1 for q and v, 0 for k)."""

    def __init__(self, dim: int, bias: bool = True) -> None:
        super().__init__(dim, 3 * dim, bias=bias)
        if bias:
            self.register_buffer("bias_mask", torch.empty(3 * dim), persistent=True)
            self.reset_bias_mask()

    def reset_bias_mask(self) -> None:
        """1 on the q and v thirds, 0 on the k third."""
        if self.bias is not None:
            dim = self.in_features
            self.bias_mask.fill_(1.0)
            self.bias_mask[dim : 2 * dim] = 0.0

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.bias_mask if self.bias is not None else None
        return F.linear(x, self.weight, bias)


class Attention(nn.Module):
    """Multi-head self-attention with RoPE on q and k."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = MaskedBiasLinear(dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        if rope is not None:  # rotate q and k in one pass: (2, B, heads, N, d)
            q, k = apply_rope(qkv[:2], *rope).unbind(0)
            v = qkv[2]
        else:
            q, k, v = qkv.unbind(0)  # each (B, heads, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """w3(silu(w1 x) * w2 x)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    """Per-channel residual scale ``gamma``."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.init = init
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def reset_parameters(self) -> None:
        nn.init.constant_(self.gamma, self.init)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability p, rescale the rest."""
    if p == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1 x))`` then ``x + ls2(ffn(norm2 x))``."""

    def __init__(self, cfg: VitConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, cfg.num_heads, qkv_bias=cfg.qkv_bias, proj_bias=cfg.proj_bias)
        self.ls1 = LayerScale(dim, cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        ffn = Mlp if cfg.ffn_layer == "mlp" else SwiGLU
        self.mlp = ffn(dim, cfg.ffn_hidden, bias=cfg.ffn_bias)
        self.ls2 = LayerScale(dim, cfg.layerscale_init)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x: (B, N, D) -> (B, N, D)."""
        x = x + drop_path(self.ls1(self.attn(self.norm1(x), rope)), self.drop_path_rate, self.training)
        return x + drop_path(self.ls2(self.mlp(self.norm2(x))), self.drop_path_rate, self.training)
