"""The torch side of `sparsify.export.coreml.export_coreml`: what gets converted, and by which route.

1. **Unwrap.** ``nn.DataParallel``, ``DistributedDataParallel`` and ``torch.compile`` wrappers are
   removed (the wrapped module is what runs on a device; its weights are named without the
   ``module.`` prefix in the report). TorchScript cannot trace through ``DataParallel``'s profiler
   calls, and Core ML Tools has no converter for them.
2. **Copy and finalize.** A deep copy on CPU, float32, eval mode; masks still installed (a *prepared*
   model, by sparsify, Core ML Tools or ``torch.nn.utils.prune``) are baked in exactly as
   ``finalize()`` would. Which weights were pruned is read from the masks and from the Core ML
   compression metadata ``finalize()`` writes; the metadata is then removed from the copy (see
   `sparsify.export.coreml` for why).
3. **Convert dense, by the first route that works.** ``"jit"`` traces with ``torch.jit.trace``,
   ``"export"`` with ``torch.export.export(...).run_decompositions({})``; both give the same program
   where both work (equal weight files on ResNet-18 and MobileNetV2). With ``trace=None`` (the
   default) the natural route is tried first — ``jit`` for a module, ``export`` for an
   ``ExportedProgram`` — and the other one if tracing *or* ``coremltools.convert`` raises: Core ML
   Tools' TorchScript frontend has no converter for ``nn.MultiheadAttention``'s fused kernel, and
   fails on torchvision's ``VisionTransformer``, both of which convert through ``torch.export``. An
   explicit ``trace="jit"`` or ``"export"`` is that route only: a caller who names a route gets that
   route or an error. A TorchScript module is converted as TorchScript (frozen) and nothing else.
   Which route converted the model, and why any other failed, goes to the log (INFO) and the report.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import field_error
from ..coreml_metadata import COMPRESSION_TYPE, METADATA_PREFIX, PRUNING, parse_metadata_key
from ..mask_layout import mask_name, masked_params, orig_name
from ..masking import bake_mask, is_masked
from ..pruning.metadata import register_coreml_metadata
from .errors import ConversionError

__all__ = ["ROUTES", "Conversion", "Source", "convert_dense", "prepare_source"]

logger = logging.getLogger("sparsify.export.coreml")

ROUTES = ("jit", "export")
_OWNER = "export_coreml"
_ROUTE_NAMES = {"jit": "TorchScript tracing (torch.jit.trace)", "export": "torch.export"}


@dataclass
class Source:
    """What gets converted, and what torch knew about its weights."""

    module: Any  # a finalized nn.Module copy, or a frozen TorchScript module
    pruned: set[str]  # names of the tensors pruned in torch
    tensors: dict[str, torch.Tensor]  # every floating-point tensor by name (after masks are applied)
    routes: tuple[str, ...]  # to try, in order
    unwrapped: list[str] = field(default_factory=list)  # wrapper classes removed


@dataclass
class Conversion:
    """The dense Core ML model, the route that made it, and the routes that failed before it."""

    mlmodel: Any
    route: str
    failures: dict[str, str]


def prepare_source(model: Any, trace: str | None) -> Source:
    """Unwrap, copy and finalize ``model`` (never modified); decide the routes to try."""
    if trace is not None and trace not in ROUTES:
        raise field_error(_OWNER, "trace", trace, f"allowed values are None, {', '.join(map(repr, ROUTES))}")
    model, unwrapped = _unwrap(model)
    if isinstance(model, torch.jit.ScriptModule):
        if trace == "export":
            raise field_error(_OWNER, "trace", trace, "a TorchScript model is converted as TorchScript: use 'jit'")
        source = _frozen_script(model)
        source.unwrapped = unwrapped
        return source
    if isinstance(model, torch.export.ExportedProgram):
        model, natural = model.module(), "export"
    elif isinstance(model, nn.Module):
        natural = "jit"
    else:
        raise TypeError(
            f"{_OWNER}: model must be a torch.nn.Module, a TorchScript module or a torch.export.ExportedProgram, "
            f"got {type(model).__name__}"
        )
    routes = (trace,) if trace is not None else (natural, *[r for r in ROUTES if r != natural])
    export_model, pruned = _finalized_copy(model)
    return Source(export_model, pruned, _torch_tensors(export_model), routes, unwrapped)


def _unwrap(model: Any) -> tuple[Any, list[str]]:
    """Remove ``DataParallel`` / ``DistributedDataParallel`` / ``torch.compile`` wrappers (nested too)."""
    unwrapped = []
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            unwrapped.append(type(model).__name__)
            model = model.module
        elif isinstance(model, nn.Module) and type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            unwrapped.append("torch.compile")
            model = model._orig_mod
        else:
            return model, unwrapped


def convert_dense(source: Source, inputs: tuple[torch.Tensor, ...], convert_kwargs: dict[str, Any], target: Any,
                  precision: str) -> Conversion:
    """``coremltools.convert`` by the first of ``source.routes`` that works; `ConversionError` if none."""
    import coremltools as ct

    failures: dict[str, str] = {}
    last: Exception | None = None
    for route in source.routes:
        kwargs = dict(convert_kwargs)
        if route == "jit" and "inputs" not in kwargs:
            kwargs["inputs"] = [ct.TensorType(shape=tuple(t.shape), dtype=_np_dtype(t)) for t in inputs]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                program = source.module if isinstance(source.module, torch.jit.ScriptModule) \
                    else _trace(source.module, inputs, route)
                mlmodel = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=target,
                                     compute_precision=ct.precision(precision), **kwargs)
            except Exception as exc:  # any failure of a third-party tracer or converter: try the next route
                failures[route] = _one_line(exc)
                last = exc
                logger.debug("%s: %s failed", _OWNER, _ROUTE_NAMES[route], exc_info=True)
                for w in caught:
                    logger.debug("%s: warning during the failed %s: %s", _OWNER, route, w.message)
                continue
        for w in caught:  # the route that worked: its warnings (torch's TracerWarning...) reach the user
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        return Conversion(mlmodel, route, failures)
    tried = "; ".join(f"{_ROUTE_NAMES[r]}: {m}" for r, m in failures.items())
    hint = "" if len(source.routes) > 1 or isinstance(source.module, torch.jit.ScriptModule) else (
        f" (trace={source.routes[0]!r} was asked for; trace=None also tries the other route)")
    raise ConversionError(f"{_OWNER}: the model could not be converted to Core ML{hint}. {tried}", failures) from last


def route_message(conversion: Conversion) -> str:
    """One line for the log: the route used, and why the others failed."""
    text = f"{_OWNER}: converted with {_ROUTE_NAMES[conversion.route]} (trace={conversion.route!r})"
    failed = "; ".join(f"{_ROUTE_NAMES[r]} failed first: {m}" for r, m in conversion.failures.items())
    return f"{text}; {failed}" if failed else text


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _np_dtype(t: torch.Tensor) -> Any:
    """Core ML input dtype: coremltools' default for floats (fp16 inputs with fp16 compute on iOS16+)."""
    if t.is_floating_point():
        return None
    return np.bool_ if t.dtype == torch.bool else np.int32


