"""Saved models: a backbone (+ a head) + the model-metadata contract in one self-describing, safe-to-load file.

``geodino.save_model(path, model)`` writes, with ``torch.save``, a dictionary of tensors and plain python values
only, so :func:`load_model` reads it with ``torch.load(weights_only=True)``: loading a model never runs code from
the file. What it holds (format version 1)::

    format          "geodino-model"
    version         1 (a file of a newer version is refused: upgrade geodino)
    info            the ModelInfo (bands, normalisation, tile, output stride, task, classes or units...)
    backbone        config (VitConfig), meta (BackboneMeta), options (input_padding), and either
                    state_dict (embedded weights) or file {path, relative, size, sha256} (referenced weights)
    head            None (an embedding model), or {class_path "module:Class", config, description}
    model           None, or {class_path, config}: the module joining backbone and head
    state_dict      every weight of the model outside ``backbone.`` (the head's and the joining module's)

A savable model is either a geodino backbone (``DinoVisionTransformer``: saved as an embedding model), or a
module with a ``.backbone`` (a ``DinoVisionTransformer``) and a ``.head``, where

- the head has ``config() -> dict`` of plain values with ``type(head)(**config)`` rebuilding it, and
  ``describe() -> dict`` with the output fields of :class:`~geodino.modelinfo.ModelInfo` (kind, out_channels,
  factor, class_names, units, valid_range, activation, channel_names) and optionally ``layers`` (the backbone
  blocks it reads);
- the joining module is rebuilt as ``type(model)(backbone, head, **model.config())`` (``config()`` optional), and
  its ``describe()``, when it has one, overrides the head's (a wrapper that adds an uncertainty channel, say).

Classes are named by import path, so loading needs no registry and the core imports no wing.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geodino.modelinfo import ModelInfo

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geodino.models.vit import DinoVisionTransformer

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelFileError",
    "describe_model",
    "file_sha256",
    "is_model_file",
    "load_model",
    "read_model_info",
    "save_model",
]

FORMAT = "geodino-model"
FORMAT_VERSION = 1
_INFO_FIELDS = {f.name for f in fields(ModelInfo)}
# What a backbone says about a model's input (a head says what its outputs are).
_INPUT_FIELDS = ("in_bands", "mean", "std", "scale", "band_names", "gsd", "tile", "multiple", "name")
_PLAIN = (str, int, float, bool, type(None))


class ModelFileError(ValueError):
    """A file that is not a geodino model, is damaged, or does not fit what it describes."""


# ----------------------------------------------------------------------------------------------------------------
# File identity.

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex), cached in this process by (path, size, modification time)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    digest = _DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        digest = _DIGESTS[key] = h.hexdigest()
    return digest


# ----------------------------------------------------------------------------------------------------------------
# Saving.


def save_model(
    path: str | Path,
    model: Any,
    *,
    backbone_file: str | Path | None = None,
    info: ModelInfo | Mapping[str, Any] | None = None,
    **fields: Any,
) -> Path:
    """Write a backbone, or a backbone + head, with its metadata contract, as one file.

    Args:
        path: Output file (conventionally ``.gdm``); written atomically.
        model: A geodino backbone, or a module with ``.backbone`` and ``.head`` (see the module docstring).
        backbone_file: None embeds the backbone weights; a path references that checkpoint instead (any format
            ``geodino.load_backbone`` reads): it must hold exactly the model's backbone weights, and its size and
            SHA-256 are stored so a later change is refused.
        info: Base metadata (a ModelInfo or dict); default: the backbone's input side (bands, normalisation, GSD,
            input multiple), the head's ``describe()`` for the outputs, then ``model.geodino_info`` if present.
        **fields: ModelInfo fields overriding the above (``name``, ``class_colours``, ``tile``, ``scale``...).

    Returns:
        The path written.

    Raises:
        ModelFileError: If the model cannot be saved so that it loads again exactly (unimportable classes,
            non-plain configs, a backbone file holding other weights, a forward that does not match the info).
    """
    import torch

    path = Path(path)
    backbone, head = _parts(model)
    model_info = _compose_info(model, backbone, head, info, fields)
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "info": model_info.to_dict(),
        "backbone": _backbone_entry(backbone, backbone_file, path),
        "head": None,
        "model": None,
        "state_dict": {},
    }
    if head is not None:
        payload["head"] = {
            "class_path": _class_path(type(head), "head"),
            "config": _plain_config(head, "head"),
            "description": _plain_value(_describe(head), "head.describe()"),
        }
        payload["model"] = {
            "class_path": _class_path(type(model), "model"),
            "config": _plain_config(model, "model") if callable(getattr(model, "config", None)) else {},
        }
        payload["state_dict"] = {
            k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith("backbone.")
        }
    module = model if head is not None else backbone
    _check_forward(module, model_info, head is None, str(path))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        _check_rebuilds(module, tmp, model_info, head is None, path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check_rebuilds(module: Any, written: Path, info: ModelInfo, embedding: bool, path: Path) -> None:
    """Load the file just written and compare its outputs with the model's on one random input.

    Catches a joining module or head whose constructor arguments are not all in its config (the rebuilt model
    would compute something else).
    """
    import torch

    rebuilt = load_model(written)
    side = 4 * math.lcm(info.multiple, info.factor)
    x = torch.randn(2, info.in_bands, side, side, generator=torch.Generator().manual_seed(0))
    device = next(iter(module.parameters())).device
    y, y_rebuilt = _run(module, x.to(device), embedding).cpu(), _run(rebuilt, x, embedding)
    # Same weights and code on the same device agree to the rounding of their kernels; another device less closely.
    tol = 1e-5 if device.type == "cpu" else 1e-3
    if y.shape != y_rebuilt.shape or not torch.allclose(y, y_rebuilt, rtol=tol, atol=tol):
        raise ModelFileError(
            f"{path}: the model rebuilt from the file computes something else than the model saved (max difference "
            f"{(y - y_rebuilt).abs().max().item() if y.shape == y_rebuilt.shape else 'of shape'}): does "
            f"{type(module).__name__}.config() (or its head's) hold every constructor argument?"
        )


def _run(module: Any, x: torch.Tensor, embedding: bool) -> torch.Tensor:
    """The model's output on ``x`` in eval mode (first element of a tuple output); the mode is restored."""
    import torch

    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            y = module.get_intermediate_layers(x, n=1, reshape=True, norm=True)[0] if embedding else module(x)
    finally:
        module.train(was_training)
    return (y[0] if isinstance(y, tuple | list) else y).float()


