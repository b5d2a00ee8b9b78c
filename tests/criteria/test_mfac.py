"""The ``mfac`` criterion on the one machine: exact saliency and OBS update, global/local scope with caps and
patterns, recomputation, gradual recording of training gradients, memory plan, config round trips."""

import copy
import io
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify import (
    ConstantSparsityScheduler,
    ModulePrunerConfig,
    PolynomialDecayScheduler,
    Pruner,
    PrunerConfig,
    prune,
)
from sparsify.criteria import MFACCriterion
from sparsify.criteria.fisher import MemoryBudgetError
from sparsify.criteria.sampler import GradSampler
from sparsify.scope import global_keep_masks, pruned_count


def _mlp(sizes: tuple[int, ...] = (8, 16, 4), seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _batches(n: int = 16, size: int = 8, features: int = 8, classes: int = 4, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]


_FIELDS = ("scheduler", "initial_sparsity", "pattern", "min_sparsity", "max_sparsity", "normalize")


def _module(sparsity: float = 0.5, *, criterion: str = "mfac", scope: str = "global", **options) -> ModulePrunerConfig:
    """A module config: M-FAC (options that are not module fields are its settings) or magnitude; global scope
    unless told (the old MFACPrunerConfig's default, SparseML's ``global_sparsity``)."""
    fields = {k: options.pop(k) for k in _FIELDS if k in options}
    return ModulePrunerConfig(target_sparsity=sparsity, criterion={"kind": criterion, **options}, scope=scope,
                              **fields)


def _config(sparsity: float = 0.5, **options) -> PrunerConfig:
    return PrunerConfig(global_config=_module(sparsity, **options))


def _sampler(batches: list) -> GradSampler:
    return GradSampler(batches, F.cross_entropy, progress=False)


def _oneshot(model: nn.Module, config: PrunerConfig, sampler: GradSampler | None = None, *,
             finalize: bool = True) -> Pruner:
    """One shot on a copy of ``model`` (what ``oneshot_prune`` did): prepare, prune_now, finalize."""
    pruner = Pruner(model, config, sampler)
    pruner.prepare()
    pruner.prune_now()
    if finalize:
        pruner.finalize(inplace=True)
    return pruner


def _log(pruner: Pruner, name: str = "0") -> list[dict]:
    return pruner.scorer_of(name).log


def _weights(model: nn.Module, names=("0", "2")) -> dict[str, torch.Tensor]:
    return {n: model.get_submodule(n).weight.detach().clone() for n in names}


def test_saliency_ranking_and_obs_update_match_the_explicit_inverse() -> None:
    model = _mlp()
    batches = _batches(10)
    before = _weights(model)
    config = _config(0.6, num_grads=10, fisher_block_size=None, damp=1e-2, damp_mode="absolute")
    pruner = _oneshot(model, config, _sampler(batches), finalize=False)

    # the same computation by hand: G (10 × 192), F = λI + GᵀG/10, explicit inverse
    params = [model[0].weight, model[2].weight]
    rows = []
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    g = torch.stack(rows).double()
    inverse = torch.linalg.inv(1e-2 * torch.eye(g.shape[1], dtype=torch.float64) + g.T @ g / 10)
    w = torch.cat([before["0"].reshape(-1), before["2"].reshape(-1)]).double()
    saliency = w**2 / (2 * inverse.diagonal())
    split = {"0": saliency[:128].reshape(16, 8), "2": saliency[128:].reshape(4, 16)}
    expected = global_keep_masks(split, 0.6)
    masks = dict(pruner.named_masks())
    for name in ("0", "2"):
        assert torch.equal(masks[name], expected[name])
    keep = torch.cat([expected["0"].reshape(-1), expected["2"].reshape(-1)])
    e = torch.where(keep, 0.0, w / inverse.diagonal())
    updated = w - inverse @ e
    got = torch.cat([model_w.reshape(-1) for model_w in
                     (pruner.model[0].weight_orig.detach(), pruner.model[2].weight_orig.detach())]).double()
    np.testing.assert_allclose(got[keep].numpy(), updated[keep].numpy(), rtol=1e-4, atol=1e-6)
    assert _log(pruner)[0]["num_grads"] == 10 and _log(pruner)[0]["dim"] == 192
    assert pruner.scorer_of("2") is pruner.scorer_of("0")  # one scorer, one Fisher for the whole ranking


def test_global_count_is_exact_and_layers_differ() -> None:
    pruner = _oneshot(_mlp(), _config(0.7, num_grads=8), _sampler(_batches()))
    report = pruner.report()
    assert report["global"]["unstructured_weight_sparsity"] == 134 / 192  # floor(192 × 0.7) zeros
    assert report["0"]["unstructured_weight_sparsity"] != report["2"]["unstructured_weight_sparsity"]
    layer = pruner.model[0]
    assert "_COREML_/weight/compression_type" in dict(layer.named_buffers())
    assert not hasattr(layer, "weight_orig") and not layer._forward_pre_hooks


def test_prune_in_one_call_equals_the_pruner() -> None:
    batches = _batches()
    pruner = _oneshot(_mlp(), _config(0.7, num_grads=8), _sampler(batches))
    pruned = prune(_mlp(), 0.7, criterion={"kind": "mfac", "num_grads": 8}, scope="global", sampler=_sampler(batches))
    for name in ("0", "2"):
        assert torch.equal(pruned.get_submodule(name).weight, pruner.model.get_submodule(name).weight), name


def test_magnitude_criterion_is_the_same_machine_with_abs_scores() -> None:
    model = _mlp()
    pruner = _oneshot(model, _config(0.6, criterion="magnitude"), finalize=False)
    expected = global_keep_masks({"0": model[0].weight.abs(), "2": model[2].weight.abs()}, 0.6)
    for name, mask in pruner.named_masks():
        assert torch.equal(mask, expected[name])
    torch.testing.assert_close(pruner.model[0].weight_orig, model[0].weight)  # no update for magnitude


def test_absolute_damping_collapses_to_magnitude_on_a_converged_model(sparsify_logs) -> None:
    """Study §6.4: with SparseML's damp=1e-5 and a Fisher diagonal ~1e-12, M-FAC ranks like magnitude."""
    model = _mlp()

    def vanishing_loss(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1e-5 * F.cross_entropy(outputs, target)  # gradients of a model that fits its data

    sampler = GradSampler(_batches(), vanishing_loss, progress=False)
    absolute = _oneshot(model, _config(0.6, num_grads=16, damp=1e-5, damp_mode="absolute"), sampler, finalize=False)
    magnitude = _oneshot(model, _config(0.6, criterion="magnitude"), finalize=False)
    assert "damping dominates" in sparsify_logs.text
    assert _log(absolute)[0]["damp_ratio"] > 1e3
    for (name, mask), (_, reference) in zip(absolute.named_masks(), magnitude.named_masks()):
        assert torch.equal(mask, reference), name
    sparsify_logs.clear()
    relative = _oneshot(model, _config(0.6, num_grads=16), sampler, finalize=False)  # the default
    assert "damping dominates" not in sparsify_logs.text
    differs = [not torch.equal(m, r) for (_, m), (_, r) in zip(relative.named_masks(), magnitude.named_masks())]
    assert any(differs)


def _trained_mlp() -> tuple[nn.Module, list]:
    """A 10-32-32-4 MLP fitted to a random teacher, and its training data as 32 batches of 16."""
    torch.manual_seed(0)
    teacher = _mlp((10, 24, 4), seed=5)
    x = torch.randn(512, 10)
    y = teacher(x).argmax(1)
    model = _mlp((10, 32, 32, 4), seed=1)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, [(x[i : i + 16], y[i : i + 16]) for i in range(0, 512, 16)]


def test_second_order_beats_magnitude_after_one_shot() -> None:
    model, batches = _trained_mlp()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def scores(pruner: Pruner) -> tuple[float, float]:
        with torch.no_grad():
            out = pruner.model(x)
        return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())

    magnitude = scores(_oneshot(model, _config(0.7, criterion="magnitude")))
    score_only = scores(_oneshot(model, _config(0.7, num_grads=32, obs_update=False), _sampler(batches)))
    mfac = scores(_oneshot(model, _config(0.7, num_grads=32), _sampler(batches)))
    recomputed = scores(_oneshot(model, _config(0.7, num_grads=32, num_recomputations=4), _sampler(batches)))
    assert magnitude[1] < score_only[1] < mfac[1] - 0.05  # accuracy: 0.69 < 0.71 < 0.78
    assert recomputed[0] < 0.7 * mfac[0] and recomputed[1] >= mfac[1]  # 4 steps: loss 1.35 -> 0.83


def test_global_budget_is_the_exact_count_over_all_weights() -> None:
    """pruned_count(all weights, s), as global_keep_masks counts — not the sum of the layers' own counts
    (89 + 44 = 133 here), nor that sum turned into a ratio and back (which gave 1591 for 1592 / 5312)."""
    pruned = prune(_mlp(), 0.7, scope="global")
    assert sum(int((pruned.get_submodule(n).weight == 0).sum()) for n in ("0", "2")) == pruned_count(192, 0.7)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.Linear(64, 72), nn.Linear(64, 3))  # 512 + 4608 + 192 weights
    pruned = prune(model, 0.3, scope="global")
    assert sum(int((m.weight == 0).sum()) for m in pruned) == pruned_count(5312, 0.3) == 1593


