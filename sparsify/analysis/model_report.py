"""Know your sparse model: per-layer sparsity, pattern and Core ML storage size of any model.

`model_report` reads a model in any of its lives —

* **prepared** by a pruner (``weight_orig`` × ``weight_mask`` with a ``pruning_method`` hook: sparsify,
  Core ML Tools or ``torch.nn.utils.prune``): the masked weight is reported, the requested sparsity
  is the hook's ``amount`` and the pattern the hook's ``n_m_ratio`` / ``block_size`` / ``granularity``;
* **finalized** (plain weights with ``_COREML_/<param>/compression_type`` metadata);
* **plain** (any ``nn.Module``), or just a **state dict** (e.g. ``torch.load("model.pt")``) —

and returns a `ModelReport`: for every weight of rank ≥ 2 its parameters, non-zeros,
requested vs achieved sparsity, pattern (read, or inferred from the zeros), the fraction of output
channels that are entirely zero (measured on magnitudes, see `sparsify.analysis.report`), and its size
dense vs as Core ML will store it, in fp16 and fp32 (`sparsify.analysis.sizing` has the formula and the
rule deciding which weights Core ML stores sparse). The whole-model line estimates the exported
``weight.bin``, other tensors (biases, norms) included.

Print it with `ModelReport.to_text` (also ``str()``), or export `ModelReport.to_markdown`,
`ModelReport.to_csv`, `ModelReport.to_json`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn

from ..config import OptimizationConfig
from .report import sparsity_summary
from .sizing import (
    RULES,
    TARGETS,
    StoredTensor,
    dense_bytes,
    fuses_batchnorm,
    stores_sparse,
    weight_file_bytes,
    zero_threshold,
)

__all__ = ["LayerReport", "ModelReport", "infer_pattern", "model_report"]

_COREML_PREFIX = "_COREML_/"
_PRUNING = 1  # coremltools' CompressionType.pruning
Requested = float | Mapping[str, float] | OptimizationConfig | None


# ----------------------------------------------------------------------------------------------
# Patterns
# ----------------------------------------------------------------------------------------------


def _describe(n_m_ratio: Any = None, block_size: int = 1, granularity: str = "per_scalar", dim: int = 1) -> str:
    if n_m_ratio is not None:
        n, m = n_m_ratio
        return f"{n}:{m}" + (" dim 0" if dim == 0 else "")
    parts = [] if granularity in (None, "per_scalar") else [str(granularity)]
    if block_size and block_size > 1:
        parts.append(f"block {block_size}")
    return ", ".join(parts) or "unstructured"


def _constant_in_blocks(zero: torch.Tensor, block: int) -> bool:
    """Whether the rows of ``zero`` (output channels) are equal within every run of ``block`` rows."""
    channels = zero.shape[0]
    full = channels - channels % block
    head = zero[:full].reshape(full // block, block, -1)
    tail = zero[full:]
    return bool((head == head[:, :1]).all()) and bool((tail == tail[:1]).all())


def infer_pattern(weight: torch.Tensor) -> str:
    """Name the sparsity pattern of ``weight`` from where its zeros are.

    In order: ``"dense"`` (no zero), ``"per_channel"`` (all zeros in whole output channels),
    ``"per_kernel"`` (… in whole kernels), ``"block B"`` (the zeros repeat across every ``B``
    consecutive output channels, largest of 8/4/2), ``"n:m"`` (every full run of ``m`` weights along
    the input channels — ``dim 0``: output channels — has exactly ``n`` zeros, smallest ``m`` of
    2/4/8/16 first), else ``"unstructured"``.
    """
    zero = weight.detach() == 0
    zeros = int(zero.sum())
    if zeros == 0:
        return "dense"
    if weight.dim() < 2:
        return "unstructured"
    rows = zero.reshape(zero.shape[0], -1)
    if zero.all() or int(rows.all(1).sum()) * rows.shape[1] == zeros:
        return "per_channel"
    if weight.dim() >= 3:
        kernels = zero.flatten(2)
        if int(kernels.all(2).sum()) * kernels.shape[2] == zeros:
            return "per_kernel"
    for block in (8, 4, 2):
        if zero.shape[0] >= 2 * block and _constant_in_blocks(rows, block):
            return f"block {block}"
    for dim in (1, 0):
        moved = zero.movedim(dim, -1)
        channels = moved.shape[-1]
        for m in (2, 4, 8, 16):
            if channels < m:
                break
            runs = moved[..., : channels - channels % m].reshape(-1, m).sum(1)
            n = int(runs[0])
            if 0 < n < m and bool((runs == n).all()):
                return f"{n}:{m}" + (" dim 0" if dim == 0 else "")
    return "unstructured"


# ----------------------------------------------------------------------------------------------
# Report rows
# ----------------------------------------------------------------------------------------------


@attrs.frozen
class LayerReport:
    """One weight: counts, sparsity, pattern and Core ML storage (bytes of the data, no headers)."""

    name: str
    kind: str  # module class name, "" when read from a state dict
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    requested: float | None
    pattern: str
    pattern_source: str  # "hook", "config" or "inferred"
    structured_sparsity: float  # fraction of output channels entirely zero (magnitudes)
    block2_sparsity: float  # fraction of zero 2x1 blocks (channels 2i, 2i+1 at one position), -1 for odd counts
    metadata: bool  # carries (or, once finalized, will carry) Core ML pruning metadata
    stored_nonzeros: int  # non-zeros Core ML keeps (it zeroes |w| <= threshold, see sizing)
    sparse: bool  # stored sparse in an fp16 export
    sparse_fp32: bool  # ... in an fp32 export (the "sparsify" rules decide by size, which can differ)
    dense_fp16: int
    dense_fp32: int
    coreml_fp16: int
    coreml_fp32: int

    @property
    def achieved(self) -> float:
        """Fraction of zeros in the weight."""
        return 1 - self.nonzeros / self.params if self.params else 0.0

    @property
    def smaller(self) -> float:
        """``dense / Core ML`` bytes in fp16 (how many times smaller the stored weight is)."""
        return self.dense_fp16 / self.coreml_fp16 if self.coreml_fp16 else math.inf

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["shape"] = list(self.shape)
        data["achieved"] = self.achieved
        data["smaller_fp16"] = self.smaller
        data["smaller_fp32"] = self.dense_fp32 / self.coreml_fp32 if self.coreml_fp32 else math.inf
        return data


@attrs.frozen
class ModelReport:
    """Per-layer rows plus whole-model totals; print with `to_text` or ``str()``."""

    layers: tuple[LayerReport, ...]
    other_params: int  # elements of the other floating-point tensors (biases, norms, ...)
    rule: str  # which weights Core ML stores sparse, see sparsify.analysis.sizing
    target: str  # deployment target the weight.bin estimate is for
    file_fp16: int  # estimated weight.bin bytes, fp16 model
    file_fp32: int
    file_dense_fp16: int  # ... and the same model stored dense
    file_dense_fp32: int

    # -- totals ------------------------------------------------------------------------------

    def _sum(self, field: str) -> int:
        return sum(getattr(layer, field) for layer in self.layers)

    @property
    def params(self) -> int:
        return self._sum("params")

    @property
    def nonzeros(self) -> int:
        return self._sum("nonzeros")

    @property
    def sparsity(self) -> float:
        """Count-weighted sparsity of the reported layers."""
        return 1 - self.nonzeros / self.params if self.params else 0.0

    @property
    def requested(self) -> float | None:
        """Count-weighted requested sparsity (layers without a request count as 0), or ``None``."""
        if all(layer.requested is None for layer in self.layers):
            return None
        return sum((layer.requested or 0.0) * layer.params for layer in self.layers) / max(self.params, 1)

    @property
    def smaller(self) -> float:
        """How many times smaller the whole fp16 ``weight.bin`` is than the dense one."""
        return self.file_dense_fp16 / self.file_fp16

    def __getitem__(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in the report; layers are {[layer.name for layer in self.layers]}")

    # -- output ------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "target": self.target,
            "layers": [layer.as_dict() for layer in self.layers],
            "total": {
                "params": self.params, "nonzeros": self.nonzeros, "requested": self.requested,
                "achieved": self.sparsity, "other_params": self.other_params,
                **{k: self._sum(k) for k in ("dense_fp16", "dense_fp32", "coreml_fp16", "coreml_fp32")},
            },
            "weight_file": {
                "fp16": self.file_fp16, "fp32": self.file_fp32,
                "dense_fp16": self.file_dense_fp16, "dense_fp32": self.file_dense_fp32,
                "smaller_fp16": self.smaller, "smaller_fp32": self.file_dense_fp32 / self.file_fp32,
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)

    def to_csv(self) -> str:
        """One line per layer with every field (bytes as integers), then a ``total`` line."""
        rows = [layer.as_dict() for layer in self.layers]
        columns = list(rows[0]) if rows else list(attrs.fields_dict(LayerReport))
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "shape": "x".join(map(str, row["shape"]))})
        total = self.as_dict()["total"]
        writer.writerow({"name": "total", **{k: v for k, v in total.items() if k in columns}})
        return out.getvalue()

    def _table(self) -> tuple[list[str], list[list[str]]]:
        header = ["layer", "type", "pattern", "params", "nonzeros", "requested", "achieved", "channels 0",
                  "stored", "fp16 dense", "fp16 Core ML", "fp32 dense", "fp32 Core ML", "× smaller"]
        rows = []
        for layer in self.layers:
            stored = "sparse" if layer.sparse else "dense"
            if layer.coreml_fp16 > layer.dense_fp16:
                stored += " (!)"
            rows.append([
                layer.name, layer.kind, layer.pattern, f"{layer.params:,}", f"{layer.nonzeros:,}",
                _pct(layer.requested), _pct(layer.achieved), _pct(layer.structured_sparsity), stored,
                _bytes(layer.dense_fp16), _bytes(layer.coreml_fp16), _bytes(layer.dense_fp32),
                _bytes(layer.coreml_fp32), f"{layer.smaller:.2f}×",
            ])
        total_fp16 = self._sum("coreml_fp16")
        rows.append([
            "total", "", "", f"{self.params:,}", f"{self.nonzeros:,}", _pct(self.requested), _pct(self.sparsity),
            "", "", _bytes(self._sum("dense_fp16")), _bytes(total_fp16), _bytes(self._sum("dense_fp32")),
            _bytes(self._sum("coreml_fp32")),
            f"{self._sum('dense_fp16') / total_fp16:.2f}×" if total_fp16 else "",
        ])
        return header, rows

    def _footer(self) -> list[str]:
        lines = [
            f"Core ML weight.bin estimate ({self.target}+, {_RULE_NAMES[self.rule]}, {self.other_params:,} other "
            f"parameters stored dense): fp16 {_bytes(self.file_fp16)} vs {_bytes(self.file_dense_fp16)} dense "
            f"({self.smaller:.2f}× smaller); fp32 {_bytes(self.file_fp32)} vs {_bytes(self.file_dense_fp32)} "
            f"({self.file_dense_fp32 / self.file_fp32:.2f}× smaller).",
            "'channels 0' = output channels whose weights are all zero.",
        ]
        if any(layer.coreml_fp16 > layer.dense_fp16 for layer in self.layers):
            lines.append("'(!)' = stored sparse although that is larger than dense (below 1/16 sparsity in fp16).")
        return lines

    def to_text(self) -> str:
        """An aligned plain-text table with a footer for the whole model."""
        header, rows = self._table()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "  ".join("-" * w for w in widths)
        lines = [line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1]), ""]
        return "\n".join([*lines, *self._footer()])

    def to_markdown(self) -> str:
        header, rows = self._table()
        align = ["---"] * 3 + ["---:"] * (len(header) - 3)
        rows[-1] = [f"**{c}**" if c else c for c in rows[-1]]
        table = ["| " + " | ".join(r) + " |" for r in [header, align, *rows]]
        return "\n".join([*table, "", *self._footer()])

    def __str__(self) -> str:
        return self.to_text()


_RULE_NAMES = {
    "sparsify": "as sparsify export stores it",
    "sparsify_all": "as export_coreml(sparse_weights='all') stores it",
    "metadata": "as coremltools.convert stores it",
    "default_pruning": "as coremltools.convert with DEFAULT_PRUNING stores it",
}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# ----------------------------------------------------------------------------------------------
# Reading a model
# ----------------------------------------------------------------------------------------------


@attrs.define
class _Weight:
    module: str
    param: str
    tensor: torch.Tensor  # the effective (masked) weight
    masked: bool
    metadata: bool = False
    amount: float | None = None
    pattern: str | None = None
    kind: str = ""
    state_key: str = ""  # where the tensor is in the state dict (``<key>_orig`` when masked)

    @property
    def key(self) -> str:
        """The parameter's name in the model (``<module>.<param>``)."""
        return f"{self.module}.{self.param}" if self.module else self.param

    @property
    def name(self) -> str:
        """The row's name: the module's, or ``<module>.<param>`` for a parameter other than ``weight``."""
        return self.module if self.param == "weight" and self.module else self.key


