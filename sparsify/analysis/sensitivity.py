"""Sensitivity scan: how much does the metric suffer when one layer alone is pruned?

`sensitivity_scan` prunes each layer a `sparsify.PrunerConfig` selects in turn to each sparsity of a sweep,
calls ``evaluate(model)`` and restores the layer's weights bit for bit before moving on, so the model is
left exactly as it was — no copy of the model is made. The masks are the pruning machine's own
(`sparsify.analysis.probe.LayerProbe`): the config's criterion (data-dependent ones read ``sampler``), its
pattern and the module types and rules it selects, exactly as ``sparsify.prune(model, config)`` would prune
that layer to that sparsity. It works on plain, prepared (masked) and finalized models: a masked layer is
pruned on top of its current mask.

The result, `SensitivityScan`, prints as a table (`SensitivityScan.to_text`, Markdown,
CSV, JSON), draws as curves (`SensitivityScan.plot`) and feeds
`sparsify.analysis.budget.allocate_budget`, which turns it into per-layer sparsities.

``evaluate`` is any ``model -> float``; `accuracy` builds one from data. Say
``higher_is_better=False`` for a loss.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from .._checks import check_flags
from .._progress import tqdm
from .._table import markdown_table, text_table
from ..config import ModulePrunerConfig, OptimizationConfig, PrunerConfig
from .probe import LayerProbe, selected_layers

__all__ = ["DEFAULT_SPARSITIES", "SensitivityScan", "accuracy", "prunable_layers", "sensitivity_scan"]

DEFAULT_SPARSITIES = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95)

Evaluate = Callable[[nn.Module], float]


def accuracy(data: Any, batch_size: int = 512) -> Evaluate:
    """An ``evaluate(model) -> float`` giving top-1 accuracy (0-1) on ``data``.

    ``data`` is a pair of tensors ``(inputs, labels)`` or an iterable of ``(inputs, labels)`` batches
    (a ``DataLoader``). The model is put in ``eval()`` mode for the evaluation and its mode restored.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
        batches: Iterable[Any] = [(inputs[i : i + batch_size], labels[i : i + batch_size])
                                  for i in range(0, len(inputs), batch_size)]
    else:
        batches = data

    def evaluate(model: nn.Module) -> float:
        training = model.training
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        correct = total = 0
        try:
            with torch.no_grad():
                for inputs, labels in batches:
                    predicted = model(inputs.to(device)).argmax(-1)
                    correct += int((predicted == labels.to(device)).sum())
                    total += len(labels)
        finally:
            model.train(training)
        if total == 0:
            raise ValueError("accuracy(): the data holds no example")
        return correct / total

    return evaluate


def prunable_layers(
    model: nn.Module, layers: Sequence[str] | str | None = None, config: OptimizationConfig | None = None
) -> list[str]:
    """Names of the modules a scan or budget covers: those ``config`` prunes (`sparsify.Pruner`'s selection,
    `sparsify.analysis.probe.selected_layers`; default ``PrunerConfig()``: every ``Linear``, ``Conv1d/2d/3d``
    and transformers ``Conv1D``), narrowed by ``layers``.

    ``layers``: a string is a regular expression matched in full against module names; a list names them exactly.
    """
    return selected_layers(model, config, layers)


def scan_config(
    config: OptimizationConfig | None, granularity: str = "per_scalar", block_size: int = 1,
    param_name: str = "weight",
) -> OptimizationConfig:
    """``config``, or, without one, the magnitude config the older keyword arguments describe."""
    legacy = {"granularity": granularity, "block_size": block_size, "param_name": param_name}
    if config is None:
        return PrunerConfig(global_config=ModulePrunerConfig(**legacy))
    given = {k: v for k, v in legacy.items() if v != attrs.fields_dict(ModulePrunerConfig)[k].default}
    if given:
        raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in given.items())} cannot be given with config=: "
                         "set them in the config's module configs")
    if not isinstance(config, OptimizationConfig):
        raise TypeError(f"config must be a PrunerConfig, got {type(config).__name__}")
    return config