def test_recomputations_take_fresh_gradients_at_interpolated_levels() -> None:
    config = _config(0.6, num_grads={0.0: 4, 0.3: 6}, num_recomputations=3)
    pruner = _oneshot(_mlp(), config, _sampler(_batches(32)))
    log = _log(pruner)
    assert [round(e["sparsity_before"], 6) for e in log] == [0.0, 0.2, 0.4]
    assert [e["num_grads"] for e in log] == [4, 4, 6]  # the {sparsity: m} entry at or below the level
    assert [e["dim"] for e in log] == [192, 192 - pruned_count(192, 0.2), 192 - pruned_count(192, 0.4)]  # unpruned only
    assert pruner.report()["global"]["unstructured_weight_sparsity"] == 115 / 192
    model = _mlp()
    with pytest.raises(ValueError, match="MFACCriterion.num_recomputations=3 needs fresh gradients"):
        Pruner(model, config).prepare(inplace=True)
    assert not hasattr(model[0], "weight_orig")  # a refused prepare() leaves the model as it was


def test_num_grads_table_semantics() -> None:
    criterion = MFACCriterion(num_grads={0.5: 128, 0.0: 64, 0.9: 256})
    assert [level for level, _ in criterion.num_grads] == [0.0, 0.5, 0.9]
    assert [criterion.num_grads_at(s) for s in (0.0, 0.3, 0.5, 0.89, 0.95)] == [64, 64, 128, 128, 256]
    assert MFACCriterion(num_grads={0.2: 10}).num_grads_at(0.0) == 10  # below every key: the smallest
    assert _module(num_grads={0.5: 128, 0.0: 64}).criterion.as_dict()["num_grads"] == {0.0: 64, 0.5: 128}


