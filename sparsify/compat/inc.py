"""Read an Intel Neural Compressor pruning config and turn it into a `sparsify.PrunerConfig`.

Accepted inputs: a dict (or a YAML file) in INC 2.x ``WeightPruningConfig`` form — global keys plus an
optional ``pruning_configs`` list whose dicts override them, one per pruner — or in the 1.x YAML form
(``pruning: approach: weight_compression_pytorch:`` with a ``pruners`` list and the old key names).

Translation (INC → sparsify)
----------------------------
=============================  ===============================================================================
INC key (default)              sparsify
=============================  ===============================================================================
``pruning_type``               ``criterion``: ``magnitude``, ``gradient``, ``snip``, ``snip_momentum`` (INC's
(``snip_momentum``)            code coefficients, ``S ← 0.9·S + 1.0·|W⊙G|``)
``pattern`` (``4x1``)          ``"NxM"`` / ``"channelx1"`` / ``"1xchannel"`` → ``pattern``; ``"N:M"`` (N
                               *pruned* of M) → ``n_m_ratio=(N, M)`` (N zeros of M: the same meaning), logged
``target_sparsity`` (0.9)      ``target_sparsity`` (with N:M the target is N/M, as INC caps it)
``sparsity_decay_type``        ``scheduler.kind``: ``exp`` → ``exponential``, ``cos`` → ``cosine``, ``linear``
(``exp``)                      → ``linear``, ``cube`` → ``cubic_slow_start`` (INC's cube is *slow-start*)
``start_step`` / ``end_step``  ``scheduler.start_step`` / ``end_step`` (INC's global step = the number of
/ ``pruning_frequency``        finished optimizer steps = sparsify's ``step()`` count); ``frequency``
``pruning_scope`` (global)     ``scope``
``min/max_sparsity_ratio_      ``min_sparsity`` / ``max_sparsity``
per_op`` (0.0 / 0.98)
``op_names``                   name rules ``".*(?:p).*"`` — INC matches with ``re.search`` (substring);
                               sparsify's rule is ``re.fullmatch``, so the pattern is wrapped to keep INC's
                               meaning
``excluded_op_names``          the same wrapping, mapped to ``None`` (do not prune), before every other rule
``pruning_op_types``           ``module_types``: the supported classes whose name contains one of the strings
(``["Conv", "Linear"]``)       (INC's substring rule: ``"Conv"`` → ``Conv1d``, ``Conv2d``, ``Conv3d``)
(implicit)                     ``keep_classifier_dense=True``: INC never prunes the last ``Linear``
=============================  ===============================================================================

Keys accepted only at their neutral value (anything else is an error that says so):
``low_memory_usage: False``, ``reg_type: None``, ``criterion_reduce_type: "mean"``,
``resume_from_pruned_checkpoint: False``, ``parameters`` (regulariser coefficients, unused without
``reg_type``). Everything else sparsify cannot honour — ``*_progressive`` / ``pattern_lock`` /
``block_mask`` / ``retrain_free`` / ``sparse_gpt`` / ``wanda`` pruning types, the ``mha`` pattern,
epoch-based keys, a partial N:M target, or keys it does not know — raises ``ValueError`` naming the key
and the value, so nothing is silently ignored.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from ..config import SUPPORTED_MODULES, ModulePrunerConfig, PrunerConfig, safe_load_yaml
from ..patterns import n_m_from_string, parse_pattern

__all__ = ["INC_DEFAULTS", "from_inc_config", "load_inc_config"]

logger = logging.getLogger(__name__)

INC_DEFAULTS: dict[str, Any] = {
    "target_sparsity": 0.9,
    "pruning_type": "snip_momentum",
    "pattern": "4x1",
    "op_names": [],
    "excluded_op_names": [],
    "start_step": 0,
    "end_step": 0,
    "pruning_scope": "global",
    "pruning_frequency": 1,
    "min_sparsity_ratio_per_op": 0.0,
    "max_sparsity_ratio_per_op": 0.98,
    "sparsity_decay_type": "exp",
    "pruning_op_types": ["Conv", "Linear"],
    "low_memory_usage": False,
    "reg_type": None,
    "criterion_reduce_type": "mean",
    "resume_from_pruned_checkpoint": False,
    "parameters": {"reg_coeff": 0.0},
    "initial_sparsity": 0.0,
}

# INC 1.x names -> 2.x names
_ALIASES = {
    "prune_type": "pruning_type",
    "names": "op_names",
    "excluded_names": "excluded_op_names",
    "extra_excluded_names": "excluded_op_names",
    "exclude_names": "excluded_op_names",
    "not_to_prune_names": "excluded_op_names",
    "update_frequency_on_step": "pruning_frequency",
    "prune_domain": "pruning_scope",
    "max_sparsity_ratio_per_layer": "max_sparsity_ratio_per_op",
    "min_sparsity_ratio_per_layer": "min_sparsity_ratio_per_op",
    "prune_layer_type": "pruning_op_types",
    "initial_sparsity_ratio": "initial_sparsity",
}

_NEUTRAL = {
    "low_memory_usage": (False,),
    "reg_type": (None,),
    "criterion_reduce_type": ("mean",),
    "resume_from_pruned_checkpoint": (False,),
}

_CRITERIA = {"magnitude": "magnitude", "gradient": "gradient", "snip": "snip", "snip_momentum": "snip_momentum"}
_DECAY = {"exp": "exponential", "cos": "cosine", "linear": "linear", "cube": "cubic_slow_start"}
_EPOCH_KEYS = ("start_epoch", "end_epoch", "update_frequency")


def load_inc_config(source: str | Path | IO[str]) -> dict[str, Any]:
    """Parse an INC YAML file or stream with ``yaml.safe_load``."""
    data = safe_load_yaml(source)
    if not isinstance(data, dict):
        raise ValueError(f"an INC pruning config must be a mapping at the top level, got {type(data).__name__}")
    return data


def _unnest(data: Mapping[str, Any]) -> dict[str, Any]:
    """Peel the 1.x ``pruning: approach: weight_compression_pytorch:`` nesting, if present."""
    data = dict(data)
    if "pruning" in data and isinstance(data["pruning"], Mapping):
        data = dict(data["pruning"])
    if "approach" in data and isinstance(data["approach"], Mapping):
        data = dict(data["approach"])
    for key in ("weight_compression_pytorch", "weight_compression"):
        if key in data and isinstance(data[key], Mapping):
            data = dict(data[key])
    if "pruners" in data:
        data["pruning_configs"] = data.pop("pruners")
    return data


def _canonical(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _EPOCH_KEYS:
            raise ValueError(
                f"{where}: {key}={value!r} cannot be honoured: sparsify's INC reader is step-based; give "
                f"start_step / end_step / pruning_frequency in optimizer steps"
            )
        name = _ALIASES.get(key, key)
        if name not in INC_DEFAULTS:
            raise ValueError(
                f"{where}: unknown INC pruning key {key!r}: allowed keys are {', '.join(sorted(INC_DEFAULTS))} "
                f"(and the 1.x names {', '.join(sorted(_ALIASES))})"
            )
        if name == "excluded_op_names" and name in out:
            out[name] = [*out[name], *_as_list(value, key, where)]
        else:
            out[name] = value
    return out


def _as_list(value: Any, key: str, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: {key}={value!r} is invalid: expected a list of regular expressions")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{where}: {key} entry {pattern!r} is not a valid regular expression ({exc})") from exc
    return list(value)


def _search(pattern: str) -> str:
    """INC's ``re.search(pattern, name)`` as a pattern for ``re.fullmatch``."""
    return f".*(?:{pattern}).*"


