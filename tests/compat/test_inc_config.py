"""INC pruning configs: every form read with INC's rules, each pruner its own config entry, clear errors."""

from __future__ import annotations

import io
import logging
import re

import pytest
import torch
from torch import nn

from sparsify import Pruner
from sparsify.compat.inc import INC_DEFAULTS, WeightPruningConfig, from_inc_config, read_inc_config
from sparsify.compat.plan import UnsupportedFeatureError
from sparsify.criteria import SnipMomentumCriterion
from sparsify.safe_io import SourceError


class Bert(nn.Module):
    """Two BERT-like layers: attention (query/key/value/output) and FFN, then a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList(nn.ModuleDict({
            "query": nn.Linear(16, 16), "key": nn.Linear(16, 16), "value": nn.Linear(16, 16),
            "output": nn.Linear(16, 16), "intermediate": nn.Linear(16, 32), "out": nn.Linear(32, 16),
        }) for _ in range(2))
        self.pooler = nn.Linear(16, 16)
        self.classifier = nn.Linear(16, 2)


def _zeros(model: nn.Module, names: list[str]) -> float:
    weights = [model.get_submodule(n).weight for n in names]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_defaults_are_incs() -> None:
    plan = read_inc_config({})
    (group,) = plan.groups
    assert (group.method, group.scope, group.structure.tile, group.targets[0].sparsity) == (
        "snip_momentum", "global", "4x1", 0.9)
    assert (group.schedule.unit, group.schedule.curve, group.max_sparsity) == ("step", "oneshot", 0.98)
    config = from_inc_config({}, Bert())
    module = config.module_name_configs[r"layer\.0\.query"]
    assert module.criterion == SnipMomentumCriterion() and module.pattern == "4x1" and module.scope == "global"
    assert r"classifier" not in config.module_name_configs and r"pooler" in config.module_name_configs
    assert INC_DEFAULTS["pruning_op_types"] == ["Conv", "Linear"]


def test_each_pruner_is_ranked_on_its_own() -> None:
    """Two global pruners at 0.9 each end at 0.9 each (one shared ranking gave 0.888 and 0.934)."""
    config = {"pruning_configs": [{"op_names": ["query", "key", "value"], "pattern": "1x1"},
                                  {"op_names": ["intermediate", r"\.out$"], "pattern": "1x1"}],
              "target_sparsity": 0.9, "pruning_type": "magnitude"}
    model = Bert()
    with torch.no_grad():  # very different scales: one shared ranking would prune the small layers more
        for layer in model.layer:
            layer["intermediate"].weight.mul_(10.0)
    pruner = Pruner(model, from_inc_config(config, model))
    pruner.prepare(inplace=True)
    pruner.prune_now()
    attention = [f"layer.{i}.{n}" for i in range(2) for n in ("query", "key", "value")]
    ffn = [f"layer.{i}.{n}" for i in range(2) for n in ("intermediate", "out")]
    assert _zeros(model, attention) * 1536 == 1382  # INC's int(0.9 · 1536), over this pruner's layers only
    assert _zeros(model, ffn) * 2048 == 1843
    assert _zeros(model, ["pooler", "layer.0.output"]) == 0.0  # no pruner selects them


def test_names_search_anywhere_and_types_are_substrings() -> None:
    plan = read_inc_config({"op_names": ["layer.1"], "excluded_op_names": ["inter"], "pruning_op_types": ["Lin"]})
    assert plan.resolve(Bert())[0].modules == dict.fromkeys(
        ["layer.1.query", "layer.1.key", "layer.1.value", "layer.1.output", "layer.1.out"], 0.9)
    model_free = from_inc_config({"op_names": ["layer.1"], "excluded_op_names": ["inter"]})
    (key,) = model_free.module_name_configs
    assert re.fullmatch(key, "layer.1.query") and not re.fullmatch(key, "layer.1.intermediate")
    assert model_free.keep_classifier_dense and model_free.module_types == ("Linear", "Conv1d", "Conv2d", "Conv3d")


def test_n_m_means_n_pruned_and_targets_are_checked() -> None:
    module = from_inc_config({"pattern": "2:4", "target_sparsity": 0.5}, Bert()).module_name_configs[r"layer\.0\.key"]
    assert module.n_m_ratio == (2, 4) and module.final_sparsity == 0.5
    capped = read_inc_config({"pattern": "1:4", "target_sparsity": 0.2}).groups[0]
    assert capped.max_sparsity == 0.25
    with pytest.raises(SourceError, match=r"target_sparsity=0\.9 with pattern='2:4' is invalid: INC allows at most "
                                          r"N/M = 0\.5"):
        read_inc_config({"pattern": "2:4"})
    partial = from_inc_config({"pattern": "2:4", "target_sparsity": 0.3}, Bert())
    module_config = next(c for c in partial.module_name_configs.values() if c is not None)
    assert (module_config.pattern, module_config.final_sparsity) == ("2:4", 0.3)  # 60 % of the runs 2:4, as INC


def test_inc_1x_yaml_with_pruner_tags() -> None:
    text = """
