"""Selection: one matching rule (re.fullmatch), reasons, classifier head, dry run that changes nothing and agrees
with what ``prepare()`` prunes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsify import MagnitudePrunerConfig, ModuleMagnitudePrunerConfig, ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.pruning import classifier_head_name, dry_run


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
    config = PrunerConfig(module_name_configs={"fc": None, r"features\.\d+": ModulePrunerConfig()},
                          global_config=ModulePrunerConfig())
    net = Net()
    assert config.lookup("fc", net.fc) == (None, "excluded by name rule 'fc'")
    chosen, reason = config.lookup("fc2", net.fc2)  # "fc" does not match "fc2"
    assert chosen is config.global_config and reason == "global_config"
    assert config.lookup("features.0", net.features[0])[1] == r"name rule 'features\.\d+'"


def test_lookup_reasons_for_types_and_filters() -> None:
    net = Net()
    config = PrunerConfig(module_type_configs={nn.Linear: None, "Conv2d": ModulePrunerConfig()},
                          global_config=ModulePrunerConfig())
    assert config.lookup("fc", net.fc) == (None, "excluded by type rule 'Linear'")
    assert config.lookup("features.0", net.features[0])[1] == "type rule 'Conv2d'"
    only_conv = PrunerConfig(module_types=["Conv2d"])
    assert only_conv.lookup("fc", net.fc) == (None, "type Linear not in module_types ['Conv2d']")
    assert PrunerConfig(module_type_configs={"Conv2d": ModulePrunerConfig()}).lookup("fc", net.fc) == (
        None, "no rule matches and global_config is None")


def test_dry_run_selects_exactly_what_prepare_prunes() -> None:
    configs = [
        MagnitudePrunerConfig(module_type_configs={"Conv2d": ModuleMagnitudePrunerConfig(target_sparsity=0.3)},
                              module_name_configs={".*fc.*": None}),
        MagnitudePrunerConfig(),
        PrunerConfig(module_type_configs={nn.Linear: None}, global_config=ModulePrunerConfig(),
                     module_types=["Linear", "Conv2d"]),
        PrunerConfig(module_types=["Conv2d"]),
        PrunerConfig(global_config=ModulePrunerConfig(pattern="4x1"), keep_classifier_dense=True),
        PrunerConfig(global_config=ModulePrunerConfig(pattern="4x1")),  # the head cannot take 4x1: skipped
    ]
    expected = [["features.0", "features.3"], ["features.0", "features.3", "fc", "fc2", "head"],
                ["features.0", "features.3"], ["features.0", "features.3"], ["features.0", "features.3", "fc", "fc2"],
                ["features.0", "features.3", "fc", "fc2"]]
    for config, names in zip(configs, expected):
        assert dry_run(Net(), config).selected() == names
        pruner = Pruner(Net(), config)
        pruner.prepare()
        assert list(pruner.targets) == names


def test_classifier_head_is_the_last_linear() -> None:
    assert classifier_head_name(Net()) == "head"
    assert classifier_head_name(nn.Sequential(nn.Conv2d(1, 1, 1))) is None


def test_dry_run_lists_every_module_without_changing_it() -> None:
    net = Net()
    before = copy.deepcopy(net.state_dict())
    config = PrunerConfig(
        global_config=ModulePrunerConfig(pattern="4x1", criterion="snip_momentum", target_sparsity=0.9,
                                         scope="global", max_sparsity=0.98,
                                         scheduler={"kind": "exponential", "end_step": 100, "frequency": 10}),
        module_name_configs={"fc": None}, keep_classifier_dense=True,
    )
    rows = dry_run(net, config)
    by_name = {row.name: row for row in rows}
    assert list(by_name) == ["features.0", "features.1", "features.3", "fc", "fc2", "head"]
    assert by_name["features.0"].action == "prune"
    assert by_name["features.0"].settings["pattern"] == "4x1"
    assert by_name["features.0"].settings["criterion"] == "snip_momentum"
    assert by_name["features.0"].settings["scope"] == "global [0, 0.98]"
    assert by_name["features.1"].reason.startswith("type BatchNorm2d is not supported")
    assert by_name["fc"].action == "skip" and "excluded by name rule 'fc'" in by_name["fc"].reason
    assert by_name["head"].action == "skip" and "classifier head" in by_name["head"].reason
    assert rows.selected() == ["features.0", "features.3", "fc2"]
    text = str(rows)
    lines = text.splitlines()
    assert max(map(len, lines[: len(rows) + 2])) <= 100  # the table; long cells are keyed, spelled out below
    assert lines[0].split() == ["name", "type", "shape", "action", "reason", "settings"]
    assert lines[2].split() == ["features.0", "Conv2d", "8x3x3x3", "prune", "global_config", "#1"]
    assert lines[3].split() == ["features.1", "BatchNorm2d", "8", "skip", "*1"]
    assert lines[len(rows) + 2:] == [
        "*1 type BatchNorm2d is not supported",
        "*2 excluded by name rule 'fc'",
        "*3 classifier head kept dense (keep_classifier_dense)",
        "#1 pattern 4x1, criterion snip_momentum, final 0.9000, scope global [0, 0.98], "
        "schedule exponential(start_step=0, end_step=100, frequency=10)",
        "3 of 6 modules pruned, covering 856 of 1008 listed weights",
    ]
    assert "3 of 6 modules pruned" in text
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert not any(hasattr(m, "weight_orig") for m in net.modules())


def test_dry_run_reports_what_prepare_would_reject() -> None:
    net = Net()
    config = PrunerConfig(global_config=ModulePrunerConfig(n_m_ratio=(2, 4), scope="global"))
    rows = dry_run(net, config)
    features = next(r for r in rows if r.name == "features.0")  # 3 input channels: no whole runs of 4
    assert features.action == "error"
    assert features.reason == (
        "module 'features.0' (Conv2d): n_m_ratio=(2, 4) ranked globally needs the input channels (3, weight shape "
        "(8, 3, 3, 3)) to be a multiple of m=4; use scope='local' (partial runs padded) or exclude this module"
    )
    with pytest.raises(ValueError, match=r"module 'features.0' \(Conv2d\): n_m_ratio=\(2, 4\) ranked globally"):
        Pruner(net, config).prepare()
    assert [r.name for r in rows if r.action == "prune"] == ["features.3", "fc", "fc2", "head"]


def test_dry_run_skips_a_layer_the_tile_does_not_divide() -> None:
    rows = dry_run(Net(), PrunerConfig(global_config=ModulePrunerConfig(pattern="4x1")))
    head = next(r for r in rows if r.name == "head")
    assert head.action == "skip" and head.reason.startswith("skipped: module 'head' (Linear): pattern '4x1'")



def test_dry_run_says_why_the_pattern_cannot_apply() -> None:
    rows = dry_run(Net(), PrunerConfig(global_config=ModulePrunerConfig(pattern="4x1")))
    head = next(r for r in rows if r.name == "head")
    assert "output channels (10, weight shape (10, 8)) to be a multiple of 4" in head.reason


def test_dry_run_works_for_the_engine_config() -> None:
    config = MagnitudePrunerConfig(global_config=ModuleMagnitudePrunerConfig(target_sparsity=0.75,
                                                                             granularity="per_channel"))
    rows = dry_run(Net(), config)
    assert rows.selected() == ["features.0", "features.3", "fc", "fc2", "head"]
    assert rows[0].settings["pattern"] == "per_channel" and rows[0].settings["final"] == "0.7500"
    by_name = {row.name: row for row in rows}
    assert by_name["fc"].settings["pattern"] == "unstructured"  # a Linear has no channel granularity in Core ML Tools
    assert "constant(begin_step=0)" in str(rows)


def test_unknown_config_type_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"config must be .*got object"):  # as Pruner(model, object()) says
        dry_run(Net(), object())
