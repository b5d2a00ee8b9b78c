"""OWL — outlier-weighted layerwise sparsity (Yin et al., ICML 2024): per-layer levels from outlier ratios.

Language models have a few activation *outliers*, and the layers holding more of them suffer most from
pruning. OWL measures, for every layer ``l`` (a decoder block: all the pruned linears inside it), the
**outlier ratio** ``D_l`` — the percentage of its Wanda scores ``|W_ij| · ‖X_j‖₂`` above ``M`` times their
mean over the layer — on calibration data run through the dense model, and gives layers with more outliers
a lower sparsity:

    d_l = (D_l − min D) / (max D − min D) · 2λ            (densities spread over [0, 2λ])
    level_l = 1 − (d_l − mean(d) + 1 − s)                 (mean level = the target s)

so the levels span ``2λ`` (the layer with the most outliers is the least pruned) and their mean is ``s``
exactly (the reference code's rule; the mean is over layers, which are equal in size in a decoder). The
paper's defaults: ``M = 5``, ``λ = 0.08``. All layers with the same ratio (or one layer) get ``s``. Modules
outside the chain of blocks are layers of their own.

`owl_levels` returns each pruned module's level; `sparsify.prune(..., layer_levels="owl")` prunes with
them — with every criterion and pattern. For an n:m pattern the level becomes a per-layer ``n`` (``m``
fixed: mixed n:m), rounded so that the total number of zeros stays the target's; with ``m = 4`` and
``λ = 0.08`` every layer rounds back to ``2:4`` — use a larger ``m`` (``4:8``) for mixed levels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch import nn

from .._progress import tqdm
from ..calibration import CalibrationData, as_calibration_data
from ..calibration.layer_inputs import input_columns

__all__ = ["OWLLevels", "block_of", "nm_counts", "outlier_ratio", "owl_levels", "owl_spread"]

logger = logging.getLogger(__name__)


def outlier_ratio(scores: torch.Tensor, m: float) -> float:
    """Percentage of ``scores`` above ``m`` times their mean (OWL's ``D``)."""
    flat = scores.reshape(-1).float()
    return float((flat > m * flat.mean()).float().mean()) * 100.0


def owl_spread(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """The level of each layer from its outlier ratio (see the module docs), clipped to ``[0, 1]``."""
    if not ratios:
        return []
    low, high = min(ratios), max(ratios)
    if high - low <= 0:
        return [sparsity] * len(ratios)
    density = [(r - low) / (high - low) * 2 * lam for r in ratios]
    mean = sum(density) / len(density)
    levels = [1.0 - (d - mean + 1.0 - sparsity) for d in density]
    clipped = [min(max(level, 0.0), 1.0) for level in levels]
    if clipped != levels:
        logger.warning("OWL: levels clipped to [0, 1] (sparsity=%g, lambda=%g); their mean is %.4f, not %g",
                       sparsity, lam, sum(clipped) / len(clipped), sparsity)
    return clipped


def block_of(model: nn.Module, names: Sequence[str]) -> dict[str, str]:
    """Each name's layer: the child of the ``nn.ModuleList`` / ``nn.Sequential`` whose distinct children hold
    most of ``names`` (the decoder blocks), or the module itself outside it."""
    best, best_count = None, 1
    for prefix, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) < 2:
            continue
        stem = f"{prefix}." if prefix else ""
        children = set(dict(module.named_children()))
        blocks = {name[len(stem):].split(".")[0] for name in names if name.startswith(stem)} & children
        if len(blocks) > best_count:
            best, best_count = (stem, children), len(blocks)
    out = {}
    for name in names:
        if best is not None and name.startswith(best[0]) and name[len(best[0]):].split(".")[0] in best[1]:
            out[name] = best[0] + name[len(best[0]):].split(".")[0]
        else:
            out[name] = name
    return out


@attrs.frozen
class OWLLevels:
    """OWL's result: ``levels`` (module → sparsity), and per layer its modules, outlier ratio and level."""

    levels: dict[str, float]
    layers: dict[str, list[str]]
    ratios: dict[str, float]
    layer_levels: dict[str, float]


def _column_norms(model: nn.Module, modules: Mapping[str, nn.Module], data: CalibrationData,
                  num_batches: int) -> dict[str, torch.Tensor]:
    """Mean square of every input column of each module, over the first ``num_batches`` items (dense model)."""
    sums: dict[str, torch.Tensor] = {}
    rows: dict[str, int] = dict.fromkeys(modules, 0)

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            columns = input_columns(module, args[0])
            squares = columns.square().sum(0)
            sums[name] = squares if name not in sums else sums[name] + squares
            rows[name] += columns.shape[0]
        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        with torch.no_grad():
            for item in tqdm(data.items(), desc="OWL outliers", total=None, leave=False, disable=not data.progress):
                data.forward(model, item)
                seen += 1
                if seen == num_batches:
                    break
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [n for n in modules if n not in sums]
    if missing:
        raise RuntimeError(f"OWL: module(s) {missing[:5]} were not called with a tensor input on the calibration "
                           f"data, so their outliers cannot be measured")
    return {name: sums[name] / max(rows[name], 1) for name in modules}


def owl_levels(
    model: nn.Module,
    sampler: Any,
    sparsity: float,
    names: Sequence[str],
    *,
    m: float = 5.0,
    lam: float = 0.08,
    num_batches: int = 128,
) -> OWLLevels:
    """OWL's level for each module in ``names`` (Linear, Conv1d/2d or transformers' Conv1D) of ``model``
    (see the module docs); ``sampler``: calibration data as `sparsify.prune` takes it."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"OWL: sparsity={sparsity!r} is invalid: allowed 0 <= sparsity <= 1")
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not m > 0 or not math.isfinite(m):
        raise ValueError(f"OWL: owl_m={m!r} is invalid: allowed a number > 0 (the paper's default: 5)")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 <= lam <= 0.5:
        raise ValueError(f"OWL: owl_lambda={lam!r} is invalid: allowed 0 <= owl_lambda <= 0.5 (the paper's "
                         f"default: 0.08)")
    if not names:
        return OWLLevels({}, {}, {}, {})
    modules = {name: model.get_submodule(name) for name in names}
    norms = _column_norms(model, modules, as_calibration_data(sampler), num_batches)
    groups: dict[str, list[str]] = {}
    for name, layer in block_of(model, list(names)).items():
        groups.setdefault(layer, []).append(name)
    ratios = {}
    for layer, members in groups.items():
        scores = []
        for name in members:
            weight = modules[name].get_parameter("weight").detach().float()
            if weight.dim() == 2 and not isinstance(modules[name], (nn.Linear, nn.Conv1d, nn.Conv2d)):
                weight = weight.t()  # transformers' Conv1D stores [in, out]
            flat = weight.reshape(weight.shape[0], -1).abs()
            scores.append((flat * norms[name].to(flat.device).sqrt()).reshape(-1))
        ratios[layer] = outlier_ratio(torch.cat(scores), m)
    layer_levels = dict(zip(ratios, owl_spread(list(ratios.values()), sparsity, lam)))
    levels = {name: layer_levels[layer] for layer, members in groups.items() for name in members}
    logger.info("OWL levels (M=%g, lambda=%g): %s", m, lam,
                ", ".join(f"{layer} {level:.4f}" for layer, level in layer_levels.items()))
    return OWLLevels(levels, groups, ratios, layer_levels)


def nm_counts(levels: Mapping[str, float], sizes: Mapping[str, int], n: int, m: int) -> dict[str, int]:
    """Per-module ``n`` (zeros of every ``m``) nearest ``level · m``, adjusted so the zeros in total are those
    of ``n:m`` everywhere (largest remainders first), within ``[0, m]``."""
    want = {name: min(max(levels[name] * m, 0.0), float(m)) for name in levels}
    counts = {name: math.floor(value) for name, value in want.items()}
    target = n * sum(sizes[name] for name in levels)
    order = sorted(levels, key=lambda name: (want[name] - counts[name]), reverse=True)
    for name in order:
        if sum(counts[k] * sizes[k] for k in counts) + sizes[name] > target:
            continue
        if counts[name] < m and want[name] - counts[name] > 0:
            counts[name] += 1
    return counts
