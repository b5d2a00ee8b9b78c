"""The in-place masking mode's once-per-optimizer-step work, shared by every in-place mask.

One global ``torch.optim`` post-step hook (registered while in-place masks exist) finds, for each stepped
parameter, the `sparsify.masking.MaskHook` bound to it and lets it put its zeros back
(``MaskHook.after_step``). Parameters are looked up by ``id`` in a registry of weak references, so a
collected module unregisters itself and nothing here keeps a model alive.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._mask_ops import select_into
from ._sharding import is_sharded, local
from .mask_layout import orig_name


class MaskHook(Protocol):
    """What this module needs of `sparsify.masking.MaskHook` (a protocol: masking imports this module)."""

    _tensor_name: str

    def bound_module(self) -> nn.Module | None: ...

    def after_step(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None: ...

    def adopt_sharding(self, module: nn.Module) -> None: ...

__all__ = ["ZERO_PRESERVING", "register_inplace", "still_settled", "unregister_inplace", "zero_state"]

_INPLACE: dict[int, list[weakref.ref[MaskHook]]] = {}  # id(parameter) -> the in-place hooks bound to it
_optimizer_hook: list[torch.utils.hooks.RemovableHandle] = []
_seen_sharded: set[int] = set()  # ids of sharded parameters found to belong to no in-place mask


# Optimizers whose update of an entry is exactly zero when that entry's weight, gradient and per-entry state
# (momentum, moments) are zero, whatever the other entries hold: exact types only, a subclass may change the math.
# Adafactor keeps no per-entry state for matrices (row and column statistics): its update is the gradient times
# a finite factor (the variance estimate is clamped at eps1²), so a zero gradient moves nothing.
ZERO_PRESERVING = tuple(
    getattr(torch.optim, name)
    for name in ("SGD", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Adagrad", "Adadelta", "ASGD", "Rprop",
                 "Adafactor")
    if hasattr(torch.optim, name)
)


# What `zero_state` zeroed: the number of state entries of the parameter, and its per-entry tensors by key
Settled = tuple[int, list[tuple[Any, "weakref.ref[torch.Tensor]"]]]


def zero_state(optimizer: torch.optim.Optimizer, param: torch.Tensor, mask: torch.Tensor) -> Settled:
    """Zero ``optimizer``'s per-entry state of ``param`` (momentum, moments: tensors of the parameter's shape)
    where ``mask`` (this rank's part, when sharded) is ``False``; return the record `still_settled` checks."""
    state = optimizer.state.get(param, {})
    entries = [(key, value) for key, value in state.items()
               if isinstance(value, torch.Tensor) and value.shape == param.shape]
    for _, tensor in entries:
        part = local(tensor)
        select_into(part, part, mask, keep_scratch=False)
    return len(state), [(key, weakref.ref(tensor)) for key, tensor in entries]


def still_settled(record: Settled, optimizer: torch.optim.Optimizer, param: torch.Tensor) -> bool:
    """Whether ``optimizer``'s state of ``param`` is still the one `zero_state` zeroed: as many entries, the same
    per-entry tensors under the same keys. Identity checks only: this runs after every step of every
    in-place parameter."""
    state = optimizer.state.get(param)
    if state is None or len(state) != record[0]:
        return False
    return all(state.get(key) is ref() for key, ref in record[1])


def _rezero_after_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """Global optimizer post-step hook: put the zeros of in-place masks back into the stepped parameters."""
    if not _INPLACE:
        return
    unknown = False
    for group in optimizer.param_groups:
        for param in group["params"]:
            refs = _INPLACE.get(id(param))
            if refs is None:
                unknown = unknown or (is_sharded(param) and id(param) not in _seen_sharded)
                continue
            for ref in refs:
                hook = ref()
                module = hook.bound_module() if hook is not None else None
                if hook is not None and module is not None \
                        and module._parameters.get(orig_name(hook._tensor_name)) is param:
                    hook.after_step(module, optimizer)
                    break
    if unknown:
        _adopt_sharded(optimizer)


def _adopt_sharded(optimizer: torch.optim.Optimizer) -> None:
    """An optimizer stepped sharded parameters no in-place mask knows: FSDP2 sharded the model after the masks
    were installed. Each mask whose parameter it replaced moves its hooks there and zeroes the parameter and the
    optimizer's state at its pruned entries now (this first step's gradient was not masked; per-entry
    optimizers updated the kept entries exactly as with a masked one)."""
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for refs in list(_INPLACE.values()):
        for ref in refs:
            hook = ref()
            module = hook.bound_module() if hook is not None else None
            if hook is None or module is None:
                continue
            param = module._parameters.get(orig_name(hook._tensor_name))
            if is_sharded(param) and id(param) in stepped and id(param) not in _INPLACE:
                hook.adopt_sharding(module)
                hook.after_step(module, optimizer)
    _seen_sharded.update(i for i in stepped if i not in _INPLACE)


def register_inplace(param: torch.Tensor, hook: MaskHook) -> None:
    """Re-zero ``param`` through ``hook`` after every optimizer step that holds it."""
    for key in [k for k, refs in _INPLACE.items() if all(r() is None for r in refs)]:
        del _INPLACE[key]  # hooks of modules that were garbage-collected
    refs = _INPLACE.setdefault(id(param), [])
    if not any(r() is hook for r in refs):
        refs.append(weakref.ref(hook))
    if not _optimizer_hook:
        _optimizer_hook.append(register_optimizer_step_post_hook(_rezero_after_step))


def unregister_inplace(param: torch.Tensor | None, hook: MaskHook) -> None:
    """Undo `register_inplace`; the global hook goes with the last in-place mask."""
    if param is not None:
        refs = [r for r in _INPLACE.get(id(param), []) if r() is not None and r() is not hook]
        if refs:
            _INPLACE[id(param)] = refs
        else:
            _INPLACE.pop(id(param), None)
    if not _INPLACE and _optimizer_hook:
        _optimizer_hook.pop().remove()


def version_key(param: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, int, int]:
    """Which parameter and mask objects, at which versions: an in-place write to either (or to a view of it, which
    shares its counter) changes its ``_version`` — what `sparsify.masking.MaskHook.zero_pruned` compares to skip
    zeroing what nothing wrote to. (A write through ``.data`` changes no version: the bake zeroes regardless.)"""
    return id(param), param._version, id(mask), mask._version
