"""Sensitivity scan mechanics: what it prunes, that it restores the model exactly, and its outputs."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from sparsify.analysis.sensitivity import SensitivityScan, accuracy, prunable_layers, sensitivity_scan


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
                         nn.Linear(16, 3))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def _zero_fraction(layer: str):
    """An evaluate() that records the zero fraction of each layer's effective weight at each call."""
    seen: list[dict[str, float]] = []

    def evaluate(model: nn.Module) -> float:
        model(torch.zeros(1, 1, 8, 8))  # refresh masked weights the way a real evaluation does
        seen.append({name: float((m.weight == 0).float().mean()) for name, m in model.named_modules()
                     if isinstance(m, (nn.Linear, nn.Conv2d))})
        return seen[-1][layer]

    return evaluate, seen


def test_each_layer_is_pruned_alone_and_restored() -> None:
    model = _model()
    before = _state(model)
    evaluate, seen = _zero_fraction("3")
    scan = sensitivity_scan(model, evaluate, sparsities=(0.5, 0.9), progress=False)
    _assert_same(model, before)
    assert scan.layers == ["0", "3", "5"] == prunable_layers(model)
    assert scan.params == {"0": 36, "3": 2304, "5": 48}
    assert scan.baseline == 0.0
    # call 0: baseline; then layer 0 at 0.5, 0.9; layer 3 at 0.5, 0.9; layer 5 at 0.5, 0.9
    assert len(seen) == 7
    assert seen[1] == {"0": 0.5, "3": 0.0, "5": 0.0}
    assert seen[4] == pytest.approx({"0": 0.0, "3": 0.9, "5": 0.0}, abs=1e-3)
    assert scan.metric["3"] == pytest.approx((0.5, 0.9), abs=1e-3)
    assert scan.metric["0"] == (0.0, 0.0)


def test_prepared_model_is_pruned_on_top_of_its_masks_and_restored() -> None:
    model = _model()
    config = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(target_sparsity=0.5))
    pruner = MagnitudePruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    before = _state(prepared)
    evaluate, _ = _zero_fraction("3")
    scan = sensitivity_scan(prepared, evaluate, sparsities=(0.25, 0.75), progress=False)
    _assert_same(prepared, before)
    assert scan.baseline == pytest.approx(0.5)
    assert scan.metric["3"] == pytest.approx((0.5, 0.75), abs=1e-3)  # 0.25 is below the current mask
    assert float((prepared[3].weight == 0).float().mean()) == pytest.approx(0.5)  # hook refreshed back


def test_model_restored_when_evaluate_fails() -> None:
    model = _model()
    before = _state(model)
    calls = []

    def evaluate(m: nn.Module) -> float:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return 1.0

    with pytest.raises(RuntimeError, match="boom"):
        sensitivity_scan(model, evaluate, progress=False)
    _assert_same(model, before)


def test_patterns_layers_and_errors() -> None:
    model = _model()
    evaluate, _ = _zero_fraction("3")
    scan = sensitivity_scan(model, evaluate, sparsities=(0.5,), layers=r"\d", granularity="per_channel",
                            progress=False)
    assert scan.layers == ["0", "3", "5"]
    rows_zero = float((model[3].weight.abs().sum(1) == 0).float().mean())
    assert rows_zero == 0.0  # restored
    assert scan.metric["3"] == (0.5,)
    with pytest.raises(ValueError, match="sparsities=.*1.5"):
        sensitivity_scan(model, evaluate, sparsities=(0.5, 1.5))
    with pytest.raises(ValueError, match="matches no prunable layer"):
        sensitivity_scan(model, evaluate, layers="conv.*")
    with pytest.raises(ValueError, match=r"\['fc'\], which are not prunable"):
        sensitivity_scan(model, evaluate, layers=["fc"])
    with pytest.raises(TypeError, match="evaluate must be a callable"):
        sensitivity_scan(model, 0.5)


def test_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    sensitivity_scan(_model(), lambda m: 1.0, sparsities=(0.5,), progress=True)
    assert "sensitivity" in capsys.readouterr().err


def test_accuracy_helper() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [2.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])
    model.train()
    assert accuracy((x, y))(model) == 0.75
    assert model.training  # mode restored
    assert accuracy(DataLoader(TensorDataset(x, y), batch_size=3))(model) == 0.75
    with pytest.raises(ValueError, match="no example"):
        accuracy([])(model)


def test_outputs_round_trip(tmp_path) -> None:
    scan = SensitivityScan(0.9, (0.5, 0.9), {"a": (0.88, 0.5), "b": (0.9, 0.85)}, {"a": 10, "b": 1000},
                           metric_name="accuracy")
    assert scan.drop("a") == pytest.approx([0.02, 0.4])
    assert SensitivityScan.from_json(scan.to_json()) == scan
    (tmp_path / "scan.json").write_text(scan.to_json())
    assert SensitivityScan.from_json(tmp_path / "scan.json") == scan
    text = scan.to_text()
    assert text.splitlines()[0].split() == ["layer", "params", "50%", "90%"]
    assert "0.5000" in text and "accuracy of the unpruned model: 0.9000" in text
    assert scan.to_markdown().splitlines()[2] == "| a | 10 | 0.8800 | 0.5000 |"
    rows = list(csv.DictReader(io.StringIO(scan.to_csv())))
    assert len(rows) == 4 and rows[1]["drop"] == "0.4"
    loss = SensitivityScan(1.0, (0.5,), {"a": (1.5,)}, {"a": 10}, higher_is_better=False)
    assert loss.drop("a") == [0.5]
