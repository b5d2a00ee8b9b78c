"""Per-layer sparsity budgets: one global target, split unevenly where it hurts least.

`allocate_budget` returns a `Budget` — one sparsity per layer — whose count-weighted
global sparsity is *exactly* the target: the per-layer numbers of zeros are integers that add up to
``pruned_count(total weights, target)`` (the engine's counting rule, `sparsify.scope.pruned_count`),
and each layer's sparsity is chosen so that `sparsify.MagnitudePruner` prunes exactly that many
weights of it (unstructured pattern; block / channel patterns round each layer to whole groups).
`Budget.to_config` turns it into a ready `sparsify.MagnitudePrunerConfig`.

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
* ``"magnitude"`` — one global magnitude ranking (`sparsify.scope.global_keep_masks`); costs one
  sort.
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
import torch
from torch import nn

from ..config import MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from .._table import markdown_table, text_table
from ..scope import global_keep_masks, pruned_count
from .sensitivity import SensitivityScan, prunable_layers

__all__ = ["METHODS", "Budget", "allocate_budget", "sparsity_for_count"]

METHODS = ("scan", "erk", "magnitude", "uniform")
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

    @property
    def zeros(self) -> dict[str, int]:
        """Weights each layer loses under `sparsify.MagnitudePruner`."""
        return {name: pruned_count(self.params[name], s) for name, s in self.sparsities.items()}

    @property
    def global_sparsity(self) -> float:
        """Count-weighted sparsity over the budgeted layers."""
        total = sum(self.params.values())
        return sum(self.zeros.values()) / total if total else 0.0

    def to_config(self, **module_config: Any) -> MagnitudePrunerConfig:
        """A config pruning each budgeted layer to its sparsity (other modules are left alone).

        A layer whose budget is 0 gets ``None`` (not pruned), so it carries no mask and no Core ML
        pruning metadata, and is exported dense.

        ``module_config`` is passed to every `sparsify.ModuleMagnitudePrunerConfig` (a
        ``scheduler``, ``granularity``, ``block_size``...; each layer gets its own copy); names are
        ``re.escape``'d, since config keys are regular expressions.
        """
        for forbidden in ("target_sparsity", "n_m_ratio"):
            if module_config.get(forbidden) is not None:
                raise ValueError(
                    f"Budget.to_config({forbidden}={module_config[forbidden]!r}) is invalid: the budget sets "
                    f"each layer's sparsity, so {forbidden} cannot be given"
                )
        configs = {
            re.escape(name): ModuleMagnitudePrunerConfig(target_sparsity=sparsity, **copy.deepcopy(module_config))
            if self.zeros[name] else None
            for name, sparsity in self.sparsities.items()
        }
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
) -> Budget:
    """Split ``target_sparsity`` over the layers so that the predicted damage is small.

    Args:
        model: the model (needed for ``"erk"``, ``"magnitude"`` and ``"uniform"``; ``None`` is fine with a scan).
        target_sparsity: the count-weighted sparsity over the budgeted layers, in ``[0, 1]``.
        scan: a `sparsify.analysis.sensitivity.SensitivityScan`; its layers are the ones budgeted.
        method: one of `METHODS`; default ``"scan"`` with a scan, else ``"erk"``.
        layers: which layers without a scan (see `sparsify.analysis.sensitivity.prunable_layers`).
        min_sparsity, max_sparsity: bounds for every layer (float, or dict by layer name).

    Raises:
        ValueError: when the bounds (and, for a scan, its largest sparsity) make the target unreachable.
    """
    if not isinstance(target_sparsity, (int, float)) or not 0.0 <= float(target_sparsity) <= 1.0:
        raise ValueError(f"target_sparsity={target_sparsity!r} is invalid: allowed a number in [0, 1]")
    method = method or ("scan" if scan is not None else "erk")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid: allowed values are {', '.join(map(repr, METHODS))}")
    if method == "scan":
        if scan is None:
            raise ValueError("method='scan' needs scan=sensitivity_scan(...); or pick 'erk', 'magnitude', 'uniform'")
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
    else:
        if model is None:
            raise ValueError(f"method={method!r} needs the model")
        names = prunable_layers(model, layers)
        weights = {name: cast(torch.Tensor, model.get_submodule(name).weight).detach() for name in names}
        params = {name: w.numel() for name, w in weights.items()}
        top = 1.0
    if not names:
        raise ValueError("allocate_budget: there is no layer to budget")
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
        raw = {n: sum(weights[n].shape) / params[n] for n in names}
        zeros = _density_allocation(raw, params, total, lo, hi)
    elif method == "uniform":
        zeros = _density_allocation(dict.fromkeys(names, 1.0), params, total, lo, hi)
    else:
        lo_s = {n: lo[n] / params[n] for n in names}
        hi_s = {n: hi[n] / params[n] for n in names}
        masks = global_keep_masks({n: w.abs() for n, w in weights.items()}, float(target_sparsity),
                                  min_sparsity=lo_s, max_sparsity=hi_s)
        zeros = {n: float(params[n] - int(masks[n].sum())) for n in names}
    counts = _round_counts(zeros, total, lo, hi)
    sparsities = {n: sparsity_for_count(params[n], counts[n]) for n in names}

    predicted = uniform = None
    if scan is not None:
        curves = {n: _curve(scan, n) for n in names}
        predicted = sum(_interpolate(*curves[n], sparsities[n]) for n in names)
        uniform = sum(_interpolate(*curves[n], float(target_sparsity)) for n in names)
    return Budget(sparsities, params, float(target_sparsity), method, predicted, uniform)
