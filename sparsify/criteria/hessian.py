"""SparseGPT's second-order statistics: the layer-input Hessian ``H = XᵀX / n`` and the factor of its inverse.

Kept apart from `sparsify.criteria.sparsegpt` (the solver) because both the in-memory and the streaming paths
accumulate it per layer, and its memory (``C²`` floats, two matrices at a time while factoring) is what bounds
a block's peak.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .layerwise import count_nonfinite, summed_over_ranks

__all__ = ["Hessian", "factor_owned", "inverse_factor"]

logger = logging.getLogger("sparsify.criteria.sparsegpt")  # the name users filter SparseGPT's warnings by


class Hessian:
    """``H = Σ x̂ x̂ᵀ / rows`` over input columns (float32, ``C²`` floats), with the column means (for the bias)
    and, when references are given, the cross term ``Σ x x̂ᵀ / rows`` with the same samples' inputs before
    this update's earlier layers were pruned (another ``C²``)."""

    def __init__(self) -> None:
        self.sum: torch.Tensor | None = None
        self.column_sum: torch.Tensor | None = None
        self.cross: torch.Tensor | None = None
        self.reference_sum: torch.Tensor | None = None
        self.rows = 0
        self.nonfinite: torch.Tensor | None = None  # NaN / inf input values seen (`refuse_nonfinite`)
        self.pending: list[torch.Tensor] = []
        self.factors: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_reader = False  # the layer about to read it is the last (`factor` may then consume the sum)
        self.upper_only = False  # `sum` holds only its upper bands (`_add_gram`); `matrices` completes it

    def add_reference(self, columns: torch.Tensor) -> None:
        self.pending.append(columns)

    def add(self, columns: torch.Tensor) -> None:
        size = columns.shape[1]
        if self.sum is None:
            self.sum = torch.zeros(size, size, device=columns.device)
            self.column_sum = torch.zeros(size, device=columns.device)
        assert self.column_sum is not None
        self.upper_only = _add_gram(self.sum, columns)
        sums = columns.sum(0)
        self.column_sum += sums
        self.rows += columns.shape[0]
        self.nonfinite = count_nonfinite(columns, sums, self.nonfinite)
        if self.pending:
            reference = self.pending.pop(0)
            reference_sums = reference.sum(0)
            self.nonfinite = count_nonfinite(reference, reference_sums, self.nonfinite)
            if self.cross is None:
                self.cross = torch.zeros_like(self.sum)
                self.reference_sum = torch.zeros_like(self.column_sum)
            assert self.reference_sum is not None
            self.cross.addmm_(reference.t(), columns)
            self.reference_sum += reference_sums

    def synchronize(self) -> None:
        """Sum the statistics of every rank of a multi-process group (`summed_over_ranks`)."""
        if self.nonfinite is None and self.sum is not None:  # every rank sums the same tensors
            self.nonfinite = torch.zeros((), dtype=torch.int64, device=self.sum.device)
        stats = (self.sum, self.column_sum, self.cross, self.reference_sum, self.nonfinite)
        parts = [t for t in stats if t is not None]
        self.rows = summed_over_ranks(parts, self.rows)

    def matrices(self, order: torch.Tensor | None, bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(H, G)`` in processing ``order``, each with a constant-one input appended last when ``bias``:
        ``H = X̂ᵀX̂ / n`` and ``G = XᵀX̂ / n`` (``None`` without references)."""
        assert self.sum is not None and self.column_sum is not None
        if self.upper_only:
            _mirror_upper(self.sum)
            self.upper_only = False
        rows = max(self.rows, 1)

        def arrange(matrix: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            matrix = matrix / rows if order is None else matrix[order][:, order] / rows
            if not bias:
                return matrix
            left = (left if order is None else left[order]) / rows
            right = (right if order is None else right[order]) / rows
            corner = torch.ones(1, 1, device=matrix.device)
            return torch.cat([torch.cat([matrix, left.unsqueeze(1)], 1), torch.cat([right.unsqueeze(0), corner], 1)])

        hessian = arrange(self.sum, self.column_sum, self.column_sum)
        if self.cross is None:
            return hessian, None
        assert self.reference_sum is not None
        return hessian, arrange(self.cross, self.reference_sum, self.column_sum)

    def factor(self, order: torch.Tensor | None, damp: float, bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, alive)`` for the columns in ``order`` (cached: layers sharing this input share it).

        When ``last_reader`` is set (by the runtime, before the last layer sharing this input is pruned) and
        nothing reads ``H`` itself afterwards, the sum is scaled and factored in place and dropped: the largest
        layer's factorisation then holds one ``C²`` less at its peak."""
        key = (None if order is None else tuple(order.tolist()), damp, bias)
        if key not in self.factors:
            # the Cholesky factorisation reads one triangle only: the upper bands of the sum are all it needs
            if self.last_reader and order is None and not bias and self.cross is None and self.sum is not None:
                owned = [self.sum.div_(max(self.rows, 1))]
                self.sum = None
            else:
                owned = [self.matrices(order, bias)[0]]
            self.factors[key] = factor_owned(owned, damp)
        return self.factors[key]


#: columns per band of `_add_gram`
_BAND = 256


def _add_gram(total: torch.Tensor, columns: torch.Tensor) -> bool:
    """``total += columnsᵀ columns``; returns whether only its upper bands were added (then the rest of
    ``total`` is untouched). ``XᵀX`` is symmetric: on the CPU, for ``C`` of at least two bands, one matrix product
    per band of `_BAND` rows computes that band from its diagonal on — about ``C²/2 + C·_BAND/2`` of the ``C²``
    columns' products (55 % at ``C = 2816``). `factor_owned` reads no more than that; `_mirror_upper` completes
    the matrix for readers of all of it."""
    size = columns.shape[1]
    if size < 2 * _BAND or columns.device.type != "cpu":
        total.addmm_(columns.t(), columns)
        return False
    for start in range(0, size, _BAND):
        stop = min(start + _BAND, size)
        total[start:stop, start:].addmm_(columns[:, start:stop].t(), columns[:, start:])
    return True


def _mirror_upper(matrix: torch.Tensor) -> None:
    """Fill the part of ``matrix`` below its `_BAND` diagonal blocks from the part above (`_add_gram`)."""
    size = matrix.shape[0]
    for start in range(0, size, _BAND):
        stop = min(start + _BAND, size)
        matrix[stop:, start:stop] = matrix[start:stop, stop:].t()


def inverse_factor(hessian: torch.Tensor, damp: float, *, overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, alive)``: the upper Cholesky factor of ``(H + λI)⁻¹`` (dead inputs set to ``H_jj = 1``) and which
    input columns ever see a non-zero value. Damping grows tenfold (with a warning) while ``H`` is singular.
    With ``overwrite``, ``hessian`` (a fresh copy the caller gives up) is damped in place instead of copied.

    ``U`` comes from one Cholesky factorisation and one triangular inverse instead of three factorisations
    (Cholesky, its inverse, Cholesky again: a third more work): with ``P`` the reversal of the columns and
    ``P H P = L Lᵀ``, ``H⁻¹ = (P L⁻¹ P)ᵀ (P L⁻¹ P)`` and ``P L⁻¹ P`` is upper triangular with a positive
    diagonal — the factor, which is unique."""
    return factor_owned([hessian if overwrite else hessian.clone()], damp)


def factor_owned(owned: list[torch.Tensor], damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`inverse_factor` of the one matrix in ``owned``, taken out of the list so that, once nothing else refers
    to it, it is freed as soon as its reversed copy exists: at most two ``C²`` matrices at a time (with the
    triangular inverse's quarter-size temporaries) beyond what callers still hold."""
    matrix = owned.pop()
    diag = matrix.diagonal()
    alive = diag > 0
    diag[~alive] = 1.0
    step = damp * float(diag.mean())
    diag.add_(step)
    flipped = matrix.flip(0, 1)
    del matrix, diag
    diag = flipped.diagonal()
    for attempt in range(6):
        factor, info = torch.linalg.cholesky_ex(flipped)
        if int(info) == 0:
            break
        logger.warning("SparseGPT: the damped Hessian is not positive definite; damping %g× more", 10 ** (attempt + 1))
        diag.add_(step * (10 ** (attempt + 1) - 10**attempt))
    else:
        raise RuntimeError("SparseGPT: the Hessian stayed singular after damping it 100000× more; check the inputs")
    del flipped, diag
    inverse = _lower_inverse([factor])
    del factor
    return inverse.flip(0, 1), alive


#: below this size a triangular inverse is one triangular solve; above it, two halves and two matrix products
_LEAF = 256


def _lower_inverse(owned: list[torch.Tensor]) -> torch.Tensor:
    """``L⁻¹`` of the lower-triangular ``L`` in ``owned`` (taken out: freed once its inverse is built) by halves,
    ``[[A, 0], [B, C]]⁻¹ = [[A⁻¹, 0], [−C⁻¹ B A⁻¹, C⁻¹]]``, the corner by two triangular solves: about ``C³/3``
    operations (a solve against the identity does ``C³``)."""
    lower = owned.pop()
    size = lower.shape[0]
    if size <= _LEAF:
        eye = torch.eye(size, dtype=lower.dtype, device=lower.device)
        return torch.linalg.solve_triangular(lower, eye, upper=False)
    half = size // 2
    top, corner, bottom = lower[:half, :half], lower[half:, :half], lower[half:, half:]
    out = torch.zeros_like(lower)
    below = torch.linalg.solve_triangular(bottom, corner, upper=False)  # C⁻¹ B
    out[half:, :half] = torch.linalg.solve_triangular(top, below, upper=False, left=False).neg_()  # (C⁻¹ B) A⁻¹
    del below
    out[:half, :half] = _lower_inverse([top])
    out[half:, half:] = _lower_inverse([bottom])
    return out
