"""Export a pruned PyTorch model to Core AI (``.aimodel``) with its pruned weights stored sparse, and run it.

`export_coreai` is `sparsify.export.coreml.export_coreml`'s counterpart for Apple's Core AI (iOS / macOS 27):

1. **Check the destination** before any work: an existing path is replaced only with ``overwrite=True``,
   and only if it is an ``.aimodel`` folder (or an empty one); anything else is refused, naming the path.
2. **Copy, unwrap, finalize** (`sparsify.export.routes.prepare_source`, shared with the Core ML export):
   the model passed in is never changed; which weights were pruned is read from sparsify's masks (a
   prepared model) or the Core ML pruning metadata ``finalize()`` writes.
3. **Plan the storage** (`sparsify.export.coreai_storage`): every pruned weight stores exactly its zeros
   sparse (a one-bit mask and the kept values) where that is smaller; with ``quantize`` / ``palettize_bits``
   every weight of rank >= 2 is also quantized / palettized, jointly with its sparsity. The pattern does
   not matter to the format — unstructured, channels, blocks, n:m and tiles all become a mask.
4. **Convert** with ``torch.export`` and coreai-torch (``TorchConverter``, release mode by default: no
   source paths or stack traces in the file), save into a staging folder beside the destination.
5. **Read back and verify**: the saved file is parsed (`sparsify.export.aimodel_reader`), each stored
   weight matched to its torch tensor, and every pruned weight that is not stored sparse, every weight
   with exact zeros stored dense, and every non-zero lost is reported by a warning. Then the saved model
   is **run on this machine** (`sparsify.export.coreai_run`) on the example inputs and any ``extra_inputs``
   and compared with torch computing with the stored weights: past ``atol`` + ``rtol`` the export fails
   with `ExportMismatchError` and nothing is written. The difference from the uncompressed model (what
   int8 or palettes cost) is reported too.
6. **Move into place** and return a `CoreAIExportReport` (bytes per weight, measured file size against the
   dense export, the format's lower bound, the differences measured by running).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from .._checks import field_error
from ..analysis.sizing import PALETTIZE_BITS
from .aimodel_reader import AIModelReport, inspect_aimodel, require_coreai
from .coreai_run import convert_program, quiet_coreai, run_aimodel, torch_outputs
from .coreai_storage import QUANTIZE, CompressedWeight, Plan, plan_weight
from .coreml import weights_table
from .destination import Destination
from .mlpackage import _Sparsity
from .routes import prepare_source

__all__ = ["CoreAIExportReport", "CoreAIExportRow", "ExportMismatchError", "export_coreai"]

logger = logging.getLogger(__name__)

_OWNER = "export_coreai"
_SPARSE_WEIGHTS = ("pruned", "all")


class ExportMismatchError(RuntimeError):
    """The saved ``.aimodel``, run on this machine, differs from torch by more than the tolerance."""


@dataclass(frozen=True)
class CoreAIExportRow(_Sparsity):
    """One weight of the exported program, as stored, next to what torch had."""

    name: str  # the torch tensor ("conv1.weight") when identified, else "#<index>" in program order
    shape: tuple[int, ...]
    storage: str
    numel: int
    nonzeros: int | None  # stored
    bytes: int  # bytes of its constants in the program
    pruned: bool
    torch_nonzeros: int | None
    error: float | None = None  # compressed weights: max |stored - torch| / max |torch| (decoded from the file)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "sparsity": self.sparsity}


@dataclass
class CoreAIExportReport:
    """What `export_coreai` wrote, read back from the saved ``.aimodel`` and measured by running it."""

    path: str
    rows: list[CoreAIExportRow]
    total_bytes: int  # main.mlirb, measured
    dense_bytes: int | None  # main.mlirb of the same model exported without compression (measure_dense=True)
    limit_bytes: int  # the format's lower bound for these weights: the bytes of their constants
    op_counts: dict[str, int]
    compression: str | None
    max_abs_diff: float  # the .aimodel against torch computing with the stored weights
    max_rel_diff: float  # max_abs_diff / max |torch output|
    compression_abs_diff: float  # torch with the stored weights against the model passed in
    compression_rel_diff: float  # compression_abs_diff / max |output of the model passed in|
    inputs_checked: int
    seconds: dict[str, float] = field(default_factory=dict)  # convert, run, total
    warnings: list[str] = field(default_factory=list)
    package: AIModelReport | None = field(default=None, repr=False)

    @property
    def ratio(self) -> float | None:
        """``total_bytes / dense_bytes``."""
        return self.total_bytes / self.dense_bytes if self.dense_bytes else None

    def row(self, name: str) -> CoreAIExportRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no weight named {name!r} in the export; weights: {', '.join(r.name for r in self.rows)}")

    def as_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("rows", "package")}
        return {**data, "ratio": self.ratio, "rows": [r.as_dict() for r in self.rows]}

    def to_text(self) -> str:
        table = weights_table(self.rows)
        sparse = sum(1 for r in self.rows if r.storage.startswith("sparse"))
        dense = "" if self.dense_bytes is None else f" vs {self.dense_bytes} exported dense ({self.ratio:.3f}x)"
        lines = [
            f"{self.path} (Core AI{', ' + self.compression if self.compression else ''})",
            str(table),
            f"{sparse} of {len(self.rows)} weights stored sparse; main.mlirb {self.total_bytes} bytes{dense}; "
            f"the weights' constants take {self.limit_bytes} bytes (the format's floor for them)",
            (f"ran on this machine on {self.inputs_checked} input(s): max |aimodel - torch| = "
             f"{self.max_abs_diff:.3g} (relative {self.max_rel_diff:.3g})" if self.inputs_checked else
             "not run (verify=False)")
            + f"; the stored weights change the torch output by {self.compression_abs_diff:.3g} "
            f"(relative {self.compression_rel_diff:.3g})",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    __str__ = to_text


class _AIModelDestination(Destination):
    """An ``.aimodel`` path: an existing one is replaced only with ``overwrite=True``."""

    owner = _OWNER

    def __init__(self, path: Path, overwrite: bool) -> None:
        super().__init__(path, overwrite)

    def _refuse(self, path: Path) -> None:
        if not (path.exists() or path.is_symlink()):
            return
        if not self.overwrite:
            raise FileExistsError(f"{_OWNER}: path={str(path)!r} exists; pass overwrite=True to replace it "
                                  "(nothing was changed)")
        foreign = path.is_symlink() or not path.is_dir() or any(
            p.name not in ("main.mlirb", "main.hash", "metadata.json") for p in path.iterdir())
        if foreign:
            raise FileExistsError(f"{_OWNER}: path={str(path)!r} exists and is not an .aimodel folder (only an "
                                  "existing .aimodel or an empty folder is replaced); nothing was changed")


def export_coreai(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    palettize_bits: int | None = None,
    quantize: str | None = None,
    overwrite: bool = False,
    extra_inputs: Sequence[torch.Tensor | tuple[torch.Tensor, ...]] | None = None,
    sparse_weights: str = "pruned",
    atol: float = 1e-3,
    rtol: float = 1e-3,
    verify: bool = True,
    measure_dense: bool = True,
    debug_info: bool = False,
) -> CoreAIExportReport:
    """Convert ``model`` to a Core AI ``.aimodel`` at ``path`` with its pruned weights stored sparse, and run it.

    Args:
        model: a model pruned by sparsify (finalized or prepared), Core ML Tools or ``torch.nn.utils.prune``,
            a ``torch.export.ExportedProgram``, or any of these inside ``DataParallel`` / DDP /
            ``torch.compile``. Never modified. TorchScript cannot be converted to Core AI.
        example_inputs: a tensor or tuple of tensors to export with; their shapes are the model's.
        path: the ``.aimodel`` folder to write; parent folders are created.
        palettize_bits: store every weight of rank >= 2 as indices into a palette of ``2**bits`` values
            (k-means over its kept values), jointly with its sparsity: 1, 2, 3, 4, 6 or 8.
        quantize: ``"int8"`` (symmetric, one scale per output channel), ``"fp8_e4m3fn"`` or ``"fp8_e5m2"``,
            jointly with the sparsity. Exclusive with ``palettize_bits``.
        overwrite: replace an existing ``.aimodel`` at ``path`` (without it: ``FileExistsError``).
        extra_inputs: more inputs (tensors or tuples, shaped as ``example_inputs``) to verify on.
        sparse_weights: ``"pruned"`` (default): the weights pruned in torch are stored sparse; ``"all"``: any
            weight whose exact zeros make sparse storage smaller. Only exact zeros are ever dropped.
        atol, rtol: the saved model's outputs must satisfy ``|aimodel - torch| <= atol + rtol * |torch|``
            elementwise, torch computing with the stored (decompressed) weights.
        verify: run the saved model (default); ``False`` skips running (the file is still read back).
        measure_dense: also export the model uncompressed to measure ``dense_bytes`` (one more conversion).
        debug_info: keep coreai-torch's debug information (source paths, stack traces) in the file.

    Returns:
        a `CoreAIExportReport`.

    Raises:
        ExportMismatchError: the saved model's outputs differ from torch beyond the tolerance (nothing written).
        FileExistsError: ``path`` exists and ``overwrite`` is False, or it is not an ``.aimodel``.
        ImportError: Core AI's packages are not installed (``pip install 'sparsify-coreml[coreai]'``).
    """
    _check_arguments(palettize_bits, quantize, sparse_weights, atol, rtol)
    path = Path(path)
    if path.suffix != ".aimodel":
        raise field_error(_OWNER, "path", str(path), "the name must end in '.aimodel'")
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"{_OWNER}: TorchScript cannot be converted to Core AI (coreai-torch takes torch.export "
                        "programs): pass the nn.Module or a torch.export.ExportedProgram")
    inputs = _as_inputs(example_inputs, "example_inputs")
    batches = [inputs] + [_as_inputs(extra, f"extra_inputs[{i}]") for i, extra in enumerate(extra_inputs or [])]
    require_coreai(_OWNER)
    destination = _AIModelDestination(path, overwrite)
    started = time.perf_counter()
    try:
        with quiet_coreai():
            report = _export(model, batches, destination, palettize_bits, quantize, sparse_weights, atol, rtol,
                             verify, measure_dense, debug_info)
        destination.commit()
    except BaseException:
        destination.abandon()
        raise
    report.seconds["total"] = time.perf_counter() - started
    for message in report.warnings:
        logger.warning("%s", message)
    logger.info("exported %s: main.mlirb %d bytes%s; max |aimodel - torch| %.3g", path, report.total_bytes,
                "" if report.dense_bytes is None else f" vs {report.dense_bytes} dense", report.max_abs_diff)
    return report


def _export(model: Any, batches: list[tuple[torch.Tensor, ...]], destination: Destination,
            palettize_bits: int | None, quantize: str | None, sparse_weights: str, atol: float, rtol: float,
            verify: bool, measure_dense: bool, debug_info: bool) -> CoreAIExportReport:
    source = prepare_source(model, "export")
    module, pruned, warnings = source.module, source.pruned, []
    if not pruned and sparse_weights == "pruned":
        warnings.append("no pruned weight found (no masks and no Core ML pruning metadata): nothing is stored "
                        "sparse; finalize the pruner first, or pass sparse_weights='all'")
    original = [torch_outputs(module, batch) for batch in batches]
    seconds: dict[str, float] = {}
    dense_bytes = None
    if measure_dense:
        started = time.perf_counter()
        scratch = destination.staging.parent / "dense.aimodel"
        convert_program(module, batches[0], debug_info).save_asset(scratch)
        dense_bytes = (scratch / "main.mlirb").stat().st_size
        shutil.rmtree(scratch, ignore_errors=True)
        seconds["convert_dense"] = time.perf_counter() - started
    plans = _compress(module, pruned, sparse_weights, palettize_bits, quantize, warnings)
    stored_outputs = [torch_outputs(module, batch) for batch in batches]
    started = time.perf_counter()
    convert_program(module, batches[0], debug_info).save_asset(destination.staging)
    seconds["convert"] = time.perf_counter() - started
    package = inspect_aimodel(destination.staging, decode=True)
    rows = _rows(package, source.tensors, pruned, plans, warnings)
    abs_diff = rel_diff = 0.0
    if verify:
        started = time.perf_counter()
        ran = run_aimodel(destination.staging, batches)
        seconds["run"] = time.perf_counter() - started
        abs_diff, rel_diff = _compare(ran, stored_outputs, atol, rtol)
    compression_diff = max((float(np.abs(a - b).max()) for got, want in zip(stored_outputs, original)
                            for a, b in zip(got, want) if a.size), default=0.0)
    largest = max((float(np.abs(b).max()) for want in original for b in want if b.size), default=0.0)
    package.path = str(destination.path)
    return CoreAIExportReport(
        path=str(destination.path), rows=rows, total_bytes=package.total_bytes, dense_bytes=dense_bytes,
        limit_bytes=sum(w.bytes for w in package.weights), op_counts=package.op_counts,
        compression=(f"palettize {palettize_bits} bits" if palettize_bits else f"quantize {quantize}" if quantize
                     else None),
        max_abs_diff=abs_diff, max_rel_diff=rel_diff, compression_abs_diff=compression_diff,
        compression_rel_diff=compression_diff / largest if largest else 0.0,
        inputs_checked=len(batches) if verify else 0, seconds=seconds, warnings=warnings, package=package,
    )


def _compress(module: nn.Module, pruned: set[str], sparse_weights: str, palettize_bits: int | None,
              quantize: str | None, warnings: list[str]) -> dict[str, Plan]:
    """Give every weight to store compressed its `CompressedWeight` parametrization; return the plans."""
    holders: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for module_name, owner in module.named_modules():
        for local, param in owner.named_parameters(recurse=False):
            if param.is_floating_point():
                full = f"{module_name}.{local}" if module_name else local
                holders.setdefault(id(param), []).append((full, owner, local))
    plans: dict[str, Plan] = {}
    for entries in holders.values():
        name, owner, local = entries[0]
        tensor = getattr(owner, local).detach()
        is_pruned = any(full in pruned for full, _, _ in entries)
        plan = plan_weight(name, tensor, is_pruned or (sparse_weights == "all" and tensor.dim() >= 2),
                           palettize_bits, quantize)
        if is_pruned and not plan.sparse and plan.zeros:
            warnings.append(f"{name}: pruned, but its {plan.zeros} zeros are stored dense: sparse storage would "
                            f"take {plan.sparse_bytes} bytes against {plan.dense_bytes} ({plan.storage})")
        elif not is_pruned and not plan.sparse and plan.zeros and plan.sparse_bytes < plan.dense_bytes:
            warnings.append(f"{name}: {plan.zeros} of its {tensor.numel()} weights are exactly zero but it has no "
                            "mask or pruning record, so they are stored dense; sparse_weights='all' stores them "
                            f"sparse ({plan.sparse_bytes} bytes against {plan.dense_bytes})")
        if plan.storage == "dense":
            continue
        if len(entries) > 1:
            warnings.append(f"{name}: shared by {', '.join(e[0] for e in entries)}; stored dense float32, "
                            f"not {plan.storage} (a tied weight keeps one dense copy)")
            continue
        parametrize.register_parametrization(owner, local, CompressedWeight(tensor, plan, palettize_bits, quantize),
                                             unsafe=True)
        plans[name] = plan
    return plans


def _rows(package: AIModelReport, tensors: dict[str, torch.Tensor], pruned: set[str], plans: dict[str, Plan],
          warnings: list[str]) -> list[CoreAIExportRow]:
    """Match each stored weight to its torch tensor (same shape, nearest values) and check it."""
    values: list[np.ndarray | None] = package.values or [None] * len(package.weights)
    unmatched = {name: t.float().numpy() for name, t in tensors.items()}
    rows = []
    for weight, value in zip(package.weights, values):
        name = _match(weight.shape, value, unmatched, compressed=weight.storage != "dense")
        torch_value = unmatched.pop(name) if name is not None else None
        error = None
        if torch_value is not None and value is not None and weight.storage not in ("dense", "sparse"):
            scale = float(np.abs(torch_value).max()) or 1.0
            error = float(np.abs(value - torch_value).max()) / scale
        rows.append(CoreAIExportRow(
            name=name or f"#{weight.index}", shape=weight.shape, storage=weight.storage, numel=weight.numel,
            nonzeros=weight.nonzeros, bytes=weight.bytes, pruned=name in pruned,
            torch_nonzeros=None if torch_value is None else int(np.count_nonzero(torch_value)), error=error,
        ))
    by_name = {row.name: row for row in rows}
    for name, plan in plans.items():
        row = by_name.get(name)
        if row is None:
            warnings.append(f"{name}: planned {plan.storage} but not found in the saved program")
        elif row.storage != plan.storage:
            warnings.append(f"{name}: planned {plan.storage}, stored {row.storage}")
    for row in rows:
        if (row.storage == "sparse" and row.nonzeros is not None and row.torch_nonzeros is not None
                and row.nonzeros < row.torch_nonzeros):
            warnings.append(f"{row.name}: {row.torch_nonzeros - row.nonzeros} of its {row.torch_nonzeros} "
                            "non-zero weights are zero in the saved program")
    return rows


def _match(shape: tuple[int, ...], value: np.ndarray | None, candidates: dict[str, np.ndarray],
           compressed: bool) -> str | None:
    same = [n for n, t in candidates.items() if t.shape == shape]
    if not same:  # the converter may store a tensor reshaped (a conv bias as [1, C, 1, 1])
        same = [n for n, t in candidates.items() if t.size == math.prod(shape)]
        candidates = {n: candidates[n].reshape(shape) for n in same}
    if value is None:
        return same[0] if len(same) == 1 else None
    best, best_diff = None, np.inf
    for name in same:
        diff = float(np.abs(candidates[name] - value).max()) if value.size else 0.0
        if diff < best_diff:
            best, best_diff = name, diff
    if best is None:
        return None
    scale = float(np.abs(candidates[best]).max()) or 1.0
    return best if compressed or best_diff <= 1e-6 * scale else None


def _compare(ran: list[list[np.ndarray]], expected: list[list[np.ndarray]], atol: float,
             rtol: float) -> tuple[float, float]:
    abs_diff = rel_diff = 0.0
    for index, (got, want) in enumerate(zip(ran, expected)):
        if len(got) != len(want):
            raise ExportMismatchError(f"{_OWNER}: input {index}: the saved model returns {len(got)} output(s), "
                                      f"torch {len(want)}; nothing was written")
        for k, (a, b) in enumerate(zip(got, want)):
            a = np.asarray(a, dtype=np.float64).reshape(b.shape)
            b = b.astype(np.float64)
            diff = np.abs(a - b)
            top = float(diff.max()) if diff.size else 0.0
            rel = top / (float(np.abs(b).max()) or 1.0) if diff.size else 0.0
            abs_diff, rel_diff = max(abs_diff, top), max(rel_diff, rel)
            bad = int(np.count_nonzero(~(diff <= atol + rtol * np.abs(b))))
            if bad:
                raise ExportMismatchError(
                    f"{_OWNER}: the saved model, run on this machine, differs from torch on input {index}, output "
                    f"{k}: max |aimodel - torch| = {top:.3g} (relative {rel:.3g}), {bad} of {diff.size} values "
                    f"outside atol={atol} + rtol={rtol}*|torch|; nothing was written"
                )
    return abs_diff, rel_diff


def _check_arguments(palettize_bits: Any, quantize: Any, sparse_weights: Any, atol: Any, rtol: Any) -> None:
    if palettize_bits is not None and (isinstance(palettize_bits, bool) or palettize_bits not in PALETTIZE_BITS):
        raise field_error(_OWNER, "palettize_bits", palettize_bits,
                          f"allowed values are None, {', '.join(map(str, PALETTIZE_BITS))}")
    if quantize is not None and quantize not in QUANTIZE:
        raise field_error(_OWNER, "quantize", quantize, f"allowed values are None, {', '.join(map(repr, QUANTIZE))}")
    if palettize_bits is not None and quantize is not None:
        raise field_error(_OWNER, "quantize", quantize,
                          f"palettize_bits={palettize_bits} is given too: allowed is one of the two")
    if sparse_weights not in _SPARSE_WEIGHTS:
        raise field_error(_OWNER, "sparse_weights", sparse_weights,
                          f"allowed values are {', '.join(map(repr, _SPARSE_WEIGHTS))}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise field_error(_OWNER, name, value, "allowed a number >= 0")


def _as_inputs(value: Any, name: str) -> tuple[torch.Tensor, ...]:
    inputs = (value,) if isinstance(value, torch.Tensor) else value
    if not isinstance(inputs, (tuple, list)) or not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise field_error(_OWNER, name, type(value).__name__, "expected a tensor or a non-empty tuple/list of tensors",
                          TypeError)
    return tuple(t.detach().cpu().float() if t.is_floating_point() else t.detach().cpu() for t in inputs)