def _parts(model: Any) -> tuple[DinoVisionTransformer, Any]:
    """(backbone, head or None) of a savable model."""
    from geodino.models.vit import DinoVisionTransformer

    if isinstance(model, DinoVisionTransformer):
        return model, None
    backbone = getattr(model, "backbone", None)
    head = getattr(model, "head", None)
    if not isinstance(backbone, DinoVisionTransformer) or head is None:
        raise ModelFileError(
            f"cannot save a {type(model).__name__}: save_model takes a geodino backbone (DinoVisionTransformer), "
            "or a module with .backbone (a DinoVisionTransformer) and .head"
        )
    for method in ("config", "describe"):
        if not callable(getattr(head, method, None)):
            raise ModelFileError(
                f"the head {type(head).__name__} has no {method}() method: geodino rebuilds a head as "
                "type(head)(**head.config()) and reads its outputs from head.describe()"
            )
    return backbone, head


def _describe(module: Any) -> dict[str, Any]:
    description = module.describe()
    if not isinstance(description, Mapping):
        raise ModelFileError(f"{type(module).__name__}.describe() returned a {type(description).__name__}, not a dict")
    return dict(description)


def _compose_info(model: Any, backbone: Any, head: Any, info: Any, overrides: Mapping[str, Any]) -> ModelInfo:
    """The backbone's input side, the head's (then the joining module's) description of the outputs, then
    ``model.geodino_info``, ``info`` and explicit fields."""
    unknown = sorted(set(overrides) - _INFO_FIELDS)
    if unknown:
        raise ModelFileError(f"unknown model-info fields {unknown}; known: {sorted(_INFO_FIELDS)}")
    base = backbone.meta.model_info().to_dict()
    if head is not None:
        base = {k: base[k] for k in _INPUT_FIELDS}
        base["name"] = f"{backbone.meta.name}+{type(head).__name__}"
        described = _describe(head)
        if callable(getattr(model, "describe", None)):
            described.update(_describe(model))
        if "bands" in described and "band_names" not in described:
            described["band_names"] = described["bands"]
        if "factor" in described and described["factor"] is None:
            raise ModelFileError(
                f"{type(model).__name__} has no fixed output stride (describe() gives factor None, e.g. a padded "
                "output size): geodino maps only models whose output grid is the input grid divided by a factor"
            )
        missing = [k for k in ("kind", "out_channels", "factor") if described.get(k) is None]
        if missing:
            raise ModelFileError(f"{type(head).__name__}.describe() does not give {missing}")
        base.update({k: v for k, v in described.items() if k in _INFO_FIELDS})
    for extra in (getattr(model, "geodino_info", None), info):
        if extra is not None:
            base.update(extra.to_dict() if isinstance(extra, ModelInfo) else dict(extra))
    base.update(overrides)
    try:
        return ModelInfo.from_dict(_plain_value(base, "info"))
    except ValueError as err:
        raise ModelFileError(f"invalid model info: {err}") from err


