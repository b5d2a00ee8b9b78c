"""Configs: Core ML Tools' fields and defaults, validation on build and on change, lookup, dict/YAML."""

import io
import json
from collections import OrderedDict

import attrs
import pytest
from torch import nn

from sparsify import (
    ConstantSparsityScheduler,
    MagnitudePrunerConfig,
    ModuleMagnitudePrunerConfig,
    PolynomialDecayScheduler,
)


def test_fields_order_and_defaults_match_core_ml() -> None:
    names = [a.name for a in attrs.fields(ModuleMagnitudePrunerConfig) if a.init]
    assert names == ["scheduler", "initial_sparsity", "target_sparsity", "granularity", "block_size",
                     "n_m_ratio", "dim", "param_name"]
    cfg = ModuleMagnitudePrunerConfig()
    assert cfg.scheduler == ConstantSparsityScheduler(begin_step=0)
    assert (cfg.initial_sparsity, cfg.target_sparsity, cfg.granularity) == (0.0, 0.5, "per_scalar")
    assert (cfg.block_size, cfg.n_m_ratio, cfg.dim, cfg.param_name) == (1, None, 1, "weight")
    # each config owns its scheduler (Core ML Tools shares one mutable default)
    assert ModuleMagnitudePrunerConfig().scheduler is not cfg.scheduler
    assert [a.name for a in attrs.fields(MagnitudePrunerConfig)] == [
        "global_config", "module_type_configs", "module_name_configs"]
    # the preset of the one machine: magnitude criterion, Core ML patterns, local scope, no caps
    assert (cfg.criterion.kind, cfg.pattern, cfg.scope, cfg.max_sparsity) == ("magnitude", None, "local", 1.0)
    with pytest.raises(TypeError):
        ModuleMagnitudePrunerConfig(criterion="snip")  # not a Core ML Tools field


