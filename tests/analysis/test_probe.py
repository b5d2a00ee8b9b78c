"""The analysis tools run the pruning machine: a sensitivity scan and a budget with a data-dependent criterion
(Wanda, on a sampler) and a structured pattern (2:4, 4x1 tiles) give exactly the masks sparsify.Pruner gives."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.analysis.budget import allocate_budget
from sparsify.analysis.sensitivity import prunable_layers, sensitivity_scan

WANDA = {"kind": "wanda", "num_batches": 2}


def _model_and_data() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    return model, [torch.randn(16, 8) for _ in range(2)]


def _pruner_mask(model: nn.Module, name: str, config: ModulePrunerConfig, data, sparsity: float) -> torch.Tensor:
    """The keep-mask sparsify.Pruner gives layer ``name`` alone at ``sparsity``."""
    pruner = Pruner(copy.deepcopy(model), PrunerConfig(module_name_configs={re.escape(name): config}), sampler=data)
    pruner.prepare(inplace=True)
    pruner.prune_now(sparsity)
    return dict(pruner.named_masks())[name].expand(model.get_submodule(name).weight.shape)


def test_scan_with_wanda_and_2_4_prunes_each_layer_as_the_pruner_does() -> None:
    model, data = _model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = ModulePrunerConfig(criterion=WANDA, pattern="2:4", target_sparsity=0.5)
    kept: list[dict[str, torch.Tensor]] = []

    def evaluate(m: nn.Module) -> float:
        kept.append({n: (mod.weight != 0) for n, mod in m.named_modules() if isinstance(mod, nn.Linear)})
        return float(sum(int((mod.weight == 0).sum()) for mod in m.modules() if isinstance(mod, nn.Linear)))

    scan = sensitivity_scan(model, evaluate, sparsities=(0.25, 0.5), config=PrunerConfig(global_config=config),
                            sampler=data, progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restored bit for bit
    assert scan.metric == {"0": (32.0, 64.0), "2": (32.0, 64.0), "4": (8.0, 16.0)}  # 1 then 2 zeros per run of 4
    # Wanda by hand for the first layer: |W| x the L2 norm of its input features, the 2 lowest of each run pruned
    weight = before["0.weight"]
    scores = weight.abs() * torch.cat(data).norm(dim=0)
    lowest = scores.view(16, 2, 4).argsort(-1)[..., :2]
    expected = torch.ones(16, 2, 4, dtype=torch.bool).scatter_(-1, lowest, False).view(16, 8)
    assert torch.equal(kept[2]["0"], expected)  # call 0 is the baseline, then layer 0 at 25 %, at 50 %
    for index, (name, sparsity) in enumerate([(n, s) for n in ("0", "2", "4") for s in (0.25, 0.5)], start=1):
        assert torch.equal(kept[index][name], _pruner_mask(model, name, config, data, sparsity)), (name, sparsity)
        assert all(bool(mask.all()) for other, mask in kept[index].items() if other != name)  # alone


def test_budget_with_wanda_and_tiles_is_the_pruners_global_ranking() -> None:
    model, data = _model_and_data()
    config = ModulePrunerConfig(criterion=WANDA, pattern="4x1")
    budget = allocate_budget(model, 0.5, method="global", config=PrunerConfig(global_config=config), sampler=data)
    assert budget.zeros == {"0": 4, "2": 112, "4": 28}  # 144 = half of the 288 weights, in whole 4x1 tiles
    ranked = Pruner(copy.deepcopy(model), PrunerConfig(global_config=ModulePrunerConfig(
        criterion=WANDA, pattern="4x1", scope="global", max_sparsity=0.98)), sampler=data)
    pruned = ranked.prepare()
    ranked.prune_now()
    assert {n: int((m.weight == 0).sum()) for n, m in pruned.named_modules() if isinstance(m, nn.Linear)} == \
        budget.zeros
    # the budget's PrunerConfig keeps the criterion and the pattern and prunes exactly the promised counts
    out = budget.to_pruner_config()
    assert isinstance(out, PrunerConfig) and out.global_config is None
    assert {k: (c.criterion.kind, c.pattern, c.scope, c.target_sparsity) for k, c in out.module_name_configs.items()} \
        == {"0": ("wanda", "4x1", "local", 4 / 128), "2": ("wanda", "4x1", "local", 112 / 128),
            "4": ("wanda", "4x1", "local", 28 / 32)}
    pruner = Pruner(copy.deepcopy(model), out, sampler=data)
    prepared = pruner.prepare()
    pruner.prune_now()
    assert {n: int((m.weight == 0).sum()) for n, m in prepared.named_modules() if isinstance(m, nn.Linear)} == \
        budget.zeros
    with pytest.raises(ValueError, match=r"criterion 'wanda', pattern '4x1' and n_m_ratio None.*to_pruner_config\(\)"):
        budget.to_config()


def test_the_config_decides_which_layers_are_prunable() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    assert prunable_layers(model) == ["1", "2"]  # tables only when named, as in Pruner
    assert prunable_layers(model, config=PrunerConfig(module_types=["Embedding", "Linear"])) == ["0", "1", "2"]
    assert prunable_layers(model, config=PrunerConfig(keep_classifier_dense=True)) == ["1"]
    budget = allocate_budget(model, 0.5, method="uniform", config=PrunerConfig(module_types=["Embedding"]))
    assert budget.params == {"0": 40} and budget.zeros == {"0": 20}
    with pytest.raises(ValueError, match="granularity='per_channel' cannot be given with config="):
        sensitivity_scan(model, lambda m: 0.0, config=PrunerConfig(), granularity="per_channel")
