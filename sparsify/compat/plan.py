"""What a SparseML recipe or an INC config asks for, normalized: one `RecipePlan` per file.

Both readers (`sparsify.compat.sparseml`, `sparsify.compat.inc`) turn a file into the same plan
before any model is touched:

* `PruningGroup` — one pruning entry of the file (a pruning modifier, an INC pruner): which weights
  (`Selection`), the sparsity each ends at, the starting sparsity, the schedule (`Schedule`, in
  epochs or steps), the structure (unstructured, tiles such as ``"1x4"``, n:m), the criterion and
  its settings, local or global ranking, per-layer caps, and translation notes;
* `RecipePlan.not_applied` — the parts that are not pruning (distillation, quantization, learning
  rate, ...), reported in **one logging warning per kind** by `RecipePlan.warn_not_applied`;
* `LayerDrop` — SparseML's ``LayerPruningModifier`` (whole layers replaced by a pass-through).

A feature sparsify cannot do is never part of a plan: the reader raises `UnsupportedFeatureError`
naming the feature, the file and the line, before any work.

`RecipePlan.resolve` applies the selections to a model and returns, per group, the sparsity every
selected module ends at (`ResolvedGroup`) — the dry run that the corpus tests check against what the
peer's documented rules give, and what the translation to `sparsify.PrunerConfig` consumes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

import attrs
import torch
from torch import nn

from ..config import SUPPORTED_MODULES
from ..safe_io import SourceError, where

__all__ = [
    "IncOps",
    "IncWeights",
    "LayerDrop",
    "Origin",
    "PruningGroup",
    "RecipePlan",
    "ResolvedGroup",
    "Schedule",
    "Selection",
    "SparseMLParams",
    "Structure",
    "TargetRule",
    "UnsupportedFeatureError",
]

logger = logging.getLogger(__name__)

#: Module classes whose ``weight`` SparseML's ``__ALL_PRUNABLE__`` selects: Core ML Tools' module types
#: (`sparsify.config.SUPPORTED_MODULES`, the same tuple)
PRUNABLE_TYPES = SUPPORTED_MODULES


@attrs.frozen
class Origin:
    """Where a plan entry comes from: file, 1-based line, and the entry (``"modifier 3 (!GMPruningModifier)"``)."""

    path: str | None
    line: int | None
    entry: str
    keys: Mapping[Any, int] = attrs.field(factory=dict, eq=False, repr=False)

    def __str__(self) -> str:
        return f"{where(self.path, self.line)}{self.entry}"

    def at(self, key: str | None) -> int | None:
        """The line of ``key`` in this entry (the entry's own line when unknown)."""
        return self.keys.get(key, self.line) if key is not None else self.line

    def error(self, reason: str, key: str | None = None) -> SourceError:
        """A `SourceError` at this entry (at the line of ``key`` when given)."""
        return SourceError(f"{self.entry}: {reason}", self.path, self.at(key))


class UnsupportedFeatureError(SourceError):
    """A peer feature sparsify cannot do; ``feature`` names it. Raised before any work."""

    def __init__(self, feature: str, reason: str, path: str | None = None, line: int | None = None) -> None:
        self.feature = feature
        super().__init__(f"{feature} is not supported: {reason}", path, line)


# ----------------------------------------------------------------------------------------------
# Selections
# ----------------------------------------------------------------------------------------------


def _weights(model: nn.Module) -> dict[str, tuple[str, nn.Module, str]]:
    """``{full parameter name: (module name, module, parameter name)}`` for every direct parameter."""
    found = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            found[full] = (module_name, module, param_name)
    return found


def _prunable(module: nn.Module, param_name: str) -> bool:
    return param_name == "weight" and isinstance(module, PRUNABLE_TYPES)


class Selection:
    """Which weights a group prunes; `select` returns module names in model order."""

    def select(self, model: nn.Module, origin: Origin) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@attrs.frozen
class SparseMLParams(Selection):
    """SparseML's ``params``: ``__ALL_PRUNABLE__``, exact parameter names, ``re:<regex>`` (``re.match``).

    As in SparseML every entry must match some parameter. ``__ALL_PRUNABLE__`` takes the weights of
    Linear, Conv and ``Embedding`` layers, as SparseML does. Matches sparsify cannot prune (a norm layer's
    weight, a bias) are left out with one warning per group.
    """

    tokens: tuple[str, ...]

    def describe(self) -> str:
        return ", ".join(self.tokens)

    def select(self, model: nn.Module, origin: Origin) -> list[str]:
        params = _weights(model)
        chosen: set[str] = set()
        for token in self.tokens:
            if token == "__ALL_PRUNABLE__":
                hits = [p for p, (_, module, name) in params.items()
                        if name == "weight" and isinstance(module, (*PRUNABLE_TYPES, nn.Embedding))]
            elif token == "__ALL__":
                hits = list(params)
            elif token.startswith("re:"):
                try:
                    pattern = re.compile(token[3:])
                except re.error as exc:
                    raise origin.error(f"params entry {token!r} is not a valid regular expression ({exc})") from exc
                hits = [p for p in params if pattern.match(p)]
            else:
                hits = [token] if token in params else []
            if not hits:
                raise origin.error(
                    f"params entry {token!r} matches no parameter of the model (SparseML requires every entry to "
                    f"match; 're:' entries use re.match, anchored at the start)")
            chosen.update(hits)
        return _keep_prunable([p for p in params if p in chosen], params, origin)


def _keep_prunable(names: list[str], params: Mapping[str, tuple[str, nn.Module, str]], origin: Origin) -> list[str]:
    """The module names of the selected Linear / Conv / Embedding weights; any other parameter (a norm
    layer's weight a loose regex caught, a bias) stays dense, with one warning."""
    kept: list[str] = []
    left: list[str] = []
    for full in names:
        _, module, param_name = params[full]
        prunable = _prunable(module, param_name) or (isinstance(module, nn.Embedding) and param_name == "weight")
        (kept if prunable else left).append(full)
    if left:
        kinds = sorted({type(params[p][1]).__name__ + "." + params[p][2] for p in left})
        logger.warning(
            "%s: %d selected parameter(s) are not Linear/Conv/Embedding weights and stay dense (%s; e.g. %s): "
            "sparsify prunes the weights of Linear, Conv1d/2d/3d and Embedding layers", origin, len(left),
            ", ".join(kinds), ", ".join(left[:3]))
    return [params[p][0] for p in kept]


@attrs.frozen
class IncOps(Selection):
    """INC's layer selection: ``op_names`` matched with ``re.search``, the layer type, the exclusions.

    ``type_match="substring"`` is INC 2.x (``"Conv"`` in the class name, the layer has a ``weight``),
    ``"exact"`` the 1.x PyTorch pruner (the class name is in the list). ``drop_classifier_head``: INC
    2.x leaves out the model's last module when it is a ``Linear`` or ``Conv2d`` (Dropout skipped).
    """

    op_names: tuple[str, ...]
    op_types: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    type_match: str = "substring"
    drop_classifier_head: bool = True

    def describe(self) -> str:
        out = f"op_names {list(self.op_names) or ['.*']}, types {list(self.op_types)}"
        return out + (f", excluding {list(self.excluded)}" if self.excluded else "")

    def select(self, model: nn.Module, origin: Origin) -> list[str]:
        patterns = []
        for text in (*self.op_names, *self.excluded):
            try:
                patterns.append(re.compile(text))
            except re.error as exc:
                raise origin.error(f"{text!r} is not a valid regular expression ({exc})") from exc
        names = patterns[: len(self.op_names)] or [re.compile(".*")]
        excluded = patterns[len(self.op_names):]
        head = classifier_head(model) if self.drop_classifier_head else None
        chosen: list[str] = []
        skipped_types: set[str] = set()
        for name, module in model.named_modules():
            if not any(p.search(name) for p in names) or name == head or any(p.search(name) for p in excluded):
                continue
            type_name = type(module).__name__
            if self.type_match == "exact":
                wanted = type_name in self.op_types
            else:
                wanted = any(t in type_name for t in self.op_types) and hasattr(module, "weight")
            if not wanted:
                continue
            if _prunable(module, "weight") and isinstance(getattr(module, "weight", None), nn.Parameter):
                chosen.append(name)
            else:
                skipped_types.add(type_name)
        if skipped_types:
            logger.warning("%s: matching layers of type %s stay dense: sparsify prunes Linear and Conv1d/2d/3d "
                           "weights", origin, ", ".join(sorted(skipped_types)))
        if not chosen:
            logger.warning("%s: selects no layer of this model (%s); INC warns and prunes nothing for it",
                           origin, self.describe())
        return chosen


def classifier_head(model: nn.Module) -> str | None:
    """INC's ``ClassifierHeadSearcher``: the last module (Dropout skipped), if it is a Linear or Conv2d."""
    names = [(n, type(m).__name__) for n, m in model.named_modules() if type(m).__name__ != "Dropout"]
    layers = [n for n, t in names if t in ("Linear", "Conv2d")]
    if layers and names and layers[-1] == names[-1][0]:
        return layers[-1]
    return None


@attrs.frozen
class IncWeights(Selection):
    """INC 1.x ``weight_compression``: exact parameter names (``names``), or every 2-D and 4-D parameter."""

    names: tuple[str, ...] = ()

    def describe(self) -> str:
        return ", ".join(self.names) if self.names else "every 2-D and 4-D parameter"

    def select(self, model: nn.Module, origin: Origin) -> list[str]:
        params = _weights(model)
        if any("*" in n for n in self.names):  # gradient_sensitivity: '*' is the layer index, matched at the start
            wanted = []
            for text in self.names:
                pattern = re.compile(text.replace("*", r"(\d+)"))
                hits = [p for p in params if pattern.match(p)]
                if not hits:
                    raise origin.error(f"names entry {text!r} matches no parameter of the model ('*' is a layer "
                                       f"index; INC matches the name at its start)")
                wanted += [p for p in hits if p not in wanted]
        elif self.names:
            missing = [n for n in self.names if n not in params]
            if missing:
                raise origin.error(f"names {missing} are not parameters of the model (INC 1.x reads exact names)")
            wanted = list(dict.fromkeys(self.names))
        else:
            wanted = [p for p, (_, module, name) in params.items()
                      if getattr(module, name).dim() in (2, 4)]
        order = {p: i for i, p in enumerate(params)}
        return _keep_prunable(sorted(wanted, key=order.__getitem__), params, origin)


# ----------------------------------------------------------------------------------------------
# Groups
# ----------------------------------------------------------------------------------------------


@attrs.frozen
class Schedule:
    """When a group prunes. ``unit``: ``"epoch"`` (SparseML, INC 1.x) or ``"step"`` (INC 2.x).

    ``curve``: SparseML ``"cubic"`` / ``"linear"`` / ``"inverse_cubic"`` (fraction ``1 − (1 − p)³``,
    ``p``, ``1 − (1 − p)^⅓`` of the way from init to final); INC ``"exp"`` / ``"cos"`` / ``"linear"``
    / ``"cube"``; INC 1.x ``"inc1"`` (linear, the first step already ``1/n`` of the way);
    ``"oneshot"`` (the final sparsity at ``start``); ``"hold"`` (no change: lock existing zeros).
    """

    unit: str
    start: float
    end: float
    frequency: float
    curve: str

    def describe(self) -> str:
        if self.curve == "oneshot" or self.end <= self.start:
            return f"at {self.unit} {self.start:g}"
        return f"{self.unit}s {self.start:g}-{self.end:g} every {self.frequency:g}, {self.curve}"


@attrs.frozen
class Structure:
    """How zeros are grouped: ``"unstructured"``, a tile (``"1x4"``, ``"4x1"``, ``"channelx1"``: output x
    input channels, sparsify/INC notation) or n:m (``n`` zeros of every ``m`` along input channels).

    ``indivisible``: what a layer the structure does not divide gets — ``"skip"`` (INC: left dense,
    with a warning) or ``"error"`` (SparseML ``[a, b]`` blocks raise).
    """

    kind: str = "unstructured"
    tile: str | None = None
    n_m: tuple[int, int] | None = None
    indivisible: str = "error"

    def describe(self) -> str:
        if self.kind == "tile":
            return f"{self.tile} tiles"
        if self.kind == "n_m":
            assert self.n_m is not None
            return f"{self.n_m[0]}:{self.n_m[1]} (zeros of every {self.n_m[1]})"
        return "unstructured"

    def divides(self, shape: tuple[int, ...]) -> bool:
        """Whether the structure fits a weight of this shape (INC's rule: the weight as ``[Co, K·Ci]``)."""
        if self.kind == "unstructured" or len(shape) < 2:
            return self.kind == "unstructured"
        rows, cols = shape[0], 1
        for size in shape[1:]:
            cols *= size
        if self.kind == "n_m":
            assert self.n_m is not None
            return cols % self.n_m[1] == 0
        assert self.tile is not None
        out, inp = self.tile.split("x")
        return (out == "channel" or rows % int(out) == 0) and (inp == "channel" or cols % int(inp) == 0)


@attrs.frozen
class TargetRule:
    """The sparsity that the weights of ``selection`` end at (SparseML's per-parameter ``final_sparsity``).

    ``None``: the weights keep the zeros they have (``ConstantPruningModifier``, INC ``pattern_lock``).
    """

    sparsity: float | None
    selection: Selection


@attrs.define
class PruningGroup:
    """One pruning entry of a file, normalized (see the module docstring)."""

    origin: Origin
    method: str
    targets: list[TargetRule]
    initial: float
    schedule: Schedule
    structure: Structure = attrs.field(factory=Structure)
    scope: str = "local"
    min_sparsity: float = 0.0
    max_sparsity: float = 1.0
    options: dict[str, Any] = attrs.field(factory=dict)
    notes: list[str] = attrs.field(factory=list)

    def level_for(self, sparsity: float | None, shape: tuple[int, ...]) -> float | None:
        """The final sparsity of a weight of ``shape``: the rule's, or for a group that keeps a number of units
        (INC's gradient sensitivity: ``keep_units`` of ``stride`` rows, or columns) what that leaves."""
        keep = self.options.get("keep_units")
        if keep is None or len(shape) < 2:
            return sparsity
        size = shape[1] if self.options.get("transpose") else shape[0]
        units = size // int(self.options["stride"])
        return 1.0 - min(int(keep), units) / units if units else 0.0

    def describe(self) -> str:
        rules = "; ".join(f"{'its zeros' if r.sparsity is None else format(r.sparsity, 'g')} on "
                          f"{r.selection.describe()}" for r in self.targets)
        return (f"{self.origin}: {self.method}, {rules}, from {self.initial:g}, {self.schedule.describe()}, "
                f"{self.structure.describe()}, {self.scope}")


@attrs.frozen
class LayerDrop:
    """SparseML's ``LayerPruningModifier``: these layers become a pass-through."""

    origin: Origin
    layers: tuple[str, ...]


@attrs.define
class ResolvedGroup:
    """A group applied to a model: ``{module name: final sparsity}`` and the layers it had to skip."""

    group: PruningGroup
    modules: dict[str, float | None]
    skipped: dict[str, str] = attrs.field(factory=dict)


@attrs.define
class RecipePlan:
    """A whole file: its pruning groups, layer drops, and the parts that are not applied."""

    path: str | None
    format: str
    groups: list[PruningGroup] = attrs.field(factory=list)
    layer_drops: list[LayerDrop] = attrs.field(factory=list)
    not_applied: dict[str, list[tuple[str, int | None]]] = attrs.field(factory=dict)

    def skip(self, kind: str, name: str, line: int | None) -> None:
        """Record a part of the file that is not pruning (``kind``: "distillation", "learning rate", ...)."""
        self.not_applied.setdefault(kind, []).append((name, line))

    def warn_not_applied(self) -> None:
        """One logging warning per kind of part that sparsify does not apply."""
        for kind, items in self.not_applied.items():
            names = sorted({name for name, _ in items})
            lines = ", ".join(str(line) for _, line in items if line)
            logger.warning("%s%s (%s%s) is not applied: sparsify applies the pruning part only", where(self.path, None),
                           kind, ", ".join(names), f", line(s) {lines}" if lines else "")

    def resolve(self, model: nn.Module) -> list[ResolvedGroup]:
        """Select each group's modules in ``model`` and their final sparsity, checking overlaps and shapes."""
        resolved: list[ResolvedGroup] = []
        owner: dict[str, Origin] = {}
        dropped = {name for drop in self.layer_drops for name in drop.layers}
        for group in self.groups:
            modules: dict[str, float | None] = {}
            skipped: dict[str, str] = {}
            for rule in group.targets:
                for name in rule.selection.select(model, group.origin):
                    if any(name == d or name.startswith(d + ".") for d in dropped):
                        continue
                    if name in modules and modules[name] != rule.sparsity:
                        raise group.origin.error(f"{name} is given two final sparsities, {modules[name]} and "
                                                 f"{rule.sparsity}")
                    if group.method == "lock" and name in owner:
                        continue  # an earlier group prunes it; its masks are kept anyway
                    shape = tuple(cast(torch.Tensor, model.get_submodule(name).weight).shape)
                    if not group.structure.divides(shape):
                        if group.structure.indivisible == "skip":
                            skipped[name] = f"shape {shape} is not divided by {group.structure.describe()}"
                            continue
                        raise group.origin.error(
                            f"{name} of shape {shape} is not divided by {group.structure.describe()}")
                    modules[name] = group.level_for(rule.sparsity, shape)
            for name in modules:
                if name in owner:
                    raise group.origin.error(f"{name} is also pruned by {owner[name]}: one entry per layer")
                owner[name] = group.origin
            if skipped:
                logger.warning("%s: %d layer(s) stay dense because the pattern does not divide them, as INC skips "
                               "them: %s", group.origin, len(skipped), "; ".join(f"{k} ({v})" for k, v in
                                                                                skipped.items()))
            resolved.append(ResolvedGroup(group, modules, skipped))
        return resolved


def as_tuple(values: Iterable[str]) -> tuple[str, ...]:
    """A tuple of strings (helper for the readers)."""
    return tuple(values)
