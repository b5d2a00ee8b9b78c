r"""Inverse empirical Fisher from ``m`` gradients: the M-FAC / WoodFisher estimator, dense or block-diagonal.

The matrix is SparseML's (§2.4 of the peer study)

.. math:: F = \lambda I + \frac1m \sum_{k=1}^{m} g_k g_k^\top = \lambda I + \frac1m G^\top G,
          \qquad G \in \mathbb{R}^{m \times d},

and what pruning needs from it is ``diag(F⁻¹)`` (for the OBS saliency ``w²/(2[F⁻¹]ᵢᵢ)``) and the
product ``F⁻¹x`` (for the OBS weight update). Neither ever forms a ``d × d`` matrix.

**The M-FAC recursion, computed as a factorisation.** SparseML's ``FisherInverseFast`` runs, for
``k = 1..m`` with ``Λ = 1/λ``::

    v_k = Λ g_k − Σ_{j<k} (v_jᵀ g_k / d_j) v_j        d_k = m + g_kᵀ v_k
    F⁻¹x = Λx − Σ_j (v_jᵀ x / d_j) v_j               [F⁻¹]ᵢᵢ = Λ − Σ_j v_{j,i}² / d_j

That recursion is the LDLᵀ factorisation of the ``m × m`` matrix ``mI + Λ G Gᵀ``: the ``d_k`` are
its pivots and ``V = Λ L⁻¹ G``. Here the same quantities are computed with BLAS-3 kernels: the Gram
matrix ``K = G Gᵀ`` (``O(m²d)``), a Cholesky factor ``R Rᵀ = mλI + K`` (``O(m³)``, float64) and one
triangular solve ``W = √Λ · R⁻¹ G`` (``O(m²d)``), written over the gradient buffer in place. Then
``Σ_j v_j v_jᵀ / d_j = WᵀW`` exactly, so

.. math:: [F^{-1}]_{ii} = \Lambda - \sum_j W_{ji}^2, \qquad F^{-1}x = \Lambda x - W^\top (W x),

each ``O(md)``. ``tests/criteria/test_fisher.py`` checks this against the literal recursion and against an
explicit ``torch.linalg.inv``.

**Blocks.** With ``block_size = B`` the Fisher is treated as block-diagonal over consecutive chunks
of ``B`` coordinates of the flattened vector (chunks cross layer boundaries, as in SparseML). A
block with ``B > m`` is factored as above (memory ``m × B``, in place); a block with ``B ≤ m`` is
cheaper as an explicit ``B × B`` inverse (SparseML's ``FisherInverseFastSmallBlocks``). Blocks are
shared out over the listed ``devices`` in contiguous runs.

**Damping.** SparseML adds an absolute ``damp = 1e-5``. On a converged model the Fisher diagonal can
be ~1e-11, so ``[F⁻¹]ᵢᵢ ≈ 1/damp`` everywhere, the saliency becomes ``w²·damp/2`` and M-FAC silently
*is* magnitude pruning (study §6.4). The default here is relative damping (as SparseGPT's
``percdamp``): ``λ = damp × mean(diag(GᵀG/m))``. Absolute damping stays available, and either way a
warning says when ``λ`` dwarfs the data (`DAMP_WARN_RATIO`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence

import attrs
import torch

__all__ = [
    "DAMP_MODES",
    "DAMP_WARN_RATIO",
    "FisherInverse",
    "MemoryBudgetError",
    "MemoryPlan",
    "available_memory",
    "plan_memory",
]

logger = logging.getLogger(__name__)

DAMP_MODES = ("relative", "absolute")
# Warn when λ exceeds the mean Fisher diagonal by this factor: the data then changes [F⁻¹]ᵢᵢ too
# little to reorder weights, and the saliency ranks like w² (magnitude pruning).
DAMP_WARN_RATIO = 100.0
# Workspace per factorisation chunk (float64 copies of gradient columns): bounds the temporary memory.
_CHUNK_BYTES = 64 * 2**20


def _chunks(start: int, stop: int, width: int) -> Iterator[slice]:
    for begin in range(start, stop, width):
        yield slice(begin, min(begin + width, stop))


@attrs.define
class _Run:
    """A run of ``count`` equal blocks of ``size`` columns starting at ``start``, on one device."""

    start: int
    size: int
    count: int
    device: torch.device
    explicit: bool  # True: ``inv`` holds the B×B inverses; False: ``factor`` holds W (m × columns)
    factor: torch.Tensor | None = None
    inv: torch.Tensor | None = None

    @property
    def stop(self) -> int:
        return self.start + self.size * self.count


class FisherInverse:
    r"""``diag(F⁻¹)`` and ``F⁻¹x`` for ``F = λI + GᵀG/m``, dense (one block) or block-diagonal.

    Args:
        grads: the ``m × d`` gradient buffer, one gradient per row. It is **overwritten** with the
            factor ``W`` (in place, no second copy) wherever a block is factored on its device.
        damp: the damping; with ``damp_mode="relative"`` (default) ``λ = damp × mean(diag(GᵀG/m))``,
            with ``"absolute"`` ``λ = damp`` (SparseML's meaning, default there ``1e-5``).
        damp_mode: ``"relative"`` or ``"absolute"``.
        block_size: ``None`` for one dense block (the full M-FAC), else the block size ``B``.
        devices: where to factor and keep the blocks (default: the device of ``grads``). Blocks are
            split into contiguous runs, one per device; a single dense block uses the first device.

    Attributes:
        num_grads, dim: ``m`` and ``d``.
        fisher_scale: ``mean(diag(GᵀG/m))``, the data's own scale.
        damp: the absolute ``λ`` actually used.
        damp_ratio: ``λ / fisher_scale`` (``inf`` when every gradient is zero).
    """

    def __init__(
        self,
        grads: torch.Tensor,
        damp: float = 0.01,
        *,
        damp_mode: str = "relative",
        block_size: int | None = None,
        devices: Sequence[str | torch.device] | None = None,
    ) -> None:
        if not isinstance(grads, torch.Tensor) or grads.dim() != 2 or not grads.is_floating_point():
            raise ValueError(
                f"grads must be a floating-point tensor of shape (num_grads, dim), got "
                f"{type(grads).__name__} {tuple(getattr(grads, 'shape', ()))}"
            )
        if damp_mode not in DAMP_MODES:
            allowed = ", ".join(map(repr, DAMP_MODES))
            raise ValueError(f"damp_mode={damp_mode!r} is invalid: allowed values are {allowed}")
        if not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp > 0):
            raise ValueError(f"damp={damp!r} is invalid: allowed a finite number > 0")
        if block_size is not None and (
            isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
        ):
            raise ValueError(f"block_size={block_size!r} is invalid: allowed None (one dense block) or an integer >= 1")
        m, d = grads.shape
        if m < 1 or d < 1:
            raise ValueError(f"grads of shape {tuple(grads.shape)} is empty: need at least one gradient and coordinate")
        self.num_grads, self.dim = m, d
        self.dtype = grads.dtype
        self.block_size = d if block_size is None else min(block_size, d)
        self._home = grads.device
        placed = [torch.device(x) for x in devices] if devices else [grads.device]

        self.fisher_scale = _squared_norm(grads) / (m * d)
        if damp_mode == "absolute":
            self.damp = float(damp)
        elif self.fisher_scale > 0:
            self.damp = float(damp) * self.fisher_scale
        else:
            self.damp = float(damp)
        self.damp_ratio = self.damp / self.fisher_scale if self.fisher_scale > 0 else math.inf
        self._check_damping(damp_mode)

        self._runs = self._layout(placed)
        diag_parts = [self._factor(grads, run) for run in self._runs]
        self._diag = torch.cat([p.to(self._home) for p in diag_parts])

    # -- set-up ------------------------------------------------------------------------------

    def _check_damping(self, damp_mode: str) -> None:
        if self.fisher_scale == 0:
            logger.warning(
                "M-FAC: every gradient is zero, so the Fisher is λI and the scores rank like magnitude; "
                "check the loss, the data and that the pruned weights take part in the forward pass"
            )
        elif self.damp_ratio > DAMP_WARN_RATIO:
            hint = (
                "use damp_mode='relative' (λ = damp × mean Fisher diagonal)" if damp_mode == "absolute"
                else "lower damp"
            )
            logger.warning(
                "M-FAC: damping dominates: λ=%.3g is %.3g× the mean Fisher diagonal %.3g, so [F⁻¹]ᵢᵢ ≈ 1/λ "
                "for almost every weight and the scores rank like magnitude (and the OBS update is ~0); %s",
                self.damp, self.damp_ratio, self.fisher_scale, hint,
            )

    def _layout(self, devices: list[torch.device]) -> list[_Run]:
        """Runs of equal blocks, the full blocks split over the devices, then the partial last block."""
        size, m = self.block_size, self.num_grads
        full, rest = divmod(self.dim, size)
        runs: list[_Run] = []
        start = 0
        shares = [full // len(devices) + (i < full % len(devices)) for i in range(len(devices))]
        for device, count in zip(devices, shares):
            if count:
                runs.append(_Run(start, size, count, device, explicit=size <= m))
                start += size * count
        if rest:
            runs.append(_Run(start, rest, 1, devices[-1] if full else devices[0], explicit=rest <= m))
        return runs

    def _factor(self, grads: torch.Tensor, run: _Run) -> torch.Tensor:
        """Factor one run of blocks; returns its part of ``diag(F⁻¹)`` (float64 on the run's device)."""
        columns = grads[:, run.start : run.stop]
        if run.device != grads.device:
            columns = columns.to(run.device)  # the factor lives on the run's device from now on
        if run.explicit:
            return self._factor_explicit(columns, run)
        if run.count == 1:
            return self._factor_dense(columns, run)
        return self._factor_batched(columns, run)

    def _core(self, gram: torch.Tensor) -> torch.Tensor:
        """``√Λ · R⁻¹`` (batched) where ``R Rᵀ = mλI + GGᵀ``: Cholesky and triangular inverse in float64."""
        m = self.num_grads
        eye = torch.eye(m, dtype=torch.float64, device=gram.device)
        factor, info = torch.linalg.cholesky_ex(gram + m * self.damp * eye)
        if bool((info != 0).any()):
            raise RuntimeError(
                f"M-FAC: the {m}×{m} core matrix mλI + GGᵀ is not positive definite in float64 (λ={self.damp:.3g}); "
                f"raise damp or check the gradients for inf/nan"
            )
        inverse = torch.linalg.solve_triangular(factor, eye.expand_as(factor), upper=False)
        return inverse.mul_(math.sqrt(1.0 / self.damp))

    def _factor_dense(self, columns: torch.Tensor, run: _Run) -> torch.Tensor:
        """One Woodbury block, swept in column chunks: ``W = √Λ R⁻¹ G`` written over ``G``.

        The two ``O(m²d)`` products run as GEMMs in the gradients' dtype (a triangular solve is several
        times slower on CPU); the ``m × m`` work and the Gram accumulation across chunks are float64.
        """
        m, width = self.num_grads, columns.shape[1]
        step = max(1, _CHUNK_BYTES // (4 * m))
        gram = torch.zeros(m, m, dtype=torch.float64, device=columns.device)
        for cols in _chunks(0, width, step):
            part = columns[:, cols]
            gram += (part @ part.T).double()
        transform = self._core(gram).to(columns.dtype)
        diag = torch.empty(width, dtype=torch.float64, device=columns.device)
        for cols in _chunks(0, width, step):
            w = transform @ columns[:, cols]
            diag[cols] = 1.0 / self.damp - w.pow(2).sum(0).double()
            columns[:, cols] = w
        run.factor = columns
        return diag

    def _factor_batched(self, columns: torch.Tensor, run: _Run) -> torch.Tensor:
        """Many Woodbury blocks of equal size: batched GEMMs on strided views, a batch at a time."""
        m, size = self.num_grads, run.size
        per_batch = max(1, _CHUNK_BYTES // (4 * m * (size + 2 * m)))
        blocks = columns.view(m, run.count, size)
        diags = []
        for sel in _chunks(0, run.count, per_batch):
            x = blocks[:, sel].permute(1, 0, 2)  # (k, m, B), a strided view of the buffer
            transforms = self._core((x @ x.transpose(1, 2)).double()).to(columns.dtype)
            w = transforms @ x
            diags.append((1.0 / self.damp - w.pow(2).sum(1).double()).reshape(-1))
            blocks[:, sel] = w.permute(1, 0, 2)
        run.factor = columns
        return torch.cat(diags)

    def _factor_explicit(self, columns: torch.Tensor, run: _Run) -> torch.Tensor:
        """Blocks no larger than ``m``: explicit ``B × B`` inverses of ``λI + G_bᵀG_b/m``."""
        m, size = self.num_grads, run.size
        per_batch = max(1, _CHUNK_BYTES // (8 * size * (size + m)))
        blocks = columns.view(m, run.count, size)
        inv = torch.empty(run.count, size, size, dtype=columns.dtype, device=columns.device)
        diags = []
        eye = torch.eye(size, dtype=torch.float64, device=columns.device)
        for sel in _chunks(0, run.count, per_batch):
            x = blocks[:, sel].permute(1, 0, 2).double()  # (k, m, B)
            fisher = x.transpose(1, 2) @ x / m + self.damp * eye
            factor, info = torch.linalg.cholesky_ex(fisher)
            if bool((info != 0).any()):
                raise RuntimeError(
                    f"M-FAC: a {size}×{size} Fisher block is not positive definite (λ={self.damp:.3g}); raise damp"
                )
            block_inv = torch.cholesky_inverse(factor)
            diags.append(block_inv.diagonal(dim1=1, dim2=2).reshape(-1))
            inv[sel] = block_inv.to(columns.dtype)
        run.inv = inv
        return torch.cat(diags)

    # -- queries -----------------------------------------------------------------------------

    def diag(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``diag(F⁻¹)``, length ``d``, on the gradients' device, in ``dtype`` (default: the gradients').

        It is computed at set-up in float64; ask for ``torch.float64`` to rank without rounding.
        """
        return self._diag.to(dtype or self.dtype)

    def mul(self, x: torch.Tensor) -> torch.Tensor:
        """``F⁻¹ x`` for a length-``d`` vector, ``O(md)`` (accumulated in float64)."""
        if x.shape != (self.dim,):
            raise ValueError(f"x must have shape ({self.dim},), got {tuple(x.shape)}")
        out = torch.empty(self.dim, dtype=self.dtype, device=self._home)
        for run in self._runs:
            part = x[run.start : run.stop].to(run.device, torch.float64)
            y = self._mul_run(run, part)
            out[run.start : run.stop] = y.to(self._home, self.dtype)
        return out

    def _mul_run(self, run: _Run, x: torch.Tensor) -> torch.Tensor:
        m, size = self.num_grads, run.size
        if run.explicit:
            assert run.inv is not None
            xs = x.view(run.count, size, 1)
            return torch.cat([
                (run.inv[sel].double() @ xs[sel]).reshape(-1)
                for sel in _chunks(0, run.count, max(1, _CHUNK_BYTES // (8 * size * size)))
            ])
        assert run.factor is not None
        lam_inv = 1.0 / self.damp
        if run.count == 1:  # dense: W x over column chunks, then Λx − Wᵀ(Wx)
            step = max(1, _CHUNK_BYTES // (8 * m))
            t = torch.zeros(m, dtype=torch.float64, device=x.device)
            for cols in _chunks(0, size, step):
                t += run.factor[:, cols].double() @ x[cols]
            y = x * lam_inv
            for cols in _chunks(0, size, step):
                y[cols] -= run.factor[:, cols].double().T @ t
            return y
        blocks = run.factor.view(m, run.count, size)
        xs = x.view(run.count, size)
        y = xs * lam_inv
        for sel in _chunks(0, run.count, max(1, _CHUNK_BYTES // (8 * m * size))):
            w = blocks[:, sel].permute(1, 0, 2).double()  # (k, m, B)
            t = w @ xs[sel].unsqueeze(2)  # (k, m, 1)
            y[sel] -= (w.transpose(1, 2) @ t).squeeze(2)
        return y.reshape(-1)

    def __repr__(self) -> str:
        return (
            f"FisherInverse(num_grads={self.num_grads}, dim={self.dim}, block_size={self.block_size}, "
            f"damp={self.damp:.3g} ({self.damp_ratio:.3g}× the mean Fisher diagonal {self.fisher_scale:.3g}))"
        )


def _squared_norm(x: torch.Tensor) -> float:
    """``‖x‖²`` as a Python float (the norm is reduced in ``x``'s dtype without a copy)."""
    return float(torch.linalg.vector_norm(x)) ** 2


# ----------------------------------------------------------------------------------------------
# Memory plan
# ----------------------------------------------------------------------------------------------


class MemoryBudgetError(MemoryError):
    """The gradient buffer and Fisher blocks would not fit the memory budget; the message says what would."""


def available_memory() -> int:
    """Bytes of RAM available now: ``MemAvailable`` from ``/proc/meminfo``, else ``os.sysconf``."""
    try:
        with open("/proc/meminfo", encoding="ascii") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 0


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _plan_bytes(num_grads: int, dim: int, block_size: int | None, element: int) -> tuple[int, int, int]:
    """``(gradient buffer, Fisher blocks, workspace)`` bytes for ``num_grads`` gradients of ``dim`` coordinates."""
    size = dim if block_size is None else min(block_size, dim)
    blocks = math.ceil(dim / size) * size * size * element if size <= num_grads else 0
    workspace = 2 * min(_CHUNK_BYTES, num_grads * dim * 8) + 4 * dim * 8  # factor chunks + float64 d-vectors
    return num_grads * dim * element, blocks, workspace


@attrs.define
class MemoryPlan:
    """Bytes the M-FAC work needs, computed before any gradient is collected.

    * ``grad_buffer`` — the ``m × d`` gradient buffer (it becomes the factor ``W`` in place);
    * ``fisher_blocks`` — explicit ``B × B`` inverses when ``B ≤ m`` (``d/B · B²`` elements);
    * ``workspace`` — float64 chunks of the factorisation and the ``d``-vectors (diag, scores,
      update), bounded independently of ``m × d``.
    """

    num_grads: int
    dim: int
    block_size: int | None
    element_bytes: int
    grad_buffer: int
    fisher_blocks: int
    workspace: int
    budget: int | None
    budget_source: str

    @property
    def total(self) -> int:
        return self.grad_buffer + self.fisher_blocks + self.workspace

    @property
    def fits(self) -> bool:
        return self.budget is None or self.total <= self.budget

    def max_num_grads(self) -> int:
        """The largest ``num_grads`` (at most the planned one) that fits the budget; 0 if none does."""
        if self.fits:
            return self.num_grads
        assert self.budget is not None  # without a budget everything fits
        low, high = 0, self.num_grads  # bytes grow with m: bisect
        while low < high:
            mid = (low + high + 1) // 2
            if sum(_plan_bytes(mid, self.dim, self.block_size, self.element_bytes)) <= self.budget:
                low = mid
            else:
                high = mid - 1
        return low

    def check(self) -> None:
        """Raise `MemoryBudgetError`, with what would fit, when the plan exceeds the budget."""
        if self.fits:
            return
        suggestions = []
        m_fit = self.max_num_grads()
        if m_fit > 0:
            suggestions.append(f"num_grads <= {m_fit}")
        if self.fisher_blocks:
            suggestions.append(
                f"a fisher_block_size above num_grads={self.num_grads} (its blocks are then factored in place)"
            )
        suggestions.append("fewer pruned layers per pruner, or a larger memory_budget")
        raise MemoryBudgetError(f"M-FAC would need {self}, over the budget; try " + ", or ".join(suggestions))

    def __str__(self) -> str:
        parts = [
            f"{_gib(self.total)}: gradient buffer {self.num_grads} × {self.dim:,} × {self.element_bytes} B "
            f"= {_gib(self.grad_buffer)}"
        ]
        if self.fisher_blocks:
            parts.append(f"Fisher blocks {_gib(self.fisher_blocks)}")
        parts.append(f"workspace {_gib(self.workspace)}")
        budget = "no budget" if self.budget is None else f"budget {_gib(self.budget)} ({self.budget_source})"
        return ", ".join(parts) + f"; {budget}"


def plan_memory(
    num_grads: int,
    dim: int,
    block_size: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    budget: float | int | None = 0.5,
) -> MemoryPlan:
    """The `MemoryPlan` for ``num_grads`` gradients of ``dim`` coordinates.

    ``budget``: ``None`` for no limit, a float in ``(0, 1]`` for that fraction of the RAM available
    now (`available_memory`), or an int > 1 for a number of bytes.
    """
    element = torch.empty((), dtype=dtype).element_size()
    if budget is None:
        limit, source = None, "unlimited"
    elif isinstance(budget, float) and 0 < budget <= 1:
        avail = available_memory()
        limit, source = int(budget * avail), f"{budget:.0%} of {_gib(avail)} available"
    elif isinstance(budget, int) and not isinstance(budget, bool) and budget > 1:
        limit, source = budget, "bytes"
    else:
        raise ValueError(
            f"memory_budget={budget!r} is invalid: allowed None, a fraction in (0, 1] of available RAM, "
            f"or a number of bytes > 1"
        )
    return MemoryPlan(num_grads, dim, block_size, element, *_plan_bytes(num_grads, dim, block_size, element),
                      limit, source)
