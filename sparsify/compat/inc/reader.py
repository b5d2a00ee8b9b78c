"""Read an Intel Neural Compressor pruning config into a `sparsify.compat.plan.RecipePlan`.

Four forms, each read with its own INC version's rules:

* **2.x** ``WeightPruningConfig``: global keys plus a ``pruning_configs`` list, one dict per pruner; a
  key a pruner does not give comes from the global keys, then INC's defaults (`INC_DEFAULTS`). Also
  the 2.x YAML form ``pruning: approach: weight_compression_v2:`` with ``pruners:``.
* **1.x PyTorch pruner** (``pruning: approach: weight_compression_pytorch:``, ``pruners: - !Pruner``):
  the old key names (``prune_type``, ``names``, ``excluded_names``, ``prune_domain``,
  ``update_frequency_on_step``, ...), layer types matched by exact class name, no classifier-head
  exclusion, ``excluded_names`` and ``extra_excluded_names`` both apply.
* **1.x legacy pruner** (``pruning: approach: weight_compression:``): epochs (``start_epoch``,
  ``end_epoch``, ``update_frequency``), exact parameter ``names`` (default: every 2-D and 4-D
  parameter), ``prune_type: basic_magnitude`` or ``pattern_lock``; a pruner's value wins when it is
  truthy, else the global one (INC's rule).

Every pruner becomes its own `PruningGroup`, so a global ranking covers exactly that pruner's
layers, as INC ranks them. What the rest of an INC 1.x file holds (``train:``, ``evaluation:``,
``tuning:``) is named in one warning per section and not applied. See ``docs/recipes.md`` for what is
supported, translated and refused.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ...safe_io import DEFAULT_MAX_BYTES, SourceError, Tagged, line_of, load_yaml_text, read_text
from ..plan import (
    IncOps,
    IncWeights,
    Origin,
    PruningGroup,
    RecipePlan,
    Schedule,
    Structure,
    TargetRule,
    UnsupportedFeatureError,
)
from .gradient_sensitivity import gradient_sensitivity_group

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ...safe_io import YamlLimits

__all__ = ["INC_DEFAULTS", "read_inc_config", "read_inc_data"]

logger = logging.getLogger(__name__)

#: INC 2.x defaults (``process_and_check_config``).
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
    "criterion_type": "snip_momentum",
    "pruning_op_types": ["Conv", "Linear"],
    "low_memory_usage": False,
    "resume_from_pruned_checkpoint": False,
    "reg_type": None,
    "criterion_reduce_type": "mean",
    "parameters": {"reg_coeff": 0.0},
    "reg_coeff": 0.0,
}
# INC 1.x PyTorch pruner names -> 2.x names
_V1_NAMES = {
    "prune_type": "pruning_type",
    "names": "op_names",
    "excluded_names": "excluded_op_names",
    "update_frequency_on_step": "pruning_frequency",
    "prune_domain": "pruning_scope",
    "max_sparsity_ratio_per_layer": "max_sparsity_ratio_per_op",
    "prune_layer_type": "pruning_op_types",
}
_V1_DEFAULTS = {  # experimental/pytorch_pruner after its schema
    "start_step": 0, "end_step": 0, "excluded_names": [], "prune_layer_type": ["Conv2d", "Linear"],
    "target_sparsity": 0.97, "update_frequency_on_step": 1, "prune_domain": "global", "prune_type": "snip_momentum",
    "sparsity_decay_type": "exp", "max_sparsity_ratio_per_layer": 0.98, "names": [], "extra_excluded_names": [],
    "pattern": "tile_pattern_4x1",
}
_V1_PRUNER_DEFAULTS = {"pattern": "tile_pattern_1x1", "prune_type": "basic_magnitude", "update_frequency": 1,
                       "method": "per_tensor"}
_PRUNER_KEYS = {  # the fields of INC 1.x's `Pruner` (an unknown one is a TypeError in INC)
    "start_epoch", "end_epoch", "initial_sparsity", "target_sparsity", "update_frequency", "method", "prune_type",
    "start_step", "end_step", "update_frequency_on_step", "prune_domain", "sparsity_decay_type", "pattern", "names",
    "extra_excluded_names", "parameters",
}
_CRITERIA = ("magnitude", "gradient", "snip", "snip_momentum")
_REFUSED_TYPES = {
    "retrain_free": "retrain-free pruning searches channel masks with learnable mask scores on calibration data",
    "block_mask": "block_mask learns block masks by gradient during training",
    "group_lasso": "group-lasso regularisation changes the training loss",
    "gradient_sensitivity": "gradient-sensitivity head pruning removes attention heads and FFN neurons physically",
    "mha": "multi-head attention pruning slims the model's heads",
}
_DECAY = ("exp", "cos", "linear", "cube")
_NOT_APPLIED = {"train": "INC's training loop (pruning.train: optimizer, criterion, dataloader)",
                "evaluation": "evaluation", "tuning": "accuracy tuning", "quantization": "quantization",
                "distillation": "distillation", "graph_optimization": "graph optimization",
                "mixed_precision": "mixed precision", "benchmark": "benchmark"}
_METADATA = ("model", "version", "device")


def _where(origin: Origin) -> tuple[str | None, int | None]:
    return origin.path, origin.line


def _refuse(feature: str, reason: str, origin: Origin) -> UnsupportedFeatureError:
    key = feature.split("=")[0].split(":")[0].strip()
    return UnsupportedFeatureError(f"{origin.entry}: {feature}", reason, origin.path, origin.at(key))


def _num(value: Any, key: str, origin: Origin, *, integer: bool = False) -> float:
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise origin.error(f"{key}={value!r} is invalid: expected a finite number", key=key)
    if integer:
        if float(value) != int(value):
            raise origin.error(f"{key}={value!r} is invalid: expected an integer", key=key)
        return int(value)
    return float(value)


def _names(value: Any, key: str, origin: Origin) -> tuple[str, ...]:
    if value is None or value == {}:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise origin.error(f"{key}={value!r} is invalid: expected a list of strings", key=key)


def _pattern(text: Any, origin: Origin, target: float, method: str) -> tuple[Structure, float]:
    """INC's ``pattern`` (``"4x1"``, ``"channelx1"``, ``"2:4"``, 1.x ``"tile_pattern_4x1"``) → structure, target."""
    if not isinstance(text, str):
        raise origin.error(f"pattern={text!r} is invalid: expected a string such as '4x1' or '2:4'", key='pattern')
    core = text.strip().split("_")[-1].lower()
    if "mha" in text:
        raise _refuse(f"pattern={text!r}", _REFUSED_TYPES["mha"], origin)
    nm = re.fullmatch(r"(\d+):(\d+)", core)
    if nm:
        n, m = int(nm.group(1)), int(nm.group(2))
        if not 0 < n < m:
            raise origin.error(f"pattern={text!r} is invalid: N:M prunes N of every M, 0 < N < M", key='pattern')
        if method != "lock" and target > n / m + 1e-9:
            raise origin.error(f"target_sparsity={target:g} with pattern={text!r} is invalid: INC allows at most "
                               f"N/M = {n / m:g}", key='target_sparsity')
        return Structure("n_m", n_m=(n, m), indivisible="skip"), target
    tile = re.fullmatch(r"(\d+|channel)x(\d+|channel)", core)
    if tile is None or "0" in (tile.group(1), tile.group(2)):
        raise origin.error(f"pattern={text!r} is invalid: allowed 'NxM' (N, M > 0 or 'channel'), 'N:M'", key='pattern')
    if core == "1x1":
        return Structure(indivisible="skip"), target
    return Structure("tile", tile=core, indivisible="skip"), target


