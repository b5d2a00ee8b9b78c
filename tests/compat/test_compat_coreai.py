"""`sparsify.compat.coreai`: coreai-opt's pruning configs on sparsify's machine, mask for mask against coreai-opt."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsify.compat.coreai import MagnitudePruner, pruner_config

REASON = "coreai-opt is not installed: pip install 'sparsify-coreml[coreai]' (Linux x86-64, CPython 3.11+)"


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)
        self.conv2 = nn.Conv2d(16, 32, 3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


def _net() -> Net:
    torch.manual_seed(0)
    return Net().eval()


X = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)),)
LAYERS = ("conv1", "conv2", "head.1", "head.3")

CASES = {
    "global 0.75": {"global_config": {"op_state_spec": {"weight": {"target_sparsity": 0.75}}}},
    "type override": {"global_config": {"op_state_spec": {"weight": {"target_sparsity": 0.75}}},
                      "module_type_configs": {"torch.nn.modules.conv.Conv2d": {
                          "op_state_spec": {"weight": {"target_sparsity": 0.5}}}}},
    "name override": {"global_config": {"op_state_spec": {"weight": {"target_sparsity": 0.6}}},
                      "module_name_configs": {"head": {"op_state_spec": {"weight": {"target_sparsity": 0.9}}},
                                              "conv1": None}},
    "channels": {"global_config": {"op_state_spec": {"weight": {
        "target_sparsity": 0.5, "pruning_scheme": {"type": "channel_structured", "axis": 0}}}}},
    "input channels": {"global_config": None, "module_type_configs": {"torch.nn.modules.linear.Linear": {
        "op_state_spec": {"weight": {
            "target_sparsity": 0.25, "pruning_scheme": {"type": "channel_structured", "axis": 1}}}}}},
    "op type": {"global_config": {
        "op_state_spec": {"weight": {"target_sparsity": 0.3}},
        "op_type_config": {"conv2d": {"op_state_spec": {"weight": {"target_sparsity": 0.8}}}}}},
}


def _sparsify_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    return {n: (modules[n].weight != 0) for n in LAYERS}


def _coreai_opt_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    masks = {}
    for name in LAYERS:
        module = modules[name]
        if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
            masks[name] = module.parametrizations.weight[0].mask.bool()
        else:
            masks[name] = torch.ones_like(module.weight, dtype=torch.bool)
    return masks


@pytest.mark.parametrize("name", list(CASES))
def test_magnitude_configs_give_coreai_opt_masks(name: str) -> None:
    opt = pytest.importorskip("coreai_opt.pruning", reason=REASON)
    config = CASES[name]
    reference = _net()
    theirs = opt.MagnitudePruner(reference, opt.MagnitudePrunerConfig.model_validate(copy.deepcopy(config)))
    theirs.prepare(X)
    ours_model = _net()
    ours = MagnitudePruner(ours_model, copy.deepcopy(config))
    ours.prepare(X)
    expected, got = _coreai_opt_masks(reference), _sparsify_masks(ours_model)
    for layer in LAYERS:
        assert torch.equal(got[layer], expected[layer]), layer
    # the pydantic object translates to the same config as its dict
    assert pruner_config(opt.MagnitudePrunerConfig.model_validate(copy.deepcopy(config)), _net()).as_dict() == \
        pruner_config(copy.deepcopy(config), _net()).as_dict()


def test_a_polynomial_schedule_gives_coreai_opt_masks_at_every_step() -> None:
    opt = pytest.importorskip("coreai_opt.pruning", reason=REASON)
    from coreai_opt.pruning.config import PolynomialDecaySchedule

    schedule = PolynomialDecaySchedule(begin_step=1, total_iters=6, power=3.0, update_frequency=2)
    config = opt.MagnitudePrunerConfig(global_config=opt.ModuleMagnitudePrunerConfig(
        op_state_spec={"weight": opt.PruningSpec(target_sparsity=0.8)}, sparsity_schedule=schedule))
    reference, ours_model = _net(), _net()
    theirs = opt.MagnitudePruner(reference, config)
    theirs.prepare(X)
    ours = MagnitudePruner(ours_model, config)
    ours.prepare(X)
    levels = []
    for _ in range(9):
        theirs.step()
        ours.step()
        expected, got = _coreai_opt_masks(reference), _sparsify_masks(ours_model)
        for layer in LAYERS:
            assert torch.equal(got[layer], expected[layer]), (layer, len(levels))
        levels.append(round(1 - float(got["head.1"].float().mean()), 4))
    # 3 updates ((6 - 1) // 2 + 1) at steps 1, 3, 5: 0, 0.8 - 0.8 * (1 - 0.5) ** 3 = 0.7, 0.8; then 0.8 from step 7
    assert levels == [0.0, 0.0, 0.7, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8]


def test_finalize_backends_and_export_sizes_match_coreai_opt(tmp_path: Path) -> None:
    opt = pytest.importorskip("coreai_opt.pruning", reason=REASON)
    pytest.importorskip("coreai", reason=REASON)
    from sparsify.export.coreai import export_coreai
    from sparsify.export.coreai_run import convert_program, quiet_coreai

    config = CASES["global 0.75"]
    reference = _net()
    theirs = opt.MagnitudePruner(reference, opt.MagnitudePrunerConfig.model_validate(copy.deepcopy(config)))
    theirs.prepare(X)
    theirs_final = theirs.finalize()
    ours_final = MagnitudePruner(_net(), copy.deepcopy(config))
    ours_final.prepare(X)
    ours_model = ours_final.finalize()  # backend coreai: SparseModule parametrizations, as coreai-opt
    sizes = {}
    with quiet_coreai():
        for label, model in (("coreai-opt", theirs_final), ("sparsify", ours_model)):
            convert_program(model, X, debug_info=False).save_asset(tmp_path / f"{label}.aimodel")
            sizes[label] = (tmp_path / f"{label}.aimodel" / "main.mlirb").stat().st_size
    assert sizes["sparsify"] == sizes["coreai-opt"]
    plain = MagnitudePruner(_net(), copy.deepcopy(config))
    plain.prepare(X)
    torch_model = plain.finalize(backend="torch")
    assert not any(k.startswith("_COREML_") for k, _ in torch_model.named_buffers())
    report = export_coreai(torch_model, X, tmp_path / "ours.aimodel", sparse_weights="all", measure_dense=False)
    assert report.total_bytes <= sizes["coreai-opt"] * 1.01


def test_sparsify_fields_reach_core_ai_through_the_same_dicts() -> None:
    config = pruner_config({"global_config": {
        "op_state_spec": {"weight": {"target_sparsity": 0.5, "n_m_ratio": [2, 4], "criterion": "snip"}},
        "scheduler": {"kind": "cubic_fast_start", "start_step": 0, "end_step": 10, "frequency": 2}}}, _net())
    (rule, module_config), = config.module_name_configs.items()
    assert rule == r"conv1|conv2|head\.1|head\.3"
    assert module_config.n_m_ratio == (2, 4) and module_config.criterion.kind == "snip"
    assert module_config.scheduler.kind == "cubic_fast_start" and module_config.initial_sparsity == 0.0
    pruner = MagnitudePruner(_net(), config={"global_config": {"op_state_spec": {"weight": {
        "target_sparsity": 0.5, "pattern": "1x4", "scope": "global"}}}})
    model = pruner.prepare(X)
    layers = [model.conv2, model.head[1], model.head[3]]  # conv1's 3 input channels take no 1x4 tile: skipped
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    assert zeros == sum(m.weight.numel() for m in layers) // 2  # one global ranking of 1x4 tiles over the layers
    assert int((model.conv1.weight == 0).sum()) == 0


def test_defaults_yaml_and_refusals() -> None:
    default = pruner_config({}, _net())  # coreai-opt's default: 50 % of every weight, pruned at prepare()
    (module_config,) = default.module_name_configs.values()
    assert module_config.target_sparsity == module_config.initial_sparsity == 0.5
    yaml_text = "magnitude_pruning_config:\n  global_config: null\n  module_name_configs:\n    conv2:\n" \
                "      op_state_spec: {weight: {target_sparsity: 0.7}}\n"
    assert list(pruner_config(yaml_text, _net()).module_name_configs) == ["conv2"]
    with pytest.raises(ValueError, match=r"op_name_config=\{'linear_0': None\} is not supported"):
        pruner_config({"global_config": {"op_name_config": {"linear_0": None}}}, _net())
    with pytest.raises(ValueError, match=r"pruning spec key\(s\) \['sparsity'\] are unknown"):
        pruner_config({"global_config": {"op_state_spec": {"weight": {"sparsity": 0.5}}}}, _net())
    with pytest.raises(ValueError, match=r"module_type_configs key 'Linear' is invalid"):
        pruner_config({"module_type_configs": {"Linear": None}}, _net())
    with pytest.raises(ValueError, match=r"backend='onnx' is invalid: allowed coreai, coreml, torch"):
        pruner = MagnitudePruner(_net(), {})
        pruner.prepare(X)
        pruner.finalize(backend="onnx")


def test_unsupported_modules_are_left_dense_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.ConvTranspose2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    config = pruner_config({}, model)
    assert "0" not in "".join(config.module_name_configs)
    assert "0 (ConvTranspose2d) would be pruned by coreai-opt, but sparsify does not prune" in caplog.text


def test_among_type_configs_for_a_parent_and_a_child_the_last_entry_wins() -> None:
    opt = pytest.importorskip("coreai_opt.pruning", reason=REASON)
    for order in (("torch.nn.modules.container.Sequential", "torch.nn.modules.linear.Linear"),
                  ("torch.nn.modules.linear.Linear", "torch.nn.modules.container.Sequential")):
        sparsities = {"torch.nn.modules.container.Sequential": 0.3, "torch.nn.modules.linear.Linear": 0.7}
        config = {"global_config": None, "module_type_configs": {
            key: {"op_state_spec": {"weight": {"target_sparsity": sparsities[key]}}} for key in order}}
        reference, ours_model = _net(), _net()
        opt.MagnitudePruner(reference, opt.MagnitudePrunerConfig.model_validate(copy.deepcopy(config))).prepare(X)
        MagnitudePruner(ours_model, copy.deepcopy(config)).prepare(X)
        expected, got = _coreai_opt_masks(reference), _sparsify_masks(ours_model)
        for layer in ("head.1", "head.3"):
            assert torch.equal(got[layer], expected[layer]), (order, layer)
        kept = float(got["head.1"].float().mean())
        assert round(1 - kept, 2) == sparsities[order[-1]]


def test_a_sparsify_criterion_through_the_dict_reaches_a_core_ai_model(tmp_path: Path) -> None:
    pytest.importorskip("coreai", reason=REASON)
    from sparsify import GradSampler
    from sparsify.export.coreai import export_coreai

    calibration = [(torch.randn(4, 3, 8, 8), None) for _ in range(2)]
    model = _net()
    pruner = MagnitudePruner(model, {"global_config": {"op_state_spec": {"weight": {
        "target_sparsity": 0.5, "criterion": "wanda", "n_m_ratio": [2, 4]}}}}, sampler=GradSampler(calibration))
    pruner.prepare(X)
    pruner.step()
    finalized = pruner.finalize(backend="coreml")
    report = export_coreai(finalized, X, tmp_path / "m.aimodel", measure_dense=False)
    for layer in ("conv2", "head.1", "head.3"):  # conv1 (3 input channels: no whole run of 4) is not checked
        row = report.row(f"{layer}.weight")
        assert row.storage == "sparse" and row.nonzeros == row.numel // 2
    assert report.max_abs_diff < 1e-5
