"""Per-layer budgets: exact global counts, the allocator by hand, and budget vs uniform on digits."""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsify import MagnitudePruner, PolynomialDecayScheduler
from sparsify.analysis.budget import allocate_budget, sparsity_for_count
from sparsify.analysis.sensitivity import SensitivityScan, accuracy, sensitivity_scan
from sparsify.scope import pruned_count


def _zeros_after_pruning(model: nn.Module, config) -> dict[str, int]:
    pruner = MagnitudePruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    return {name: int((m.weight == 0).sum()) for name, m in prepared.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


def test_sparsity_for_count_is_exact() -> None:
    for num in (1, 7, 36, 288, 1000, 4097, 65536, 300_001):
        for zeros in {0, 1, num // 3, num // 2, (9 * num) // 10, num - 1, num}:
            assert pruned_count(num, sparsity_for_count(num, zeros)) == zeros, (num, zeros)
    with pytest.raises(ValueError, match="zeros=11"):
        sparsity_for_count(10, 11)


@pytest.mark.parametrize("method", ["erk", "magnitude", "uniform"])
@pytest.mark.parametrize("target", [0.3, 0.77, 0.9])
def test_global_target_met_exactly_by_the_pruner(method: str, target: float) -> None:
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(3, 16, 3), nn.Conv2d(16, 32, 3)), head=nn.Linear(32, 10)))
    budget = allocate_budget(model, target, method=method)
    total = sum(budget.params.values())
    assert sum(budget.zeros.values()) == pruned_count(total, target)
    config = budget.to_config()
    assert list(config.module_name_configs) == [re.escape(n) for n in ("features.0", "features.1", "head")]
    zeros = _zeros_after_pruning(model, config)
    assert zeros == budget.zeros  # exactly what the budget promised, layer by layer
    if method == "uniform":
        assert all(abs(s - target) < 1 / budget.params[n] for n, s in budget.sparsities.items())


def test_erk_prunes_big_layers_more() -> None:
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 128), nn.Linear(128, 128))
    budget = allocate_budget(model, 0.8)
    assert budget.method == "erk"
    s = budget.sparsities
    assert s["0"] < s["1"] < s["2"]


def test_scan_allocation_by_hand() -> None:
    # 'a' (100 weights) is free to prune up to 50 % then expensive; 'b' (100 weights) costs a little
    # everywhere. Global 50 % = 100 zeros: 'a' takes its free 50, 'b' the other 50.
    scan = SensitivityScan(1.0, (0.5, 0.9), {"a": (1.0, 0.0), "b": (0.9, 0.8)}, {"a": 100, "b": 100})
    budget = allocate_budget(None, 0.5, scan=scan)
    assert budget.method == "scan"
    assert budget.zeros == {"a": 50, "b": 50}
    assert budget.predicted_drop == pytest.approx(0.1)
    assert budget.uniform_drop == pytest.approx(0.1)
    # at 70 % (139 zeros: the engine's float32 count): b's hull slope 0.2/90 per weight beats a's
    # 1.0/40 beyond 50 %, so b takes all the rest
    budget = allocate_budget(None, 0.7, scan=scan)
    assert pruned_count(200, 0.7) == 139
    assert budget.zeros == {"a": 50, "b": 89}
    assert budget.predicted_drop < budget.uniform_drop
    # equal (free) slopes are spread: both layers reach 25 % before either goes further
    flat = SensitivityScan(1.0, (0.5, 0.9), {"a": (1.0, 1.0), "b": (1.0, 1.0)}, {"a": 100, "b": 300})
    assert allocate_budget(None, 0.25, scan=flat).sparsities == pytest.approx({"a": 0.25, "b": 0.25})


