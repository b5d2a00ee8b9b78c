r"""Step-range schedules: ``start_step`` / ``end_step`` / ``frequency`` with a named curve.

Intel Neural Compressor's ``sparsity_decay_type`` schedules, plus Zhu & Gupta's cubic, as schedulers
registered with `sparsify.schedules.register_scheduler` (so a config dict or YAML names them by
``kind``). They keep the engine's contract ``compute_sparsity(step_count, prev_sparsity, config)``
with the first ``step()`` being 1.

Timing. Masks change at the *pruning steps* ``start_step, start_step + frequency, …`` up to
``end_step``. With ``T = (end_step - start_step) // frequency`` pruning intervals and ``t`` the
index of the current pruning step (``t = (step - start_step) / frequency``), the sparsity at pruning
step ``t`` is ``curve(s₀, s, t / T)`` where ``s₀`` is ``initial_sparsity`` and ``s`` the config's
target. At ``t = 0`` the curve gives ``s₀`` (nothing new is pruned, as in INC: "no pruning at step
0"), and at ``t = T`` — the last pruning step, ``start_step + T·frequency ≤ end_step`` — the target.
When ``start_step == end_step`` (``T = 0``) the schedule is one-shot: the target at ``start_step``
(at the first ``step()`` when ``start_step`` is 0).

This is INC's timing exactly: INC's ``global_step`` counts finished optimizer steps from 0 and
prunes in ``on_step_begin``; sparsify's ``step_count`` counts ``step()`` calls, made after each
optimizer step, from 1 — the same number of finished optimizer steps.

The curves (``u = t / T``):

=====================  ==========================================  ======================================
``kind``               sparsity                                    shape
=====================  ==========================================  ======================================
``linear``             ``s₀ + (s − s₀)·u``                          straight line (INC ``linear``)
``cosine``             ``s₀ + (s − s₀)·(1 − cos(π·u/2))``           slow start (INC ``cos``)
``exponential``        ``1 − (1 − s₀)·((1 − s)/(1 − s₀))^u``        density decays geometrically: fast
                                                                   start (INC ``exp``, its default)
``cubic_fast_start``   ``s + (s₀ − s)·(1 − u)³``                    Zhu & Gupta / TF-MOT / SparseML
                                                                   "cubic": most pruning early
``cubic_slow_start``   ``s₀ + (s − s₀)·u³``                         INC's ``cube``: most pruning late —
                                                                   the *opposite* curvature of Zhu–Gupta
=====================  ==========================================  ======================================

INC's ``cube`` is deliberately not a kind here: the name hides that it curves the other way from
the cubic schedule everyone else means. `sparsify.compat.inc` maps ``cube`` to
``cubic_slow_start`` and ``exp`` / ``cos`` to ``exponential`` / ``cosine``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import attrs

from .._checks import as_int, check_range, field_error
from .base import PruningScheduler, initial_and_target, register_scheduler

__all__ = [
    "CosineScheduler",
    "CubicFastStartScheduler",
    "CubicSlowStartScheduler",
    "ExponentialScheduler",
    "LinearScheduler",
    "StepRangeScheduler",
]


def _non_negative_int(owner_field: str):
    owner, field = owner_field.split(".")

    def convert(value: Any) -> int:
        value = as_int(owner, field, value)
        check_range(owner, field, value, 0)
        return value

    return convert


def _positive_int(value: Any) -> int:
    value = as_int("StepRangeScheduler", "frequency", value)
    check_range("StepRangeScheduler", "frequency", value, 1)
    return value


@attrs.define(eq=True)
class StepRangeScheduler(PruningScheduler):
    """Base of the step-range schedules: subclasses define `curve`.

    Args:
        start_step: the first pruning step (≥ 0); the sparsity there is ``initial_sparsity``
            unless ``start_step == end_step`` (one-shot).
        end_step: the last step that may prune (≥ ``start_step``).
        frequency: prune every ``frequency`` steps from ``start_step`` (≥ 1).
    """

    # mypy's attrs plugin cannot type a converter that a call returns: hence ignore[misc] below
    start_step: int = attrs.field(default=0, converter=_non_negative_int("StepRangeScheduler.start_step"))  # type: ignore[misc]
    end_step: int = attrs.field(default=0, converter=_non_negative_int("StepRangeScheduler.end_step"))  # type: ignore[misc]
    frequency: int = attrs.field(default=1, converter=_positive_int)

    def __attrs_post_init__(self) -> None:
        if self.end_step < self.start_step:
            raise field_error(
                type(self).__name__, "end_step", self.end_step,
                f"allowed end_step >= start_step ({self.start_step}); equal means one-shot at start_step",
            )

    @staticmethod
    def curve(initial: float, target: float, fraction: float) -> float:
        """Sparsity at ``fraction = t / T`` of the way from ``initial`` to ``target``."""
        raise NotImplementedError

    @property
    def intervals(self) -> int:
        """``T``: the number of pruning intervals (0 for one-shot)."""
        return (self.end_step - self.start_step) // self.frequency

    def pruning_steps(self) -> list[int]:
        """Every step at which the sparsity may change (a one-shot at step 0 fires at step 1)."""
        if self.intervals == 0:
            return [max(self.start_step, 1)]
        return [s for s in range(self.start_step, self.end_step + 1, self.frequency) if s >= 1]

    def compute_sparsity(self, step_count: int, prev_sparsity: float, config: Any) -> float:
        initial, target = initial_and_target(config)
        if self.intervals == 0:
            return target if step_count == max(self.start_step, 1) else prev_sparsity
        offset = step_count - self.start_step
        if step_count < self.start_step or step_count > self.end_step or offset % self.frequency:
            return prev_sparsity
        t = offset // self.frequency
        if t > self.intervals:
            return prev_sparsity
        return self.sparsity_at(t, initial, target)

    def sparsity_at(self, t: int, initial: float, target: float) -> float:
        """The sparsity at pruning step index ``t`` (0 … ``T``); exactly ``target`` at ``t = T``."""
        if t >= max(self.intervals, 1):
            return target
        return self.curve(initial, target, t / self.intervals)

    def last_step(self) -> int | None:
        return self.pruning_steps()[-1]

    def next_change(self, step_count: int, sparsity: float, config: Any) -> int | None:
        """The first pruning step after ``step_count`` whose sparsity differs from ``sparsity``."""
        if self.intervals == 0:
            first = max(self.start_step, 1)
            return first if first > step_count and self.compute_sparsity(first, sparsity, config) != sparsity \
                else None
        begin = max(self.start_step, 1, step_count + 1)
        offset = -(begin - self.start_step) % self.frequency  # up to the next pruning step
        for step in range(begin + offset, self.start_step + self.intervals * self.frequency + 1, self.frequency):
            if self.compute_sparsity(step, sparsity, config) != sparsity:
                return step
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start_step": self.start_step, "end_step": self.end_step,
                "frequency": self.frequency}


@register_scheduler
@attrs.define(eq=True)
class LinearScheduler(StepRangeScheduler):
    """``s₀ + (s − s₀)·u`` — INC's ``linear``."""

    kind: ClassVar[str] = "linear"

    @staticmethod
    def curve(initial: float, target: float, fraction: float) -> float:
        return initial + (target - initial) * fraction