def _schedule_steps(cfg: Mapping[str, Any], origin: Origin, decay: str) -> Schedule:
    start = _num(cfg["start_step"], "start_step", origin, integer=True)
    end = _num(cfg["end_step"], "end_step", origin, integer=True)
    frequency = _num(cfg["pruning_frequency"], "pruning_frequency", origin, integer=True)
    if start < 0 or end < start:
        raise origin.error(f"start_step={start}, end_step={end} are invalid: allowed 0 <= start_step <= end_step",
                           key="start_step")
    if frequency <= 0:
        raise origin.error(f"pruning_frequency={frequency} is invalid: allowed an integer > 0", key='pruning_frequency')
    if decay not in _DECAY:
        raise origin.error(f"sparsity_decay_type={decay!r} is invalid: allowed {', '.join(_DECAY)}",
                           key="sparsity_decay_type")
    return Schedule("step", start, end, frequency, "oneshot" if start == end else decay)


def _group(cfg: Mapping[str, Any], origin: Origin, *, v1: bool) -> PruningGroup:
    """One INC pruner (keys in 2.x names, defaults filled) as a group."""
    kind = str(cfg["pruning_type"])
    notes: list[str] = []
    if kind.endswith("_progressive"):
        notes.append(f"pruning_type={kind!r}: INC's progressive transition between masks is not reproduced; the "
                     f"masks follow the same pattern and reach the same sparsity")
        kind = kind[: -len("_progressive")]
    if kind == "basic_magnitude":
        kind = "magnitude"
    if kind in _REFUSED_TYPES:
        raise _refuse(f"pruning_type={kind!r}", _REFUSED_TYPES[kind], origin)
    if cfg.get("reg_type") not in (None, {}, "None"):
        raise _refuse(f"reg_type={cfg['reg_type']!r}", _REFUSED_TYPES["group_lasso"], origin)
    if cfg.get("resume_from_pruned_checkpoint") not in (False, None, {}):
        raise _refuse("resume_from_pruned_checkpoint: true", "resume the pruner's own state with "
                      "Pruner.load_state_dict instead", origin)
    if cfg.get("low_memory_usage"):
        notes.append("low_memory_usage only lowers the precision INC keeps scores in; sparsify keeps float32")
    if kind == "sparse_gpt":
        method = "sparsegpt"
    elif kind == "wanda":
        method = "wanda"
    elif kind == "pattern_lock":
        method = "lock"
    elif kind in _CRITERIA:
        method = kind
    else:
        raise origin.error(f"pruning_type={cfg['pruning_type']!r} is invalid: allowed {', '.join(_CRITERIA)} (with "
                           f"_progressive), pattern_lock, sparse_gpt", key='pruning_type')
    target = _num(cfg["target_sparsity"], "target_sparsity", origin)
    if not 0.0 <= target < 1.0:
        raise origin.error(f"target_sparsity={target:g} is invalid: INC allows 0 <= target_sparsity < 1",
                           key="target_sparsity")
    low = _num(cfg["min_sparsity_ratio_per_op"], "min_sparsity_ratio_per_op", origin)
    high = _num(cfg["max_sparsity_ratio_per_op"], "max_sparsity_ratio_per_op", origin)
    if not 0.0 <= low <= high < 1.0:
        raise origin.error(f"min_sparsity_ratio_per_op={low:g}, max_sparsity_ratio_per_op={high:g} are invalid: "
                           f"allowed 0 <= min <= max < 1", key='min_sparsity_ratio_per_op')
    structure, target = _pattern(cfg["pattern"], origin, target, method)
    if structure.kind == "n_m":
        assert structure.n_m is not None
        high = min(high, structure.n_m[0] / structure.n_m[1])
    if target > high:
        notes.append(f"target_sparsity={target:g} is capped at max_sparsity_ratio_per_op={high:g}, as INC caps it")
        target = high
    scope = cfg["pruning_scope"]
    if scope not in ("global", "local"):
        raise origin.error(f"pruning_scope={scope!r} is invalid: allowed 'global' or 'local'", key='pruning_scope')
    if method in ("sparsegpt", "wanda", "lock"):
        scope = "local"  # one-shot reconstruction and pattern lock work layer by layer
    reduce = cfg.get("criterion_reduce_type", "mean")
    if reduce not in ("mean", "sum"):
        raise origin.error(f"criterion_reduce_type={reduce!r} is invalid: allowed 'mean' or 'sum'",
                           key="criterion_reduce_type")
    if reduce == "sum" and structure.kind == "tile" and "channel" in (structure.tile or "") and scope == "global":
        raise _refuse("criterion_reduce_type: sum with channel tiles in global scope", "sparsify ranks tiles by "
                      "their mean score", origin)
    schedule = _schedule_steps(cfg, origin, str(cfg["sparsity_decay_type"]))
    if method in ("sparsegpt", "wanda", "lock") and schedule.curve != "oneshot":
        raise origin.error(f"pruning_type={kind!r} runs in one shot: give start_step == end_step", key='pruning_type')
    if schedule.curve == "oneshot" and method in ("gradient", "snip", "snip_momentum"):
        notes.append("one shot with a gradient criterion: the scores come from the gradients of the step it runs at")
    op_types = _names(cfg["pruning_op_types"], "pruning_op_types", origin)
    if isinstance(cfg["pruning_op_types"], str):
        notes.append(f"pruning_op_types={cfg['pruning_op_types']!r} is read as one type name (INC 2.x iterates the "
                     f"characters of a string)")
    selection = IncOps(_names(cfg["op_names"], "op_names", origin), op_types,
                       _names(cfg["excluded_op_names"], "excluded_op_names", origin),
                       type_match="exact" if v1 else "substring", drop_classifier_head=not v1)
    rule = TargetRule(None if method == "lock" else target, selection)
    return PruningGroup(origin, method, [rule], 0.0, schedule if method != "lock" else
                        Schedule("step", schedule.start, schedule.start, 1, "hold"), structure, scope, low, high,
                        notes=notes)


