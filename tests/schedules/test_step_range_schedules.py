"""Step-range schedules: each curve against its formula, INC's timing, one-shot, registration, validation."""

from __future__ import annotations

import itertools
import math

import pytest

from sparsify import ModulePrunerConfig
from sparsify.schedules import scheduler_from_dict, scheduler_kinds
from sparsify.schedules.step_range import (
    CosineScheduler,
    CubicFastStartScheduler,
    CubicSlowStartScheduler,
    ExponentialScheduler,
    LinearScheduler,
)

S0, S = 0.1, 0.9
CONFIG = ModulePrunerConfig(initial_sparsity=S0, target_sparsity=S)

FORMULAS = {
    # INC compression/pruner/schedulers.py, s0 = init ratio, s = target, u = t / T
    "linear": lambda u: S0 + (S - S0) * u,
    "cosine": lambda u: S0 + (S - S0) * (1 - math.cos(math.pi / 2 * u)),
    "exponential": lambda u: 1 - (1 - S0) * ((1 - S) / (1 - S0)) ** u,
    "cubic_slow_start": lambda u: S0 + (S - S0) * u**3,  # INC "cube"
    "cubic_fast_start": lambda u: S + (S0 - S) * (1 - u) ** 3,  # Zhu & Gupta
}


def _run(scheduler, steps: int, config=CONFIG) -> list[float]:
    level, out = config.initial_sparsity, []
    for step in range(1, steps + 1):
        level = scheduler.compute_sparsity(step, level, config)
        out.append(level)
    return out


@pytest.mark.parametrize("kind", sorted(FORMULAS))
def test_curve_matches_formula_at_every_pruning_step(kind: str) -> None:
    scheduler = scheduler_from_dict({"kind": kind, "start_step": 10, "end_step": 50, "frequency": 10})
    assert scheduler.intervals == 4
    levels = _run(scheduler, 60)
    for step, level in enumerate(levels, start=1):
        if step < 10:
            assert level == S0
        elif step <= 50:
            t = (step - 10) // 10
            assert level == pytest.approx(FORMULAS[kind](t / 4)), (kind, step)
        else:
            assert level == pytest.approx(S)
    assert scheduler.pruning_steps() == [10, 20, 30, 40, 50]
    assert scheduler.last_step() == 50


def test_inc_total_prune_count_and_unaligned_end() -> None:
    # INC: T = (end - start + freq) // freq - 1; the last pruning step start + T*freq <= end reaches the target
    for start, end, freq in [(0, 100, 10), (3, 40, 7), (5, 6, 1), (2, 9, 4)]:
        scheduler = LinearScheduler(start_step=start, end_step=end, frequency=freq)
        assert scheduler.intervals == (end - start + freq) // freq - 1
        last = start + scheduler.intervals * freq
        assert scheduler.last_step() == last <= end
        assert scheduler.compute_sparsity(last, 0.3, CONFIG) == pytest.approx(S)
        assert scheduler.compute_sparsity(last + freq, 0.3, CONFIG) == 0.3


def test_start_step_gives_initial_sparsity_and_off_steps_change_nothing() -> None:
    scheduler = ExponentialScheduler(start_step=4, end_step=12, frequency=4)
    assert scheduler.compute_sparsity(4, 0.5, CONFIG) == pytest.approx(S0)  # t = 0: no pruning at start
    assert scheduler.compute_sparsity(5, 0.5, CONFIG) == 0.5
    assert scheduler.compute_sparsity(3, 0.5, CONFIG) == 0.5


def test_one_shot_when_start_equals_end() -> None:
    assert _run(CosineScheduler(start_step=3, end_step=3), 5) == [S0, S0, S, S, S]
    # INC's default start_step = end_step = 0 prunes before training: here at the first step()
    assert _run(ExponentialScheduler(), 3) == [S, S, S]
    assert ExponentialScheduler().pruning_steps() == [1]


def test_cubic_names_say_their_curvature() -> None:
    fast = CubicFastStartScheduler(start_step=0, end_step=10)
    slow = CubicSlowStartScheduler(start_step=0, end_step=10)
    halfway_fast = fast.compute_sparsity(5, 0.0, CONFIG)
    halfway_slow = slow.compute_sparsity(5, 0.0, CONFIG)
    linear = S0 + (S - S0) / 2
    assert halfway_fast > linear > halfway_slow
    assert halfway_fast == pytest.approx(S - (S - S0) / 8)
    assert halfway_slow == pytest.approx(S0 + (S - S0) / 8)
    assert "cube" not in scheduler_kinds()


def test_exponential_density_decays_geometrically() -> None:
    scheduler = ExponentialScheduler(start_step=0, end_step=40, frequency=10)
    densities = [1 - scheduler.sparsity_at(t, S0, S) for t in range(5)]
    ratios = [b / a for a, b in itertools.pairwise(densities)]
    assert ratios == pytest.approx([ratios[0]] * 4)
    assert densities[-1] == pytest.approx(1 - S)


def test_registered_and_round_trip() -> None:
    for kind in FORMULAS:
        assert kind in scheduler_kinds()
    scheduler = CubicFastStartScheduler(start_step=2, end_step=20, frequency=3)
    assert scheduler.as_dict() == {"kind": "cubic_fast_start", "start_step": 2, "end_step": 20, "frequency": 3}
    assert scheduler_from_dict(scheduler.as_dict()) == scheduler
    config = ModulePrunerConfig.from_dict({"scheduler": {"kind": "exponential", "end_step": 9}})
    assert config.scheduler == ExponentialScheduler(end_step=9)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"start_step": 5, "end_step": 4}, "end_step"),
        ({"start_step": -1}, "start_step"),
        ({"frequency": 0}, "frequency"),
        ({"end_step": 2.5}, "end_step"),
    ],
)
def test_validation_names_the_field(fields: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        LinearScheduler(**fields)