def _split(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def _storage_key(t: torch.Tensor) -> tuple[Any, ...]:
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))


def _read_state(state: Mapping[str, torch.Tensor]) -> tuple[list[_Weight], dict[str, torch.Tensor]]:
    """Split a state dict into weights to report (masked, with metadata, or rank ≥ 2) and the other
    floating-point tensors (by key), tied tensors counted once."""
    metadata: set[tuple[str, str]] = set()
    used: set[str] = set()
    for key, value in state.items():
        if _COREML_PREFIX in key:
            used.add(key)
            module, _, rest = key.partition(_COREML_PREFIX)
            param, _, field = rest.rpartition("/")
            if field == "compression_type" and _PRUNING in torch.as_tensor(value).reshape(-1).tolist():
                metadata.add((module.rstrip("."), param))
    weights: list[_Weight] = []
    seen: set[tuple[Any, ...]] = set()  # storages already counted: tied weights appear once
    for key, value in state.items():
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state:
            base = key[: -len("_orig")]
            used.update((key, base + "_mask", base + "_amount"))
            if _storage_key(value) in seen:
                continue
            seen.add(_storage_key(value))
            module, param = _split(base)
            effective = torch.where(state[base + "_mask"].bool(), value.detach(), value.new_zeros(()))
            amount = state.get(base + "_amount")
            weights.append(_Weight(module, param, effective, True, amount=None if amount is None else float(amount),
                                   state_key=key))
    others: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in used or not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        storage = _storage_key(value)
        if storage in seen:
            continue  # a tied weight, already counted
        seen.add(storage)
        module, param = _split(key)
        if value.dim() >= 2 or (module, param) in metadata:
            weights.append(_Weight(module, param, value.detach(), False, state_key=key))
        else:
            others[key] = value.detach()
    for weight in weights:
        weight.metadata = weight.masked or (weight.module, weight.param) in metadata
    order = {key: i for i, key in enumerate(state)}
    weights.sort(key=lambda w: order[w.state_key])
    return weights, others


