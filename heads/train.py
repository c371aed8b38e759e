"""Head training: a `DenseModel` (frozen backbone + head) fitted on a `ChipSet`, with a feature cache, D4
augmentation, AdamW with warm-up + cosine, early stopping, checkpoints and seeded, deterministic CPU runs.

Frozen backbone (default): the backbone stays in eval mode without gradients, and its features of each
(chip, transform) are computed once and reused across epochs (`geodino.heads.feature_cache.FeatureCache`, in
memory or on disk). ``finetune=True`` trains the backbone too, with layer-wise lr decay and no cache.

Layer-wise lr decay uses the rule of `geodino.training.param_groups` (which heads may not import): the patch
embedding and the tokens are layer 0, block i is layer i + 1, anything else of the backbone layer L + 1, and a
backbone parameter of layer l gets ``backbone_lr * layer_decay ** (L + 1 - l)``; the head gets `lr`. Biases,
norms, LayerScale gammas and tokens (every 1-D parameter) get no weight decay.

Schedule, per optimiser step s of S = epochs x steps per epoch, W = warmup_epochs x steps per epoch (the
`geodino.training.schedules.CosineScheduler` shape): ``lr(s) = base * s / W`` for s < W, then
``base * (1 + cos(pi (s - W) / (S - W))) / 2``.

Determinism: every epoch draws its chip order and transforms from ``numpy.random.default_rng([seed, epoch])`` and
seeds torch (dropout) with ``(seed, epoch)``, so a run resumed from a checkpoint continues exactly as an
uninterrupted one; `torch.use_deterministic_algorithms` is on during the fit (warn-only) and the global RNG state
is restored afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from geodino.heads.augment import apply_d4, draw_transforms, transform_set
from geodino.heads.data.chips import IGNORE_INDEX, ChipSet
from geodino.heads.feature_cache import FeatureCache, array_fingerprint
from geodino.heads.tasks import decode_outputs, task_loss

if TYPE_CHECKING:  # pragma: no cover
    from geodino.heads.model import DenseModel

__all__ = ["FitResult", "HeadTrainConfig", "TrainError", "fit_head", "lr_factor", "param_groups"]

LossFn = Callable[[Tensor, Tensor], Tensor]
Metric = Callable[[np.ndarray, np.ndarray], float]
LAST, BEST = "last.pt", "best.pt"
# Config fields that change the trajectory: a checkpoint resumes only under the same values.
_RESUME_KEYS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_epochs",
    "augment",
    "finetune",
    "layer_decay",
    "backbone_lr",
    "patience",
    "seed",
    "cache_dtype",
)


class TrainError(ValueError):
    """Training data, model and configuration that do not fit together."""


@dataclass
class HeadTrainConfig:
    """How `fit_head` trains.

    Attributes:
        epochs: passes over the training chips.
        batch_size: chips per optimiser step.
        lr: peak learning rate of the head (AdamW).
        weight_decay: AdamW's decoupled weight decay (not on 1-D parameters).
        warmup_epochs: linear warm-up length, in epochs (fractions allowed).
        augment: "d4" (flips and 90 degree rotations), "flips" or None.
        cache: "memory", "disk" (under `cache_dir`) or None (recompute the backbone every step). Ignored with
            `finetune` (the backbone changes).
        cache_dir: directory of the disk cache.
        cache_max_bytes: bound on the cached features (further entries are computed on the fly).
        cache_dtype: "float32" (exact) or "float16" (half the memory).
        finetune: train the backbone too, with layer-wise lr decay.
        layer_decay: lr factor per backbone layer below the top (finetune).
        backbone_lr: peak lr of the backbone's top layer (None: `lr`).
        patience: stop after this many epochs without a better validation metric (None: never).
        seed: seeds chip order, augmentation and dropout.
        checkpoint_dir: write ``last.pt`` (resumable state) and ``best.pt`` (best weights) here each epoch, and
            resume from ``last.pt`` when it exists.
        progress: show a progress bar (rich) per epoch.
        device: "cpu", "cuda", ...
        num_threads: torch CPU threads during the fit (None: unchanged).
    """

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1
    augment: Literal["d4", "flips"] | None = "d4"
    cache: Literal["memory", "disk"] | None = "memory"
    cache_dir: str | Path | None = None
    cache_max_bytes: int | None = 2 * 1024**3
    cache_dtype: Literal["float32", "float16"] = "float32"
    finetune: bool = False
    layer_decay: float = 0.75
    backbone_lr: float | None = None
    patience: int | None = 5
    seed: int = 0
    checkpoint_dir: str | Path | None = None
    progress: bool = True
    device: str = "cpu"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise TrainError(f"epochs and batch_size must be >= 1, got {self.epochs} and {self.batch_size}")
        if not self.lr > 0 or self.weight_decay < 0 or self.warmup_epochs < 0:
            raise TrainError(f"need lr > 0, weight_decay >= 0, warmup_epochs >= 0; got {self}")
        transform_set(self.augment)  # validates the name
        if self.cache not in ("memory", "disk", None):
            raise TrainError(f"cache must be 'memory', 'disk' or None, got {self.cache!r}")
        if self.cache == "disk" and self.cache_dir is None:
            raise TrainError("cache='disk' needs cache_dir")
        if self.cache_dtype not in ("float32", "float16"):
            raise TrainError(f"cache_dtype must be 'float32' or 'float16', got {self.cache_dtype!r}")
        if not 0 < self.layer_decay <= 1:
            raise TrainError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.patience is not None and self.patience < 1:
            raise TrainError(f"patience must be >= 1 or None, got {self.patience}")


@dataclass
class FitResult:
    """What `fit_head` returns.

    Attributes:
        model: the model with the best epoch's weights loaded.
        history: one dict per epoch run: epoch, train_loss, val_loss, val_metric, lr, seconds, cache_hits,
            cache_misses, cache_bytes (including epochs before a resume).
        best_epoch: the epoch (1-based) whose weights `model` holds.
        best_metric: its validation metric (the training loss without a validation set).
        stopped_early: whether patience ran out before `epochs`.
        cache: the cache's final ``stats()`` (None without a cache).
    """

    model: DenseModel
    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float
    stopped_early: bool = False
    cache: dict[str, Any] | None = field(default=None)


# ------------------------------------------------------------------------------------------------ optimiser
def _backbone_layer(name: str, depth: int) -> int:
    """Layer index of a backbone parameter (the rule of `geodino.training.param_groups.layer_id`)."""
    if name.startswith(("cls_token", "storage_tokens", "mask_token", "patch_embed.", "rope_embed.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def _no_decay(name: str, p: Tensor) -> bool:
    """1-D parameters (biases, norms, gammas) and tokens get no weight decay."""
    return p.ndim <= 1 or name.endswith(("cls_token", "storage_tokens", "mask_token"))


def param_groups(model: DenseModel, config: HeadTrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: the head at `lr`; with `finetune`, backbone layers at decayed lrs (module doc).

    Each group has ``params``, ``base_lr`` (its peak lr), ``weight_decay`` and ``names``.
    """
    entries: list[tuple[str, nn.Parameter, float]] = []
    for name, p in model.head.named_parameters():
        if p.requires_grad:
            entries.append((f"head.{name}", p, config.lr))
    if config.finetune:
        depth = len(model.backbone.blocks)
        top = config.backbone_lr if config.backbone_lr is not None else config.lr
        for name, p in model.backbone.named_parameters():  # all of them: fit_head unfreezes the backbone
            lr = top * config.layer_decay ** (depth + 1 - _backbone_layer(name, depth))
            entries.append((f"backbone.{name}", p, lr))
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for name, p, lr in entries:
        wd = 0.0 if _no_decay(name, p) else config.weight_decay
        group = groups.setdefault((lr, wd), {"params": [], "names": [], "base_lr": lr, "weight_decay": wd})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The schedule's multiplier of the peak lr at optimiser step `step` (0-based) of `total`: warm-up + cosine."""
    if step < warmup:
        return step / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


