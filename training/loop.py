"""The pretraining loop: data, optimiser, schedules, logging, diagnostics, checkpoints, the exported backbone.

A run folder holds:

- ``config.yaml``: the resolved configuration, written before anything else runs;
- ``metrics.csv``: a header row, then one row per logged step (:data:`COLUMNS`; diagnostic columns are empty
  except at diagnostic steps);
- ``checkpoints/checkpoint_<step>.pth`` (or a sharded ``.dcp`` folder under FSDP2): everything a run resumes from
  exactly (model, optimiser, iteration, every RNG, the window stream's position; see
  :mod:`geodino.training.checkpoint`), the newest ``checkpoint.keep`` plus milestones kept;
- ``backbone.pth``: the EMA teacher's backbone, which ``geodino.load_backbone`` loads (distillation: the first
  student's EMA backbone, the others beside it as ``backbone_<name>.pth``).

TensorBoard event files are written too when the ``tensorboard`` package is importable.

Across ranks (a ``torch.distributed`` process group initialised by the caller, e.g. under ``torchrun``): every
rank reads its own shard of the window stream, gradients are averaged over the ranks after each backward (one flat
all-reduce), and only rank 0 writes the run folder.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from geodino.training.checkpoint import (
    KEEP_CHECKPOINTS,
    RunError,
    check_same_run,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    resumable_checkpoint,
    save_checkpoint,
)
from geodino.training.data.windows import TrainingDataError

if TYPE_CHECKING:  # pragma: no cover
    from geodino.training.config import PretrainConfig

__all__ = [
    "COLUMNS",
    "KEEP_CHECKPOINTS",
    "TIMING_COLUMNS",
    "DataPipeline",
    "RunError",
    "build_data",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]

#: metrics.csv columns that measure time (images/s, MFU, data wait): they differ between otherwise identical runs.
TIMING_COLUMNS = ("images_per_s", "mfu", "data_wait_s")

#: metrics.csv columns, in order.
COLUMNS = (
    "step",
    "loss",
    "dino_global",
    "dino_local",
    "ibot",
    "koleo",
    "gram",
    "lr",
    "wd",
    "momentum",
    "teacher_temp",
    "gram_weight",
    "images_per_s",
    "mfu",
    "data_wait_s",
    "patch_sim_mean",
    "patch_sim_std",
    "patch_sim_q05",
    "patch_sim_q25",
    "patch_sim_q50",
    "patch_sim_q75",
    "patch_sim_q95",
    "gram_distance",
    "probe_miou",
)
LOSS_COLUMNS = ("dino_global", "dino_local", "ibot", "koleo", "gram")


# ------------------------------------------------------------------------------------------------------- data
@dataclass
class DataPipeline:
    """The training data of a run: the window stream, its loader, and the normalisation chosen."""

    windows: Any  # RasterWindows
    loader: torch.utils.data.DataLoader
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: str  # "config", "meta" or "stats"


def build_data(
    cfg: PretrainConfig, backbone: Any, *, epoch: int = 0, rank: int = 0, world_size: int = 1
) -> DataPipeline:
    """Open the rasters of ``cfg.data`` and build the multi-crop loader for ``backbone`` (its bands and metadata).

    Raises:
        TrainingDataError: unreadable paths, wrong band counts, windows larger than every raster, too much nodata.
    """
    from geodino.training.data import MultiCrop, MultiCropCollate, RasterWindows, normalization_stats, open_sources
    from geodino.training.data.multicrop import MixedSizeCollate
    from geodino.training.data.windows import IndexedCollate, seed_worker

    d, c = cfg.data, cfg.crops
    largest = max(cfg.global_crop_sizes)
    window = d.window_size or largest
    if window < largest:
        raise TrainingDataError(f"data.window_size={window} is smaller than the largest global crop side {largest}")
    sources = open_sources(d.paths, bands=d.bands, in_chans=backbone.in_chans, mosaic=d.mosaic, window_size=window)
    if d.mean is not None or d.std is not None:
        if d.mean is None or d.std is None or not len(d.mean) == len(d.std) == backbone.in_chans:
            raise TrainingDataError(
                f"data.mean and data.std must both be given with {backbone.in_chans} values (one per band)"
            )
        mean, std, where = tuple(d.mean), tuple(d.std), "config"
    else:
        mean, std, where = normalization_stats(sources, getattr(backbone, "meta", None))
    gram_size = cfg.gram_teacher_size if cfg.gram.enabled and cfg.gram.high_res else None
    crops = MultiCrop(
        mean=mean,
        std=std,
        global_size=c.global_size,
        local_size=c.local_size,
        n_global=c.n_global,
        n_local=c.n_local,
        global_scale=tuple(c.global_scale),
        local_scale=tuple(c.local_scale),
        gram_size=gram_size,
        defer=mixed_sizes(cfg),
    )
    windows = RasterWindows(
        sources,
        window,
        max_nodata_fraction=d.window_nodata_max,
        seed=cfg.train.seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        transform=crops,
    )
    windows.check()
    m = cfg.masking
    batcher = functools.partial(
        MultiCropCollate,
        patch_size=cfg.student.patch_size,
        mask_probability=m.probability,
        mask_ratio=tuple(m.ratio_min_max),
        min_block=m.min_num_patches,
        aspect=tuple(m.aspect_ratio),
    )
    if crops.defer:  # one global / local / Gram-teacher size drawn per batch
        collate = MixedSizeCollate(
            crops, cfg.global_crop_sizes, cfg.local_crop_sizes, cfg.gram_teacher_sizes if gram_size else None, batcher
        )
    else:
        collate = batcher(global_size=c.global_size)
    workers, par = cfg.train.num_workers, cfg.parallel
    windows.num_workers = max(1, workers)
    pin = par.pin_memory if par.pin_memory is not None else _device(cfg.train.device).type == "cuda"
    loader = torch.utils.data.DataLoader(
        windows,
        batch_size=cfg.train.batch_size,
        num_workers=workers,
        collate_fn=IndexedCollate(collate),  # batches say how far the stream went (resumable position)
        persistent_workers=workers > 0,
        prefetch_factor=par.prefetch_factor if workers > 0 else None,
        pin_memory=pin,
        worker_init_fn=seed_worker,
        # Its own generator: starting the loader draws nothing from torch's global one (restored on resume).
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    return DataPipeline(windows, loader, mean, std, where)


def mixed_sizes(cfg: PretrainConfig) -> bool:
    """Whether each batch draws its crop sides from ``crops.global_sizes`` / ``crops.local_sizes``."""
    return cfg.crops.global_sizes is not None or cfg.crops.local_sizes is not None


# ---------------------------------------------------------------------------------------------------- metrics
class MetricsLog:
    """metrics.csv (and TensorBoard when importable); on resume, rows past the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        rows: list[dict[str, str]] = []
        if resume_step is not None and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: r.get(k, "") for k in COLUMNS} for r in rows)
        self._tb = None
        with contextlib.suppress(ImportError):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, row: dict[str, float]) -> None:
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        if self._tb is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self._tb.add_scalar(key, value, int(row["step"]))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.6g}"


