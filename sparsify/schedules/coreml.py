"""Core ML Tools' two schedulers: polynomial decay (Zhu & Gupta) over ``update_steps``, and constant sparsity.

Same fields, defaults and ``compute_sparsity`` values as ``coremltools.optimize.torch.pruning``.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from .._checks import as_int, check_range, field_error
from .base import PruningScheduler, initial_and_target, register_scheduler

__all__ = ["ConstantSparsityScheduler", "PolynomialDecayScheduler"]

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# Polynomial decay (Zhu & Gupta 2017), Core ML Tools' PolynomialDecayScheduler
# ----------------------------------------------------------------------------------------------

_RANGE_RE = re.compile(r"^\s*range\(\s*(\d+)\s*(?:,\s*(\d+)\s*(?:,\s*(\d+)\s*)?)?\)\s*$")


def _parse_update_steps(value: Any) -> torch.Tensor:
    """Turn a list, tuple, range, tensor or ``"range(a, b, c)"`` string into a 1-D int64 tensor.

    The string form is parsed with a regular expression, never ``eval``.
    """
    owner, field = "PolynomialDecayScheduler", "update_steps"
    if isinstance(value, str):
        match = _RANGE_RE.match(value)
        if match is None:
            raise field_error(
                owner, field, value, "a string must look like 'range(stop)', 'range(start, stop)' or "
                "'range(start, stop, step)' with non-negative integers"
            )
        args = [int(g) for g in match.groups() if g is not None]
        if len(args) == 3 and args[2] == 0:
            raise field_error(owner, field, value, "range() step must not be zero")
        value = list(range(*args))
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise field_error(owner, field, value, "expected a 1-D tensor or list of integers")
        if value.is_floating_point() and not bool(torch.all(value == value.round())):
            raise field_error(owner, field, value.tolist(), "every step must be an integer")
        steps = [int(v) for v in value.tolist()]
    elif isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
        steps = [as_int(owner, field, v) for v in value]
    else:
        raise field_error(
            owner, field, value, "expected a list/tuple/range/tensor of integers or a 'range(...)' string",
            TypeError,
        )
    if not steps:
        # Core ML Tools accepts an empty schedule (its own tests use "range(0)"); it never prunes, so say so.
        logger.warning("PolynomialDecayScheduler.update_steps is empty (%r): this schedule never prunes", value)
        return torch.zeros(0, dtype=torch.int64)
    if min(steps) < 0:
        raise field_error(owner, field, steps, "steps must be non-negative")
    if any(b <= a for a, b in itertools.pairwise(steps)):
        raise field_error(owner, field, steps, "steps must be strictly increasing (sorted, no repeats)")
    return torch.tensor(steps, dtype=torch.int64)


def _check_power(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    check_range("PolynomialDecayScheduler", "power", value, 1)


@register_scheduler
@attrs.define(eq=True)
class PolynomialDecayScheduler(PruningScheduler):
    r"""Polynomial decay from ``initial_sparsity`` to ``target_sparsity`` over ``update_steps``.

    At the ``i``-th of ``n`` update steps (``i = 0 … n-1``) the sparsity becomes

    .. math:: s = s_f + (s_i - s_f)\,(1 - t)^{p}, \qquad t = i / (n - 1)\ (t = 1 \text{ if } n = 1)

    and stays unchanged between update steps. A step ``0`` in ``update_steps`` is never reached (the
    first ``step()`` is step 1) but still counts when spacing the schedule, as in Core ML Tools.
    ``power=3`` is Zhu & Gupta's cubic schedule: fast pruning early, slow at the end. Identical to Core
    ML Tools, except that ``update_steps`` must be strictly increasing (Core ML Tools silently accepts
    unsorted steps, which make sparsity go down).

    Args:
        update_steps: steps at which to update the masks: a list, tuple, range, 1-D tensor, or a
            string ``"range(start, stop, step)"``.
        power: the exponent ``p`` (an integer ≥ 1).
    """

    kind: ClassVar[str] = "polynomial"

    update_steps: torch.Tensor = attrs.field(
        converter=_parse_update_steps, eq=attrs.cmp_using(eq=torch.equal)
    )
    power: int = attrs.field(
        default=3,
        converter=lambda v: as_int("PolynomialDecayScheduler", "power", v),
        validator=_check_power,
    )

    def compute_sparsity(self, step_count: int, prev_sparsity: float, config: Any) -> float:
        matches = (self.update_steps == step_count).nonzero()
        if matches.numel() == 0:
            return prev_sparsity
        initial, target = initial_and_target(config)
        n = self.update_steps.numel()
        t = 1.0 if n == 1 else matches[0].item() / (n - 1)
        return target + (initial - target) * (1.0 - t) ** self.power

    def last_step(self) -> int | None:
        return int(self.update_steps[-1]) if self.update_steps.numel() else 0

    def next_change(self, step_count: int, sparsity: float, config: Any) -> int | None:
        """The first update step after ``step_count`` whose sparsity differs from ``sparsity``."""
        steps = self.update_steps.tolist()
        for step in steps[bisect.bisect_right(steps, step_count):]:
            if self.compute_sparsity(step, sparsity, config) != sparsity:
                return int(step)
        return None

    def as_dict(self) -> dict[str, Any]:
        return {"update_steps": self.update_steps.tolist(), "power": self.power}


# ----------------------------------------------------------------------------------------------
# Constant sparsity, Core ML Tools' ConstantSparsityScheduler
# ----------------------------------------------------------------------------------------------


def _check_begin_step(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    check_range("ConstantSparsityScheduler", "begin_step", value, 0)


@register_scheduler
@attrs.define(eq=True)
class ConstantSparsityScheduler(PruningScheduler):
    """Jump to ``target_sparsity`` at ``begin_step`` and stay there.

    With the default ``begin_step=0`` the target is applied at the first ``step()`` call.

    Args:
        begin_step: the step (≥ 0) from which the target sparsity applies.
    """

    kind: ClassVar[str] = "constant"

    begin_step: int = attrs.field(
        converter=lambda v: as_int("ConstantSparsityScheduler", "begin_step", v),
        validator=_check_begin_step,
    )

    def compute_sparsity(self, step_count: int, prev_sparsity: float, config: Any) -> float:
        if step_count >= self.begin_step:
            return initial_and_target(config)[1]
        return prev_sparsity

    def last_step(self) -> int | None:
        return max(self.begin_step, 1)

    def next_change(self, step_count: int, sparsity: float, config: Any) -> int | None:
        """``begin_step`` (or the next step, once past it) unless ``sparsity`` is already the target."""
        if initial_and_target(config)[1] == sparsity:
            return None
        return max(step_count + 1, self.begin_step)

    def as_dict(self) -> dict[str, Any]:
        return {"begin_step": self.begin_step}


