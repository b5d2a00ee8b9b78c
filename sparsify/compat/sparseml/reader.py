"""Read a SparseML recipe into a `sparsify.compat.plan.RecipePlan`, the way SparseML reads it.

Files: ``.yaml``, or Markdown recipe cards (front matter between ``---`` lines, or a ```` ```yaml ````
block), through `sparsify.safe_io` (size and alias limits, local tags as plain data). ``eval(...)``
variables are evaluated by `sparsify.compat.sparseml.expressions` (no Python ``eval``).

Modifier groups are the lists under keys containing ``modifiers`` (SparseML's rule), a tagged value at
the top level, or, in staged recipes (llm-compressor), the same inside each stage — where a group may
also be a mapping ``{ModifierName: {fields}}``.

What each modifier becomes (see ``docs/recipes.md`` for the full table):

* pruning — ``GMPruningModifier``, ``MagnitudePruningModifier``, ``GlobalMagnitudePruningModifier``
  (magnitude), ``MFACPruningModifier`` (M-FAC), ``OBSPruningModifier`` (oBERT: M-FAC on the empirical
  Fisher with the OBS update), ``ConstantPruningModifier`` (keep the zeros), ``SparseGPTModifier`` and
  ``WandaPruningModifier`` (one-shot, layer by layer) — a `PruningGroup`;
* ``LayerPruningModifier`` — a `LayerDrop`;
* training parts — epoch range, learning rate, weight decay, distillation, quantization, trainable
  parameters — named in one warning per kind, not applied;
* anything else (``MovementPruningModifier``, ``RigLPruningModifier``, ...) — `UnsupportedFeatureError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from ...safe_io import (
    DEFAULT_MAX_BYTES,
    SourceError,
    Tagged,
    YamlMap,
    line_of,
    load_yaml_text,
    read_text,
    yaml_from_markdown,
)
from ..plan import (
    LayerDrop,
    Origin,
    PruningGroup,
    RecipePlan,
    Schedule,
    SparseMLParams,
    Structure,
    TargetRule,
    UnsupportedFeatureError,
)
from .acdc import ACDC_TAG, acdc_group
from .cards import one_yaml_block
from .expressions import evaluate_recipe, override_variables
from .fields import check_keys as _check_keys
from .fields import fraction as _fraction
from .fields import number as _number
from .fields import structure as _structure
from .fields import tokens as _tokens
from .selection import LayerTargets

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ...safe_io import YamlLimits

__all__ = ["read_recipe", "read_recipe_data", "read_recipe_text", "recipe_text_to_yaml"]

logger = logging.getLogger(__name__)

NOT_APPLIED: dict[str, str] = {
    "EpochRangeModifier": "training length",
    "SetLearningRateModifier": "learning rate",
    "LearningRateModifier": "learning rate",
    "LearningRateFunctionModifier": "learning rate",
    "SetWeightDecayModifier": "weight decay",
    "DistillationModifier": "distillation",
    "KnowledgeDistillationModifier": "distillation",
    "OutputDistillationModifier": "distillation",
    "PerLayerDistillationModifier": "distillation",
    "QuantizationModifier": "quantization",
    "GPTQModifier": "quantization",
    "SmoothQuantModifier": "quantization",
    "LogarithmicEqualizationModifier": "quantization",
    "vLLMQuantizationModifier": "quantization",
    "TrainableParamsModifier": "trainable parameters",
}
REFUSED: dict[str, str] = {
    "MovementPruningModifier": "movement scores (-w·g accumulated over training) are not a sparsify criterion",
    "RigLPruningModifier": "RigL regrows weights by gradient during training",
    "TopKASTPruningModifier": "Top-KAST keeps separate forward and backward masks",
    "PowerpropagationModifier": "powerpropagation re-parametrises the weights",
    "StructuredPruningModifier": "structured pruning with physical thinning of layers",
    "ThinningModifier": "physical thinning of layers",
}
_V1_PRUNING = ("GMPruningModifier", "MagnitudePruningModifier", "GlobalMagnitudePruningModifier",
               "MFACPruningModifier", "OBSPruningModifier")
_CURVES = ("cubic", "linear", "inverse_cubic")
_COMMON = {"params", "start_epoch", "end_epoch", "update_frequency", "leave_enabled", "log_types"}
_GRADUAL = {*_COMMON, "init_sparsity", "final_sparsity", "inter_func", "mask_type", "global_sparsity"}
_GM_OLD = {"phased", "score_type"}
_MFAC = {"num_grads", "damp", "fisher_block_size", "available_devices", "available_gpus", "grads_device",
         "num_pages", "use_gradient_buffering", "grad_sampler_kwargs", "mfac_options",
         # sparsify's own M-FAC settings, accepted in a recipe
         "damp_mode", "obs_update", "num_recomputations", "memory_budget"}
_OBS = {"num_grads", "damp", "fisher_block_size", "grad_sampler_kwargs", "num_recomputations"}


def _schedule(fields: Mapping[str, Any], origin: Origin, curve: str) -> Schedule:
    start = _number(fields.get("start_epoch", -1.0), "start_epoch", origin)
    end = _number(fields.get("end_epoch", -1.0), "end_epoch", origin)
    frequency = _number(fields.get("update_frequency", -1.0), "update_frequency", origin)
    start = max(start, 0.0)
    if end < 0:
        end = start
    if end < start:
        raise origin.error(f"end_epoch={end:g} is invalid: allowed end_epoch >= start_epoch ({start:g})")
    if end > start:
        if frequency <= 0:
            raise origin.error(f"update_frequency={frequency:g} is invalid: allowed > 0 when end_epoch > start_epoch")
        if (end - start) / frequency > 1e6:
            raise origin.error(f"update_frequency={frequency:g} over epochs {start:g}-{end:g} asks for more than a "
                               f"million mask updates")
    return Schedule("epoch", start, end, frequency if frequency > 0 else 1.0, curve if end > start else "oneshot")


def _devices(value: Any, origin: Origin) -> list[str]:
    devices = list(_tokens(value, "available_devices", origin))
    if any(d.startswith("cuda") for d in devices) and not torch.cuda.is_available():
        logger.warning("%s: available_devices=%s but CUDA is not available: M-FAC runs on the CPU", origin, devices)
        return ["cpu"]
    return devices


def _gradual(tag: str, fields: Mapping[str, Any], origin: Origin) -> PruningGroup:
    """A v1 gradual pruning modifier (magnitude, M-FAC, OBS) as a group."""
    fields = dict(fields)
    if tag == "MFACPruningModifier" and isinstance(fields.get("mfac_options"), Mapping):
        fields.update(fields.pop("mfac_options"))
    allowed = set(_GRADUAL) | (_GM_OLD if tag == "GMPruningModifier" else set())
    allowed |= _MFAC if tag == "MFACPruningModifier" else _OBS if tag == "OBSPruningModifier" else set()
    _check_keys(fields, allowed, tag, origin)
    if fields.get("phased", False):
        raise UnsupportedFeatureError("phased pruning (GMPruningModifier phased: true)", "AC/DC-style phases",
                                      origin.path, origin.line)
    if fields.get("score_type", "magnitude") != "magnitude":
        raise UnsupportedFeatureError(f"score_type={fields['score_type']!r}", "only magnitude scores", origin.path,
                                      origin.line)
    if fields.get("leave_enabled", True) is not True:
        raise UnsupportedFeatureError("leave_enabled: false", "masks removed at end_epoch let pruned weights grow "
                                      "back; sparsify keeps every mask until finalize()", origin.path, origin.line)
    if tag == "GlobalMagnitudePruningModifier":
        global_sparsity = True
    elif tag == "MagnitudePruningModifier":
        global_sparsity = False
    else:
        global_sparsity = fields.get("global_sparsity", tag == "OBSPruningModifier")
        if not isinstance(global_sparsity, bool):
            raise origin.error(f"global_sparsity={global_sparsity!r} is invalid: expected true or false")
    inter = fields.get("inter_func", "cubic")
    if inter not in _CURVES:
        raise origin.error(f"inter_func={inter!r} is invalid: allowed {', '.join(_CURVES)}")
    structure, fixed = _structure(fields.get("mask_type", "unstructured"), origin, global_sparsity)
    if tag == "OBSPruningModifier" and fields.get("mask_type", "unstructured") not in ("unstructured", "block4"):
        raise origin.error(f"mask_type={fields['mask_type']!r} is invalid for OBSPruningModifier: allowed "
                           f"'unstructured' or 'block4'")
    if structure.kind == "n_m":
        global_sparsity = False
    init = fields.get("init_sparsity", 0.0)
    if init == "__FROM_PARAM__":
        raise UnsupportedFeatureError("init_sparsity: __FROM_PARAM__", "give the starting sparsity as a number",
                                      origin.path, origin.line)
    initial = _fraction(init, "init_sparsity", origin)
    params = fields.get("params")
    final = fields.get("final_sparsity", 0.0)
    targets: list[TargetRule] = []
    if isinstance(final, Mapping):
        if params not in (None, []):
            raise origin.error("with final_sparsity given per parameter ({sparsity: [params]}), params must be []")
        if global_sparsity:
            raise origin.error("global_sparsity needs one final_sparsity for all its parameters (SparseML's rule)")
        for level, names in final.items():
            targets.append(TargetRule(_fraction(level, "final_sparsity", origin),
                                      SparseMLParams(_tokens(names, f"final_sparsity[{level}]", origin))))
    else:
        if params in (None, []):
            raise origin.error("params is required: __ALL_PRUNABLE__, parameter names or 're:<regex>' entries")
        targets.append(TargetRule(_fraction(final, "final_sparsity", origin),
                                  SparseMLParams(_tokens(params, "params", origin))))
    notes = []
    if fixed is not None:
        for rule in targets:
            assert rule.sparsity is not None  # each came from a final_sparsity above
            if abs(rule.sparsity - fixed) > 1e-2:
                raise origin.error(f"final_sparsity={rule.sparsity:g} with mask_type={fields['mask_type']!r}: "
                                   f"SparseML's N:M requires the sparsity of the pattern, {fixed:g} (within 0.01)")
        targets = [TargetRule(fixed, rule.selection) for rule in targets]
    method, options = "magnitude", {}
    if tag == "MFACPruningModifier":
        method = "mfac"
        options = _mfac_options(fields, origin)
    elif tag == "OBSPruningModifier":
        method = "mfac"
        options = {"num_grads": _number(fields.get("num_grads", 1024), "num_grads", origin, integer=True),
                   "damp": _number(fields.get("damp", 1e-7), "damp", origin), "damp_mode": "absolute",
                   "fisher_block_size": _number(fields.get("fisher_block_size", 1), "fisher_block_size", origin,
                                                integer=True),
                   "num_recomputations": _number(fields.get("num_recomputations", 1), "num_recomputations", origin,
                                                 integer=True),
                   "obs_update": True}
        if isinstance(fields.get("grad_sampler_kwargs"), Mapping):
            options["grad_sampler_kwargs"] = dict(fields["grad_sampler_kwargs"])
        notes.append("OBSPruningModifier (oBERT) runs as M-FAC on the empirical Fisher (blocks of "
                     f"{options['fisher_block_size']}, absolute damp {options['damp']:g}) with the OBS weight update"
                     + ("; a 1x4 block is scored by the mean of its weights' OBS scores, as SparseML's M-FAC "
                        "modifier scores block4" if structure.kind == "tile" else ""))
    return PruningGroup(origin, method, targets, initial, _schedule(fields, origin, inter), structure,
                        "global" if global_sparsity else "local", options=options, notes=notes)


def _mfac_options(fields: Mapping[str, Any], origin: Origin) -> dict[str, Any]:
    options: dict[str, Any] = {}
    grads = fields.get("num_grads", 64)
    if isinstance(grads, Mapping):
        options["num_grads"] = {_fraction(k, "num_grads", origin): _number(v, "num_grads", origin, integer=True)
                                for k, v in grads.items()}
    else:
        options["num_grads"] = _number(grads, "num_grads", origin, integer=True)
    if "damp" in fields:
        options["damp"] = _number(fields["damp"], "damp", origin)
    if fields.get("fisher_block_size", 2000) is None:
        options["fisher_block_size"] = None
    else:
        options["fisher_block_size"] = _number(fields.get("fisher_block_size", 2000), "fisher_block_size", origin,
                                               integer=True)
    devices = fields.get("available_devices", fields.get("available_gpus"))
    if devices is not None:
        options["devices"] = _devices(devices, origin)
    if "grads_device" in fields:
        options["grads_device"] = str(fields["grads_device"])
    for key in ("damp_mode", "obs_update", "num_recomputations", "memory_budget"):
        if key in fields:
            options[key] = fields[key]
    for key in ("num_pages", "use_gradient_buffering"):
        if key in fields:
            logger.info("%s: %s=%r is a SparseML memory setting with no meaning in sparsify", origin, key, fields[key])
    if isinstance(fields.get("grad_sampler_kwargs"), Mapping):
        options["grad_sampler_kwargs"] = dict(fields["grad_sampler_kwargs"])
    return options


def _constant(fields: Mapping[str, Any], origin: Origin, *, v2: bool) -> PruningGroup:
    allowed = {"targets", "start", "end", "update", "ignore"} if v2 else {*_COMMON}
    _check_keys(fields, allowed, "ConstantPruningModifier", origin)
    if v2:
        selection: Any = SparseMLParams(_tokens(fields.get("targets", "__ALL_PRUNABLE__"), "targets", origin))
        start = _number(fields.get("start", 0), "start", origin)
    else:
        selection = SparseMLParams(_tokens(fields.get("params", "__ALL_PRUNABLE__"), "params", origin))
        start = max(_number(fields.get("start_epoch", -1), "start_epoch", origin), 0.0)
    return PruningGroup(origin, "lock", [TargetRule(None, selection)], 0.0, Schedule("epoch", start, start, 1.0,
                                                                                      "hold"))


def _one_shot_llm(name: str, fields: Mapping[str, Any], origin: Origin) -> PruningGroup:
    """``SparseGPTModifier`` / ``WandaPruningModifier`` (llm-compressor, SparseML v2)."""
    allowed = {"sparsity", "mask_structure", "sequential_update", "targets", "ignore", "block_size",
               "dampening_frac", "percdamp", "preserve_sparsity_mask", "sparsity_profile", "owl_m", "owl_lmbda",
               "quantize"}
    _check_keys(fields, allowed, name, origin)
    if fields.get("sparsity_profile") is not None:
        raise UnsupportedFeatureError(f"{name} sparsity_profile={fields['sparsity_profile']!r} (OWL)",
                                      "per-layer sparsities from activation outliers", origin.path, origin.line)
    if fields.get("quantize"):
        raise UnsupportedFeatureError(f"{name} quantize: true", "sparsify does not quantize", origin.path,
                                      origin.line)
    sparsity = fields.get("sparsity", 0.0)
    if isinstance(sparsity, list):
        raise UnsupportedFeatureError(f"{name} with a list of per-layer sparsities", "give one sparsity",
                                      origin.path, origin.line)
    target = _fraction(sparsity, "sparsity", origin)
    structure_text = str(fields.get("mask_structure", "0:0"))
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", structure_text)
    if match is None:
        raise origin.error(f"mask_structure={structure_text!r} is invalid: expected 'N:M' ('0:0' = unstructured)")
    pruned, size = int(match.group(1)), int(match.group(2))
    structure = Structure()
    if pruned:
        if not 0 < pruned < size:
            raise origin.error(f"mask_structure={structure_text!r} is invalid: N pruned of every M, 0 < N < M")
        structure = Structure("n_m", n_m=(pruned, size), indivisible="error")
        target = pruned / size
    damp = fields.get("dampening_frac", fields.get("percdamp", 0.01))
    options: dict[str, Any] = {"damp": _number(damp, "dampening_frac", origin)}
    if "block_size" in fields:
        options["block_size"] = _number(fields["block_size"], "block_size", origin, integer=True)
    if fields.get("sequential_update") is not None:  # True: each layer on the outputs of the ones pruned before it
        if not isinstance(fields["sequential_update"], bool):
            raise origin.error(f"sequential_update={fields['sequential_update']!r} is invalid: expected true or false")
        options["sequential"] = fields["sequential_update"]
    targets = fields.get("targets")
    ignore = _tokens(fields.get("ignore", []), "ignore", origin)
    selection = LayerTargets(_tokens(targets, "targets", origin) if targets is not None else (), ignore)
    method = "sparsegpt" if name == "SparseGPTModifier" else "wanda"
    return PruningGroup(origin, method, [TargetRule(target, selection)], 0.0, Schedule("step", 0, 0, 1, "oneshot"),
                        structure, "local", options=options)


def _modifiers(container: Mapping[str, Any], path: str | None, prefix: str = "") -> list[tuple[str, Any, int | None]]:
    """``(tag, fields, line)`` of every modifier of a recipe (or stage), SparseML's placement rules."""
    found: list[tuple[str, Any, int | None]] = []
    for key, value in container.items():
        line = line_of(container, key)
        if isinstance(value, Tagged):
            found.append((value.tag, value.value, value.line))
        elif isinstance(key, str) and "modifiers" in key:
            if isinstance(value, list):
                for index, item in enumerate(value):
                    if not isinstance(item, Tagged):
                        raise SourceError(f"{prefix}{key}[{index}] is not a modifier (expected '- !ModifierName')",
                                          path, line_of(value, index) or line)
                    found.append((item.tag, item.value, item.line))
            elif isinstance(value, Mapping):  # v2: {ModifierName: {fields}}
                for name, fields in value.items():
                    found.append((str(name), fields if fields is not None else {}, line_of(value, name) or line))
            else:
                raise SourceError(f"{prefix}{key} must hold a list of modifiers", path, line)
        elif isinstance(value, list) and any(isinstance(item, Tagged) for item in value):
            raise SourceError(f"{prefix}{key} holds modifiers but its name does not contain 'modifiers' (SparseML's "
                              f"rule for modifier groups)", path, line)
    return found


