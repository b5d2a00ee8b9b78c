"""The Core ML side of `sparsify.export.coreml.export_coreml`: which constant is which torch weight, how
each is stored, and the check of the saved package against that plan.

* **Find each torch weight** among the dense conversion's constants by its values (`match_constants`):
  batch-norm fusion renames constants and scales conv weights per output channel.
* **Plan** each constant's storage with the same rule `sparsify.analysis.model_report` uses for its
  estimate (`sparsify.analysis.sizing.stored_tensor`): the smallest of dense, sparse (pruned
  weights; any weight with ``sparse_weights="all"``) and, when asked, their palettized or quantized
  forms (iOS18).
* **Apply** with Core ML Tools' public API: ``prune_weights`` with an ``OpThresholdPrunerConfig`` of
  threshold 0 per constant (only exact zeros are dropped), then ``palettize_weights`` (one table per
  tensor, from `sparsify.export.palette`: k-means over the kept values only) or
  ``linear_quantize_weights`` (symmetric int8, one scale per output channel) with
  ``joint_compression=True``, which stores a sparse weight's kept values compressed and keeps its
  mask (``constexpr_lut_to_sparse`` / ``constexpr_sparse_blockwise_shift_scale``).
* **Verify** the saved package (`rows`, `verify`): every planned storage is there, no non-zero was
  lost, and each compressed weight decodes (`sparsify.export.decode`) to within its compression
  error of the dense constant, which the report gives per row.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch

from ..analysis.sizing import JOINT_TARGET, StoredTensor, stored_tensor
from .mlpackage import PackageReport, WeightInfo
from .palette import dense_palette, sparse_palette
from .temporary import discard_package

__all__ = ["Log", "apply_plan", "match_constants", "plan_storage", "source_constant"]

logger = logging.getLogger("sparsify.export.coreml")

_SIZING_PRECISION = {"float16": "fp16", "float32": "fp32"}  # sparsify.analysis.sizing's names
_SUFFIXES = ("_sparsified", "_palettized", "_quantized")  # what Core ML Tools appends to a compressed op's name


class Log:
    """Warnings collected during an export; emitted through ``logging`` once the export is done (after
    `sparsify.export.quiet.quiet` has restored ``sys.stderr``) and kept in the report."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warn(self, message: str) -> None:
        self.messages.append(message)

    def emit(self) -> None:
        for message in self.messages:
            logger.warning(message)


def match_constants(tensors: dict[str, torch.Tensor], consts: dict[str, np.ndarray]) -> dict[str, str]:
    """Which Core ML constant holds which torch tensor: ``{constant name: torch name}``.

    A constant matches a tensor of rank >= 2 when it equals the tensor (or its transpose) times a
    per-output-channel scale (1 unless batch norm was fused in), up to float16 rounding; a rank-1
    tensor (a bias) when it equals it, and only if its values are not all the same (a fresh batch
    norm's zeros and ones would match anything). A fused bias is no longer any torch tensor. Names
    are tried first; then constants in program order, starting after the previous match, so that the
    usual case (same order on both sides) costs one comparison per tensor.
    """
    names = list(consts)
    by_name = {_plain_name(n): i for i, n in enumerate(names)}
    taken: set[int] = set()
    origin: dict[str, str] = {}
    cursor = 0
    for tname, tensor in tensors.items():
        weight = tensor.numpy()
        key = tname.replace(".", "_")
        candidates = [by_name[k] for k in (key, "p_" + key, "b_" + key) if k in by_name]
        if weight.ndim >= 2 or (weight.size > 1 and np.ptp(weight) > 0):
            order = [*range(cursor, len(names)), *range(cursor)]
            shapes = {weight.shape, weight.T.shape} if weight.ndim == 2 else {weight.shape}
            candidates += [i for i in order if consts[names[i]].shape in shapes]
        for i in dict.fromkeys(candidates):
            if i not in taken and _derived_from(consts[names[i]], weight):
                taken.add(i)
                origin[names[i]] = tname
                cursor = i + 1
                break
    return origin


def _plain_name(coreml_name: str) -> str:
    return re.sub(r"_to_fp(16|32)$", "", coreml_name)


def _derived_from(const: np.ndarray, weight: np.ndarray) -> bool:
    """``const ≈ scale[c] * weight`` with one scale per output channel (dim 0), fp16 tolerance."""
    if const.shape != weight.shape:
        if weight.ndim != 2 or const.shape != weight.T.shape:
            return False
        weight = weight.T
    if weight.ndim < 2:
        return bool(np.allclose(const.astype(np.float64), weight, rtol=2**-10, atol=1e-7))
    c = const.astype(np.float64).reshape(const.shape[0], -1)
    w = weight.astype(np.float64).reshape(weight.shape[0], -1)
    ww = np.einsum("ij,ij->i", w, w)
    scale = np.divide(np.einsum("ij,ij->i", c, w), ww, out=np.zeros_like(ww), where=ww > 0)
    expected = scale[:, None] * w
    return bool(np.all(np.abs(c - expected) <= 2**-10 * np.abs(expected) + 1e-7))


def sizing_target(target_name: str) -> str:
    """The `sparsify.analysis.sizing` target whose file layout a Core ML target uses."""
    import coremltools as ct

    target = ct.target[target_name]
    return JOINT_TARGET if target >= ct.target.iOS18 else "iOS16"


