"""Know your sparse model: per-layer sparsity, pattern and Core ML storage size of any model.

`model_report` reads a model in any of its lives —

* **prepared** by a pruner (``weight_orig`` × ``weight_mask`` with a ``pruning_method`` hook: sparsify,
  Core ML Tools or ``torch.nn.utils.prune``): the masked weight is reported, the requested sparsity
  is the hook's ``amount`` and the pattern the hook's ``n_m_ratio`` / ``block_size`` / ``granularity``
  (or ``tiles``), or the zeros' when the hook only says "unstructured" (`sparsify.analysis.pattern_names`);
* **finalized** (plain weights with ``_COREML_/<param>/compression_type`` metadata);
* **plain** (any ``nn.Module``), or just a **state dict** (e.g. ``torch.load("model.pt")``) —

and returns a `ModelReport`: for every weight of rank ≥ 2 its parameters, non-zeros,
requested vs achieved sparsity, pattern (read, or inferred from the zeros), the fraction of output
channels that are entirely zero (measured on magnitudes, see `sparsify.pruning.report`), and its size
dense vs as Core ML will store it, in fp16 and fp32 (`sparsify.analysis.sizing` has the formula and the
rule deciding which weights Core ML stores sparse). The whole-model line estimates the exported
``weight.bin``, other tensors (biases, norms) included.

Print it with `ModelReport.to_text` (also ``str()``), or export `ModelReport.to_markdown`,
`ModelReport.to_csv`, `ModelReport.to_json`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from ..config import ModulePrunerConfig, OptimizationConfig
from ..coreml_metadata import COMPRESSION_TYPE, PRUNING, is_metadata_key, parse_metadata_key
from ..mask_layout import ORIG, amount_name, layout_names, mask_name, masked_bases, split_masked_key
from ..pruning.metadata import REQUESTED_ATTRIBUTE
from ..pruning.plan import is_transposed
from ..pruning.report import sparsity_summary
from .layer_report import LayerReport, ModelReport
from .pattern_names import describe_pattern, infer_pattern
from .sizing import (
    JOINT_TARGET,
    RULES,
    TARGETS,
    StoredTensor,
    check_compression,
    compression_name,
    dense_bytes,
    fuses_batchnorm,
    stored_tensor,
    weight_file_bytes,
    zero_threshold,
)

logger = logging.getLogger(__name__)

__all__ = ["LayerReport", "ModelReport", "infer_pattern", "model_report"]  # the first three are re-exported

Requested = float | Mapping[str, float] | OptimizationConfig | None


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


_CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model")


def _state_dict_of(mapping: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The state dict itself, or the one a training checkpoint holds under a usual key (as the command reads
    files); anything else is refused rather than reported as a model with no layers."""
    if mapping and all(isinstance(v, torch.Tensor) for v in mapping.values()):
        return mapping
    for key in _CHECKPOINT_KEYS:
        inner = mapping.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            logger.info("model_report: using the state dict under the checkpoint's key %r", key)
            return inner
    shown = sorted(map(str, mapping))[:12]
    raise TypeError(
        f"model is a dict with keys {shown} but no state dict: expected tensors as values, or a state dict under "
        f"{', '.join(map(repr, _CHECKPOINT_KEYS))} (a training checkpoint)"
    )


