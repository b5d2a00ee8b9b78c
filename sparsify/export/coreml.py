"""Export a pruned PyTorch model to Core ML with its pruned weights stored sparse, and verify it.

`export_coreml` takes a model pruned by sparsify (finalized, or still prepared), converts it to
an ML Program ``.mlpackage`` in which every pruned weight that gets smaller that way is a sparse
``constexpr_sparse_to_dense`` constant, reads the saved package back (`sparsify.export.mlpackage`) and
returns an `ExportReport` of what was actually stored.

How, and why not just ``coremltools.convert`` on the finalized model (Core ML Tools' own route):

1. **Copy.** The model passed in is never changed. A deep copy is moved to CPU/float32 and put in
   eval mode; a *prepared* model (masks still installed, by sparsify, Core ML Tools or
   ``torch.nn.utils.prune``) has its masks baked into the copy exactly as ``finalize()`` would.
   Converting a prepared model directly gives a model larger than dense (the mask is stored as a
   second weight), so this is done for you.
2. **Which weights were pruned** is read from the Core ML compression metadata that ``finalize()``
   writes (``<module>._COREML_/<param>/compression_type = [1]``), then the metadata is **removed**
   from the copy. With the metadata, the converter would zero every value with ``|w| <= 2**-10``
   in those layers (structured patterns keep small weights, and lose them there), emit sparse ops
   even where that is larger than dense (a 0 %-sparse layer costs 1/16 more), and keep batch norms
   unfused after pruned convolutions.
3. **Trace** with ``torch.jit.trace`` (default) or ``torch.export`` + ``run_decompositions({})``
   (``trace="export"``); both give the same program (measured on ResNet-18 and MobileNetV2: equal
   weight files; ``export`` adds one input ``cast``). ``jit`` is the default because it is Core ML
   Tools' most tested frontend, accepts any model that runs on the example inputs, and traces 2-3×
   faster; choose ``export`` if tracing mis-captures your model, or once TorchScript is gone.
4. **Convert dense**, ``minimum_deployment_target >= iOS16`` (the first with sparse constants; the
   converter's default, iOS15, would silently store everything dense). All graph optimisations run
   (conv + batch norm fusion included); the dense weight file of this model is ``dense_bytes``.
5. **Find each pruned weight** among the converted constants by its values (the constant equals the
   torch weight, up to fp16 rounding, times an optional per-output-channel scale that batch-norm
   fusion introduces; a zero weight stays zero), since fusion renames constants.
6. **Sparsify** those constants with ``coremltools.optimize.coreml.prune_weights`` and an
   ``OpThresholdPrunerConfig(threshold=0.0)`` set per constant name: only values that are *exactly*
   zero are dropped, so nothing that was not pruned is ever zeroed. A pruned weight is stored sparse
   only if that takes fewer bytes (``nnz × element + numel / 8`` bits of mask, plus blob headers,
   against ``numel × element``, from `sparsify.analysis.sizing`); otherwise it stays dense, with a warning.
7. **Save and verify**: the saved package is read back; every row of the report comes from the file.
   A pruned weight that ended up dense, or that lost non-zeros (values below the float16 range), is
   reported by a warning (``logging``, and in `ExportReport.warnings`).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import field_error
from ..analysis.report import Report
from ..analysis.sizing import ELEMENT_BYTES, StoredTensor
from ..masking import bake_mask, is_masked
from ..pruning.metadata import register_coreml_metadata
from .mlpackage import PackageReport, WeightInfo, _Sparsity, inspect_mlpackage, read_constants, weight_file_sizes

__all__ = ["ExportReport", "ExportRow", "export_coreml"]

logger = logging.getLogger(__name__)

_OWNER = "export_coreml"
_METADATA_PREFIX = "_COREML_/"
_PRUNING = 1  # Core ML Tools' CompressionType.pruning
_PRECISIONS = {"float16": "float16", "float32": "float32", "fp16": "float16", "fp32": "float32"}
_SIZING_PRECISION = {"float16": "fp16", "float32": "fp32"}  # sparsify.analysis.sizing's names
_TRACES = ("jit", "export")
_SPARSE_WEIGHTS = ("pruned", "all")
_RESERVED_KWARGS = ("minimum_deployment_target", "compute_precision", "convert_to")
_SPARSIFIED_SUFFIX = "_sparsified"  # what prune_weights appends to the name of a constant it sparsifies


@dataclass(frozen=True)
class ExportRow(_Sparsity):
    """One weight of the exported package, as stored, next to what torch had."""

    name: str  # the torch parameter ("conv1.weight") when it was identified, else the Core ML name
    coreml_name: str
    shape: tuple[int, ...]
    storage: str  # "sparse" or "dense" (or another Core ML storage kind)
    numel: int
    nonzeros: int | None  # in the saved package
    bytes: int  # data bytes of this weight in the package
    pruned: bool  # pruned in torch
    torch_nonzeros: int | None  # non-zeros of the torch tensor, when identified

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "sparsity": self.sparsity}


@dataclass
class ExportReport:
    """What `export_coreml` wrote, read back from the saved package."""

    path: str
    minimum_deployment_target: str
    compute_precision: str
    trace: str
    rows: list[ExportRow]
    total_bytes: int  # weight file(s) of the saved package
    dense_bytes: int  # weight file(s) of the same model converted dense
    op_counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    package: PackageReport | None = field(default=None, repr=False)

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
            "total_bytes": self.total_bytes,
            "dense_bytes": self.dense_bytes,
            "ratio": self.ratio,
            "op_counts": dict(self.op_counts),
            "warnings": list(self.warnings),
            "rows": [row.as_dict() for row in self.rows],
        }

    def to_text(self) -> str:
        """A table of the weights, then the weight-file size against the dense export."""
        table = Report({
            row.name: {
                "storage": row.storage, "shape": "x".join(map(str, row.shape)) or "scalar",
                "pruned": "yes" if row.pruned else "", "numel": row.numel,
                "nonzeros": "?" if row.nonzeros is None else row.nonzeros,
                "torch nonzeros": "" if row.torch_nonzeros is None else row.torch_nonzeros,
                "sparsity": "?" if row.sparsity is None else f"{row.sparsity:.3f}", "bytes": row.bytes,
            }
            for row in self.rows
        })
        sparse = sum(1 for r in self.rows if r.storage == "sparse")
        lines = [
            f"{self.path} (minimum_deployment_target={self.minimum_deployment_target}, "
            f"compute_precision={self.compute_precision}, trace={self.trace})",
            str(table),
            f"{sparse} of {len(self.rows)} weights stored sparse; weight file {self.total_bytes} bytes "
            f"vs {self.dense_bytes} dense ({self.ratio:.3f}x)",
        ]
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
    convert_kwargs: dict[str, Any] | None = None,
) -> ExportReport:
    """Convert ``model`` to a Core ML ``.mlpackage`` at ``path`` with its pruned weights stored sparse.

    Args:
        model: a model pruned by sparsify — finalized (``pruner.finalize()``) or prepared (masks
            installed; they are baked into a copy). Core ML Tools' and ``torch.nn.utils.prune``'s
            pruned models work too, and so do a TorchScript module (frozen, since its metadata
            buffers cannot be removed) and a ``torch.export.ExportedProgram``. Never modified.
        example_inputs: a tensor or a tuple of tensors to trace with; their shapes become the Core ML
            input shapes (pass ``convert_kwargs={"inputs": [...]}`` for flexible shapes or images).
        path: where to save; must end in ``.mlpackage`` (parent folders are created, an existing
            package is replaced).
        minimum_deployment_target: a ``coremltools.target`` member or its name (``"iOS17"``); ``None``
            means iOS16. Must be iOS16 / macOS13 / watchOS9 / tvOS16 or newer, the first with sparse
            weights: anything older raises ``ValueError``.
        compute_precision: ``"float16"`` (default) or ``"float32"`` (or ``coremltools.precision``).
        trace: ``"jit"`` (``torch.jit.trace``) or ``"export"`` (``torch.export``); ``None`` (default)
            means ``"export"`` for an ``ExportedProgram`` and ``"jit"`` otherwise.
        sparse_weights: ``"pruned"`` (default) stores sparse the weights pruned in torch (those with
            Core ML pruning metadata or masks); ``"all"`` also any other weight of rank >= 2 whose
            exact zeros make sparse storage smaller. Either way only exact zeros are dropped.
        convert_kwargs: more arguments for ``coremltools.convert`` (``inputs``, ``outputs``,
            ``compute_units``, ...), except the three this function sets.

    Returns:
        an `ExportReport`, read back from the saved package.
    """
    import coremltools as ct

    target = _resolve_target(minimum_deployment_target)
    precision = _resolve_precision(compute_precision)
    if trace is not None and trace not in _TRACES:
        raise field_error(_OWNER, "trace", trace, f"allowed values are None, {', '.join(map(repr, _TRACES))}")
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

    log = _Log()
    source = _prepare_source(model, inputs, trace)
    pruned, tensors = source.pruned, source.tensors
    if not pruned and sparse_weights == "pruned":
        log.warn(
            "no pruned weight found (no masks and no Core ML pruning metadata): the export is dense; "
            "finalize the pruner first, or pass sparse_weights='all' to store any weight with enough "
            "exact zeros sparse"
        )
    if source.trace == "jit" and "inputs" not in convert_kwargs:
        convert_kwargs["inputs"] = [ct.TensorType(shape=tuple(t.shape), dtype=_np_dtype(t)) for t in inputs]
    dense = ct.convert(
        source.traceable, convert_to="mlprogram", minimum_deployment_target=target,
        compute_precision=ct.precision(precision),
        **convert_kwargs,
    )
    dense_bytes = sum(weight_file_sizes(dense.weights_dir).values())
    consts = read_constants(dense.get_spec(), dense.weights_dir)
    origin = _match_constants(tensors, consts)  # Core ML constant name → torch name

    chosen = _choose_sparse(consts, origin, tensors, pruned, sparse_weights, precision, target.name, log)
    final = dense
    if chosen:
        from coremltools.optimize import coreml as cto

        exact_zeros = cto.OpThresholdPrunerConfig(threshold=0.0, minimum_sparsity_percentile=0.0, weight_threshold=0)
        final = cto.prune_weights(dense, cto.OptimizationConfig(op_name_configs=dict.fromkeys(chosen, exact_zeros)))
    path.parent.mkdir(parents=True, exist_ok=True)
    final.save(str(path))
    package = inspect_mlpackage(path)

    rows = _rows(package, origin, tensors, pruned)
    _verify(rows, chosen, origin, log)
    report = ExportReport(
        path=str(path),
        minimum_deployment_target=target.name,
        compute_precision=precision,
        trace=source.trace,
        rows=list(rows.values()),
        total_bytes=package.total_bytes,
        dense_bytes=dense_bytes,
        op_counts=package.op_counts,
        warnings=log.messages,
        package=package,
    )
    logger.info("exported %s: weight file %d bytes vs %d dense (%.3fx)",
                path, report.total_bytes, report.dense_bytes, report.ratio)
    return report


# -- arguments ------------------------------------------------------------------------------------


def _resolve_target(value: Any) -> Any:
    import coremltools as ct

    targets = ct.target.__members__  # names, aliases included (macOS13 is iOS16's)
    minimum = ct.target.iOS16
    newer = [name for name, target in targets.items() if target >= minimum]
    allowed = sorted(newer, key=lambda name: (re.sub(r"\d.*", "", name), targets[name]))  # by OS, then version
    allowed_text = f"sparse weights need iOS16 or newer, as a coremltools.target or its name: {', '.join(allowed)}"
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


def _np_dtype(t: torch.Tensor) -> Any:
    """Core ML input dtype: coremltools' default for floats (fp16 inputs with fp16 compute on iOS16+)."""
    if t.is_floating_point():
        return None
    return np.bool_ if t.dtype == torch.bool else np.int32


