"""Architecture configurations of the DINOv3 ViT family (pure data, no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

FfnLayer = Literal["mlp", "swiglu", "swiglu64"]


@dataclass(frozen=True)
class VitConfig:
    """Shape of a DINOv3 vision transformer.

    Attributes:
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads (head dim = D / heads).
        ffn_layer: "mlp" (fc1/GELU/fc2), "swiglu" (hidden aligned to 8) or "swiglu64" (aligned to 64, the 7B).
        ffn_ratio: hidden width / D before the SwiGLU 2/3 factor.
        qkv_bias: whether the fused qkv projection has a bias (masked to zero on the k third).
        local_cls_norm: whether a second LayerNorm for local-crop cls/storage tokens exists (SAT ViT-L, 7B).
        n_storage_tokens: register ("storage") tokens after the cls token.
        patch_size: side of the square patch embedding kernel.
        in_chans: input bands.
        layerscale_init: initial LayerScale gamma.
        rope_base: RoPE period base.
        proj_bias: bias on the attention output projection.
        ffn_bias: biases in the FFN layers.
    """

    embed_dim: int
    depth: int
    num_heads: int
    ffn_layer: FfnLayer = "mlp"
    ffn_ratio: float = 4.0
    qkv_bias: bool = True
    local_cls_norm: bool = False
    n_storage_tokens: int = 4
    patch_size: int = 16
    in_chans: int = 3
    layerscale_init: float = 1e-5
    rope_base: float = 100.0
    proj_bias: bool = True
    ffn_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def ffn_hidden(self) -> int:
        """Hidden width of the FFN; SwiGLU keeps 2/3 of D * ratio, rounded up to its alignment."""
        hidden = int(self.embed_dim * self.ffn_ratio)
        if self.ffn_layer == "mlp":
            return hidden
        align = 64 if self.ffn_layer == "swiglu64" else 8
        hidden = int(hidden * 2 / 3)
        return (hidden + align - 1) // align * align

    def replace(self, **changes: Any) -> VitConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Official constructor name -> architecture (dinov3-reference.md, section 1).
ARCHS: dict[str, VitConfig] = {
    "dinov3_vits16": VitConfig(384, 12, 6),
    "dinov3_vits16plus": VitConfig(384, 12, 6, ffn_layer="swiglu", ffn_ratio=6.0),
    "dinov3_vitb16": VitConfig(768, 12, 12),
    "dinov3_vitl16": VitConfig(1024, 24, 16),
    "dinov3_vith16plus": VitConfig(1280, 32, 20, ffn_layer="swiglu", ffn_ratio=6.0),
    "dinov3_vit7b16": VitConfig(4096, 40, 32, ffn_layer="swiglu64", ffn_ratio=3.0, qkv_bias=False, local_cls_norm=True),
    # Test-only size: every code path, on a CPU, in milliseconds.
    "dinov3_vit_test": VitConfig(64, 2, 4),
}


def arch_name_for(config: VitConfig) -> str | None:
    """The official name whose shape matches `config` (ignoring bands and local_cls_norm), if any."""
    for name, arch in ARCHS.items():
        if arch.replace(in_chans=config.in_chans, local_cls_norm=config.local_cls_norm) == config:
            return name
    return None