def _warn_nulls(entry: Mapping[str, Any], used: Mapping[str, Any], origin: Origin, source: str) -> None:
    """A key given as ``null`` falls back (to the global value, then INC's default), as INC reads it: said in
    one warning per key, naming the key and the value used."""
    for key, value in entry.items():
        if value is None and used.get(key) is not None:
            logger.warning("%s: %s is null: INC uses %r instead (%s), and so does sparsify",
                           Origin(origin.path, origin.at(key), origin.entry), key, used[key], source)


def _v2_pruners(top: Mapping[str, Any], locals_: list[Any], plan: RecipePlan, base_line: int | None) -> None:
    """INC 2.x: every pruner dict falls back to the global keys, then to `INC_DEFAULTS`."""
    path = plan.path
    for key in top:
        if key in ("pruning_configs", "pruners"):
            continue
        if key not in INC_DEFAULTS:
            logger.warning("%s: %r is not an INC pruning key; INC ignores it, and so does sparsify",
                           Origin(path, line_of(top, key), "INC config"), key)
    globals_ = {**INC_DEFAULTS, **{k: v for k, v in top.items() if v is not None and k not in ("pruning_configs",
                                                                                                "pruners")}}
    if isinstance(globals_.get("parameters"), Mapping):
        globals_.update(globals_["parameters"])
    _warn_nulls(top, globals_, Origin(path, base_line, "INC config", getattr(top, "lines", {})), "INC's default")
    for index, raw in enumerate(locals_ or [{}]):
        if isinstance(raw, Tagged):
            raw = raw.value
        line = line_of(locals_, index) if locals_ else base_line
        keys = {**getattr(top, "lines", {}), **getattr(raw, "lines", {})}
        origin = Origin(path, line, f"pruning_configs[{index}]" if locals_ else "INC config", keys)
        if not isinstance(raw, Mapping):
            raise origin.error(f"a pruner is a mapping of INC keys, got {type(raw).__name__}")
        for key in raw:
            if key not in INC_DEFAULTS:
                logger.warning("%s: %r is not an INC pruning key; INC ignores it, and so does sparsify", origin, key)
            elif key == "criterion_type":
                logger.warning("%s: criterion_type=%r is ignored: INC sets the criterion from pruning_type", origin,
                               raw[key])
        cfg = {**globals_, **{k: v for k, v in raw.items() if v is not None}}
        if isinstance(raw.get("parameters"), Mapping):
            cfg.update(raw["parameters"])
        _warn_nulls(raw, cfg, origin, "the global value or INC's default")
        plan.groups.append(_group(cfg, origin, v1=False))


