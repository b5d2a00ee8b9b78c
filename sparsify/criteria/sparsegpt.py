r"""``sparsegpt``: layer-wise OBS pruning with weight reconstruction (Frantar & Alistarh, 2023).

For one layer with weight ``W`` (``rows × columns``; a convolution's ``weight.flatten(1)``) and calibration
inputs ``X`` (one column per input feature or unfolded patch element), SparseGPT minimises the layer's output
error ``‖W X − Ŵ X‖²`` under the mask, using the Hessian ``H = X Xᵀ / n`` of that error:

1. ``H ← H + λ I`` with ``λ = damp · mean(diag H)`` (SparseGPT's ``percdamp``, Core ML Tools'
   ``hessian_dampening``); inputs that are always zero get ``H_jj = 1`` and their weights score 0;
2. ``U`` = the upper Cholesky factor of ``H⁻¹``;
3. columns are processed left to right in blocks of ``block_size`` (the paper's lazy batches, Core ML Tools'
   ``processing_group_size``). At each block the mask is chosen on the *current* weights with the saliency
   ``w_ij² / U_jj²``; then each column ``j`` in turn is pruned and its error ``(w_j − q_j) / U_jj`` is spread
   over the later columns of the block through row ``j`` of ``U`` (the OBS update), the block's accumulated
   error reaching the rest of the layer at its end.

How the mask is chosen inside that loop is the pattern's answer (`Pattern.column_layout`: a mode, a column order
and where blocks may end; the pattern and scope fixed each layer's count before):

* single weights — every ``rerank_every`` blocks the rest of the layer is ranked (weights already decided keep
  their decision), which gives each of the next blocks its share of the layer's count; each block takes its
  share among its own weights when the loop reaches it. So the layer's count is exact and, unlike the paper's
  fixed share per block, columns may differ in sparsity;
* block and tile patterns — at every block, the whole layer is ranked again through the pattern's
  own groups (weights already decided keep their decision), and the groups inside the block are fixed. Groups
  never straddle blocks: a convolution's columns are reordered (kernel position major) for tiles and kept in
  ``flatten(1)`` order for kernels and whole input channels, and block edges move to group edges;
* n:m along input channels — every run of ``m`` columns is decided when the loop reaches it, on the weights
  updated so far (the paper's n:m); along output channels every column is decided when reached;
* whole output channels (``per_channel``, ``"Nxchannel"``) — rows are chosen once by their exact cost
  ``w_r H w_rᵀ`` (a removed row cannot be compensated within the layer);
* any other pattern whose groups are pruned whole (a registered one that says nothing of its columns) is
  re-selected once, over one block of every column, on the first saliencies, then gets the OBS update; one whose
  groups are not pruned whole keeps the chosen mask and gets the OBS update only.

Memory per layer with ``C`` input columns: the float32 Hessian and its inverse factor, ``2·C²·4`` bytes at
rest and at most two more ``C²`` while factoring (`sparsify.criteria.hessian`; the last layer reading a
Hessian factors it in place), plus one float32 copy of the weight (the column loop updates it in place) and
one unfolded calibration batch; layers sharing an input (``q``/``k``/``v``) share one Hessian. A block of a
chain calibrated at once (the default, ``true_sequential=False``) holds its layers' Hessians together (a Llama
decoder layer: four); with ``sequential=False`` every layer's Hessian is held at once. Layers pruned in an
earlier stage of the same update stand in with their new weights for the later stages' calibration.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import torch

from .._checks import as_float, boolean, check_range, positive_int
from .._memory import release_freed_memory
from ..patterns import ColumnLayout, Pattern
from .base import Criterion, Scorer, register_criterion
from .hessian import Hessian, inverse_factor
from .layerwise import LayerTarget, LayerwiseScorer
from .sparsegpt_select import Fixed, Groups, Runs

__all__ = ["Hessian", "SparseGPTCriterion", "inverse_factor", "obs_prune"]

logger = logging.getLogger(__name__)

_OWNER = "SparseGPTCriterion"



def _to_damp(value: Any) -> float:
    value = as_float(_OWNER, "damp", value)
    check_range(_OWNER, "damp", value, 0.0, low_open=True)
    return value



@register_criterion
@attrs.define(eq=True, frozen=True)
class SparseGPTCriterion(Criterion):
    """Layer-wise OBS with the SparseGPT weight update (see the module docs).

    Args:
        num_batches: how many items of the sampler's data calibrate each update (128 in the paper and in Core
            ML Tools' ``calibration_nsamples``).
        block_size: columns per lazy-update block and mask-selection step (SparseGPT's ``blocksize``, Core ML
            Tools' ``processing_group_size``: 128).
        damp: relative dampening ``λ = damp · mean(diag H)`` (``percdamp``, ``hessian_dampening``: 0.01).
        sequential: calibrate each layer on the outputs of the layers pruned and updated before it (else all
            layers on the current model, in one pass, holding every Hessian at once).
        true_sequential: with ``sequential``, also inside a block of a chain (a decoder layer): ``o_proj`` is
            calibrated on the pruned ``q/k/v``, the MLP on the pruned attention (GPTQ's and SparseGPT's
            ``--true-sequential``). By default (``False``) every layer of a block is calibrated on one forward of
            that block, with the blocks before it pruned: the reference code's default and Core ML Tools'
            ``LayerwiseCompressor`` order. Layers outside a detected chain are calibrated one after the other
            either way, and so is every layer with ``asymmetric`` (whose point is to correct the error of the
            layers before it: per block it was worse on the benchmark transformer, ``docs/oneshot.md``).
        update_bias: let the layer's bias take part in the reconstruction (a constant input, never pruned, last
            in the column order), so it absorbs the mean of the pruning error.
        rerank_every: for single-weight patterns, how many blocks share one ranking of the rest of the layer:
            it gives each of them its share of the layer's count, and each block takes its share among its own
            weights when the loop reaches it. ``1`` ranks the rest of the layer at every block (four times the
            selection work at the default; the selection runs over ``rows × remaining columns``).
        asymmetric: reconstruct each layer's output *before* this update, ``‖W X − Ŵ X̂‖²`` with ``X`` the
            layer's input in the unpruned model and ``X̂`` in the pruned one (GPTAQ's asymmetric calibration),
            instead of ``‖(W − Ŵ) X̂‖²``: the layer also corrects the error of the layers before it. Costs a
            second forward per calibration batch and another ``C²`` matrix.
    """

    kind: ClassVar[str] = "sparsegpt"
    needs_data: ClassVar[bool] = True
    layerwise: ClassVar[bool] = True

    # mypy's attrs plugin cannot type a converter that a call returns: hence ignore[misc] below
    num_batches: int = attrs.field(default=128, converter=positive_int(_OWNER, "num_batches"))  # type: ignore[misc]
    block_size: int = attrs.field(default=128, converter=positive_int(_OWNER, "block_size"))  # type: ignore[misc]
    damp: float = attrs.field(default=0.01, converter=_to_damp)
    sequential: bool = attrs.field(default=True, converter=boolean(_OWNER, "sequential"))  # type: ignore[misc]
    update_bias: bool = attrs.field(default=False, converter=boolean(_OWNER, "update_bias"))  # type: ignore[misc]
    asymmetric: bool = attrs.field(default=False, converter=boolean(_OWNER, "asymmetric"))  # type: ignore[misc]
    true_sequential: bool = attrs.field(default=False,
                                        converter=boolean(_OWNER, "true_sequential"))  # type: ignore[misc]
    rerank_every: int = attrs.field(default=4, converter=positive_int(_OWNER, "rerank_every"))  # type: ignore[misc]

    def scorer(self) -> Scorer:
        return _SparseGPTScorer(self)


def _blocks(columns: int, block_size: int, cuts: Sequence[int] | None) -> list[tuple[int, int]]:
    """``[start, stop)`` blocks of about ``block_size`` columns whose edges lie on ``cuts`` (all if ``None``)."""
    blocks, start = [], 0
    while start < columns:
        stop = min(start + block_size, columns)
        if cuts is not None and stop < columns:
            stop = cuts[bisect.bisect_left(cuts, stop)]
        blocks.append((start, stop))
        start = stop
    return blocks


#: from this many input columns on, the factorisation's temporaries (4·C² bytes each) are handed back to the system
#: before the column loop; below it they are few MiB, which the loop's own allocations reuse (a trim costs ~3 ms)
_TRIM_COLUMNS = 2048

#: columns per inner step of the column loop: inside a step each pruned column's error reaches the step's later
#: columns one rank-1 update at a time; at the step's end one matrix product carries the step's errors to the
#: rest of the block. The same updates as one rank-1 update per column over the whole block, reassociated:
#: the rank-1 work (memory-bound) shrinks by ``block_size / SUB_BLOCK``, the rest runs as matrix products.
SUB_BLOCK = 16


def _transposed(columns: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``columns.t()`` for a few columns of a wide row-major matrix: first gathered row by
    row, then transposed. Transposing them straight from the matrix reads one element per row at a stride of
    the row length — with a power-of-two row (1024 floats) every read lands in the same cache sets, 10× slower
    (2.7 ms against 0.26 ms for 128 of 2816 × 1024)."""
    return columns.contiguous().t().contiguous()