def _backbone_entry(backbone: Any, backbone_file: str | Path | None, model_path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "config": backbone.config.to_dict(),
        "meta": _plain_value(backbone.meta.to_dict(), "backbone meta"),
        "options": {"input_padding": str(backbone.input_padding)},
    }
    if backbone_file is None:
        entry["state_dict"] = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
        return entry
    file = Path(backbone_file).expanduser().resolve()
    if not file.exists():
        raise ModelFileError(f"backbone_file {file}: no such file")
    _check_same_weights(backbone, file)
    entry["file"] = {
        "path": str(file),
        "relative": os.path.relpath(file, model_path.expanduser().resolve().parent),
        "size": file.stat().st_size,
        "sha256": file_sha256(file),
    }
    return entry


def _check_same_weights(backbone: Any, file: Path) -> None:
    """Refuse to reference a file whose weights differ from the backbone being saved."""
    import torch

    loaded = _load_quietly(file, backbone.meta.weights)
    mine, theirs = backbone.state_dict(), loaded.state_dict()
    if loaded.config != backbone.config:
        raise ModelFileError(f"backbone_file {file} holds another architecture than the model's backbone")
    differ = [k for k in mine if not torch.equal(mine[k].detach().cpu(), theirs[k])]
    if differ:
        raise ModelFileError(
            f"backbone_file {file} does not hold the model's backbone weights ({len(differ)} tensors differ, "
            f"e.g. {differ[0]!r}); reference the file the backbone was loaded from, or embed the weights"
        )


def _load_quietly(file: Path, weights: str) -> Any:
    """``load_backbone`` without the 'which pretraining?' warning (the saved meta says it)."""
    from geodino.models.checkpoint import load_backbone

    pretraining = weights if weights in ("sat493m", "lvd1689m") else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_backbone(file, pretraining=pretraining)


def _class_path(cls: type, what: str) -> str:
    path = f"{cls.__module__}:{cls.__qualname__}"
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        raise ModelFileError(
            f"the {what} class {path} cannot be imported by another process; define it in an importable module"
        )
    return path


def _plain_config(module: Any, what: str) -> dict[str, Any]:
    config = module.config()
    if not isinstance(config, Mapping):
        raise ModelFileError(f"{type(module).__name__}.config() returned a {type(config).__name__}, not a dict")
    return _plain_value(dict(config), f"{what} config")


