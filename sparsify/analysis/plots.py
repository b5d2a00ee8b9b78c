"""Pictures of a sparse model, as PNG (needs the optional ``matplotlib``: ``pip install 'sparsify-coreml[plot]'``).

* `plot_weight_heatmap` — a layer's weights (``|w|``, zeros in white), before and after pruning;
* `plot_layer_sparsity` — requested vs achieved sparsity of every layer, from a model report;
* `plot_weight_histogram` — distribution of the non-zero weights of each layer;
* `plot_sensitivity` — a sensitivity scan's curves, metric against sparsity per layer;
* `plot_mask_layout` — kept / pruned positions of masks, with the block or n:m grid drawn.

matplotlib is imported only when a function here runs, and only its object-oriented API is used
(``matplotlib.figure.Figure``, drawn with the Agg renderer): no pyplot, no global backend switch, no
window. Every function writes a PNG of exactly ``figsize × dpi`` pixels and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from .model_report import ModelReport

__all__ = [
    "plot_layer_sparsity",
    "plot_mask_layout",
    "plot_sensitivity",
    "plot_weight_heatmap",
    "plot_weight_histogram",
]

Size = tuple[float, float]


def _figure(figsize: Size, dpi: int) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sparsify.analysis.plots needs matplotlib, which is not installed: pip install 'sparsify-coreml[plot]' "
            "(or pip install matplotlib)"
        ) from exc
    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path={str(path)!r} is invalid: the pictures are PNG files, allowed a name ending in .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=fig.dpi)
    return path


def _as_matrix(weight: torch.Tensor | nn.Module) -> torch.Tensor:
    """A 2-D float view: rows are output channels, columns everything else (1-D: one row)."""
    if isinstance(weight, nn.Module):
        weight = cast(torch.Tensor, weight.weight)
    tensor = weight.detach().float().cpu()
    if tensor.dim() == 0:
        return tensor.reshape(1, 1)
    return tensor.reshape(1, -1) if tensor.dim() == 1 else tensor.reshape(tensor.shape[0], -1)


def _masked_abs(matrix: torch.Tensor) -> Any:
    import numpy as np

    values = matrix.abs().numpy()
    return np.ma.masked_where(values == 0, values)


def plot_weight_heatmap(
    weight: torch.Tensor | nn.Module,
    path: str | Path,
    *,
    after: torch.Tensor | nn.Module | None = None,
    title: str | None = None,
    figsize: Size = (8.0, 4.0),
    dpi: int = 100,
) -> Path:
    """``|w|`` of one layer as an image (rows = output channels, zeros white); with ``after``, two
    panels share one colour scale: before and after pruning."""
    panels = [("before", _as_matrix(weight))] if after is not None else [("", _as_matrix(weight))]
    if after is not None:
        panels.append(("after", _as_matrix(after)))
    fig = _figure(figsize, dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    top = max(float(m.abs().max()) for _, m in panels) or 1.0
    image = None
    cmap = _colormap("viridis")
    for ax, (label, matrix) in zip(axes, panels):
        image = ax.imshow(_masked_abs(matrix), cmap=cmap, vmin=0, vmax=top, aspect="auto", interpolation="nearest")
        zeros = int((matrix == 0).sum())
        ax.set_title(f"{label} ({100 * zeros / matrix.numel():.1f}% zeros)".strip())
        ax.set_xlabel("input × kernel")
        ax.set_ylabel("output channel")
    fig.colorbar(image, ax=list(axes), label="|w| (white = 0)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _colormap(name: str) -> Any:
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="white")


def plot_layer_sparsity(
    report: ModelReport | nn.Module,
    path: str | Path,
    *,
    title: str = "sparsity per layer",
    figsize: Size = (8.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Bars of achieved sparsity per layer (requested shown as a black tick; each label gives the
    layer's parameter count), from `sparsify.analysis.model_report.model_report` or from a model
    (reported on the fly)."""
    if isinstance(report, nn.Module):
        from .model_report import model_report

        report = model_report(report)
    names = [f"{layer.name}\n{layer.params:,}" for layer in report.layers]
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    positions = range(len(names))
    ax.bar(positions, [100 * layer.achieved for layer in report.layers], color="tab:blue", label="achieved")
    asked = [(i, 100 * layer.requested) for i, layer in enumerate(report.layers) if layer.requested is not None]
    if asked:
        ax.scatter([i for i, _ in asked], [v for _, v in asked], marker="_", s=400, color="black", zorder=3,
                   label="requested")
    crowded = len(names) > 6
    ax.set_xticks(list(positions), names, rotation=45 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylim(0, 100)
    ax.set_ylabel("sparsity (%)")
    ax.set_title(f"{title} — global {100 * report.sparsity:.1f}%")
    ax.legend(loc="lower right")
    return _save(fig, path)


def _named_weights(source: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(source, torch.Tensor):
        return {"weight": source.detach()}
    if isinstance(source, nn.Module):
        from .model_report import _read_module

        weights, _ = _read_module(source)
        return {w.name: w.tensor for w in weights}
    return {name: t.detach() for name, t in source.items()}


def plot_weight_histogram(
    source: nn.Module | Mapping[str, torch.Tensor] | torch.Tensor,
    path: str | Path,
    *,
    layers: Sequence[str] | None = None,
    bins: int = 60,
    title: str = "non-zero weights",
    figsize: Size = (8.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Histograms of the non-zero weights of each layer (a model's weights of rank ≥ 2, a
    ``{name: tensor}`` dict or one tensor), overlaid, log-scaled counts."""
    weights = _named_weights(source)
    if layers is not None:
        unknown = [name for name in layers if name not in weights]
        if unknown:
            raise ValueError(f"layers={list(layers)!r} names unknown layer(s) {unknown}; allowed: {list(weights)}")
        weights = {name: weights[name] for name in layers}
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    nonzero = {name: t.detach().float().cpu().reshape(-1) for name, t in weights.items()}
    nonzero = {name: v[v != 0] for name, v in nonzero.items() if bool((v != 0).any())}
    if nonzero:
        low = min(float(v.min()) for v in nonzero.values())
        high = max(float(v.max()) for v in nonzero.values())
        edges = torch.linspace(low, high if high > low else low + 1, bins + 1).numpy()  # shared by all layers
        for name, values in nonzero.items():
            ax.hist(values.numpy(), bins=edges, histtype="step", linewidth=1.5,
                    label=f"{name} ({values.numel():,} non-zero)")
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_sensitivity(
    scan: Any,  # a sparsify.analysis.sensitivity.SensitivityScan (which imports this module to draw itself)
    path: str | Path,
    *,
    title: str = "sensitivity: each layer pruned alone",
    figsize: Size = (8.0, 4.5),
    dpi: int = 100,
) -> Path:
    """One curve per layer: the metric against that layer's sparsity; dashed: the unpruned model."""
    fig = _figure(figsize, dpi)
    ax = fig.subplots()
    xs = [0.0, *(100 * s for s in scan.sparsities)]
    for name, values in scan.metric.items():
        ax.plot(xs, [scan.baseline, *values], marker="o", label=f"{name} ({scan.params[name]:,})")
    ax.axhline(scan.baseline, color="grey", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xlabel("sparsity of the layer (%)")
    ax.set_ylabel(scan.metric_name)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_mask_layout(
    masks: torch.Tensor | Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    max_rows: int = 32,
    max_cols: int = 32,
    title: str | None = None,
    figsize: Size = (8.0, 4.0),
    dpi: int = 100,
) -> Path:
    """Kept (dark) and pruned (light) positions of one mask or of ``{label: mask}`` side by side.

    A mask is a ``bool`` keep-mask or a weight (non-zero = kept). The top-left ``max_rows ×
    max_cols`` of the 2-D view is drawn, and the grid of the pattern (`infer_pattern`) over it:
    horizontal lines between blocks of output channels, vertical lines between n:m runs.
    """
    from .model_report import infer_pattern

    panels = {"mask": masks} if isinstance(masks, torch.Tensor) else dict(masks)
    if not panels:
        raise ValueError("masks is empty: allowed a tensor or a non-empty {label: mask} dict")
    fig = _figure(figsize, dpi)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, mask) in zip(axes, panels.items()):
        kept = mask.detach().cpu() != 0
        pattern = infer_pattern(kept.to(torch.float32))
        matrix = _as_matrix(_runs_last(kept, pattern).float())[:max_rows, :max_cols]
        ax.imshow(matrix.numpy(), cmap="Greys", vmin=-0.3, vmax=1, aspect="equal", interpolation="nearest")
        rows, cols = matrix.shape
        step = _grid_step(pattern)
        if pattern.startswith("block"):
            for y in range(step, rows, step):
                ax.axhline(y - 0.5, color="tab:red", linewidth=1)
        elif step:
            for x in range(step, cols, step):
                ax.axvline(x - 0.5, color="tab:red", linewidth=1)
        name = pattern if label == pattern else f"{label}: {pattern}"
        ax.set_title(f"{name}, {100 * (1 - kept.float().mean()):.0f}% pruned", fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _grid_step(pattern: str) -> int:
    if pattern.startswith("block "):
        return int(pattern.split()[1])
    if ":" in pattern:
        return int(pattern.split(":")[1].split()[0])
    return 0


def _runs_last(kept: torch.Tensor, pattern: str) -> torch.Tensor:
    """Put the axis n:m runs go along last, so runs are consecutive columns of the 2-D view."""
    if ":" not in pattern:
        return kept
    return kept.movedim(0 if pattern.endswith("dim 0") else 1, -1)
