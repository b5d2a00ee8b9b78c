"""Export a pruned PyTorch model to Core ML with its pruned weights stored sparse, and verify it.

`export_coreml` takes a model pruned by sparsify (finalized, or still prepared), converts it to
an ML Program ``.mlpackage`` in which every pruned weight that gets smaller that way is a sparse
``constexpr_sparse_to_dense`` constant — optionally palettized or quantized jointly (iOS18) —, reads
the saved package back (`sparsify.export.mlpackage`) and returns an `ExportReport` of what was
actually stored.

How, and why not just ``coremltools.convert`` on the finalized model (Core ML Tools' own route):

1. **Check the destination** before any work (`sparsify.export.destination`): an existing path
   that is not a Core ML package is refused, an unwritable one fails at once.
2. **Copy, unwrap, finalize** (`sparsify.export.routes`): the model passed in is never changed;
   ``DataParallel`` / DDP / ``torch.compile`` wrappers are removed; a *prepared* model (masks still
   installed) has its masks baked into the copy as ``finalize()`` would — converting it directly
   gives a model larger than dense (the mask is stored as a second weight).
3. **Which weights were pruned** is read from the masks and from the Core ML compression metadata
   that ``finalize()`` writes (``<module>._COREML_/<param>/compression_type = [1]``); the metadata
   is then **removed** from the copy. With it, the converter would zero every value with
   ``|w| <= 2**-10`` in those layers (structured patterns keep small weights, and lose them there),
   emit sparse ops even where that is larger than dense (a 0 %-sparse layer costs 1/16 more), and keep
   batch norms unfused after pruned convolutions.
4. **Convert dense** by the first route that works (TorchScript tracing, else ``torch.export``; see
   `sparsify.export.routes`), at ``minimum_deployment_target >= iOS16`` (the first with sparse
   constants; the converter's default, iOS15, would silently store everything dense). All graph
   optimisations run (conv + batch norm fusion included); this model's weight file is ``dense_bytes``.
5. **Plan and apply the storage** of every constant (`sparsify.export.storage`): each pruned weight
   is found among the converted constants by its values, and stored sparse — only its *exact* zeros
   dropped — if that is smaller; with ``palettize_bits`` / ``quantize`` every weight of rank >= 2 is
   also palettized / quantized where that is smaller, jointly with its sparsity.
6. **Save, verify, move into place**: the saved package is read back; every row of the report comes
   from the file. A pruned weight that ended up dense, that lost non-zeros, or that is not stored as
   planned is reported by a warning (``logging``, and in `ExportReport.warnings`).

Core ML Tools' notices, warnings and progress bars are captured and logged at DEBUG
(`sparsify.export.quiet`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._checks import field_error
from ..analysis.report import Report
from ..analysis.sizing import PALETTIZE_BITS, QUANTIZE_DTYPES, compression_name
from .destination import Destination
from .mlpackage import PackageReport, _Sparsity, inspect_mlpackage, read_constants, read_weights, weight_file_sizes
from .quiet import quiet
from .routes import ROUTES, convert_dense, prepare_source, route_message
from .storage import (
    Log,
    apply_plan,
    match_constants,
    plan_storage,
    relative_error,
    source_constant,
    unplanned,
)
from .temporary import discard_package

__all__ = ["ExportReport", "ExportRow", "export_coreml"]

logger = logging.getLogger(__name__)

_OWNER = "export_coreml"
_PRECISIONS = {"float16": "float16", "float32": "float32", "fp16": "float16", "fp32": "float32"}
_SPARSE_WEIGHTS = ("pruned", "all")
_RESERVED_KWARGS = ("minimum_deployment_target", "compute_precision", "convert_to")


@dataclass(frozen=True)
class ExportRow(_Sparsity):
    """One weight of the exported package, as stored, next to what torch had."""

    name: str  # the torch parameter ("conv1.weight") when it was identified, else the Core ML name
    coreml_name: str
    shape: tuple[int, ...]
    storage: str  # "dense", "sparse", "palettized", "quantized", "sparse+palettized", "sparse+quantized"
    numel: int
    nonzeros: int | None  # in the saved package
    bytes: int  # data bytes of this weight in the package
    pruned: bool  # pruned in torch
    torch_nonzeros: int | None  # non-zeros of the torch tensor, when identified
    error: float | None = None  # compressed weights: max |stored - dense| / max |dense| (decoded from the file)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "sparsity": self.sparsity}


def weights_table(rows: Sequence[Any]) -> Report:
    """The per-weight table of an export report (`ExportReport`, and Core AI's `CoreAIExportReport`): storage,
    shape, stored and torch non-zeros, sparsity, bytes, and the decoding error when any weight is compressed."""
    compressed = any(row.error is not None for row in rows)
    return Report({
        row.name: {
            "storage": row.storage, "shape": "x".join(map(str, row.shape)) or "scalar",
            "pruned": "yes" if row.pruned else "", "numel": row.numel,
            "nonzeros": "?" if row.nonzeros is None else row.nonzeros,
            "torch nonzeros": "" if row.torch_nonzeros is None else row.torch_nonzeros,
            "sparsity": "?" if row.sparsity is None else f"{row.sparsity:.3f}", "bytes": row.bytes,
            **({"error": "" if row.error is None else f"{row.error:.4f}"} if compressed else {}),
        }
        for row in rows
    })


@dataclass
class ExportReport:
    """What `export_coreml` wrote, read back from the saved package."""

    path: str
    minimum_deployment_target: str
    compute_precision: str
    trace: str  # the route that converted the model: "jit" or "export"
    rows: list[ExportRow]
    total_bytes: int  # weight file(s) of the saved package
    dense_bytes: int  # weight file(s) of the same model converted dense
    op_counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    package: PackageReport | None = field(default=None, repr=False)
    trace_failures: dict[str, str] = field(default_factory=dict)  # routes tried first that failed, with why
    compression: str | None = None  # "palettize 4 bits", "quantize int8", or None

    @property
    def ratio(self) -> float:
        """``total_bytes / dense_bytes``."""
        return self.total_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def row(self, name: str) -> ExportRow:
        """The row of a weight, by torch name or Core ML name."""
        for row in self.rows:
            if name in (row.name, row.coreml_name):
                return row
        raise KeyError(f"no weight named {name!r} in the export; weights: {', '.join(r.name for r in self.rows)}")

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        return {
            "path": self.path,
            "minimum_deployment_target": self.minimum_deployment_target,
            "compute_precision": self.compute_precision,
            "trace": self.trace,
            "trace_failures": dict(self.trace_failures),
            "compression": self.compression,
            "total_bytes": self.total_bytes,
            "dense_bytes": self.dense_bytes,
            "ratio": self.ratio,
            "op_counts": dict(self.op_counts),
            "warnings": list(self.warnings),
            "rows": [row.as_dict() for row in self.rows],
        }

    def to_text(self) -> str:
        """A table of the weights, then the weight-file size against the dense export."""
        table = weights_table(self.rows)
        sparse = sum(1 for r in self.rows if r.storage.startswith("sparse"))
        options = f"trace={self.trace}" + (f", {self.compression}" if self.compression else "")
        lines = [
            f"{self.path} (minimum_deployment_target={self.minimum_deployment_target}, "
            f"compute_precision={self.compute_precision}, {options})",
            str(table),
            f"{sparse} of {len(self.rows)} weights stored sparse; weight file {self.total_bytes} bytes "
            f"vs {self.dense_bytes} dense ({self.ratio:.3f}x)",
        ]
        lines += [f"{route} failed first: {message}" for route, message in self.trace_failures.items()]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    __str__ = to_text


def export_coreml(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor],
    path: str | os.PathLike[str],
    *,
    minimum_deployment_target: Any = None,
    compute_precision: Any = "float16",
    trace: str | None = None,
    sparse_weights: str = "pruned",
    palettize_bits: int | None = None,
    quantize: str | None = None,
    convert_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Convert ``model`` to a Core ML ``.mlpackage`` at ``path`` with its pruned weights stored sparse.

    Args:
        model: a model pruned by sparsify — finalized (``pruner.finalize()``) or prepared (masks
            installed; they are baked into a copy). Core ML Tools' and ``torch.nn.utils.prune``'s
            pruned models work too, and so do a TorchScript module (frozen, since its metadata
            buffers cannot be removed), a ``torch.export.ExportedProgram``, and any of these inside
            ``nn.DataParallel`` / ``DistributedDataParallel`` / ``torch.compile`` (unwrapped). Never modified.
        example_inputs: a tensor or a tuple of tensors to trace with; their shapes become the Core ML
            input shapes (pass ``convert_kwargs={"inputs": [...]}`` for flexible shapes or images).
        path: where to save; must end in ``.mlpackage``. Parent folders are created. Something already
            there is refused before any work unless ``overwrite=True`` (an empty directory excepted:
            it holds nothing to lose); then an existing package is replaced once the new one is
            saved, and anything else is still refused (`sparsify.export.destination`).
        minimum_deployment_target: a ``coremltools.target`` member or its name (``"iOS17"``); ``None``
            means iOS16, or iOS18 with ``palettize_bits`` / ``quantize``. Must be iOS16 / macOS13 /
            watchOS9 / tvOS16 or newer (the first with sparse weights), iOS18 / macOS15 or newer with
            joint compression: anything older raises ``ValueError``.
        compute_precision: ``"float16"`` (default) or ``"float32"`` (or ``coremltools.precision``).
        trace: ``None`` (default): TorchScript tracing, and ``torch.export`` if that fails (the other
            way round for an ``ExportedProgram``); ``"jit"`` or ``"export"``: that route only.
        sparse_weights: ``"pruned"`` (default) stores sparse the weights pruned in torch (those with
            Core ML pruning metadata or masks); ``"all"`` also any other weight of rank >= 2 whose
            exact zeros make sparse storage smaller. Either way only exact zeros are dropped.
        palettize_bits: palettize every weight of rank >= 2 with a look-up table of ``2**bits``
            values per tensor (k-means over the kept values, `sparsify.export.palette`), jointly with its sparsity
            (``constexpr_lut_to_sparse``), wherever that is smaller. One of 1, 2, 3, 4, 6, 8.
        quantize: ``"int8"``: quantize those weights to symmetric int8 with one scale per output
            channel, jointly with their sparsity. Exclusive with ``palettize_bits``.
        convert_kwargs: more arguments for ``coremltools.convert`` (``inputs``, ``outputs``,
            ``compute_units``, ...), except the three this function sets.
        overwrite: ``True`` to replace an existing package at ``path`` (the command's ``--force``);
            ``False`` (default) refuses it, so a user's files are never replaced by accident.

    Returns:
        an `ExportReport`, read back from the saved package.

    Raises:
        ConversionError: when no route converts the model (`sparsify.export.errors.ConversionError`).
        FileExistsError: for a destination that is refused (before any work).
        OSError: for a destination that cannot be written (before any work).
    """
    with quiet():  # importing coremltools prints its notices
        target = _resolve_target(minimum_deployment_target, joint=palettize_bits is not None or quantize is not None)
    precision = _resolve_precision(compute_precision)
    _check_compression(palettize_bits, quantize)
    if trace is not None and trace not in ROUTES:
        raise field_error(_OWNER, "trace", trace, f"allowed values are None, {', '.join(map(repr, ROUTES))}")
    if sparse_weights not in _SPARSE_WEIGHTS:
        raise field_error(_OWNER, "sparse_weights", sparse_weights,
                          f"allowed values are {', '.join(map(repr, _SPARSE_WEIGHTS))}")
    convert_kwargs = dict(convert_kwargs or {})
    reserved = sorted(set(convert_kwargs) & set(_RESERVED_KWARGS))
    if reserved:
        raise field_error(_OWNER, "convert_kwargs", convert_kwargs,
                          f"{', '.join(reserved)} must be passed as export_coreml's own argument(s)")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise field_error(_OWNER, "path", str(path), "the name must end in '.mlpackage'")
    inputs = _as_inputs(example_inputs)

    if not isinstance(overwrite, bool):
        raise field_error(_OWNER, "overwrite", overwrite, "allowed values are True and False", TypeError)
    destination = Destination(path, overwrite)  # refuses an existing, foreign or unwritable one before any work
    log = Log()
    try:
        with quiet():
            report = _export(model, inputs, destination, target, precision, trace, sparse_weights, palettize_bits,
                             quantize, convert_kwargs, log)
        destination.commit()
    except BaseException:
        destination.abandon()
        raise
    log.emit()
    logger.info("exported %s: weight file %d bytes vs %d dense (%.3fx)",
                path, report.total_bytes, report.dense_bytes, report.ratio)
    return report


def _export(model: Any, inputs: tuple[torch.Tensor, ...], destination: Destination, target: Any, precision: str,
            trace: str | None, sparse_weights: str, palettize_bits: int | None, quantize: str | None,
            convert_kwargs: dict[str, Any], log: Log) -> ExportReport:
    source = prepare_source(model, trace)
    if source.unwrapped:
        logger.info("%s: exporting the model inside %s (its weights are named without the wrapper's 'module.')",
                    _OWNER, " > ".join(source.unwrapped))
    pruned, tensors = source.pruned, source.tensors
    if not pruned and sparse_weights == "pruned":
        log.warn(
            "no pruned weight found (no masks and no Core ML pruning metadata): the export is dense; "
            "finalize the pruner first, or pass sparse_weights='all' to store any weight with enough "
            "exact zeros sparse"
        )
    conversion = convert_dense(source, inputs, convert_kwargs, target, precision)
    logger.info(route_message(conversion))
    dense = final = conversion.mlmodel
    try:
        dense_bytes = sum(weight_file_sizes(dense.weights_dir).values())
        consts = read_constants(dense.get_spec(), dense.weights_dir)
        origin = match_constants(tensors, consts)  # Core ML constant name → torch name
        plan = plan_storage(consts, origin, tensors, pruned, sparse_weights=sparse_weights, precision=precision,
                            target_name=target.name, palettize_bits=palettize_bits, quantize=quantize, log=log)
        final = apply_plan(dense, plan, palettize_bits, quantize) if plan else dense
        final.save(str(destination.staging))
    finally:  # what is kept is in the staging folder now: coremltools' own copies would stay until exit
        discard_package(dense)
        discard_package(final)
    package = inspect_mlpackage(destination.staging)
    stored = read_weights(destination.staging) if palettize_bits or quantize else {}
    rows = []
    for info in package.rows:
        cname = source_constant(info, origin)
        tname = origin.get(cname)
        tensor = tensors.get(tname) if tname else None
        compressed = "palettized" in info.storage or "quantized" in info.storage
        rows.append(ExportRow(
            name=tname or info.name, coreml_name=info.name, shape=info.shape, storage=info.storage,
            numel=info.numel, nonzeros=info.nonzeros, bytes=info.bytes, pruned=tname in pruned,
            torch_nonzeros=None if tensor is None else int(torch.count_nonzero(tensor)),
            error=relative_error(stored.get(info.name), consts.get(cname)) if compressed else None,
        ))
    _verify(rows, unplanned(package, plan, origin), origin, log)
    package.path = str(destination.path)
    return ExportReport(
        path=str(destination.path), minimum_deployment_target=target.name, compute_precision=precision,
        trace=conversion.route, rows=rows, total_bytes=package.total_bytes, dense_bytes=dense_bytes,
        op_counts=package.op_counts, warnings=log.messages, package=package,
        trace_failures=conversion.failures, compression=compression_name(palettize_bits, quantize),
    )


def _verify(rows: list[ExportRow], not_as_planned: list[str], origin: dict[str, str], log: Log) -> None:
    """Check the saved package against the plan and against torch."""
    for cname in not_as_planned:
        log.warn(f"{origin.get(cname, cname)}: Core ML Tools did not store it as planned")
    for row in rows:
        if row.torch_nonzeros is None or row.nonzeros is None or row.nonzeros >= row.torch_nonzeros:
            continue
        if row.error is not None:
            continue  # palettes and int8 may round small kept values to zero; `error` says by how much
        lost = row.torch_nonzeros - row.nonzeros
        log.warn(f"{row.name}: {lost} of its {row.torch_nonzeros} non-zero weights are zero in Core ML "
                 "(below the float16 range, or multiplied by a zero batch-norm scale)")


# -- arguments ------------------------------------------------------------------------------------


def _resolve_target(value: Any, joint: bool) -> Any:
    import coremltools as ct

    targets = ct.target.__members__  # names, aliases included (macOS13 is iOS16's)
    minimum = ct.target.iOS18 if joint else ct.target.iOS16
    newer = [name for name, target in targets.items() if target >= minimum]
    allowed = sorted(newer, key=lambda name: (re.sub(r"\d.*", "", name), targets[name]))  # by OS, then version
    need = "joint compression (palettize_bits / quantize) needs iOS18" if joint else "sparse weights need iOS16"
    allowed_text = f"{need} or newer, as a coremltools.target or its name: {', '.join(allowed)}"
    if value is None:
        return minimum
    target = value
    if isinstance(value, str):
        target = {n.lower(): t for n, t in targets.items()}.get(value.lower())
        if target is None:
            raise field_error(_OWNER, "minimum_deployment_target", value, allowed_text)
    if not isinstance(target, ct.target):
        raise field_error(_OWNER, "minimum_deployment_target", value, allowed_text, TypeError)
    if target < minimum:
        raise field_error(_OWNER, "minimum_deployment_target", value if isinstance(value, str) else target.name,
                          allowed_text)
    return target


def _check_compression(palettize_bits: Any, quantize: Any) -> None:
    if palettize_bits is not None and (type(palettize_bits) is not int or palettize_bits not in PALETTIZE_BITS):
        raise field_error(_OWNER, "palettize_bits", palettize_bits,
                          f"allowed values are None, {', '.join(map(str, PALETTIZE_BITS))} "
                          f"(an int; got {type(palettize_bits).__name__})")
    if quantize is not None and quantize not in QUANTIZE_DTYPES:
        raise field_error(_OWNER, "quantize", quantize,
                          f"allowed values are None, {', '.join(map(repr, QUANTIZE_DTYPES))}")
    if palettize_bits is not None and quantize is not None:
        raise field_error(_OWNER, "quantize", quantize,
                          f"palettize_bits={palettize_bits} is given too: allowed is one of the two")


def _resolve_precision(value: Any) -> str:
    """``"float16"`` or ``"float32"``."""
    import coremltools as ct

    if isinstance(value, ct.precision):
        value = value.value
    if not isinstance(value, str) or value.lower() not in _PRECISIONS:
        raise field_error(_OWNER, "compute_precision", value,
                          "allowed values are 'float16', 'float32' or a coremltools.precision")
    return _PRECISIONS[value.lower()]


def _as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    if not isinstance(inputs, (tuple, list)) or not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise field_error(_OWNER, "example_inputs", type(example_inputs).__name__,
                          "expected a tensor or a non-empty tuple/list of tensors", TypeError)
    return tuple(t.detach().cpu().float() if t.is_floating_point() else t.detach().cpu() for t in inputs)
