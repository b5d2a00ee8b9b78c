r"""``wanda``: prune by ``|W_ij| · ‖X_j‖₂`` — weight magnitude times input activation norm (Sun et al., 2023).

Wanda ("pruning by Weights AND Activations") scores each weight by how much output it carries on calibration
data, ``|W_ij|·‖X_j‖₂``, where ``X_j`` is input column ``j`` over every calibration sample (and every token or
output position); it needs no gradient, no Hessian and no weight update. Here:

* the statistic is one float per input column (``mean x_j²``), so memory is negligible: ``in_features`` floats
  per layer (``Ci·kh·kw`` for a convolution), plus the calibration batches themselves;
* layers are calibrated in forward order, each on the inputs of the layers already pruned before it
  (``sequential=True``, as the paper's code does block by block), or all at once from the current model;
* ``per_output=True`` compares weights within each output row (the paper's "per output" comparison group:
  every row loses the same share), for the element-wise patterns (`Pattern.single_weights`); structured patterns
  (blocks, channels, n:m, tiles, registered ones) rank their own groups (`Pattern.reselect`), which already fixes
  how many each row or run loses.

Every pattern works: the pattern and scope fix each layer's count (globally ranked layers use Wanda's scores
of the unpruned model for that), then each layer's weights are re-selected on its calibrated inputs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from .._checks import as_int, boolean, check_range
from .base import Criterion, Scorer, register_criterion
from .layerwise import ColumnNorms, LayerTarget, LayerwiseScorer, encode, reselect, wanda_scores

__all__ = ["WandaCriterion"]

_OWNER = "WandaCriterion"


def _to_batches(value: Any) -> int:
    value = as_int(_OWNER, "num_batches", value)
    check_range(_OWNER, "num_batches", value, 1)
    return value



@register_criterion
@attrs.define(eq=True, frozen=True)
class WandaCriterion(Criterion):
    """``|W|·‖X‖₂`` on calibration data (see the module docs).

    Args:
        num_batches: how many items of the sampler's data calibrate each update (128 in the paper's code).
        sequential: calibrate each layer on the outputs of the layers pruned before it (else all layers on
            the current model, in one pass).
        per_output: compare weights within each output row (element-wise patterns only).
        true_sequential: with ``sequential``, also inside a block of a chain (a decoder layer): each layer is
            calibrated on the layers of its block pruned before it. The default (``False``) calibrates a block's
            layers together on one forward of the block, with the blocks before it pruned, as the paper's code.
    """

    kind: ClassVar[str] = "wanda"
    needs_data: ClassVar[bool] = True
    layerwise: ClassVar[bool] = True

    num_batches: int = attrs.field(default=128, converter=_to_batches)
    # mypy's attrs plugin cannot type a converter that a call returns: hence ignore[misc] below
    sequential: bool = attrs.field(default=True, converter=boolean(_OWNER, "sequential"))  # type: ignore[misc]
    per_output: bool = attrs.field(default=True, converter=boolean(_OWNER, "per_output"))  # type: ignore[misc]
    true_sequential: bool = attrs.field(default=False,
                                        converter=boolean(_OWNER, "true_sequential"))  # type: ignore[misc]

    def scorer(self) -> Scorer:
        return _WandaScorer(self)


def per_output_ranks(scores: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Scores whose layer-wide ranking prunes about the same share of every output row: each weight's rank
    within its row over the row length, already-pruned weights lowest (0)."""
    rows = scores.reshape(scores.shape[0], -1).float()
    order = torch.argsort(torch.where(pruned.reshape(rows.shape), -1.0, rows), dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(rows.shape[1], device=rows.device).expand_as(order))
    quantile = (ranks + 1).float() / rows.shape[1]
    return torch.where(pruned.reshape(rows.shape), 0.0, quantile).reshape(scores.shape)


class _WandaScorer(LayerwiseScorer):
    label: ClassVar[str] = "Wanda"
    spec: WandaCriterion

    def statistic(self, module: torch.nn.Module) -> ColumnNorms:
        return ColumnNorms()

    def by_block(self) -> bool:
        return not self.spec.true_sequential

    def prune_layer(
        self, layer: LayerTarget, chosen: torch.Tensor, statistic: ColumnNorms
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = wanda_scores(torch.where(layer.mask, layer.orig, 0.0), statistic.mean_squares)
        frozen = ~layer.mask
        if self.spec.per_output and layer.pattern.single_weights:
            ranked = per_output_ranks(scores, frozen)
        else:
            ranked = encode(scores, frozen, frozen)
        return reselect(layer.pattern, ranked, chosen), {}