def test_memory_budget_refuses_before_any_gradient() -> None:
    def never():
        raise AssertionError("gradients must not be collected")

    sampler = GradSampler(never, F.cross_entropy, progress=False)
    with pytest.raises(MemoryBudgetError, match="over the budget; try num_grads <= "):
        _oneshot(_mlp(), _config(num_grads=64, memory_budget=250_000), sampler)


def test_local_scope_ranks_each_layer_alone_with_its_pattern() -> None:
    config = PrunerConfig(module_name_configs={
        "0": _module(0.5, scope="local", pattern="1xchannel", num_grads=8),
        "2": _module(0.25, scope="local", num_grads=8),
    })
    pruner = _oneshot(_mlp(), config, _sampler(_batches()))
    report = pruner.report()
    assert report["0"]["structured_weight_sparsity"] == 0.5  # 8 of 16 whole rows
    assert report["0"]["unstructured_weight_sparsity"] == 0.5
    assert report["2"]["unstructured_weight_sparsity"] == 0.25
    assert len(_log(pruner)) == 1 and _log(pruner)[0]["dim"] == 192  # one Fisher for both entries


def test_global_scope_takes_patterns_too() -> None:
    """New in the one machine (the old MFACPruner refused patterns with global_sparsity=True): whole rows
    ranked by summed M-FAC saliency across both layers, the count short of the budget by less than a row."""
    pruner = _oneshot(_mlp(), _config(0.5, pattern="1xchannel", num_grads=8), _sampler(_batches()), finalize=False)
    masks = dict(pruner.named_masks())
    zeros = 0
    for name, mask in masks.items():
        rows = mask.float().mean(1)
        assert torch.all((rows == 0) | (rows == 1)), name  # every row whole
        zeros += int((~mask).sum())
    assert pruned_count(192, 0.5) - 16 < zeros <= pruned_count(192, 0.5)
    assert len(_log(pruner)) == 1 and _log(pruner)[0]["dim"] == 192


