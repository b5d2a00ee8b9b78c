"""The schedule contract says when the next change is due: `next_change` of every built-in schedule, exactly."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import pytest

from sparsify import ModulePrunerConfig
from sparsify.schedules import PruningScheduler, scheduler_from_dict


def _config(initial: float = 0.0, target: float = 0.5) -> ModulePrunerConfig:
    return ModulePrunerConfig(initial_sparsity=initial, target_sparsity=target)


def _probed(scheduler: PruningScheduler, step: int, sparsity: float, config: Any, horizon: int = 400) -> int | None:
    """What the pruner used to do: ask compute_sparsity step by step."""
    for candidate in range(step + 1, horizon + 1):
        if scheduler.compute_sparsity(candidate, sparsity, config) != sparsity:
            return candidate
    return None


def test_polynomial() -> None:
    scheduler = scheduler_from_dict({"update_steps": [0, 10, 20, 30], "power": 3})
    config = _config()
    assert scheduler.next_change(0, 0.0, config) == 10  # step 0 is never reached and gives 0 anyway
    assert scheduler.next_change(10, scheduler.compute_sparsity(10, 0.0, config), config) == 20
    assert scheduler.next_change(25, 0.1, config) == 30
    assert scheduler.next_change(30, 0.5, config) is None
    assert scheduler_from_dict({"update_steps": "range(0)"}).next_change(0, 0.0, config) is None
    # an update step whose level equals the current one is no change: the next one is
    assert scheduler_from_dict({"update_steps": [5, 6]}).next_change(0, 0.0, _config(0.0, 0.0)) is None


def test_constant() -> None:
    config = _config(target=0.7)
    assert scheduler_from_dict({"begin_step": 0}).next_change(0, 0.0, config) == 1
    assert scheduler_from_dict({"begin_step": 40}).next_change(3, 0.0, config) == 40
    assert scheduler_from_dict({"begin_step": 40}).next_change(50, 0.2, config) == 51  # past it: the next step
    assert scheduler_from_dict({"begin_step": 40}).next_change(50, 0.7, config) is None


@pytest.mark.parametrize("kind", ["linear", "cosine", "exponential", "cubic_fast_start", "cubic_slow_start"])
def test_step_ranges(kind: str) -> None:
    config = _config(0.1, 0.9)
    scheduler = scheduler_from_dict({"kind": kind, "start_step": 0, "end_step": 100, "frequency": 25})
    # at step 0 (t = 0) the curve gives initial_sparsity: the first change is the second pruning step
    assert scheduler.next_change(0, 0.1, config) == 25
    assert scheduler.next_change(25, scheduler.compute_sparsity(25, 0.1, config), config) == 50
    assert scheduler.next_change(99, 0.5, config) == 100
    assert scheduler.next_change(100, 0.9, config) is None
    assert scheduler.next_change(0, 0.0, config) == 25  # below initial_sparsity: step 0 is never reached
    later = scheduler_from_dict({"kind": kind, "start_step": 7, "end_step": 30, "frequency": 10})
    assert later.next_change(0, 0.0, config) == 7  # t = 0 at step 7 gives 0.1, a change from 0
    assert later.next_change(7, 0.1, config) == 17
    assert later.next_change(17, 0.5, config) == 27  # the last pruning step (t = T = 2) gives the target
    assert later.next_change(17, 0.9, config) is None  # ... which this layer already has
    one_shot = scheduler_from_dict({"kind": kind, "start_step": 0, "end_step": 0})
    assert one_shot.next_change(0, 0.1, config) == 1
    assert one_shot.next_change(1, 0.9, config) is None


@pytest.mark.parametrize("data", [
    {"update_steps": [0, 3, 9, 27, 81], "power": 2}, {"update_steps": "range(5, 200, 7)"}, {"begin_step": 13},
    {"kind": "linear", "start_step": 3, "end_step": 97, "frequency": 8},
    {"kind": "exponential", "start_step": 0, "end_step": 150, "frequency": 1},
    {"kind": "cubic_slow_start", "start_step": 11, "end_step": 11},
])
def test_every_built_in_schedule_agrees_with_probing_every_step(data: dict[str, Any]) -> None:
    scheduler = scheduler_from_dict(data)
    config = _config(0.2, 0.8)
    sparsity, step = 0.0, 0
    while True:  # walk the schedule as the pruner does, from change to change
        expected = _probed(scheduler, step, sparsity, config)
        assert scheduler.next_change(step, sparsity, config) == expected, (step, sparsity)
        if expected is None:
            break
        step, sparsity = expected, scheduler.compute_sparsity(expected, sparsity, config)
    assert sparsity == 0.8


@attrs.define(eq=True)
class _EveryTenth(PruningScheduler):
    """A user schedule without next_change: the fallback probes it."""

    kind: ClassVar[str] = "every_tenth_test"

    def compute_sparsity(self, step_count: int, prev_sparsity: float, config: Any) -> float:
        return min(0.5, step_count // 10 * 0.1) if step_count % 10 == 0 else prev_sparsity


def test_user_schedules_fall_back_to_probing() -> None:
    scheduler = _EveryTenth()
    assert scheduler.next_change(0, 0.0, None) == 10
    assert scheduler.next_change(10, 0.1, None) == 20
    assert scheduler.next_change(50, 0.5, None) is None  # open-ended: probed PROBE_WINDOW steps ahead
