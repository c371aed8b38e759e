"""Resumable pretraining checkpoints: what they hold, how they are written and checked, which ones are kept.

A checkpoint of step N holds everything a run needs to continue as if it had never stopped:

- ``model``: the :class:`~geodino.training.meta_arch.SSLMetaArch` state, i.e. student and EMA teacher (backbone,
  DINO and iBOT heads), the Gram teacher, and the losses' buffers (the DINO and iBOT centres);
- ``optimizer``: AdamW's moments and step counts, parameters named by their fully qualified names
  (``torch.distributed.checkpoint.state_dict``), so a DDP- or FSDP2-wrapped model and a plain one read each other;
- ``iteration``: N; every schedule (lr, weight decay, momentum, teacher temperature, Gram weight, Gram-teacher
  refreshes, last-layer freezing) is a pure function of the iteration and the configuration, so this is their
  position (``steps``, the schedules' horizon, is saved too: a resume that changes it is warned about);
- ``ranks``: per rank, every random generator (Python ``random``, NumPy's global generator, torch CPU and, when
  initialised, the rank's CUDA device) and the window stream's position
  (:meth:`geodino.training.data.windows.RasterWindows.state_dict`; data-loader workers are seeded from it).

Two storage formats, one content:

- ``checkpoints/checkpoint_<N>.pth`` (one process, DDP): one ``torch.save`` file written by rank 0, and next to it
  ``checkpoint_<N>.pth.sha256`` (``sha256sum`` format);
- ``checkpoints/checkpoint_<N>.dcp/`` (FSDP2): a ``torch.distributed.checkpoint`` folder where every rank writes
  its own shards, ``extra.pt`` (iteration and the per-rank states) and ``MANIFEST.sha256`` listing every file.
  It loads on any world size, a single process included: DCP reshards on load.

Either way the run folder must be on a file system every rank sees (as multi-node ``torchrun`` runs need anyway):
every rank reads the checkpoint it resumes from.

Writing is atomic: the file (or folder) is written under a temporary name in the same folder, flushed to disk
(``fsync``), its checksum written, then renamed; a killed run leaves at worst a stale temporary, never a
half-written checkpoint under a final name. Loading checks the checksum first: a truncated or corrupt
checkpoint is reported with a warning naming it, and the previous one is used (:func:`resumable_checkpoint`).

:func:`export_backbone` writes the EMA teacher's backbone of any checkpoint (a milestone, say) as a file
``geodino.load_backbone`` reads, with the bands and normalisation the run trained with.

After each save the newest ``checkpoint.keep`` checkpoints are kept, plus every milestone (a step that is a
multiple of ``checkpoint.milestone_every``); older ones are deleted.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "KEEP_CHECKPOINTS",
    "CheckpointInvalidError",
    "ResumeState",
    "RunError",
    "capture_rng",
    "export_backbone",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "restore_rng",
    "resumable_checkpoint",
    "save_checkpoint",
    "uses_fsdp",
    "verify_checkpoint",
]

CHECKPOINT_FORMAT = "geodino-pretrain-checkpoint"
FORMAT_VERSION = 1
#: Default of ``checkpoint.keep``: the newest checkpoints kept.
KEEP_CHECKPOINTS = 2
MANIFEST = "MANIFEST.sha256"
EXTRA = "extra.pt"
_NAME = re.compile(r"^checkpoint_(\d+)\.(pth|dcp)$")
_TEMP = ".tmp"


class RunError(ValueError):
    """A run folder or checkpoint that cannot be used as asked."""


class CheckpointInvalidError(RunError):
    """A checkpoint that fails its checks: truncated, corrupt, incomplete, or not a pretraining checkpoint."""


# ---------------------------------------------------------------------------------------------- listing
def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint in ``run_dir/checkpoints`` (files and DCP folders), oldest first.

    Temporaries of an interrupted write are not listed.
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, key=lambda sp: (sp[0], sp[1].name))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest step in ``run_dir/checkpoints`` (unchecked), or None."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resumable_checkpoint(run_dir: str | Path, warn: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that passes :func:`verify_checkpoint`, or None.

    Every newer one that fails is reported through ``warn`` (default :func:`warnings.warn`), naming the file and
    what is wrong with it, before falling back to the previous one. Across ranks, rank 0 checks (one read of the
    files, one warning) and every rank gets its answer.
    """
    warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
    rank, world = _dist()
    found: Path | None = None
    if rank == 0:
        for _, path in reversed(list_checkpoints(run_dir)):
            try:
                verify_checkpoint(path)
            except CheckpointInvalidError as exc:
                warn(f"{exc}; falling back to the previous checkpoint")
                continue
            found = path
            break
    if world > 1:
        found = _gather(found)[0]
    return found


