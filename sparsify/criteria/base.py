r"""The criterion contract: how important is each weight?

A criterion has two halves:

* the **spec** (`Criterion`): a frozen attrs class holding only its settings, so a config records it
  (``as_dict`` / YAML / ``dry_run`` / the pruner's ``state_dict``). It is built from a kind name
  (``"snip_momentum"``) or a dict (``{"kind": "mfac", "num_grads": 128}``) through the open registry
  (`register_criterion`): the next criterion is one module;
* the **scorer** (`Scorer`), made by `Criterion.scorer` when a pruner is prepared: the runtime half that
  owns whatever the criterion remembers between steps (moving averages, recorded gradients, a Fisher
  estimate). The pruner makes one scorer per distinct criterion spec among its modules.

At a mask update the pruner calls, for the modules being updated: `Scorer.begin` (collect what the
scores need: gradients from a sampler, a Fisher), `Scorer.scores` per module (element scores, higher
= keep), then — after the pattern and scope have turned scores into masks — `Scorer.after_masks` (for
example the OBS weight update; a layer-wise criterion may return re-selected masks there, keeping each
module's count) and `Scorer.end`. Scorers see the pruner only through `PrunerView`, so
this package does not import the pruner.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs
import torch
from torch import nn

from .._kinds import spec_from_dict

if TYPE_CHECKING:
    from ..config.module import ModulePrunerConfig
    from ..patterns import Pattern

__all__ = [
    "Criterion",
    "PrunerView",
    "Scorer",
    "TargetView",
    "criterion_from_dict",
    "criterion_kinds",
    "register_criterion",
    "scorers_by_spec",
]

_CRITERIA: dict[str, type[Criterion]] = {}


class TargetView(Protocol):
    """What a scorer may read of one pruned module."""

    name: str
    module: nn.Module

    @property
    def param_name(self) -> str:
        """The pruned parameter's name (``"weight"``)."""

    @property
    def config(self) -> ModulePrunerConfig:
        """The module's config entry."""

    @property
    def pattern(self) -> Pattern:
        """The pattern the module's masks follow."""

    @property
    def orig(self) -> nn.Parameter:
        """The trained parameter (``<param>_orig``)."""

    @property
    def mask(self) -> torch.Tensor:
        """The current keep-mask, broadcastable to `orig`."""

    @property
    def sparsity_level(self) -> float:
        """The scheduled sparsity the module has now."""

    @property
    def transposed(self) -> bool:
        """The parameter is stored ``[in, out]`` (transformers' ``Conv1D``): patterns see its transpose."""


class PrunerView(Protocol):
    """What a scorer may read of the pruner."""

    @property
    def model(self) -> nn.Module: ...

    @property
    def sampler(self) -> Any: ...

    @property
    def step_count(self) -> int: ...

    @property
    def targets(self) -> Mapping[str, TargetView]: ...

    def next_update_step(self, names: list[str]) -> int | None:
        """The next step at which one of ``names`` changes sparsity, if any is scheduled."""


class Scorer(abc.ABC):
    """The runtime half of a criterion (see the module docs). Only `scores` is required."""

    #: masks only grow: a weight pruned once stays pruned (the pruner ANDs new masks with the current ones)
    monotone: ClassVar[bool] = False

    def attach(self, pruner: PrunerView, names: list[str]) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """After ``prepare()``: start watching ``names`` (gradient hooks and the like)."""

    def detach(self) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """At ``finalize()``: remove every hook; the scorer is not used again."""

    def observe_gradients(self, pruner: PrunerView) -> int:
        """Once per optimizer step, after backward: fold the new gradients in; returns modules updated."""
        return 0

    def after_step(self, pruner: PrunerView) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """After each ``step()`` (the step count advanced and masks were updated)."""

    def substeps(self, pruner: PrunerView) -> int:
        """In how many sub-steps (each with fresh scores) to reach a new sparsity; 1 for most."""
        return 1

    def begin(self, pruner: PrunerView, names: list[str]) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """Before the scores of an update of ``names`` are read."""

    @abc.abstractmethod
    def scores(self, pruner: PrunerView, name: str) -> torch.Tensor:
        """Element scores of module ``name``'s parameter (its shape; higher = keep)."""

    def reselects_alone(self, pruner: PrunerView, name: str) -> bool:
        """Whether `after_masks` re-selects module ``name``'s pruned weights from their count alone, never reading
        which ones the pattern chose (SparseGPT on single weights): the update then skips its `scores` and the
        pattern's ranking when the pattern can say that count (`sparsify.patterns.Pattern.fresh_count`)."""
        return False

    def after_masks(self, pruner: PrunerView, masks: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor] | None:
        """After the new masks of the update are known, before they are installed.

        May return replacement masks for some modules (``None``: keep them all). The pattern and scope have
        fixed how many weights each module loses; a layer-wise criterion (SparseGPT, Wanda) re-selects which,
        module by module in forward order, so each is calibrated on the inputs of the modules already pruned
        before it. A replacement must have the chosen mask's shape and number of pruned weights (checked).
        """
        return None

    def end(self) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """After an update (also when it failed): drop per-update data."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly (tensors by module name)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any], pruner: PrunerView) -> None:
        """Restore `state_dict`; validate shapes against ``pruner.targets`` and raise naming the module."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint has {sorted(state)}")


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
    """Base of criterion specs: subclasses set ``kind``, declare their settings as attrs fields and
    implement `scorer`."""

    kind: ClassVar[str] = ""
    #: needs calibration data (a sampler) or training gradients before its first update
    needs_data: ClassVar[bool] = False
    #: calibrates layer by layer on data run forward only (no loss needed; language-model defaults apply)
    layerwise: ClassVar[bool] = False

    @abc.abstractmethod
    def scorer(self) -> Scorer:
        """A fresh runtime scorer for one pruner."""

    def as_dict(self) -> dict[str, Any]:
        """``{"kind": ..., **settings}``; `criterion_from_dict` reverses it."""
        return {"kind": self.kind, **attrs.asdict(self, recurse=False)}

    def describe(self) -> str:
        """The kind with any non-default settings, for dry runs and logs."""
        changed = {
            a.name: getattr(self, a.name) for a in attrs.fields(type(self)) if getattr(self, a.name) != a.default
        }
        return self.kind + ("(" + ", ".join(f"{k}={v}" for k, v in changed.items()) + ")" if changed else "")


def criterion_from_dict(data: str | Mapping[str, Any] | Criterion) -> Criterion:
    """A criterion from its kind (``"snip"``), a dict (``{"kind": "snip_momentum", "decay": 0.8}``) or an
    instance (returned unchanged). Unknown kinds and keys are errors that name them."""
    return spec_from_dict(data, _CRITERIA, Criterion, "criterion")


def scorers_by_spec(criteria: Mapping[str, Criterion]) -> list[tuple[Criterion, Scorer, list[str]]]:
    """One scorer per distinct criterion spec among ``criteria`` (target name → its spec), with the names it
    scores in their given order: targets whose configs hold equal specs share one scorer (and its state)."""
    groups: list[tuple[Criterion, Scorer, list[str]]] = []
    for name, criterion in criteria.items():
        for spec, _, names in groups:
            if spec == criterion:
                names.append(name)
                break
        else:
            groups.append((criterion, criterion.scorer(), [name]))
    return groups
