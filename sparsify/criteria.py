r"""Criteria: how important is each weight?

A criterion is a small attrs class (a *spec*: its parameters only) with two pure methods:

* `Criterion.update` ``(state, weight, grad) -> state`` — called once per optimizer step with
  the weight the model used (``weight_orig`` with the mask applied) and its gradient;
* `Criterion.scores` ``(state, weight) -> scores`` — element scores, higher = keep.

The state (a tensor per module, or ``None``) is owned by the pruner and saved in its
``state_dict()``, so a resumed run continues the moving averages exactly. Criteria are registered
by ``kind`` and built from a string (``"snip_momentum"``) or a dict (``{"kind": "snip_momentum",
"decay": 0.9}``) with `criterion_from_dict`.

=================  =======================================  ===========================================
``kind``           score                                    notes
=================  =======================================  ===========================================
``magnitude``      ``|W|``                                  absolute value: INC once used signed ``W``
                                                            (issue #592), pruning large negative weights
``gradient``       ``|G|`` (latest step)                    needs a backward pass before pruning
``snip``           ``|W ⊙ G|`` (latest step)                SNIP's saliency, re-evaluated at each
                                                            pruning step (not only at initialisation)
``snip_momentum``  ``S ← decay·S + gain·|W ⊙ G|``           INC's default; ``decay=0.9``, ``gain=1.0``
=================  =======================================  ===========================================

Snip-momentum coefficients: INC's code computes ``S ← 0.9·S + 1.0·|W⊙G|`` (``alpha=0.9`` multiplies
the old score, ``beta=1.0`` the new term); its README prints them the other way round
(``S = 1.0·S + 0.9·|W⊙G|``). The defaults here are the code's. ``decay`` multiplies the old score,
``gain`` the new term.

Scores use the *masked* weight (pruned entries are zero) and a gradient that is zero where the mask
is (the engine masks the forward pass), so pruned weights score 0 and masks only grow, as in INC and
TF-MOT.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from ._checks import as_float, check_range

__all__ = [
    "Criterion",
    "GradientCriterion",
    "MagnitudeCriterion",
    "SnipCriterion",
    "SnipMomentumCriterion",
    "criterion_from_dict",
    "criterion_kinds",
    "register_criterion",
]

_CRITERIA: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: make ``cls`` constructible from ``"kind"`` or ``{"kind": kind, ...}``."""
    if cls.kind in _CRITERIA and _CRITERIA[cls.kind] is not cls:
        raise ValueError(f"a criterion of kind {cls.kind!r} is already registered: {_CRITERIA[cls.kind]}")
    _CRITERIA[cls.kind] = cls
    return cls


def criterion_kinds() -> tuple[str, ...]:
    """The ``kind`` names `criterion_from_dict` understands."""
    return tuple(sorted(_CRITERIA))


@attrs.define(eq=True, frozen=True)
class Criterion(abc.ABC):
    """Base class: subclasses set ``kind`` and implement `scores` (and `update`)."""

    kind: ClassVar[str] = ""
    needs_gradients: ClassVar[bool] = False

    def update(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
        """Fold one optimizer step's gradient into ``state``; returns the new state."""
        return state

    @abc.abstractmethod
    def scores(self, state: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        """Element scores of ``weight``'s shape (higher = keep)."""

    def as_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **parameters}``; `criterion_from_dict` reverses it."""
        return {"kind": self.kind, **attrs.asdict(self, recurse=False)}


def _need_state(criterion: Criterion, state: torch.Tensor | None) -> torch.Tensor:
    if state is None:
        raise RuntimeError(
            f"criterion {criterion.kind!r} has seen no gradient yet: run loss.backward() before the pruning step "
            f"(pruner.step() after optimizer.step(), or the on_before_optimizer_step callback)"
        )
    return state


@register_criterion
@attrs.define(eq=True, frozen=True)
class MagnitudeCriterion(Criterion):
    """``|W|``."""

    kind: ClassVar[str] = "magnitude"

    def scores(self, state: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        return weight.detach().abs()


@register_criterion
@attrs.define(eq=True, frozen=True)
class GradientCriterion(Criterion):
    """``|G|`` of the latest optimizer step."""

    kind: ClassVar[str] = "gradient"
    needs_gradients: ClassVar[bool] = True

    def update(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.detach().abs().float()

    def scores(self, state: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        return _need_state(self, state)


@register_criterion
@attrs.define(eq=True, frozen=True)
class SnipCriterion(Criterion):
    """``|W ⊙ G|`` of the latest optimizer step."""

    kind: ClassVar[str] = "snip"
    needs_gradients: ClassVar[bool] = True

    def update(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (weight.detach().float() * grad.detach().float()).abs()

    def scores(self, state: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        return _need_state(self, state)


def _coefficient(field: str):
    def convert(value: Any) -> float:
        value = as_float("SnipMomentumCriterion", field, value)
        check_range("SnipMomentumCriterion", field, value, 0.0)
        return value

    return convert


@register_criterion
@attrs.define(eq=True, frozen=True)
class SnipMomentumCriterion(Criterion):
    """``S ← decay·S + gain·|W ⊙ G|`` each optimizer step (``S₀ = 0``); INC's ``snip_momentum``.

    Args:
        decay: multiplies the previous score (INC's ``alpha``, 0.9).
        gain: multiplies the new ``|W ⊙ G|`` (INC's ``beta``, 1.0).
    """

    kind: ClassVar[str] = "snip_momentum"
    needs_gradients: ClassVar[bool] = True

    decay: float = attrs.field(default=0.9, converter=_coefficient("decay"))
    gain: float = attrs.field(default=1.0, converter=_coefficient("gain"))

    def update(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        new = (weight.detach().float() * grad.detach().float()).abs()
        if state is None:
            return new.mul_(self.gain)
        return state.mul(self.decay).add_(new, alpha=self.gain)

    def scores(self, state: torch.Tensor | None, weight: torch.Tensor) -> torch.Tensor:
        return _need_state(self, state)


def criterion_from_dict(data: str | Mapping[str, Any] | Criterion) -> Criterion:
    """Build a criterion from its kind (``"snip"``), a dict (``{"kind": "snip_momentum", "decay": 0.8}``)
    or return an instance unchanged. Unknown kinds and keys are errors that name them."""
    if isinstance(data, Criterion):
        return data
    if isinstance(data, str):
        data = {"kind": data}
    if not isinstance(data, Mapping):
        raise TypeError(f"criterion must be a kind name, a dict or a Criterion, got {type(data).__name__}: {data!r}")
    fields = dict(data)
    kind = fields.pop("kind", None)
    cls = _CRITERIA.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"criterion kind={kind!r} is unknown: allowed kinds are {', '.join(criterion_kinds())}")
    known = {a.name for a in attrs.fields(cls) if a.init}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(map(repr, unknown))} for criterion {kind!r}: allowed keys are "
            f"{', '.join(sorted(known)) or '(none)'}"
        )
    return cls(**fields)