def _read_state(state: Mapping[str, torch.Tensor]) -> tuple[list[_Weight], dict[str, torch.Tensor]]:
    """Split a state dict into weights to report (masked, with metadata, or rank ≥ 2) and the other
    floating-point tensors (by key), tied tensors counted once."""
    metadata: set[tuple[str, str]] = set()
    used: set[str] = set()
    for key, value in state.items():
        if is_metadata_key(key):
            used.add(key)
            parsed = parse_metadata_key(key)
            types = torch.as_tensor(value).reshape(-1).tolist()
            if parsed is not None and parsed[2] == COMPRESSION_TYPE and PRUNING in types:
                metadata.add((parsed[0], parsed[1]))
    weights: list[_Weight] = []
    seen: set[tuple[Any, ...]] = set()  # storages already counted: tied weights appear once
    masked = masked_bases(state)
    for key, value in state.items():
        split = split_masked_key(key)
        if split is None or split[1] != ORIG or split[0] not in masked:
            continue
        base = split[0]
        used.update(layout_names(base))
        if _storage_key(value) in seen:
            continue
        seen.add(_storage_key(value))
        module, param = _split(base)
        effective = torch.where(state[mask_name(base)].bool(), value.detach(), value.new_zeros(()))
        amount = state.get(amount_name(base))
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
        if is_transposed(module, weight.tensor):  # transformers' Conv1D stores [in, out]: report [out, in]
            weight.tensor = weight.tensor.T
        hook = _hook_for(module, weight.param) if weight.masked else None
        if hook is not None:
            amount = getattr(hook, "amount", None)
            if isinstance(amount, (int, float)) and not isinstance(amount, bool):
                # torch.nn.utils.prune takes an int amount as a count of weights
                weight.amount = float(amount) / weight.tensor.numel() if isinstance(amount, int) and amount > 1 \
                    else float(amount)
            if any(hasattr(hook, key) for key in ("n_m_ratio", "block_size", "granularity", "tiles")):
                weight.pattern = describe_pattern(
                    getattr(hook, "n_m_ratio", None), getattr(hook, "block_size", 1) or 1,
                    getattr(hook, "granularity", "per_scalar"), getattr(hook, "dim", 1), getattr(hook, "tiles", None),
                )
        if weight.amount is None:  # finalized by sparsify: the level asked for is kept on the module
            recorded = module.__dict__.get(REQUESTED_ATTRIBUTE, {}).get(weight.param)
            weight.amount = None if recorded is None else float(recorded)
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


def _fused_bias(bias: torch.Tensor | None, bn: dict[str, torch.Tensor | None]) -> torch.Tensor:
    """The bias of a conv with its batch norm folded in (eps = 1e-5, the default: it only matters for
    telling equal biases apart)."""
    running_mean, running_var = bn["running_mean"], bn["running_var"]
    assert running_mean is not None and running_var is not None  # _batchnorms_after_convs pairs only these
    mean, var = running_mean.float(), running_var.float()
    gamma = bn["weight"].float() if bn["weight"] is not None else torch.ones_like(mean)
    beta = bn["bias"].float() if bn["bias"] is not None else torch.zeros_like(mean)
    base = bias.float() if bias is not None else torch.zeros_like(mean)
    return (base - mean) * gamma / torch.sqrt(var + 1e-5) + beta


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
        assert isinstance(config, ModulePrunerConfig)  # every OptimizationConfig holds these
        pattern = describe_pattern(config.n_m_ratio, config.block_size, config.granularity, config.dim,
                                   getattr(config, "pattern", None))
        return config.final_sparsity, pattern
    if isinstance(requested, Mapping):
        value = requested.get(weight.name)
        return (None if value is None else float(value)), None
    return float(requested), None


