"""The run manifest: what made an output store, stored in the store (root attribute ``geodino_manifest``).

A manifest holds the run's :class:`~geodino.workflows.options.MapOptions` (every field), the values the run resolved
from the model (tile, stride, chunk, normalisation), the inputs (resolved paths, sizes, SHA-256 of their bytes), the
model's identity (a digest of its weights, its name, pretraining, whether its weights are random), the geodino
version, and the run's start and end times. The chunks done are read from the store's completion flags
(``chunk_done``), which the tasks set; the manifest is written only by the driver, at the start and at the end.

Identity is content, not names: an input or a weights file is identified by the SHA-256 of its bytes (the file
and the files GDAL reads with it: sidecars, a VRT's sources), computed once per run; an in-memory model by a
digest of its state dict. ``--resume`` compares the result-changing part (:func:`identity`) field by field and names
the fields that differ, so a resumed store never mixes chunks of two models or two inputs, and the same file
spelled another way (relative / absolute path, another link) resumes.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_ATTR = "geodino_manifest"
MANIFEST_VERSION = 1
_BUFFER = 4 * 2**20  # read size for hashing; hashlib releases the GIL on large updates


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex). Costs one sequential read of the file (about 1-2 GB/s here)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BUFFER):
            digest.update(block)
    return digest.hexdigest()


def _dataset_files(path: str) -> list[str]:
    """The files GDAL reads for a dataset: the file itself, then sidecars and (for a VRT) its sources."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            files = [os.path.realpath(f) for f in ds.files if os.path.isfile(f)]
    except Exception:  # identity is best effort beyond the file itself; the reader reports unreadable files
        files = []
    main = os.path.realpath(path)
    return [main, *[f for f in files if f != main]]


def input_record(path: str) -> dict[str, Any]:
    """Identity of one input: resolved path, size and SHA-256 of its bytes (with its sidecars / sources).

    A name that is not a local file (``/vsicurl/...``, ``s3://...``) is identified by its name only
    (``sha256: None``): its bytes are not read twice.
    """
    if not os.path.isfile(path):
        return {"path": path, "size": None, "sha256": None}
    files = _dataset_files(path)
    if len(files) == 1:
        digest = file_sha256(files[0])
    else:  # digest of the member digests, in GDAL's order
        digest = hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()
    record: dict[str, Any] = {"path": files[0], "size": os.path.getsize(files[0]), "sha256": digest}
    if len(files) > 1:
        record["files"] = files[1:]
    return record


def input_records(paths: Sequence[str]) -> list[dict[str, Any]]:
    """:func:`input_record` of every input, hashed by up to 8 threads at once (hashlib releases the GIL)."""
    if len(paths) == 1:
        return [input_record(paths[0])]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
        return list(pool.map(input_record, paths))


def model_record(predictor: Any) -> dict[str, Any]:
    """Identity of the model: digest of its weights, name, pretraining, random or not, and its metadata.

    The digest is the SHA-256 of the weights file when the model was loaded from one (a backbone checkpoint, a
    saved model), else a digest of the built model's state dict (``model_factories:...`` specs, in-memory
    modules, hub architectures with random weights). Builds the model in this process if it is not built yet.
    """
    from geodino.workflows.predictor import _object_digest

    model = predictor.model()
    meta = getattr(model, "meta", None)
    loader = predictor.loader
    source = next((getattr(loader, a) for a in ("source", "path", "spec") if getattr(loader, a, None)), None)
    source = str(source) if source is not None else None
    if source is not None and os.path.isfile(source):
        source = os.path.realpath(source)
        digest = f"sha256:{file_sha256(source)}"
    else:
        digest = f"state:{_object_digest(model)}"
    pretraining = str(meta.weights) if meta is not None and getattr(meta, "weights", None) else None
    return {
        "name": predictor.name,
        "kind": predictor.kind,
        "source": source,
        "digest": digest,
        "pretraining": pretraining,
        "random_weights": pretraining == "random",
        "info": predictor.describe()["info"],
        "tta": getattr(predictor, "tta", None),
    }


def build_manifest(
    *,
    options: Any,
    inputs: Sequence[dict[str, Any]],
    model: dict[str, Any],
    raster: dict[str, Any],
    resolved: dict[str, Any],
    chunks_total: int,
) -> dict[str, Any]:
    """A new run's manifest (status "running"; :func:`finish` records the end)."""
    from geodino import __version__

    started = now()
    return {
        "manifest_version": MANIFEST_VERSION,
        "geodino_version": __version__,
        "options": options.to_dict(),
        "resolved": resolved,
        "inputs": list(inputs),
        "raster": raster,
        "model": model,
        "run": {"started": started, "finished": None, "status": "running", "chunks_total": int(chunks_total)},
        "history": [],
    }