# ------------------------------------------------------------------------------------------------- helpers
@contextmanager
def _run_context(config: HeadTrainConfig) -> Iterator[None]:
    """Deterministic algorithms and thread count for the fit, restored afterwards with the global RNG state."""
    det, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    devices = [torch.device(config.device)] if torch.device(config.device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.use_deterministic_algorithms(True, warn_only=True)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn)
            torch.set_num_threads(threads)


def _check_inputs(model: DenseModel, train: ChipSet, val: ChipSet | None) -> str:
    """The task, after refusing data that cannot train this model."""
    spec = getattr(model, "task_spec", None) or {}
    task = spec.get("task", train.task)
    for name, chips in (("training", train), ("validation", val)):
        if chips is None:
            continue
        if len(chips) == 0:
            raise TrainError(f"the {name} split is empty: no chips")
        if chips.task != task:
            raise TrainError(f"the {name} chips are {chips.task!r}, the model was built for {task!r}")
        if chips.in_bands != model.backbone.in_chans:
            raise TrainError(
                f"the {name} chips have {chips.in_bands} bands, the backbone {model.backbone.meta.name} takes "
                f"{model.backbone.in_chans}"
            )
        if not chips.labelled().any():
            raise TrainError(f"the {name} split has no labelled pixel")
        if task == "land-cover":
            k = model.head.out_channels
            labelled = chips.targets[chips.labelled()]
            if len(chips.class_names or ()) != k:
                raise TrainError(f"the {name} chips have {len(chips.class_names or ())} classes, the head {k}")
            if labelled.min() < 0 or labelled.max() >= k:
                raise TrainError(
                    f"the {name} targets hold classes {int(labelled.min())}..{int(labelled.max())}; the head has "
                    f"{k} classes (0..{k - 1}, {IGNORE_INDEX} = unlabelled)"
                )
    return task