def read_recipe_data(data: Any, path: str | None = None, variables: Mapping[str, Any] | None = None, *,
                     duplicates: list[tuple[str, int]] | None = None) -> RecipePlan:
    """A plan from parsed recipe data (see `read_recipe`); ``variables`` override the recipe's own."""
    if duplicates:
        _warn_duplicates(duplicates, path)
    if data is None:
        raise SourceError("the recipe is empty: a recipe lists its modifiers under keys containing 'modifiers'", path)
    if isinstance(data, Tagged):
        data = {"modifiers": [data]}
    elif isinstance(data, list):
        data = {"modifiers": data}
    if not isinstance(data, Mapping):
        raise SourceError(f"a recipe is a mapping of variables and modifier lists, got {type(data).__name__}", path)
    if variables:
        lines = getattr(data, "lines", {})
        data = override_variables(data, variables, path)
        overridden = YamlMap(data)
        overridden.lines = dict(lines)
        data = overridden
    data = evaluate_recipe(data, path)
    staged = not any(isinstance(k, str) and "modifiers" in k for k in data) and any(
        isinstance(v, Mapping) and any(isinstance(k, str) and "modifiers" in k for k in v) for v in data.values())
    plan = RecipePlan(path, "sparseml-staged" if staged else "sparseml")
    entries: list[tuple[str, Any, int | None, str]] = []
    if staged:
        for stage, value in data.items():
            if isinstance(value, Mapping) and any(isinstance(k, str) and "modifiers" in k for k in value):
                entries += [(tag, fields, line, f"{stage}: ") for tag, fields, line in
                            _modifiers(value, path, f"{stage}.")]
    else:
        entries = [(tag, fields, line, "") for tag, fields, line in _modifiers(data, path)]
    if not entries:
        raise SourceError("the recipe has no modifiers (SparseML reads them from lists under keys containing "
                          "'modifiers')", path)
    for index, (tag, fields, line, stage) in enumerate(entries):
        origin = Origin(path, line, f"{stage}modifier {index} ({tag})")
        if not isinstance(fields, Mapping):
            raise origin.error("expected a mapping of the modifier's fields")
        if tag in NOT_APPLIED:
            plan.skip(NOT_APPLIED[tag], tag, line)
        elif tag in _V1_PRUNING:
            plan.groups.append(_gradual(tag, fields, origin))
        elif tag == "ConstantPruningModifier":
            plan.groups.append(_constant(fields, origin, v2=staged))
        elif tag == ACDC_TAG:
            plan.groups.append(acdc_group(fields, origin))
        elif tag in ("SparseGPTModifier", "WandaPruningModifier"):
            plan.groups.append(_one_shot_llm(tag, fields, origin))
        elif tag == "LayerPruningModifier":
            _check_keys(fields, {"layers", "start_epoch", "end_epoch", "update_frequency"}, tag, origin)
            if _number(fields.get("end_epoch", -1), "end_epoch", origin) >= 0:
                raise UnsupportedFeatureError("LayerPruningModifier with end_epoch", "the layers would come back at "
                                              "end_epoch", path, line)
            plan.layer_drops.append(LayerDrop(origin, _tokens(fields.get("layers"), "layers", origin)))
        elif tag in REFUSED:
            raise UnsupportedFeatureError(tag, REFUSED[tag], path, line)
        else:
            raise UnsupportedFeatureError(
                tag, "not a modifier sparsify knows; pruning modifiers are "
                f"{', '.join((*_V1_PRUNING, ACDC_TAG, 'ConstantPruningModifier', 'SparseGPTModifier'))}, "
                "LayerPruningModifier",
                path, line)
    if not plan.groups and not plan.layer_drops:
        raise SourceError(f"the recipe has no pruning modifier (it has only {', '.join(sorted(plan.not_applied))} "
                          f"parts, which sparsify does not apply)", path)
    return plan


