"""Pictures: each one is written, is a real PNG of the expected pixel size, and is not blank."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from sparsify.analysis.model_report import model_report
from sparsify.analysis.sensitivity import SensitivityScan
from sparsify.patterns import n_m_mask, ranked_mask

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from sparsify.analysis import plots  # noqa: E402


def _check_png(path: Path, size: tuple[int, int]) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is not None and len(colours) > 10  # something was drawn


@pytest.fixture
def pruned() -> tuple[nn.Module, nn.Module]:
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 6 * 6, 32), nn.Linear(32, 10))
    config = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(target_sparsity=0.7))
    pruner = MagnitudePruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    return model, prepared


def test_weight_heatmap(tmp_path: Path, pruned) -> None:
    model, prepared = pruned
    _check_png(plots.plot_weight_heatmap(model[3], tmp_path / "a.png", after=prepared[3].weight, title="fc"),
               (800, 400))
    _check_png(plots.plot_weight_heatmap(model[0].weight, tmp_path / "b.png", figsize=(5, 3), dpi=80), (400, 240))


def test_layer_sparsity(tmp_path: Path, pruned) -> None:
    _, prepared = pruned
    _check_png(plots.plot_layer_sparsity(model_report(prepared), tmp_path / "bars.png"), (800, 400))
    _check_png(plots.plot_layer_sparsity(prepared, tmp_path / "sub" / "bars.png", dpi=50), (400, 200))


def test_weight_histogram(tmp_path: Path, pruned) -> None:
    model, prepared = pruned
    _check_png(plots.plot_weight_histogram(prepared, tmp_path / "h.png"), (800, 400))
    _check_png(plots.plot_weight_histogram({"fc": model[3].weight}, tmp_path / "h2.png"), (800, 400))
    _check_png(plots.plot_weight_histogram(model[3].weight, tmp_path / "h3.png"), (800, 400))
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['fc9'\]"):
        plots.plot_weight_histogram(prepared, tmp_path / "h4.png", layers=["fc9"])


def test_sensitivity_curves(tmp_path: Path) -> None:
    scan = SensitivityScan(0.9, (0.5, 0.9), {"a": (0.88, 0.5), "b": (0.9, 0.85)}, {"a": 10, "b": 100})
    _check_png(scan.plot(tmp_path / "s.png"), (800, 450))


def test_mask_layouts(tmp_path: Path) -> None:
    w = torch.randn(32, 32)
    masks = {"unstructured": ranked_mask(w.abs(), 0.5), "blocks": ranked_mask(w.abs(), 0.5, block_size=4),
             "n:m": n_m_mask(w.abs(), (2, 4))}
    _check_png(plots.plot_mask_layout(masks, tmp_path / "m.png", figsize=(12, 4)), (1200, 400))
    conv = torch.randn(16, 8, 3, 3)
    _check_png(plots.plot_mask_layout(conv * n_m_mask(conv.abs(), (1, 2)), tmp_path / "c.png"), (800, 400))
    with pytest.raises(ValueError, match="masks is empty"):
        plots.plot_mask_layout({}, tmp_path / "e.png")


def test_png_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"path='.*x\.jpg' is invalid.*\.png"):
        plots.plot_weight_heatmap(torch.randn(4, 4), tmp_path / "x.jpg")


def test_missing_matplotlib_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'sparsify-coreml\[plot\]'"):
        plots.plot_weight_heatmap(torch.randn(4, 4), tmp_path / "x.png")