def _batch(chips: ChipSet, index: np.ndarray, transforms: np.ndarray) -> tuple[Tensor, Tensor]:
    """Images (B, C, T, T) float32 and targets (B, T, T) of chips `index`, each under its D4 transform."""
    images = np.stack([apply_d4(chips.images[i], int(t)) for i, t in zip(index, transforms, strict=True)])
    targets = np.stack([apply_d4(chips.targets[i], int(t)) for i, t in zip(index, transforms, strict=True)])
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), torch.from_numpy(targets)


class _Runner:
    """The forward pass of one batch: through the cache (frozen) or the whole model."""

    def __init__(self, model: DenseModel, cache: FeatureCache | None, device: torch.device) -> None:
        self.model, self.cache, self.device = model, cache, device

    def __call__(self, x: Tensor, keys: list[tuple[Any, ...]]) -> Tensor:
        x = x.to(self.device)
        if self.cache is None:
            return self.model(x)
        xp, _ = self.model.pad(x)
        return self.model.forward_features(self.cache.features(xp, keys), tuple(x.shape[-2:]))


def _n_labelled(targets: Tensor) -> int:
    valid = torch.isfinite(targets) if targets.is_floating_point() else targets != IGNORE_INDEX
    return int(valid.sum())


def _evaluate(
    runner: _Runner, chips: ChipSet, task: str, loss_fn: LossFn, batch_size: int, val_metric: Metric | None
) -> tuple[float, float]:
    """(validation loss (mean over batches weighted by labelled pixels), metric (the loss when None))."""
    model = runner.model
    model.eval()
    total, pixels, preds = 0.0, 0, []
    with torch.no_grad():
        for start in range(0, len(chips), batch_size):
            index = np.arange(start, min(start + batch_size, len(chips)))
            x, y = _batch(chips, index, np.zeros(len(index), dtype=np.int64))
            out = runner(x, [("val", int(i), 0) for i in index])
            y = y.to(out.device)
            n = _n_labelled(y)
            if n:
                total += float(loss_fn(out, y)) * n
                pixels += n
            if val_metric is not None:
                preds.append(decode_outputs(task, out).cpu().numpy())
    loss = total / max(pixels, 1)
    if val_metric is None:
        return loss, loss
    return loss, float(val_metric(np.concatenate(preds), chips.targets))


def _trainable_state(model: DenseModel, finetune: bool) -> dict[str, Tensor]:
    """What training changes, copied to the CPU: the head (and with `finetune` the backbone)."""
    module = model if finetune else model.head
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _load_trainable(model: DenseModel, state: dict[str, Tensor], finetune: bool) -> None:
    (model if finetune else model.head).load_state_dict(state)


def _resume_config(config: HeadTrainConfig) -> dict[str, Any]:
    values = asdict(config)
    return {k: values[k] for k in _RESUME_KEYS}


def _progress(enabled: bool, total: int, description: str) -> Any:
    """A started rich progress bar with one task, or None when disabled."""
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                   TimeRemainingColumn(), transient=True)  # fmt: skip
    bar.start()
    bar.add_task(description, total=total, loss="")
    return bar


