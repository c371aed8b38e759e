"""Backbone features computed once per (chip, transform) and reused: the dominant cost of training a head on a
frozen backbone is the backbone's forward pass, identical every epoch for the same chip under the same
augmentation.

`FeatureCache.features(images, keys)` returns the features of a padded batch as the head reads them (one
``(patches (B, D, h, w), cls (B, D))`` pair per layer, `geodino.heads.features.take_features`), computing only the
entries whose key it does not hold, in one backbone call. Keys are tuples of ints / short strings, e.g.
``("train", chip, transform)``.

Storage: in memory (host RAM) or on disk (one ``torch.save`` file per entry under `directory`, written atomically),
bounded by `max_bytes`. When the bound is reached, further entries are computed on the fly every time they are
needed (counted in ``stats()["uncached"]``), never dropped or approximated. Features are always rounded to the
cache's `dtype`, stored or not, so a result never depends on whether an entry was a hit.

A disk directory is tied to what its features mean by a fingerprint (backbone weights, layers, final norm,
dtype and the caller's `key`, e.g. a hash of the chips' pixels), written to ``manifest.json``: a directory with
another fingerprint has its entry files deleted before use, and a non-empty directory without a manifest is
refused (it is not a cache).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from geodino.heads.features import take_features

if TYPE_CHECKING:  # pragma: no cover
    from geodino.models.vit import DinoVisionTransformer

__all__ = ["FeatureCache", "array_fingerprint", "module_fingerprint", "remove_cache_directory"]

Features = list[tuple[Tensor, Tensor]]
Key = tuple[Hashable, ...]
MANIFEST = "manifest.json"
ENTRY_SUFFIX = ".feat.pt"
FORMAT = 1


def module_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes), hex."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def array_fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 over arrays' dtypes, shapes and bytes, hex (e.g. the pixels of a chip set)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}:{a.shape};".encode())
        h.update(a.view(np.uint8).data)
    return h.hexdigest()


def _nbytes(pairs: Features) -> int:
    return sum(p.numel() * p.element_size() + c.numel() * c.element_size() for p, c in pairs)


class FeatureCache:
    """Per-entry backbone features in memory or on disk, with a size bound.

    Args:
        backbone: the frozen ViT (it is run in eval mode without gradients).
        layers: block indices the head reads (``head.layers``).
        device: where the backbone runs; stored features live on the CPU (memory) or disk.
        max_bytes: bound on the stored features' bytes (None: unbounded).
        directory: store entries on disk here (None: in memory).
        dtype: storage dtype (float32 default: exact, deterministic; float16 halves the memory).
        norm: apply the backbone's final norm to the features (``head.use_backbone_norm``).
        key: identity of what the entry keys refer to (e.g. `array_fingerprint` of the chips), part of the disk
            fingerprint.
    """

    def __init__(
        self,
        backbone: DinoVisionTransformer,
        layers: Sequence[int],
        *,
        device: str | torch.device = "cpu",
        max_bytes: int | None = None,
        directory: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        norm: bool = True,
        key: str = "",
    ) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None, got {max_bytes}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"cache dtype must be float32, float16 or bfloat16, got {dtype}")
        self.backbone = backbone
        self.layers = [int(i) for i in layers]
        self.device = torch.device(device)
        self.max_bytes = max_bytes
        self.dtype = dtype
        self.norm = norm
        self.directory = Path(directory).expanduser() if directory is not None else None
        self._memory: dict[Key, Features] = {}
        self._files: dict[Key, tuple[Path, int]] = {}
        self._stats = {"hits": 0, "misses": 0, "uncached": 0, "forwards": 0, "bytes": 0}
        if self.directory is not None:
            self._open_directory(key)

    # ------------------------------------------------------------------------------------------------ disk
    def _fingerprint(self, key: str) -> str:
        parts = {
            "format": FORMAT,
            "backbone": module_fingerprint(self.backbone),
            "layers": self.layers,
            "norm": self.norm,
            "dtype": str(self.dtype),
            "key": key,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _open_directory(self, key: str) -> None:
        """Reuse the entries of a directory with the same fingerprint; clear ours otherwise; refuse foreign ones."""
        d = self.directory
        assert d is not None
        fingerprint = self._fingerprint(key)
        manifest = d / MANIFEST
        if d.exists() and not d.is_dir():
            raise ValueError(f"feature cache directory {d} is a file")
        d.mkdir(parents=True, exist_ok=True)
        if manifest.is_file():
            try:
                found = json.loads(manifest.read_text()).get("fingerprint")
            except (OSError, ValueError) as exc:
                raise ValueError(f"{manifest}: unreadable feature cache manifest ({exc})") from exc
            if found == fingerprint:
                for path in d.glob(f"*{ENTRY_SUFFIX}"):
                    self._files[self._key_of(path.name)] = (path, path.stat().st_size)
                self._stats["bytes"] = sum(size for _, size in self._files.values())
                return
            for path in d.glob(f"*{ENTRY_SUFFIX}"):  # features of another backbone / data: never reuse
                path.unlink()
        elif any(d.iterdir()):
            raise ValueError(
                f"feature cache directory {d} is not empty and has no {MANIFEST}: not a geodino feature cache; "
                f"give an empty or new directory"
            )
        manifest.write_text(json.dumps({"format": FORMAT, "fingerprint": fingerprint}) + "\n")

    @staticmethod
    def _name_of(key: Key) -> str:
        parts = [str(k) for k in key]
        if any(not p or not all(c.isalnum() or c in "_." for c in p) for p in parts):
            raise ValueError(f"feature cache keys are ints or short alphanumeric strings, got {key!r}")
        return "-".join(parts) + ENTRY_SUFFIX

    @staticmethod
    def _key_of(name: str) -> Key:
        return tuple(int(p) if p.lstrip("-").isdigit() else p for p in name[: -len(ENTRY_SUFFIX)].split("-"))

    # ------------------------------------------------------------------------------------------ store / load
    def _round(self, pairs: Features) -> Features:
        """Features in the storage dtype, on the CPU (what is stored, and what a miss returns too)."""
        return [(p.detach().to("cpu", self.dtype), c.detach().to("cpu", self.dtype)) for p, c in pairs]

    def _lookup(self, key: Key) -> Features | None:
        if key in self._memory:
            return self._memory[key]
        if key in self._files:
            data = torch.load(self._files[key][0], map_location="cpu", weights_only=True)
            return [(p, c) for p, c in data]
        return None

    def _store(self, key: Key, pairs: Features) -> None:
        size = _nbytes(pairs)
        if self.max_bytes is not None and self._stats["bytes"] + size > self.max_bytes:
            self._stats["uncached"] += 1
            return
        if self.directory is None:
            self._memory[key] = pairs
            self._stats["bytes"] += size
            return
        path = self.directory / self._name_of(key)
        tmp = path.with_suffix(".tmp")
        torch.save([(p.clone(), c.clone()) for p, c in pairs], tmp)
        os.replace(tmp, path)
        disk = path.stat().st_size
        self._files[key] = (path, disk)
        self._stats["bytes"] += disk

    # --------------------------------------------------------------------------------------------- public
    def compute(self, images: Tensor) -> Features:
        """Backbone features of a padded batch (B, C, H, W), no gradients, eval mode: one backbone call."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                out = take_features(self.backbone, images.to(self.device), self.layers, norm=self.norm)
        finally:
            self.backbone.train(was_training)
        self._stats["forwards"] += 1
        return out

    def features(self, images: Tensor, keys: Sequence[Key]) -> Features:
        """Features of a padded batch (B, C, H, W) whose entries are named by `keys` (one per image).

        Entries held are read back (hits); the others are computed in one backbone call on just those images
        (misses) and stored while the size bound allows.

        Returns:
            one (patches (B, D, h, w), cls (B, D)) pair per layer, float32 on `device`.
        """
        keys = [tuple(k) for k in keys]
        if len(keys) != len(images):
            raise ValueError(f"{len(keys)} keys for a batch of {len(images)} images")
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate keys in one batch: {keys}")
        entries: list[Features | None] = [self._lookup(k) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        self._stats["hits"] += len(keys) - len(missing)
        self._stats["misses"] += len(missing)
        if missing:
            computed = self._round(self.compute(images[missing]))
            for j, i in enumerate(missing):
                pairs = [(p[j].clone(), c[j].clone()) for p, c in computed]
                entries[i] = pairs
                self._store(keys[i], pairs)
        n_layers = len(self.layers)
        out = []
        for layer in range(n_layers):
            patches = torch.stack([e[layer][0] for e in entries])  # type: ignore[index]
            cls = torch.stack([e[layer][1] for e in entries])  # type: ignore[index]
            out.append((patches.to(self.device, torch.float32), cls.to(self.device, torch.float32)))
        return out

    def __contains__(self, key: Key) -> bool:
        key = tuple(key)
        return key in self._memory or key in self._files

    def __len__(self) -> int:
        return len(self._memory) + len(self._files)

    def stats(self) -> dict[str, Any]:
        """hits, misses (entries computed), uncached (misses not stored: size bound), forwards (backbone calls),
        bytes (stored), entries, max_bytes, where ("memory" or the directory)."""
        return {
            **self._stats,
            "entries": len(self),
            "max_bytes": self.max_bytes,
            "where": "memory" if self.directory is None else str(self.directory),
        }

    def clear(self) -> None:
        """Forget every entry (and delete this cache's entry files on disk)."""
        self._memory.clear()
        for path, _ in self._files.values():
            path.unlink(missing_ok=True)
        self._files.clear()
        self._stats["bytes"] = 0


def remove_cache_directory(directory: str | Path) -> None:
    """Delete a feature cache directory (only one with a manifest: never a foreign folder)."""
    d = Path(directory)
    if not (d / MANIFEST).is_file():
        raise ValueError(f"{d} has no {MANIFEST}: not a geodino feature cache, not deleted")
    shutil.rmtree(d)
