"""Checkpoint formats (Meta, timm, Hugging Face, geodino) -> one DINOv3 backbone, without guessing from file names.

The architecture is read from the keys and shapes of the state dict; the weights are loaded strictly, and anything
that does not fit fails with a message that names the file, what was expected and what was found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geodino.models.config import ARCHS, VitConfig, arch_name_for
from geodino.models.meta import BackboneMeta, normalisation_for
from geodino.models.vit import DinoVisionTransformer

GEODINO_FORMAT = "geodino-backbone/1"
_WRAPPERS = ("state_dict", "model", "teacher", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.", "dinov3.", "model.")
# Keys a checkpoint may lack because they only matter in training or are derived: value used instead.
_OPTIONAL = ("mask_token", "rope_embed.periods")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as a DINOv3 backbone."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A state dict in geodino's (= Meta's) key names, with what was learnt while converting it."""

    state_dict: dict[str, Tensor]
    config: VitConfig
    checkpoint_format: str
    meta: BackboneMeta | None
    ignored_keys: tuple[str, ...]
    source: Path
    side_configs: dict[str, Any]  # JSON configs found beside the weights (Hugging Face)


# --------------------------------------------------------------------------------------------------- reading
def _hf_folder_files(folder: Path) -> tuple[list[Path], dict[str, Any]]:
    """Weight files and config of a Hugging Face model folder."""
    config: dict[str, Any] = {}
    for name in ("config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            config[name] = json.loads((folder / name).read_text())
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards], config
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name], config
    raise CheckpointError(f"{folder}: a folder, but no model.safetensors or pytorch_model.bin in it")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch/safetensors raise many types for truncated or foreign files
        raise CheckpointError(
            f"{path}: cannot be read as a PyTorch or safetensors checkpoint "
            f"(truncated download or not a checkpoint?): {type(exc).__name__}: {exc}"
        ) from exc


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Raw contents of a checkpoint file or Hugging Face folder, and any JSON configs found beside it."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    config: dict[str, Any] = {}
    if path.is_dir():
        files, config = _hf_folder_files(path)
    else:
        files = [path]
        for name in ("config.json", "preprocessor_config.json"):
            if path.suffix == ".safetensors" and (path.parent / name).is_file():
                config[name] = json.loads((path.parent / name).read_text())
    contents: dict[str, Any] = {}
    for f in files:
        data = _read_file(f)
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{f}: holds a {type(data).__name__}, not a state dict")
        contents.update(data)
    return contents, config


def _unwrap(contents: Mapping[str, Any], source: Path) -> dict[str, Tensor]:
    """Find the backbone state dict inside training-checkpoint containers and strip wrapper prefixes."""
    sd: Mapping[str, Any] = contents
    for _ in range(3):
        if any(isinstance(v, Tensor) for v in sd.values()):
            break
        inner = next((sd[k] for k in _WRAPPERS if isinstance(sd.get(k), Mapping)), None)
        if inner is None:
            break
        sd = inner
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: no tensors found (top-level keys: {_preview(contents)})")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                changed = True
    # A training checkpoint may hold backbone and heads side by side: keep the backbone.
    if not any(k in tensors for k in ("cls_token", "embeddings.cls_token")):
        for prefix in ("backbone.", "model.backbone.", "teacher.backbone.", "student.backbone."):
            sub = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            if "cls_token" in sub or "embeddings.cls_token" in sub:
                return sub
    return tensors


def _preview(keys: Any, n: int = 8) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(map(str, keys[:n])) + more


# ------------------------------------------------------------------------------------------ format conversion
def detect_format(sd: Mapping[str, Tensor]) -> str:
    """ "meta", "timm" or "hf" from characteristic keys."""
    if "storage_tokens" in sd:
        return "meta"
    if "reg_token" in sd and "cls_token" in sd:
        return "timm"
    if "embeddings.cls_token" in sd:
        return "hf"
    return "unknown"


