"""``save_pretrained`` of a prepared model writes the weights the model computes, not its pruning bookkeeping.

A prepared module holds ``weight_orig`` (the trained values), ``weight_mask`` and ``weight_amount``
instead of ``weight``. Hugging Face's ``save_pretrained`` writes ``model.state_dict()`` as it is, and
``from_pretrained`` — which knows only ``weight`` — would report those keys as unexpected and load a
fresh, dense, randomly initialised ``weight`` in their place. So `Pruner.prepare` gives a model whose
class has a ``save_pretrained`` method (transformers, diffusers, …) an instance-level
``save_pretrained`` (`MaskedSavePretrained`) that hands the class's method `plain_state_dict`: each
masked parameter under its plain name with its masked values, and no masks, amounts or Core ML
metadata (which ``from_pretrained`` could not put back). ``from_pretrained`` then reloads exactly the
weights the model computed when it was saved, with its zeros.

Beside the weights it writes ``sparsity.json``: every pruned layer's pattern and level
(`sparsify.pruning.sparsity_record`), from which `sparsify.Pruner.from_pretrained` attaches the masks again.

What such a file does not hold is the pruning state (the ``weight_orig`` values under the mask, the
schedule): to resume pruning, checkpoint ``model.state_dict()`` and ``pruner.state_dict()``
(`sparsify.compat.hf.PruningCallback` does this in Trainer checkpoints).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping
from typing import Any

from torch import nn

from .. import mask_layout
from ..mask_layout import masked_tensors

__all__ = ["MaskedSavePretrained", "plain_state_dict", "protect_save_pretrained", "unprotect_save_pretrained"]

logger = logging.getLogger(__name__)


def plain_state_dict(model: nn.Module, state_dict: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``state_dict`` (default: ``model.state_dict()``) with every masked tensor of ``model`` under its plain
    name holding its masked values, and without masks, amounts or Core ML compression metadata: the one
    conversion, `sparsify.mask_layout.plain_state_dict`, limited to the tensors ``model`` masks.

    Works for masks installed by sparsify, Core ML Tools or ``torch.nn.utils.prune``. Tied parameters stay
    one tensor (so ``save_pretrained`` still recognises them as tied). Key order is kept.
    """
    source = model.state_dict() if state_dict is None else state_dict
    return mask_layout.plain_state_dict(source, masked=masked_tensors(model))


class MaskedSavePretrained:
    """A prepared model's ``save_pretrained``: the class's own method, given `plain_state_dict`.

It stays after ``finalize()``, where it only leaves out the Core ML metadata buffers (``from_pretrained``
would list them as unexpected keys and drop them).

    Stored in the model's ``__dict__`` (so it pickles and deep-copies with the model, and a copy's
    guard saves the copy). A ``state_dict`` passed by the caller (the Trainer passes one under
    DeepSpeed / FSDP) is converted the same way.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        #: name → pattern fields of every pruned layer (`sparsify.pruning.sparsity_record`), set by the pruner
        self.layers: dict[str, dict[str, Any]] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        model_class: Any = type(self.model)  # duck-typed: installed only where the class has save_pretrained
        method = model_class.save_pretrained
        bound = inspect.signature(method).bind(self.model, *args, **kwargs)
        masked = masked_tensors(self.model)
        bound.arguments["state_dict"] = plain_state_dict(self.model, bound.arguments.get("state_dict"))
        if masked:
            logger.info(
                "save_pretrained: %d masked weight(s) saved with their masks applied (what from_pretrained reloads); "
                "the pruning state is not in this file: checkpoint model.state_dict() and pruner.state_dict() to "
                "resume pruning", len(masked),
            )
        result = method(*bound.args, **bound.kwargs)
        directory = bound.arguments.get("save_directory")
        if self.layers and directory is not None and bound.arguments.get("is_main_process", True) \
                and os.path.isdir(directory):
            from .sparsity_record import record_of, write_record

            path = write_record(directory, record_of(self.model, self.layers))
            logger.info("save_pretrained: the sparsity of %d layer(s) recorded in %s", len(self.layers), path)
        return result


def protect_save_pretrained(model: nn.Module, layers: Mapping[str, dict[str, Any]] | None = None) -> None:
    """Install `MaskedSavePretrained` on ``model`` if its class has a ``save_pretrained`` method; ``layers``
    (name → param and pattern fields) are recorded in ``sparsity.json`` at each save."""
    if callable(getattr(type(model), "save_pretrained", None)):
        guard = MaskedSavePretrained(model)
        guard.layers = dict(layers or {})
        model.__dict__["save_pretrained"] = guard


def unprotect_save_pretrained(model: nn.Module) -> None:
    """Remove what `protect_save_pretrained` installed (nothing else)."""
    if isinstance(model.__dict__.get("save_pretrained"), MaskedSavePretrained):
        del model.__dict__["save_pretrained"]
