"""One decoder block pruned by the same machine `sparsify.prune` runs, on its cached calibration inputs.

The block is wrapped as a model of its own (`BlockModel`) and handed to `sparsify.prune` with a
`CalibrationData` whose items are the block's inputs — each batch's hidden states with the keyword arguments the
full model passed it. So the criteria, patterns and SparseGPT / Wanda solvers are those of in-memory pruning,
not a copy. Two settings make the result the one in-memory pruning gives for this block
(`tests/streaming/test_streaming.py` checks it to 1e-5):

* in memory, a layer-wise criterion calibrates all layers of a block on one forward of that block
  (``true_sequential=False``, the default): here the block alone is the model, so the same is asking for
  ``sequential=False`` inside it (every layer of the block on the block's unpruned forward). With
  ``true_sequential=True`` the criterion keeps ``sequential=True`` and its stages run inside the block as
  they run in memory;
* in memory, calibration batches are concatenated once, before the first block (`sparsify.calibration.merged`);
  here they arrive already concatenated the same way, and each item carries its index (``_batch``), a
  keyword argument that differs between items so they are not concatenated a second time.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import nn

from ..calibration import CalibrationData
from ..config import ModulePrunerConfig
from ..coreml_metadata import is_metadata_key
from ..pruning import prune
from ..pruning.saving import plain_state_dict

__all__ = ["BlockModel", "block_criterion", "forward_block", "prune_block"]


class BlockModel(nn.Module):
    """A decoder block called as its model calls it; ``_batch`` (the item's index) is dropped."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, hidden: torch.Tensor, _batch: int = 0, **kwargs: Any) -> Any:
        return self.block(hidden, **kwargs)


def block_criterion(module_config: ModulePrunerConfig, batches: int) -> Any:
    """The criterion a block is pruned with (see the module docs): all ``batches`` kept, and, when in memory a
    block's layers would be calibrated together, ``sequential=False`` inside the block."""
    criterion = module_config.criterion
    if not type(criterion).needs_data:
        return criterion
    changes: dict[str, Any] = {"num_batches": batches}
    if not getattr(criterion, "true_sequential", False):
        changes["sequential"] = False
    return attrs.evolve(criterion, **changes)


def prune_block(
    block: nn.Module, module_config: ModulePrunerConfig, inputs: list[tuple[torch.Tensor, dict[str, Any]]],
) -> dict[str, torch.Tensor]:
    """Prune ``block`` in place with ``module_config`` on its ``inputs``; its plain state dict (own names)."""
    model = BlockModel(block)
    choices = {a.name: getattr(module_config, a.name) for a in attrs.fields(ModulePrunerConfig)
               if a.init and a.name not in ("target_sparsity", "scheduler")}
    choices["criterion"] = block_criterion(module_config, len(inputs))
    choices["masking"] = "inplace"  # the forward reads the block's own weights: no masked copy of them
    sampler = None
    if type(module_config.criterion).needs_data:
        items = [((hidden,), {**kwargs, "_batch": index}, None) for index, (hidden, kwargs) in enumerate(inputs)]
        sampler = CalibrationData(items, progress=False)
    with _quiet(logging.getLogger("sparsify.pruning.pruner")):  # its per-layer lines, once per block
        prune(model, module_config.target_sparsity, sampler=sampler, inplace=True, **choices)
    state = plain_state_dict(model)
    for module in block.modules():  # Core ML metadata: the checkpoint records the sparsity in its own file
        for key in [k for k in module._buffers if is_metadata_key(k)]:
            del module._buffers[key]
    return {name.removeprefix("block."): tensor for name, tensor in state.items()}


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """``logger`` at WARNING at least while inside: warnings still show, the per-layer INFO lines do not."""
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def forward_block(block: nn.Module, inputs: list[tuple[torch.Tensor, dict[str, Any]]],
                  outputs: list[torch.Tensor]) -> None:
    """Run ``block`` on every batch of ``inputs``, writing the hidden states it returns into ``outputs``."""
    with torch.no_grad():
        for (hidden, kwargs), out in zip(inputs, outputs):
            result = block(hidden, **kwargs)
            if isinstance(result, (tuple, list)):
                result = result[0]
            out.copy_(result)
