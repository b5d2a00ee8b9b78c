"""Patterns are as open as criteria: a pattern defined here, registered with `register_pattern`, prunes with every
criterion, in both scopes, on a schedule — exact counts, masks made of its groups — and round-trips through configs.
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from pathlib import Path

import attrs
import pytest
import torch
from torch import nn

import sparsify
from sparsify import ModulePrunerConfig, Pruner, PrunerConfig, dry_run, register_pattern
from sparsify.criteria import GradSampler, criterion_kinds
from sparsify.patterns import ColumnLayout, Pattern, pattern_from_dict, pattern_kinds, pruned_count
from sparsify.pruning.plan import hook_fields
from sparsify.pruning.sparsity_record import module_config as config_from_record


@register_pattern
@attrs.frozen
class RowPairs(Pattern):
    """Weights ``(2r, j)`` and ``(2r + 1, j)`` — two adjacent output rows at one input position — pruned together."""

    kind = "test_row_pairs"

    def check(self, shape, where):
        if shape[0] % 2:
            raise ValueError(f"{where}: row pairs need an even number of output channels, got {shape[0]}")

    def describe(self):
        return "pairs of adjacent output rows"

    @property
    def label(self):
        return "row pairs"

    def groups(self, scores):
        return scores.detach().float().reshape(scores.shape[0] // 2, 2, -1).mean(1), 2

    def expand(self, keep, scores):
        return keep.unsqueeze(1).expand(-1, 2, -1).reshape(scores.shape)

    def column_layout(self, shape, chosen):
        return ColumnLayout("groups")  # a pair lies in one column: SparseGPT may end its blocks anywhere


@register_pattern
@attrs.frozen
class ColumnRuns(Pattern):
    """``width`` consecutive ``flatten(1)`` columns of one row pruned together (the default column layout)."""

    kind = "test_column_runs"
    width: int = 3

    def check(self, shape, where):
        if math.prod(shape[1:]) % self.width:
            raise ValueError(f"{where}: runs of {self.width} columns need a multiple of {self.width} columns")

    def describe(self):
        return f"runs of {self.width} columns"

    def groups(self, scores):
        return scores.detach().float().reshape(scores.shape[0], -1, self.width).mean(-1), self.width

    def expand(self, keep, scores):
        return keep.unsqueeze(-1).expand(-1, -1, self.width).reshape(scores.shape)


PATTERNS = {"row_pairs": (RowPairs(), 2), "column_runs": (ColumnRuns(), 3)}
CRITERIA = {
    "magnitude": "magnitude",
    "gradient": "gradient",
    "snip": "snip",
    "snip_momentum": {"kind": "snip_momentum", "decay": 0.8},
    "mfac": {"kind": "mfac", "num_grads": 4, "fisher_block_size": 64},
    "sparsegpt": {"kind": "sparsegpt", "num_batches": 2, "block_size": 8},
    "wanda": {"kind": "wanda", "num_batches": 2},
}
TARGET = 0.5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(3, 8, 3)), ("relu1", nn.ReLU()),  # [8, 3, 3, 3]: 27 columns
        ("conv2", nn.Conv2d(8, 6, 3)), ("relu2", nn.ReLU()), ("flatten", nn.Flatten()),  # [6, 8, 3, 3]: 72
        ("fc1", nn.Linear(96, 12)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(12, 4)),
    ]))


def _respects(pattern: Pattern, keep: torch.Tensor) -> bool:
    """Every group of the pattern is wholly kept or wholly pruned."""
    if isinstance(pattern, RowPairs):
        pairs = keep.reshape(keep.shape[0] // 2, 2, -1)
        return bool((pairs[:, 0] == pairs[:, 1]).all())
    runs = keep.reshape(keep.shape[0], -1, pattern.width)
    return bool((runs == runs[..., :1]).all())


def test_every_registered_criterion_is_covered():
    assert set(CRITERIA) == set(criterion_kinds())


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_a_registered_pattern_prunes_with_every_criterion_scope_and_a_schedule(criterion, caplog):
    caplog.set_level(logging.ERROR)
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 4, (8,))
    layerwise = criterion in ("sparsegpt", "wanda")
    sampler = GradSampler([(x[:4], None), (x[4:], None)], progress=False) if layerwise else None
    for pattern_name, (pattern, group) in PATTERNS.items():
        for scope in ("local", "global"):
            case = f"{criterion}/{pattern_name}/{scope}"
            model = _model()
            config = PrunerConfig(global_config=ModulePrunerConfig(
                target_sparsity=TARGET, scheduler={"update_steps": [2, 3, 4, 5], "power": 3},
                criterion=CRITERIA[criterion], scope=scope, pattern=pattern,
            ))
            pruner = Pruner(model, config, sampler=sampler)
            model = pruner.prepare(inplace=True)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            levels = []
            for _ in range(7):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                pruner.step()
                level = pruner.targets["fc1"].sparsity_level
                if not levels or level != levels[-1]:
                    levels.append(level)
                zeros = {n: int((~t.mask.expand(t.orig.shape)).sum()) for n, t in pruner.targets.items()}
                sizes = {n: t.orig.numel() for n, t in pruner.targets.items()}
                if scope == "local":  # each layer: its scheduled zeros, rounded down to whole groups
                    expected = {n: pruned_count(sizes[n], level) // group * group for n in sizes}
                    assert zeros == expected, case
                else:  # one budget for the model, counted the same way
                    total = sum(sizes.values())
                    assert sum(zeros.values()) == pruned_count(total, level) // group * group, case
                for name, target in pruner.targets.items():
                    assert _respects(pattern, target.mask.expand(target.orig.shape)), f"{case}: {name}"
            assert len(levels) == 4 and levels[0] == 0.0 and levels[-1] == TARGET, f"{case}: {levels}"
            assert levels == sorted(set(levels)), case  # three updates that ramp up to the target
            if criterion == "sparsegpt":  # re-selected through the pattern's column layout at every update
                assert {entry["mode"] for entry in pruner.scorer_of("fc1").log} == {"groups"}, case
            masks = {n: t.mask.expand(t.orig.shape).clone() for n, t in pruner.targets.items()}
            final = pruner.finalize(inplace=True)
            for name, keep in masks.items():
                weight = final.get_submodule(name).weight
                assert bool((weight[~keep] == 0).all()), f"{case}: {name}"


def test_configs_take_an_instance_a_kind_or_a_dict_and_round_trip_through_as_dict_and_yaml(tmp_path: Path):
    assert {"coreml", "n_m", "tiles", "test_row_pairs", "test_column_runs"} <= set(pattern_kinds())
    by_instance = ModulePrunerConfig(pattern=ColumnRuns(4))
    assert by_instance.pattern == ColumnRuns(4)
    assert ModulePrunerConfig(pattern="test_column_runs").pattern == ColumnRuns(3)
    assert ModulePrunerConfig(pattern={"kind": "test_column_runs", "width": 4}) == by_instance
    assert by_instance.as_dict()["pattern"] == {"kind": "test_column_runs", "width": 4}
    assert ModulePrunerConfig.from_dict(by_instance.as_dict()) == by_instance
    config = PrunerConfig(global_config=by_instance, module_name_configs={"fc2": ModulePrunerConfig(pattern="2:4")})
    assert PrunerConfig.from_yaml(config.to_yaml(tmp_path / "c.yaml")) == config
    # the built-in string forms stay strings, whichever way they were written
    assert ModulePrunerConfig(pattern="4x1").as_dict()["pattern"] == "4x1"
    assert ModulePrunerConfig(pattern={"kind": "tiles", "out_size": 4, "in_size": 1}).pattern == "4x1"
    assert ModulePrunerConfig(pattern=" 2 : 4 ").as_dict()["pattern"] == "2:4"
    assert ModulePrunerConfig(pattern="1x1").pattern is None
    n_m = ModulePrunerConfig(pattern={"kind": "n_m", "n": 1, "m": 4})
    assert n_m.as_dict()["pattern"] == {"kind": "n_m", "n": 1, "m": 4, "dim": 1, "by_runs": False}
    assert n_m.final_sparsity == 0.25 and ModulePrunerConfig.from_dict(n_m.as_dict()) == n_m


def test_registry_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"pattern kind='nope' is unknown: allowed kinds are .*test_row_pairs"):
        pattern_from_dict({"kind": "nope"})
    with pytest.raises(ValueError, match=r"ModulePrunerConfig.pattern=.*unknown key\(s\) 'size' for pattern "
                                         r"'test_column_runs': allowed keys are width"):
        ModulePrunerConfig(pattern={"kind": "test_column_runs", "size": 2})
    with pytest.raises(ValueError, match="a pattern of kind 'test_row_pairs' is already registered"):
        register_pattern(attrs.frozen(type("Other", (RowPairs,), {"kind": "test_row_pairs"})))
    with pytest.raises(ValueError, match="needs a class attribute kind"):
        register_pattern(attrs.frozen(type("Nameless", (RowPairs,), {"kind": ""})))

    class Plain(Pattern):  # not an attrs class: no saved settings to read back
        kind = "test_plain"
        groups = RowPairs.groups
        expand = RowPairs.expand
        describe = RowPairs.describe

    with pytest.raises(TypeError, match="must be an attrs class"):
        register_pattern(Plain)
    with pytest.raises(TypeError, match="Plain cannot be saved: register it with register_pattern"):
        ModulePrunerConfig(pattern=Plain()).as_dict()  # usable unregistered, but not saved
    assert sparsify.register_pattern is register_pattern


def test_a_weight_the_pattern_cannot_take_is_refused_naming_the_module():
    model = nn.Sequential(nn.Linear(6, 5))
    config = PrunerConfig(global_config=ModulePrunerConfig(pattern=RowPairs()))
    with pytest.raises(ValueError, match=r"module '0' \(Linear\): row pairs need an even number of output channels"):
        Pruner(model, config).prepare()
    assert not hasattr(model[0], "weight_orig")


def test_names_and_records_come_from_the_pattern():
    model = _model()
    config = PrunerConfig(global_config=ModulePrunerConfig(pattern=ColumnRuns(), target_sparsity=0.5))
    rows = {row.name: row for row in dry_run(model, config)}
    assert rows["fc1"].settings["pattern"] == "test_column_runs"  # the label's default: the kind
    pruner = Pruner(model, PrunerConfig(global_config=ModulePrunerConfig(pattern=RowPairs())))
    pruner.prepare(inplace=True)
    fields = hook_fields(pruner.targets["fc1"])
    assert fields == {"pattern": "pairs of adjacent output rows", "tiles": "row pairs",
                      "spec": {"kind": "test_row_pairs"}}
    assert model.fc1.weight_mask.shape == (12, 96)
    pruner.step()
    assert sparsify.model_report(model)["fc1"].pattern == "row pairs"  # a prepared model: from its hook
    assert sparsify.model_report(_model(), requested=config)["fc1"].pattern == "test_column_runs"  # a config
    # sparsity.json's entry rebuilds the config with the pattern (sparsify.from_pretrained_pruned)
    rebuilt = config_from_record({"param": "weight", "level": 0.5, **fields}, "default")
    assert rebuilt.pattern == RowPairs() and rebuilt.target_sparsity == 0.5


def test_no_code_outside_patterns_names_a_pattern_class():
    root = Path(sparsify.__file__).parent
    named = re.compile(r"\b(CoreMLPattern|NMPattern|TilePattern)\b")
    found = [f"{path.relative_to(root)}:{number}" for path in sorted(root.rglob("*.py"))
             if path.parent.name != "patterns"
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if named.search(line)]
    assert found == []