def _hook_for(module: nn.Module, param: str) -> Any:
    for hook in module._forward_pre_hooks.values():
        if getattr(hook, "_tensor_name", None) == param:
            return hook
    return None


def _read_module(model: nn.Module) -> tuple[list[_Weight], dict[str, torch.Tensor]]:
    state = model.state_dict(keep_vars=True)
    buffers = {name for name, _ in model.named_buffers(remove_duplicate=False)}
    weights, others = _read_state(state)
    kept = []
    for weight in weights:
        if weight.key in buffers and not weight.metadata:
            others[weight.key] = weight.tensor  # buffers of rank >= 2 (attention masks...) are not weights
            continue
        module = model.get_submodule(weight.module)
        weight.kind = type(module).__name__
        hook = _hook_for(module, weight.param) if weight.masked else None
        if hook is not None:
            amount = getattr(hook, "amount", None)
            if isinstance(amount, (int, float)) and not isinstance(amount, bool):
                # torch.nn.utils.prune takes an int amount as a count of weights
                weight.amount = float(amount) / weight.tensor.numel() if isinstance(amount, int) and amount > 1 \
                    else float(amount)
            if hasattr(hook, "n_m_ratio") or hasattr(hook, "block_size") or hasattr(hook, "granularity"):
                weight.pattern = _describe(
                    getattr(hook, "n_m_ratio", None), getattr(hook, "block_size", 1) or 1,
                    getattr(hook, "granularity", "per_scalar"), getattr(hook, "dim", 1),
                )
        kept.append(weight)
    return kept, others