def _plain_value(value: Any, where: str) -> Any:
    """``value`` if it holds only plain python types (what ``weights_only`` loads), else ModelFileError."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise ModelFileError(f"{where}: keys must be strings, found {bad[0]!r}")
        return {k: _plain_value(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_value(v, where) for v in value]
    raise ModelFileError(
        f"{where}: holds a {type(value).__name__}; a saved model stores only str/int/float/bool/None, lists and dicts"
    )


# ----------------------------------------------------------------------------------------------------------------
# Loading.


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The checked contents of a saved model, without building anything (weights memory-mapped).

    Raises:
        ModelFileError: If the file is missing, truncated, not a geodino model, or of a newer format version.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ModelFileError(
            f"{path}: not a geodino model: it holds python objects other than tensors and plain values, which "
            f"geodino never unpickles ({str(err).splitlines()[0]})"
        ) from err
    except Exception as err:  # torch raises RuntimeError / ValueError / OSError for damaged or foreign files
        raise ModelFileError(
            f"{path}: not a geodino model, or a truncated one: cannot be read as a PyTorch file "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a geodino model ({_what_it_is(payload)})")
    version = payload.get("version")
    if not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: damaged geodino model: format version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: a geodino model of format version {version}, written by a newer geodino; this one reads "
            f"versions up to {FORMAT_VERSION}: upgrade geodino"
        )
    missing = [k for k in ("info", "backbone", "head", "model", "state_dict") if k not in payload]
    if missing or not isinstance(payload["backbone"], dict):
        raise ModelFileError(f"{path}: damaged geodino model: entries {missing or ['backbone']} are missing")
    return payload


def _what_it_is(payload: Any) -> str:
    from geodino.models.checkpoint import GEODINO_FORMAT

    if not isinstance(payload, dict):
        return f"it holds a {type(payload).__name__}"
    if payload.get("format") == GEODINO_FORMAT:
        return "it is a geodino backbone checkpoint: load it with geodino.load_backbone or --backbone"
    keys = list(payload)[:6]
    return f"no 'format': '{FORMAT}' entry; top-level keys: {keys}" + (
        " (a state dict? load backbones with geodino.load_backbone)" if keys and "." in str(keys[0]) else ""
    )


def is_model_file(path: str | Path) -> bool:
    """True if ``path`` is a saved geodino model (of any format version, damaged or not), judged by content."""
    try:
        read_model_file(path)
    except ModelFileError as err:
        return "not a geodino model" not in str(err) and "no such file" not in str(err)
    return True


def read_model_info(path: str | Path) -> ModelInfo:
    """The metadata contract of a saved model, without building it."""
    return _info_of(read_model_file(path), Path(path))


def _info_of(payload: Mapping[str, Any], path: Path) -> ModelInfo:
    try:
        return ModelInfo.from_dict(dict(payload["info"]))
    except (ValueError, TypeError) as err:
        raise ModelFileError(f"{path}: damaged geodino model: {err}") from err


def load_model(path: str | Path, *, sha256: str | None = None, check: bool = True) -> torch.nn.Module:
    """Rebuild a saved model, in eval mode on the CPU, with its contract as ``model.geodino_info``.

    Args:
        path: A file written by :func:`save_model`.
        sha256: If given, the file must have this SHA-256 (a worker process checking it loads what its driver
            planned with).
        check: Run the model once on a small zero input to check that the head fits the backbone and that the
            output matches the metadata (channels, output stride).

    Returns:
        The backbone (for an embedding model) or the joining module of backbone and head.

    Raises:
        ModelFileError: Not a geodino model, truncated, newer format, a changed or missing referenced backbone
            file, an unimportable head class, or a head that does not fit its backbone.
    """
    path = Path(path).expanduser()
    if sha256 is not None and path.is_file() and file_sha256(path) != sha256:
        raise ModelFileError(
            f"{path}: the file changed while in use (SHA-256 {file_sha256(path)[:12]}, expected {sha256[:12]})"
        )
    payload = read_model_file(path)
    info = _info_of(payload, path)
    backbone = _build_backbone(payload["backbone"], path)
    if payload["head"] is None:
        model: Any = backbone
    else:
        model = _build_head_model(payload, backbone, path)
    if check:
        _check_forward(model, info, payload["head"] is None, str(path))
    model.geodino_info = info
    return model.eval()


def _build_backbone(entry: Mapping[str, Any], path: Path) -> DinoVisionTransformer:
    from geodino.models.checkpoint import CheckpointError, build_backbone
    from geodino.models.config import VitConfig
    from geodino.models.meta import BackboneMeta

    try:
        config = VitConfig(**entry["config"])
        meta = BackboneMeta.from_dict(dict(entry["meta"]))
        options = dict(entry.get("options") or {})
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: damaged geodino model: backbone entry: {err}") from err
    if "state_dict" in entry:
        try:
            return build_backbone(config, entry["state_dict"], meta=meta, source=path, **options)
        except CheckpointError as err:
            raise ModelFileError(f"{path}: damaged geodino model: {err}") from err
    file = _referenced_file(entry.get("file"), path)
    backbone = _load_quietly(file, meta.weights)
    if backbone.config != config:
        raise ModelFileError(
            f"{path}: its backbone file {file} holds another architecture than the model was saved with"
        )
    backbone.meta = meta.replace(source=str(file))
    backbone.input_padding = options.get("input_padding", backbone.input_padding)
    return backbone


def _candidates(ref: Mapping[str, Any], path: Path) -> list[Path]:
    """Where a referenced backbone file may be: beside the model (its saved relative path), then its absolute path."""
    candidates = [path.resolve().parent / ref["relative"]] if ref.get("relative") else []
    return [*candidates, Path(ref["path"])]


def _referenced_file(ref: Any, path: Path) -> Path:
    """The referenced backbone checkpoint: beside the model (its relative path) or at its absolute path,
    with the size and SHA-256 it had when the model was saved."""
    if not isinstance(ref, Mapping) or not {"path", "size", "sha256"} <= set(ref):
        raise ModelFileError(f"{path}: damaged geodino model: no backbone weights (neither embedded nor referenced)")
    candidates = _candidates(ref, path)
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise ModelFileError(
            f"{path}: its backbone weights are referenced, not embedded, and the file {ref['path']} is missing"
            + (f" (also looked for {candidates[0]})" if len(candidates) > 1 else "")
            + "; put it back, or save the model with the backbone embedded"
        )
    size = found.stat().st_size
    if size != ref["size"] or file_sha256(found) != ref["sha256"]:
        raise ModelFileError(
            f"{path}: its backbone file {found} has changed since the model was saved (size {size:,} bytes, "
            f"SHA-256 {file_sha256(found)[:12]}; expected {ref['size']:,} bytes, {ref['sha256'][:12]}); "
            "refusing to map with other weights than the head was trained on"
        )
    return found


def _import_class(class_path: str, what: str, path: Path) -> type:
    module_name, _, qualname = str(class_path).partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ModelFileError(
            f"{path}: the {what} class {class_path} cannot be imported ({err}); is the package defining it installed?"
        ) from err
    return obj  # type: ignore[no-any-return]


def _build_head_model(payload: Mapping[str, Any], backbone: Any, path: Path) -> Any:
    """The joining module around the backbone and a head rebuilt from its config, with the saved weights."""
    import torch

    head_entry, model_entry = payload["head"], payload["model"] or {}
    _check_layers(head_entry.get("description") or {}, backbone, path)
    head_cls = _import_class(head_entry["class_path"], "head", path)
    model_cls = _import_class(model_entry.get("class_path", ""), "model", path)
    try:
        head = head_cls(**head_entry["config"])
        model = model_cls(backbone, head, **(model_entry.get("config") or {}))
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{path}: cannot rebuild {head_entry['class_path']} from its saved config: {err}") from err
    saved: Mapping[str, torch.Tensor] = payload["state_dict"]
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    wrong = [k for k in expected if k in saved and tuple(saved[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {keys[:4]}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ModelFileError(f"{path}: the saved head weights do not fit the rebuilt head ({detail})")
    bad = [k for k, v in saved.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelFileError(f"{path}: head weight {bad[0]!r} holds NaN or infinite values (damaged file?)")
    model.load_state_dict(dict(saved), strict=False)
    return model


def _check_layers(description: Mapping[str, Any], backbone: Any, path: Path) -> None:
    """The head's backbone layers must exist in this backbone."""
    layers = description.get("layers")
    if not layers:
        return
    depth = backbone.config.depth
    flat = [layers] if isinstance(layers, int) else list(layers)
    bad = [i for i in flat if isinstance(i, int) and not -depth <= i < depth]
    if bad:
        raise ModelFileError(
            f"{path}: the head reads backbone layers {flat}, but the backbone has {depth} blocks "
            f"(width {backbone.config.embed_dim}): the head does not fit its backbone"
        )