version: 1.0
model: {name: bert-mini, framework: pytorch}
pruning:
  approach:
    weight_compression_pytorch:
      start_step: 0
      end_step: 0
      excluded_names: ["classifier", "pooler"]
      prune_layer_type: ["Linear"]
      target_sparsity: 0.9
      max_sparsity_ratio_per_layer: 0.98
      pruners:
        - !Pruner
            extra_excluded_names: [".*query", ".*key", ".*value"]
            pattern: "1x1"
            update_frequency_on_step: 100
            prune_domain: "global"
            prune_type: "snip_momentum"
            sparsity_decay_type: "exp"
        - !Pruner
            extra_excluded_names: [".*output", ".*inter", "out$"]
            pattern: "oc_pattern_4x1"
            prune_type: "magnitude"
"""
    plan = read_inc_config(io.StringIO(text))
    assert plan.format == "inc1-pytorch" and [g.method for g in plan.groups] == ["snip_momentum", "magnitude"]
    first, second = plan.resolve(Bert())
    assert set(first.modules) == {f"layer.{i}.{n}" for i in range(2) for n in ("output", "intermediate", "out")}
    assert set(second.modules) == {f"layer.{i}.{n}" for i in range(2) for n in ("query", "key", "value")}
    assert second.group.structure.tile == "4x1" and second.group.schedule.curve == "oneshot"


def test_inc_1x_legacy_epochs() -> None:
    text = """
pruning:
  approach:
    weight_compression:
      initial_sparsity: 0.0
      target_sparsity: 0.3
      start_epoch: 0
      end_epoch: 4
      pruners:
        - !Pruner
            start_epoch: 0
            end_epoch: 4
            update_frequency: 1
            prune_type: basic_magnitude
            names: ['layer.0.query.weight', 'layer.1.key.weight']