_BATCHNORM = ("weight", "bias", "running_mean", "running_var")


def _batchnorms_after_convs(
    weights: list[_Weight], others: dict[str, torch.Tensor], keys: list[str]
) -> list[tuple[int, str]]:
    """``(index of the conv weight, batch-norm prefix)`` for each batch norm that directly follows a
    conv with as many output channels (in the state dict's order: the converter fuses such pairs)."""
    position = {key: i for i, key in enumerate(keys)}
    where = [position[w.state_key] for w in weights]
    pairs = []
    for key in others:
        if not key.endswith("running_mean") or key[: -len("running_mean")] + "running_var" not in others:
            continue
        prefix = key[: -len("running_mean")]
        start = min(position[prefix + name] for name in _BATCHNORM if prefix + name in position)
        before = [i for i, p in enumerate(where) if 0 <= p < start]
        if before:
            conv = weights[before[-1]]
            if conv.param == "weight" and conv.tensor.dim() >= 3 and conv.tensor.shape[0] == others[key].numel():
                pairs.append((before[-1], prefix))
    return pairs


# ----------------------------------------------------------------------------------------------
# model_report
# ----------------------------------------------------------------------------------------------


def _requested_for(requested: Requested, weight: _Weight, model: nn.Module | None) -> tuple[float | None, str | None]:
    """Requested sparsity and pattern from the ``requested`` argument (``None`` if it says nothing)."""
    if requested is None:
        return None, None
    if isinstance(requested, OptimizationConfig):
        module = model.get_submodule(weight.module) if model is not None else nn.Module()
        config = requested.get_module_config(weight.module, module)
        if config is None:
            return 0.0, None
        pattern = _describe(config.n_m_ratio, config.block_size, config.granularity, config.dim)
        return config.final_sparsity, pattern
    if isinstance(requested, Mapping):
        value = requested.get(weight.name)
        return (None if value is None else float(value)), None
    return float(requested), None


