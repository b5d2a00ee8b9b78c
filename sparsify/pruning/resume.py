"""Continue from a saved pruned model: masks from its zeros, fine-tuning with the zeros kept.

A model that sparsify pruned and ``save_pretrained`` wrote carries ``sparsity.json``
(`sparsify.pruning.sparsity_record`). `from_pretrained_pruned` loads it (or takes it loaded) and prepares a
`Pruner` in place whose masks are the saved zeros, each layer with its recorded pattern and a constant
schedule at its level — ``step()`` keeps those masks, the optimizer trains the kept weights (its state
included: build it on the returned model), and ``finalize()`` bakes the zeros again::

    pruner = sparsify.from_pretrained_pruned(LlamaForCausalLM, "pruned-llama")
    model = pruner.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for batch in data:
        model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad(); pruner.step()
    pruner.finalize(inplace=True).save_pretrained("pruned-llama-tuned")
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import ModulePrunerConfig, PrunerConfig
from ..masking import set_mask
from .pruner import Pruner
from .sparsity_record import SPARSITY_FILE, module_config, read_record

__all__ = ["attach_masks", "from_pretrained_pruned"]

logger = logging.getLogger(__name__)


def from_pretrained_pruned(
    model: nn.Module | type, directory: str | os.PathLike[str], *, masking: str = "default", **load_kwargs: Any
) -> Pruner:
    """A prepared `Pruner` on the model saved in ``directory`` (see the module docs).

    Args:
        model: the model already loaded from ``directory``, or a class with ``from_pretrained`` (such as
            ``transformers.AutoModelForCausalLM``) to load it with (``load_kwargs`` passed on).
        directory: what ``save_pretrained`` of a pruned model wrote (with ``sparsity.json``).
        masking: ``"default"`` or ``"inplace"`` (`sparsify.ModulePrunerConfig.masking`).
    """
    if isinstance(model, type):
        loader = getattr(model, "from_pretrained", None)
        if not callable(loader):
            raise TypeError(f"model={model.__name__} has no from_pretrained: give a loaded model or such a class")
        model = loader(directory, **load_kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or a class with from_pretrained, got {type(model).__name__}")
    return attach_masks(model, directory, masking=masking)


def attach_masks(model: nn.Module, directory: str | os.PathLike[str], *, masking: str = "default") -> Pruner:
    """A `Pruner` prepared on ``model`` (in place) whose masks are the zeros of the layers recorded in
    ``directory``'s `SPARSITY_FILE` (see the module docs)."""
    layers = read_record(directory)
    modules = dict(model.named_modules())
    missing = [n for entry_name, e in layers.items() for n in (entry_name, *e.get("tied_to", []))
               if n not in modules]
    if missing:
        raise ValueError(f"{Path(directory) / SPARSITY_FILE} names module(s) the model does not have: {missing[:5]}")
    names: dict[str, ModulePrunerConfig | None] = {}
    for name, entry in layers.items():
        config = module_config(entry, masking)
        for holder in (name, *entry.get("tied_to", [])):
            names[re.escape(holder)] = config
    pruner = Pruner(model, PrunerConfig(module_name_configs=names))
    pruner.prepare(inplace=True)
    with torch.no_grad():
        for target in pruner.targets.values():
            keep = target.orig.detach() != 0
            for dim, size in enumerate(target.mask.shape):
                if size == 1 and keep.shape[dim] != 1:
                    keep = keep.any(dim, keepdim=True)
            level = target.config.final_sparsity  # the schedule's own level: step() keeps these masks
            set_mask(target.module, target.param_name, keep, level)
            for alias in target.tied_to:
                set_mask(model.get_submodule(alias), target.param_name, keep, level)
            target.sparsity_level = level
    logger.info("attached the masks of %d recorded layer(s) from %s", len(pruner.targets), directory)
    return pruner
