r"""Gradient criteria (Neural Compressor's): ``gradient`` ``|G|``, ``snip`` ``|W ⊙ G|``, ``snip_momentum``.

=================  =======================================  ===========================================
``kind``           score                                    notes
=================  =======================================  ===========================================
``gradient``       ``|G|`` (latest optimizer step)          needs a backward pass before pruning
``snip``           ``|W ⊙ G|`` (latest optimizer step)      SNIP's saliency, re-evaluated at each update
``snip_momentum``  ``S ← decay·S + gain·|W ⊙ G|``           INC's default; ``decay=0.9``, ``gain=1.0``
=================  =======================================  ===========================================

Gradients come from the user's training loop: a post-accumulate-grad hook on every pruned
``weight_orig`` notes that a new gradient arrived, and once per optimizer step
(`sparsify.Pruner.observe_gradients`, or the start of ``step()``) the criterion folds in the parameter's
``.grad`` as it is then — after gradient accumulation and after DDP has averaged it across ranks, so
every rank keeps the same state. For one-shot use without training, the scorer draws gradients from the
pruner's sampler instead: ``num_batches`` batches, folded in one by one.

Snip-momentum coefficients: INC's code computes ``S ← 0.9·S + 1.0·|W⊙G|`` (``alpha=0.9`` multiplies the
old score, ``beta=1.0`` the new term); its README prints them the other way round. ``decay`` multiplies
the old score, ``gain`` the new term. Scores use the *masked* weight, so pruned weights score 0.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from .._checks import as_float, as_int, check_range
from ..calibration import as_grad_sampler
from .base import Criterion, PrunerView, Scorer, register_criterion

__all__ = ["GradientCriterion", "SnipCriterion", "SnipMomentumCriterion"]


def _masked(pruner: PrunerView, name: str) -> torch.Tensor:
    target = pruner.targets[name]
    return torch.where(target.mask, target.orig.detach(), 0.0)


def _batches(value: Any) -> int:
    value = as_int("criterion", "num_batches", value)
    check_range("criterion", "num_batches", value, 1)
    return value


class _GradientScorer(Scorer):
    """Keeps one state tensor per module, updated once per optimizer step by the spec's `update`.

    Masks only grow: a pruned weight scores 0 (its masked weight and gradient are 0), as does a live weight
    whose gradient is exactly 0 (behind a dead ReLU); among those ties the pruned ones go first.
    """

    monotone: ClassVar[bool] = True

    def __init__(self, spec: _GradientBased) -> None:
        self.spec = spec
        self.state: dict[str, torch.Tensor] = {}
        self.fresh: set[str] = set()
        self.handles: list[Any] = []

    def attach(self, pruner: PrunerView, names: list[str]) -> None:
        for name in names:
            hook = functools.partial(self._arrived, name)
            self.handles.append(pruner.targets[name].orig.register_post_accumulate_grad_hook(hook))

    def _arrived(self, name: str, param: torch.Tensor) -> None:
        self.fresh.add(name)

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.fresh.clear()

    def observe_gradients(self, pruner: PrunerView) -> int:
        updated = 0
        for name in sorted(self.fresh):
            grad = pruner.targets[name].orig.grad
            if grad is not None:
                self._fold(pruner, name, grad)
                updated += 1
        self.fresh.clear()
        return updated

    def _fold(self, pruner: PrunerView, name: str, grad: torch.Tensor) -> None:
        self.state[name] = self.spec.update(self.state.get(name), _masked(pruner, name), grad.detach())

    def begin(self, pruner: PrunerView, names: list[str]) -> None:
        missing = [name for name in names if name not in self.state]
        if not missing:
            return
        if pruner.sampler is None:
            raise RuntimeError(
                f"criterion {self.spec.kind!r} has seen no gradient for {missing}: run loss.backward() before "
                f"pruner.step() (training), or give calibration data: Pruner(model, config, sampler=GradSampler(...))"
            )
        params = [pruner.targets[name].orig for name in missing]
        sampler = as_grad_sampler(pruner.sampler)
        for grads in sampler.gradients(pruner.model, params, self.spec.num_batches, desc=self.spec.kind):
            for name, grad in zip(missing, grads):
                self._fold(pruner, name, grad)

    def scores(self, pruner: PrunerView, name: str) -> torch.Tensor:
        return self.state[name]

    def state_dict(self) -> dict[str, Any]:
        return {name: tensor.detach().clone() for name, tensor in self.state.items()}

    def load_state_dict(self, state: Mapping[str, Any], pruner: PrunerView) -> None:
        loaded: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            target = pruner.targets.get(name)
            if target is None:
                raise ValueError(
                    f"criterion state for unknown module {name!r}; prepared modules: {sorted(pruner.targets)}"
                )
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(target.orig.shape):
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(
                    f"criterion state of module {name!r} has shape {shape}, expected {tuple(target.orig.shape)} "
                    f"(the checkpoint is from another model or config)"
                )
            loaded[name] = tensor.detach().clone().to(target.orig.device)
        self.state = loaded
        self.fresh.clear()


@attrs.define(eq=True, frozen=True)
class _GradientBased(Criterion):
    needs_data: ClassVar[bool] = True

    num_batches: int = attrs.field(default=8, converter=_batches)

    def update(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The new state from one optimizer step's masked weight and gradient."""
        raise NotImplementedError

    def scorer(self) -> Scorer:
        return _GradientScorer(self)


@register_criterion
@attrs.define(eq=True, frozen=True)
class GradientCriterion(_GradientBased):
    """``|G|`` of the latest optimizer step (``num_batches``: sampler batches for one-shot use)."""

    kind: ClassVar[str] = "gradient"

    def update(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.abs().float()


@register_criterion
@attrs.define(eq=True, frozen=True)
class SnipCriterion(_GradientBased):
    """``|W ⊙ G|`` of the latest optimizer step."""

    kind: ClassVar[str] = "snip"

    def update(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (weight.float() * grad.float()).abs()


def _coefficient(field: str):
    def convert(value: Any) -> float:
        value = as_float("SnipMomentumCriterion", field, value)
        check_range("SnipMomentumCriterion", field, value, 0.0)
        return value

    return convert


@register_criterion
@attrs.define(eq=True, frozen=True)
class SnipMomentumCriterion(_GradientBased):
    """``S ← decay·S + gain·|W ⊙ G|`` each optimizer step (``S₀ = 0``); INC's ``snip_momentum``.

    Args:
        decay: multiplies the previous score (INC's ``alpha``, 0.9).
        gain: multiplies the new ``|W ⊙ G|`` (INC's ``beta``, 1.0).
    """

    kind: ClassVar[str] = "snip_momentum"

    # mypy's attrs plugin cannot type a converter that a call returns: hence ignore[misc] below
    decay: float = attrs.field(default=0.9, converter=_coefficient("decay"))  # type: ignore[misc]
    gain: float = attrs.field(default=1.0, converter=_coefficient("gain"))  # type: ignore[misc]

    def update(self, state: torch.Tensor | None, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        new = (weight.float() * grad.float()).abs()
        if state is None:
            return new.mul_(self.gain)
        return state.mul(self.decay).add_(new, alpha=self.gain)