def _check_forward(model: Any, info: ModelInfo, embedding: bool, where: str) -> None:
    """Run the model once on zeros: it must take the backbone and give (1, K, s / f, s / f)."""
    import torch

    side = 4 * math.lcm(info.multiple, info.factor)
    device = next(iter(model.parameters())).device
    try:
        y = _run(model, torch.zeros(1, info.in_bands, side, side, device=device), embedding)
    except (RuntimeError, ValueError, IndexError) as err:
        raise ModelFileError(
            f"{where}: the head does not fit its backbone (width {_width(model)}): a forward pass on a "
            f"{side}x{side} input failed: {str(err).splitlines()[0]}"
        ) from err
    expected = (1, info.out_channels, side // info.factor, side // info.factor)
    if tuple(y.shape) != expected:
        raise ModelFileError(
            f"{where}: a {side}x{side} input gives output {tuple(y.shape)}, but the metadata promise {expected} "
            f"(out_channels {info.out_channels}, output stride {info.factor})"
        )


def _width(model: Any) -> int:
    backbone = getattr(model, "backbone", model)
    return int(backbone.config.embed_dim)


# ----------------------------------------------------------------------------------------------------------------
# Describing.


def describe_model(path: str | Path) -> str:
    """A human-readable description of a saved model (for ``geodino info MODEL``), without building it."""
    path = Path(path).expanduser()
    payload = read_model_file(path)
    info = _info_of(payload, path)
    bb = payload["backbone"]
    config, meta = bb.get("config", {}), bb.get("meta", {})
    rows = {"file": f"{path} (geodino model, format version {payload['version']})"}
    rows.update(info.summary())
    rows["backbone"] = (
        f"{meta.get('name', 'custom')} ({meta.get('weights', 'unknown')} weights), width {config.get('embed_dim')}, "
        f"depth {config.get('depth')}, patch {config.get('patch_size')}"
    )
    if "state_dict" in bb:
        n = sum(int(v.numel()) for v in bb["state_dict"].values())
        rows["backbone weights"] = f"embedded ({n:,} parameters)"
    else:
        ref = bb.get("file") or {}
        found = next((c for c in _candidates(ref, path) if c.is_file()), None) if "path" in ref else None
        status = "MISSING" if found is None else "present, size matches (not re-hashed)"
        if found is not None and found.stat().st_size != ref.get("size"):
            status = "CHANGED (size differs)"
        where = found or ref.get("path")
        rows["backbone weights"] = f"referenced: {where} ({status}; SHA-256 {str(ref.get('sha256'))[:12]})"
    head = payload["head"]
    if head is None:
        rows["head"] = "none (embedding model: backbone patch tokens after the final norm)"
    else:
        n = sum(int(v.numel()) for v in payload["state_dict"].values())
        layers = (head.get("description") or {}).get("layers")
        rows["head"] = f"{head['class_path']} ({n:,} parameters" + (f", backbone layers {layers})" if layers else ")")
        rows["model"] = str((payload["model"] or {}).get("class_path"))
    rows["SHA-256"] = file_sha256(path)
    width = max(len(k) for k in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows.items())