@attrs.frozen
class SensitivityScan:
    """``metric[layer][i]`` is the metric with ``layer`` alone pruned to ``sparsities[i]``."""

    baseline: float
    sparsities: tuple[float, ...]
    metric: dict[str, tuple[float, ...]]
    params: dict[str, int]
    higher_is_better: bool = True
    metric_name: str = "metric"

    @property
    def layers(self) -> list[str]:
        return list(self.metric)

    def drop(self, layer: str) -> list[float]:
        """How much worse than the baseline each sparsity makes the metric (positive = worse)."""
        sign = 1.0 if self.higher_is_better else -1.0
        return [sign * (self.baseline - value) for value in self.metric[layer]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline, "sparsities": list(self.sparsities),
            "metric": {k: list(v) for k, v in self.metric.items()}, "params": dict(self.params),
            "higher_is_better": self.higher_is_better, "metric_name": self.metric_name,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SensitivityScan:
        check_flags("SensitivityScan.from_dict", higher_is_better=data.get("higher_is_better", True))
        return cls(
            baseline=float(data["baseline"]), sparsities=tuple(map(float, data["sparsities"])),
            metric={k: tuple(map(float, v)) for k, v in data["metric"].items()},
            params={k: int(v) for k, v in data["params"].items()},
            higher_is_better=data.get("higher_is_better", True), metric_name=data.get("metric_name", "metric"),
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str | Path) -> SensitivityScan:
        """Read `to_json` output, from a string or a file path."""
        if isinstance(text, Path) or not text.lstrip().startswith("{"):
            text = Path(text).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    def _rows(self) -> tuple[list[str], list[list[str]]]:
        header = ["layer", "params", *(f"{100 * s:g}%" for s in self.sparsities)]
        rows = [[name, f"{self.params[name]:,}", *(f"{v:.4f}" for v in values)] for name, values in self.metric.items()]
        return header, rows

    def to_text(self) -> str:
        header, rows = self._rows()
        lines = text_table([header], rows, left=1)
        direction = "higher" if self.higher_is_better else "lower"
        return "\n".join([*lines, "", f"{self.metric_name} of the unpruned model: {self.baseline:.4f} "
                                       f"({direction} is better); each cell prunes that layer alone."])

    def to_markdown(self) -> str:
        header, rows = self._rows()
        return "\n".join(markdown_table(header, rows))

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["layer", "params", "sparsity", self.metric_name, "drop"])
        for name, values in self.metric.items():
            for sparsity, value, drop in zip(self.sparsities, values, self.drop(name)):
                writer.writerow([name, self.params[name], sparsity, value, drop])
        return out.getvalue()

    def __str__(self) -> str:
        return self.to_text()

    def plot(self, path: str | Path, **kwargs: Any) -> Path:
        """Draw the curves to a PNG (`sparsify.analysis.plots.plot_sensitivity`; needs matplotlib)."""
        from .plots import plot_sensitivity

        return plot_sensitivity(self, path, **kwargs)


def sensitivity_scan(
    model: nn.Module,
    evaluate: Evaluate,
    *,
    sparsities: Sequence[float] = DEFAULT_SPARSITIES,
    layers: Sequence[str] | str | None = None,
    config: OptimizationConfig | None = None,
    sampler: Any = None,
    granularity: str = "per_scalar",
    block_size: int = 1,
    param_name: str = "weight",
    higher_is_better: bool = True,
    metric_name: str = "metric",
    progress: bool = True,
) -> SensitivityScan:
    """Prune each layer alone to each sparsity (as ``config`` would), evaluate, restore; return the table.

    Args:
        model: the model to probe; it is changed during the scan and restored exactly afterwards
            (also when ``evaluate`` raises).
        evaluate: ``model -> float``, e.g. `accuracy`; called ``1 + layers × sparsities`` times.
        sparsities: the sweep, each in ``[0, 1]`` (a pattern caps it: n:m at ``n / m``).
        layers: which of the layers ``config`` selects (see `prunable_layers`); default all of them.
        config: a `sparsify.PrunerConfig` (or Core ML Tools' ``MagnitudePrunerConfig``): which modules, and
            each one's criterion and pattern; its target sparsity only decides the pattern where it matters
            (``pattern="2:4"`` below or above ``n / m``). Default: magnitude, unstructured, every ``Linear``
            / ``Conv`` / ``Conv1D``.
        sampler: calibration data for a data-dependent criterion (Wanda, SparseGPT, SNIP...), as for
            ``sparsify.Pruner(model, config, sampler=...)``; each layer's scores are computed on the model
            as it is, with only that layer pruned.
        granularity, block_size, param_name: without ``config``, the Core ML pattern and the parameter to
            prune (as in ``ModuleMagnitudePrunerConfig``).
        higher_is_better: ``False`` when ``evaluate`` returns a loss.
        metric_name: a label for tables and plots.
        progress: show a tqdm progress bar.
    """
    if not callable(evaluate):
        raise TypeError(f"evaluate must be a callable model -> float, got {type(evaluate).__name__}")
    check_flags("sensitivity_scan", higher_is_better=higher_is_better, progress=progress)
    sweep = tuple(float(s) for s in sparsities)
    if not sweep or any(not 0.0 <= s <= 1.0 for s in sweep):
        raise ValueError(f"sparsities={list(sparsities)!r} is invalid: allowed a non-empty list of values in [0, 1]")
    config = scan_config(config, granularity, block_size, param_name)
    probe = LayerProbe(model, config, sampler=sampler, layers=layers)
    baseline = float(evaluate(model))
    metric: dict[str, tuple[float, ...]] = {}
    params: dict[str, int] = {}
    bar = tqdm(total=len(probe.names) * len(sweep), desc="sensitivity", disable=not progress, leave=False)
    try:
        with probe:
            for name in probe.names:
                params[name] = probe.weight_count(name)
                values = []
                for sparsity in sweep:
                    bar.set_postfix_str(f"{name} @ {sparsity:g}")
                    with probe.pruned({name: sparsity}):
                        values.append(float(evaluate(model)))
                    bar.update()
                metric[name] = tuple(values)
    finally:
        bar.close()
    return SensitivityScan(baseline, sweep, metric, params, higher_is_better, metric_name)