# ------------------------------------------------------------------------------------------- checksums
def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sums(path: Path) -> dict[str, str]:
    """``sha256sum`` lines (``<hex>  <name>``) -> {name: hex}."""
    sums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name:
            raise CheckpointInvalidError(f"{path}: not a sha256sum line: {line!r}")
        sums[name] = digest
    return sums


def _write_durable(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary name: write, fsync, rename."""
    tmp = path.with_name(path.name + _TEMP)
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_checkpoint(path: str | Path) -> None:
    """Check a checkpoint against its checksums.

    A ``.pth`` file must match its ``.pth.sha256``; a ``.dcp`` folder must hold ``MANIFEST.sha256``, the DCP
    ``.metadata`` and ``extra.pt``, each file matching its listed SHA-256.

    Raises:
        CheckpointInvalidError: naming the checkpoint and the first problem found.
    """
    path = Path(path)
    if path.suffix == ".dcp":
        manifest = path / MANIFEST
        if not manifest.is_file():
            raise CheckpointInvalidError(f"{path}: incomplete sharded checkpoint (no {MANIFEST})")
        sums = _read_sums(manifest)
        for needed in (".metadata", EXTRA):
            if needed not in sums:
                raise CheckpointInvalidError(f"{path}: {MANIFEST} does not list {needed}")
        for name, digest in sums.items():
            part = path / name
            if not part.is_file():
                raise CheckpointInvalidError(f"{path}: {name} is missing")
            if _sha256(part) != digest:
                raise CheckpointInvalidError(f"{part}: corrupt or truncated (SHA-256 differs from {MANIFEST})")
        return
    if not path.is_file():
        raise CheckpointInvalidError(f"{path}: no such checkpoint file")
    sidecar = _sidecar(path)
    if not sidecar.is_file():
        raise CheckpointInvalidError(f"{path}: no checksum file {sidecar.name} (not written by this geodino)")
    expected = _read_sums(sidecar).get(path.name)
    if expected is None:
        raise CheckpointInvalidError(f"{sidecar}: lists no checksum for {path.name}")
    if _sha256(path) != expected:
        raise CheckpointInvalidError(
            f"{path}: corrupt or truncated ({path.stat().st_size} bytes; SHA-256 differs from {sidecar.name})"
        )


# ------------------------------------------------------------------------------------------------ RNG
def capture_rng() -> dict[str, Any]:
    """Every random generator of this process: Python, NumPy's global one, torch CPU, and torch CUDA of the
    current device when CUDA is initialised (each rank drives one device; other devices are left untouched)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the generators :func:`capture_rng` saved (CUDA into the current device, when saved and present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ------------------------------------------------------------------------------------------ distributed
def _dist() -> tuple[int, int]:
    from geodino.training.distributed import get_rank, get_world_size

    return get_rank(), get_world_size()


def _barrier() -> None:
    from geodino.training.distributed import is_enabled

    if is_enabled():
        torch.distributed.barrier()


def _gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a picklable object), rank-ordered, on every rank."""
    from geodino.training.distributed import get_world_size, is_enabled

    if not is_enabled():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def uses_fsdp(model: torch.nn.Module) -> bool:
    """Whether any submodule of ``model`` is FSDP2-sharded (``fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


# --------------------------------------------------------------------------------------------- saving
def _prefix(iteration: int) -> str:
    return f"checkpoint_{iteration:08d}"


def save_checkpoint(
    run_dir: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    *,
    rank_state: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    keep: int = KEEP_CHECKPOINTS,
    milestone_every: int = 0,
    sharded: bool | None = None,
) -> Path:
    """Write the checkpoint of ``iteration`` atomically, then prune old ones. Called by EVERY rank.

    Args:
        run_dir: the run folder (``checkpoints/`` is created in it).
        model: the SSLMetaArch (plain, DDP or FSDP2-sharded parts).
        optimizer: its optimiser.
        iteration: optimiser steps done.
        rank_state: this rank's extra state (e.g. ``{"data": windows.state_dict()}``); its RNG is added here.
        meta: run-wide values saved as they are (e.g. ``{"steps": cfg.train.steps}``).
        keep: newest checkpoints kept.
        milestone_every: steps that are a multiple of this are kept too (0: none).
        sharded: a DCP folder (True) or one file (False); None: a folder when the model is FSDP2-sharded.

    Returns:
        The checkpoint's path (on every rank).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    rank, world = _dist()
    sharded = uses_fsdp(model) if sharded is None else sharded
    folder = Path(run_dir) / "checkpoints"
    final = folder / (_prefix(iteration) + (".dcp" if sharded else ".pth"))
    tmp = final.with_name(final.name + _TEMP)
    ranks = _gather({**(rank_state or {}), "rng": capture_rng()})
    extra = {
        "format": CHECKPOINT_FORMAT,
        "version": FORMAT_VERSION,
        "iteration": int(iteration),
        "world_size": world,
        "ranks": ranks,
        "meta": dict(meta or {}),
    }
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        _remove(tmp)
    if sharded:
        import torch.distributed.checkpoint as dcp

        msd, osd = get_state_dict(model, optimizer)  # each rank's own shards
        _barrier()  # the temporary folder is clean before anyone writes into it
        dcp.save({"model": msd, "optimizer": osd}, storage_writer=dcp.FileSystemWriter(str(tmp), sync_files=True))
        # Each rank hashes the shard files it wrote (DCP names them "__<rank>_<n>.distcp"), in parallel.
        own = {p.name: _sha256(p) for p in sorted(tmp.glob(f"__{rank}_*.distcp"))}
        sums = {name: digest for part in _gather(own) for name, digest in part.items()}
        if rank == 0:
            torch.save(extra, tmp / EXTRA)
            _fsync_file(tmp / EXTRA)
            for p in sorted(tmp.iterdir()):  # .metadata, extra.pt and any file DCP named otherwise
                if p.is_file() and p.name not in sums:
                    sums[p.name] = _sha256(p)
            _write_durable(tmp / MANIFEST, "".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
            _remove(final)
            os.replace(tmp, final)
            _fsync_dir(folder)
    else:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)  # gathered on rank 0 (FSDP), on CPU
        msd, osd = get_state_dict(model, optimizer, options=options)
        if rank == 0:
            torch.save({**extra, "model": msd, "optimizer": osd}, tmp)
            _fsync_file(tmp)
            _write_durable(_sidecar(final), f"{_sha256(tmp)}  {final.name}\n")
            os.replace(tmp, final)
            _fsync_dir(folder)
    if rank == 0:
        prune_checkpoints(run_dir, keep, milestone_every)
    _barrier()
    return final


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def prune_checkpoints(run_dir: str | Path, keep: int = KEEP_CHECKPOINTS, milestone_every: int = 0) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints and the milestones; also stale temporaries.

    Returns:
        The checkpoints deleted.
    """
    if keep < 1:
        raise ValueError(f"checkpoint.keep must be >= 1, got {keep}")
    found = list_checkpoints(run_dir)
    newest = {p for _, p in found[-keep:]}
    deleted = []
    for step, path in found:
        if path in newest or (milestone_every > 0 and step % milestone_every == 0):
            continue
        _remove(path)
        _remove(_sidecar(path))
        deleted.append(path)
    folder = Path(run_dir) / "checkpoints"
    for stale in folder.glob(f"checkpoint_*{_TEMP}"):
        _remove(stale)
    for orphan in folder.glob("checkpoint_*.pth.sha256"):  # a write killed between checksum and rename
        if not orphan.with_suffix("").exists():
            orphan.unlink()
    return deleted


# -------------------------------------------------------------------------------------------- loading
@dataclass
class ResumeState:
    """What a checkpoint restores besides model and optimiser (the loop applies it)."""

    path: Path
    iteration: int
    world_size: int
    ranks: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def for_rank(self, rank: int) -> dict[str, Any]:
        """Rank ``rank``'s saved state; rank 0's when the checkpoint had fewer ranks."""
        return self.ranks[rank] if rank < len(self.ranks) else self.ranks[0]


def load_checkpoint(
    path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, verify: bool = True
) -> ResumeState:
    """Check, then restore model and optimiser from a checkpoint file or DCP folder. Called by EVERY rank.

    The model may be wrapped differently from the one saved (plain, DDP, FSDP2 on any number of ranks).

    Args:
        verify: check the checksums first (False when :func:`resumable_checkpoint` just did).

    Raises:
        CheckpointInvalidError: the checksum does not match, or it is not a pretraining checkpoint.
        RunError: it does not fit this model (another architecture or recipe).
    """
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = Path(path)
    if verify:
        verify_checkpoint(path)
    try:
        if path.suffix == ".dcp":
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            extra = torch.load(path / EXTRA, map_location="cpu", weights_only=False)
            msd, osd = get_state_dict(model, optimizer)  # the layout to fill: this process's shards
            state = {"model": msd, "optimizer": osd}
            dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)))
            msd, osd = state["model"], state["optimizer"]
        else:
            extra = torch.load(path, map_location="cpu", weights_only=False)
            msd, osd = extra.pop("model", None), extra.pop("optimizer", None)
        if extra.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointInvalidError(f"{path}: not a geodino pretraining checkpoint")
        if msd is None or osd is None:
            raise CheckpointInvalidError(f"{path}: holds no model or optimiser state")
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd)
    except CheckpointInvalidError:
        raise
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot resume from this checkpoint: {_first_line(exc)}") from exc
    return ResumeState(path, int(extra["iteration"]), int(extra["world_size"]), list(extra["ranks"]), extra["meta"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_same_run(state: ResumeState, steps: int, warn: Callable[[str], None]) -> None:
    """Warn when the resumed run changes the schedules' horizon (``train.steps``)."""
    saved = state.meta.get("steps")
    if saved is not None and int(saved) != int(steps):
        warn(
            f"{state.path}: saved with train.steps={saved}, resumed with train.steps={steps}: the lr, weight-decay "
            "and momentum schedules stretch to the new length from here on (not the run an uninterrupted "
            f"{saved}-step run would have been)"
        )


# --------------------------------------------------------------------------------------------- export
def export_backbone(checkpoint: str | Path, out: str | Path, cfg: Any = None) -> Path:
    """Write the EMA teacher backbone of a checkpoint (file or DCP folder) for ``geodino.load_backbone``.

    Args:
        checkpoint: a checkpoint of a run folder (``<run>/checkpoints/checkpoint_<N>.pth`` or ``.dcp``).
        out: the backbone file to write.
        cfg: the run's configuration; default ``<run>/config.yaml``.

    Returns:
        ``out``; the backbone carries the run's bands and normalisation when the checkpoint recorded them.

    Raises:
        CheckpointInvalidError / RunError: as :func:`load_checkpoint`.
    """
    from geodino.models.meta import BackboneMeta
    from geodino.training.config import load_config
    from geodino.training.meta_arch import SSLMetaArch

    checkpoint = Path(checkpoint)
    if cfg is None:
        saved = checkpoint.parent.parent / "config.yaml"
        if not saved.is_file():
            raise RunError(f"{checkpoint}: no config.yaml in its run folder {checkpoint.parent.parent}")
        cfg = load_config(saved)
    model = SSLMetaArch(cfg)
    state = load_checkpoint(checkpoint, model, model.make_optimizer())
    meta = state.meta.get("backbone_meta")
    if meta is not None:
        model.teacher["backbone"].meta = BackboneMeta.from_dict(meta)
    return model.export_teacher_backbone(out)
