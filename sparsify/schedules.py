"""Pruning schedules: how sparse should a layer be at a given training step?

A scheduler is a small attrs class with one job, `PruningScheduler.compute_sparsity`, whose
contract is Core ML Tools' ``compute_sparsity(step_count, prev_sparsity, config)``: the pruner counts
its ``step()`` calls from 1 and asks the scheduler for each layer's sparsity; returning
``prev_sparsity`` means "no change at this step", and the pruner only recomputes masks when the
value changes.

Schedulers are registered by a short ``kind`` name so that configs written as dicts or YAML can name
them; the two Core ML Tools schedulers are also recognised from their fields alone
(``update_steps`` → polynomial decay, ``begin_step`` → constant), exactly as Core ML Tools does.
"""

from __future__ import annotations

import abc
import itertools
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from ._checks import as_int, check_range, field_error

__all__ = [
    "ConstantSparsityScheduler",
    "PolynomialDecayScheduler",
    "PruningScheduler",
    "initial_and_target",
    "register_scheduler",
    "scheduler_from_dict",
    "scheduler_kinds",
]

_SCHEDULERS: dict[str, type[PruningScheduler]] = {}


def register_scheduler(cls: type[PruningScheduler]) -> type[PruningScheduler]:
    """Class decorator: make ``cls`` constructible from ``{"kind": cls.kind, ...}``."""
    if cls.kind in _SCHEDULERS and _SCHEDULERS[cls.kind] is not cls:
        raise ValueError(f"a scheduler of kind {cls.kind!r} is already registered: {_SCHEDULERS[cls.kind]}")
    _SCHEDULERS[cls.kind] = cls
    return cls


def scheduler_kinds() -> tuple[str, ...]:
    """The ``kind`` names that `scheduler_from_dict` understands."""
    return tuple(sorted(_SCHEDULERS))


def initial_and_target(config: Any) -> tuple[float, float]:
    """``(initial_sparsity, target_sparsity)`` of a config; initial defaults to 0."""
    target = getattr(config, "target_sparsity", None)
    if target is None:
        raise ValueError(
            f"{type(config).__name__} has no target_sparsity: schedulers need a config that defines it."
        )
    return float(getattr(config, "initial_sparsity", 0.0)), float(target)


@attrs.define(eq=True)
class PruningScheduler(abc.ABC):
    """Base class of all schedulers.

    Subclasses implement `compute_sparsity` and may override `last_step` so the pruner
    can tell whether a schedule has finished.
    """

    kind: ClassVar[str] = ""

    @abc.abstractmethod
    def compute_sparsity(self, step_count: int, prev_sparsity: float, config: Any) -> float:
        """Sparsity for ``step_count`` (first ``step()`` is 1); ``prev_sparsity`` means no change."""

    def last_step(self) -> int | None:
        """The step at which the final sparsity is reached, or ``None`` if open-ended."""
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON/YAML-serialisable form; `scheduler_from_dict` reverses it."""
        return {"kind": self.kind, **attrs.asdict(self, recurse=False)}


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
        raise field_error(owner, field, steps, "at least one step is needed, or the schedule never prunes")
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
        return int(self.update_steps[-1])

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

    def as_dict(self) -> dict[str, Any]:
        return {"begin_step": self.begin_step}


# ----------------------------------------------------------------------------------------------
# From dicts
# ----------------------------------------------------------------------------------------------


def scheduler_from_dict(data: Mapping[str, Any] | PruningScheduler) -> PruningScheduler:
    """Build a scheduler from a dict.

    ``{"kind": name, ...}`` picks a registered scheduler by name. Without ``kind`` the Core ML Tools
    rule applies: ``update_steps`` (+ optional ``power``) → `PolynomialDecayScheduler`,
    ``begin_step`` → `ConstantSparsityScheduler`. Unknown keys are an error that names them.
    """
    if isinstance(data, PruningScheduler):
        return data
    if not isinstance(data, Mapping):
        raise TypeError(f"scheduler must be a dict or a PruningScheduler, got {type(data).__name__}: {data!r}")
    fields = dict(data)
    kind = fields.pop("kind", None)
    if kind is None:
        if "update_steps" in fields:
            kind = PolynomialDecayScheduler.kind
        elif "begin_step" in fields:
            kind = ConstantSparsityScheduler.kind
        else:
            raise ValueError(
                f"cannot tell which scheduler {dict(data)!r} describes: give 'kind' (one of "
                f"{', '.join(scheduler_kinds())}), or 'update_steps' (polynomial) or 'begin_step' (constant)"
            )
    cls = _SCHEDULERS.get(kind)
    if cls is None:
        raise ValueError(f"scheduler kind={kind!r} is unknown: allowed kinds are {', '.join(scheduler_kinds())}")
    known = {a.name for a in attrs.fields(cls) if a.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for {cls.__name__}: allowed keys are "
            f"{', '.join(sorted(known))}"
        )
    return cls(**fields)
