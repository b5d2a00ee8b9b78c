"""The masked-parameter layout, defined once: attribute and state-dict names, and a masked state dict made plain.

A masked ``module.<name>`` is stored as ``torch.nn.utils.prune`` and Core ML Tools store it, so checkpoints
and tools that know those names keep working:

* ``<name>_orig`` — the trained ``nn.Parameter``;
* ``<name>_mask`` — the keep-mask buffer (``bool`` in sparsify, float32 in Core ML Tools);
* ``<name>_amount`` — sparsify's 0-d buffer with the scheduled sparsity (absent for the others).

In a state dict the same names carry the module prefix (``fc.weight_orig``). Every module that installs,
reads, saves, converts or exports masks spells these names through this one (`sparsify.masking` installs
them, `sparsify.checkpoints` and `sparsify.pruning.saving` convert state dicts with `plain_state_dict`), so a
change of layout is a change here. It imports nothing of sparsify's but `sparsify.coreml_metadata` (another
leaf), so every layer of the package may import it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from .coreml_metadata import is_metadata_key

__all__ = [
    "AMOUNT", "MASK", "ORIG", "PARTS", "amount_name", "has_mask_layout", "is_masked_key", "layout_names", "mask_name",
    "masked_bases", "masked_params", "masked_tensors", "orig_name", "plain_state_dict", "split_masked_key",
]

#: the parts of a masked tensor, each named ``<name>_<part>``: trained values, keep-mask, scheduled sparsity
ORIG, MASK, AMOUNT = "orig", "mask", "amount"
PARTS = (ORIG, MASK, AMOUNT)


def orig_name(name: str) -> str:
    """Where the trained values of masked ``name`` live (``weight`` → ``weight_orig``; keys too)."""
    return f"{name}_{ORIG}"


def mask_name(name: str) -> str:
    """Where the keep-mask of masked ``name`` lives (``weight`` → ``weight_mask``; keys too)."""
    return f"{name}_{MASK}"


def amount_name(name: str) -> str:
    """Where the scheduled sparsity of masked ``name`` lives (``weight`` → ``weight_amount``; keys too)."""
    return f"{name}_{AMOUNT}"


def layout_names(name: str) -> tuple[str, str, str]:
    """``(orig, mask, amount)`` names of masked ``name``."""
    return orig_name(name), mask_name(name), amount_name(name)


def split_masked_key(key: str) -> tuple[str, str] | None:
    """``(base, part)`` of a layout name (``"fc.weight_mask"`` → ``("fc.weight", "mask")``), ``part`` one of
    `PARTS`; ``None`` for any other name. Only the suffix is read: whether ``base`` is really masked is what
    `masked_bases` (a state dict) or `has_mask_layout` (a module) tell."""
    base, sep, part = key.rpartition("_")
    return (base, part) if sep and base and part in PARTS else None


def is_masked_key(key: str) -> bool:
    """Whether ``key`` ends in one of the layout's suffixes (``_orig``, ``_mask``, ``_amount``)."""
    return split_masked_key(key) is not None


def has_mask_layout(module: nn.Module, name: str) -> bool:
    """Whether ``module`` holds ``<name>_orig`` as a parameter and ``<name>_mask`` as a buffer — masked by
    sparsify, Core ML Tools or ``torch.nn.utils.prune``."""
    return orig_name(name) in module._parameters and mask_name(name) in module._buffers


def masked_params(module: nn.Module) -> list[str]:
    """Names of ``module``'s own masked tensors (``weight`` for ``weight_orig`` + ``weight_mask``), in buffer
    order."""
    params = {key for key, _ in module.named_parameters(recurse=False)}  # a ScriptModule's too
    names = []
    for key, _ in module.named_buffers(recurse=False):
        split = split_masked_key(key)
        if split is not None and split[1] == MASK and orig_name(split[0]) in params:
            names.append(split[0])
    return names


def masked_tensors(model: nn.Module) -> list[str]:
    """Qualified names of every masked tensor of ``model`` (``fc.weight``), shared modules under each of their
    names (as ``model.state_dict()`` lists them)."""
    names = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        names += [prefix + name for name in masked_params(module)]
    return names


def masked_bases(state_dict: Mapping[str, Any]) -> set[str]:
    """Names that carry a mask in ``state_dict`` (``fc.weight`` for ``fc.weight_orig`` + ``fc.weight_mask``)."""
    bases = set()
    for key in state_dict:
        split = split_masked_key(key)
        if split is not None and split[1] == ORIG and mask_name(split[0]) in state_dict:
            bases.add(split[0])
    return bases


def plain_state_dict(state_dict: Mapping[str, Any], masked: Collection[str] | None = None) -> dict[str, Any]:
    """``state_dict`` with every masked tensor under its plain name holding its masked values
    (``where(mask, orig, 0)``), and without masks, amounts or Core ML compression metadata — what a model
    without masks loads. Key order is kept (the plain name takes the ``_orig`` key's place).

    ``masked``: the names to unmask (`masked_tensors` of the model the state dict comes from); by default
    every `masked_bases` name. Works for masks installed by sparsify, Core ML Tools or
    ``torch.nn.utils.prune``. Tied parameters (one ``orig`` and one mask tensor under several names) stay
    one tensor, so ``save_pretrained`` still recognises them as tied.
    """
    bases = masked_bases(state_dict) if masked is None else set(masked)
    baked: dict[tuple[int, int], torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for key, value in state_dict.items():
        if is_metadata_key(key):
            continue
        split = split_masked_key(key)
        if split is None or split[0] not in bases:
            plain[key] = value
            continue
        base, part = split
        if part != ORIG or mask_name(base) not in state_dict:
            continue
        mask = state_dict[mask_name(base)]
        cache = (id(value), id(mask))
        if cache not in baked:  # a zero of the weight's own dtype: integer weights stay integer
            baked[cache] = torch.where(mask.bool(), value, torch.zeros((), dtype=value.dtype, device=value.device))
        plain[base] = baked[cache]
    return plain
