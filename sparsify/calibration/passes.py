"""Forward-pass plumbing shared by the layer-wise calibration (`sparsify.calibration.layer_inputs`, `.chain`).

Hooks that stop a forward early, substitute the new weights of modules already pruned in the current update
(the pruned parameter through its masked attribute, a bias by swapping its data for the call only), switch the
model to ``eval()`` for a pass, and (re-exported from `sparsify.calibration.merge`) concatenate calibration
items into fewer, larger forwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch
from torch import nn

from ..masking import MaskHook
from .merge import merged

__all__ = [
    "MaskedWeight", "PrunedLayer", "Replacements", "StopForward", "bind", "columns_size", "evaluating", "merged",
    "swapped",
]

# merging calibration items is sparsify.calibration.merge; imported here for old callers


class PrunedLayer(Protocol):
    """What a pass reads of one pruned module (a criterion's `sparsify.criteria.TargetView` is one): typed here, so
    the calibration package needs nothing of the criteria that use it."""

    @property
    def module(self) -> nn.Module:
        """The pruned module."""

    @property
    def param_name(self) -> str:
        """The pruned parameter's name (``"weight"``)."""


class MaskedWeight:
    """A pruned layer's new weight as its later passes see it, ``where(keep, weight, 0)``, made only for the call
    that reads it: an update keeps the ``bool`` mask and, for SparseGPT, the new values — not also a masked
    float copy of every layer it has pruned so far.

    New values (`compact`) are held as the kept entries only, ``weight[keep]``: an update holds every pruned
    layer's new values until it ends (so an interrupted update leaves the model as it was), and at 50 %
    sparsity this halves them; `write` puts them into the parameter, `__call__` rebuilds the masked weight.
    New values that are already zero where the mask prunes (``zeroed``) serve the next pass as they are, and
    are compacted after it (`compacted`)."""

    def __init__(self, keep: torch.Tensor, weight: torch.Tensor, kept: torch.Tensor | None = None,
                 *, zeroed: bool = False) -> None:
        self.keep = keep
        self.weight = weight  # the full tensor, or only a stand-in for its shape, dtype and device when `kept`
        self.kept = kept
        self.zeroed = zeroed  # `weight` is already zero wherever `keep` is False

    @classmethod
    def compact(cls, keep: torch.Tensor, weight: torch.Tensor) -> MaskedWeight:
        """Hold only ``weight``'s kept entries (``weight`` is a new tensor the caller gives up)."""
        kept = _select_kept(weight, keep)
        return cls(keep, torch.empty((), dtype=weight.dtype, device=weight.device).expand(weight.shape), kept)

    def compacted(self) -> MaskedWeight:
        """This stand-in holding its kept entries only (itself if it does already, or holds no new values)."""
        return MaskedWeight.compact(self.keep, self.weight) if self.zeroed and self.kept is None else self

    def __call__(self) -> torch.Tensor:
        if self.kept is None:
            return self.weight if self.zeroed else torch.where(self.keep, self.weight, 0.0)
        full = torch.zeros(self.weight.shape, dtype=self.weight.dtype, device=self.weight.device)
        return full.masked_scatter_(self.keep.expand(full.shape), self.kept)

    def write(self, param: torch.Tensor, keep: torch.Tensor) -> None:
        """Set ``param`` to these values where ``keep`` (the refined mask, expanded), leaving it elsewhere."""
        keep = keep.expand(param.shape)
        if self.kept is None:
            param.copy_(torch.where(keep, self.weight.to(param.device, param.dtype), param))
        else:
            param.masked_scatter_(keep, self.kept.to(param.device, param.dtype))


_NUMPY_FLOATS = (torch.float32, torch.float64, torch.float16)


def _select_kept(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``weight[keep]`` (``keep`` of ``weight``'s shape): NumPy's boolean indexing on the CPU, which takes about
    two thirds of ``torch.masked_select``'s time there."""
    if weight.device.type == "cpu" and keep.shape == weight.shape and weight.dtype in _NUMPY_FLOATS:
        values = weight.detach().contiguous().numpy()[keep.contiguous().numpy()]
        return torch.from_numpy(values)
    return torch.masked_select(weight, keep)

#: module name → parameter name → its stand-in (the pruned parameter as a `MaskedWeight`, a bias as a tensor)
Replacements = Mapping[str, Mapping[str, "torch.Tensor | MaskedWeight"]]


class StopForward(Exception):
    """Raised by a pre-hook once every module of a stage has seen its input: the rest of the forward is moot."""


def bind(function: Callable[..., None], name: str) -> Callable[..., None]:
    """A forward (pre-)hook calling ``function(name, module, args)``."""

    def hook(module: nn.Module, args: tuple[Any, ...], *_: Any) -> None:
        function(name, module, args)

    return hook


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``eval()`` mode for a pass, then each module's own mode back."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


@contextlib.contextmanager
def swapped(
    targets: Mapping[str, PrunedLayer],
    replaced: Replacements,
    active: Callable[[], bool] = lambda: True,
) -> Iterator[None]:
    """While inside, every call of a module in ``replaced`` (name → parameter name → tensor) uses those tensors
    (when ``active()``): the pruned parameter through its masked attribute, any other (a bias) by swapping its
    data for that call only. Everything is restored on exit, also after an exception."""
    saved: dict[tuple[str, str], torch.Tensor] = {}

    def swap(name: str, module: nn.Module, _args: tuple[Any, ...]) -> None:
        if not active():
            return
        for key, value in replaced[name].items():
            if key == targets[name].param_name:
                setattr(module, key, value() if isinstance(value, MaskedWeight) else value)
            else:
                param = getattr(module, key)
                saved.setdefault((name, key), param.data)
                assert isinstance(value, torch.Tensor)
                param.data = value

    def restore(name: str, module: nn.Module, _args: tuple[Any, ...]) -> None:
        for key in list(replaced[name]):
            data = saved.pop((name, key), None)
            if data is not None:
                getattr(module, key).data = data

    handles = []
    for name in replaced:
        module = targets[name].module
        handles += [module.register_forward_pre_hook(bind(swap, name)),
                    module.register_forward_hook(bind(restore, name))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for (name, key), data in saved.items():
            getattr(targets[name].module, key).data = data
        for name in replaced:
            _refresh(targets[name])


def _refresh(target: PrunedLayer) -> None:
    """Show the module's own masked weight again after a pass that substituted it."""
    for hook in target.module._forward_pre_hooks.values():
        if isinstance(hook, MaskHook) and hook._tensor_name == target.param_name:
            hook.refresh(target.module)


def columns_size(module: nn.Module, inputs: torch.Tensor) -> int:
    """How many floats the layer's input columns take (an unfolded convolution input is larger)."""
    if isinstance(module, nn.Conv2d):
        return inputs.numel() * math.prod(module.kernel_size) // math.prod(module.stride)
    if isinstance(module, nn.Conv1d):
        return inputs.numel() * module.kernel_size[0] // module.stride[0]
    return inputs.numel()