def test_global_ranking_covers_one_config_entry() -> None:
    """Two name entries with scope='global' are two rankings: each reaches its own target exactly."""
    config = PrunerConfig(module_name_configs={"0": _module(0.5, num_grads=8), "2": _module(0.25, num_grads=8)})
    report = _oneshot(_mlp(), config, _sampler(_batches())).report()
    assert report["0"]["unstructured_weight_sparsity"] == 0.5
    assert report["2"]["unstructured_weight_sparsity"] == 0.25


def test_layer_caps_in_global_ranking() -> None:
    pruner = _oneshot(_mlp(), _config(0.7, num_grads=8, max_sparsity=0.72), _sampler(_batches()))
    report = pruner.report()
    assert max(report[n]["unstructured_weight_sparsity"] for n in ("0", "2")) <= 0.72
    assert report["global"]["unstructured_weight_sparsity"] == 134 / 192
    low = _oneshot(_mlp(), _config(0.5, num_grads=8, min_sparsity=0.45), _sampler(_batches())).report()
    assert min(low[n]["unstructured_weight_sparsity"] for n in ("0", "2")) >= 0.45
    assert low["global"]["unstructured_weight_sparsity"] == 96 / 192


def test_masks_only_grow_and_repeat_exactly() -> None:
    batches = _batches()
    one = _oneshot(_mlp(), _config(0.5, num_grads=8), _sampler(batches), finalize=False)
    two = _oneshot(_mlp(), _config(0.5, num_grads=8), _sampler(batches), finalize=False)
    for (_, a), (_, b) in zip(one.named_masks(), two.named_masks()):
        assert torch.equal(a, b)
    before = {n: m.clone() for n, m in one.named_masks()}
    one.prune_now(0.8)
    for name, mask in one.named_masks():
        assert not (mask & ~before[name]).any()  # nothing pruned comes back
    assert one.report()["global"]["unstructured_weight_sparsity"] == 153 / 192


def _train(pruner: Pruner, model: nn.Module, steps: int) -> list[bool]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = _batches(steps, seed=7)
    recording = []
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
        recording.append(pruner.scorer_of("0").recording is not None)
    return recording


def test_gradual_pruning_records_training_gradients_before_each_update() -> None:
    schedule = PolynomialDecayScheduler(update_steps=[10, 20, 30])
    pruner = Pruner(_mlp(), _config(0.6, scheduler=schedule, num_grads=4))
    model = pruner.prepare(inplace=True)
    recording = _train(pruner, model, 34)
    # the schedule changes at steps 20 and 30 (step 10 is its start): recording opens 4 steps ahead
    assert [i + 1 for i, r in enumerate(recording) if r] == [16, 17, 18, 19, 26, 27, 28, 29]
    assert [(e["step"], e["num_grads"]) for e in _log(pruner)] == [(20, 4), (30, 4)]
    assert pruner.report()["global"]["unstructured_weight_sparsity"] == 115 / 192
    model = pruner.finalize(inplace=True)
    assert not model[0].weight._backward_hooks


def test_gradual_without_gradients_explains(sparsify_logs) -> None:
    pruner = Pruner(_mlp(), _config(0.5, num_grads=4))  # default schedule: prune at the first step()
    pruner.prepare(inplace=True)
    with pytest.raises(RuntimeError, match="M-FAC at step 1: no gradients for this update"):
        pruner.step()
    assert pruner.step_count == 0  # the failed step does not count
    pruner = Pruner(_mlp(), _config(0.5, num_grads=4, scheduler=ConstantSparsityScheduler(begin_step=3)))
    model = pruner.prepare(inplace=True)
    _train(pruner, model, 3)
    assert "only 3 of num_grads=4 training gradients" in sparsify_logs.text  # steps 1-3
    assert _log(pruner)[0]["num_grads"] == 3


def test_gradual_with_a_sampler_uses_it() -> None:
    schedule = PolynomialDecayScheduler(update_steps=[1, 3])
    pruner = Pruner(_mlp(), _config(0.5, scheduler=schedule, num_grads=4, num_recomputations=2),
                    sampler=_sampler(_batches()))
    model = pruner.prepare(inplace=True)
    assert not any(_train(pruner, model, 4))
    assert [e["step"] for e in _log(pruner)] == [3, 3]


