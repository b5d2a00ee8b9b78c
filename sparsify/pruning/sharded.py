"""What the pruner does differently once FSDP2 has sharded the prepared model (see `sparsify.distributed`).

Masks stay whole on every rank; the weights are ``DTensor`` shards. So a mask update gathers each pruned
weight's scores whole (`whole_scores`, a collective: every rank calls ``pruner.step()``), the hooks move to
the sharded parameters the first time they are seen (`adopt_sharding`), and what needs whole weights on one
rank — ``finalize()`` — is refused with the way to do it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .. import _sharding
from ..mask_layout import orig_name
from .plan import Target

__all__ = ["adopt_sharding", "refuse_sharded_finalize", "whole_scores"]

SHARDED_CRITERIA = ("magnitude",)


def adopt_sharding(targets: Mapping[str, Target]) -> None:
    """Let every mask hook notice parameters FSDP2 has sharded since it last looked (cheap when none)."""
    for target in targets.values():
        hook = getattr(target.module, "pruning_method", None)
        if hook is not None and hasattr(hook, "adopt_sharding"):
            hook.adopt_sharding(target.module)


def whole_scores(target: Target, scores: torch.Tensor) -> torch.Tensor:
    """``scores`` whole on every rank: a sharded tensor is all-gathered; refuses criteria that need more."""
    if not _sharding.is_sharded(scores) and not _sharding.is_sharded(target.orig):
        return scores
    kind = target.config.criterion.kind
    if kind not in SHARDED_CRITERIA:
        raise TypeError(
            f"module {target.name!r}: criterion {kind!r} does not support FSDP2-sharded weights; allowed under "
            f"fully_shard: {', '.join(map(repr, SHARDED_CRITERIA))} (or use DistributedDataParallel)"
        )
    return _sharding.full(scores)


def refuse_sharded_finalize(targets: Mapping[str, Target]) -> None:
    """``finalize()`` bakes masks into whole parameters, which a sharded model does not hold."""
    for target in targets.values():
        if _sharding.is_sharded(target.module._parameters.get(orig_name(target.param_name))):
            raise TypeError(
                f"finalize(): module {target.name!r} is sharded by FSDP2; gather a full state dict "
                f"(torch.distributed.checkpoint.state_dict.get_model_state_dict(model, options="
                f"StateDictOptions(full_state_dict=True))), load it into the same model prepared without "
                f"fully_shard, and finalize that"
            )