def _pruner_entries(section: Mapping[str, Any], name: str, plan: RecipePlan,
                    line: int | None) -> Iterator[tuple[Mapping[str, Any], Origin]]:
    """Each ``!Pruner`` of an INC 1.x section (``name``) with its origin, checked to be a mapping of known keys;
    a section without pruners is refused (INC 1.x prunes only what they list)."""
    pruners = section.get("pruners") or []
    if not pruners:
        raise SourceError(f"{name} has no pruners: INC 1.x prunes only what its pruners list", plan.path, line)
    for index, item in enumerate(pruners):
        fields = item.value if isinstance(item, Tagged) else item
        own_lines = getattr(fields, "lines", {}) if isinstance(fields, Mapping) else {}  # a list's are per item
        origin = Origin(plan.path, line_of(pruners, index), f"pruners[{index}] (!Pruner)",
                        {**getattr(section, "lines", {}), **own_lines})
        if not isinstance(fields, Mapping):
            raise origin.error("a pruner is a mapping of its fields")
        unknown = sorted(set(fields) - _PRUNER_KEYS)
        if unknown:
            raise origin.error(f"unknown key(s) {unknown} for !Pruner: allowed {', '.join(sorted(_PRUNER_KEYS))}")
        yield fields, origin


def _v1_pytorch(section: Mapping[str, Any], plan: RecipePlan, line: int | None) -> None:
    """INC 1.x ``weight_compression_pytorch``: global keys, then each ``!Pruner``."""
    globals_ = {**_V1_DEFAULTS, **{k: v for k, v in section.items() if k != "pruners" and v is not None}}
    _warn_nulls(section, globals_, Origin(plan.path, line, "weight_compression_pytorch", getattr(section, "lines", {})),
                "INC's default")
    for fields, origin in _pruner_entries(section, "weight_compression_pytorch", plan, line):
        local = {**_V1_PRUNER_DEFAULTS, **{k: v for k, v in fields.items() if v is not None}}
        cfg = {k: local.get(k, globals_.get(k)) for k in _V1_DEFAULTS}
        _warn_nulls(fields, cfg, origin, "the global value or INC's default")
        excluded = [*_names(local.get("extra_excluded_names", globals_["extra_excluded_names"]),
                            "extra_excluded_names", origin),
                    *_names(globals_["excluded_names"], "excluded_names", origin)]
        v2 = {_V1_NAMES.get(k, k): v for k, v in cfg.items() if k not in ("extra_excluded_names", "excluded_names")}
        v2["excluded_op_names"] = excluded
        v2.update({"min_sparsity_ratio_per_op": 0.0, "criterion_reduce_type": "mean"})
        plan.groups.append(_group(v2, origin, v1=True))