def plan_storage(
    consts: dict[str, np.ndarray],
    origin: dict[str, str],
    tensors: dict[str, torch.Tensor],
    pruned: set[str],
    *,
    sparse_weights: str,
    precision: str,
    target_name: str,
    palettize_bits: int | None,
    quantize: str | None,
    log: Log,
) -> dict[str, StoredTensor]:
    """``{constant name: form}`` for every constant not stored plain dense; warns about pruned tensors
    that will not be stored sparse."""
    located = set(origin.values())
    tname: str | None
    for tname in sorted(pruned - located):
        shape = tuple(tensors[tname].shape) if tname in tensors else "?"
        log.warn(f"{tname} (pruned, shape {shape}) was not found among the Core ML weights (unused by forward, "
                 "or transformed beyond a per-channel scale by the converter): it is stored as converted")
    rule = "sparsify_all" if sparse_weights == "all" else "sparsify"
    size_args = {"precision": _SIZING_PRECISION[precision], "target": sizing_target(target_name)}
    plan = {}
    for cname, value in consts.items():
        tname = origin.get(cname)
        is_pruned = tname in pruned
        numel, nnz = value.size, int(np.count_nonzero(value))
        channels = value.shape[0] if value.ndim else 1
        form = stored_tensor(numel, value.ndim, nnz, metadata=is_pruned, rule=rule, palettize_bits=palettize_bits,
                             quantize=quantize, channels=channels, **size_args)
        if form.storage != "dense":
            plan[cname] = form
        if not is_pruned or form.sparse:
            continue
        if value.ndim < 2:
            log.warn(f"{tname} (pruned) has rank {value.ndim}: Core ML Tools cannot store a rank-1 weight "
                     "sparse, it stays dense")
            continue
        sparse = StoredTensor(numel, nnz, True, palettize_bits, quantize, channels).file_bytes(**size_args)
        dense = StoredTensor(numel, nnz, False, palettize_bits, quantize, channels).file_bytes(**size_args)
        kind = "" if form.storage == "dense" else f" ({form.storage})"
        message = (f"{tname} (pruned, {numel} weights, sparsity {1 - nnz / numel:.3f}) stays dense{kind}: sparse "
                   f"storage would take {sparse} bytes against {dense} dense")
        if form.storage == "dense":
            element = 2 if precision == "float16" else 4
            message += f" (it pays above {1 / (8 * element):.2%} sparsity, plus 64-byte blob headers)"
        else:
            message += "; its zeros are no longer exact zeros once compressed"
        log.warn(message)
    return plan


def apply_plan(mlmodel: Any, plan: dict[str, StoredTensor], palettize_bits: int | None, quantize: str | None) -> Any:
    """Store the planned constants sparse, then compress the planned ones (jointly with their sparsity)."""
    from coremltools.optimize import coreml as cto

    sparse = [c for c, form in plan.items() if form.sparse]
    if sparse:
        exact_zeros = cto.OpThresholdPrunerConfig(threshold=0.0, minimum_sparsity_percentile=0.0, weight_threshold=0)
        mlmodel = cto.prune_weights(mlmodel, cto.OptimizationConfig(op_name_configs=dict.fromkeys(sparse, exact_zeros)))
    configs: dict[str, Any] = {}
    if palettize_bits is not None:
        on_sparse, on_dense = (cto.OpPalettizerConfig(mode="custom", lut_function=palette(palettize_bits),
                                                      granularity="per_tensor", weight_threshold=0)
                               for palette in (sparse_palette, dense_palette))
    elif quantize is not None:
        on_sparse = on_dense = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype=quantize,
                                                           granularity="per_channel", weight_threshold=0)
    for cname, form in plan.items():
        if form.palettize_bits or form.quantize:  # a sparse one is found by the name of its sparse op
            configs[cname + _SUFFIXES[0] if form.sparse else cname] = on_sparse if form.sparse else on_dense
    if configs:
        compress = cto.palettize_weights if palettize_bits is not None else cto.linear_quantize_weights
        compressed = compress(mlmodel, cto.OptimizationConfig(op_name_configs=configs), joint_compression=True)
        if sparse:
            discard_package(mlmodel)  # the pruned intermediate, made here (the caller owns the one passed in)
        mlmodel = compressed
    return mlmodel


def source_constant(info: WeightInfo, origin: dict[str, str] | None = None) -> str:
    """The op name of the dense constant a weight came from (Core ML Tools appends ``_sparsified``,
    ``_palettized``, ``_quantized`` to the name of each op it compresses)."""
    name = info.op_name
    while origin is None or name not in origin:
        stripped = next((name[: -len(s)] for s in _SUFFIXES if name.endswith(s)), None)
        if stripped is None:
            break
        name = stripped
    return name


def relative_error(stored: np.ndarray | None, dense: np.ndarray | None) -> float | None:
    """``max |stored - dense| / max |dense|``: how far compression moved a weight, relative to its range."""
    if stored is None or dense is None or stored.shape != dense.shape:
        return None
    scale = float(np.abs(dense).max()) if dense.size else 0.0
    diff = float(np.abs(stored.astype(np.float64) - dense.astype(np.float64)).max()) if dense.size else 0.0
    return diff / scale if scale > 0 else diff


def unplanned(package: PackageReport, plan: dict[str, StoredTensor], origin: dict[str, str]) -> list[str]:
    """Planned constants whose saved storage is not the planned one."""
    stored = {source_constant(info, origin): info.storage for info in package.rows}
    return [c for c, form in plan.items() if stored.get(c) != form.storage]