# ----------------------------------------------------------------------------------------------------- fit
def fit_head(
    model: DenseModel,
    train: ChipSet,
    val: ChipSet | None,
    config: HeadTrainConfig,
    *,
    loss_fn: LossFn | None = None,
    val_metric: Metric | None = None,
    higher_is_better: bool | None = None,
    log: Callable[[str], Any] | None = print,
) -> FitResult:
    """Train `model`'s head (and with ``config.finetune`` its backbone) on `train`, keep the best epoch on `val`.

    Args:
        model: a `DenseModel`, e.g. from `geodino.heads.tasks.build_head_model` (its ``task_spec`` names the loss).
        train: the training chips (images (N, C, T, T), targets (N, T, T)).
        val: validation chips, or None (the best epoch is then the one with the lowest training loss).
        config: see `HeadTrainConfig`.
        loss_fn: ``f(outputs (B, K, H, W), targets (B, H, W)) -> scalar`` (None: the task's loss for the model).
        val_metric: ``f(pred (N, T, T), target (N, T, T)) -> float`` over the whole validation set, pred decoded
            (heights in metres, or class indices); None: the validation loss, lower is better.
        higher_is_better: direction of `val_metric` (required with one).
        log: called with one line per epoch (None: silent).

    Returns:
        a `FitResult`; ``result.model`` is `model` itself with the best weights loaded.

    Raises:
        TrainError: empty or unlabelled splits, chips that do not fit the model, a checkpoint of another config.
    """
    task = _check_inputs(model, train, val)
    if val_metric is not None and higher_is_better is None:
        raise TrainError("a custom val_metric needs higher_is_better (True for mIoU, False for MAE)")
    if val is None and val_metric is not None:
        raise TrainError("val_metric needs a validation split")
    higher = bool(higher_is_better) if val_metric is not None else False
    if loss_fn is None:
        spec = getattr(model, "task_spec", None) or {}
        loss_fn = task_loss(task, spec.get("loss"))
    say = log or (lambda _line: None)
    with _run_context(config):
        return _fit(model, train, val, config, task, loss_fn, val_metric, higher, say)


def _fit(
    model: DenseModel,
    train: ChipSet,
    val: ChipSet | None,
    config: HeadTrainConfig,
    task: str,
    loss_fn: LossFn,
    val_metric: Metric | None,
    higher: bool,
    say: Callable[[str], Any],
) -> FitResult:
    device = torch.device(config.device)
    finetune = config.finetune
    was_frozen = model.freeze_backbone
    model.to(device)
    if finetune:
        model.freeze_backbone = False
        model.backbone.requires_grad_(True)
    else:
        model.freeze_backbone = True
        model.backbone.requires_grad_(False)
    cache = None
    if config.cache is not None and not finetune:
        disk = config.cache == "disk"
        cache = FeatureCache(
            model.backbone,
            model.head.layers,
            device=device,
            max_bytes=config.cache_max_bytes,
            directory=Path(config.cache_dir) if disk else None,
            dtype=getattr(torch, config.cache_dtype),
            norm=model.head.use_backbone_norm,
            # a disk cache outlives this call: tie its entries to these chips' pixels
            key=array_fingerprint(train.images, *([val.images] if val is not None else [])) if disk else "",
        )
    runner = _Runner(model, cache, device)
    groups = param_groups(model, config)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = min(round(config.warmup_epochs * steps_per_epoch), total_steps)

    history: list[dict[str, Any]] = []
    best_state, best_metric, best_epoch, bad_epochs, start_epoch = None, math.nan, 0, 0, 1
    ckpt_dir = Path(config.checkpoint_dir).expanduser() if config.checkpoint_dir is not None else None
    if ckpt_dir is not None and (ckpt_dir / LAST).is_file():
        state = _read_checkpoint(ckpt_dir / LAST, config, finetune)
        _load_trainable(model, state["model"], finetune)
        optimizer.load_state_dict(state["optimizer"])
        history, best_state = state["history"], state["best_state"]
        best_metric, best_epoch, bad_epochs = state["best_metric"], state["best_epoch"], state["bad_epochs"]
        start_epoch = state["epoch"] + 1
        say(f"resumed from {ckpt_dir / LAST} after epoch {state['epoch']}")
    stopped = bool(history) and history[-1].get("stopped", False)

    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if stopped:
                break
            t0 = time.perf_counter()
            before = cache.stats() if cache is not None else None
            rng = np.random.default_rng([config.seed, epoch])
            order = rng.permutation(len(train))
            transforms = draw_transforms(len(train), config.augment, rng)
            torch.manual_seed(config.seed * 1_000_003 + epoch)
            model.train()
            total, pixels = 0.0, 0
            bar = _progress(config.progress, steps_per_epoch, f"epoch {epoch}/{config.epochs}")
            try:
                for b in range(steps_per_epoch):
                    index = order[b * config.batch_size : (b + 1) * config.batch_size]
                    ts = transforms[index]  # chip i's transform this epoch
                    x, y = _batch(train, index, ts)
                    step = (epoch - 1) * steps_per_epoch + b
                    factor = lr_factor(step, total_steps, warmup)
                    for group in optimizer.param_groups:
                        group["lr"] = group["base_lr"] * factor
                    out = runner(x, [("train", int(i), int(t)) for i, t in zip(index, ts, strict=True)])
                    y = y.to(out.device)
                    loss = loss_fn(out, y)
                    if not torch.isfinite(loss):
                        raise TrainError(f"epoch {epoch}, step {b}: the loss is {float(loss)} (lr {config.lr})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    n = _n_labelled(y)
                    total += float(loss.detach()) * n
                    pixels += n
                    if bar is not None:
                        bar.update(bar.task_ids[0], advance=1, loss=f"loss {float(loss.detach()):.4f}")
            finally:
                if bar is not None:
                    bar.stop()
            train_loss = total / max(pixels, 1)
            if val is not None:
                val_loss, metric = _evaluate(runner, val, task, loss_fn, config.batch_size, val_metric)
            else:
                val_loss, metric = math.nan, train_loss
            if not math.isfinite(metric):
                raise TrainError(f"epoch {epoch}: the validation metric is {metric}; cannot pick a best epoch")
            better = best_state is None or (metric > best_metric if higher else metric < best_metric)
            if better:
                best_state, best_metric, best_epoch, bad_epochs = _trainable_state(model, finetune), metric, epoch, 0
            else:
                bad_epochs += 1
            stopped = config.patience is not None and bad_epochs >= config.patience and epoch < config.epochs
            after = cache.stats() if cache is not None else None
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_metric": metric,
                "lr": config.lr * lr_factor(epoch * steps_per_epoch - 1, total_steps, warmup),
                "seconds": time.perf_counter() - t0,
                "cache_hits": after["hits"] - before["hits"] if after else 0,
                "cache_misses": after["misses"] - before["misses"] if after else 0,
                "cache_bytes": after["bytes"] if after else 0,
                "stopped": stopped,
            }
            history.append(row)
            if ckpt_dir is not None:
                _write_checkpoints(ckpt_dir, model, optimizer, config, epoch, history, best_state, best_metric,
                                   best_epoch, bad_epochs, better)  # fmt: skip
            say(
                f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f}"
                + (f", val loss {val_loss:.4f}, val metric {metric:.4f}" if val is not None else "")
                + f", {row['seconds']:.1f} s"
                + (f", cache {row['cache_hits']} hits / {row['cache_misses']} misses" if cache is not None else "")
                + (" (best)" if better else "")
                + (f"; no better epoch in {bad_epochs}: stopping" if stopped else "")
            )
    finally:  # the backbone leaves as it came (a frozen model stays frozen after fine-tuning)
        model.freeze_backbone = was_frozen
        model.backbone.requires_grad_(not was_frozen)
    if best_state is not None:
        _load_trainable(model, best_state, finetune)
    model.eval()
    return FitResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_metric=best_metric,
        stopped_early=stopped,
        cache=cache.stats() if cache is not None else None,
    )


