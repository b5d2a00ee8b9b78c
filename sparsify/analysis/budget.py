"""Per-layer sparsity budgets: one global target, split unevenly where it hurts least.

`allocate_budget` returns a `Budget` — one sparsity per layer — whose count-weighted
global sparsity is *exactly* the target: the per-layer numbers of zeros are integers that add up to
``pruned_count(total weights, target)`` (the engine's counting rule, `sparsify.scope.pruned_count`),
and each layer's sparsity is chosen so that `sparsify.Pruner` prunes exactly that many weights of it
(unstructured pattern; block, channel, tile and n:m patterns round each layer to whole groups).

The layers are those a `sparsify.PrunerConfig` selects (``config=``, default ``PrunerConfig()``;
`sparsify.analysis.probe.selected_layers`, the pruner's own selection), and
`Budget.to_pruner_config` turns the budget into a `sparsify.PrunerConfig` that keeps each layer's module
config — criterion, pattern, schedule — and sets only its sparsity. `Budget.to_config` gives Core ML Tools'
`sparsify.MagnitudePrunerConfig` instead, for a magnitude budget with a Core ML pattern.

Methods:

* ``"scan"`` (the default when a `sparsify.analysis.sensitivity.SensitivityScan` is given) — minimise the
  predicted loss ``Σ drop_l(s_l)``, where ``drop_l`` is the scan's metric drop for layer ``l`` pruned
  alone (piecewise linear between the scanned sparsities, made non-decreasing). Exactly: take the
  lower convex hull of each layer's curve in (zeros, drop) and spend the global number of zeros on the
  cheapest hull segments first (segments of equal slope — typically the free ones — are filled
  together up to one common sparsity, so free sparsity is spread evenly). This is optimal for the
  convexified curves; layers never go beyond the largest scanned sparsity.
* ``"erk"`` (the default without a scan) — Erdős–Rényi-Kernel (Evci et al., RigL 2020): density
  proportional to ``sum(shape) / prod(shape)``, so big layers are pruned more; costs nothing.
* ``"global"`` (``"magnitude"`` is its older name) — one global ranking of the config's scores through its
  pattern: the pruning machine with ``scope="global"`` over the budgeted layers (magnitude by default; a
  data-dependent criterion reads ``sampler``); costs one mask update.
* ``"uniform"`` — every layer at the target (the baseline the others are measured against).

``min_sparsity`` / ``max_sparsity`` bound every layer (a float, or a dict per layer name).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import attrs
from torch import nn

from .._table import markdown_table, text_table
from ..config import (
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    ModulePrunerConfig,
    OptimizationConfig,
    PrunerConfig,
)
from ..scope import pruned_count
from .probe import LayerProbe
from .sensitivity import SensitivityScan

__all__ = ["METHODS", "Budget", "allocate_budget", "sparsity_for_count"]

METHODS = ("scan", "erk", "global", "magnitude", "uniform")
Bound = float | Mapping[str, float]


def sparsity_for_count(num: int, zeros: int) -> float:
    """A sparsity ``s`` with ``pruned_count(num, s) == zeros`` (the engine's float32 rounding).

    ``zeros / num`` usually works; when float32 rounding disagrees, the nearest float that works is
    found by nudging. Beyond 2**24 weights float32 cannot hit every count and the nearest is returned.
    """
    if not 0 <= zeros <= num:
        raise ValueError(f"zeros={zeros!r} is invalid: allowed 0 <= zeros <= num ({num})")
    if num == 0:
        return 0.0
    base = zeros / num
    best = base
    for step in range(0, 64):
        for candidate in (base + step * 2.0**-26, base - step * 2.0**-26):
            if 0.0 <= candidate <= 1.0 and pruned_count(num, candidate) == zeros:
                return candidate
    return best


@attrs.frozen
class Budget:
    """Per-layer sparsities meeting one count-weighted global target."""

    sparsities: dict[str, float]
    params: dict[str, int]
    target: float
    method: str
    predicted_drop: float | None = None  # Σ of the scan's drops at these sparsities ("scan" only)
    uniform_drop: float | None = None  # ... and at the target for every layer, for comparison
    #: each layer's module config as the budget's ``config`` selects it (empty: the default config)
    configs: dict[str, ModulePrunerConfig] = attrs.field(factory=dict, repr=False)

    @property
    def zeros(self) -> dict[str, int]:
        """Weights each layer loses under `sparsify.Pruner` with an unstructured pattern."""
        return {name: pruned_count(self.params[name], s) for name, s in self.sparsities.items()}

    @property
    def global_sparsity(self) -> float:
        """Count-weighted sparsity over the budgeted layers."""
        total = sum(self.params.values())
        return sum(self.zeros.values()) / total if total else 0.0

    def to_pruner_config(self, **module_config: Any) -> PrunerConfig:
        """A `sparsify.PrunerConfig` pruning each budgeted layer to its sparsity (other modules are left alone):
        one name rule per layer (names ``re.escape``'d, since keys are regular expressions) with the layer's
        module config from the budget's ``config`` — criterion, pattern, schedule — in local scope, and its
        ``target_sparsity`` set.

        A layer whose budget is 0 gets ``None`` (not pruned), so it carries no mask and no Core ML
        pruning metadata, and is exported dense. ``module_config`` overrides fields of every layer's config
        (a ``scheduler``, ``criterion``, ``pattern``...; each layer gets its own copy).
        """
        _refuse_levels("to_pruner_config", module_config)
        configs: dict[str, ModulePrunerConfig | None] = {}
        for name, sparsity in self.sparsities.items():
            if not self.zeros[name]:
                configs[re.escape(name)] = None
                continue
            base = copy.deepcopy(self.configs.get(name, ModulePrunerConfig()))
            if base.n_m_ratio is not None and "n_m_ratio" not in module_config:
                raise ValueError(f"Budget.to_pruner_config(): layer {name!r} has n_m_ratio={base.n_m_ratio}, which "
                                 "fixes its sparsity at n / m; budget it with pattern='n:m' instead")
            local = {"scope": "local", "global_group": None, "min_sparsity": 0.0, "max_sparsity": 1.0}
            layer = attrs.evolve(base, **{**local, **copy.deepcopy(module_config)})
            configs[re.escape(name)] = attrs.evolve(layer, target_sparsity=sparsity,
                                                    initial_sparsity=min(layer.initial_sparsity, sparsity))
        return PrunerConfig(module_name_configs=configs)

    def to_config(self, **module_config: Any) -> MagnitudePrunerConfig:
        """Core ML Tools' form of `to_pruner_config`: a `sparsify.MagnitudePrunerConfig` for
        `sparsify.MagnitudePruner`, for a budget whose layers prune by magnitude with a Core ML pattern.

        A layer whose budget is 0 gets ``None`` (not pruned). ``module_config`` is passed to every
        `sparsify.ModuleMagnitudePrunerConfig` (a ``scheduler``, ``granularity``, ``block_size``...; each layer
        gets its own copy); without them a layer keeps its config's granularity and block size.
        """
        _refuse_levels("to_config", module_config)
        configs: dict[str, ModuleMagnitudePrunerConfig | None] = {}
        for name, sparsity in self.sparsities.items():
            base = self.configs.get(name, ModulePrunerConfig())
            if base.criterion.kind != "magnitude" or base.pattern is not None or base.n_m_ratio is not None:
                raise ValueError(
                    f"Budget.to_config(): layer {name!r} prunes with criterion {base.criterion.kind!r}, pattern "
                    f"{base.pattern!r} and n_m_ratio {base.n_m_ratio}, which MagnitudePrunerConfig cannot express; use "
                    "to_pruner_config() (a PrunerConfig for sparsify.Pruner / sparsify.prune)"
                )
            fields = {"granularity": base.granularity, "block_size": base.block_size, **copy.deepcopy(module_config)}
            configs[re.escape(name)] = ModuleMagnitudePrunerConfig(target_sparsity=sparsity, **fields) \
                if self.zeros[name] else None
        return MagnitudePrunerConfig(module_name_configs=configs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "method": self.method, "global_sparsity": self.global_sparsity,
            "predicted_drop": self.predicted_drop, "uniform_drop": self.uniform_drop,
            "layers": {name: {"params": self.params[name], "sparsity": s, "zeros": self.zeros[name]}
                       for name, s in self.sparsities.items()},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)

    def _rows(self) -> list[list[str]]:
        rows = [["layer", "params", "sparsity", "zeros"]]
        zeros = self.zeros
        rows += [[name, f"{self.params[name]:,}", f"{100 * s:.2f}%", f"{zeros[name]:,}"]
                 for name, s in self.sparsities.items()]
        rows.append(["global", f"{sum(self.params.values()):,}", f"{100 * self.global_sparsity:.2f}%",
                     f"{sum(zeros.values()):,}"])
        return rows

    def _summary(self) -> str:
        text = f"method={self.method!r}, target {100 * self.target:g}%"
        if self.predicted_drop is not None:
            text += f"; predicted metric drop {self.predicted_drop:.4f} (uniform: {self.uniform_drop:.4f})"
        return text

    def to_text(self) -> str:
        header, *rows = self._rows()
        return "\n".join([*text_table([header], rows, left=1, rules_before=[len(rows) - 1]), "", self._summary()])

    def to_markdown(self) -> str:
        header, *rows = self._rows()
        return "\n".join([*markdown_table(header, rows), "", self._summary()])

    def __str__(self) -> str:
        return self.to_text()


def _refuse_levels(method: str, module_config: Mapping[str, Any]) -> None:
    for forbidden in ("target_sparsity", "n_m_ratio"):
        if module_config.get(forbidden) is not None:
            raise ValueError(
                f"Budget.{method}({forbidden}={module_config[forbidden]!r}) is invalid: the budget sets "
                f"each layer's sparsity, so {forbidden} cannot be given"
            )


# ----------------------------------------------------------------------------------------------
# Allocation
# ----------------------------------------------------------------------------------------------


def _bound(value: Bound, name: str, field: str) -> float:
    if isinstance(value, Mapping):
        level = float(value.get(name, 0.0 if field == "min_sparsity" else 1.0))
    else:
        level = float(value)
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"{field}[{name!r}]={level!r} is invalid: allowed 0.0 <= {field} <= 1.0")
    return level


def _curve(scan: SensitivityScan, name: str) -> tuple[list[float], list[float]]:
    """``(sparsities, drops)`` from 0 up, drops non-decreasing and 0 at sparsity 0."""
    points = sorted(zip(scan.sparsities, scan.drop(name)))
    xs, ys = [0.0], [0.0]
    for s, d in points:
        if s > xs[-1]:
            xs.append(s)
            ys.append(max(ys[-1], d))
    return xs, ys


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    for (x0, y0), (x1, y1) in itertools.pairwise(zip(xs, ys)):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def _lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    hull: list[tuple[float, float]] = []
    for p in points:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _scan_allocation(
    scan: SensitivityScan, names: list[str], total: int, lo: dict[str, float], hi: dict[str, float]
) -> dict[str, float]:
    """Continuous zeros per layer: cheapest convex-hull segments first; segments of equal slope are
    filled together to one common sparsity level (so free sparsity is spread evenly)."""
    zeros = {name: lo[name] for name in names}
    by_slope: dict[float, list[tuple[str, float, float]]] = {}  # slope -> [(layer, start, end)] in sparsity
    for name in names:
        xs, ys = _curve(scan, name)
        n = scan.params[name]
        inside = [s for s in xs if lo[name] / n < s < hi[name] / n]
        points = [(x, _interpolate(xs, ys, x)) for x in [lo[name] / n, *inside, hi[name] / n]]
        for (x0, y0), (x1, y1) in itertools.pairwise(_lower_hull(points)):
            if x1 > x0:
                slope = float(f"{(y1 - y0) / ((x1 - x0) * n):.12g}")  # drop per pruned weight
                by_slope.setdefault(slope, []).append((name, x0, x1))
    remaining = total - sum(zeros.values())
    for slope in sorted(by_slope):
        if remaining <= 0:
            break
        group = by_slope[slope]

        def filled(level: float, group: list[tuple[str, float, float]] = group) -> float:
            return sum(scan.params[n] * min(max(level - x0, 0.0), x1 - x0) for n, x0, x1 in group)

        level = max(x1 for _, _, x1 in group)
        if filled(level) > remaining:  # fill part of the group: find the common level by bisection
            low, high = min(x0 for _, x0, _ in group), level
            for _ in range(100):
                level = (low + high) / 2
                low, high = (level, high) if filled(level) < remaining else (low, level)
            level = high
        for layer, x0, x1 in group:
            zeros[layer] += scan.params[layer] * min(max(level - x0, 0.0), x1 - x0)
        remaining -= filled(level)
    return zeros


def _density_allocation(
    raw: dict[str, float], params: dict[str, int], total: int, lo: dict[str, float], hi: dict[str, float]
) -> dict[str, float]:
    """Continuous zeros with density ``clip(eps * raw, ...)``: ``eps`` found by bisection."""

    def zeros_at(eps: float) -> dict[str, float]:
        return {name: min(max(params[name] * (1 - eps * raw[name]), lo[name]), hi[name]) for name in raw}

    low, high = 0.0, 1.0
    while sum(zeros_at(high).values()) > total and high < 1e30:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if sum(zeros_at(mid).values()) > total:
            low = mid
        else:
            high = mid
    return zeros_at((low + high) / 2)


def _round_counts(zeros: dict[str, float], total: int, lo: dict[str, float], hi: dict[str, float]) -> dict[str, int]:
    """Integers within ``[ceil(lo), floor(hi)]`` adding up to ``total``, closest to ``zeros``."""
    low = {k: math.ceil(lo[k] - 1e-9) for k in zeros}
    high = {k: math.floor(hi[k] + 1e-9) for k in zeros}
    counts = {k: min(max(math.floor(v + 1e-9), low[k]), high[k]) for k, v in zeros.items()}
    missing = total - sum(counts.values())
    order = sorted(zeros, key=lambda k: counts[k] - zeros[k], reverse=missing < 0)
    while missing:
        step = 1 if missing > 0 else -1
        moved = False
        for k in order:
            if missing and low[k] <= counts[k] + step <= high[k]:
                counts[k] += step
                missing -= step
                moved = True
        if not moved:
            break
    return counts


def allocate_budget(
    model: nn.Module | None,
    target_sparsity: float,
    *,
    scan: SensitivityScan | None = None,
    method: str | None = None,
    layers: Sequence[str] | str | None = None,
    min_sparsity: Bound = 0.0,
    max_sparsity: Bound = 0.98,
    config: OptimizationConfig | None = None,
    sampler: Any = None,
) -> Budget:
    """Split ``target_sparsity`` over the layers so that the predicted damage is small.

    Args:
        model: the model (needed for ``"erk"``, ``"global"`` and ``"uniform"``; ``None`` is fine with a scan).
        target_sparsity: the count-weighted sparsity over the budgeted layers, in ``[0, 1]``.
        scan: a `sparsify.analysis.sensitivity.SensitivityScan`; its layers are the ones budgeted.
        method: one of `METHODS`; default ``"scan"`` with a scan, else ``"erk"``.
        layers: which layers without a scan (see `sparsify.analysis.sensitivity.prunable_layers`).
        min_sparsity, max_sparsity: bounds for every layer (float, or dict by layer name).
        config: the `sparsify.PrunerConfig` the budget is for: which layers (without a scan), the scores and
            pattern of ``"global"``, and each layer's module config in `Budget.to_pruner_config`. With a scan
            and no model, its ``global_config`` is every layer's. Default ``PrunerConfig()``.
        sampler: calibration data for a data-dependent criterion in ``"global"`` (as for ``sparsify.Pruner``).

    Raises:
        ValueError: when the bounds (and, for a scan, its largest sparsity) make the target unreachable.
    """
    if not isinstance(target_sparsity, (int, float)) or not 0.0 <= float(target_sparsity) <= 1.0:
        raise ValueError(f"target_sparsity={target_sparsity!r} is invalid: allowed a number in [0, 1]")
    method = method or ("scan" if scan is not None else "erk")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: allowed values are {', '.join(map(repr, METHODS))}")
    probe: LayerProbe | None = None
    if method == "scan":
        if scan is None:
            raise ValueError("method='scan' needs scan=sensitivity_scan(...); or pick 'erk', 'global', 'uniform'")
        names = scan.layers
        if isinstance(layers, str):
            names = [n for n in names if re.fullmatch(layers, n)]
        elif layers is not None:
            unknown = sorted(set(layers) - set(names))
            if unknown:
                raise ValueError(f"layers names {unknown}, which the scan does not cover; allowed: {scan.layers}")
            names = [n for n in names if n in layers]
        params = {name: scan.params[name] for name in names}
        top = max(scan.sparsities)
        if model is not None and names:
            probe = LayerProbe(model, config, layers=names)
    else:
        if model is None:
            raise ValueError(f"method={method!r} needs the model")
        probe = LayerProbe(model, config, sampler=sampler, layers=layers)
        names = probe.names
        params = {name: probe.weight_count(name) for name in names}
        top = 1.0
    if not names:
        raise ValueError("allocate_budget: there is no layer to budget")
    if probe is not None:
        configs = probe.configs()
    else:
        base = getattr(config, "global_config", None)
        configs = {n: base for n in names} if isinstance(base, ModulePrunerConfig) else {}
    lo = {n: params[n] * _bound(min_sparsity, n, "min_sparsity") for n in names}
    hi = {n: params[n] * min(_bound(max_sparsity, n, "max_sparsity"), top) for n in names}
    total = pruned_count(sum(params.values()), float(target_sparsity))
    reachable = (math.ceil(sum(lo.values()) - 1e-9), math.floor(sum(math.floor(h + 1e-9) for h in hi.values())))
    if not reachable[0] <= total <= reachable[1]:
        raise ValueError(
            f"target_sparsity={target_sparsity!r} is unreachable with these bounds: the layers can reach "
            f"{reachable[0] / sum(params.values()):.4f} to {reachable[1] / sum(params.values()):.4f} "
            f"(min_sparsity, max_sparsity{', and the largest scanned sparsity' if method == 'scan' else ''})"
        )

    if method == "scan":
        assert scan is not None  # checked above
        zeros = _scan_allocation(scan, names, total, lo, hi)
    elif method == "erk":
        assert probe is not None
        raw = {n: sum(probe.shape(n)) / params[n] for n in names}
        zeros = _density_allocation(raw, params, total, lo, hi)
    elif method == "uniform":
        zeros = _density_allocation(dict.fromkeys(names, 1.0), params, total, lo, hi)
    else:
        assert model is not None
        zeros = _global_ranking(model, configs, sampler, float(target_sparsity),
                                {n: lo[n] / params[n] for n in names}, {n: hi[n] / params[n] for n in names})
    counts = _round_counts(zeros, total, lo, hi)
    sparsities = {n: sparsity_for_count(params[n], counts[n]) for n in names}

    predicted = uniform = None
    if scan is not None:
        curves = {n: _curve(scan, n) for n in names}
        predicted = sum(_interpolate(*curves[n], sparsities[n]) for n in names)
        uniform = sum(_interpolate(*curves[n], float(target_sparsity)) for n in names)
    return Budget(sparsities, params, float(target_sparsity), method, predicted, uniform, configs)


def _global_ranking(
    model: nn.Module, configs: Mapping[str, ModulePrunerConfig], sampler: Any, target: float,
    low: Mapping[str, float], high: Mapping[str, float],
) -> dict[str, float]:
    """Zeros per layer when the machine ranks the layers together at ``target``: each layer's config in global
    scope, one ranking group, ``low`` / ``high`` as its ``min_sparsity`` / ``max_sparsity``."""
    rules = {
        re.escape(name): attrs.evolve(config, scope="global", global_group="budget", min_sparsity=low[name],
                                      max_sparsity=high[name], initial_sparsity=0.0, target_sparsity=target)
        for name, config in configs.items()
    }
    ranked = PrunerConfig(module_name_configs=cast(dict[str, Any], rules))
    with LayerProbe(model, ranked, sampler=sampler) as probe:
        masks = probe.masks(dict.fromkeys(configs, target))
        return {name: float(probe.weight_count(name) - int(mask.expand(probe.shape(name)).sum()))
                for name, mask in masks.items()}
