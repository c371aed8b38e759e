"""The one model interface the mapping workflows use: a batch of patches in, a dense prediction out.

A :class:`Predictor` wraps any model (an ``nn.Module``, a plain callable, a ``"package.module:attr"`` spec, a DINOv3
backbone) together with the metadata a workflow needs to run it on a raster: how many bands it takes, how to
normalise them, its output stride, what its output channels mean.

The model itself is built lazily, once per process, from a picklable loader and cached under a stable key, so a
Predictor pickles cheaply to Dask workers (a spec is sent, not the weights) and every thread of a worker shares
one model. Forward passes run under ``torch.inference_mode()`` in fixed-size batches; one device is shared by the
threads of a process behind a semaphore (a GPU runs one batch at a time; on CPU one forward at a time uses all
intra-op threads while other threads read and blend).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from geodino.modelinfo import Kind, ModelInfo
from geodino.raster.normalize import Normalization, default_scale
from geodino.workflows.devices import resolve_device

#: The model-metadata contract lives in the core (:mod:`geodino.modelinfo`); this is its historical name here.
PredictorInfo = ModelInfo

TTA = Literal["flips", "d4"]
#: Test-time augmentations: each a tuple of dihedral transforms (k, flip) = rotate by k x 90 degrees after an
#: optional left-right flip. "flips": identity, left-right, up-down (= rot180 of left-right), rot180; "d4": all 8.
TTA_TRANSFORMS: dict[str, tuple[tuple[int, bool], ...]] = {
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((k, flip) for flip in (False, True) for k in range(4)),
}


# ----------------------------------------------------------------------------------------------------------------
# Loaders: picklable zero-argument builders of the model, each with a stable cache key.


@dataclass(frozen=True)
class SpecLoader:
    """Builds the model from ``"package.module:attr"`` (attr: a module, a callable, or a zero-arg factory)."""

    spec: str

    @property
    def key(self) -> str:
        return f"spec:{self.spec}"

    def __call__(self) -> Any:
        return resolve_spec(self.spec)


@dataclass(frozen=True)
class BackboneLoader:
    """Builds a backbone (hub name such as "test"/"vits16", or a checkpoint path) wrapped as an embedder.

    A checkpoint path is kept resolved (workers need not share our working directory) with the file's size and
    modification time, so the per-process model cache never hands out a model loaded from an earlier version of
    the file (the run manifest identifies the weights by the SHA-256 of their bytes).
    """

    source: str
    pretraining: str | None = None  # "sat493m" / "lvd1689m" for checkpoints that cannot tell
    random_weights: bool = False  # a hub architecture with random weights, asked for explicitly
    stamp: str = ""  # size and mtime of a checkpoint file (cache key only)

    @classmethod
    def of(cls, source: str, pretraining: str | None = None, random_weights: bool = False) -> BackboneLoader:
        """A loader with the checkpoint path resolved and stamped."""
        if Path(source).exists():
            path = Path(source).resolve()
            stat = path.stat()
            return cls(str(path), pretraining, random_weights, f"{stat.st_size}:{stat.st_mtime_ns}")
        return cls(source, pretraining, random_weights)

    @property
    def key(self) -> str:
        key = f"backbone:{self.source}"
        if self.pretraining:
            key += f":{self.pretraining}"
        return key + (f"@{self.stamp}" if self.stamp else "")

    def __call__(self) -> Any:
        return EmbeddingModel(
            load_backbone_source(self.source, pretraining=self.pretraining, random_weights=self.random_weights)
        )


@dataclass(frozen=True, eq=False)
class ObjectLoader:
    """Holds an in-memory model (pickled with the Predictor); the key is a digest of its type and weights."""

    obj: Any
    key: str = field(default="")

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", f"object:{_object_digest(self.obj)}")

    def __call__(self) -> Any:
        return self.obj


def _object_digest(obj: Any) -> str:
    """A stable digest of a model: its type plus, for modules, every parameter and buffer."""
    digest = hashlib.sha1(f"{type(obj).__module__}.{type(obj).__qualname__}".encode())
    if isinstance(obj, torch.nn.Module):
        for name, tensor in obj.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # no copy
    else:
        digest.update(repr(getattr(obj, "__qualname__", id(obj))).encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Per-process model cache and device semaphores.

_CACHE: dict[tuple[str, str], Any] = {}
_CACHE_LOCK = threading.Lock()
_BUILD_LOCK = threading.Lock()
_DEVICE_GATES: dict[str, threading.Semaphore] = {}


def _device_gate(device: str) -> threading.Semaphore:
    """One semaphore per device in this process: one forward pass at a time per device."""
    with _CACHE_LOCK:
        if device not in _DEVICE_GATES:
            _DEVICE_GATES[device] = threading.Semaphore(1)
        return _DEVICE_GATES[device]


def clear_model_cache() -> None:
    """Forget every model built in this process (tests, or to free memory after a job)."""
    from geodino.workflows.batching import clear_batch_queues

    with _CACHE_LOCK:
        _CACHE.clear()
    clear_batch_queues()


def default_device() -> str:
    """ "cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


