"""Selection: one matching rule (re.fullmatch), reasons, classifier head, dry run that changes nothing."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsify import MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from sparsify.gradual import GradualPrunerConfig, ModuleGradualPrunerConfig
from sparsify.selection import classifier_head_name, dry_run, explain_module_config


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.fc = nn.Linear(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))
        return self.head(self.fc2(self.fc(x)))


def test_fullmatch_is_the_one_rule() -> None:
    config = GradualPrunerConfig(module_name_configs={"fc": None, r"features\.\d+": ModuleGradualPrunerConfig()},
                                 global_config=ModuleGradualPrunerConfig())
    net = Net()
    assert explain_module_config(config, "fc", net.fc) == (None, "excluded by name rule 'fc'")
    chosen, reason = explain_module_config(config, "fc2", net.fc2)  # "fc" does not match "fc2"
    assert chosen is config.global_config and reason == "global_config"
    assert explain_module_config(config, "features.0", net.features[0])[1] == r"name rule 'features\.\d+'"


def test_explanations_agree_with_the_engine_lookup() -> None:
    net = Net()
    configs = [
        MagnitudePrunerConfig(module_type_configs={"Conv2d": ModuleMagnitudePrunerConfig(target_sparsity=0.3)},
                              module_name_configs={".*fc.*": None}),
        MagnitudePrunerConfig(),
        GradualPrunerConfig(module_type_configs={nn.Linear: None}, global_config=ModuleGradualPrunerConfig(),
                            module_types=["Linear", "Conv2d"]),
        GradualPrunerConfig(module_types=["Conv2d"]),
    ]
    for config in configs:
        for name, module in net.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                assert explain_module_config(config, name, module)[0] is config.get_module_config(name, module)


def test_classifier_head_is_the_last_linear() -> None:
    assert classifier_head_name(Net()) == "head"
    assert classifier_head_name(nn.Sequential(nn.Conv2d(1, 1, 1))) is None


def test_dry_run_lists_every_module_without_changing_it() -> None:
    net = Net()
    before = copy.deepcopy(net.state_dict())
    config = GradualPrunerConfig(
        global_config=ModuleGradualPrunerConfig(pattern="4x1", criterion="snip_momentum", target_sparsity=0.9,
                                                scope="global", max_sparsity=0.98,
                                                scheduler={"kind": "exponential", "end_step": 100, "frequency": 10}),
        module_name_configs={"fc": None}, keep_classifier_dense=True,
    )
    rows = dry_run(net, config)
    by_name = {row.name: row for row in rows}
    assert list(by_name) == ["features.0", "features.1", "features.3", "fc", "fc2", "head"]
    assert by_name["features.0"].action == "prune"
    assert by_name["features.0"].settings["pattern"] == "4x1"
    assert by_name["features.0"].settings["scope"] == "global [0, 0.98]"
    assert by_name["features.1"].reason.startswith("type BatchNorm2d is not supported")
    assert by_name["fc"].action == "skip" and "excluded by name rule 'fc'" in by_name["fc"].reason
    assert by_name["head"].action == "skip" and "classifier head" in by_name["head"].reason
    assert rows.selected() == ["features.0", "features.3", "fc2"]
    text = str(rows)
    assert "exponential(start_step=0, end_step=100, frequency=10)" in text
    assert "3 of 6 modules pruned" in text
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not any(hasattr(m, "weight_orig") for m in net.modules())


def test_dry_run_reports_what_prepare_would_reject() -> None:
    net = Net()
    rows = dry_run(net, GradualPrunerConfig(global_config=ModuleGradualPrunerConfig(pattern="4x1")))
    head = next(r for r in rows if r.name == "head")
    assert head.action == "error" and "multiple of 4" in head.reason


def test_dry_run_works_for_the_engine_config() -> None:
    config = MagnitudePrunerConfig(global_config=ModuleMagnitudePrunerConfig(target_sparsity=0.75,
                                                                             granularity="per_channel"))
    rows = dry_run(Net(), config)
    assert rows.selected() == ["features.0", "features.3", "fc", "fc2", "head"]
    assert rows[0].settings["pattern"] == "per_channel" and rows[0].settings["final"] == "0.7500"
    assert "constant(begin_step=0)" in str(rows)


def test_unknown_config_type_is_an_error() -> None:
    with pytest.raises(TypeError, match="no pruner"):
        dry_run(Net(), object())
