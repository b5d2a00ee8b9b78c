"""Criteria in a training loop on the one machine (`sparsify.Pruner`): exact counts (local / global with caps),
n:m ramps, resume, no patching of optimizer or torch.save, validation before anything changes.

(Ported from the GradualPruner tests: ``GradualPrunerConfig`` → ``PrunerConfig``, ``ModuleGradualPrunerConfig``
→ ``ModulePrunerConfig``, ``normalize`` moved into the module config.)"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import yaml
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.patterns import NMPattern
from sparsify.scope import pruned_count

BATCHES = [(torch.randn(16, 8, generator=torch.Generator().manual_seed(i)),
            torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(100 + i))) for i in range(40)]


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _config(**module_fields) -> PrunerConfig:
    model_fields = {k: module_fields.pop(k) for k in ("keep_classifier_dense", "module_types") if k in module_fields}
    return PrunerConfig(global_config=ModulePrunerConfig(**module_fields), **model_fields)


def _train(model, pruner, batches, optimizer=None, *, callbacks_order: bool = False) -> torch.optim.Optimizer:
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if callbacks_order:
            pruner.observe_gradients()
        optimizer.step()
        pruner.step()
    return optimizer


def _zeros(pruner) -> dict[str, int]:
    return {name: int((~mask).sum()) for name, mask in pruner.named_masks()}


def test_local_magnitude_exact_count_per_layer() -> None:
    model = _model()
    pruner = Pruner(model, _config(target_sparsity=0.7, pattern="2x1"))
    prepared = pruner.prepare()
    pruner.step()
    for name, zeros in _zeros(pruner).items():
        numel = prepared.get_submodule(name).weight.numel()
        assert zeros == pruned_count(numel, 0.7) // 2 * 2, name
    assert not hasattr(model[0], "weight_orig")  # prepare() worked on a copy


def test_global_scope_exact_count_and_caps_bind() -> None:
    model = _model()
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # by raw |W| this layer would be emptied first
    pruner = Pruner(model, _config(target_sparsity=0.6, scope="global", max_sparsity=0.9))
    pruner.prepare(inplace=True)
    pruner.step()
    zeros = _zeros(pruner)
    total = sum(m.weight.numel() for m in (model[0], model[2], model[4]))
    assert sum(zeros.values()) == pruned_count(total, 0.6)
    assert zeros["2"] == pruned_count(256, 0.9)  # pinned at its cap, the rest is water-filled
    # normalised ranking spreads the budget instead
    fair = Pruner(_model(), _config(target_sparsity=0.6, scope="global", normalize="mean"))
    fair.prepare()
    fair.step()
    assert sum(_zeros(fair).values()) == pruned_count(total, 0.6)


def test_global_scope_min_cap_binds() -> None:
    model = _model()
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # by raw |W| this layer would take the whole budget
    pruner = Pruner(model, _config(target_sparsity=0.5, scope="global", min_sparsity=0.4))
    pruner.prepare(inplace=True)
    pruner.step()
    zeros = _zeros(pruner)
    assert sum(zeros.values()) == pruned_count(128 + 256 + 64, 0.5)
    assert zeros["0"] == pruned_count(128, 0.4) and zeros["4"] == pruned_count(64, 0.4)  # held at the floor
    assert zeros["2"] == pruned_count(448, 0.5) - zeros["0"] - zeros["4"]


def test_global_scope_mixed_group_sizes_in_one_ranking() -> None:
    """Whole rows of 8 and 16 weights ranked together: every row whole, the count short by less than a row."""
    model = _model()
    pruner = Pruner(model, _config(target_sparsity=0.5, scope="global", pattern="1xchannel"))
    pruner.prepare(inplace=True)
    pruner.step()
    masks = dict(pruner.named_masks())
    for name, mask in masks.items():
        rows = mask.float().mean(1)
        assert torch.all((rows == 0) | (rows == 1)), name
    zeros = sum(_zeros(pruner).values())
    assert pruned_count(448, 0.5) - 16 < zeros <= pruned_count(448, 0.5)


def test_global_ranking_covers_one_config_entry(sparsify_logs) -> None:
    """New in the one machine: a global ranking covers the modules of ONE config entry. Here "0" has its own
    entry, so it is ranked alone (its min cap makes 75 % of it), and the 4x1 entry ranks "2" and "4" at 50 %.
    (GradualPruner ranked every global module together, so a cap on one layer shaped the others' share.)"""
    model = _model()
    config = PrunerConfig(
        global_config=ModulePrunerConfig(target_sparsity=0.5, scope="global", pattern="4x1"),
        module_name_configs={"0": ModulePrunerConfig(target_sparsity=0.5, scope="global", min_sparsity=0.75)},
    )
    pruner = Pruner(model, config)
    pruner.prepare(inplace=True)
    pruner.step()
    zeros = _zeros(pruner)
    assert zeros["0"] == pruned_count(128, 0.75)  # the cap wins over the 50 % target, with a warning
    assert "outside what the per-layer caps allow" in sparsify_logs.text
    assert zeros["2"] + zeros["4"] == pruned_count(256 + 64, 0.5)  # 160: a multiple of the 4-weight tiles


def test_snip_momentum_state_is_the_ema_of_w_times_g() -> None:
    model = _model()
    scheduler = {"kind": "linear", "start_step": 100, "end_step": 200}  # never prunes in this test
    pruner = Pruner(model, _config(criterion="snip_momentum", scheduler=scheduler))
    pruner.prepare(inplace=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = torch.zeros(16, 16)
    for x, y in BATCHES[:3]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        weight = model[2].weight_orig.detach().clone()
        expected = 0.9 * expected + 1.0 * (weight * model[2].weight_orig.grad).abs()
        pruner.observe_gradients()  # before the optimizer step, as INC's callback
        optimizer.step()
        pruner.step()
    assert torch.allclose(pruner.state_dict()["criterion_state"]["2"], expected)


def test_gradient_accumulation_folds_the_accumulated_gradient_once() -> None:
    model = _model()
    pruner = Pruner(model, _config(criterion="snip", scheduler={"kind": "linear", "start_step": 50,
                                                                       "end_step": 60}))
    pruner.prepare(inplace=True)
    for x, y in BATCHES[:2]:
        nn.functional.cross_entropy(model(x), y).backward()  # two micro-batches, no optimizer step
    grad = model[0].weight_orig.grad.clone()
    pruner.step()
    assert torch.allclose(pruner.state_dict()["criterion_state"]["0"], (model[0].weight_orig * grad).abs())
    pruner.step()  # no new backward: nothing new is folded in
    assert torch.allclose(pruner.state_dict()["criterion_state"]["0"], (model[0].weight_orig * grad).abs())


def test_gradient_criterion_without_backward_is_a_clear_error() -> None:
    pruner = Pruner(_model(), _config(criterion="snip_momentum", target_sparsity=0.5))
    pruner.prepare()
    with pytest.raises(RuntimeError, match=r"criterion 'snip_momentum' has seen no gradient for \['0', '2', '4'\]: "
                                           r"run loss.backward\(\) before pruner.step\(\)"):
        pruner.step()


@pytest.mark.parametrize("criterion", ["magnitude", "gradient", "snip", "snip_momentum"])
def test_every_criterion_reaches_the_target_in_training(criterion: str) -> None:
    model = _model()
    scheduler = {"kind": "exponential", "start_step": 0, "end_step": 20, "frequency": 5}
    pruner = Pruner(model, _config(criterion=criterion, target_sparsity=0.75, pattern="4x1",
                                          scope="global", scheduler=scheduler))
    pruner.prepare(inplace=True)
    _train(model, pruner, BATCHES[:24])
    total = 128 + 256 + 64
    assert sum(_zeros(pruner).values()) == pruned_count(total, 0.75) // 4 * 4
    for name, mask in pruner.named_masks():  # 4x1 tiles: every tile all kept or all pruned
        tiles = mask.reshape(-1, 4, mask.shape[1]).float().mean(1)
        assert torch.all((tiles == 0) | (tiles == 1)), name


def _n_m_ramp(scope: str) -> tuple[Pruner, list[torch.Tensor]]:
    """n:m (2, 4) on layer "2" only, ramped linearly to 50 % over steps 0-12 (levels 1/6, 1/3, 1/2 at 4, 8, 12)."""
    model = _model()
    scheduler = {"kind": "linear", "start_step": 0, "end_step": 12, "frequency": 4}
    config = PrunerConfig(module_name_configs={"2": ModulePrunerConfig(
        n_m_ratio=(2, 4), scheduler=scheduler, criterion="snip_momentum", scope=scope)})
    pruner = Pruner(model, config)
    pruner.prepare(inplace=True)
    zeros_per_run = []
    for x, y in BATCHES[:12]:
        nn.functional.cross_entropy(model(x), y).backward()
        pruner.step()
        model.zero_grad()
        zeros_per_run.append((~model[2].weight_mask).reshape(-1, 4).sum(1))
    return pruner, zeros_per_run


def test_n_m_ramp_in_training_global_makes_the_cheapest_runs_sparse() -> None:
    """Ranked globally (INC's ramp): every run is dense or exactly 2:4; the sparse runs grow with the schedule."""
    pruner, runs = _n_m_ramp("global")
    for step, zeros in enumerate(runs, 1):
        assert torch.all((zeros == 0) | (zeros == 2)), step
    seen = [int((zeros == 2).sum()) for zeros in runs]
    assert seen[3] == pruned_count(256, 0.5 / 3) // 2  # a third of the way: a third of the runs are 2:4
    assert seen[-1] == 64  # the end: every run is 2:4
    assert pruner.model[2].weight_amount.item() == pytest.approx(0.5)


def test_n_m_ramp_in_training_local_is_core_ml_tools_rule() -> None:
    """Ranked alone (Core ML Tools' ramp): k = int(s · m) zeros in every run, unstructured while k == 0."""
    pruner, runs = _n_m_ramp("local")
    assert int(runs[3].sum()) == pruned_count(256, 0.5 / 3)  # step 4: 1/6 → k = 0, unstructured
    assert not torch.all((runs[3] == 0) | (runs[3] == 2))
    assert torch.all(runs[7] == 1)  # step 8: 1/3 → one zero in every run of 4
    assert torch.all(runs[11] == 2)  # step 12: 2:4 everywhere
    assert pruner.model[2].weight_amount.item() == pytest.approx(0.5)


def test_local_scope_respects_max_sparsity() -> None:
    pruner = Pruner(_model(), _config(target_sparsity=0.95, max_sparsity=0.5))
    pruner.prepare()
    pruner.step()
    assert _zeros(pruner)["2"] == 128


def test_resume_is_exact_including_the_moving_averages() -> None:
    config = _config(criterion="snip_momentum", target_sparsity=0.8, scope="global", max_sparsity=0.95,
                     scheduler={"kind": "cubic_fast_start", "start_step": 0, "end_step": 30, "frequency": 3})

    reference = _model()
    reference_pruner = Pruner(reference, config)
    reference_pruner.prepare(inplace=True)
    _train(reference, reference_pruner, BATCHES[:30])

    first = _model()
    pruner = Pruner(first, config)
    pruner.prepare(inplace=True)
    optimizer = _train(first, pruner, BATCHES[:14])
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict(), "pruner": pruner.state_dict()},
               buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = _model(seed=123)
    pruner2 = Pruner(resumed, config)
    pruner2.prepare(inplace=True)
    resumed.load_state_dict(saved["model"])
    pruner2.load_state_dict(saved["pruner"])
    optimizer2 = torch.optim.SGD(resumed.parameters(), lr=0.05, momentum=0.9)
    optimizer2.load_state_dict(saved["optimizer"])
    _train(resumed, pruner2, BATCHES[14:30], optimizer2)

    for (name, a), (_, b) in zip(reference_pruner.named_masks(), pruner2.named_masks()):
        assert torch.equal(a, b), name
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    with pytest.raises(ValueError, match="unknown module"):
        pruner2.load_state_dict({**saved["pruner"], "criterion_state": {"nope": torch.zeros(1)}})


def test_nothing_global_is_patched_and_copies_work() -> None:
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    save, optimizer_step = torch.save, torch.optim.SGD.step
    pruner = Pruner(model, _config(criterion="snip_momentum", target_sparsity=0.5,
                                          scheduler={"kind": "linear", "start_step": 0, "end_step": 4}))
    pruner.prepare(inplace=True)
    _train(model, pruner, BATCHES[:2], optimizer, callbacks_order=True)
    assert torch.save is save and torch.optim.SGD.step is optimizer_step and "step" not in vars(optimizer)
    clone = copy.deepcopy(model)
    assert not clone[0].weight_orig._post_accumulate_grad_hooks
    pickle.loads(pickle.dumps(model))
    torch.save(model, io.BytesIO())
    _train(model, pruner, BATCHES[2:6])
    final = pruner.finalize(inplace=True)
    assert not final[0].weight._post_accumulate_grad_hooks  # hooks gone with the masks
    assert final[0]._buffers["_COREML_/weight/compression_type"].tolist() == [1]
    assert float((final[2].weight == 0).float().mean()) == pytest.approx(0.5)


def test_validation_before_the_model_changes() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(10, 4))
    pruner = Pruner(model, _config(n_m_ratio=(2, 4), scope="global"))
    with pytest.raises(ValueError, match=r"module '4' \(Linear\): n_m_ratio=\(2, 4\) ranked globally needs the "
                                         r"input channels \(10, weight shape \(4, 10\)\) to be a multiple of m=4"):
        pruner.prepare(inplace=True)
    assert not any(hasattr(m, "weight_orig") for m in model)  # modules 0 and 2 were valid: untouched all the same
    # the classifier head (last Linear) can be left dense, which makes the config valid
    pruner = Pruner(model, _config(n_m_ratio=(2, 4), scope="global", keep_classifier_dense=True))
    pruner.prepare(inplace=True)
    assert hasattr(model[0], "weight_orig") and not hasattr(model[4], "weight_orig")


