"""SparseML's ``ACDCPruningModifier`` (alternating compressed / decompressed training) on the one machine.

SparseML's rules (``modifier_pruning_acdc.py``), kept exactly:

* phases of ``update_frequency`` epochs from ``start_epoch``: phase ``floor((epoch − start) / f)``; an even
  phase is **decompressed** (sparsity 0: every mask removed), an odd one **compressed** (magnitude pruning
  to ``compression_sparsity``, global unless ``global_sparsity: false``);
* the masks are recomputed at ``start + k·f`` and at ``end_epoch``, where the last phase is compressed:
  ``end_epoch`` is first cut back over trailing decompressed epochs (``_finish_on_compression``), and the
  update at ``end_epoch`` prunes to ``compression_sparsity``; ``leave_enabled`` keeps that mask;
* a weight pruned in a compressed phase comes back **at zero** when its phase ends (SparseML zeroes the
  pruned weights themselves), and, with ``momentum_buffer_reset`` (default true), every momentum buffer of
  the optimizer is zeroed after the first optimizer step of each decompressed phase that follows a
  compressed one.

The schedule becomes `sparsify.compat.translate.StepLevelsScheduler` levels (``S`` / ``0`` per phase, in
steps with ``steps_per_epoch``: `sparsify.compat.translate.epoch_levels`); `AcdcPhases` does the two things
a sparsity schedule cannot: the zeroing of returning weights and the momentum reset. ``manager.apply`` (one
shot) gives the final, compressed state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch

from ...masking import set_mask
from ...pruning import Pruner
from ..plan import Origin, PruningGroup, Schedule, SparseMLParams, TargetRule, UnsupportedFeatureError
from .fields import check_keys, fraction, number, structure, tokens

__all__ = ["ACDC_TAG", "AcdcPhases", "acdc_group", "finish_on_compression"]

logger = logging.getLogger(__name__)

ACDC_TAG = "ACDCPruningModifier"
_KEYS = {"params", "compression_sparsity", "start_epoch", "end_epoch", "update_frequency", "global_sparsity",
         "leave_enabled", "momentum_buffer_reset", "mask_type", "log_types"}


def finish_on_compression(start: int, end: int, frequency: float) -> int:
    """SparseML's ``_finish_on_compression``: drop trailing epochs while ``floor(epoch / f)`` is odd (its test,
    on the absolute epoch number), so that training ends on a compressed phase."""
    phases = [math.floor(epoch / frequency) % 2 == 0 for epoch in range(start, end)]
    for compressed in reversed(phases):
        if compressed:
            break
        end -= 1
    return end


def acdc_group(fields: Mapping[str, Any], origin: Origin) -> PruningGroup:
    """An ``!ACDCPruningModifier`` as a magnitude group with the ``"acdc"`` schedule."""
    check_keys(fields, _KEYS, ACDC_TAG, origin)
    for key in ("compression_sparsity", "start_epoch", "end_epoch", "update_frequency", "params"):
        if key not in fields:
            raise origin.error(f"{key} is required (SparseML's ACDCPruningModifier has no default for it)")
    sparsity = fraction(fields["compression_sparsity"], "compression_sparsity", origin)
    start = number(fields["start_epoch"], "start_epoch", origin, integer=True)
    end = number(fields["end_epoch"], "end_epoch", origin, integer=True)
    frequency = number(fields["update_frequency"], "update_frequency", origin)
    if start < 0 or end <= start or frequency <= 0:
        raise origin.error(f"start_epoch={start:g}, end_epoch={end:g}, update_frequency={frequency:g} are invalid: "
                           f"allowed whole epochs 0 <= start_epoch < end_epoch and update_frequency > 0")
    flags = {}
    for key, default in (("global_sparsity", True), ("leave_enabled", True), ("momentum_buffer_reset", True)):
        flags[key] = fields.get(key, default)
        if not isinstance(flags[key], bool):
            raise origin.error(f"{key}={flags[key]!r} is invalid: expected true or false")
    if not flags["leave_enabled"]:
        raise UnsupportedFeatureError("leave_enabled: false", "masks removed at end_epoch let pruned weights grow "
                                      "back; sparsify keeps every mask until finalize()", origin.path, origin.line)
    shape, fixed = structure(fields.get("mask_type", "unstructured"), origin, flags["global_sparsity"])
    if fixed is not None:
        raise origin.error(f"mask_type={fields['mask_type']!r} is invalid for {ACDC_TAG}: allowed 'unstructured', "
                           f"'block4' or [out, in] blocks")
    cut = finish_on_compression(int(start), int(end), frequency)
    notes = [f"AC/DC: phases of {frequency:g} epoch(s) from epoch {start:g}, decompressed (dense) first, compressed "
             f"to {sparsity:g}; ends compressed at epoch {cut:g}"]
    if cut != end:
        notes.append(f"end_epoch={end:g} is cut back to {cut:g} so that training ends compressed, as SparseML does")
    schedule = Schedule("epoch", float(start), float(cut), frequency, "acdc")
    return PruningGroup(origin, "magnitude", [TargetRule(sparsity, SparseMLParams(tokens(fields["params"], "params",
                                                                                        origin)))],
                        0.0, schedule, shape, "global" if flags["global_sparsity"] else "local",
                        options={"momentum_buffer_reset": flags["momentum_buffer_reset"]}, notes=notes)


class AcdcPhases:
    """Around each `Pruner.step` of a recipe session: weights whose compressed phase ends come back at zero,
    and the optimizer's momentum is reset after the first step of each such decompressed phase."""

    def __init__(self, pruner: Pruner, names: list[str], reset_momentum: bool, optimizer: Any = None) -> None:
        self.pruner = pruner
        self.names = names
        self.reset_momentum = reset_momentum
        self.optimizer = optimizer
        self._saved: dict[str, torch.Tensor] = {}
        self._reset_due = False
        if reset_momentum and optimizer is None and names:
            logger.warning("ACDCPruningModifier momentum_buffer_reset: no optimizer was given, so its momentum is "
                           "not reset at decompressed phases; pass optimizer= (manager.modify does)")

    def before_step(self) -> None:
        if self._reset_due and self.optimizer is not None:
            for state in self.optimizer.state.values():  # SparseML: every buffer of the optimizer
                buffer = state.get("momentum_buffer") if isinstance(state, Mapping) else None
                if isinstance(buffer, torch.Tensor):
                    buffer.zero_()
        self._reset_due = False
        upcoming = self.pruner.step_count + 1
        self._saved = {}
        for name in self.names:
            target = self.pruner.targets[name]
            level = target.config.scheduler.compute_sparsity(upcoming, target.sparsity_level, target.config)
            if level < target.sparsity_level:
                self._saved[name] = target.mask.detach().clone()

    def after_step(self) -> None:
        if not self._saved:
            return
        with torch.no_grad():
            for name, mask in self._saved.items():
                target = self.pruner.targets[name]
                target.orig.masked_fill_(mask == 0, 0.0)
                for module_name in (name, *target.tied_to):  # recompute the weight from the zeroed original
                    set_mask(self.pruner.model.get_submodule(module_name), target.param_name, target.mask.clone())
        self._saved = {}
        self._reset_due = self.reset_momentum