def read_recipe(
    source: str | Path | IO[str], *, max_bytes: int = DEFAULT_MAX_BYTES, **limits: Unpack[YamlLimits]
) -> RecipePlan:
    """Read a recipe file (``.yaml``, ``.md``) or stream into a plan.

    ``max_bytes`` and ``limits`` (``max_nodes``, ``max_depth``) are `sparsify.safe_io`'s. Text of
    unknown type (a stream, a path without ``.md`` / ``.yaml``) with two ``---`` lines is read from its
    front matter, as SparseML reads it.
    """
    name = str(source) if isinstance(source, (str, Path)) else getattr(source, "name", None)
    name = name if isinstance(name, str) else None
    return read_recipe_text(read_text(source, max_bytes=max_bytes), name, **limits)


def recipe_text_to_yaml(text: str, name: str | None = None) -> str:
    """The YAML of recipe text: a Markdown card's front matter or ```yaml block; text of unknown type with two
    ``---`` lines is read from its front matter, as SparseML reads it."""
    lowered = (name or "").lower()
    if lowered.endswith((".md", ".markdown")):
        one_yaml_block(text, name)
        return yaml_from_markdown(text, name)
    if not lowered.endswith((".yaml", ".yml")) and sum(line.strip() == "---" for line in text.splitlines()) >= 2:
        return yaml_from_markdown(text, name, require=False)
    return text


def read_recipe_text(text: str, name: str | None = None, **limits: Unpack[YamlLimits]) -> RecipePlan:
    """Read recipe text (YAML, or Markdown with front matter / a ```yaml block); ``name`` is for messages."""
    loaded = load_yaml_text(recipe_text_to_yaml(text, name), name, **limits)
    return read_recipe_data(loaded.data, name, duplicates=loaded.duplicates)


def _warn_duplicates(duplicates: list[tuple[str, int]], path: str | None) -> None:
    if duplicates:
        keys = sorted({k for k, _ in duplicates})
        logger.warning("%s: %d duplicate key(s) (%s, first at line %d): the later value wins, as in SparseML",
                       path or "recipe", len(duplicates), ", ".join(keys), duplicates[0][1])

