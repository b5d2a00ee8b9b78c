"""The INC pruning-config reader: defaults, key mapping, re.search names, 1.x YAML, clear errors."""

from __future__ import annotations

import io
import logging
import re

import pytest
from torch import nn

from sparsify import dry_run
from sparsify.compat.inc import from_inc_config
from sparsify.criteria import SnipMomentumCriterion
from sparsify.schedules.step_range import CubicSlowStartScheduler, ExponentialScheduler


def test_inc_defaults() -> None:
    config = from_inc_config({})
    module = config.global_config
    assert module.criterion == SnipMomentumCriterion(decay=0.9, gain=1.0)
    assert module.pattern == '4x1'
    assert module.target_sparsity == 0.9
    assert module.scope == "global"
    assert (module.min_sparsity, module.max_sparsity) == (0.0, 0.98)
    assert module.scheduler == ExponentialScheduler(start_step=0, end_step=0, frequency=1)
    assert config.keep_classifier_dense
    assert config.module_types == ("Linear", "Conv1d", "Conv2d", "Conv3d")  # INC's "Conv" substring rule
    assert config.global_config.normalize is None


def test_key_mapping() -> None:
    config = from_inc_config({
        "target_sparsity": 0.8, "pruning_type": "snip", "pattern": "1xchannel", "sparsity_decay_type": "cube",
        "pruning_scope": "local", "start_step": 10, "end_step": 100, "pruning_frequency": 5,
        "min_sparsity_ratio_per_op": 0.1, "max_sparsity_ratio_per_op": 0.95, "pruning_op_types": ["Linear"],
    })
    module = config.global_config
    assert module.criterion.kind == "snip" and module.pattern == '1xchannel'
    assert module.scheduler == CubicSlowStartScheduler(start_step=10, end_step=100, frequency=5)  # INC cube
    assert (module.scope, module.min_sparsity, module.max_sparsity) == ("local", 0.1, 0.95)
    assert config.module_types == ("Linear",)


def test_n_m_string_means_n_pruned(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sparsify"):
        module = from_inc_config({"pattern": "2:4", "target_sparsity": 0.5}).global_config
    assert module.n_m_ratio == (2, 4) and module.final_sparsity == 0.5
    assert "2 zeros of every 4" in caplog.text
    assert from_inc_config({"pattern": "3:4", "target_sparsity": 0.9}).global_config.final_sparsity == 0.75
    with pytest.raises(ValueError, match="target_sparsity=0.3 with pattern='2:4' cannot be honoured"):
        from_inc_config({"pattern": "2:4", "target_sparsity": 0.3})


def test_names_keep_inc_search_semantics() -> None:
    config = from_inc_config({"op_names": ["layer1"], "excluded_op_names": ["downsample"]})
    rules = list(config.module_name_configs)
    assert rules == [".*(?:downsample).*", ".*(?:layer1).*"]
    assert config.module_name_configs[rules[0]] is None and config.global_config is None
    for name, expected in [("layer1.0.conv1", True), ("model.layer1", True), ("layer1.0.downsample.0", False),
                           ("layer2.0.conv1", False)]:
        matched = next((v for k, v in config.module_name_configs.items() if re.fullmatch(k, name)), None)
        assert (matched is not None) == expected, name


def test_several_pruners() -> None:
    config = from_inc_config({
        "target_sparsity": 0.8,
        "pruning_configs": [
            {"op_names": ["fc"], "pattern": "1x1", "pruning_type": "magnitude"},
            {"pattern": "2x1", "excluded_op_names": ["conv0"]},
        ],
    })
    rules = dict(config.module_name_configs)
    assert rules[".*(?:fc).*"].criterion.kind == "magnitude"
    guarded = next(k for k in rules if k.startswith("(?!"))
    assert re.fullmatch(guarded, "conv1") and not re.fullmatch(guarded, "conv0")
    assert rules[guarded].pattern == '2x1'
    model = nn.Sequential()
    model.add_module("conv0", nn.Conv2d(2, 4, 1))
    model.add_module("conv1", nn.Conv2d(4, 4, 1))
    model.add_module("fc", nn.Linear(4, 8))
    model.add_module("head", nn.Linear(8, 2))
    actions = {row.name: (row.action, row.settings.get("pattern")) for row in dry_run(model, config)}
    assert actions == {"conv0": ("skip", None), "conv1": ("prune", "2x1"), "fc": ("prune", "per_scalar"),
                       "head": ("skip", None)}


def test_inc_1x_yaml() -> None:
    text = """
version: 1.0
model:
  name: resnet
  framework: pytorch
pruning:
  approach:
    weight_compression_pytorch:
      start_step: 0
      end_step: 40
      update_frequency_on_step: 4
      prune_type: magnitude
      prune_domain: local
      pattern: tile_pattern_1x1
      excluded_names: ["classifier"]
      pruners:
        - !!python/dict
          target_sparsity: 0.7
          names: ['layer.*']
          extra_excluded_names: ['layer3']
"""
    with pytest.raises(Exception, match="python/dict"):  # the safe loader refuses python tags
        from_inc_config(io.StringIO(text))
    config = from_inc_config(io.StringIO(text.replace("!!python/dict", "")))
    module = config.module_name_configs[".*(?:layer.*).*"]
    assert module.criterion.kind == "magnitude" and module.scope == "local" and module.target_sparsity == 0.7
    assert module.scheduler.frequency == 4 and module.pattern is None
    assert config.module_name_configs[".*(?:classifier).*"] is None
    assert config.module_name_configs[".*(?:layer3).*"] is None


def test_inc_yaml_file(tmp_path) -> None:
    path = tmp_path / "pruning.yaml"
    path.write_text("target_sparsity: 0.6\npattern: 4x1\nsparsity_decay_type: cos\nend_step: 10\n")
    assert from_inc_config(path).global_config.scheduler.kind == "cosine"
    assert from_inc_config(str(path)).global_config.target_sparsity == 0.6


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"pruning_type": "snip_momentum_progressive"}, "pruning_type='snip_momentum_progressive' cannot be honoured"),
        ({"pruning_type": "sparse_gpt"}, "cannot be honoured"),
        ({"pattern": "mha"}, "pattern='mha' cannot be honoured"),
        ({"low_memory_usage": True}, "low_memory_usage=True cannot be honoured"),
        ({"reg_type": "group_lasso"}, "reg_type='group_lasso' cannot be honoured"),
        ({"criterion_reduce_type": "sum"}, "criterion_reduce_type='sum' cannot be honoured"),
        ({"start_epoch": 1}, "start_epoch=1 cannot be honoured.*step-based"),
        ({"prune_everything": True}, "unknown INC pruning key 'prune_everything'"),
        ({"sparsity_decay_type": "cubic"}, "sparsity_decay_type='cubic' is invalid"),
        ({"pruning_op_types": ["Embedding"]}, "matches none of the supported module types"),
        ({"excluded_op_names": ["("]}, "not a valid regular expression"),
        ({"pruning_scope": "layer"}, "scope"),
        ({"pruning_configs": [{"pruning_op_types": ["Linear"]}, {"op_names": ["x"]}]}, "pruning_op_types differ"),
        ({"pruning_configs": [{}, {"pattern": "1x1"}]}, "second pruner without op_names"),
        ({"pruning_configs": [{"target_sparsity": 0.5, "bogus": 1}]}, r"pruning_configs\[0\]: unknown INC"),
    ],
)
def test_keys_that_cannot_be_honoured_are_errors(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_inc_config(data)