def _v1_legacy(section: Mapping[str, Any], plan: RecipePlan, line: int | None) -> None:
    """INC 1.x ``weight_compression`` (epochs, exact parameter names)."""
    defaults = {"initial_sparsity": 0.0, "target_sparsity": 0.97, "start_epoch": 0, "end_epoch": 4,
                "update_frequency": 1.0, "names": []}
    globals_ = {**defaults, **{k: v for k, v in section.items() if k != "pruners" and v is not None}}
    for fields, origin in _pruner_entries(section, "weight_compression", plan, line):
        local = {**_V1_PRUNER_DEFAULTS, **fields}

        def value(key: str, local: Mapping[str, Any] = local) -> Any:
            return local[key] if local.get(key) else globals_.get(key)  # INC 1.x: a falsy local value falls through

        kind = str(local["prune_type"])
        if kind in _REFUSED_TYPES and kind not in ("group_lasso", "gradient_sensitivity"):
            raise _refuse(f"prune_type={kind!r}", _REFUSED_TYPES[kind], origin)
        if kind not in ("basic_magnitude", "pattern_lock", "group_lasso", "gradient_sensitivity"):
            raise origin.error(f"prune_type={kind!r} is invalid: INC 1.x's weight_compression has basic_magnitude, "
                               f"pattern_lock, group_lasso and gradient_sensitivity", key='prune_type')
        if local.get("method", "per_tensor") != "per_tensor":
            raise _refuse(f"method={local['method']!r}", "INC 1.x per-channel thresholds; use per_tensor", origin)
        if str(local["pattern"]).split("_")[-1] != "1x1":
            raise _refuse(f"pattern={local['pattern']!r} in weight_compression", "INC 1.x's legacy tile patterns; "
                          "use the 2.x config (pattern: '4x1', ...) for structured pruning", origin)
        structure = Structure()
        if kind == "gradient_sensitivity":
            start = _num(value("start_epoch") or 0, "start_epoch", origin)
            plan.groups.append(gradient_sensitivity_group(local, _names(value("names"), "names", origin), start,
                                                          origin))
            continue
        selection = IncWeights(_names(value("names"), "names", origin))
        if kind == "pattern_lock":
            plan.groups.append(PruningGroup(origin, "lock", [TargetRule(None, selection)], 0.0,
                                            Schedule("epoch", 0, 0, 1, "hold"), structure))
            continue
        target = _num(value("target_sparsity"), "target_sparsity", origin)
        initial = _num(value("initial_sparsity") or 0.0, "initial_sparsity", origin)
        if not 0.0 <= initial <= target < 1.0:
            raise origin.error(f"initial_sparsity={initial:g}, target_sparsity={target:g} are invalid: INC 1.x allows "
                               f"0 <= initial <= target < 1", key='initial_sparsity')
        start = _num(value("start_epoch") or 0, "start_epoch", origin)
        end = _num(value("end_epoch") or 0, "end_epoch", origin)
        frequency = _num(value("update_frequency"), "update_frequency", origin)
        if end < start or frequency <= 0:
            raise origin.error(f"start_epoch={start:g}, end_epoch={end:g}, update_frequency={frequency:g} are invalid: "
                               f"allowed start <= end, update_frequency > 0", key='start_epoch')
        notes = ["INC 1.x updates masks at the start of whole epochs: sparsity "
                 "init + (target - init)·(e - start + 1)/(end - start + 1) at epoch e"]
        if frequency < 1:
            notes.append(f"update_frequency={frequency:g} below one epoch: INC 1.x updates at epoch starts only")
        options = {"group_lasso": _group_lasso_alpha(local, origin)} if kind == "group_lasso" else {}
        plan.groups.append(PruningGroup(origin, "magnitude", [TargetRule(target, selection)], initial,
                                        Schedule("epoch", start, end, max(frequency, 1.0), "inc1"), structure,
                                        options=options, notes=notes))


