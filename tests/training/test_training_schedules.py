"""Schedules against values computed by hand."""

from __future__ import annotations

import math

import pytest

from geodino.training.config import load_config
from geodino.training.schedules import (
    Constant,
    Cosine,
    CosineScheduler,
    Linear,
    Piecewise,
    build_schedules,
    gram_weight_schedule,
)


def test_building_blocks_by_hand() -> None:
    assert Constant(0.3)(0) == Constant(0.3)(10**6) == 0.3
    lin = Linear(1.0, 3.0, 4)
    assert [lin(i) for i in range(6)] == [1.0, 1.5, 2.0, 2.5, 3.0, 3.0]
    cos = Cosine(1.0, 0.0, 4)
    # end + (start - end) (1 + cos(pi i / 4)) / 2
    expected = [(1 + math.cos(math.pi * i / 4)) / 2 for i in range(5)] + [0.0]
    assert [cos(i) for i in range(6)] == pytest.approx(expected)
    assert cos(2) == pytest.approx(0.5)
    assert Linear(1.0, 2.0, 0)(0) == 2.0 and Cosine(1.0, 2.0, 0)(0) == 2.0


def test_piecewise_counts_iterations_per_segment() -> None:
    sched = Piecewise([(2, Constant(5.0)), (3, Linear(0.0, 3.0, 3)), (1, Constant(9.0))])
    assert [sched(i) for i in range(8)] == [5.0, 5.0, 0.0, 1.0, 2.0, 9.0, 9.0, 9.0]
    with pytest.raises(ValueError):
        Piecewise([])


def test_cosine_scheduler_freeze_warmup_cosine() -> None:
    s = CosineScheduler(
        base_value=1.0, final_value=0.2, total_iters=10, warmup_iters=2, start_warmup_value=0.1, freeze_iters=1
    )
    assert s[0] == 0.0  # frozen
    assert s(1) == pytest.approx(0.1) and s(2) == pytest.approx(0.55)  # warm-up 0.1 -> 1.0 over 2
    assert s(3) == pytest.approx(1.0)  # cosine starts at base
    # cosine over 7 iterations from 1.0 to 0.2: at i = 3 + 7/2 (not an integer), check i = 5 by formula
    assert s(5) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi * 2 / 7)) / 2)
    assert s(10) == s(99) == 0.2
    with pytest.raises(ValueError, match="exceed"):
        CosineScheduler(1.0, 0.0, 5, warmup_iters=6)


def test_gram_weight_ramps_from_the_start_iteration() -> None:
    w = gram_weight_schedule(True, start=10, weight=2.0, ramp_iters=4)
    assert [w(i) for i in (0, 9)] == [0.0, 0.0]
    assert w(10) == pytest.approx(0.0) and w(12) == pytest.approx(1.0) and w(14) == pytest.approx(2.0)
    assert w(11) == pytest.approx(2.0 * (1 - math.cos(math.pi / 4)) / 2)
    assert w(1000) == 2.0
    step = gram_weight_schedule(True, start=3, weight=1.5, ramp_iters=0)
    assert [step(i) for i in range(5)] == [0.0, 0.0, 0.0, 1.5, 1.5]
    assert gram_weight_schedule(False, 0, 2.0, 0)(50) == 0.0


def test_build_schedules_from_a_config() -> None:
    cfg = load_config(
        "tiny",
        [
            "train.steps=20",
            "optim.lr=0.01",
            "optim.min_lr=0.001",
            "optim.warmup_iters=4",
            "optim.weight_decay=0.04",
            "optim.weight_decay_end=0.2",
            "teacher.momentum_start=0.9",
            "teacher.momentum_end=1.0",
            "teacher.temp_warmup_start=0.04",
            "teacher.temp=0.07",
            "teacher.temp_warmup_iters=3",
            "gram.enabled=true",
            "gram.start_iteration=5",
            "gram.weight=2.0",
            "gram.weight_ramp_iters=2",
        ],
    )
    s = build_schedules(cfg)
    assert s.lr(0) == 0.0 and s.lr(2) == pytest.approx(0.005) and s.lr(4) == pytest.approx(0.01)
    assert s.lr(12) == pytest.approx(0.001 + 0.009 * 0.5)  # halfway through the 16-iteration cosine
    assert s.lr(20) == pytest.approx(0.001)
    assert s.weight_decay(0) == pytest.approx(0.04) and s.weight_decay(10) == pytest.approx(0.12)
    assert s.momentum(10) == pytest.approx(0.95) and s.momentum(20) == pytest.approx(1.0)
    assert s.teacher_temp(0) == pytest.approx(0.04) and s.teacher_temp(3) == pytest.approx(0.07)
    assert s.teacher_temp(1) == pytest.approx(0.05)
    assert s.gram_weight(4) == 0.0 and s.gram_weight(6) == pytest.approx(1.0) and s.gram_weight(9) == 2.0
    values = s.at(4)
    assert set(values) == {"lr", "weight_decay", "momentum", "teacher_temp", "gram_weight"}
    const = build_schedules(load_config("tiny", ["optim.schedule=constant", "optim.warmup_iters=2"]))
    assert const.lr(1) == pytest.approx(const.lr(2) / 2) and const.lr(2) == const.lr(40)
