"""Install, update and bake weight masks on modules.

The layout follows ``torch.nn.utils.prune`` and Core ML Tools (its names spelled in `sparsify.mask_layout`):

* ``<name>_orig`` — the trained ``nn.Parameter`` (same storage as the original weight);
* ``<name>_mask`` — a ``bool`` buffer (``True`` = keep), shaped like the pattern's groups, e.g.
  ``[Co, 1, 1, 1]`` for per-channel pruning of a conv weight; it broadcasts against the weight;
* ``<name>_amount`` — a 0-d float buffer with the scheduled sparsity;
* ``<name>`` — a plain tensor attribute ``where(mask, orig, 0)``, refreshed by a forward pre-hook (in
  the in-place mode: ``<name>_orig`` itself);
* ``module.pruning_method`` — the hook object, a `torch.nn.utils.prune.BasePruningMethod`,
  so ``torch.nn.utils.prune.is_pruned`` and ``torch.nn.utils.prune.remove`` work on it.

Two modes, chosen per parameter by `install_mask` (``mode=``):

* ``"default"`` — Core ML Tools' semantics: ``<name>_orig`` keeps the trained values of pruned
  weights, so a later mask can revive them; the forward pass uses ``where(mask, orig, 0)`` and the
  gradient reaching ``<name>_orig`` is masked the same way.
* ``"inplace"`` — pruned entries are zeroed in the parameter itself; see `MaskHook` for what
  differs and when to choose it.

Differences from Core ML Tools, each for a reason:

* The mask is ``bool`` (1 byte per weight) instead of float32 (4 bytes), and no float copy of it is
  ever made: `sparsify._mask_ops.select_into` applies it as an integer multiply, bit for bit the
  result of ``torch.where(mask, orig, 0)``.
* The masked weight of a forward pass is written into the memory of the previous one when nothing
  holds that any more (no autograd graph waiting for its backward, no user reference), and the
  incoming gradient is masked in place: a training step allocates no weight-sized tensor that dense
  training would not.
* Outside a forward pass ``module.<name>`` is always the *current* masked weight, detached: masks
  refresh it when they change (so ``report()`` is right straight after ``step()``), and a forward
  post-hook detaches it after each forward (so deep copies and pickles never meet a non-leaf tensor).
* A module whose weight is read by its parent rather than by its own ``forward`` (the ``out_proj``
  of ``nn.MultiheadAttention``) gets the same refresh hooks on that parent, so it trains correctly
  instead of failing on the second backward pass.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from . import _sharding
from ._inplace import ZERO_PRESERVING, register_inplace, still_settled, unregister_inplace, version_key, zero_state
from ._mask_ops import fast_path, masked_into, select_into
from ._mask_relay import ReaderRelay
from .mask_layout import amount_name, mask_name, orig_name

__all__ = [
    "MASK_MODES",
    "MaskHook",
    "bake_mask",
    "install_mask",
    "is_masked",
    "masked_weight",
    "set_mask",
    "uninstall_mask",
]

MASK_MODES = ("default", "inplace")


def masked_weight(orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``orig`` with the entries where ``mask`` is ``False`` set to zero (gradients masked too)."""
    return torch.where(mask, orig, 0.0)  # a Python scalar: no tensor allocated, dtype follows orig


