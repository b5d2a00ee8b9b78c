"""Install, update and bake weight masks on modules.

The layout follows ``torch.nn.utils.prune`` and Core ML Tools, so checkpoints and tools that know
those names keep working:

* ``<name>_orig`` — the trained ``nn.Parameter`` (same storage as the original weight);
* ``<name>_mask`` — a ``bool`` buffer (``True`` = keep), shaped like the pattern's groups, e.g.
  ``[Co, 1, 1, 1]`` for per-channel pruning of a conv weight; it broadcasts against the weight;
* ``<name>_amount`` — a 0-d float buffer with the scheduled sparsity;
* ``<name>`` — a plain tensor attribute ``where(mask, orig, 0)``, refreshed by a forward pre-hook;
* ``module.pruning_method`` — the hook object, a `torch.nn.utils.prune.BasePruningMethod`,
  so ``torch.nn.utils.prune.is_pruned`` and ``torch.nn.utils.prune.remove`` work on it.

Differences from Core ML Tools, each for a reason:

* The mask is ``bool`` (1 byte per weight) instead of float32 (4 bytes), and it is applied with
  ``torch.where`` rather than a multiply, so no float copy of the mask is ever made.
* Outside a forward pass ``module.<name>`` is always the *current* masked weight, detached: masks
  refresh it when they change (so ``report()`` is right straight after ``step()``), and a forward
  post-hook detaches it after each forward (so deep copies and pickles never meet a non-leaf tensor).
* A module whose weight is read by its parent rather than by its own ``forward`` (the ``out_proj``
  of ``nn.MultiheadAttention``) gets the same refresh hooks on that parent, so it trains correctly
  instead of failing on the second backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

__all__ = [
    "MaskHook",
    "bake_mask",
    "install_mask",
    "is_masked",
    "masked_weight",
    "set_mask",
    "uninstall_mask",
]


def masked_weight(orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``orig`` with the entries where ``mask`` is ``False`` set to zero (gradients masked too)."""
    return torch.where(mask, orig, 0.0)  # a Python scalar: no tensor allocated, dtype follows orig