_KEEP: Any = object()  # "leave this option as it is" in with_options


def check_tta(tta: str | None) -> str | None:
    """A valid TTA name, or None for none ("none" is accepted too).

    Raises:
        ValueError: For an unknown name.
    """
    if tta is None or tta == "none":
        return None
    if tta not in TTA_TRANSFORMS:
        raise ValueError(f"tta must be one of {sorted(TTA_TRANSFORMS)} or None, got {tta!r}")
    return tta


class Predictor:
    """A model plus its metadata, callable on (B, C, H, W) float32 batches.

    Args:
        loader: Picklable zero-arg callable building the model (cached per process under ``loader.key``).
        info: The model's metadata.
        batch_size: Patches per forward pass; batches are padded to this size so every forward has one shape.
        device: torch device name, or None for "cuda" when available, else "cpu". In a worker pinned to one GPU
            (:mod:`geodino.workflows.devices`), "cuda" means that GPU.
        tta: Test-time augmentation: None, "flips" or "d4" (see :data:`TTA_TRANSFORMS`).
    """

    def __init__(
        self,
        loader: Callable[[], Any],
        info: PredictorInfo,
        *,
        batch_size: int = 8,
        device: str | None = None,
        tta: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.loader = loader
        self.info = info
        self.batch_size = int(batch_size)
        self.device = device or default_device()
        self.tta = check_tta(tta)

    # Metadata, flattened for the workflows.
    @property
    def in_bands(self) -> int:
        return self.info.in_bands

    @property
    def out_channels(self) -> int:
        return self.info.out_channels

    @property
    def factor(self) -> int:
        return self.info.factor

    @property
    def kind(self) -> Kind:
        return self.info.kind

    @property
    def class_names(self) -> tuple[str, ...] | None:
        return self.info.class_names

    @property
    def class_colours(self) -> tuple[tuple[int, int, int], ...] | None:
        return self.info.class_colours

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def model_key(self) -> str:
        """Stable identity of the model's weights (spec, backbone source, weight or file digest)."""
        return str(getattr(self.loader, "key", f"callable:{_object_digest(self.loader)}"))

    @property
    def key(self) -> str:
        """Stable identity of what this predictor computes: the model, plus its test-time augmentation."""
        return self.model_key + (f"+tta:{self.tta}" if self.tta else "")

    @property
    def normalization(self) -> Normalization:
        """Normalisation with the model's own scale (1.0 when it leaves the scale to the raster dtype)."""
        return self.normalization_for(None)

    def normalization_for(self, dtype: Any) -> Normalization:
        """Normalisation for rasters of ``dtype``: the model's scale, else ``default_scale(dtype)``.

        Args:
            dtype: numpy dtype of the raw raster values, or None (scale 1.0 if the model sets none).
        """
        scale = self.info.scale
        if scale is None:
            scale = 1.0 if dtype is None else float(default_scale(np.dtype(dtype)))
        mean = self.info.mean if self.info.mean is not None else (0.0,) * self.in_bands
        std = self.info.std if self.info.std is not None else (1.0,) * self.in_bands
        return Normalization(scale=float(scale), mean=tuple(mean), std=tuple(std))

    def with_options(
        self, *, batch_size: int | None = None, device: str | None = None, tta: str | None = _KEEP
    ) -> Predictor:
        """A copy with another batch size, device or test-time augmentation (same loader, same model cache).

        Args:
            batch_size: Patches per forward pass (None: unchanged).
            device: torch device (None: unchanged).
            tta: None (off), "flips" or "d4"; unchanged when not given.
        """
        return Predictor(
            self.loader,
            self.info,
            batch_size=batch_size or self.batch_size,
            device=device or self.device,
            tta=self.tta if tta is _KEEP else tta,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-friendly identity of the model and its metadata (for store fingerprints)."""
        info = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.info).items()}
        return {"key": self.key, "info": info, "tta": self.tta}

    def __getstate__(self) -> dict[str, Any]:
        return {
            "loader": self.loader,
            "info": self.info,
            "batch_size": self.batch_size,
            "device": self.device,
            "tta": self.tta,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("tta", None)
        self.__dict__.update(state)

    def model(self) -> Any:
        """The model, built once per process and device, in eval mode on ``self.device``."""
        device = resolve_device(self.device)
        cache_key = (self.model_key, device)
        with _CACHE_LOCK:
            model = _CACHE.get(cache_key)
        if model is not None:
            return model
        with _BUILD_LOCK:  # threads arriving together build the model once
            with _CACHE_LOCK:
                model = _CACHE.get(cache_key)
            if model is not None:
                return model
            built = self.loader()
            if isinstance(built, Predictor):
                built = built.loader()
            if isinstance(built, torch.nn.Module):
                built = built.to(device).eval()
            with _CACHE_LOCK:
                return _CACHE.setdefault(cache_key, built)

    def __call__(self, batch: np.ndarray | torch.Tensor) -> np.ndarray:
        """Predict a batch of patches.

        Args:
            batch: (B, C, H, W) float32, normalised; H and W multiples of ``factor`` and ``info.multiple`` (and
                H = W for ``tta="d4"``).

        Returns:
            (B, K, H / f, W / f) float32 numpy array, after the model's activation (and averaged over the
            test-time augmentations, if any).
        """
        # Always contiguous NCHW: kernels chosen for other layouts round differently.
        x = torch.as_tensor(batch, dtype=torch.float32).contiguous()
        if x.ndim != 4 or x.shape[1] != self.in_bands:
            raise ValueError(f"{self.name}: expected a (B, {self.in_bands}, H, W) batch, got {tuple(x.shape)}")
        b, _, h, w = x.shape
        if self.tta == "d4" and h != w:
            raise ValueError(f"{self.name}: tta='d4' rotates patches, which must be square; got {h}x{w}")
        pad = (-b) % self.batch_size
        if pad:
            x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
        outputs = [self._predict(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        # One batch (what the batch queue sends): its output as it is, not a copy (64 MB per batch at 512 px).
        out = (outputs[0] if len(outputs) == 1 else np.concatenate(outputs))[:b]
        expected = (b, self.out_channels, h // self.factor, w // self.factor)
        if out.shape != expected:
            raise ValueError(
                f"{self.name}: a {tuple(x.shape[1:])} patch batch gave output {out.shape}, expected {expected} "
                f"(out_channels={self.out_channels}, factor={self.factor})"
            )
        return out

    def _predict(self, x: torch.Tensor) -> np.ndarray:
        """One full batch, with test-time augmentation: the mean of T^-1(model(T(x))) over the transforms T.

        Each transform is one forward pass of the same batch shape; outputs (after the activation, so
        probabilities are averaged, not logits) are summed in float32 in the fixed order of the transforms, so a
        patch's result depends on the patch alone.
        """
        if self.tta is None:
            return self._forward(x)
        transforms = TTA_TRANSFORMS[self.tta]
        total: np.ndarray | None = None
        for k, flip in transforms:
            y = _undo_dihedral(self._forward(_dihedral(x, k, flip)), k, flip)
            total = y if total is None else np.add(total, y, out=total)
        assert total is not None
        return total / np.float32(len(transforms))

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        """One forward pass of a full batch on the device, under the device semaphore."""
        model = self.model()
        device = resolve_device(self.device)
        with _device_gate(device), torch.inference_mode():
            y = model(x.to(device))
            if isinstance(y, (tuple, list)):
                y = y[0]
            y = y.float()
            activation = self.info.output_activation
            if activation == "softmax":
                y = torch.softmax(y, dim=1)
            elif activation == "sigmoid":
                y = torch.sigmoid(y)
            return y.cpu().numpy()


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """(B, C, H, W) -> rotate by k x 90 degrees (from H towards W) after an optional left-right flip; contiguous."""
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)).contiguous()


def _undo_dihedral(y: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The inverse of :func:`_dihedral` on (B, K, h, w) outputs: rotate back by k x 90 degrees, then unflip."""
    y = np.rot90(y, -k, axes=(-2, -1))
    if flip:
        y = y[..., ::-1]
    return np.ascontiguousarray(y, dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Builders.


def resolve_spec(spec: str) -> Any:
    """Import ``"package.module:attr"`` and return the model it names.

    ``attr`` (dotted paths allowed) may be a model (``nn.Module`` or a callable taking a batch), a class or a
    zero-argument factory returning one, or a Predictor.

    Raises:
        ValueError: If the spec is malformed, the module cannot be imported or the attribute is missing.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model spec must look like 'package.module:attr', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model spec {spec!r}: cannot import module {module_name!r}: {err}") from err
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model spec {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if _is_factory(obj):
        obj = obj()
    return obj


def _is_factory(obj: Any) -> bool:
    """True for classes and callables that take no required argument (and are not models themselves)."""
    if isinstance(obj, (torch.nn.Module, Predictor)):
        return False
    if inspect.isclass(obj):
        return True
    if not callable(obj):
        return False
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    required = [
        p
        for p in signature.parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return not required


def from_callable(
    model: Callable[..., Any],
    info: PredictorInfo | dict[str, Any] | None = None,
    *,
    batch_size: int = 8,
    device: str | None = None,
    **fields: Any,
) -> Predictor:
    """A Predictor around an in-memory model or callable.

    Args:
        model: ``nn.Module`` or callable mapping a (B, C, H, W) tensor to (B, K, H / f, W / f).
        info: Metadata; defaults to ``model.geodino_info``; keyword ``fields`` override single fields.
        batch_size: Patches per forward pass.
        device: torch device, or None for automatic.
    """
    info = _info_of(model, info, fields, where=type(model).__name__)
    return Predictor(ObjectLoader(model), info, batch_size=batch_size, device=device)


def from_spec(spec: str, *, batch_size: int = 8, device: str | None = None, **fields: Any) -> Predictor:
    """A Predictor for ``"package.module:attr"``; the model is rebuilt from the spec in each worker process."""
    obj = resolve_spec(spec)
    if isinstance(obj, Predictor):
        return obj.with_options(batch_size=batch_size, device=device)
    if _is_backbone(obj):
        return from_backbone(obj, batch_size=batch_size, device=device)
    info = _info_of(obj, None, fields, where=f"model spec {spec!r}")
    predictor = Predictor(SpecLoader(spec), info, batch_size=batch_size, device=device)
    # Seed this process's cache with the instance just built, so the driver process does not build it twice.
    built = obj.to(predictor.device).eval() if isinstance(obj, torch.nn.Module) else obj
    with _CACHE_LOCK:
        _CACHE.setdefault((predictor.model_key, resolve_device(predictor.device)), built)
    return predictor


def _info_of(obj: Any, info: Any, fields: dict[str, Any], *, where: str) -> PredictorInfo:
    """Metadata from an explicit ``info``, else ``obj.geodino_info``, then keyword overrides."""
    source = info if info is not None else getattr(obj, "geodino_info", None)
    if source is None:
        if not fields:
            raise ValueError(
                f"{where} carries no metadata: attach `geodino_info = PredictorInfo(in_bands=..., "
                "out_channels=..., kind=...)` (or a dict of those fields) to it, or return a Predictor"
            )
        return PredictorInfo.coerce(fields)
    base = PredictorInfo.coerce(source)
    return replace(base, **fields) if fields else base


def _is_backbone(obj: Any) -> bool:
    """A geodino backbone: a module with ``.meta`` and ``get_intermediate_layers``."""
    return hasattr(obj, "meta") and hasattr(obj, "get_intermediate_layers")


class EmbeddingModel(torch.nn.Module):
    """A backbone as a dense model: patch tokens after the final norm, (B, D, H / p, W / p)."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone
        self.meta = backbone.meta
        params = inspect.signature(backbone.get_intermediate_layers).parameters
        self._kwargs = {"norm": True} if "norm" in params else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_intermediate_layers(x, n=1, reshape=True, **self._kwargs)[0]


def backbone_info(meta: Any) -> PredictorInfo:
    """Embedding metadata from a ``BackboneMeta``: f = patch size, mean/std and bands from the weights."""
    return meta.model_info()


def load_backbone_source(
    source: str, *, pretraining: str | None = None, random_weights: bool = False
) -> torch.nn.Module:
    """A backbone from a checkpoint path, or a hub architecture name with random weights (asked for explicitly).

    Args:
        source: Checkpoint path, or hub name: "test" (the built-in tiny test model, always random), or with
            ``random_weights`` an architecture such as "vits16" / "dinov3_vitl16".
        pretraining: "sat493m" or "lvd1689m": the weights' pretraining data (mean/std, GSD) where the checkpoint
            cannot tell (Meta's .pth files, except the SAT-493M ViT-L); see :func:`geodino.load_backbone`.
        random_weights: Allow a hub architecture without weights (its ``meta.weights`` is "random").

    Raises:
        ModelError: A hub architecture without ``random_weights``; ``random_weights`` with a checkpoint file; a
            name that is neither a file nor a hub name.
    """
    from geodino import hub

    return hub.load_named(source, pretraining=pretraining, random_weights=random_weights)


def from_backbone(
    backbone: torch.nn.Module | str,
    *,
    batch_size: int = 8,
    device: str | None = None,
    pretraining: str | None = None,
    random_weights: bool = False,
) -> Predictor:
    """An embedding Predictor: patch tokens after the final norm, f = patch size, mean/std from ``meta``.

    Args:
        backbone: A backbone module (with ``.meta``), a checkpoint path, or a hub name ("test"; others only with
            ``random_weights``).
        batch_size: Patches per forward pass.
        device: torch device, or None for automatic.
        pretraining: For checkpoint paths: "sat493m" or "lvd1689m" where the file cannot tell.
        random_weights: Allow a hub architecture name without weights (see :func:`load_backbone_source`).
    """
    if (pretraining is not None or random_weights) and not isinstance(backbone, str | Path):
        raise ValueError(
            "pretraining= / random_weights= apply to checkpoint paths and hub names, not to a loaded "
            "backbone (it already carries its .meta)"
        )
    if isinstance(backbone, str | Path):
        loader: Callable[[], Any] = BackboneLoader.of(str(backbone), pretraining, random_weights)
        module = loader()
    else:
        module = EmbeddingModel(backbone)
        loader = ObjectLoader(module)
    predictor = Predictor(loader, backbone_info(module.meta), batch_size=batch_size, device=device)
    with _CACHE_LOCK:
        _CACHE.setdefault(
            (predictor.model_key, resolve_device(predictor.device)), module.to(resolve_device(predictor.device)).eval()
        )
    return predictor


@dataclass(frozen=True)
class SavedModelLoader:
    """Builds a saved geodino model (``geodino.save_model``); the key is the file's SHA-256, not its path.

    A worker process checks that the file still has that digest, so every process maps the same model.
    """

    path: str
    sha256: str

    @property
    def key(self) -> str:
        return f"saved:{self.sha256[:32]}"

    def __call__(self) -> Any:
        from geodino.bundle import load_model

        model = load_model(self.path, sha256=self.sha256)
        return EmbeddingModel(model) if _is_backbone(model) else model


def load_predictor(
    path: str | Path, *, batch_size: int = 8, device: str | None = None, tta: str | None = None
) -> Predictor:
    """A Predictor for a saved geodino model: tile, bands, normalisation, classes or units come from the file.

    Args:
        path: A file written by ``geodino.save_model``.
        batch_size: Patches per forward pass.
        device: torch device, or None for automatic.
        tta: Test-time augmentation (None, "flips", "d4").

    Raises:
        geodino.bundle.ModelFileError: If the file is not a geodino model or does not fit (see ``load_model``).
    """
    from geodino.bundle import file_sha256, load_model

    path = Path(path).expanduser().absolute()
    loader = SavedModelLoader(str(path), file_sha256(path))
    model = load_model(path, sha256=loader.sha256)
    info = model.geodino_info
    module = EmbeddingModel(model) if _is_backbone(model) else model
    predictor = Predictor(loader, info, batch_size=batch_size, device=device, tta=tta)
    # Seed this process's cache with the model just built, so the driver process does not build it twice.
    with _CACHE_LOCK:
        _CACHE.setdefault(
            (predictor.model_key, resolve_device(predictor.device)), module.to(resolve_device(predictor.device)).eval()
        )
    return predictor


def from_bundle(path: str | Path, *, batch_size: int = 8, device: str | None = None) -> Predictor:
    """A Predictor from a saved geodino model (backbone + head); see :func:`load_predictor`."""
    return load_predictor(path, batch_size=batch_size, device=device)


def build_predictor(model: Any, *, batch_size: int | None = None, device: str | None = None) -> Predictor:
    """Any accepted model description as a Predictor.

    Args:
        model: A Predictor; a path to a saved geodino model; a ``"package.module:attr"`` spec; a backbone
            module; or an ``nn.Module``/callable carrying ``geodino_info``.
        batch_size: Patches per forward pass (None: a Predictor's own, else 8).
        device: torch device, or None for a Predictor's own, else automatic.
    """
    if isinstance(model, Predictor):
        return model.with_options(batch_size=batch_size, device=device)
    batch_size = batch_size or 8
    if isinstance(model, (str, Path)):
        text = str(model)
        if Path(text).is_file():
            return from_bundle(text, batch_size=batch_size, device=device)
        if ":" in text:
            return from_spec(text, batch_size=batch_size, device=device)
        raise ValueError(f"model {text!r} is neither an existing file nor a 'package.module:attr' spec")
    if _is_backbone(model):
        return from_backbone(model, batch_size=batch_size, device=device)
    if callable(model):
        return from_callable(model, batch_size=batch_size, device=device)
    raise TypeError(f"cannot use a {type(model).__name__} as a model")


def bands_by_name(predictor: Predictor, available: Sequence[str]) -> list[str] | None:
    """The model's input bands by name, when a raster names every one of them but holds others or another order.

    Names match case-insensitively and exactly (no band-token guessing), so a raster without band descriptions
    (named "band_1"...) is never reordered.

    Args:
        predictor: The model; its ``info.band_names`` say what it takes, in channel order.
        available: Names of every band of the raster, in file order.

    Returns:
        The model's band names to select, or None to keep the raster's bands as they are.
    """
    wanted = predictor.info.band_names
    if not wanted:
        return None
    lowered = [n.lower() for n in available]
    keys = [w.lower() for w in wanted]
    if keys == lowered or not all(k in lowered for k in keys) or len(set(lowered)) != len(lowered):
        return None
    return list(wanted)


def check_bands(predictor: Predictor, count: int, band_names: Sequence[str], where: str) -> None:
    """Raise early when a raster's band count does not match the model's.

    Raises:
        ValueError: Naming the input, the expected and the found band counts (and names when known).
    """
    if count == predictor.in_bands:
        return
    expected = f"{predictor.in_bands} bands"
    if predictor.info.band_names:
        expected += f" ({', '.join(predictor.info.band_names)})"
    found = f"{count} bands"
    if any(band_names):
        found += f" ({', '.join(str(n) for n in band_names)})"
    raise ValueError(
        f"{where}: model {predictor.name!r} expects {expected}, the input has {found}; select bands with --bands"
    )