class MaskHook(prune.BasePruningMethod):
    """Forward pre-hook that sets ``module.<name> = where(<name>_mask, <name>_orig, 0)``.

    Also stored as ``module.pruning_method``. ``amount`` is the scheduled sparsity; the remaining
    fields describe the pattern for reports and for the Core ML Tools–style introspection that
    existing scripts do (``module.pruning_method.amount`` and friends).

    ``mode="inplace"`` trades Core ML Tools' semantics for the speed and memory of dense training:

    * the pruned entries of ``<name>_orig`` are set to zero whenever the mask changes, and
      ``module.<name>`` *is* that parameter, so the forward pass reads it directly (the pre-hook does
      nothing but notice, after a deep copy or unpickling, which parameter it now belongs to);
    * the gradient is masked in place once accumulated (a post-accumulate-grad hook on the parameter),
      so gradient clipping, criteria and optimizer statistics see the same gradient as in the default
      mode;
    * after every ``step()`` of any ``torch.optim.Optimizer`` holding the parameter (one global
      post-step hook, registered while in-place masks exist), the pruned entries are zeroed again:
      momentum or Adam state from before a mask change would otherwise move them. For the optimizers
      whose update of an entry is exactly zero when its weight, gradient and state are (``SGD``,
      ``Adam``, ``AdamW``, ``Adamax``, ``NAdam``, ``RAdam``, ``RMSprop``, ``Adagrad``, ``Adadelta``,
      ``ASGD``, ``Rprop``; exact classes), that first step after a mask change also zeroes the
      optimizer's per-entry state at the pruned entries, and the following steps skip the re-zeroing
      while the gradient keeps coming through the hook and the state tensors stay the same.

    What differs from the default mode:

    * **pruned weights cannot revive with their old value** — it is gone; a mask that keeps an entry
      again restarts it from zero (with zero optimizer state for the optimizers above, whatever state
      it had for others);
    * an optimizer that is not a ``torch.optim.Optimizer`` (no step hooks) leaves pruned entries moved
      until the next mask change, and a mask changed between a forward and its backward raises
      autograd's in-place error (the default mode does the same when the mask buffer changes);
    * `uninstall_mask` cannot bring zeroed values back.

    Choose it when the schedule only ever adds zeros (magnitude pruning to a target) and step time or
    memory matter; keep the default for criteria that let weights regrow, and for exact Core ML
    Tools behaviour.
    """

    PRUNING_TYPE = "unstructured"

    def __init__(self, name: str, amount: float = 0.0, *, mode: str = "default", **pattern: Any) -> None:
        if mode not in MASK_MODES:
            raise ValueError(f"mode={mode!r} is invalid: allowed values are {', '.join(map(repr, MASK_MODES))}")
        self._tensor_name = name
        self.amount = amount
        self.mode = mode
        self.block_size = pattern.get("block_size", 1)
        self.granularity = pattern.get("granularity", "per_scalar")
        self.n_m_ratio = pattern.get("n_m_ratio")
        self.tiles = pattern.get("tiles")  # NxM / n:m pattern text, for reports
        self.pattern = pattern.get("pattern")  # the pattern's description
        self.dim = pattern.get("dim", 1)
        self.extra_hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.param_position = 0  # where the parameter stood in module._parameters, to restore it there
        self._module_ref: weakref.ref[nn.Module] | None = None  # in-place mode: the module bound to
        self._grad_hook: torch.utils.hooks.RemovableHandle | None = None
        self._grad_masked = False  # in-place mode: the gradient hook ran since the last optimizer step
        self._settled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # optimizer -> zero_state's record
        # FSDP2 (`sparsify._sharding`): the parameter last refreshed against, this rank's part of the mask, and
        # what module.<name> is between forward passes (the sharded parameter, or its masked copy)
        self._param_ref: weakref.ref[torch.Tensor] | None = None
        self._mask_shard: torch.Tensor | None = None
        self._outside: torch.Tensor | None = None
        # in-place mode: `_state_key` of the parameter and mask when the pruned entries were last zeroed (or when
        # an all-True mask was installed): a refresh that finds them unchanged (no in-place write since, by their
        # version counters: a calibration pass that substituted the weight) has nothing to zero
        self._zeroed: tuple[int, int, int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_module_ref"] = state["_grad_hook"] = None  # bound again by the first forward of the copy
        state["_settled"], state["_grad_masked"] = None, False  # the copy has other parameters and optimizers
        state["_param_ref"] = state["_mask_shard"] = state["_outside"] = state["_zeroed"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("mode", "default")
        state.setdefault("_module_ref", None)
        state.setdefault("_grad_hook", None)
        state.setdefault("_grad_masked", False)
        state["_settled"] = weakref.WeakKeyDictionary()
        for key in ("_param_ref", "_mask_shard", "_outside", "_zeroed"):
            state.setdefault(key, None)
        self.__dict__.update(state)

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        name = self._tensor_name
        if self.mode == "inplace":
            if not torch.compiler.is_compiling():
                param = module._parameters.get(orig_name(name))
                ref = self._module_ref
                # the usual case in two checks: every forward pays for this hook, between cold kernels
                if module.__dict__.get(name) is not param or ref is None or ref() is not module:
                    self._follow(module, param)
            return
        orig, mask = module._parameters.get(orig_name(name)), module._buffers.get(mask_name(name))
        if orig is None or mask is None:  # held elsewhere (a reparametrization): the attribute protocol finds it
            orig, mask = getattr(module, orig_name(name)), getattr(module, mask_name(name))
        # plain attribute writes (the name is no parameter, buffer or submodule any more): a hook runs every forward
        if fast_path(orig, mask):
            module.__dict__[name] = masked_into(module.__dict__, name, orig, mask)
        else:
            module.__dict__[name] = masked_weight(orig, mask)

    def compute_mask(self, t: torch.Tensor, default_mask: torch.Tensor) -> torch.Tensor:
        """Masks are computed by the pruner, not by the hook: this keeps the mask as it is."""
        return default_mask

    def apply_mask(self, module: nn.Module) -> torch.Tensor:
        name = self._tensor_name
        return masked_weight(getattr(module, orig_name(name)), getattr(module, mask_name(name)))

    def refresh(self, module: nn.Module) -> None:
        """Bring ``module.<name>`` up to date with the mask, without building an autograd graph."""
        name = self._tensor_name
        orig, mask = getattr(module, orig_name(name)), getattr(module, mask_name(name))
        sharded = _sharding.is_sharded(orig)
        self._mask_shard = _sharding.local_part(mask, orig) if sharded else None
        self._outside = orig if sharded else None
        self._param_ref = weakref.ref(orig)
        if self.mode == "inplace":
            if sharded and self.bound_module() is module:
                self._bind(module)  # the gradient and optimizer hooks move to the sharded parameter
            self.zero_pruned(module)
            module.__dict__[name] = orig
            return
        with torch.no_grad():
            if sharded:  # between forward passes: this rank's masked shard (the forward sees the whole weight)
                shard = _sharding.local(orig.detach())
                masked = select_into(torch.empty_like(shard), shard, self._part(mask, orig))
                self._outside = _sharding.sharded_like(masked, orig)
                module.__dict__[name] = self._outside
                return
            if fast_path(orig, mask):
                setattr(module, name, masked_into(module.__dict__, name, orig.detach(), mask))
            else:
                setattr(module, name, masked_weight(orig, mask))

    def detach(self, module: nn.Module, *args: Any) -> None:
        """Forward post-hook: drop the autograd graph from the stored attribute (sharded: the whole weight)."""
        if self._outside is not None:
            module.__dict__[self._tensor_name] = self._outside
            return
        current = module.__dict__.get(self._tensor_name)
        if isinstance(current, torch.Tensor) and current.grad_fn is not None:
            module.__dict__[self._tensor_name] = current.detach()

    def after_load(self, module: nn.Module, incompatible_keys: Any) -> None:
        """load_state_dict post-hook: take the loaded amount and show the loaded mask at once."""
        self.amount = float(getattr(module, amount_name(self._tensor_name)))
        if self.mode == "inplace":
            self._bind(module)  # ``assign=True`` may have brought a new parameter object
        self.refresh(module)

    # -- in-place mode ------------------------------------------------------------------------------------------

    def _follow(self, module: nn.Module, param: torch.Tensor | None) -> None:
        """In-place pre-hook's rare path: bind to ``module`` (first forward of a copy), or read the parameter
        FSDP2 put in place for this forward, adding then the post-hook that puts the sharded one back after it
        (an unsharded model runs no post-hook)."""
        if self.bound_module() is not module:
            self._bind(module)
        name = self._tensor_name
        if param is not None and module.__dict__.get(name) is not param:
            module.__dict__[name] = param  # FSDP2 put its unsharded parameter in place for this forward
            if not any(getattr(h, "__self__", None) is self and getattr(h, "__func__", None) is MaskHook.detach
                       for h in module._forward_hooks.values()):
                self.extra_hooks.append(module.register_forward_hook(self.detach, always_call=True))

    def adopt_sharding(self, module: nn.Module) -> None:
        """Refresh against ``module``'s parameter if FSDP2 has replaced it by a sharded one since the last time."""
        param = module._parameters.get(orig_name(self._tensor_name))
        if _sharding.is_sharded(param) and (self._param_ref is None or self._param_ref() is not param):
            self.refresh(module)

    def _part(self, mask: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        """The mask for ``tensor``: this rank's part of it when ``tensor`` is sharded."""
        if not _sharding.is_sharded(tensor):
            return mask
        if self._mask_shard is None:
            self._mask_shard = _sharding.local_part(mask, tensor)
        return self._mask_shard

    def bound_module(self) -> nn.Module | None:
        """In-place mode: the module whose parameter the gradient and optimizer hooks act on."""
        return self._module_ref() if self._module_ref is not None else None

    def zero_pruned(self, module: nn.Module) -> None:
        """Set the pruned entries of ``<name>_orig`` to zero, in place (the mask may have changed), and the
        per-entry state there of the zero-preserving optimizers that have stepped it, so that no momentum
        revives a newly pruned weight and their next step stays free."""
        optimizers, self._settled = list(self._settled.keys()), weakref.WeakKeyDictionary()
        param, mask = module._parameters[orig_name(self._tensor_name)], module._buffers[mask_name(self._tensor_name)]
        assert param is not None and mask is not None  # install_mask registered both
        with torch.no_grad():
            mask = self._part(mask, param)
            orig = _sharding.local(param.detach())
            sharded = _sharding.is_sharded(param)
            if sharded or self._zeroed != version_key(param, mask):  # else nothing wrote to either since
                select_into(orig, orig, mask, keep_scratch=False)
                self._zeroed = None if sharded else version_key(param, mask)
            for optimizer in optimizers:
                self._settled[optimizer] = zero_state(optimizer, param, mask)

    def after_step(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """After ``optimizer.step()``: zero the pruned entries again, unless the step provably left them at zero:
        the optimizer is one of `sparsify._inplace.ZERO_PRESERVING`, this step's gradient went through the
        gradient hook, and its per-entry state was zeroed at the pruned entries after the last mask change (and
        is still the same tensors). Otherwise the weights are zeroed and, for those optimizers, so is that
        state, which makes the following steps free."""
        param = module._parameters[orig_name(self._tensor_name)]
        assert param is not None  # install_mask registered it
        masked, self._grad_masked = self._grad_masked, False
        record = self._settled.get(optimizer)
        if masked and record is not None and still_settled(record, optimizer, param):
            return
        mask = module._buffers[mask_name(self._tensor_name)]
        assert mask is not None  # install_mask registered it
        with torch.no_grad():
            mask = self._part(mask, param)
            orig = _sharding.local(param.detach())
            select_into(orig, orig, mask, keep_scratch=False)
            if type(optimizer) in ZERO_PRESERVING:
                self._settled[optimizer] = zero_state(optimizer, param, mask)

    def _mask_grad(self, param: torch.Tensor) -> None:
        """Post-accumulate-grad hook: mask ``param.grad`` in place.

        It runs in every backward pass, between kernels that push the interpreter out of the CPU caches (each
        line here costs 10-20 times what it costs outside backward), so a plain gradient takes the shortest path:
        no ``no_grad`` block (nothing records a gradient in no graph), no sharding lookups. The kernel's chunk
        buffer is freed on return: the in-place mode keeps nothing beyond its masks."""
        grad = param.grad
        module = self._module_ref() if self._module_ref is not None else None
        if module is None or grad is None or grad.layout != torch.strided:
            return
        mask = module._buffers[mask_name(self._tensor_name)]
        assert mask is not None  # install_mask registered it
        if type(grad) is torch.Tensor and not grad.requires_grad:
            select_into(grad, grad, mask, keep_scratch=False)
        else:  # a sharded gradient (FSDP2), or one in a graph (backward(create_graph=True))
            with torch.no_grad():
                local = _sharding.local(grad)
                select_into(local, local, self._part(mask, grad), keep_scratch=False)
        self._grad_masked = True

    def _bind(self, module: nn.Module) -> None:
        """Attach the gradient hook and the optimizer re-zeroing to ``module``'s parameter."""
        self._unbind()
        param = module._parameters[orig_name(self._tensor_name)]
        assert param is not None  # install_mask registered it
        if param.requires_grad:
            self._grad_hook = param.register_post_accumulate_grad_hook(self._mask_grad)
        self._module_ref = weakref.ref(module)
        register_inplace(param, self)

    def _unbind(self) -> None:
        module = self.bound_module()
        if self._grad_hook is not None:
            self._grad_hook.remove()
            self._grad_hook = None
        param = module._parameters.get(orig_name(self._tensor_name)) if module is not None else None
        unregister_inplace(param, self)
        self._module_ref = None

    # torch declares remove() -> None; returning the module as well is harmless (prune.remove ignores it)
    def remove(self, module: nn.Module, bake: bool = True,  # type: ignore[override]
               trust_versions: bool = False) -> nn.Module:
        """Remove everything `install_mask` added, leaving a plain parameter. With ``bake=True`` (what
        ``torch.nn.utils.prune.remove`` calls) the masked entries of the parameter are set to zero (`bake_mask`:
        ``trust_versions``); with ``bake=False`` it is restored untouched (in the in-place mode, zeroed entries
        stay zero). The pre-hook entry itself is left for the caller to delete, as ``prune.remove`` expects."""
        name = self._tensor_name
        if self.bound_module() is module:
            self._unbind()
        if name in module.__dict__:
            delattr(module, name)
        orig = module._parameters.pop(orig_name(name), None)
        if orig is None:  # interrupted before the parameter was renamed: it is still under its own name
            orig = module._parameters.pop(name)
        mask = module._buffers.pop(mask_name(name), None)
        module._buffers.pop(amount_name(name), None)
        if bake:
            assert orig is not None and mask is not None  # baking follows a complete install_mask
            with torch.no_grad():
                if self.mode == "inplace" and not _sharding.is_sharded(orig):  # zeroed where it lies, no copy
                    if not (trust_versions and self._zeroed == version_key(orig, mask)):
                        select_into(orig.detach(), orig.detach(), mask, keep_scratch=False)
                else:
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
    mode: str = "default",
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
        mode: ``"default"`` (Core ML Tools' semantics: ``<name>_orig`` keeps pruned values) or
            ``"inplace"`` (pruned entries zeroed in the parameter itself; see `MaskHook`).
        pattern: descriptive fields stored on the hook (``block_size``, ``granularity``, ...).
    """
    if is_masked(module, name):
        raise ValueError(f"{type(module).__name__}.{name} already has a mask installed")
    param = getattr(module, name)
    if not isinstance(param, nn.Parameter):
        raise TypeError(f"{type(module).__name__}.{name} must be an nn.Parameter, got {type(param).__name__}")
    everything_kept = mask is None or bool(mask.all())  # then nothing is zeroed: the weights are not even written
    if mask is None:
        mask = torch.ones_like(param, dtype=torch.bool)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask for {type(module).__name__}.{name} must be bool, got {mask.dtype}")
    if mask.dim() > param.dim() or any(m not in (1, p) for m, p in zip(reversed(mask.shape), reversed(param.shape))):
        raise ValueError(
            f"mask for {type(module).__name__}.{name} has shape {tuple(mask.shape)}: allowed are shapes that "
            f"broadcast to the parameter's {tuple(param.shape)}"
        )

    hook = MaskHook(name, amount, mode=mode, **pattern)
    hook.param_position = list(module._parameters).index(name)
    try:
        # the new name first, then the old one goes: an interruption in between leaves the Parameter reachable
        module.register_parameter(orig_name(name), param)
        del module._parameters[name]
        module.register_buffer(mask_name(name), mask.to(param.device))
        module.register_buffer(amount_name(name), torch.tensor(float(amount), device=param.device))
        module.register_forward_pre_hook(hook)
        hook.extra_hooks.append(module.register_load_state_dict_post_hook(hook.after_load))
        if mode == "inplace":  # the forward reads the parameter itself: nothing to refresh or detach
            hook._bind(module)  # (the pre-hook adds the post-hook below if FSDP2 shards the model later)
        else:
            # always_call: a forward that raises must not leave a graph-carrying tensor (or, under FSDP2, the
            # unsharded weight) in module.<name>
            hook.extra_hooks.append(module.register_forward_hook(hook.detach, always_call=True))
            if reader is not None:
                relay = ReaderRelay(hook, module)
                hook.extra_hooks.append(reader.register_forward_pre_hook(relay.before))
                hook.extra_hooks.append(reader.register_forward_hook(relay.after, always_call=True))
        # nn.Module.__setattr__ is typed for tensors and modules only; any attribute may be set
        module.pruning_method = hook  # type: ignore[assignment]
        if everything_kept and mode == "inplace" and not _sharding.is_sharded(param):  # nothing to zero
            hook._zeroed = version_key(param, getattr(module, mask_name(name)))
        hook.refresh(module)
    except BaseException:  # leave the module exactly as it was
        _detach_pre_hook(module, hook)
        hook.remove(module, bake=False)
        raise
    return hook


def set_mask(module: nn.Module, name: str, mask: torch.Tensor, amount: float | None = None) -> None:
    """Overwrite the mask in place (tied modules sharing it see the change) and refresh the weight."""
    hook = _require_hook(module, name)
    buffer: torch.Tensor = getattr(module, mask_name(name))
    buffer.copy_(mask.to(device=buffer.device, dtype=torch.bool).expand_as(buffer))
    if amount is not None:
        hook.amount = float(amount)
        getattr(module, amount_name(name)).fill_(float(amount))
    hook.refresh(module)


def bake_mask(module: nn.Module, name: str = "weight", *, trust_versions: bool = False) -> None:
    """Fuse the mask into a plain ``nn.Parameter`` and remove hooks and buffers. ``trust_versions``: the caller
    vouches that nothing wrote through ``.data`` since the last mask change (which version counters miss)."""
    _take_hook(module, name).remove(module, bake=True, trust_versions=trust_versions)


def uninstall_mask(module: nn.Module, name: str = "weight") -> None:
    """Undo `install_mask`, restoring the parameter as it was (used to roll back; in-place zeros stay)."""
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