def loss_columns(parts: dict[str, Any]) -> dict[str, float]:
    """The named loss parts of ``forward_backward`` as metrics columns (``dino/global`` -> ``dino_global``)."""
    out: dict[str, float] = {}
    for key, value in parts.items():
        name = key.replace("/", "_").removesuffix("_loss")
        if name in LOSS_COLUMNS:
            out[name] = float(value)
    return out


# ------------------------------------------------------------------------------------------------------- loop
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batches(loader: torch.utils.data.DataLoader) -> Iterator[dict[str, Any]]:
    while True:  # the window stream is endless; restart the iterator should a loader ever stop
        yield from loader


def average_gradients(module: torch.nn.Module) -> None:
    """Mean of every parameter's gradient over the ranks (one flat all-reduce); nothing in a single process."""
    from geodino.training.distributed import all_reduce, get_world_size

    if get_world_size() == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = all_reduce(torch.cat([g.reshape(-1) for g in grads]), op="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _barrier() -> None:
    from geodino.training.distributed import is_enabled

    if is_enabled():
        torch.distributed.barrier()


def train_step(
    model: Any, optimizer: torch.optim.Optimizer, schedules: Any, batch: dict[str, Any], iteration: int
) -> tuple[torch.Tensor, dict[str, Any], dict[str, float]]:
    """One optimisation step: schedules, forward and backward, gradient clip, AdamW step, EMA teacher update.

    Returns:
        (total loss, its named parts, the scheduled values used).
    """
    from geodino.training.parallel import syncs_gradients
    from geodino.training.param_groups import apply_schedules, last_layer_frozen

    values = schedules.at(iteration)
    apply_schedules(
        optimizer,
        values["lr"],
        values["weight_decay"],
        freeze_last_layer=last_layer_frozen(iteration, model.cfg.optim.freeze_last_layer_iters),
    )
    optimizer.zero_grad(set_to_none=True)
    total, parts = model.forward_backward(batch, iteration=iteration, teacher_temp=values["teacher_temp"])
    if not syncs_gradients(model):  # DDP / FSDP2 averaged them during the backward
        average_gradients(model.student)
    if not math.isfinite(float(total)):
        raise RunError(f"the loss became {float(total)} at step {iteration}; lower optim.lr or check the data")
    model.clip_gradients()
    optimizer.step()
    model.update_teacher(values["momentum"])
    return total, parts, values


@dataclass
class RunResult:
    """What :func:`train` did."""

    run_dir: Path
    start_iteration: int
    end_iteration: int
    backbone: Path
    model: Any = None  # the SSLMetaArch, trained


def prepare_run(run_dir: Path, resume: bool) -> Path | None:
    """Check the run folder; returns the checkpoint to resume from (None for a fresh run).

    On resume that is the newest checkpoint that passes its checksum; newer ones that fail are warned about.
    """
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise RunError(f"{run_dir}: no config.yaml there, so no run to resume")
        if latest_checkpoint(run_dir) is None:
            raise RunError(f"{run_dir}: no checkpoint in {run_dir / 'checkpoints'} to resume from")
        ckpt = resumable_checkpoint(run_dir)
        if ckpt is None:
            raise RunError(f"{run_dir}: every checkpoint in {run_dir / 'checkpoints'} is corrupt or incomplete")
        return ckpt
    if (run_dir / "metrics.csv").exists() or latest_checkpoint(run_dir) is not None:
        raise RunError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    return None


def train(cfg: PretrainConfig, run_dir: str | Path, *, resume: bool = False, log: Any = print) -> RunResult:
    """Run (or continue) a pretraining run in ``run_dir``.

    Args:
        cfg: the resolved configuration (see :func:`geodino.training.config.load_config`).
        run_dir: the run folder (created).
        resume: continue from the folder's latest checkpoint (its config.yaml is rewritten with ``cfg``).
        log: progress printer (one line per logged step).

    Returns:
        :class:`RunResult`.
    """
    from geodino.models.checkpoint import save_backbone
    from geodino.training.config import save_config
    from geodino.training.diagnostics import probe_images, run_diagnostics
    from geodino.training.distributed import get_rank, get_world_size
    from geodino.training.parallel import is_sharded, plain_backbone, wrap_model
    from geodino.training.schedules import build_schedules
    from geodino.training.stages import build_model
    from geodino.training.throughput import Throughput

    run_dir = Path(run_dir)
    ckpt = prepare_run(run_dir, resume)
    rank, world = get_rank(), get_world_size()
    lead = rank == 0  # only rank 0 writes the run folder
    _barrier()  # every rank has checked the folder before rank 0 writes into it
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")  # before anything runs

    t = cfg.train
    torch.manual_seed(t.seed)
    device = _device(t.device)
    model = build_model(cfg)  # SSLMetaArch, continued from init.from_run, or DistillMetaArch
    model.to(device)
    wrap_model(model, cfg.parallel, device)  # before the optimiser: FSDP2 replaces the parameters
    optimizer = model.make_optimizer()
    # prepare_run checked the checksums (resumable_checkpoint)
    resumed = load_checkpoint(ckpt, model, optimizer, verify=False) if ckpt is not None else None
    start = resumed.iteration if resumed is not None else 0
    if start >= t.steps:
        raise RunError(f"{run_dir}: the run already reached step {start} of train.steps={t.steps}; raise --steps")
    teacher = model.teacher["backbone"]
    data = build_data(cfg, teacher, rank=rank, world_size=world)
    mine = resumed.for_rank(rank) if resumed is not None else None
    if resumed is not None and mine is not None:
        check_same_run(resumed, t.steps, _warn)
        exact = data.windows.load_state_dict(mine["data"], [r["data"] for r in resumed.ranks])
        if not exact or resumed.world_size != world:
            _warn(
                f"{resumed.path}: saved on {resumed.world_size} rank(s) x {mine['data']['num_workers']} worker(s), "
                f"resumed on {world} x {data.windows.num_workers}: the window stream continues past every window "
                "already seen, but not with the batches an uninterrupted run would have drawn"
            )
    meta = trained_meta(teacher.meta, data)
    for module in model.backbones():
        module.meta = meta  # what the exported backbone carries: these bands and this normalisation
    probe_fn = make_probe(cfg, data)
    schedules = build_schedules(cfg)
    metrics = MetricsLog(run_dir / "metrics.csv", resume_step=start if ckpt is not None else None) if lead else None
    probe = probe_images(data.windows, cfg.diagnostics.probe_windows, cfg.crops.global_size, data.mean, data.std)
    log = log if lead else _quiet
    log(
        f"pretraining {cfg.student.arch} on {len(data.windows.sources)} raster(s), normalisation from "
        f"{data.normalization}; steps {start}..{t.steps} on {device}"
        + (f", {world} ranks ({model.parallel_strategy})" if world > 1 else "")
    )
    batches = _batches(data.loader)
    model.train()
    if mine is not None:
        restore_rng(mine["rng"])  # last: whatever the set-up drew, the steps draw as the uninterrupted run did
    speed = Throughput.for_run(cfg, device, world)
    tic, timed, waited = time.perf_counter(), 0, 0.0  # rates over the steps since the last row (no diagnostics)
    try:
        for it in range(start, t.steps):
            t_wait = time.perf_counter()
            raw = next(batches)
            waited += time.perf_counter() - t_wait
            data.windows.advance(raw.pop("last_index"))
            batch = _to(raw, device)
            total, parts, values = train_step(model, optimizer, schedules, batch, it)
            step, timed = it + 1, timed + 1
            diag = t.diagnostic_every > 0 and (step % t.diagnostic_every == 0 or step == t.steps)
            logged = step % t.log_every == 0 or diag or step == t.steps or step == 1
            if logged:
                rate = speed.images_per_s(timed, time.perf_counter() - tic)  # over all ranks
                total, parts = _rank_mean(total, parts)
                row: dict[str, Any] = {
                    "step": step,
                    "loss": float(total),
                    **loss_columns(parts),
                    "lr": values["lr"],
                    "wd": values["weight_decay"],
                    "momentum": values["momentum"],
                    "teacher_temp": values["teacher_temp"],
                    "gram_weight": values["gram_weight"],
                    "images_per_s": rate,
                    "mfu": speed.mfu(rate),
                    "data_wait_s": waited / timed,  # this rank's mean wait for its next batch per step
                }
                if diag:
                    # FSDP2: every rank gathers the shards, rank 0 runs the diagnostics on whole copies
                    diag_teacher = plain_backbone(model.exported_backbone)
                    diag_gram = plain_backbone(model.gram_teacher) if model.gram_teacher is not None else None
                    if lead:
                        row.update(run_diagnostics(diag_teacher, probe, diag_gram, probe_fn))
                if metrics is not None:
                    metrics.write(row)
                sim = f" patch_sim {row['patch_sim_mean']:.3f}" if diag and lead else ""
                log(f"step {step}/{t.steps} loss {float(total):.4f} lr {values['lr']:.2e}{sim}")
            if step % t.checkpoint_every == 0 or step == t.steps:  # every rank: states are gathered, DCP shards
                ck = cfg.checkpoint
                save_checkpoint(
                    run_dir,
                    model,
                    optimizer,
                    step,
                    rank_state={"data": data.windows.state_dict()},
                    meta={"steps": t.steps, "backbone_meta": meta.to_dict()},
                    keep=ck.keep,
                    milestone_every=ck.milestone_every,
                    sharded=None if ck.format == "auto" else ck.format == "dcp",
                )
            if logged:
                tic, timed, waited = time.perf_counter(), 0, 0.0
    finally:
        if metrics is not None:
            metrics.close()
    out = run_dir / "backbone.pth"
    if is_sharded(model):  # every rank gathers the shards, rank 0 writes
        export = plain_backbone(teacher)
        if lead:
            save_backbone(export, out)
    elif lead:
        model.export_teacher_backbone(out)
    _barrier()
    return RunResult(run_dir, start, t.steps, out, model)


def _rank_mean(total: torch.Tensor, parts: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The logged loss and its parts averaged over the ranks (each rank's are of its own batch)."""
    from geodino.training.distributed import all_reduce, get_world_size

    if get_world_size() == 1:
        return total, parts
    keys = [k for k, v in parts.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    stacked = torch.stack([total.detach().float().reshape(()), *(parts[k].float().reshape(()) for k in keys)])
    stacked = all_reduce(stacked.to(total.device), op="mean")
    return stacked[0], {**parts, **dict(zip(keys, stacked[1:], strict=True))}


def _quiet(*_: Any) -> None:
    """The log of ranks other than 0."""


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=3)


def trained_meta(meta: Any, data: DataPipeline) -> Any:
    """The backbone metadata of a run: the training rasters' band names and the normalisation used.

    Bands keep the backbone's names unless the rasters name theirs (band descriptions); the GSD is the rasters'
    pixel size when they share one in metres.
    """
    sources = data.windows.sources
    names = sources[0].band_names
    described = not all(n == f"band_{i}" for i, n in enumerate(names, start=1))
    res = {s.res for s in sources}
    metres = all(s.crs is not None and s.crs.linear_units in ("metre", "meter") for s in sources)
    gsd = float(next(iter(res))[0]) if len(res) == 1 and metres else meta.gsd
    weights = "geodino" if meta.weights == "random" else meta.weights
    return meta.replace(
        bands=tuple(names) if described else meta.bands, mean=data.mean, std=data.std, gsd=gsd, weights=weights
    )


def make_probe(cfg: PretrainConfig, data: DataPipeline) -> Any:
    """The dense linear probe of ``cfg.diagnostics`` as a callable of the backbone, or None without labels."""
    from geodino.raster.normalize import default_scale
    from geodino.raster.source import RasterSource
    from geodino.training.diagnostics import check_same_grid, dense_linear_probe

    d = cfg.diagnostics
    if d.probe_labels is None:
        return None
    image_path = d.probe_image or data.windows.sources[0].paths[0]
    try:
        image = RasterSource(image_path, bands=cfg.data.bands)
        labels = RasterSource(d.probe_labels, bands=[1])
    except (OSError, ValueError) as exc:
        raise TrainingDataError(f"cannot read the probe rasters: {exc}") from exc
    if image.count != len(data.mean):
        raise TrainingDataError(f"{image_path}: the probe image gives {image.count} bands, the run {len(data.mean)}")
    try:
        check_same_grid(image, labels)
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from exc
    tile = d.probe_tile or cfg.crops.global_size

    def probe(backbone: Any) -> Any:
        return dense_linear_probe(
            backbone,
            image,
            labels,
            mean=data.mean,
            std=data.std,
            scale=default_scale(image.dtype),
            tile=tile,
            ignore_index=d.probe_ignore_index,
            steps=d.probe_steps,
            seed=cfg.train.seed,
        )

    return probe
