"""Official-named constructors: ``geodino.hub.dinov3_vitl16(weights="/path/to/file.pth")``.

Each takes ``weights``: a local checkpoint in any supported format (Meta ``.pth``, timm, Hugging Face folder or
``model.safetensors``, geodino), or None for random initialisation (the model's ``meta.weights`` is then
``"random"``, which every output it makes records). Nothing is ever downloaded. Tools that take a model by NAME
(``geodino embed --backbone vits16``) never turn a name into random weights silently: only ``test``, the built-in
tiny test model that has no pretrained weights at all, runs without ``--random-weights`` (:func:`needs_weights`). The architecture of
a checkpoint is read from its keys and shapes and must match the constructor's; any other keyword argument goes to
`DinoVisionTransformer` (e.g. ``drop_path_rate``, ``input_padding``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from geodino.models.vit import DinoVisionTransformer

__all__ = [
    "dinov3_vit7b16",
    "dinov3_vit_test",
    "dinov3_vitb16",
    "dinov3_vith16plus",
    "dinov3_vitl16",
    "dinov3_vitl16_chmv2",
    "dinov3_vits16",
    "dinov3_vits16plus",
]


#: Short names accepted by tools: "vits16" -> "dinov3_vits16"; "test" -> the tiny test model.
_ALIASES = {"test": "dinov3_vit_test", "vit_test": "dinov3_vit_test"}


def resolve_name(name: str) -> str | None:
    """The constructor name for a hub name ("vits16", "dinov3_vits16", "test"), or None if there is none."""
    full = _ALIASES.get(name) or (name if name.startswith("dinov3_") else f"dinov3_{name}")
    return full if full in __all__ else None


def needs_weights(name: str) -> bool:
    """True for the real architectures: running them without a checkpoint must be asked for explicitly.

    The test model (``test``) is exempt: it exists only to exercise code paths and has no pretrained weights.
    """
    return resolve_name(name) != "dinov3_vit_test"


def known_names() -> list[str]:
    """Short names of the constructors ("test", "vits16", ...)."""
    return ["test", *sorted(n.removeprefix("dinov3_") for n in __all__ if n != "dinov3_vit_test")]


def load_named(
    source: str | Path, *, pretraining: str | None = None, random_weights: bool = False, **kwargs: Any
) -> DinoVisionTransformer:
    """A backbone from a checkpoint path, or a hub name with random weights only when asked for explicitly.

    The one rule every tool that takes a backbone by name follows (``geodino embed``, ``geodino train-head``).

    Args:
        source: Checkpoint path (any format ``geodino.load_backbone`` reads), or a hub name: "test" (the built-in
            tiny test model, always random), or with ``random_weights`` an architecture such as "vits16".
        pretraining: "sat493m" or "lvd1689m": the weights' pretraining data where the checkpoint cannot tell.
        random_weights: Allow a hub architecture without weights (its ``meta.weights`` is "random").
        **kwargs: Options of a randomly initialised hub model (e.g. ``in_chans`` for an N-band test model).

    Raises:
        ModelError: A hub architecture without ``random_weights``; ``random_weights`` with a checkpoint file; a
            name that is neither a file nor a hub name.
    """
    import torch

    from geodino.errors import ModelError

    if Path(source).exists():
        if random_weights:
            raise ModelError(f"{source} is a checkpoint file: --random-weights applies to hub names only")
        from geodino.models.checkpoint import load_backbone

        return load_backbone(source, pretraining=pretraining)
    if pretraining is not None:
        raise ModelError(f"pretraining={pretraining!r} applies to checkpoint files; {source!r} is not a file")
    name = resolve_name(str(source))
    if name is None:
        raise ModelError(
            f"backbone {str(source)!r} is neither a checkpoint file nor a hub name; known names: {known_names()}"
        )
    if needs_weights(str(source)) and not random_weights:
        raise ModelError(
            f"backbone {str(source)!r} names an architecture, not weights: give its checkpoint file "
            f"(--backbone path/to/{name}.pth), or pass --random-weights (random_weights=True) to run it untrained"
        )
    # Random weights: seeded, so every worker process builds the same model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return globals()[name](weights=None, **kwargs)


def build(
    name: str,
    weights: str | Path | None = None,
    *,
    pretraining: str | None = None,
    **kwargs: Any,
) -> DinoVisionTransformer:
    """Build the architecture `name` (a key of `geodino.models.config.ARCHS`), optionally loading `weights`.

    Args:
        name: official constructor name, e.g. "dinov3_vitl16".
        weights: local checkpoint path, or None for random weights.
        pretraining: "sat493m" or "lvd1689m" when the file itself cannot tell (sets normalisation and GSD).
        **kwargs: `DinoVisionTransformer` options; ``in_chans`` builds an N-band model (random weights only).
    """
    from geodino.models.checkpoint import load_backbone
    from geodino.models.config import ARCHS
    from geodino.models.vit import DinoVisionTransformer

    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHS)}")
    arch = ARCHS[name]
    if weights is not None:
        return load_backbone(weights, expect=name, pretraining=pretraining, **kwargs)
    arch = arch.replace(in_chans=kwargs.pop("in_chans", arch.in_chans))
    return DinoVisionTransformer(arch, **kwargs)


def dinov3_vits16(weights: str | Path | None = None, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-S/16 (384 wide, 12 blocks, 6 heads, MLP; 21.6M parameters)."""
    return build("dinov3_vits16", weights, **kwargs)