def test_a_tile_that_does_not_divide_a_layer_skips_it(sparsify_logs) -> None:
    """New in the one machine (GradualPruner raised): like Neural Compressor, such a layer is skipped, loudly."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10))
    pruner = Pruner(model, _config(pattern="4x1"))
    pruner.prepare(inplace=True)
    assert list(pruner.targets) == ["0"]
    assert hasattr(model[0], "weight_orig") and not hasattr(model[2], "weight_orig")
    assert ("module '2' (Linear): pattern '4x1' needs the output channels (10, weight shape (10, 16)) to be a "
            "multiple of 4; exclude this module or pick a pattern that divides it; skipped") in sparsify_logs.text
    sparsify_logs.clear()
    Pruner(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10)),
           _config(pattern="4x1", keep_classifier_dense=True)).prepare()
    assert "skipped" not in sparsify_logs.text  # the head is left dense: nothing to warn about


def test_module_types_filter() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 8))
    pruner = Pruner(model, _config(module_types=["Conv2d"]))
    pruner.prepare(inplace=True)
    assert hasattr(model[0], "weight_orig") and not hasattr(model[2], "weight_orig")


def test_module_config_validation_and_round_trip() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        ModulePrunerConfig(pattern="4x1", n_m_ratio=(2, 4))
    # below n/m, INC's n:m (whole runs); at n/m, the same request as n_m_ratio=(2, 4)
    assert ModulePrunerConfig(pattern="2:4", target_sparsity=0.3).pattern_spec() == NMPattern(2, 4, by_runs=True)
    assert ModulePrunerConfig(pattern="2:4").pattern_spec() == ModulePrunerConfig(n_m_ratio=(2, 4)).pattern_spec()
    with pytest.raises(TypeError, match="n_m_from_string"):
        ModulePrunerConfig(n_m_ratio="2:4")
    with pytest.raises(ValueError, match="min_sparsity"):
        ModulePrunerConfig(min_sparsity=0.5, max_sparsity=0.4)
    with pytest.raises(ValueError, match="scope"):
        ModulePrunerConfig(scope="layer")
    with pytest.raises(ValueError, match="ModulePrunerConfig.criterion: criterion kind='movement' is unknown"):
        ModulePrunerConfig(criterion="movement")
    config = ModulePrunerConfig(n_m_ratio=(2, 4))
    assert config.final_sparsity == 0.5
    with pytest.raises(ValueError, match="mutually exclusive"):
        config.pattern = "4x1"
    model_config = PrunerConfig(
        global_config=ModulePrunerConfig(criterion={"kind": "snip_momentum", "decay": 0.8}, pattern="1xchannel",
                                         scheduler={"kind": "exponential", "end_step": 10}, normalize="l2"),
        module_name_configs={"head": None}, keep_classifier_dense=True, module_types=["Linear"],
    )
    data = yaml.safe_load(model_config.to_yaml())
    assert PrunerConfig.from_dict(data) == model_config
    with pytest.raises(ValueError, match="unknown key\\(s\\) 'scope' for PrunerConfig"):
        PrunerConfig.from_dict({"scope": "global"})
    with pytest.raises(ValueError, match="unknown key\\(s\\) 'normalize' for PrunerConfig"):  # a module field now
        PrunerConfig.from_dict({"normalize": "l2"})
    assert ModulePrunerConfig(pattern="1x1").pattern is None  # "1x1" is the Core ML fields' per-scalar
