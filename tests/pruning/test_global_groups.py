"""Global ranking groups are what a config says (``global_group`` or the entry), so they survive round trips.

Two ``nn.Linear(16, 16)`` layers, the second with weights 10x larger: ranked together at 50 % by magnitude,
the first ends 0.90234375 sparse and the second 0.09765625 (231 and 25 of 256 weights); ranked layer by
layer, both end at 0.5.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.compat.inc import from_inc_config
from sparsify.compat.sparseml import Recipe
from sparsify.compat.translate import pruner_config

TOGETHER = [0.90234375, 0.09765625]
APART = [0.5, 0.5]


def _model(head: bool = False) -> nn.Sequential:
    generator = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16, bias=False), nn.Linear(16, 16, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(16, 16, generator=generator))
        model[1].weight.copy_(torch.randn(16, 16, generator=generator) * 10)
    if head:  # Neural Compressor leaves the last Linear dense
        model.append(nn.Linear(16, 4, bias=False))
    return model


def _sparsities(config: PrunerConfig, head: bool = False) -> list[float]:
    pruner = Pruner(_model(head), config)
    pruner.prepare(inplace=True)
    pruner.prune_now()
    model = pruner.finalize(inplace=True)
    return [float((layer.weight == 0).float().mean()) for layer in model]


def _round_trips(config: PrunerConfig, tmp_path: Path) -> list[PrunerConfig]:
    path = tmp_path / "config.yaml"
    config.to_yaml(path)
    return [config, PrunerConfig.from_dict(config.as_dict()), PrunerConfig.from_yaml(path),
            PrunerConfig.from_yaml(str(path)), PrunerConfig.from_yaml(config.to_yaml())]


def test_a_named_group_ranks_its_entries_together_before_and_after_round_trips(tmp_path: Path) -> None:
    grouped = ModulePrunerConfig(target_sparsity=0.5, scope="global", global_group="body")
    config = PrunerConfig(module_name_configs={"0": grouped, "1": grouped})
    assert config.as_dict()["module_name_configs"]["0"]["global_group"] == "body"
    for each in _round_trips(config, tmp_path):
        assert _sparsities(each) == TOGETHER
    # two equal configs, not one object: the name alone makes the group
    twins = PrunerConfig(module_name_configs={
        "0": ModulePrunerConfig(target_sparsity=0.5, scope="global", global_group="body"),
        "1": ModulePrunerConfig(target_sparsity=0.5, scope="global", global_group="body"),
    })
    assert _sparsities(twins) == TOGETHER


def test_an_entry_ranks_its_own_modules_before_and_after_round_trips(tmp_path: Path) -> None:
    one_rule = PrunerConfig(module_name_configs={"0|1": ModulePrunerConfig(target_sparsity=0.5, scope="global")})
    for each in _round_trips(one_rule, tmp_path):
        assert _sparsities(each) == TOGETHER
    as_global = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5, scope="global"))
    for each in _round_trips(as_global, tmp_path):
        assert _sparsities(each) == TOGETHER
    two_groups = PrunerConfig(module_name_configs={
        "0": ModulePrunerConfig(target_sparsity=0.5, scope="global", global_group="a"),
        "1": ModulePrunerConfig(target_sparsity=0.5, scope="global", global_group="b"),
    })
    for each in _round_trips(two_groups, tmp_path):
        assert _sparsities(each) == APART


def test_one_unnamed_object_under_two_rules_ranks_each_rule_alone_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = ModulePrunerConfig(target_sparsity=0.5, scope="global")
    config = PrunerConfig(module_name_configs={"0": shared, "1": shared})
    for each in _round_trips(config, tmp_path):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sparsify"):
            result = _sparsities(each)
        assert result == APART
        warned = [r.getMessage() for r in caplog.records if "global_group" in r.getMessage()]
        if each is config:  # the shared object is the case that reads as one group and is not one
            assert warned == [
                "one ModulePrunerConfig object with scope='global' serves 2 entries (name rule '0', name rule '1'): "
                "each entry's modules are ranked on their own (sharing an object is not saved by as_dict / "
                "to_yaml); to rank them together, set global_group to one name (e.g. global_group='shared')"
            ]
        else:
            assert warned == []


def test_a_named_group_needs_global_scope_one_criterion_and_a_name() -> None:
    with pytest.raises(ValueError, match=r"^ModulePrunerConfig.global_group='g' is invalid with scope='local': a "
                                         r"ranking group names modules ranked together, so it needs scope='global'$"):
        ModulePrunerConfig(global_group="g")
    grouped = ModulePrunerConfig(scope="global", global_group="g")
    with pytest.raises(ValueError, match="is invalid with scope='local'"):
        grouped.scope = "local"
    assert grouped.scope == "global"
    with pytest.raises(TypeError, match=r"^ModulePrunerConfig.global_group=3 is invalid: expected None or a group "
                                        r"name \(a str\)\.$"):
        ModulePrunerConfig(scope="global", global_group=3)
    with pytest.raises(ValueError, match=r"^ModulePrunerConfig.global_group=' ' is invalid: expected None or a "
                                         r"non-empty group name\.$"):
        ModulePrunerConfig(scope="global", global_group=" ")
    mixed = PrunerConfig(module_name_configs={
        "0": ModulePrunerConfig(scope="global", global_group="g"),
        "1": ModulePrunerConfig(scope="global", global_group="g", criterion="gradient"),
    })
    model = _model()
    with pytest.raises(ValueError, match=r"^global_group 'g': modules '0' and '1' are ranked together but their "
                                         r"configs differ in criterion"):
        Pruner(model, mixed).prepare(inplace=True)
    assert isinstance(model[0].weight, nn.Parameter) and not hasattr(model[0], "weight_mask")  # nothing installed


def test_from_yaml_takes_a_path_a_stream_or_yaml_text(tmp_path: Path) -> None:
    text = "global_config:\n  target_sparsity: 0.75\n"
    path = tmp_path / "c.yaml"
    path.write_text(text)
    expected = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.75))
    assert PrunerConfig.from_yaml(str(path)) == expected  # an existing file: a path, as in Core ML Tools
    assert PrunerConfig.from_yaml(path) == expected
    assert PrunerConfig.from_yaml(text) == expected  # YAML text (what to_yaml returns)
    assert PrunerConfig.from_yaml("{global_config: {target_sparsity: 0.75}}") == expected  # one line, with ':'
    assert PrunerConfig.from_yaml(expected.to_yaml()) == expected
    # a file whose name has a ':' is still read as a file
    odd = tmp_path / "a:b.yaml"
    odd.write_text(text)
    assert PrunerConfig.from_yaml(str(odd)) == expected
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(FileNotFoundError) as info:
        PrunerConfig.from_yaml(missing)
    assert str(info.value) == (
        f"PrunerConfig.from_yaml({missing!r}): no such file; pass the path of a YAML file, a stream, or YAML text "
        "(a mapping such as 'global_config: {target_sparsity: 0.5}')"
    )


SPARSEML_GLOBAL = """
modifiers:
  - !GMPruningModifier
    params: ["0.weight", "1.weight"]
    init_sparsity: 0.0
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 1.0
    global_sparsity: true
"""
INC_GLOBAL = {"target_sparsity": 0.5, "pruning_scope": "global", "pruning_type": "magnitude", "pattern": "1x1",
              "start_step": 0, "end_step": 0}


def test_translated_recipes_name_their_ranking_and_keep_it_after_round_trips(tmp_path: Path) -> None:
    # SparseML: one modifier over two params becomes two name rules ranked as one modifier
    config, _ = pruner_config(Recipe.from_string(SPARSEML_GLOBAL).plan, _model(), one_shot=True)
    assert [c.global_group for c in config.module_name_configs.values()] == ["modifier 0 (GMPruningModifier)"] * 2
    for each in _round_trips(config, tmp_path):
        assert _sparsities(each) == TOGETHER
    # Neural Compressor, with the model (one name rule per layer) and without it (one search pattern)
    for model in (_model(head=True), None):
        config = from_inc_config(INC_GLOBAL, model)
        assert {c.global_group for c in config.module_name_configs.values()} == {"INC config"}
        for each in _round_trips(config, tmp_path):
            assert _sparsities(each, head=True) == [*TOGETHER, 0.0]