#: Options whose default comes from the model: compared by the value the run resolved them to ("resolved"), so a
#: resume that leaves out ``--tile 224`` where 224 is the model's tile is the same run.
RESOLVED_OPTIONS = ("tile", "overlap", "chunk", "outputs", "storage_dtype")


def identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest a resumed run must match: what changes the bytes written."""
    from geodino.workflows.options import MapOptions

    options = manifest.get("options", {})
    compared = [k for k in MapOptions.field_names("result") if k not in RESOLVED_OPTIONS]
    return {
        "options": {k: options.get(k) for k in compared},
        "resolved": manifest.get("resolved"),
        "inputs": [
            {"sha256": i.get("sha256"), "size": i.get("size")} | ({} if i.get("sha256") else {"path": i.get("path")})
            for i in manifest.get("inputs", [])
        ],
        "raster": manifest.get("raster"),
        "model": {k: manifest.get("model", {}).get(k) for k in ("digest", "info", "random_weights", "tta")},
    }


def _flatten(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(value, list) and value and any(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{prefix}[{i}]")
        yield f"{prefix}#count", len(value)
    else:
        yield prefix, value


def _short(value: Any, limit: int = 48) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Short descriptions of the fields where two identities differ, e.g. ``options.chunk: [96, 96] -> [144, 144]``.

    Long values (WKT, digests) are not printed whole: ``raster.crs differs``, ``model.digest differs``.
    """
    a, b = dict(_flatten(stored, "")), dict(_flatten(current, ""))
    out = []
    for key in [*a, *(k for k in b if k not in a)]:
        if a.get(key) == b.get(key):
            continue
        va, vb = a.get(key), b.get(key)
        if len(repr(va)) > 48 or len(repr(vb)) > 48:
            out.append(f"{key} differs")
        else:
            out.append(f"{key}: {_short(va)} -> {_short(vb)}")
    return out


def describe_inputs(diffs: Sequence[str], manifest: dict[str, Any]) -> list[str]:
    """Name the files behind ``inputs[i]`` entries of :func:`differences` (``inputs[0] (m.tif): ...``)."""
    inputs = manifest.get("inputs", [])
    out = []
    for d in diffs:
        if d.startswith("inputs[") and "]" in d:
            i = int(d[7 : d.index("]")])
            if i < len(inputs):
                d = d.replace(f"inputs[{i}]", f"inputs[{i}] ({os.path.basename(str(inputs[i].get('path')))})", 1)
        out.append(d)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Reading a store's manifest and completeness.


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest of a geodino output store, or None (not a geodino store, or made before manifests)."""
    import zarr

    return zarr.open_group(str(path), mode="r").attrs.get(MANIFEST_ATTR)


def completeness(path: str | Path) -> tuple[int, int]:
    """``(done, total)`` chunks of a store, from its completion flags."""
    import zarr

    from geodino.workflows.sink import DONE_VAR

    flags = np.asarray(zarr.open_array(str(path), path=DONE_VAR, mode="r")[...])
    return int((flags == 1).sum()), int(flags.size)


def summary(path: str | Path) -> list[str]:
    """Lines for ``geodino info OUT.zarr``: completeness, model, inputs, options and run times."""
    manifest = read_manifest(path)
    done, total = completeness(path)
    state = "complete" if done == total else f"INCOMPLETE: {total - done} of {total} chunks missing"
    lines = [f"{path}: {done} of {total} chunks done ({state})"]
    if manifest is None:
        return [*lines, "no run manifest (written by an older geodino)"]
    model, run = manifest["model"], manifest["run"]
    pretraining = model.get("pretraining")
    weights = (
        "RANDOM weights"
        if model.get("random_weights")
        else (f"pretraining {pretraining}" if pretraining else "weights as given")
    )
    lines.append(f"model: {model['name']} ({model['kind']}, {weights}), {model['digest'][:23]}")
    if model.get("source"):
        lines.append(f"model source: {model['source']}")
    for item in manifest["inputs"]:
        digest = f"sha256 {item['sha256'][:16]}" if item.get("sha256") else "not hashed"
        size = f"{item['size']:,} bytes, " if item.get("size") is not None else ""
        lines.append(f"input: {item['path']} ({size}{digest})")
    resolved = ", ".join(f"{k} {v}" for k, v in manifest.get("resolved", {}).items() if k != "normalization")
    lines.append(f"resolved: {resolved}")
    options = {k: v for k, v in manifest["options"].items() if v not in (None, False)}
    lines.append("options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    for past in manifest.get("history", []):
        lines.append(f"run: {past['started']} -> {past.get('finished')} ({past.get('status')})")
    lines.append(
        f"run: {run['started']} -> {run.get('finished')} ({run.get('status')}), geodino {manifest['geodino_version']}"
    )
    return lines