def _group_lasso_alpha(local: Mapping[str, Any], origin: Origin) -> float:
    """INC 1.x ``GroupLassoPruner`` reads ``parameters['alpha']`` and nothing else of ``parameters``."""
    parameters = local.get("parameters")
    if not isinstance(parameters, Mapping) or "alpha" not in parameters:
        raise origin.error(f"prune_type='group_lasso' needs parameters: {{alpha: <number >= 0>}} (INC reads "
                           f"parameters['alpha']), got parameters={parameters!r}", key="parameters")
    alpha = _num(parameters["alpha"], "parameters.alpha", origin)
    if alpha < 0:
        raise origin.error(f"parameters.alpha={alpha:g} is invalid: allowed alpha >= 0", key="parameters")
    others = sorted(str(k) for k in parameters if k != "alpha")
    if others:
        logger.warning("%s: parameters %s are not read by INC 1.x's GroupLassoPruner (it reads alpha only); its "
                       "blocks are the pruner's own pattern %r, one weight each, as in INC", origin, others,
                       local["pattern"])
    return alpha


def read_inc_data(data: Any, path: str | None = None) -> RecipePlan:
    """A plan from a parsed INC config (a dict in any of the four forms of the module docstring)."""
    if not isinstance(data, Mapping):
        raise SourceError(f"an INC pruning config is a mapping, got {type(data).__name__}", path)
    if "pruning" in data:
        plan = RecipePlan(path, "inc")
        for key in data:
            if key in _NOT_APPLIED:
                plan.skip(_NOT_APPLIED[key], key, line_of(data, key))
            elif key not in ("pruning", *_METADATA):
                logger.warning("%s: top-level section %r is not an INC pruning section; ignored",
                               Origin(path, line_of(data, key), "INC config"), key)
        pruning = data["pruning"]
        if not isinstance(pruning, Mapping) or not isinstance(pruning.get("approach"), Mapping):
            raise SourceError("pruning: must hold an approach: mapping (weight_compression, weight_compression_pytorch "
                              "or weight_compression_v2)", path, line_of(data, "pruning"))
        for key in pruning:
            if key in _NOT_APPLIED:
                plan.skip(_NOT_APPLIED[key], f"pruning.{key}", line_of(pruning, key))
        approach = pruning["approach"]
        found = False
        for key, section in approach.items():
            line = line_of(approach, key)
            if not isinstance(section, Mapping):
                raise SourceError(f"pruning.approach.{key} must be a mapping", path, line)
            if key == "weight_compression":
                plan.format = "inc1"
                _v1_legacy(section, plan, line)
            elif key == "weight_compression_pytorch":
                plan.format = "inc1-pytorch"
                _v1_pytorch(section, plan, line)
            elif key == "weight_compression_v2":
                plan.format = "inc2"
                _v2_pruners(section, section.get("pruners") or [], plan, line)
            else:
                raise SourceError(f"pruning.approach.{key} is not an INC pruning approach (weight_compression, "
                                  f"weight_compression_pytorch, weight_compression_v2)", path, line)
            found = True
        if not found:
            raise SourceError("pruning.approach names no pruning approach", path, line_of(pruning, "approach"))
        return plan
    plan = RecipePlan(path, "inc2")
    locals_ = data.get("pruning_configs")
    if locals_ is not None and not isinstance(locals_, list):
        raise SourceError(f"pruning_configs={locals_!r} is invalid: expected a list of pruner dicts", path,
                          line_of(data, "pruning_configs"))
    _v2_pruners(data, locals_ or [], plan, getattr(data, "line", None))
    return plan


def read_inc_config(source: str | Path | IO[str] | Mapping[str, Any], *, max_bytes: int = DEFAULT_MAX_BYTES,
                    **limits: Unpack[YamlLimits]) -> RecipePlan:
    """Read an INC pruning config — a dict, or a YAML file path or stream — into a plan."""
    if isinstance(source, Mapping):
        return read_inc_data(source)
    name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", None)
    name = name if isinstance(name, str) else None
    loaded = load_yaml_text(read_text(source, max_bytes=max_bytes), name, **limits)
    if loaded.duplicates:
        logger.warning("%s: duplicate key(s) %s: the later value wins", name or "INC config",
                       ", ".join(sorted({k for k, _ in loaded.duplicates})))
    return read_inc_data(loaded.data, name)