"""
    plan = read_inc_config(io.StringIO(text))
    (group,) = plan.groups
    assert (group.schedule.unit, group.schedule.curve, group.targets[0].sparsity) == ("epoch", "inc1", 0.3)
    assert plan.resolve(Bert())[0].modules == {"layer.0.query": 0.3, "layer.1.key": 0.3}
    with pytest.raises(SourceError, match="the schedule is in epochs: give steps_per_epoch"):
        from_inc_config(io.StringIO(text), Bert())


@pytest.mark.parametrize("section", ["weight_compression_pytorch", "weight_compression"])
@pytest.mark.parametrize(("pruners", "message"), [
    ("[]", r"^line 3: {section} has no pruners: INC 1\.x prunes only what its pruners list$"),
    ("\n        - !Pruner [1, 2]", r"^line 5: pruners\[0\] \(!Pruner\): a pruner is a mapping of its fields$"),
    ("\n        - !Pruner\n            prune_type: magnitude\n            sparsity: 0.5",
     r"^line 5: pruners\[0\] \(!Pruner\): unknown key\(s\) \['sparsity'\] for !Pruner: allowed "),
])
def test_inc_1x_pruner_entries_are_checked_in_both_sections(section: str, pruners: str, message: str) -> None:
    text = f"pruning:\n  approach:\n    {section}:\n      pruners: {pruners}\n"
    with pytest.raises(SourceError, match=message.format(section=section)):
        read_inc_config(io.StringIO(text))


@pytest.mark.parametrize(("data", "message"), [
    ({"target_sparsity": 1.5}, r"INC config: target_sparsity=1\.5 is invalid: INC allows 0 <= target_sparsity < 1"),
    ({"target_sparsity": None, "pattern": "4x0"}, r"pattern='4x0' is invalid: allowed 'NxM'"),
    ({"pattern": "5:4"}, r"pattern='5:4' is invalid: N:M prunes N of every M, 0 < N < M"),
    ({"pattern": [4, 1]}, r"pattern=\[4, 1\] is invalid: expected a string"),
    ({"pruning_scope": "layer"}, r"pruning_scope='layer' is invalid: allowed 'global' or 'local'"),
    ({"start_step": 5, "end_step": 2}, r"start_step=5, end_step=2 are invalid"),
    ({"pruning_frequency": 0, "end_step": 4}, r"pruning_frequency=0 is invalid"),
    ({"sparsity_decay_type": "cubic"}, r"sparsity_decay_type='cubic' is invalid: allowed exp, cos, linear, cube"),
    ({"pruning_type": "movement"}, r"pruning_type='movement' is invalid"),
    ({"max_sparsity_ratio_per_op": 1.0}, r"max_sparsity_ratio_per_op=1 are invalid"),
    ({"pruning_configs": {"op_names": ["x"]}}, r"pruning_configs=.* is invalid: expected a list of pruner dicts"),
])
def test_bad_values_name_the_key_and_the_value(data: dict, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        read_inc_config(data)


@pytest.mark.parametrize(("data", "feature"), [
    ({"pruning_type": "retrain_free"}, "pruning_type='retrain_free' is not supported"),
    ({"pruning_type": "block_mask"}, "pruning_type='block_mask' is not supported"),
    ({"reg_type": "group_lasso"}, "reg_type='group_lasso' is not supported"),
    ({"pattern": "mha"}, "pattern='mha' is not supported"),
])
def test_features_sparsify_cannot_do_are_refused(data: dict, feature: str) -> None:
    with pytest.raises(UnsupportedFeatureError, match=feature):
        read_inc_config(data)


def test_unknown_keys_are_ignored_with_a_warning_as_inc_does(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sparsify")
    plan = read_inc_config({"pruning_configs": [{"false_key": 1, "criterion_type": "snip_momentum_block"}]})
    assert plan.groups[0].method == "snip_momentum"
    assert [r.getMessage() for r in caplog.records] == [
        "pruning_configs[0]: 'false_key' is not an INC pruning key; INC ignores it, and so does sparsify",
        "pruning_configs[0]: criterion_type='snip_momentum_block' is ignored: INC sets the criterion from "
        "pruning_type",
    ]


def test_progressive_types_are_translated_and_pattern_lock_keeps_zeros() -> None:
    plan = read_inc_config({"pruning_configs": [{"op_names": ["query"], "pruning_type": "snip_progressive"},
                                                {"op_names": ["key"], "pruning_type": "pattern_lock"}]})
    progressive, lock = plan.groups
    assert progressive.method == "snip" and "progressive transition" in progressive.notes[0]
    assert lock.method == "lock" and lock.targets[0].sparsity is None
    model = Bert()
    with torch.no_grad():
        model.layer[0]["key"].weight[:4] = 0.0
    pruner = Pruner(model, from_inc_config({"pruning_configs": [{"op_names": ["key"], "pruning_type": "pattern_lock"}]},
                                           model))
    pruner.prepare(inplace=True)
    pruner.prune_now()
    pruner.finalize(inplace=True)
    assert int((model.layer[0]["key"].weight == 0).sum()) == 64 and _zeros(model, ["layer.1.key"]) == 0.0


def test_weight_pruning_config_is_incs() -> None:
    config = WeightPruningConfig([{"op_names": ["query"], "pattern": "1x1"}], target_sparsity=0.5,
                                 pruning_type="magnitude")
    assert config.as_dict()["pruning_configs"] == [{"op_names": ["query"], "pattern": "1x1"}]
    model = Bert()
    pruner = Pruner(model, config.to_pruner_config(model))
    pruner.prepare(inplace=True)
    pruner.prune_now()
    assert _zeros(model, ["layer.0.query", "layer.1.query"]) == pytest.approx(0.5)


def test_a_null_key_falls_back_with_a_warning_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sparsify")
    plan = read_inc_config(io.StringIO("target_sparsity:\npruning_configs:\n  - op_names: [fc]\n    pattern: null\n"
                                       "    target_sparsity: 0.5\n"))
    assert plan.groups[0].targets[0].sparsity == 0.5 and plan.groups[0].structure.tile == "4x1"
    assert [r.getMessage() for r in caplog.records] == [
        "line 1: INC config: target_sparsity is null: INC uses 0.9 instead (INC's default), and so does sparsify",
        "line 4: pruning_configs[0]: pattern is null: INC uses '4x1' instead (the global value or INC's default), "
        "and so does sparsify",
    ]
    caplog.clear()
    assert WeightPruningConfig(target_sparsity=None).plan().groups[0].targets[0].sparsity == 0.9  # type: ignore
    assert [r.getMessage() for r in caplog.records] == [
        "INC config: target_sparsity is null: INC uses 0.9 instead (INC's default), and so does sparsify"]
    caplog.clear()
    read_inc_config(io.StringIO("pruning:\n  approach:\n    weight_compression_pytorch:\n      target_sparsity: 0.6\n"
                                "      pruners:\n        - !Pruner\n          target_sparsity: ~\n"))
    assert [r.getMessage() for r in caplog.records] == [
        "line 7: pruners[0] (!Pruner): target_sparsity is null: INC uses 0.6 instead (the global value or INC's "
        "default), and so does sparsify"]


def test_dry_run_names_a_model_that_is_not_one() -> None:
    import sparsify

    config = from_inc_config({"op_names": ["query"], "pattern": "1x1"})
    for bad in ("model.pt", {"weight": torch.zeros(2, 2)}, None):
        with pytest.raises(TypeError) as info:
            sparsify.dry_run(bad, config)  # type: ignore[arg-type]
        assert str(info.value) == f"model must be a torch.nn.Module, got {type(bad).__name__}"


def test_dry_run_shows_the_tied_weights_conflicts_prepare_refuses() -> None:
    import sparsify
    from sparsify import ModulePrunerConfig, PrunerConfig

    def tied() -> Bert:
        model = Bert()
        model.layer[1]["query"].weight = model.layer[0]["query"].weight
        return model

    config = from_inc_config({"pruning_configs": [{"op_names": ["0.query"], "target_sparsity": 0.5},
                                                  {"op_names": ["1.query"], "target_sparsity": 0.7}],
                              "pattern": "1x1"})
    model = tied()
    with pytest.raises(ValueError) as refused:
        Pruner(model, config).prepare()
    table = sparsify.dry_run(tied(), config)
    rows = {row.name: row for row in table}
    assert rows["layer.1.query"].action == "error" and rows["layer.1.query"].reason == str(refused.value)
    assert str(refused.value) == ("layer.1.query.weight is the same tensor as layer.0.query.weight (tied weights) "
                                  "but the two modules have different configs; give them one config")
    assert rows["layer.0.query"].action == "prune" and "give them one config" in str(table)
    same = PrunerConfig(module_name_configs={r"layer\.\d\.query": ModulePrunerConfig(target_sparsity=0.5)})
    rows = {row.name: row for row in sparsify.dry_run(tied(), same)}
    assert rows["layer.1.query"].action == "prune" and rows["layer.1.query"].reason.endswith(
        "(tied to layer.0.query: shares its mask)")
    model = Bert()
    norm = nn.LayerNorm(16)
    norm.bias = model.pooler.weight  # the pooler's weight held under another name
    model.norm = norm
    pooler = PrunerConfig(module_name_configs={"pooler": ModulePrunerConfig(target_sparsity=0.5)})
    with pytest.raises(ValueError) as refused:
        Pruner(model, pooler).prepare()
    rows = {row.name: row for row in sparsify.dry_run(model, pooler)}
    assert rows["norm"].action == "error" and rows["norm"].reason == str(refused.value)
    assert str(refused.value) == ("module 'norm' holds pooler.weight as its 'bias': a tied parameter under another "
                                  "name cannot share a mask; exclude 'pooler' or untie them")


GROUP_LASSO = """pruning:
  approach:
    weight_compression:
      initial_sparsity: 0.0
      target_sparsity: 0.5
      start_epoch: 0
      end_epoch: 1
      pruners:
        - !Pruner
            prune_type: group_lasso
            update_frequency: 1
            parameters: {alpha: 0.1, pattern: tile_pattern_1x2}
            names: ['fc.weight']
