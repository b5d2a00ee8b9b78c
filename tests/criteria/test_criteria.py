"""Criteria: formulas on tiny tensors, INC's snip-momentum coefficients, |W| not signed W, dict building,
and the scorers inside a real pruner (gradients from training hooks or a sampler, state round trips)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparsify import GradSampler, ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria import (
    GradientCriterion,
    MFACCriterion,
    SnipCriterion,
    SnipMomentumCriterion,
    criterion_from_dict,
    criterion_kinds,
)

W = torch.tensor([[-3.0, 0.5], [2.0, -0.1]])
G = torch.tensor([[0.1, -4.0], [-0.5, 2.0]])


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data = weight.clone()
    return layer


def _pruner(model: nn.Module, criterion, sparsity: float = 0.5, sampler=None) -> Pruner:
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=sparsity, criterion=criterion))
    pruner = Pruner(model, config, sampler)
    pruner.prepare(inplace=True)
    return pruner


def test_magnitude_is_absolute_value() -> None:
    # INC issue #592: a signed score prunes large negative weights first
    pruner = _pruner(_linear(W), "magnitude")
    assert torch.equal(pruner.scorer_of("").scores(pruner, ""), W.abs())
    pruner.step()
    assert pruner.model.weight_mask.tolist() == [[True, False], [True, False]]


def test_gradient_and_snip_formulas_use_the_latest_step() -> None:
    assert torch.equal(GradientCriterion().update(None, W, G), G.abs())
    state = SnipCriterion().update(None, W, G)
    assert torch.allclose(state, torch.tensor([[0.3, 2.0], [1.0, 0.2]]))
    later = SnipCriterion().update(state, W, 2 * G)  # no memory of earlier steps
    assert torch.allclose(later, 2 * state)


def test_snip_momentum_uses_inc_code_coefficients() -> None:
    # INC code: S <- 0.9 * S + 1.0 * |W * G|  (its README swaps them: S <- 1.0 * S + 0.9 * |W * G|)
    criterion = SnipMomentumCriterion()
    assert (criterion.decay, criterion.gain) == (0.9, 1.0)
    w = torch.tensor([2.0])
    s1 = criterion.update(None, w, torch.tensor([1.0]))  # 0.9 * 0 + |2 * 1| = 2
    s2 = criterion.update(s1, w, torch.tensor([-3.0]))  # 0.9 * 2 + |2 * -3| = 7.8
    s3 = criterion.update(s2, w, torch.tensor([0.5]))  # 0.9 * 7.8 + 1 = 8.02
    assert [s1.item(), s2.item(), s3.item()] == pytest.approx([2.0, 7.8, 8.02])
    assert s1 is not s2  # the state is not modified in place
    custom = SnipMomentumCriterion(decay=0.5, gain=2.0)
    twice = custom.update(custom.update(None, w, torch.tensor([1.0])), w, torch.tensor([1.0]))
    assert twice.item() == pytest.approx(0.5 * 4.0 + 2.0 * 2.0)


def test_snip_scores_come_from_the_training_loop_gradient() -> None:
    layer = _linear(W)
    pruner = _pruner(layer, "snip")
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    layer(x).mul(torch.tensor([[1.0, -2.0], [3.0, 0.5]])).sum().backward()
    # dL/dW = upstream^T @ x = [[1, 3], [-2, 0.5]]; |W * G| = [[3, 1.5], [4, 0.05]]
    pruner.step()
    assert torch.allclose(pruner.scorer_of("").state[""], torch.tensor([[3.0, 1.5], [4.0, 0.05]]))
    assert layer.weight_mask.tolist() == [[True, False], [True, False]]


def test_gradient_criteria_without_a_gradient_or_sampler_refuse_before_changing_anything() -> None:
    for criterion in ("gradient", "snip", "snip_momentum"):
        pruner = _pruner(_linear(W), criterion)
        with pytest.raises(RuntimeError, match="has seen no gradient"):
            pruner.step()
        assert pruner.step_count == 0  # the step did not count: calling step() again retries it
        assert pruner.model.weight_mask.all()


def test_one_shot_gradient_criteria_draw_gradients_from_the_sampler() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    batches = [(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(3)]
    sampler = GradSampler(batches, nn.functional.cross_entropy, progress=False)
    pruner = _pruner(model, {"kind": "snip_momentum", "num_batches": 3}, 0.5, sampler)
    expected = None
    for x, y in batches:  # the same fold, by hand, before anything is pruned
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        new = (model[0].weight_orig.detach() * model[0].weight_orig.grad).abs()
        expected = new if expected is None else 0.9 * expected + new
    model.zero_grad()
    pruner.prune_now()
    assert torch.allclose(pruner.scorer_of("0").state["0"], expected)
    assert int((~model[0].weight_mask).sum()) == 12


def test_criterion_state_round_trips_and_is_validated_on_load() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4))
    pruner = _pruner(model, "snip_momentum")
    model(torch.randn(3, 4)).sum().backward()
    pruner.observe_gradients()
    state = pruner.state_dict()
    assert set(state["criterion_state"]) == {"0"}
    assert state["criteria"] == {"0": {"kind": "snip_momentum", "num_batches": 8, "decay": 0.9, "gain": 1.0}}
    fresh = _pruner(nn.Sequential(nn.Linear(4, 4)), "snip_momentum")
    fresh.load_state_dict(state)
    assert torch.equal(fresh.scorer_of("0").state["0"], state["criterion_state"]["0"])
    bad = {**state, "criterion_state": {"0": torch.zeros(2, 2)}}
    with pytest.raises(ValueError, match=r"criterion state of module '0' has shape \(2, 2\), expected \(4, 4\)"):
        _pruner(nn.Sequential(nn.Linear(4, 4)), "snip_momentum").load_state_dict(bad)
    with pytest.raises(ValueError, match="was pruned with criterion"):
        _pruner(nn.Sequential(nn.Linear(4, 4)), "snip").load_state_dict(state)


def test_from_dict_and_round_trip() -> None:
    assert set(criterion_kinds()) >= {"magnitude", "gradient", "snip", "snip_momentum", "mfac"}
    assert criterion_from_dict("snip") == SnipCriterion()
    built = criterion_from_dict({"kind": "snip_momentum", "decay": 0.8})
    assert built == SnipMomentumCriterion(decay=0.8, gain=1.0)
    assert criterion_from_dict(built.as_dict()) == built
    assert criterion_from_dict(built) is built
    mfac = criterion_from_dict({"kind": "mfac", "num_grads": {0.0: 16, 0.5: 32}, "damp": 0.1})
    assert mfac == MFACCriterion(num_grads={0.5: 32, 0.0: 16}, damp=0.1)
    assert criterion_from_dict(mfac.as_dict()) == mfac
    assert (mfac.num_grads_at(0.2), mfac.num_grads_at(0.5)) == (16, 32)
    assert mfac.describe() == "mfac(num_grads=((0.0, 16), (0.5, 32)), damp=0.1)"
    with pytest.raises(ValueError, match="kind='movement' is unknown"):
        criterion_from_dict("movement")
    with pytest.raises(ValueError, match="unknown key.*'alpha'"):
        criterion_from_dict({"kind": "snip_momentum", "alpha": 0.9})
    with pytest.raises(ValueError, match="decay"):
        SnipMomentumCriterion(decay=-1.0)
    with pytest.raises(ValueError, match="MFACCriterion.damp=0.0 is invalid"):
        MFACCriterion(damp=0)
    with pytest.raises(TypeError):
        criterion_from_dict(3)


def test_mfac_on_a_cuda_device_without_cuda_falls_back_to_the_cpu_with_a_warning(caplog) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    spec = MFACCriterion(grads_device="cuda:0", devices=["cuda:0"])
    assert (spec.grads_device, spec.devices) == ("cpu", ("cpu",))
    assert "CUDA is not available" in caplog.text


def test_gradient_masks_only_grow_even_when_live_weights_tie_with_pruned_ones_at_zero() -> None:
    layer = nn.Linear(4, 4, bias=False)
    config = PrunerConfig(global_config=ModulePrunerConfig(
        target_sparsity=0.5, criterion="gradient",
        scheduler={"kind": "linear", "start_step": 0, "end_step": 2, "frequency": 1}))
    pruner = Pruner(layer, config)
    pruner.prepare(inplace=True)
    def backward_with_gradient(grad: torch.Tensor) -> None:  # dL/dW = grad (masked where pruned)
        layer.zero_grad()
        (layer(torch.eye(4)) * grad.T).sum().backward()

    backward_with_gradient(torch.arange(16.0, 0.0, -1.0).reshape(4, 4))  # the last four are lowest
    pruner.step()  # step 1 of 2: 25 %
    first = ~layer.weight_mask.clone()
    assert first.flatten().tolist() == [False] * 12 + [True] * 4
    grad = torch.ones(4, 4)
    grad.view(-1)[:6] = 0.0  # six live weights with a zero gradient (a dead unit) tie with the four pruned
    grad.view(-1)[12:] = 0.0
    backward_with_gradient(grad)
    pruner.step()  # 50 %: 8 pruned among the 10 zero scores — the 4 already pruned first, then by position
    pruned = ~layer.weight_mask
    assert int(pruned.sum()) == 8
    assert bool(pruned[first].all())
    assert pruned.flatten().tolist() == [True] * 4 + [False] * 8 + [True] * 4