def _check_args(requested: Requested, rule: str, target: str, names: list[str]) -> None:
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is invalid: allowed values are {', '.join(map(repr, RULES))}")
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is invalid: allowed values are {', '.join(map(repr, TARGETS))}")
    if isinstance(requested, Mapping):
        unknown = sorted(set(requested) - set(names))
        if unknown:
            raise ValueError(f"requested names unknown layer(s) {unknown}: the layers are {names}")
        values = requested.values()
    elif requested is None or isinstance(requested, OptimizationConfig):
        values = []
    elif isinstance(requested, (int, float)) and not isinstance(requested, bool):
        values = [requested]
    else:
        raise TypeError(
            f"requested={requested!r} is invalid: allowed None, a sparsity, a {{layer name: sparsity}} dict "
            f"or a MagnitudePrunerConfig"
        )
    for value in values:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"requested sparsity {value!r} is invalid: allowed 0 <= sparsity <= 1")


def model_report(
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    requested: Requested = None,
    rule: str = "sparsify",
    target: str = "iOS16",
) -> ModelReport:
    """Report sparsity, pattern and Core ML storage of every weight of ``model``.

    Args:
        model: any ``nn.Module`` (prepared, finalized or plain) or a state dict.
        requested: the sparsity asked for, when the model does not say (a masked weight reports its
            hook's ``amount``): one number for every layer, a ``{layer name: sparsity}`` dict, or the
            ``MagnitudePrunerConfig`` the model was pruned with (its pattern is then reported too).
        rule: how the model will be exported, which decides the weights stored sparse
            (`sparsify.analysis.sizing`): ``"sparsify"`` (default: `sparsify.export.coreml.export_coreml`,
            ``sparsify export``), ``"sparsify_all"`` (the same with ``sparse_weights="all"``),
            ``"metadata"`` (plain ``coremltools.convert``) or ``"default_pruning"`` (``coremltools.convert``
            with ``pass_pipeline=ct.PassPipeline.DEFAULT_PRUNING``).
        target: deployment target of the export, ``"iOS16"``, ``"iOS17"`` or ``"iOS18"`` (iOS18 writes
            small masks to ``weight.bin`` that earlier targets inline).
    """
    if isinstance(model, nn.Module):
        weights, others = _read_module(model)
        keys, module = list(model.state_dict(keep_vars=True)), model
    elif isinstance(model, Mapping):
        weights, others = _read_state(model)
        keys, module = list(model), None
    else:
        raise TypeError(f"model must be an nn.Module or a state dict, got {type(model).__name__}")
    _check_args(requested, rule, target, [w.name for w in weights])

    layers = []
    stored: dict[str, list[StoredTensor]] = {"fp16": [], "fp32": []}
    with torch.no_grad():
        for w in weights:
            tensor = w.tensor
            numel = tensor.numel()
            nonzeros = int(torch.count_nonzero(tensor))
            kept = int((tensor.abs() > zero_threshold(rule, w.metadata)).sum())
            for precision, entries in stored.items():
                sparse = stores_sparse(numel, tensor.dim(), kept, metadata=w.metadata, rule=rule,
                                       precision=precision, target=target)
                entries.append(StoredTensor(numel, kept if sparse else nonzeros, sparse))
            fp16, fp32 = stored["fp16"][-1], stored["fp32"][-1]
            asked, config_pattern = _requested_for(requested, w, module)
            if asked is None:
                asked = w.amount
            pattern, source = w.pattern, "hook"
            if pattern is None and config_pattern is not None:
                pattern, source = config_pattern, "config"
            if pattern is None:
                pattern, source = infer_pattern(tensor), "inferred"
            summary = sparsity_summary(tensor)
            layers.append(LayerReport(
                name=w.name, kind=w.kind, shape=tuple(tensor.shape), params=numel, nonzeros=nonzeros,
                requested=asked, pattern=pattern, pattern_source=source,
                structured_sparsity=summary["structured_weight_sparsity"],
                block2_sparsity=summary["block2_weight_sparsity"], metadata=w.metadata,
                stored_nonzeros=fp16.nnz, sparse=fp16.sparse, sparse_fp32=fp32.sparse,
                dense_fp16=dense_bytes(numel, "fp16"), dense_fp32=dense_bytes(numel, "fp32"),
                coreml_fp16=fp16.payload_bytes("fp16"), coreml_fp32=fp32.payload_bytes("fp32"),
            ))

    # Batch norms the converter folds into the conv before them vanish; the conv gains a bias.
    rest = dict(others)
    for index, prefix in _batchnorms_after_convs(weights, others, keys):
        conv = weights[index]
        if fuses_batchnorm(rule, conv_metadata=conv.metadata, conv_sparse=layers[index].sparse):
            for name in _BATCHNORM:
                rest.pop(prefix + name, None)
            bias = f"{conv.module}.bias" if conv.module else "bias"
            rest.setdefault(bias, conv.tensor.new_empty(conv.tensor.shape[0]))
    dense_rest = [StoredTensor(t.numel(), t.numel(), False) for t in rest.values()]
    files = {
        (precision, is_dense): weight_file_bytes(
            [*(StoredTensor(e.numel, e.numel, False) if is_dense else e for e in entries), *dense_rest],
            precision, target)
        for precision, entries in stored.items() for is_dense in (False, True)
    }
    return ModelReport(
        layers=tuple(layers), other_params=sum(t.numel() for t in rest.values()), rule=rule, target=target,
        file_fp16=files["fp16", False], file_fp32=files["fp32", False],
        file_dense_fp16=files["fp16", True], file_dense_fp32=files["fp32", True],
    )