def _module_config(cfg: Mapping[str, Any], where: str) -> ModulePrunerConfig:
    for key, allowed in _NEUTRAL.items():
        if cfg[key] not in allowed:
            raise ValueError(
                f"{where}: {key}={cfg[key]!r} cannot be honoured by sparsify (allowed only {allowed[0]!r})"
            )
    kind = cfg["pruning_type"]
    if kind not in _CRITERIA:
        raise ValueError(
            f"{where}: pruning_type={kind!r} cannot be honoured: allowed {', '.join(_CRITERIA)} "
            f"(progressive masks, pattern_lock, block_mask, retrain_free, sparse_gpt and wanda are not INC-compatible "
            f"here; sparsify's own one-shot pruners cover the last three)"
        )
    decay = cfg["sparsity_decay_type"]
    if decay not in _DECAY:
        raise ValueError(f"{where}: sparsity_decay_type={decay!r} is invalid: allowed {', '.join(_DECAY)}")
    target = float(cfg["target_sparsity"])
    pattern = str(cfg["pattern"]).strip()
    fields: dict[str, Any] = {}
    if ":" in pattern:
        n, m = n_m_from_string(pattern)
        if target < n / m - 1e-9:
            raise ValueError(
                f"{where}: target_sparsity={target} with pattern={pattern!r} cannot be honoured: sparsify's n:m "
                f"ends at every run n:m-sparse ({n}/{m} = {n / m:g}); set target_sparsity to {n / m:g}"
            )
        if target > n / m + 1e-9:
            logger.info("%s: target_sparsity=%g capped at %d/%d = %g by the %s pattern", where, target, n, m, n / m,
                        pattern)
        fields["n_m_ratio"] = (n, m)
    else:
        if pattern == "mha" or pattern.startswith("oc_pattern"):
            raise ValueError(f"{where}: pattern={pattern!r} cannot be honoured: allowed 'NxM' tiles or 'N:M'")
        fields["pattern"] = parse_pattern(pattern).text
    return ModulePrunerConfig(
        scheduler={
            "kind": _DECAY[decay], "start_step": cfg["start_step"], "end_step": cfg["end_step"],
            "frequency": cfg["pruning_frequency"],
        },
        initial_sparsity=cfg["initial_sparsity"],
        target_sparsity=min(target, 1.0),
        criterion=_CRITERIA[kind],
        scope=cfg["pruning_scope"],
        min_sparsity=cfg["min_sparsity_ratio_per_op"],
        max_sparsity=cfg["max_sparsity_ratio_per_op"],
        **fields,
    )


