"""Schedules of the training hyper-parameters: pure objects giving a value at an iteration (0-based).

Building blocks `Constant`, `Linear`, `Cosine` and `Piecewise` compose into the recipe's schedules for the learning
rate, weight decay, teacher momentum, teacher temperature and Gram weight (`build_schedules`). `CosineScheduler`
is the warm-up + cosine shape the DINO family uses, under its familiar name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from geodino.training.config import PretrainConfig

__all__ = [
    "Constant",
    "Cosine",
    "CosineScheduler",
    "Linear",
    "Piecewise",
    "Schedule",
    "Schedules",
    "build_schedules",
    "cosine",
    "linear",
]


class Schedule(Protocol):
    def __call__(self, iteration: int) -> float: ...


def linear(t: float, start: float, end: float) -> float:
    """Linear interpolation at fraction t in [0, 1] (clamped)."""
    t = min(max(t, 0.0), 1.0)
    return start + (end - start) * t


def cosine(t: float, start: float, end: float) -> float:
    """Half-cosine from start (t=0) to end (t=1), clamped: ``end + (start - end) * (1 + cos(pi t)) / 2``."""
    t = min(max(t, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class Constant:
    """The same value at every iteration."""

    value: float

    def __call__(self, iteration: int) -> float:
        return self.value


@dataclass(frozen=True)
class Linear:
    """From `start` at iteration 0 to `end` at iteration `iters`, then `end` (iters 0: `end` throughout)."""

    start: float
    end: float
    iters: int

    def __call__(self, iteration: int) -> float:
        return self.end if self.iters <= 0 else linear(iteration / self.iters, self.start, self.end)


@dataclass(frozen=True)
class Cosine:
    """Half-cosine from `start` at iteration 0 to `end` at iteration `iters`, then `end` (iters 0: `end`)."""

    start: float
    end: float
    iters: int

    def __call__(self, iteration: int) -> float:
        return self.end if self.iters <= 0 else cosine(iteration / self.iters, self.start, self.end)


class Piecewise:
    """Segments run one after another; each sees iterations counted from its own start.

    Args:
        segments: (length, schedule) pairs; the last segment runs for ever (its length only documents intent).
    """

    def __init__(self, segments: Sequence[tuple[int, Schedule]]) -> None:
        if not segments:
            raise ValueError("Piecewise needs at least one segment")
        if any(length < 0 for length, _ in segments):
            raise ValueError("Piecewise segment lengths must be >= 0")
        self.segments = list(segments)

    def __call__(self, iteration: int) -> float:
        start = 0
        for length, schedule in self.segments[:-1]:
            if iteration < start + length:
                return schedule(iteration - start)
            start += length
        return self.segments[-1][1](iteration - start)


class CosineScheduler:
    """Zero for `freeze_iters`, linear warm-up from `start_warmup_value` to `base_value` over `warmup_iters`, then
    half-cosine to `final_value` at `total_iters`; `final_value` after. Index or call it with the iteration.
    """

    def __init__(
        self,
        base_value: float,
        final_value: float,
        total_iters: int,
        warmup_iters: int = 0,
        start_warmup_value: float = 0.0,
        freeze_iters: int = 0,
    ) -> None:
        if freeze_iters + warmup_iters > total_iters:
            raise ValueError(
                f"freeze ({freeze_iters}) + warm-up ({warmup_iters}) iterations exceed the total ({total_iters})"
            )
        self.final_value = final_value
        self.total_iters = total_iters
        self._schedule = Piecewise(
            [
                (freeze_iters, Constant(0.0)),
                (warmup_iters, Linear(start_warmup_value, base_value, warmup_iters)),
                (
                    total_iters - freeze_iters - warmup_iters,
                    Cosine(base_value, final_value, total_iters - freeze_iters - warmup_iters),
                ),
            ]
        )

    def __call__(self, iteration: int) -> float:
        return self.final_value if iteration >= self.total_iters else self._schedule(iteration)

    def __getitem__(self, iteration: int) -> float:
        return self(iteration)


@dataclass(frozen=True)
class Schedules:
    """Every scheduled hyper-parameter of a run, each a callable of the iteration."""

    lr: Schedule
    weight_decay: Schedule
    momentum: Schedule
    teacher_temp: Schedule
    gram_weight: Schedule

    def at(self, iteration: int) -> dict[str, float]:
        """All values at `iteration`, keyed like the metrics columns."""
        return {
            "lr": self.lr(iteration),
            "weight_decay": self.weight_decay(iteration),
            "momentum": self.momentum(iteration),
            "teacher_temp": self.teacher_temp(iteration),
            "gram_weight": self.gram_weight(iteration),
        }


def gram_weight_schedule(enabled: bool, start: int, weight: float, ramp_iters: int) -> Schedule:
    """0 before `start`; a half-cosine ramp from 0 to `weight` over `ramp_iters`; then `weight` (0 when off)."""
    if not enabled:
        return Constant(0.0)
    return Piecewise([(start, Constant(0.0)), (ramp_iters, Cosine(0.0, weight, ramp_iters))])


def build_schedules(cfg: PretrainConfig) -> Schedules:
    """The recipe's schedules over `cfg.train.steps` iterations.

    - lr: linear warm-up from 0 over `optim.warmup_iters`, then cosine to `optim.min_lr` at the last step
      (or constant `optim.lr` with `optim.schedule: constant`).
    - weight decay: cosine from `optim.weight_decay` to `optim.weight_decay_end` (constant when equal).
    - teacher momentum: cosine from `teacher.momentum_start` to `teacher.momentum_end`.
    - teacher temperature: linear from `teacher.temp_warmup_start` to `teacher.temp` over `teacher.temp_warmup_iters`.
    - Gram weight: see `gram_weight_schedule`.
    """
    o, t, g, steps = cfg.optim, cfg.teacher, cfg.gram, cfg.train.steps
    warm = min(o.warmup_iters, steps)
    after: Schedule = Cosine(o.lr, o.min_lr, steps - warm) if o.schedule == "cosine" else Constant(o.lr)
    lr = Piecewise([(warm, Linear(0.0, o.lr, warm)), (steps - warm, after)])
    return Schedules(
        lr=lr,
        weight_decay=Cosine(o.weight_decay, o.weight_decay_end, steps),
        momentum=Cosine(t.momentum_start, t.momentum_end, steps),
        teacher_temp=Linear(t.temp_warmup_start, t.temp, t.temp_warmup_iters),
        gram_weight=gram_weight_schedule(g.enabled, g.start_iteration, g.weight, g.weight_ramp_iters),
    )