def _finalized_copy(model: nn.Module) -> tuple[nn.Module, set[str]]:
    """A finalized CPU float32 eval-mode copy without Core ML metadata, and the pruned tensor names."""
    export_model = copy.deepcopy(model).cpu().float().eval()
    baked = 0
    for module in export_model.modules():
        for name in masked_params(module):
            if is_masked(module, name):
                bake_mask(module, name)
            else:  # Core ML Tools' or torch.nn.utils.prune's hook
                torch.nn.utils.prune.remove(module, name)
            register_coreml_metadata(module, name)
            baked += 1
    if baked:
        logger.info("%s: the model is prepared, not finalized: exporting a copy with its %d mask(s) baked in "
                    "(the model passed in is unchanged)", _OWNER, baked)
    pruned = pruned_by_metadata(export_model.named_buffers())
    for module in export_model.modules():
        for key in [k for k in module._buffers if k.startswith(METADATA_PREFIX)]:
            del module._buffers[key]
    if isinstance(export_model, torch.fx.GraphModule):  # ExportedProgram.module() reads every buffer
        graph = export_model.graph
        for node in list(graph.nodes):
            if node.op == "get_attr" and METADATA_PREFIX in str(node.target) and not node.users:
                graph.erase_node(node)
        export_model.recompile()
    return export_model, pruned


def pruned_by_metadata(named_buffers: Any) -> set[str]:
    """Tensors marked pruned by Core ML compression metadata; other compression types are refused."""
    pruned = set()
    for key, value in named_buffers:
        parsed = parse_metadata_key(key)  # ("conv1", "weight", "compression_type")
        if parsed is None or parsed[2] != COMPRESSION_TYPE:
            continue
        full_name = f"{parsed[0]}.{parsed[1]}" if parsed[0] else parsed[1]
        types = [int(t) for t in value.reshape(-1).tolist()]
        if types != [PRUNING]:
            raise ValueError(
                f"{_OWNER}: {full_name} carries Core ML compression types {types}; only pruning ([1]) is read from "
                "torch here. Pass palettize_bits= or quantize= to export_coreml for joint compression, or convert "
                "models compressed in torch with coremltools.convert(..., minimum_deployment_target=iOS18)"
            )
        pruned.add(full_name)
    return pruned


def _frozen_script(model: torch.jit.ScriptModule) -> Source:
    """A TorchScript model cannot lose its metadata buffers; freezing folds every tensor into the graph
    as a constant instead, so the converter sees no metadata (and fuses batch norms itself)."""
    tensors: dict[str, torch.Tensor] = {}
    pruned = pruned_by_metadata(model.named_buffers())
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        for name in masked_params(module):  # a traced prepared model computes where(mask, orig, 0)
            orig, mask = getattr(module, orig_name(name)), getattr(module, mask_name(name))
            tensors[prefix + name] = torch.where(mask.bool(), orig, 0).detach().float()
            pruned.add(prefix + name)
    for name, tensor in _torch_tensors(model).items():
        tensors.setdefault(name, tensor)
    training = model.training
    try:
        with warnings.catch_warnings():  # torch's deprecation of freeze, not the user's concern here
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.freeze.* is deprecated", category=FutureWarning)
            frozen = torch.jit.freeze(model.eval())
    finally:
        model.train(training)
    return Source(frozen, pruned, tensors, ("jit",))


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