"""


def test_inc_1x_group_lasso_adds_its_term_to_the_gradient_and_prunes_by_epoch(
        caplog: pytest.LogCaptureFixture) -> None:
    """INC's GroupLassoPruner by hand: 1x1 blocks (the pruner's pattern; parameters.pattern is not read), so
    before each optimizer step grad += 0.1·sign(w) and grad = 0 where w = 0; magnitude pruning to
    0.5·(e + 1)/2 at the start of epoch e."""
    from sparsify.compat.inc_callbacks import prepare_compression

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2, bias=False)

    caplog.set_level(logging.WARNING, logger="sparsify")
    model = Net()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.5, -0.25, 6.0, -8.0]]))
    manager = prepare_compression(model, io.StringIO(GROUP_LASSO))
    assert any("parameters ['pattern'] are not read by INC 1.x's GroupLassoPruner" in r.getMessage()
               for r in caplog.records)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    callbacks = manager.callbacks
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)  # 0.25: the two smallest, 0.5 and -0.25
    callbacks.on_step_begin(0)
    model.fc(torch.ones(1, 4)).sum().backward()  # dloss/dw = 1 everywhere
    callbacks.on_before_optimizer_step()
    grad = model.fc.weight_orig.grad
    assert torch.allclose(grad, torch.tensor([[1.1, 0.9, 1.1, 0.9], [0.0, 0.0, 1.1, 0.9]]))
    optimizer.step()
    callbacks.on_after_optimizer_step()
    optimizer.zero_grad()
    callbacks.on_step_end()
    weight = model.fc.weight_orig * model.fc.weight_mask
    assert torch.allclose(weight, torch.tensor([[-0.1, -2.9, 1.9, -4.9], [0.0, 0.0, 4.9, -8.9]]))
    callbacks.on_epoch_end()  # the masks of epoch 1's start (nothing trains in between)
    callbacks.on_epoch_begin(1)  # 0.5: 0, 0, -0.1 and 1.9 go
    assert (model.fc.weight_mask == 0).tolist() == [[True, False, True, False], [True, True, False, False]]
    callbacks.on_train_end()
    assert not hasattr(model.fc, "weight_mask") and int((model.fc.weight == 0).sum()) == 4


def test_inc_1x_group_lasso_needs_its_alpha() -> None:
    with pytest.raises(SourceError, match=r"prune_type='group_lasso' needs parameters: \{alpha: <number >= 0>\}"):
        read_inc_config(io.StringIO(GROUP_LASSO.replace("parameters: {alpha: 0.1, pattern: tile_pattern_1x2}",
                                                        "parameters: {pattern: tile_pattern_1x2}")))
    with pytest.raises(SourceError, match=r"parameters\.alpha=-1 is invalid: allowed alpha >= 0"):
        read_inc_config(io.StringIO(GROUP_LASSO.replace("alpha: 0.1", "alpha: -1")))


def _sensitivity_config(pruners: str) -> io.StringIO:
    return io.StringIO("pruning:\n  approach:\n    weight_compression:\n      start_epoch: 0\n      end_epoch: 1\n"
                       "      pruners:\n" + pruners)


def _train_one_epoch(manager, model: nn.Module, x: torch.Tensor, steps: int = 2) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # the weights stay: importances are hand-computed
    callbacks = manager.callbacks
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(0)
    for step in range(steps):
        callbacks.on_step_begin(step)
        model(x).sum().backward()
        callbacks.on_before_optimizer_step()
        optimizer.step()
        callbacks.on_after_optimizer_step()
        optimizer.zero_grad()
        callbacks.on_step_end()
    callbacks.on_epoch_end()


def test_inc_1x_gradient_sensitivity_ffn_neurons_by_weighted_gradient() -> None:
    """importance_i = Σ_steps |Σ_j grad_ij·w_ij| of inter.weight: with loss = sum(out(inter(x))), x = 1,
    grad_ij = out_i, so |out_i · rowsum_i| = |1·2|, |1·0|, |3·1|, |0.5·(-4)| = 2, 0, 3, 2 (per step). Keep 2:
    neurons 2 and 0 (the tie 0 / 3 goes to the lower index, as INC's heap); rows 1, 3 of inter and columns
    1, 3 of out (transpose) are masked, at the end of epoch 0."""
    from sparsify.compat.inc_callbacks import prepare_compression

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l = nn.ModuleList([nn.ModuleDict({"inter": nn.Linear(2, 4, bias=False),
                                                   "out": nn.Linear(4, 1, bias=False)})])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.l[0]["out"](self.l[0]["inter"](x))

    model = Net()
    with torch.no_grad():
        model.l[0]["inter"].weight.copy_(torch.tensor([[1.0, 1.0], [2.0, -2.0], [0.5, 0.5], [-3.0, -1.0]]))
        model.l[0]["out"].weight.copy_(torch.tensor([[1.0, 1.0, 3.0, 0.5]]))
    entry = ("        - !Pruner\n            prune_type: gradient_sensitivity\n"
             "            names: ['l.*.{name}.weight']\n"
             "            parameters: {{target: 2, stride: 1, transpose: {t}, normalize: false,\n"
             "                         importance_inputs: ['l.*.inter.weight'],\n"
             "                         importance_metric: weighted_gradient}}\n")
    manager = prepare_compression(model, _sensitivity_config(entry.format(name="inter", t="false") +
                                                             entry.format(name="out", t="true")))
    _train_one_epoch(manager, model, torch.ones(1, 2))
    inter, out = model.l[0]["inter"], model.l[0]["out"]
    assert (inter.weight_mask.all(1)).tolist() == [True, False, True, False]
    assert (out.weight_mask.all(0)).tolist() == [True, False, True, False]
    manager.callbacks.on_train_end()
    assert torch.equal(inter.weight, torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.5, 0.5], [0.0, 0.0]]))


def test_inc_1x_gradient_sensitivity_heads_by_the_head_mask_gradient() -> None:
    """abs_gradient of BERT's head_mask: per head, |Σ context·∂loss/∂context| over its features, the context
    being the input of attention.output.dense. Context = x = (1, 2, 3, 4) (identity value), ∂loss/∂context =
    dense.weight = (1, -1, .5, .5): head 0 |1 - 2| = 1, head 1 |1.5 + 2| = 3.5. Keep 1 head of stride 2:
    head 1; rows 0-1 of value, columns 0-1 of the output dense are masked."""
    from sparsify.compat.inc_callbacks import prepare_compression

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = nn.ModuleDict({"self": nn.ModuleDict({"value": nn.Linear(4, 4)}),
                                            "output": nn.ModuleDict({"dense": nn.Linear(4, 1, bias=False)})})

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.ModuleList([Layer()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            attention = self.layer[0].attention
            return attention["output"]["dense"](attention["self"]["value"](x))

    model = Net()
    value, dense = model.layer[0].attention["self"]["value"], model.layer[0].attention["output"]["dense"]
    with torch.no_grad():
        value.weight.copy_(torch.eye(4))
        value.bias.zero_()
        dense.weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.5]]))
    entry = ("        - !Pruner\n            prune_type: gradient_sensitivity\n            names: ['{name}']\n"
             "            parameters: {{target: 1, stride: 2, transpose: {t}, normalize: true,\n"
             "                         importance_inputs: ['head_mask'], importance_metric: abs_gradient}}\n")
    config = _sensitivity_config(entry.format(name="layer.*.attention.self.value.weight', "
                                              "'layer.*.attention.self.value.bias", t="false")
                                 + entry.format(name="layer.*.attention.output.dense.weight", t="true"))
    manager = prepare_compression(model, config)
    _train_one_epoch(manager, model, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert value.weight_mask.all(1).tolist() == [False, False, True, True]
    assert dense.weight_mask.all(0).tolist() == [False, False, True, True]
    manager.callbacks.on_train_end()
    assert float(dense.weight.detach().abs().sum()) == 1.0


@pytest.mark.parametrize(("parameters", "message"), [
    ("{target: 0, stride: 1, importance_inputs: [x], importance_metric: weighted_gradient}",
     r"parameters\.target=0 is invalid: expected an integer >= 1"),
    ("{target: 2, stride: 1, importance_inputs: [x], importance_metric: taylor}",
     r"parameters\.importance_metric='taylor' is invalid: allowed abs_gradient, weighted_gradient"),
])
def test_inc_1x_gradient_sensitivity_parameters_are_checked(parameters: str, message: str) -> None:
    text = ("        - !Pruner\n            prune_type: gradient_sensitivity\n            names: ['l.*.w.weight']\n"
            f"            parameters: {parameters}\n")
    with pytest.raises(SourceError, match=message):
        read_inc_config(_sensitivity_config(text))
