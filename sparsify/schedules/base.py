"""Pruning schedules: how sparse should a layer be at a given training step?

A scheduler is a small attrs class with one job, `PruningScheduler.compute_sparsity`, whose
contract is Core ML Tools' ``compute_sparsity(step_count, prev_sparsity, config)``: the pruner counts
its ``step()`` calls from 1 and asks the scheduler for each layer's sparsity; returning
``prev_sparsity`` means "no change at this step", and the pruner only recomputes masks when the
value changes. `PruningScheduler.next_change` says when that next happens, so the pruner (and the criteria
that prepare for an update, through ``PrunerView.next_update_step``) never probe future steps: every
built-in schedule answers exactly from its own steps, and the base class's fallback for a user schedule
probes up to its `PruningScheduler.last_step` (or `PROBE_WINDOW` steps when it has none).

Schedulers are registered by a short ``kind`` name so that configs written as dicts or YAML can name
them; the two Core ML Tools schedulers are also recognised from their fields alone
(``update_steps`` → polynomial decay, ``begin_step`` → constant), exactly as Core ML Tools does.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from .._kinds import build

__all__ = [
    "PROBE_WINDOW",
    "PruningScheduler",
    "initial_and_target",
    "register_scheduler",
    "scheduler_from_dict",
    "scheduler_kinds",
]

_SCHEDULERS: dict[str, type[PruningScheduler]] = {}

#: how many steps ahead the fallback `PruningScheduler.next_change` looks for an open-ended user schedule
#: (``last_step() is None``) that does not implement ``next_change`` itself; beyond it, it answers ``None``
PROBE_WINDOW = 10_000


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
    """``(initial_sparsity, final sparsity)`` of a config; initial defaults to 0.

    The final sparsity is the config's ``final_sparsity`` where it has one (``n / m`` with an n:m ratio, as
    in Core ML Tools), else its ``target_sparsity``.
    """
    target = getattr(config, "final_sparsity", getattr(config, "target_sparsity", None))
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

    def next_change(self, step_count: int, sparsity: float, config: Any) -> int | None:
        """The first step after ``step_count`` at which `compute_sparsity` returns something other than
        ``sparsity`` (the layer's sparsity now, kept until then); ``None``: never.

        The built-in schedules answer exactly from their own steps. This fallback, for a user schedule,
        asks `compute_sparsity` step by step up to `last_step` — or `PROBE_WINDOW` steps ahead when that
        is ``None`` — so a user schedule with many steps may override it.
        """
        last = self.last_step()
        horizon = step_count + PROBE_WINDOW if last is None else last
        for step in range(step_count + 1, horizon + 1):
            if self.compute_sparsity(step, sparsity, config) != sparsity:
                return step
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON/YAML-serialisable form; `scheduler_from_dict` reverses it."""
        return {"kind": self.kind, **attrs.asdict(self, recurse=False)}


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
            kind = "polynomial"
        elif "begin_step" in fields:
            kind = "constant"
        else:
            raise ValueError(
                f"cannot tell which scheduler {dict(data)!r} describes: give 'kind' (one of "
                f"{', '.join(scheduler_kinds())}), or 'update_steps' (polynomial) or 'begin_step' (constant)"
            )
    cls = _SCHEDULERS.get(kind)
    if cls is None:
        raise ValueError(f"scheduler kind={kind!r} is unknown: allowed kinds are {', '.join(scheduler_kinds())}")
    return build(cls, fields, cls.__name__)