# ---------------------------------------------------------------------------------------------- checkpoints
def _write_checkpoints(
    directory: Path,
    model: DenseModel,
    optimizer: torch.optim.Optimizer,
    config: HeadTrainConfig,
    epoch: int,
    history: list[dict[str, Any]],
    best_state: dict[str, Tensor] | None,
    best_metric: float,
    best_epoch: int,
    bad_epochs: int,
    better: bool,
) -> None:
    """``last.pt``: everything to resume after `epoch`; ``best.pt``: the best weights (written when they change).

    Both are written to a temporary name and renamed, so an interrupted write leaves the previous file.
    """
    directory.mkdir(parents=True, exist_ok=True)
    finetune = config.finetune
    state = {
        "format": 1,
        "epoch": epoch,
        "config": _resume_config(config),
        "finetune": finetune,
        "model": _trainable_state(model, finetune),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "best_state": best_state,
        "best_metric": best_metric,
        "best_epoch": best_epoch,
        "bad_epochs": bad_epochs,
    }
    _atomic_save(state, directory / LAST)
    if better and best_state is not None:
        _atomic_save({"epoch": best_epoch, "metric": best_metric, "state_dict": best_state}, directory / BEST)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _read_checkpoint(path: Path, config: HeadTrainConfig, finetune: bool) -> dict[str, Any]:
    """The resumable state in `path`, refused when it was written under another training configuration."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many types
        raise TrainError(f"{path}: cannot be read as a head-training checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != 1 or "epoch" not in state:
        raise TrainError(f"{path}: not a geodino head-training checkpoint")
    want, found = _resume_config(config), state.get("config", {})
    differ = {k: (found.get(k), want[k]) for k in want if found.get(k) != want[k]}
    if differ:
        rows = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in differ.items())
        raise TrainError(f"{path} was written by another training configuration ({rows}); use a new checkpoint_dir")
    if state.get("finetune") != finetune:
        raise TrainError(f"{path}: finetune={state.get('finetune')} in the checkpoint, {finetune} now")
    return state