class _Log:
    """Warnings that go both to ``logging`` and into the report."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def warn(self, message: str) -> None:
        self.messages.append(message)
        logger.warning(message)


# -- the torch side -------------------------------------------------------------------------------


@dataclass
class _Source:
    """What gets converted, and what torch knew about its weights."""

    traceable: Any  # the traced / exported / frozen model handed to coremltools.convert
    pruned: set[str]  # names of the tensors pruned in torch
    tensors: dict[str, torch.Tensor]  # every floating-point tensor by name (after masks are applied)
    trace: str


def _prepare_source(model: Any, inputs: tuple[torch.Tensor, ...], trace: str | None) -> _Source:
    if isinstance(model, torch.jit.ScriptModule):
        if trace == "export":
            raise field_error(_OWNER, "trace", trace, "a TorchScript model is converted as TorchScript: use 'jit'")
        return _frozen_script(model)
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
        trace = trace or "export"
    elif not isinstance(model, nn.Module):
        raise TypeError(
            f"{_OWNER}: model must be a torch.nn.Module, a TorchScript module or a torch.export.ExportedProgram, "
            f"got {type(model).__name__}"
        )
    trace = trace or "jit"
    export_model, pruned = _finalized_copy(model)
    return _Source(_trace(export_model, inputs, trace), pruned, _torch_tensors(export_model), trace)


def _finalized_copy(model: nn.Module) -> tuple[nn.Module, set[str]]:
    """A finalized CPU float32 eval-mode copy without Core ML metadata, and the pruned tensor names."""
    export_model = copy.deepcopy(model).cpu().float().eval()
    baked = 0
    for module in export_model.modules():
        for name in _masked_names(module):
            if is_masked(module, name):
                bake_mask(module, name)
            else:  # Core ML Tools' or torch.nn.utils.prune's hook
                torch.nn.utils.prune.remove(module, name)
            register_coreml_metadata(module, name)
            baked += 1
    if baked:
        logger.info("%s: the model is prepared, not finalized: exporting a copy with its %d mask(s) baked in "
                    "(the model passed in is unchanged)", _OWNER, baked)
    pruned = _pruned_by_metadata(export_model.named_buffers())
    for module in export_model.modules():
        for key in [k for k in module._buffers if k.startswith(_METADATA_PREFIX)]:
            del module._buffers[key]
    if isinstance(export_model, torch.fx.GraphModule):  # ExportedProgram.module() reads every buffer
        graph = export_model.graph
        for node in list(graph.nodes):
            if node.op == "get_attr" and _METADATA_PREFIX in str(node.target) and not node.users:
                graph.erase_node(node)
        export_model.recompile()
    return export_model, pruned


def _masked_names(module: nn.Module) -> list[str]:
    """Tensors of ``module`` with a mask installed (``<name>_orig`` and ``<name>_mask``)."""
    params = dict(module.named_parameters(recurse=False))
    return [k[: -len("_mask")] for k, _ in module.named_buffers(recurse=False)
            if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in params]


def _pruned_by_metadata(named_buffers: Any) -> set[str]:
    """Tensors marked pruned by Core ML compression metadata; other compression types are refused."""
    pruned = set()
    for key, value in named_buffers:
        owner, _, local = key.partition(_METADATA_PREFIX)  # "conv1.", "weight/compression_type"
        if not local.endswith("/compression_type"):
            continue
        full_name = owner + local[: -len("/compression_type")]
        types = [int(t) for t in value.reshape(-1).tolist()]
        if types != [_PRUNING]:
            raise ValueError(
                f"{_OWNER}: {full_name} carries Core ML compression types {types}; only pruning ([1]) can be "
                "exported here. Convert jointly compressed models with coremltools.convert(..., "
                "minimum_deployment_target=coremltools.target.iOS18)"
            )
        pruned.add(full_name)
    return pruned


def _frozen_script(model: torch.jit.ScriptModule) -> _Source:
    """A TorchScript model cannot lose its metadata buffers; freezing folds every tensor into the graph
    as a constant instead, so the converter sees no metadata (and fuses batch norms itself)."""
    tensors: dict[str, torch.Tensor] = {}
    pruned = _pruned_by_metadata(model.named_buffers())
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name in _masked_names(module):  # a traced prepared model computes where(mask, orig, 0)
            orig, mask = getattr(module, name + "_orig"), getattr(module, name + "_mask")
            tensors[prefix + name] = torch.where(mask.bool(), orig, 0).detach().float()
            pruned.add(prefix + name)
    for name, tensor in _torch_tensors(model).items():
        tensors.setdefault(name, tensor)
    training = model.training
    try:
        frozen = torch.jit.freeze(model.eval())
    finally:
        model.train(training)
    return _Source(frozen, pruned, tensors, "jit")


def _trace(model: nn.Module, inputs: tuple[torch.Tensor, ...], method: str) -> Any:
    with torch.no_grad():
        if method == "export":
            return torch.export.export(model, inputs).run_decompositions({})
        with warnings.catch_warnings():
            # deliberate choice (see the module docstring); the deprecation is torch's, not the user's
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=FutureWarning)
            return torch.jit.trace(model, inputs)


def _torch_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Floating-point parameters and buffers by name, each tensor once."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if not tensor.is_floating_point() or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        tensors[name] = tensor.detach()
    return tensors


# -- the Core ML side -----------------------------------------------------------------------------


def _match_constants(tensors: dict[str, torch.Tensor], consts: dict[str, np.ndarray]) -> dict[str, str]:
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


def _choose_sparse(
    consts: dict[str, np.ndarray],
    origin: dict[str, str],
    tensors: dict[str, torch.Tensor],
    pruned: set[str],
    sparse_weights: str,
    precision: str,
    target_name: str,
    log: _Log,
) -> list[str]:
    """Names of the constants to store sparse; warns about pruned tensors that will not be."""
    sizing_target = "iOS18" if _is_ios18_or_newer(target_name) else "iOS16"
    sizing_precision = _SIZING_PRECISION[precision]
    located = {tname: cname for cname, tname in origin.items()}
    chosen = []
    for tname in sorted(pruned - set(located)):
        shape = tuple(tensors[tname].shape) if tname in tensors else "?"
        log.warn(f"{tname} (pruned, shape {shape}) was not found among the Core ML weights (unused by forward, "
                 "or transformed beyond a per-channel scale by the converter): it is stored as converted")
    for cname, value in consts.items():
        tname = origin.get(cname)
        is_pruned = tname in pruned
        if not (is_pruned or sparse_weights == "all"):
            continue
        if value.ndim < 2:
            if is_pruned:
                log.warn(f"{tname} (pruned) has rank {value.ndim}: Core ML Tools cannot store a rank-1 weight "
                         "sparse, it stays dense")
            continue
        numel, nnz = value.size, int(np.count_nonzero(value))
        sparse = StoredTensor(numel, nnz, sparse=True).file_bytes(sizing_precision, sizing_target)
        dense = StoredTensor(numel, nnz, sparse=False).file_bytes(sizing_precision, sizing_target)
        if sparse < dense:
            chosen.append(cname)
        elif is_pruned:
            log.warn(f"{tname} (pruned, {numel} weights, sparsity {1 - nnz / numel:.3f}) stays dense: sparse "
                     f"storage would take {sparse} bytes against {dense} dense (it pays above "
                     f"{1 / (8 * ELEMENT_BYTES[sizing_precision]):.2%} sparsity, plus 64-byte blob headers)")
    return chosen


def _is_ios18_or_newer(target_name: str) -> bool:
    import coremltools as ct

    return ct.target[target_name] >= ct.target.iOS18


def _rows(
    package: PackageReport, origin: dict[str, str], tensors: dict[str, torch.Tensor], pruned: set[str]
) -> dict[str, ExportRow]:
    """The report's rows, keyed by the op name of the dense constant each weight came from."""
    rows = {}
    for info in package.rows:
        source = _source_constant(info, origin)
        tname = origin.get(source)
        tensor = tensors.get(tname) if tname else None
        rows[source] = ExportRow(
            name=tname or info.name,
            coreml_name=info.name,
            shape=info.shape,
            storage=info.storage,
            numel=info.numel,
            nonzeros=info.nonzeros,
            bytes=info.bytes,
            pruned=tname in pruned,
            torch_nonzeros=None if tensor is None else int(torch.count_nonzero(tensor)),
        )
    return rows


def _source_constant(info: WeightInfo, origin: dict[str, str]) -> str:
    """The op name of the dense constant a weight came from (``prune_weights`` appends a suffix)."""
    if info.op_name not in origin and info.op_name.endswith(_SPARSIFIED_SUFFIX):
        return info.op_name[: -len(_SPARSIFIED_SUFFIX)]
    return info.op_name


def _verify(rows: dict[str, ExportRow], chosen: list[str], origin: dict[str, str], log: _Log) -> None:
    """Check the saved package against the plan and against torch."""
    for cname in chosen:
        row = rows.get(cname)
        if row is None or row.storage != "sparse":
            log.warn(f"{origin.get(cname, cname)}: Core ML Tools did not store it sparse as asked")
    for row in rows.values():
        if row.torch_nonzeros is None or row.nonzeros is None or row.nonzeros >= row.torch_nonzeros:
            continue
        lost = row.torch_nonzeros - row.nonzeros
        log.warn(f"{row.name}: {lost} of its {row.torch_nonzeros} non-zero weights are zero in Core ML "
                 "(below the float16 range, or multiplied by a zero batch-norm scale)")