def _module_types(op_types: Any, where: str) -> tuple[str, ...]:
    names = _as_list(op_types, "pruning_op_types", where)
    supported = [t.__name__ for t in SUPPORTED_MODULES]
    chosen = tuple(s for s in supported if any(sub in s for sub in names))
    if not chosen:
        raise ValueError(
            f"{where}: pruning_op_types={names!r} matches none of the supported module types {supported}"
        )
    return chosen


def from_inc_config(source: Mapping[str, Any] | str | Path | IO[str]) -> PrunerConfig:
    """Translate an INC pruning config (dict, YAML path or stream) into a `PrunerConfig`.

    See the module docstring for the mapping; keys that cannot be honoured raise ``ValueError``.
    """
    data = _unnest(source if isinstance(source, Mapping) else load_inc_config(source))
    pruner_dicts = data.pop("pruning_configs", None) or [{}]
    if not isinstance(pruner_dicts, list) or not all(isinstance(p, Mapping) for p in pruner_dicts):
        raise ValueError(f"pruning_configs={pruner_dicts!r} is invalid: expected a list of dicts")
    top = _canonical(data, "INC config")
    pruners = []
    for i, raw in enumerate(pruner_dicts):
        where = f"pruning_configs[{i}]" if len(pruner_dicts) > 1 or raw else "INC config"
        local = _canonical(raw, where)
        merged = {**INC_DEFAULTS, **top, **local}
        if "excluded_op_names" in top and "excluded_op_names" in local:
            merged["excluded_op_names"] = [*_as_list(top["excluded_op_names"], "excluded_op_names", where),
                                           *_as_list(local["excluded_op_names"], "excluded_op_names", where)]
        pruners.append((where, merged))

    type_sets = {_module_types(cfg["pruning_op_types"], where) for where, cfg in pruners}
    if len(type_sets) > 1:
        raise ValueError(
            f"pruning_op_types differ between pruning_configs ({sorted(type_sets)}): sparsify's module_types filter is "
            f"one list for the model; split the pruners by op_names instead"
        )
    exclusions = [tuple(_as_list(cfg["excluded_op_names"], "excluded_op_names", where)) for where, cfg in pruners]
    shared_exclusions = len(set(exclusions)) == 1

    name_configs: OrderedDict[str, ModulePrunerConfig | None] = OrderedDict()
    if shared_exclusions:
        for pattern in exclusions[0]:
            name_configs[_search(pattern)] = None
    global_config = None
    for (where, cfg), excluded in zip(pruners, exclusions):
        module_config = _module_config(cfg, where)
        guard = "" if shared_exclusions or not excluded else "(?!" + "|".join(f".*(?:{p})" for p in excluded) + ")"
        op_names = _as_list(cfg["op_names"], "op_names", where)
        if op_names:
            for pattern in op_names:
                name_configs[guard + _search(pattern)] = module_config
        elif guard:
            name_configs[guard + ".*"] = module_config
        elif global_config is not None:
            raise ValueError(
                f"{where}: a second pruner without op_names would claim every module, like an earlier one; "
                f"give op_names to all but one pruner"
            )
        else:
            global_config = module_config
    config = PrunerConfig(
        global_config=global_config,
        module_name_configs=name_configs,
        module_types=type_sets.pop(),
        keep_classifier_dense=True,
    )
    if global_config is None and not any(v is not None for v in name_configs.values()):
        raise ValueError("the INC config selects no module: every pruner is empty")
    logger.info("INC config -> %d pruner(s), %d name rule(s)", len(pruners), len(name_configs))
    return config