def _check_args(requested: Requested, rule: str, target: str, names: list[str], palettize_bits: int | None,
                quantize: str | None) -> None:
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is invalid: allowed values are {', '.join(map(repr, RULES))}")
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is invalid: allowed values are {', '.join(map(repr, TARGETS))}")
    check_compression(palettize_bits, quantize, target, rule)
    values: Iterable[float]
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
    target: str | None = None,
    palettize_bits: int | None = None,
    quantize: str | None = None,
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
            small masks to ``weight.bin`` that earlier targets inline); ``None``: ``"iOS16"``, or
            ``"iOS18"`` with ``palettize_bits`` / ``quantize``.
        palettize_bits, quantize: estimate the export with joint compression, as
            ``export_coreml(..., palettize_bits=N)`` / ``quantize="int8"`` stores it (iOS18, rules
            ``"sparsify"`` and ``"sparsify_all"`` only): each weight of rank >= 2 in the smallest of its
            dense, sparse, palettized / quantized and sparse + palettized / quantized forms.
    """
    if target is None:
        target = JOINT_TARGET if palettize_bits is not None or quantize is not None else "iOS16"
    if isinstance(model, nn.Module):
        weights, others = _read_module(model)
        keys, module = list(model.state_dict(keep_vars=True)), model
    elif isinstance(model, Mapping):
        model = _state_dict_of(model)
        weights, others = _read_state(model)
        keys, module = list(model), None
    else:
        raise TypeError(f"model must be an nn.Module or a state dict, got {type(model).__name__}")
    _check_args(requested, rule, target, [w.name for w in weights], palettize_bits, quantize)

    layers = []
    stored: dict[str, list[StoredTensor]] = {"fp16": [], "fp32": []}
    with torch.no_grad():
        for w in weights:
            tensor = w.tensor
            numel = tensor.numel()
            nonzeros = int(torch.count_nonzero(tensor))
            kept = int((tensor.abs() > zero_threshold(rule, w.metadata)).sum())
            for precision, entries in stored.items():
                form = stored_tensor(numel, tensor.dim(), kept, metadata=w.metadata, rule=rule, precision=precision,
                                     target=target, palettize_bits=palettize_bits, quantize=quantize,
                                     channels=tensor.shape[0] if tensor.dim() else 1)
                entries.append(form if form.sparse else attrs.evolve(form, nnz=nonzeros))
            fp16, fp32 = stored["fp16"][-1], stored["fp32"][-1]
            asked, config_pattern = _requested_for(requested, w, module)
            if asked is None:
                asked = w.amount
            pattern, source = w.pattern, "hook"
            if pattern is None and config_pattern is not None:
                pattern, source = config_pattern, "config"
            if pattern in (None, "unstructured"):
                # a hook without tile fields says "unstructured" for tiles too: the zeros tell more, once there
                inferred = infer_pattern(tensor)
                if pattern is None or inferred not in ("unstructured", "dense"):
                    pattern, source = inferred, "inferred"
            summary = sparsity_summary(tensor)
            layers.append(LayerReport(
                name=w.name, kind=w.kind, shape=tuple(tensor.shape), params=numel, nonzeros=nonzeros,
                requested=asked, pattern=pattern, pattern_source=source,
                structured_sparsity=summary["structured_weight_sparsity"],
                block2_sparsity=summary["block2_weight_sparsity"], metadata=w.metadata,
                stored_nonzeros=fp16.nnz, sparse=fp16.sparse, sparse_fp32=fp32.sparse,
                dense_fp16=dense_bytes(numel, "fp16"), dense_fp32=dense_bytes(numel, "fp32"),
                coreml_fp16=fp16.payload_bytes("fp16"), coreml_fp32=fp32.payload_bytes("fp32"),
                storage=fp16.storage,
            ))

    # Batch norms the converter folds into the conv before them vanish; the conv gains a bias.
    rest = dict(others)
    for index, prefix in _batchnorms_after_convs(weights, others, keys):
        conv = weights[index]
        if fuses_batchnorm(rule, conv_metadata=conv.metadata, conv_sparse=layers[index].sparse):
            bias = f"{conv.module}.bias" if conv.module else "bias"
            rest[bias] = _fused_bias(rest.get(bias), {name: rest.pop(prefix + name, None) for name in _BATCHNORM})
    # The converter stores equal constants of >= 100 elements once (its const_deduplication pass): the
    # fused biases of an untrained model, all zero, are one constant per shape.
    distinct: dict[Any, torch.Tensor] = {}
    for key, tensor in rest.items():
        value = tensor.detach().float().cpu()
        distinct.setdefault((tuple(value.shape), value.numpy().tobytes()) if value.numel() >= 100 else key, value)
    dense_rest = [StoredTensor(t.numel(), t.numel(), False) for t in distinct.values()]
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
        compression=compression_name(palettize_bits, quantize),
    )