def obs_prune(
    weight: torch.Tensor,
    factor: torch.Tensor,
    selector: Any,
    block_size: int,
    cuts: Sequence[int] | None = None,
    columns: int | None = None,
    *,
    owned: bool = False,
) -> torch.Tensor:
    """SparseGPT's column loop: ``weight`` (``rows × C``, float) pruned where ``selector.pruned`` says, with the
    OBS update through ``factor`` (`inverse_factor`'s ``U``). ``selector.block(start, stop, W, diag)`` is called
    at each block and, for a per-column selector, ``selector.column(j, start, block, diag)`` at each column
    before ``j`` is pruned (``block``: the block transposed, ``columns × rows``); it returns the (absolute) end of
    the columns it has just decided from ``j`` on, or ``None``. Only the first ``columns`` are pruned (default:
    all); the rest (a bias column) only take the updates. With ``owned``, ``weight`` itself is updated and
    returned (no copy of it).

    A block is processed transposed (``columns × rows``, each column contiguous), in steps of `SUB_BLOCK`
    columns whose edges lie on ``cuts`` (a per-column selector reads a whole n:m run at its first column, so a
    run must not straddle two steps). A column's error is its value where pruned, times ``1 / U_jj``: one
    product with the decided mask pre-scaled by ``1 / U_jj`` (for the whole block, or run by run as a
    per-column selector decides them). The pruned weights are zeroed once at the block's end: no later column
    of the block reads a finished one."""
    if not owned:  # else ``weight`` is a fresh tensor the caller gives up, updated in place
        weight = weight.clone()
    diag = factor.diagonal()
    per_column = getattr(selector, "per_column", True)
    limit = weight.shape[1] if columns is None else columns
    for start, stop in _blocks(limit, block_size, cuts):
        selector.block(start, stop, weight[:, :limit], diag[:limit])
        block = _transposed(weight[:, start:stop])  # block[i] is column start + i
        rows_view = block.t()  # the block as rows × columns
        errors = torch.empty_like(block)
        local = factor[start:stop, start:stop]
        inverse = local.diagonal().reciprocal()
        pruned = selector.pruned[:, start:stop]  # a view: a per-column selector fills it as the loop goes
        inner = None if cuts is None else sorted({c - start for c in cuts if start < c < stop} | {stop - start})
        width = stop - start
        if per_column:  # filled run by run as the selector decides them (a column it never decides: kept)
            scaled = torch.zeros_like(block)
        else:  # the mask is known for the whole block: transposed like it, and pre-scaled by 1 / U_jj
            scaled = _transposed(pruned).to(block.dtype).mul_(inverse.unsqueeze(1))
        # one view per column, made once per block (indexing is most of a column's Python cost)
        columns_, errors_, local_, scaled_ = block.unbind(0), errors.unbind(0), local.unbind(0), scaled.unbind(0)
        for first, last in _blocks(width, SUB_BLOCK, inner):
            for i in range(first, last):
                if per_column:
                    decided = selector.column(start + i, start, block, diag)
                    if decided is not None:
                        end = decided - start
                        torch.mul(pruned[:, i:end].t(), inverse[i:end].unsqueeze(1), out=scaled[i:end])
                torch.mul(columns_[i], scaled_[i], out=errors_[i])
                if i + 1 < last:
                    block[i + 1 : last].addr_(local_[i][i + 1 : last], errors_[i], alpha=-1)
            if last < width:
                block[last:].addmm_(local[first:last, last:].t(), errors[first:last], alpha=-1)
        block.masked_fill_(_transposed(pruned), 0.0)
        weight[:, start:stop] = rows_view
        weight[:, stop:].addmm_(errors.t(), factor[start:stop, stop:], alpha=-1)
    return weight