@register_scheduler
@attrs.define(eq=True)
class CosineScheduler(StepRangeScheduler):
    """``s₀ + (s − s₀)·(1 − cos(π·u/2))`` — INC's ``cos``: slow start, fast finish."""

    kind: ClassVar[str] = "cosine"

    @staticmethod
    def curve(initial: float, target: float, fraction: float) -> float:
        return initial + (target - initial) * (1.0 - math.cos(math.pi / 2 * fraction))


@register_scheduler
@attrs.define(eq=True)
class ExponentialScheduler(StepRangeScheduler):
    """``1 − (1 − s₀)·((1 − s)/(1 − s₀))^u`` — INC's ``exp`` (its default).

    The density ``1 − sparsity`` shrinks by the same factor at every pruning step, so the schedule
    prunes most weights early, when there are most to prune.
    """

    kind: ClassVar[str] = "exponential"

    @staticmethod
    def curve(initial: float, target: float, fraction: float) -> float:
        if initial >= 1.0:
            return 1.0
        return 1.0 - (1.0 - initial) * ((1.0 - target) / (1.0 - initial)) ** fraction


@register_scheduler
@attrs.define(eq=True)
class CubicFastStartScheduler(StepRangeScheduler):
    """``s + (s₀ − s)·(1 − u)³`` — Zhu & Gupta's cubic (TF-MOT, SparseML, Core ML ``power=3``).

    Most of the pruning happens early, while the network can still recover.
    """

    kind: ClassVar[str] = "cubic_fast_start"

    @staticmethod
    def curve(initial: float, target: float, fraction: float) -> float:
        return target + (initial - target) * (1.0 - fraction) ** 3


@register_scheduler
@attrs.define(eq=True)
class CubicSlowStartScheduler(StepRangeScheduler):
    """``s₀ + (s − s₀)·u³`` — what INC calls ``cube``: most of the pruning happens at the end."""

    kind: ClassVar[str] = "cubic_slow_start"

    @staticmethod
    def curve(initial: float, target: float, fraction: float) -> float:
        return initial + (target - initial) * fraction**3