def test_initial_sparsity_is_applied_by_magnitude_at_prepare() -> None:
    model = _mlp()
    pruner = Pruner(model, _config(0.5, initial_sparsity=0.25, scope="local"))
    pruner.prepare()
    assert not _log(pruner)
    expected = model[0].weight.abs() >= model[0].weight.abs().reshape(-1).kthvalue(33).values
    assert torch.equal(dict(pruner.named_masks())["0"], expected)
    # global scope: the initial magnitude ranking is global too, with the exact count
    pruner = Pruner(model, _config(0.5, initial_sparsity=0.25))
    pruner.prepare()
    assert not _log(pruner)
    weights = {"0": model[0].weight.abs(), "2": model[2].weight.abs()}
    expected = global_keep_masks(weights, 0.25)
    for name, mask in pruner.named_masks():
        assert torch.equal(mask, expected[name]), name
    assert sum(int((~m).sum()) for _, m in pruner.named_masks()) == pruned_count(192, 0.25)


def test_one_shot_needs_a_sampler_and_a_known_criterion() -> None:
    with pytest.raises(RuntimeError, match=r"no gradients for this update — one shot needs calibration data"):
        _oneshot(_mlp(), _config())
    with pytest.raises(ValueError, match="ModulePrunerConfig.criterion: criterion kind='obs' is unknown: allowed "
                                         "kinds are gradient, magnitude, mfac, snip, snip_momentum"):
        _config(criterion="obs")
    with pytest.raises(RuntimeError, match="call prepare\\(\\) first"):
        Pruner(_mlp(), _config()).prune_now()


def test_config_round_trip_and_field_errors() -> None:
    config = _config(0.7, num_grads={0.0: 16, 0.5: 32}, fisher_block_size=None, devices="cpu", memory_budget=2**30,
                     max_sparsity=0.9, normalize="l2")
    again = PrunerConfig.from_dict(copy.deepcopy(config.as_dict()))
    assert again.as_dict() == config.as_dict()
    assert again == config
    assert PrunerConfig.from_yaml(io.StringIO(config.to_yaml())).as_dict() == config.as_dict()
    assert again.global_config.criterion.devices == ("cpu",)
    assert again.global_config.criterion.num_grads == ((0.0, 16), (0.5, 32))
    prefix = "ModulePrunerConfig.criterion: "
    bad = [
        ({"num_grads": 0}, prefix + "MFACCriterion.num_grads=0 is invalid"),
        ({"num_grads": {1.0: 8}}, prefix + "MFACCriterion.num_grads=1.0 is invalid"),
        ({"damp": -1.0}, prefix + "MFACCriterion.damp=-1.0 is invalid"),
        ({"damp_mode": "rel"}, prefix + "MFACCriterion.damp_mode='rel' is invalid"),
        ({"fisher_block_size": 0}, prefix + "MFACCriterion.fisher_block_size=0 is invalid"),
        ({"num_recomputations": 0}, prefix + "MFACCriterion.num_recomputations=0 is invalid"),
        ({"devices": ["gpu7"]}, prefix + "MFACCriterion.devices='gpu7' is invalid"),
        ({"memory_budget": 1.5}, prefix + "MFACCriterion.memory_budget=1.5 is invalid"),
        ({"scope": "yes"}, "ModulePrunerConfig.scope='yes' is invalid"),
        ({"min_sparsity": 0.5, "max_sparsity": 0.4}, "allowed min_sparsity <= max_sparsity"),
        ({"normalize": "z"}, "ModulePrunerConfig.normalize='z' is invalid"),
    ]
    for kwargs, message in bad:
        with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
            _module(**kwargs)
    module = config.global_config
    with pytest.raises(ValueError, match="num_grads=-3 is invalid"):
        module.criterion = {"kind": "mfac", "num_grads": -3}
    assert module.criterion.num_grads == ((0.0, 16), (0.5, 32))  # a refused assignment changes nothing
    with pytest.raises(ValueError, match="unknown key\\(s\\) 'available_gpus' for criterion 'mfac'"):
        _module(available_gpus=["cuda:0"])
    with pytest.raises(ValueError, match="unknown key\\(s\\) 'available_gpus' for PrunerConfig"):
        PrunerConfig.from_dict({"available_gpus": ["cuda:0"]})


def test_gradual_modules_on_different_schedules_use_their_own_columns() -> None:
    config = PrunerConfig(module_name_configs={
        "0": _module(0.5, scheduler=ConstantSparsityScheduler(begin_step=8), num_grads=3),
        "2": _module(0.25, scheduler=ConstantSparsityScheduler(begin_step=12), num_grads=3),
    })
    pruner = Pruner(_mlp(), config)
    model = pruner.prepare(inplace=True)
    _train(pruner, model, 13)
    assert [(e["step"], e["dim"]) for e in _log(pruner)] == [(8, 128), (12, 64)]  # one module each
    report = pruner.report()
    assert report["0"]["unstructured_weight_sparsity"] == 0.5 and report["2"]["unstructured_weight_sparsity"] == 0.25


