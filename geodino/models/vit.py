"""The DINOv3 vision transformer, with the official method surface (forward_features, get_intermediate_layers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodino.models.config import VitConfig, arch_name_for
from geodino.models.features import LayerSpec, feature_take_indices
from geodino.models.layers import Block, LayerScale, MaskedBiasLinear, RopeEmbedding
from geodino.models.meta import BackboneMeta

InputPadding = Literal["error", "center", "end"]


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens: (B, C, H, W) -> (B, D, H/p, W/p)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def _default_meta(cfg: VitConfig) -> BackboneMeta:
    """Metadata of randomly initialised weights: RGB with web statistics, or N unnamed bands with identity ones."""
    meta = BackboneMeta(
        name=arch_name_for(cfg) or "custom", patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth
    )
    n = cfg.in_chans
    if n == 3:
        return meta
    return meta.replace(bands=tuple(f"band{i + 1}" for i in range(n)), mean=(0.0,) * n, std=(1.0,) * n)


class DinoVisionTransformer(nn.Module):
    """DINOv3 ViT: ``[cls, storage x4, patches]`` tokens, RoPE, LayerScale, K-bias mask, MLP or SwiGLU FFN.

    Args:
        config: architecture (see `geodino.models.config.ARCHS`).
        drop_path_rate: stochastic depth probability, the same in every block (DINOv3 uses a uniform rate).
        rope_rescale: training-time log-uniform rescale of RoPE coordinates in [1/r, r] (None: off).
        rope_shift: training-time uniform shift of RoPE coordinates (None: off, as in all released models).
        rope_jitter: training-time per-axis log-uniform jitter (None: off).
        input_padding: what to do with input sides that are not multiples of the patch size: "error" (default;
            the official code silently crops, geodino never does), "center" (zero-pad split evenly, the CHMv2
            convention) or "end" (zero-pad bottom/right). Padding is applied after normalisation.
        meta: pretrained-weights metadata (bands, normalisation, GSD).
    """

    def __init__(
        self,
        config: VitConfig,
        *,
        drop_path_rate: float = 0.0,
        rope_rescale: float | None = 2.0,
        rope_shift: float | None = None,
        rope_jitter: float | None = None,
        input_padding: InputPadding = "error",
        meta: BackboneMeta | None = None,
    ) -> None:
        super().__init__()
        cfg = config
        self.config = cfg
        self.embed_dim = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.n_storage_tokens = cfg.n_storage_tokens
        self.input_padding: InputPadding = input_padding
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, cfg.n_storage_tokens, cfg.embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.embed_dim))
        self.rope_embed = RopeEmbedding(
            cfg.head_dim, cfg.rope_base, rescale=rope_rescale, shift=rope_shift, jitter=rope_jitter
        )
        self.blocks = nn.ModuleList(Block(cfg, drop_path_rate) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-5)
        self.local_cls_norm = nn.LayerNorm(cfg.embed_dim, eps=1e-5) if cfg.local_cls_norm else None
        self.meta = meta or _default_meta(cfg)
        self.init_weights()

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.n_storage_tokens

    @property
    def in_chans(self) -> int:
        return self.patch_embed.proj.in_channels

    @property
    def n_blocks(self) -> int:
        """Number of transformer blocks (what heads index into)."""
        return len(self.blocks)

    @property
    def embed_dims(self) -> list[int]:
        """Token width of each block's output, one entry per block."""
        return [self.embed_dim] * len(self.blocks)

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) linear weights, zero biases, LayerScale at its init value."""
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        self.init_optional_state()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, LayerScale)):
                module.reset_parameters()

    def init_optional_state(self) -> None:
        """State a checkpoint may omit: the (training-only) mask token, RoPE periods and k-bias masks."""
        with torch.no_grad():
            nn.init.zeros_(self.mask_token)
            self.rope_embed.reset_parameters()
            for module in self.modules():
                if isinstance(module, MaskedBiasLinear):
                    module.reset_bias_mask()

    # ----------------------------------------------------------------------------------------------- tokens
    def pad_input(self, x: Tensor) -> Tensor:
        """Apply `input_padding` to (B, C, H, W); returns (B, C, H', W') with sides multiples of the patch size."""
        p = self.patch_size
        H, W = x.shape[-2:]
        ph, pw = -H % p, -W % p
        if not (ph or pw):
            return x
        if self.input_padding == "error":
            raise ValueError(
                f"input of {H}x{W} pixels is not a multiple of the patch size {p}: the official model would crop "
                f"it silently; pad or crop it yourself, or set model.input_padding to 'center' or 'end'"
            )
        if self.input_padding == "center":
            return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.pad(x, (0, pw, 0, ph))

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"this backbone takes {self.in_chans} bands {self.meta.bands}, got {x.shape[1]}; see "
                f"geodino.models.bands.adapt_bands to build an N-band backbone"
            )

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, 1 + S + N, D) and the patch grid (h, w).

        masks: (B, N) bool, True where a patch token is replaced by `mask_token` (iBOT).
        """
        self._check_input(x)
        x = self.patch_embed(self.pad_input(x))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        elif self.training:
            x = x + 0.0 * self.mask_token  # keeps mask_token in the graph, so DDP sees every parameter used
        B = x.shape[0]
        prefix = torch.cat([self.cls_token.expand(B, -1, -1), self.storage_tokens.expand(B, -1, -1)], dim=1)
        return torch.cat([prefix.to(x.dtype), x], dim=1), (h, w)

    def _rope(self, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        return self.rope_embed(hw[0], hw[1], self.num_prefix_tokens)

    # ---------------------------------------------------------------------------------------------- forward
    def forward_features(
        self,
        x: Tensor | list[Tensor],
        masks: Tensor | list[Tensor | None] | None = None,
        local_crops: bool = False,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Final-norm tokens, with the official keys.

        Args:
            x: (B, C, H, W), or a list of such batches (multi-crop), each processed on its own.
            masks: (B, N) bool patch masks (or a list of them, one per batch).
            local_crops: use `local_cls_norm` (when present) for the cls/storage tokens, as the DINOv3 student
                does on its local crops during training.

        Returns:
            dict with x_norm_clstoken (B, D), x_storage_tokens (B, S, D), x_norm_patchtokens (B, N, D),
            x_prenorm (B, 1 + S + N, D) and masks; a list of such dicts for list input.
        """
        if isinstance(x, list | tuple):
            masks_list = masks if isinstance(masks, list | tuple) else [masks] * len(x)
            return [self.forward_features(xi, mi, local_crops) for xi, mi in zip(x, masks_list, strict=True)]
        tokens, hw = self.prepare_tokens(x, masks)
        rope = self._rope(hw)
        for block in self.blocks:
            tokens = block(tokens, rope)
        k = self.num_prefix_tokens
        if local_crops and self.local_cls_norm is not None:
            prefix = self.local_cls_norm(tokens[:, :k])
            patches = self.norm(tokens[:, k:])
        else:
            normed = self.norm(tokens)
            prefix, patches = normed[:, :k], normed[:, k:]
        return {
            "x_norm_clstoken": prefix[:, 0],
            "x_storage_tokens": prefix[:, 1:],
            "x_norm_patchtokens": patches,
            "x_prenorm": tokens,
            "masks": masks,
        }

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> normalised class token (B, D), as the official backbone's `forward`."""
        return self.forward_features(x)["x_norm_clstoken"]

    def _block_indices(self, n: int | Sequence[int]) -> list[int]:
        depth = len(self.blocks)
        if isinstance(n, int):
            if not 1 <= n <= depth:
                raise ValueError(f"n={n} blocks requested from a backbone of depth {depth}")
            return list(range(depth - n, depth))
        indices = [i + depth if i < 0 else i for i in n]
        bad = [i for i in n if not -depth <= i < depth]
        if bad:
            raise ValueError(f"block indices {bad} are outside 0..{depth - 1}")
        return indices

    def get_intermediate_layers(
        self,
        x: Tensor,
        n: int | Sequence[int] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
        return_extra_tokens: bool = False,
    ) -> tuple[Any, ...]:
        """Outputs of selected blocks.

        Args:
            x: (B, C, H, W).
            n: the last n blocks (int) or block indices (0-based; negative counts from the end).
            reshape: return patch tokens as (B, D, h, w) instead of (B, N, D).
            return_class_token: pair each output with its cls token (B, D).
            norm: apply the final norm to every token of each output.
            return_extra_tokens: also return the storage tokens (B, S, D).

        Returns:
            one entry per requested block, in block order: the patch tokens, or a tuple
            (patches, cls[, storage]) / (patches, storage) as the flags ask.
        """
        wanted = self._block_indices(n)
        tokens, (h, w) = self.prepare_tokens(x)
        rope = self._rope((h, w))
        outputs: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks[: max(wanted) + 1]):
            tokens = block(tokens, rope)
            if i in wanted:
                outputs[i] = self.norm(tokens) if norm else tokens
        k = self.num_prefix_tokens
        results = []
        for i in wanted:
            out = outputs[i]
            patches = out[:, k:]
            if reshape:
                patches = patches.reshape(out.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            parts = [patches]
            if return_class_token:
                parts.append(out[:, 0])
            if return_extra_tokens:
                parts.append(out[:, 1:k])
            results.append(parts[0] if len(parts) == 1 else tuple(parts))
        return tuple(results)

    def forward_intermediates(
        self,
        x: Tensor,
        indices: LayerSpec = None,
        norm: bool = False,
        output_fmt: Literal["NCHW", "NLC"] = "NCHW",
        intermediates_only: bool = False,
        return_prefix_tokens: bool = False,
    ) -> list[Any] | tuple[Tensor, list[Any]]:
        """Outputs of selected blocks, timm-style: the one feature interface every geodino head consumes.

        Args:
            x: (B, C, H, W); sides that are not multiples of the patch size follow `input_padding`.
            indices: None (all blocks), an int n (the last n), a named layer set ("last", "four_even",
                "last_four"; see `geodino.models.features`) or a list of block indices (negative from the end).
            norm: apply the final norm to every token of each intermediate output.
            output_fmt: "NCHW" for patch maps (B, D, h, w), "NLC" for token sequences (B, N, D).
            intermediates_only: return only the intermediates, and stop after the deepest requested block.
            return_prefix_tokens: pair each intermediate with its prefix tokens (B, 1 + S, D): cls, then storage.

        Returns:
            the list of intermediates in the requested order (each a patch tensor, or a (patches, prefix) pair);
            unless `intermediates_only`, a tuple (final-norm tokens (B, 1 + S + N, D), that list).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, max_index = feature_take_indices(self.n_blocks, indices)
        wanted = set(take)
        tokens, (h, w) = self.prepare_tokens(x)
        rope = self._rope((h, w))
        last = max_index if intermediates_only else self.n_blocks - 1
        collected: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks[: last + 1]):
            tokens = block(tokens, rope)
            if i in wanted:
                collected[i] = self.norm(tokens) if norm else tokens
        k = self.num_prefix_tokens
        intermediates: list[Any] = []
        for i in take:
            out = collected[i]
            patches = out[:, k:]
            if output_fmt == "NCHW":
                patches = patches.reshape(out.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            intermediates.append((patches, out[:, :k]) if return_prefix_tokens else patches)
        if intermediates_only:
            return intermediates
        return self.norm(tokens), intermediates