class MaskHook(prune.BasePruningMethod):
    """Forward pre-hook that sets ``module.<name> = where(<name>_mask, <name>_orig, 0)``.

    Also stored as ``module.pruning_method``. ``amount`` is the scheduled sparsity; the remaining
    fields describe the pattern for reports and for the Core ML Tools–style introspection that
    existing scripts do (``module.pruning_method.amount`` and friends).
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, name: str, amount: float = 0.0, **pattern: Any) -> None:
        self._tensor_name = name
        self.amount = amount
        self.block_size = pattern.get("block_size", 1)
        self.granularity = pattern.get("granularity", "per_scalar")
        self.n_m_ratio = pattern.get("n_m_ratio")
        self.dim = pattern.get("dim", 1)
        self.extra_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.param_position = 0  # where the parameter stood in module._parameters, to restore it there

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        """Masks are computed by the pruner, not by the hook: this keeps the mask as it is."""
        return default_mask

    def apply_mask(self, module: nn.Module) -> torch.Tensor:
        name = self._tensor_name
        return masked_weight(getattr(module, name + "_orig"), getattr(module, name + "_mask"))

    def refresh(self, module: nn.Module) -> None:
        """Recompute ``module.<name>`` without building an autograd graph."""
        with torch.no_grad():
            setattr(module, self._tensor_name, self.apply_mask(module))

    def detach(self, module: nn.Module, *args: Any) -> None:
        """Forward post-hook: drop the autograd graph from the stored attribute."""
        current = module.__dict__.get(self._tensor_name)
        if isinstance(current, torch.Tensor) and current.grad_fn is not None:
            setattr(module, self._tensor_name, current.detach())

    def after_load(self, module: nn.Module, incompatible_keys: Any) -> None:
        """load_state_dict post-hook: take the loaded amount and show the loaded mask at once."""
        self.amount = float(getattr(module, self._tensor_name + "_amount"))
        self.refresh(module)

    def remove(self, module: nn.Module, bake: bool = True) -> nn.Module:
        """Remove everything `install_mask` added, leaving a plain parameter.

        With ``bake=True`` (what ``torch.nn.utils.prune.remove`` calls) the masked entries of the
        parameter are set to zero; with ``bake=False`` the parameter is restored untouched. The
        pre-hook entry itself is left for the caller to delete, as ``torch.nn.utils.prune.remove``
        expects.
        """
        name = self._tensor_name
        if name in module.__dict__:
            delattr(module, name)
        orig = module._parameters.pop(name + "_orig")
        mask = module._buffers.pop(name + "_mask", None)
        module._buffers.pop(name + "_amount", None)
        if bake:
            with torch.no_grad():
                orig.data = masked_weight(orig, mask).data
        for handle in self.extra_hooks:
            handle.remove()
        self.extra_hooks.clear()
        if module.__dict__.get("pruning_method") is self:
            del module.pruning_method
        module.register_parameter(name, orig)
        if not bake:  # a roll-back restores the original parameter order too
            order = list(module._parameters)
            order.insert(self.param_position, order.pop())
            module._parameters = {key: module._parameters[key] for key in order}
        return module


class _ReaderRelay:
    """Runs a child's mask hooks around its parent's forward (plain object: copies and pickles)."""

    def __init__(self, hook: MaskHook, module: nn.Module) -> None:
        self.hook = hook
        self.module = module

    def before(self, *_: Any) -> None:
        self.hook(self.module, ())

    def after(self, *_: Any) -> None:
        self.hook.detach(self.module)


def _find_hook(module: nn.Module, name: str) -> MaskHook | None:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, MaskHook) and hook._tensor_name == name:
            return hook
    return None


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    """Whether `install_mask` has been applied to ``module.<name>``."""
    return _find_hook(module, name) is not None


def install_mask(
    module: nn.Module,
    name: str,
    mask: torch.Tensor | None = None,
    amount: float = 0.0,
    *,
    reader: nn.Module | None = None,
    **pattern: Any,
) -> MaskHook:
    """Replace ``module.<name>`` by ``<name>_orig`` × ``<name>_mask`` applied before every forward.

    Args:
        module: the module owning the parameter.
        name: the parameter name, usually ``"weight"``.
        mask: initial ``bool`` mask (broadcastable to the parameter); all-``True`` when ``None``.
            A mask tensor shared with another module (tied weights) stays shared.
        amount: the scheduled sparsity to record in ``<name>_amount``.
        reader: a parent module that reads ``module.<name>`` in its own forward (as
            ``nn.MultiheadAttention`` does with ``out_proj.weight``); it gets the refresh hooks too.
        pattern: descriptive fields stored on the hook (``block_size``, ``granularity``, ...).
    """
    if is_masked(module, name):
        raise ValueError(f"{type(module).__name__}.{name} already has a mask installed")
    param = getattr(module, name)
    if not isinstance(param, nn.Parameter):
        raise TypeError(f"{type(module).__name__}.{name} must be an nn.Parameter, got {type(param).__name__}")
    if mask is None:
        mask = torch.ones_like(param, dtype=torch.bool)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask for {type(module).__name__}.{name} must be bool, got {mask.dtype}")

    hook = MaskHook(name, amount, **pattern)
    hook.param_position = list(module._parameters).index(name)
    del module._parameters[name]
    module.register_parameter(name + "_orig", param)
    try:
        module.register_buffer(name + "_mask", mask.to(param.device))
        module.register_buffer(name + "_amount", torch.tensor(float(amount), device=param.device))
        module.register_forward_pre_hook(hook)
        hook.extra_hooks.append(module.register_forward_hook(hook.detach))
        hook.extra_hooks.append(module.register_load_state_dict_post_hook(hook.after_load))
        if reader is not None:
            relay = _ReaderRelay(hook, module)
            hook.extra_hooks.append(reader.register_forward_pre_hook(relay.before))
            hook.extra_hooks.append(reader.register_forward_hook(relay.after))
        module.pruning_method = hook
        hook.refresh(module)
    except BaseException:  # leave the module exactly as it was
        _detach_pre_hook(module, hook)
        hook.remove(module, bake=False)
        raise
    return hook


def set_mask(module: nn.Module, name: str, mask: torch.Tensor, amount: float | None = None) -> None:
    """Overwrite the mask in place (tied modules sharing it see the change) and refresh the weight."""
    hook = _require_hook(module, name)
    buffer: torch.Tensor = getattr(module, name + "_mask")
    buffer.copy_(mask.to(device=buffer.device, dtype=torch.bool).expand_as(buffer))
    if amount is not None:
        hook.amount = float(amount)
        getattr(module, name + "_amount").fill_(float(amount))
    hook.refresh(module)


def bake_mask(module: nn.Module, name: str = "weight") -> None:
    """Fuse the mask into a plain ``nn.Parameter`` and remove hooks and buffers."""
    _take_hook(module, name).remove(module, bake=True)


def uninstall_mask(module: nn.Module, name: str = "weight") -> None:
    """Undo `install_mask`, restoring the parameter exactly as it was (used to roll back)."""
    _take_hook(module, name).remove(module, bake=False)


def _take_hook(module: nn.Module, name: str) -> MaskHook:
    """Unregister the mask pre-hook of ``module.<name>`` and return it."""
    hook = _require_hook(module, name)
    _detach_pre_hook(module, hook)
    return hook


def _detach_pre_hook(module: nn.Module, hook: MaskHook) -> None:
    for key, registered in list(module._forward_pre_hooks.items()):
        if registered is hook:
            del module._forward_pre_hooks[key]


def _require_hook(module: nn.Module, name: str) -> MaskHook:
    hook = _find_hook(module, name)
    if hook is None:
        raise ValueError(f"{type(module).__name__}.{name} has no mask installed")
    return hook