def test_bounds_and_errors() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 512), nn.Linear(512, 512))
    budget = allocate_budget(model, 0.6, method="magnitude", min_sparsity={"0": 0.5}, max_sparsity=0.7)
    assert budget.sparsities["0"] >= 0.5 and max(budget.sparsities.values()) <= 0.7 + 1e-9
    with pytest.raises(ValueError, match="unreachable"):
        allocate_budget(model, 0.9, max_sparsity=0.8)
    scan = SensitivityScan(1.0, (0.5,), {"a": (1.0,)}, {"a": 100})
    with pytest.raises(ValueError, match="largest scanned sparsity"):
        allocate_budget(None, 0.6, scan=scan)
    with pytest.raises(ValueError, match="method='best'"):
        allocate_budget(model, 0.5, method="best")
    with pytest.raises(ValueError, match="target_sparsity=1.2"):
        allocate_budget(model, 1.2)
    with pytest.raises(ValueError, match="needs scan="):
        allocate_budget(model, 0.5, method="scan")
    with pytest.raises(ValueError, match=r"max_sparsity\['1'\]=2.0"):
        allocate_budget(model, 0.5, max_sparsity={"1": 2.0})
    with pytest.raises(ValueError, match="target_sparsity cannot be given"):
        budget.to_config(target_sparsity=0.5)


def test_to_config_options_and_outputs() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 4))
    budget = allocate_budget(model, 0.5)
    config = budget.to_config(scheduler=PolynomialDecayScheduler(update_steps=[1, 2, 3]))
    schedulers = [c.scheduler for c in config.module_name_configs.values()]
    assert schedulers[0] == schedulers[1] and schedulers[0] is not schedulers[1]
    assert config.global_config is None  # only the budgeted layers are pruned
    text = budget.to_text()
    assert text.splitlines()[0].split() == ["layer", "params", "sparsity", "zeros"]
    assert "global" in text and "50.00%" in text
    assert budget.to_markdown().splitlines()[1] == "| --- | ---: | ---: | ---: |"
    assert budget.as_dict()["global_sparsity"] == pytest.approx(0.5, abs=1 / 272)
    # a layer left at 0 is not pruned at all (no mask, no Core ML metadata)
    scan = SensitivityScan(1.0, (0.5,), {"a": (0.0,), "b": (1.0,)}, {"a": 100, "b": 100})
    budget = allocate_budget(None, 0.25, scan=scan)
    assert budget.zeros == {"a": 0, "b": 50}
    configs = budget.to_config().module_name_configs
    assert configs["a"] is None and configs["b"].target_sparsity == 0.5


# -- on a real model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_model() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=generator)
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        for batch in train[torch.randperm(len(train), generator=generator)].split(64):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval(), (x[train], y[train]), (x[test], y[test])


def test_budget_from_a_scan_beats_uniform_on_digits(digits_model) -> None:
    model, (train_x, train_y), test = digits_model
    evaluate = accuracy(test)
    assert evaluate(model) > 0.9

    def neg_loss(m: nn.Module) -> float:  # scan on training data, judge on the test split
        with torch.no_grad():
            return -float(nn.functional.cross_entropy(m(train_x[:600]), train_y[:600]))

    before = {k: v.clone() for k, v in model.state_dict().items()}
    scan = sensitivity_scan(model, neg_loss, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95), progress=False,
                            metric_name="-loss")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scan.layers == ["0", "3", "7", "9"]
    assert scan.drop("0")[-1] > scan.drop("7")[-1]  # 72 weights of the first conv matter more

    target = 0.85
    scanned = allocate_budget(model, target, scan=scan)
    uniform = allocate_budget(model, target, method="uniform")
    for budget in (scanned, uniform):
        assert sum(budget.zeros.values()) == pruned_count(sum(budget.params.values()), target)
    assert scanned.sparsities["0"] < scanned.sparsities["7"]
    if scanned.zeros["0"] == 0:
        assert scanned.to_config().module_name_configs["0"] is None  # not pruned at all
    assert scanned.predicted_drop < scanned.uniform_drop

    def pruned_accuracy(budget) -> float:
        pruner = MagnitudePruner(model, budget.to_config())
        prepared = pruner.prepare()
        pruner.step()
        zeros = sum(int((m.weight == 0).sum()) for m in prepared.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
        assert zeros == sum(budget.zeros.values())
        return evaluate(prepared)

    assert pruned_accuracy(scanned) > pruned_accuracy(uniform) + 0.1
    # the cheap proxies need no scan and also beat uniform here
    assert pruned_accuracy(allocate_budget(model, target, method="erk")) > pruned_accuracy(uniform)