def _concat_qkv_bias(q: Tensor | None, v: Tensor | None, dim: int, like: Tensor) -> Tensor | None:
    """q and v biases -> the fused (3D,) bias with a zero k third (the official layout behind bias_mask)."""
    if q is None and v is None:
        return None
    zeros = like.new_zeros(dim)
    return torch.cat([q if q is not None else zeros, zeros, v if v is not None else zeros])


def _from_timm(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    renames = [
        (r"^reg_token$", "storage_tokens"),
        (r"\.gamma_1$", ".ls1.gamma"),
        (r"\.gamma_2$", ".ls2.gamma"),
        (r"\.mlp\.fc1_g\.", ".mlp.w1."),
        (r"\.mlp\.fc1_x\.", ".mlp.w2."),
    ]
    swiglu = any(".mlp.fc1_g." in k for k in sd)
    for key, value in sd.items():
        if key.endswith((".attn.q_bias", ".attn.v_bias", ".attn.k_bias")):
            continue
        new = key
        for pattern, repl in renames:
            new = re.sub(pattern, repl, new)
        if swiglu and ".mlp.fc2." in new:
            new = new.replace(".mlp.fc2.", ".mlp.w3.")
        out[new] = value
    for key in [k for k in sd if k.endswith(".attn.qkv.weight")]:
        base = key[: -len("qkv.weight")]
        dim = sd[key].shape[1]
        if sd.get(base + "k_bias") is not None and bool(sd[base + "k_bias"].abs().max() > 0):
            raise CheckpointError(f"{key}: this timm model has a non-zero k bias, which DINOv3 never has")
        bias = _concat_qkv_bias(sd.get(base + "q_bias"), sd.get(base + "v_bias"), dim, sd[key])
        if bias is not None:
            out[base + "qkv.bias"] = bias
    return out


_HF_RENAMES = [
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.register_tokens$", "storage_tokens"),
    (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.patch_embeddings\.", "patch_embed.proj."),
    (r"^(?:model\.)?layer\.(\d+)\.", r"blocks.\1."),
    (r"\.attention\.o_proj\.", ".attn.proj."),
    (r"\.layer_scale1\.lambda1$", ".ls1.gamma"),
    (r"\.layer_scale2\.lambda1$", ".ls2.gamma"),
    (r"\.mlp\.gate_proj\.", ".mlp.w1."),
]


def _from_hf(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    gated = any(".mlp.gate_proj." in k for k in sd)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if ".attention.q_proj." in key or ".attention.k_proj." in key or ".attention.v_proj." in key:
            continue
        new = key
        for pattern, repl in _HF_RENAMES:
            new = re.sub(pattern, repl, new)
        if gated:
            new = new.replace(".mlp.up_proj.", ".mlp.w2.").replace(".mlp.down_proj.", ".mlp.w3.")
        else:
            new = new.replace(".mlp.up_proj.", ".mlp.fc1.").replace(".mlp.down_proj.", ".mlp.fc2.")
        out[new] = value.reshape(1, -1) if new == "mask_token" else value
    for key in [k for k in sd if k.endswith(".attention.q_proj.weight")]:
        base = key[: -len("q_proj.weight")]
        block = re.sub(r"^(?:model\.)?layer\.(\d+)\.attention\.$", r"blocks.\1.attn.", base)
        dim = sd[key].shape[1]
        weights = [sd[base + f"{p}_proj.weight"] for p in "qkv"]
        out[block + "qkv.weight"] = torch.cat(weights)
        k_bias = sd.get(base + "k_proj.bias")
        if k_bias is not None and bool(k_bias.abs().max() > 0):
            raise CheckpointError(f"{base}k_proj.bias: a non-zero k bias, which DINOv3 never has")
        bias = _concat_qkv_bias(sd.get(base + "q_proj.bias"), sd.get(base + "v_proj.bias"), dim, sd[key])
        if bias is not None:
            out[block + "qkv.bias"] = bias
    return out


def to_geodino_keys(sd: Mapping[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """Rename a state dict of format `fmt` to geodino's (= Meta's) key names."""
    if fmt == "meta":
        return dict(sd)
    if fmt == "timm":
        return _from_timm(sd)
    if fmt == "hf":
        return _from_hf(sd)
    raise CheckpointError("not a DINOv3 backbone: found none of storage_tokens / reg_token / embeddings.cls_token")


# -------------------------------------------------------------------------------------- architecture inference
def _num_heads(sd: Mapping[str, Tensor], dim: int, depth: int, hf_config: Mapping[str, Any]) -> int:
    """Heads from the RoPE periods (d/4 of them), the HF config, the known sizes, or head dim 64."""
    if "rope_embed.periods" in sd:
        return dim // (4 * sd["rope_embed.periods"].numel())
    if "num_attention_heads" in hf_config:
        return int(hf_config["num_attention_heads"])
    for arch in ARCHS.values():
        if arch.embed_dim == dim and arch.depth == depth:
            return arch.num_heads
    return max(dim // 64, 1)


def _ffn(sd: Mapping[str, Tensor], dim: int) -> tuple[str, float]:
    """FFN type and ratio whose hidden width equals the checkpoint's."""
    if "blocks.0.mlp.w1.weight" in sd:
        hidden = sd["blocks.0.mlp.w1.weight"].shape[0]
        for layer, ratio in (("swiglu", 6.0), ("swiglu64", 3.0)):
            if VitConfig(dim, 1, 1, ffn_layer=layer, ffn_ratio=ratio).ffn_hidden == hidden:
                return layer, ratio
        return "swiglu", hidden * 1.5 / dim
    if "blocks.0.mlp.fc1.weight" in sd:
        return "mlp", sd["blocks.0.mlp.fc1.weight"].shape[0] / dim
    raise CheckpointError("no FFN weights found in block 0 (expected mlp.fc1 or mlp.w1/w2/w3)")


def _check_hf_config(hf_config: Mapping[str, Any], gated: bool) -> None:
    """Refuse Hugging Face configs whose settings the DINOv3 architecture does not have."""
    act = hf_config.get("hidden_act", "silu" if gated else "gelu")
    if act != ("silu" if gated else "gelu"):
        kind = "gated (SwiGLU) MLP with SiLU" if gated else "MLP with exact GELU"
        raise CheckpointError(f"config.json says hidden_act={act!r}, but DINOv3 uses a {kind}")
    eps = hf_config.get("layer_norm_eps", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise CheckpointError(f"config.json says layer_norm_eps={eps}, DINOv3 uses 1e-5")


def infer_config(sd: Mapping[str, Tensor], hf_config: Mapping[str, Any] | None = None) -> VitConfig:
    """Architecture of a state dict in geodino key names."""
    hf_config = hf_config or {}
    if hf_config:
        _check_hf_config(hf_config, "blocks.0.mlp.w1.weight" in sd)
    for key in ("cls_token", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "norm.weight"):
        if key not in sd:
            raise CheckpointError(f"not a DINOv3 backbone: key {key!r} is missing")
    dim = sd["cls_token"].shape[-1]
    proj = sd["patch_embed.proj.weight"]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    layer, ratio = _ffn(sd, dim)
    return VitConfig(
        embed_dim=dim,
        depth=depth,
        num_heads=_num_heads(sd, dim, depth, hf_config),
        ffn_layer=layer,  # type: ignore[arg-type]
        ffn_ratio=ratio,
        qkv_bias="blocks.0.attn.qkv.bias" in sd,
        local_cls_norm="local_cls_norm.weight" in sd,
        n_storage_tokens=sd["storage_tokens"].shape[1] if "storage_tokens" in sd else 0,
        patch_size=proj.shape[-1],
        in_chans=proj.shape[1],
        rope_base=float(hf_config.get("rope_theta", 100.0)),
        proj_bias="blocks.0.attn.proj.bias" in sd,
        ffn_bias=any(k.startswith("blocks.0.mlp.") and k.endswith(".bias") for k in sd),
    )


# ---------------------------------------------------------------------------------------------- metadata
def _pretraining_from(
    config: VitConfig, hf: Mapping[str, Any], explicit: str | None
) -> tuple[str, tuple[float, ...] | None, tuple[float, ...] | None]:
    """Pretraining tag and any normalisation stated by the checkpoint itself (never by its file name)."""
    if explicit is not None:
        if explicit not in ("sat493m", "lvd1689m"):
            raise ValueError(f"pretraining must be 'sat493m' or 'lvd1689m', got {explicit!r}")
        return explicit, None, None
    proc = hf.get("preprocessor_config.json", {})
    if "image_mean" in proc:
        mean, std = tuple(proc["image_mean"]), tuple(proc["image_std"])
        tag = "sat493m" if abs(mean[2] - 0.296) < 1e-3 else "lvd1689m"
        return tag, mean, std
    # Of all released ViT-L checkpoints, only the SAT-493M one carries local_cls_norm (370 keys vs 368).
    if arch_name_for(config) == "dinov3_vitl16" and config.local_cls_norm:
        return "sat493m", None, None
    return "unknown", None, None


def _make_meta(ckpt: LoadedCheckpoint, pretraining: str | None) -> BackboneMeta:
    cfg = ckpt.config
    if ckpt.meta is not None:
        return ckpt.meta.replace(source=str(ckpt.source), checkpoint_format=ckpt.checkpoint_format)
    tag, mean, std = _pretraining_from(cfg, ckpt.side_configs, pretraining)
    base_mean, base_std, gsd = normalisation_for(tag)
    return BackboneMeta(
        name=arch_name_for(cfg) or "custom",
        weights=tag,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        mean=mean or base_mean,
        std=std or base_std,
        gsd=gsd,
        source=str(ckpt.source),
        checkpoint_format=ckpt.checkpoint_format,
        ignored_keys=ckpt.ignored_keys,
    )


# ------------------------------------------------------------------------------------------------- loading
def read_backbone_checkpoint(path: str | Path, ignore_keys: tuple[str, ...] = ()) -> LoadedCheckpoint:
    """Read any supported checkpoint into geodino key names and infer its architecture.

    Args:
        path: Meta ``.pth``, timm state dict, Hugging Face folder / ``model.safetensors``, or a geodino file.
        ignore_keys: regular expressions of keys to drop deliberately (e.g. training heads); reported in metadata.
    """
    source = Path(path).expanduser()
    contents, hf_config = read_checkpoint(source)
    if contents.get("format") == GEODINO_FORMAT:
        sd = dict(contents["state_dict"])
        cfg = VitConfig(**contents["config"])
        return LoadedCheckpoint(sd, cfg, "geodino", BackboneMeta.from_dict(contents["meta"]), (), source, {})
    sd = _unwrap(contents, source)
    ignored = tuple(k for k in sd if any(re.search(p, k) for p in ignore_keys))
    sd = {k: v for k, v in sd.items() if k not in ignored}
    fmt = detect_format(sd)
    if fmt == "unknown":
        raise CheckpointError(
            f"{source}: not a DINOv3 backbone checkpoint: none of the keys storage_tokens (Meta), reg_token "
            f"(timm) or embeddings.cls_token (Hugging Face) is present; found {_preview(sd)}"
        )
    try:
        sd = to_geodino_keys(sd, fmt)
        cfg = infer_config(sd, hf_config.get("config.json"))
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from exc
    return LoadedCheckpoint(sd, cfg, fmt, None, ignored, source, hf_config)


def _check_expected(ckpt: LoadedCheckpoint, expect: str | None) -> None:
    if expect is None:
        return
    found = arch_name_for(ckpt.config)
    if found != expect:
        cfg = ckpt.config
        raise CheckpointError(
            f"{ckpt.source}: expected a {expect} checkpoint ({_describe(ARCHS[expect])}), found "
            f"{found or 'an unknown architecture'} ({_describe(cfg)})"
        )


def _describe(cfg: VitConfig) -> str:
    return f"dim {cfg.embed_dim}, depth {cfg.depth}, {cfg.ffn_layer} hidden {cfg.ffn_hidden}, {cfg.in_chans} bands"


def load_state_dict_strict(model: DinoVisionTransformer, sd: Mapping[str, Tensor], source: Path) -> None:
    """Load `sd` into `model`; every model key must be present (bar `_OPTIONAL`), every file key used."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not (k in _OPTIONAL or k.endswith(".bias_mask"))]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not fit the inferred architecture; missing keys: {_preview(missing) or 'none'}; "
            f"unexpected keys: {_preview(unexpected) or 'none'} (pass ignore_keys=[regex] to drop extra keys "
            f"on purpose)"
        )
    for key, value in sd.items():
        if expected[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, the model expects {tuple(expected[key].shape)}"
            )
    for key, value in sd.items():
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{source}: key {key!r} holds NaN or infinite values (corrupt file?)")
    model.load_state_dict(sd, strict=False)


def load_backbone(
    path: str | Path,
    *,
    expect: str | None = None,
    pretraining: str | None = None,
    ignore_keys: tuple[str, ...] | list[str] = (),
    **kwargs: Any,
) -> DinoVisionTransformer:
    """Load a DINOv3 backbone from a local checkpoint, whatever its file name and format.

    Args:
        path: Meta ``.pth`` state dict (web LVD-1689M or satellite SAT-493M), timm ``vit_*_patch16_dinov3``
            state dict, Hugging Face ``transformers`` DINOv3 folder or ``model.safetensors``, or a file written
            by `save_backbone`.
        expect: official architecture name the file must hold (e.g. "dinov3_vitl16"); None accepts any.
        pretraining: "sat493m" or "lvd1689m" when the file cannot tell (sets mean/std and GSD). Hugging Face
            folders state it in preprocessor_config.json; the SAT-493M ViT-L is recognised by its local_cls_norm.
        ignore_keys: regular expressions of keys to drop on purpose (listed in ``model.meta.ignored_keys``).
        **kwargs: `DinoVisionTransformer` options (drop_path_rate, input_padding, ...).

    Returns:
        the backbone in eval mode, with ``.meta`` describing the weights.
    """
    ckpt = read_backbone_checkpoint(path, tuple(ignore_keys))
    _check_expected(ckpt, expect)
    meta = _make_meta(ckpt, pretraining)
    if ckpt.meta is None and meta.weights == "unknown":
        import warnings

        warnings.warn(
            f"{ckpt.source}: the file does not say whether it is web (LVD-1689M) or satellite (SAT-493M) "
            f"pretraining; using web normalisation. Pass pretraining='sat493m' for satellite weights.",
            stacklevel=2,
        )
    return build_backbone(ckpt.config, ckpt.state_dict, meta=meta, source=ckpt.source, **kwargs)


def build_backbone(
    config: VitConfig, state_dict: Mapping[str, Tensor], *, meta: BackboneMeta, source: Path, **kwargs: Any
) -> DinoVisionTransformer:
    """A backbone of architecture `config` holding `state_dict` (loaded strictly), in eval mode on the CPU.

    Args:
        config: The architecture.
        state_dict: Weights in geodino key names.
        meta: Metadata to attach.
        source: File the weights came from (named in errors).
        **kwargs: `DinoVisionTransformer` options.
    """
    with torch.device("meta"):
        model = DinoVisionTransformer(config, meta=meta, **kwargs)
    model = model.to_empty(device="cpu")
    model.init_optional_state()  # everything else comes from the file, checked by the strict load
    load_state_dict_strict(model, state_dict, source)
    return model.eval()


def save_backbone(model: DinoVisionTransformer, path: str | Path) -> Path:
    """Write a backbone with its architecture and metadata, for `load_backbone`."""
    path = Path(path)
    payload = {
        "format": GEODINO_FORMAT,
        "config": model.config.to_dict(),
        "meta": model.meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, path)
    return path
