"""The sparsity a saved model carries: ``sparsity.json`` beside ``config.json``, and masks attached from it.

``save_pretrained`` of a model pruned by sparsify (prepared or finalized) writes the weights with their zeros
(`sparsify.pruning.saving`) and, beside them, `SPARSITY_FILE`::

    {"format": "sparsify.sparsity", "version": 1,
     "layers": {"model.layers.0.mlp.up_proj": {"param": "weight", "pattern": "n:m 2:4 (dim 1)",
                                                "n_m_ratio": [2, 4], "dim": 1, "level": 0.5,
                                                "tied_to": []}, ...}}

``level`` is the fraction of zeros the layer's mask holds when saved; the pattern fields are those the mask
hook records (`Pattern.record_fields`: ``granularity`` / ``block_size`` for Core ML Tools' patterns,
``n_m_ratio`` / ``dim`` for n:m, ``tiles`` for NxM tiles; a registered pattern's name as ``tiles`` and its saved
form ``{"kind": ..., **fields}`` as ``spec``). `sparsify.from_pretrained_pruned` (`sparsify.pruning.resume`) reads it
back.
The file is read as untrusted input: size-limited JSON, every field checked, every layer name
looked up in the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ModulePrunerConfig
from ..mask_layout import mask_name, orig_name
from ..masking import is_masked
from ..safe_io import read_text

__all__ = ["FORMAT", "SPARSITY_FILE", "measured_level", "module_config", "read_record", "record_of", "write_record"]

logger = logging.getLogger(__name__)

SPARSITY_FILE = "sparsity.json"
FORMAT = "sparsify.sparsity"
_MAX_BYTES = 16 * 1024 * 1024
_PATTERN_KEYS = ("pattern", "granularity", "block_size", "n_m_ratio", "dim", "tiles", "spec")


def measured_level(module: nn.Module, param_name: str) -> float:
    """The fraction of zeros of ``module.<param_name>``: of its mask while prepared, of the weight once baked."""
    if is_masked(module, param_name):
        mask = getattr(module, mask_name(param_name))
        orig = getattr(module, orig_name(param_name))
        return 1.0 - float(mask.expand(orig.shape).float().mean())
    weight = getattr(module, param_name)
    return float((weight == 0).float().mean()) if weight.numel() else 0.0


def record_of(model: nn.Module, layers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The record of ``model`` for the layer specs ``layers`` (name → param, pattern fields, tied_to)."""
    out: dict[str, Any] = {}
    for name, spec in layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        entry = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}
        entry["level"] = round(measured_level(module, str(spec["param"])), 6)
        out[name] = entry
    return {"format": FORMAT, "version": 1, "layers": out}


def write_record(directory: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """Write ``record`` as `SPARSITY_FILE` in ``directory`` (through a temporary file: never half written)."""
    path = Path(directory) / SPARSITY_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)
    return path


def _check_entry(name: str, entry: Any, source: str) -> dict[str, Any]:
    where = f"{source}: layer {name!r}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} is a {type(entry).__name__}: expected an object")
    unknown = sorted(set(entry) - {"param", "level", "tied_to", *_PATTERN_KEYS})
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}")
    level = entry.get("level")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 <= float(level) <= 1.0 \
            or not math.isfinite(float(level)):
        raise ValueError(f"{where}: level={level!r} is invalid: allowed a number in [0, 1]")
    param = entry.get("param", "weight")
    if not isinstance(param, str) or not param.isidentifier():
        raise ValueError(f"{where}: param={param!r} is invalid: allowed a parameter name")
    tied = entry.get("tied_to", [])
    if not isinstance(tied, list) or not all(isinstance(t, str) for t in tied):
        raise ValueError(f"{where}: tied_to={tied!r} is invalid: allowed a list of module names")
    n_m = entry.get("n_m_ratio")
    if n_m is not None and not (isinstance(n_m, list) and len(n_m) == 2
                                and all(isinstance(v, int) and not isinstance(v, bool) for v in n_m)):
        raise ValueError(f"{where}: n_m_ratio={n_m!r} is invalid: allowed [n, m]")
    spec = entry.get("spec")
    if spec is not None and not (isinstance(spec, Mapping) and isinstance(spec.get("kind"), str)):
        raise ValueError(f"{where}: spec={spec!r} is invalid: allowed an object with a registered pattern's kind")
    return dict(entry)


def read_record(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The checked ``layers`` of `SPARSITY_FILE` in ``directory`` (see the module docs)."""
    path = Path(directory) / SPARSITY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the model was not saved by save_pretrained after "
                                f"sparsify pruned it (nothing records its sparsity)")
    try:
        data = json.loads(read_text(path, max_bytes=_MAX_BYTES))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a sparsify sparsity record (format must be {FORMAT!r})")
    if data.get("version") != 1:
        raise ValueError(f"{path}: version={data.get('version')!r} is not supported: allowed 1")
    layers = data.get("layers")
    if not isinstance(layers, Mapping):
        raise ValueError(f"{path}: 'layers' must be an object of layer name -> entry")
    return {str(name): _check_entry(str(name), entry, str(path)) for name, entry in layers.items()}


def module_config(entry: Mapping[str, Any], masking: str) -> ModulePrunerConfig:
    level = float(entry["level"])
    fields: dict[str, Any] = {"param_name": entry.get("param", "weight"), "masking": masking,
                              "scheduler": {"kind": "constant", "begin_step": 0}}
    if entry.get("n_m_ratio") is not None:
        n, m = entry["n_m_ratio"]
        fields.update(n_m_ratio=(n, m), dim=entry.get("dim", 1))
        return ModulePrunerConfig(initial_sparsity=n / m if m > 0 and 0 <= n <= m else 0.0, **fields)
    if entry.get("spec") is not None:  # a registered pattern: rebuilt from its kind and fields, checked there
        fields["pattern"] = dict(entry["spec"])
    elif entry.get("tiles") is not None:
        fields["pattern"] = entry["tiles"]
    else:
        fields.update(granularity=entry.get("granularity", "per_scalar"), block_size=entry.get("block_size", 1))
    return ModulePrunerConfig(target_sparsity=level, initial_sparsity=level, **fields)