def test_default_model_config_prunes_everything_until_something_specific_is_set() -> None:
    assert MagnitudePrunerConfig().global_config == ModuleMagnitudePrunerConfig()
    assert MagnitudePrunerConfig(module_type_configs={nn.Linear: ModuleMagnitudePrunerConfig()}).global_config is None
    assert MagnitudePrunerConfig() == MagnitudePrunerConfig()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"target_sparsity": 1.5}, ValueError, "target_sparsity=1.5 is invalid: allowed 0.0 <= target_sparsity <= 1.0"),
        ({"target_sparsity": -0.1}, ValueError, "allowed 0.0 <= target_sparsity"),
        ({"initial_sparsity": 2.0}, ValueError, "initial_sparsity=2.0 is invalid"),
        ({"target_sparsity": "x"}, TypeError, "expected a number, got str"),
        ({"target_sparsity": float("nan")}, ValueError, "expected a finite number"),
        ({"block_size": 0}, ValueError, "block_size=0 is invalid: allowed 1 <= block_size"),
        ({"block_size": -3}, ValueError, "block_size=-3"),
        ({"dim": 2}, ValueError, "dim=2 is invalid: allowed values are 0, 1"),
        ({"n_m_ratio": (4, 4)}, ValueError, "allowed 1 <= n < m, where n is the number of ZEROS"),
        ({"n_m_ratio": (5, 4)}, ValueError, "n_m_ratio=\\(5, 4\\)"),
        ({"n_m_ratio": (0, 4)}, ValueError, "allowed 1 <= n < m"),
        ({"n_m_ratio": (1, 2, 3)}, TypeError, "expected None or a pair"),
        ({"granularity": "per_layer"}, ValueError, "'per_layer' is not a pruning granularity"),
        ({"granularity": "foo"}, ValueError, "allowed values are 'per_scalar', 'per_kernel', 'per_channel'"),
        ({"param_name": ""}, TypeError, "param_name=''"),
        ({"scheduler": 3}, TypeError, "scheduler=3 is invalid: expected a PruningScheduler"),
        ({"n_m_ratio": (1, 2), "block_size": 2}, ValueError, "mutually exclusive"),
        ({"n_m_ratio": (1, 2), "granularity": "per_channel"}, ValueError, "mutually exclusive"),
        ({"initial_sparsity": 0.6, "target_sparsity": 0.5}, ValueError, "initial_sparsity <= the final sparsity"),
        ({"initial_sparsity": 0.6, "n_m_ratio": (1, 2)}, ValueError,
         "initial_sparsity <= the final sparsity \\(0.5\\)"),
    ],
)
def test_module_config_validation(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        ModuleMagnitudePrunerConfig(**kwargs)


def test_validation_on_assignment_keeps_the_old_value() -> None:
    cfg = ModuleMagnitudePrunerConfig(n_m_ratio=(1, 2))
    with pytest.raises(ValueError, match="mutually exclusive"):
        cfg.block_size = 4
    assert cfg.block_size == 1
    with pytest.raises(ValueError, match="target_sparsity=3.0"):
        cfg.target_sparsity = 3.0
    assert cfg.target_sparsity == 0.5
    cfg.target_sparsity = 1  # ints are fine
    assert cfg.target_sparsity == 1.0 and isinstance(cfg.target_sparsity, float)


def test_n_m_ratio_list_becomes_tuple_and_sets_final_sparsity() -> None:
    cfg = ModuleMagnitudePrunerConfig(n_m_ratio=[3, 4])
    assert cfg.n_m_ratio == (3, 4) and cfg.final_sparsity == 0.75


def test_set_methods_validate_and_chain() -> None:
    cfg = MagnitudePrunerConfig()
    module_cfg = ModuleMagnitudePrunerConfig(target_sparsity=0.7)
    assert cfg.set_global(module_cfg).set_module_type("Conv2d", None).set_module_name("fc", module_cfg) is cfg
    with pytest.raises(ValueError, match="module_type_configs='LSTM' is invalid: string keys must be one of Linear"):
        cfg.set_module_type("LSTM", module_cfg)
    with pytest.raises(TypeError, match="keys must be a supported module class"):
        cfg.set_module_type(nn.LSTM, module_cfg)
    with pytest.raises(TypeError, match=r"module_type_configs\[<class 'torch.nn.modules.linear.Linear'>\]=0.5"):
        cfg.set_module_type(nn.Linear, 0.5)
    with pytest.raises(TypeError, match="global_config=0.5 is invalid"):
        cfg.set_global(0.5)
    with pytest.raises(ValueError, match="keys are regular expressions and this one is invalid"):
        cfg.set_module_name("fc[", module_cfg)
    assert list(cfg.module_type_configs) == ["Conv2d"]  # the failed calls changed nothing


def test_lookup_precedence() -> None:
    name_cfg, class_cfg, str_cfg, base_cfg, glob = (ModuleMagnitudePrunerConfig(target_sparsity=s)
                                                    for s in (0.1, 0.2, 0.3, 0.4, 0.5))

    class MyLinear(nn.Linear):
        pass

    cfg = MagnitudePrunerConfig(
        global_config=glob,
        module_type_configs=OrderedDict([("Linear", str_cfg), (nn.Linear, class_cfg), (nn.Conv2d, base_cfg)]),
        module_name_configs=OrderedDict([(r"layers\.\d+\.fc", name_cfg), ("layers.*", None)]),
    )
    lin, conv = nn.Linear(2, 2), nn.Conv2d(1, 1, 1)
    assert cfg.get_module_config("layers.3.fc", lin) is name_cfg  # first matching regex wins
    assert cfg.get_module_config("layers.3.fc2", lin) is None  # fullmatch: falls to the second regex
    assert cfg.get_module_config("fc", lin) is class_cfg  # class key beats class-name key
    assert cfg.get_module_config("x", MyLinear(2, 2)) is class_cfg  # a subclass follows its base's entry
    assert cfg.get_module_config("c", conv) is base_cfg
    assert cfg.get_module_config("c", nn.Conv1d(1, 1, 1)) is glob


def test_from_dict_and_yaml_round_trip(tmp_path) -> None:
    cfg = MagnitudePrunerConfig(
        global_config=ModuleMagnitudePrunerConfig(
            target_sparsity=0.8, scheduler=PolynomialDecayScheduler(update_steps="range(0, 100, 10)", power=2)),
        module_type_configs={nn.Conv2d: ModuleMagnitudePrunerConfig(n_m_ratio=(3, 4)), "Linear": None},
        module_name_configs={"fc3": ModuleMagnitudePrunerConfig(granularity="per_channel", block_size=2)},
    )
    data = cfg.as_dict()
    json.dumps(data)  # plain types only
    assert data["module_type_configs"]["Conv2d"]["n_m_ratio"] == [3, 4]
    assert data["global_config"]["scheduler"] == {"update_steps": list(range(0, 100, 10)), "power": 2}
    again = MagnitudePrunerConfig.from_dict(data)
    assert again.as_dict() == data
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    assert MagnitudePrunerConfig.from_yaml(path).as_dict() == data
    assert MagnitudePrunerConfig.from_yaml(io.StringIO(path.read_text())).as_dict() == data


def test_from_yaml_core_ml_style_document() -> None:
    text = """
    global_config:
      scheduler:
        update_steps: range(0, 100, 5)
      target_sparsity: 0.75
    module_type_configs:
      Linear: null
    module_name_configs:
      conv1:
        target_sparsity: 0.5
        granularity: per_channel
    """
    cfg = MagnitudePrunerConfig.from_yaml(io.StringIO(text))
    assert cfg.global_config.scheduler.update_steps.tolist() == list(range(0, 100, 5))
    assert cfg.module_type_configs == {"Linear": None}
    assert cfg.module_name_configs["conv1"].granularity == "per_channel"
    assert MagnitudePrunerConfig.from_yaml(io.StringIO("")) == MagnitudePrunerConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"global_confg": {}}, "unknown key\\(s\\) 'global_confg' for MagnitudePrunerConfig"),
        ({"global_config": {"target_sparsty": 0.5}}, "unknown key\\(s\\) 'target_sparsty' for ModuleMagnitude"),
        ({"global_config": {"scheduler": {"begin_step": 1, "power": 2}}}, "unknown key\\(s\\) 'power'"),
        ({"module_type_configs": {"GRU": None}}, "string keys must be one of"),
        ({"module_type_configs": {"Linear": 0.3}}, "expected a ModuleMagnitudePrunerConfig"),
    ],
)
def test_from_dict_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        MagnitudePrunerConfig.from_dict(data)


def test_from_yaml_rejects_non_mapping_and_unsafe_tags() -> None:
    with pytest.raises(ValueError, match="must be a mapping at the top level, got list"):
        MagnitudePrunerConfig.from_yaml(io.StringIO("- 1\n- 2\n"))
    with pytest.raises(ValueError, match="line 1: invalid YAML: .*nothing is ever built from a tag"):
        MagnitudePrunerConfig.from_yaml(io.StringIO("global_config: !!python/object/apply:os.system ['true']\n"))
    with pytest.raises(ValueError, match="the tag .!Pruner.: only plain YAML data is read"):
        MagnitudePrunerConfig.from_yaml(io.StringIO("global_config: !Pruner {}\n"))  # configs take no tags