def _plan(pattern: Pattern, shape: torch.Size, chosen: torch.Tensor, device: torch.device) -> ColumnLayout:
    """The pattern's `ColumnLayout` for this weight and chosen mask, its processing order on ``device``."""
    layout = pattern.column_layout(shape, chosen)
    if layout.order is None:
        return layout
    return attrs.evolve(layout, order=layout.order.to(device))


class _SparseGPTScorer(LayerwiseScorer):
    label: ClassVar[str] = "SparseGPT"
    zeroes_pruned: ClassVar[bool] = True  # the column loop zeroes every weight it prunes
    spec: SparseGPTCriterion

    def statistic(self, module: torch.nn.Module) -> Hessian:
        return Hessian()

    def wants_reference(self) -> bool:
        return self.spec.asymmetric

    def reselects_alone(self, pruner: Any, name: str) -> bool:
        # single weights: `Groups` reads only the chosen mask's count; n:m: `Runs` only its count in each run
        # (whole rows and groups read the mask)
        pattern = pruner.targets[name].pattern
        return name in self.names and (pattern.single_weights or pattern.counts_per_run)

    def by_block(self) -> bool:
        return not (self.spec.true_sequential or self.spec.asymmetric)

    def prune_layer(
        self, layer: LayerTarget, chosen: torch.Tensor, statistic: Hessian
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        orig = layer.orig
        shape, pattern = orig.shape, layer.pattern
        current = layer.mask
        bias = getattr(layer.module, "bias", None) if self.spec.update_bias else None
        layout = _plan(pattern, shape, chosen, statistic.sum.device if statistic.sum is not None else orig.device)
        mode, order, cuts, counts = layout.mode, layout.order, layout.edges, layout.run_counts
        pattern = layout.pattern or pattern  # n:m's unstructured ramp-up stage is re-selected unstructured
        if mode == "rows":  # whole rows read H itself after the factor: it must not be consumed
            statistic.last_reader = False
        factor, alive = statistic.factor(order, self.spec.damp, bias is not None)
        if factor.shape[0] >= _TRIM_COLUMNS:  # the factorisation's C² temporaries, before the loop allocates its own
            release_freed_memory()
        device, columns = factor.device, math.prod(shape[1:])
        # a pattern may bring weights back (n:m; the machine's masks only grow for the others): start them from
        # their trained values, as a regrown weight of any criterion does, rather than from zero
        from_orig = layer.pattern.may_regrow or bool(current.all())  # nothing to zero when all is kept
        start = orig if from_orig else torch.where(current, orig, 0.0)
        weight = start.to(device, torch.float32).reshape(shape[0], -1)
        if order is not None:
            weight = weight[:, order]
        if bias is not None:
            weight = torch.cat([weight, bias.detach().to(device, torch.float32).unsqueeze(1)], 1)
        hessian = None  # H itself (another C²) only where it is read: asymmetric fits and whole rows
        if statistic.cross is not None:  # ‖W X − Ŵ X̂‖²: first the least-squares fit of the dense outputs
            hessian, cross = statistic.matrices(order, bias is not None)
            assert cross is not None
            weight = weight + (weight @ (cross - hessian)) @ factor.t() @ factor  # (ridge toward W)
            del cross
        alive = alive[:columns]
        frozen = ~current.reshape(shape[0], -1).to(device)
        if order is not None:
            frozen = frozen[:, order]
        selector: Any
        if mode == "runs":
            assert counts is not None
            kernel = math.prod(shape[2:]) if len(shape) > 2 else 1
            selector = Runs(layout, counts.to(device), kernel, shape[1], alive.float(), shape[0])
        elif mode == "fixed":
            pruned = ~chosen.reshape(shape[0], -1).to(device)
            selector = Fixed(pruned if order is None else pruned[:, order])
        else:
            row_cost = None
            if mode == "rows":
                if hessian is None:
                    hessian = statistic.matrices(order, bias is not None)[0]
                live = weight[:, :columns]
                row_cost = ((live @ hessian[:columns, :columns]) * live).sum(1)
            selector = Groups(pattern, shape, order, chosen.to(device), frozen, alive.float(), row_cost,
                               self.spec.rerank_every)
        del hessian
        if weight.untyped_storage().data_ptr() == orig.untyped_storage().data_ptr():
            weight = weight.clone()  # the layer's own weight (a pattern that may regrow, float32): not updated
        new = obs_prune(weight, factor, selector, self.spec.block_size, cuts, columns, owned=True)
        del weight
        values: dict[str, torch.Tensor] = {}
        if bias is not None:
            values["bias"] = new[:, columns].to(bias.device, bias.dtype)
            new = new[:, :columns]
        pruned = selector.pruned
        if order is not None:
            unordered = torch.empty_like(new)
            unordered[:, order] = new
            new = unordered
            flat = torch.empty_like(pruned)
            flat[:, order] = pruned
            pruned = flat
        keep = (~pruned).reshape(shape).to(orig.device)
        self.log.append({"module": layer.name, "columns": columns, "rows": shape[0], "samples": statistic.rows,
                         "hessian_bytes": 4 * factor.shape[1] ** 2, "mode": mode})
        values[layer.param_name] = new.reshape(shape).to(orig.device, orig.dtype)
        return keep, values