def dinov3_vits16plus(weights: str | Path | None = None, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-S+/16 (384 wide, 12 blocks, 6 heads, SwiGLU x6; 28.7M parameters)."""
    return build("dinov3_vits16plus", weights, **kwargs)


def dinov3_vitb16(weights: str | Path | None = None, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-B/16 (768 wide, 12 blocks, 12 heads, MLP; 85.7M parameters)."""
    return build("dinov3_vitb16", weights, **kwargs)


def dinov3_vitl16(weights: str | Path | None = None, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-L/16 (1024 wide, 24 blocks, 16 heads, MLP; 303.2M parameters). The SAT-493M file adds local_cls_norm."""
    return build("dinov3_vitl16", weights, **kwargs)


def dinov3_vith16plus(weights: str | Path | None = None, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-H+/16 (1280 wide, 32 blocks, 20 heads, SwiGLU x6; 840.6M parameters)."""
    return build("dinov3_vith16plus", weights, **kwargs)


def dinov3_vit7b16(weights: str | Path | None = None, **kwargs: Any) -> DinoVisionTransformer:
    """ViT-7B/16 (4096 wide, 40 blocks, 32 heads of 128, SwiGLU-64, no qkv bias; 6.7B parameters)."""
    return build("dinov3_vit7b16", weights, **kwargs)


def dinov3_vit_test(weights: str | Path | None = None, **kwargs: Any) -> DinoVisionTransformer:
    """Test-only ViT (64 wide, 2 blocks, 4 heads): runs every code path on a CPU in milliseconds."""
    return build("dinov3_vit_test", weights, **kwargs)


def dinov3_vitl16_chmv2(
    weights: str | Path | None = None, backbone_weights: str | Path | None = None, **kwargs: Any
) -> nn.Module:
    """Meta's CHMv2 canopy-height model: SAT-493M ViT-L/16 + DPT head + 256 bins -> metres (B, 1, H, W) float32.

    Args:
        weights: the CHMv2 head file (``dinov3_vitl16_chmv2_dpt_head-*.pth``), or None for random head weights.
        backbone_weights: the SAT-493M ViT-L/16 file (any name: its local_cls_norm is read from the keys), or
            None for a random backbone.
        **kwargs: ``uncertainty=True`` (channels [height, height_std]), ``output_size="padded"`` (Meta's raw
            output grid instead of the input's), and `DinoVisionTransformer` options for the backbone.

    Returns:
        a `geodino.heads.model.DenseModel` in eval mode; see `geodino.heads.chmv2` for the output-size rule.
    """
    from geodino.heads.chmv2 import load_chmv2

    return load_chmv2(weights, backbone_weights, **kwargs)