def _run(pruner: Pruner, model: nn.Module, part: list, optimizer: torch.optim.Optimizer) -> None:
    for x, y in part:
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()


def _resumed_at(step: int, schedule, batches: list) -> tuple[Pruner, nn.Module]:
    """Train to ``step``, checkpoint, resume into a fresh pruner and model, train to the end."""
    first = Pruner(_mlp(), _config(0.6, scheduler=schedule, num_grads=3))
    first_model = first.prepare(inplace=True)
    optimizer = torch.optim.SGD(first_model.parameters(), lr=0.05)
    _run(first, first_model, batches[:step], optimizer)
    saved = {"model": copy.deepcopy(first_model.state_dict()), "pruner": first.state_dict(),
             "optimizer": copy.deepcopy(optimizer.state_dict())}
    resumed = Pruner(_mlp(seed=5), _config(0.6, scheduler=schedule, num_grads=3))
    model = resumed.prepare(inplace=True)
    model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["pruner"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    optimizer.load_state_dict(saved["optimizer"])
    _run(resumed, model, batches[step:], optimizer)
    return resumed, model


def test_gradual_resume_between_recordings_is_exact() -> None:
    schedule = PolynomialDecayScheduler(update_steps=[4, 8, 12])
    batches = _batches(14, seed=7)
    reference = Pruner(_mlp(), _config(0.6, scheduler=schedule, num_grads=3))
    ref_model = reference.prepare(inplace=True)
    _run(reference, ref_model, batches, torch.optim.SGD(ref_model.parameters(), lr=0.05))
    resumed, model = _resumed_at(4, schedule, batches)  # recording for step 8 opens after step 5
    assert [(e["step"], e["num_grads"]) for e in _log(resumed)] == [(8, 3), (12, 3)]
    for (name, a), (_, b) in zip(reference.named_masks(), resumed.named_masks()):
        assert torch.equal(a, b), name
    for key, value in ref_model.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], msg=key)


def test_gradual_resume_inside_a_recording_window_is_exact() -> None:
    """Resumed after step 6, inside the window for the update at step 8: the gradient recorded at step 6 is in
    the pruner's state_dict, so the update at step 8 uses the same three gradients as an uninterrupted run."""
    schedule = PolynomialDecayScheduler(update_steps=[4, 8, 12])
    batches = _batches(14, seed=7)
    reference = Pruner(_mlp(), _config(0.6, scheduler=schedule, num_grads=3))
    ref_model = reference.prepare(inplace=True)
    _run(reference, ref_model, batches, torch.optim.SGD(ref_model.parameters(), lr=0.05))
    resumed, model = _resumed_at(6, schedule, batches)
    assert [(e["step"], e["num_grads"]) for e in _log(resumed)] == [(8, 3), (12, 3)]
    for (name, a), (_, b) in zip(reference.named_masks(), resumed.named_masks()):
        assert torch.equal(a, b), name
    for key, value in ref_model.state_dict().items():
        torch.testing.assert_close(value, model.state_dict()[key], msg=key)


def test_recorded_gradients_of_the_wrong_shape_are_refused_on_load(tmp_path) -> None:
    schedule = PolynomialDecayScheduler(update_steps=[4, 8, 12])
    pruner = Pruner(_mlp(), _config(0.6, scheduler=schedule, num_grads=3))
    model = pruner.prepare(inplace=True)
    _run(pruner, model, _batches(6, seed=7), torch.optim.SGD(model.parameters(), lr=0.05))
    torch.save(pruner.state_dict(), tmp_path / "pruner.pt")
    state = torch.load(tmp_path / "pruner.pt", weights_only=True)  # plain tensors and ints: safe to load
    name = next(iter(state["criterion_state"]))
    assert state["criterion_state"][name]["count"] == 1  # the window for step 8 opened after step 5: step 6 recorded
    state["criterion_state"][name]["rows"] = torch.zeros(3, 7)
    fresh = Pruner(_mlp(), _config(0.6, scheduler=schedule, num_grads=3))
    fresh.prepare(inplace=True)
    with pytest.raises(ValueError, match=f"M-FAC recorded gradients of module '{name}' have shape \\(3, 7\\)"):
        fresh.load_state_dict(state)
