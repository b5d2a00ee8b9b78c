"""SparseGPT and Wanda: exact worked examples, the paper's algorithm on tiny matrices, sequential calibration."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import ClassVar

import attrs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria import Criterion, GradSampler, Scorer, criterion_from_dict
from sparsify.criteria.calibration import Calibration, input_columns


def sampler_of(x: torch.Tensor, batch: int = 10) -> GradSampler:
    return GradSampler([(x[i : i + batch], None) for i in range(0, len(x), batch)], progress=False)


def one_shot(model: nn.Module, x: torch.Tensor, criterion, sparsity: float = 0.5, **fields) -> nn.Module:
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=sparsity, criterion=criterion, **fields))
    pruner = Pruner(model, config, sampler=sampler_of(x))
    pruner.prepare(inplace=True)
    pruner.prune_now()
    return pruner.finalize(inplace=True)


def paper_sparsegpt(weight, inputs, sparsity, damp=0.01, block=128, n_m=None, rule="block", rerank_every=4):
    """SparseGPT's Algorithm 1 (Frantar & Alistarh, 2023) written from the paper, in float64, without lazy
    batching: at every ``block`` columns choose the mask on the current weights by ``w² / [H⁻¹]_cc²`` with
    ``[H⁻¹]`` the upper Cholesky factor of the damped inverse Hessian; n:m at every run of m columns; then
    prune column j and update the later columns by ``(w_j / U_jj) · U[j, j:]``.

    ``rule="block"``: the paper's share of every block; ``rule="layer"``: sparsify's variant, the rest of the
    layer ranked again every ``rerank_every`` blocks with earlier blocks fixed (the same count), each of the next
    ``rerank_every`` blocks then taking its share of that ranking among its own current weights."""
    w = weight.double().clone()
    x = inputs.double()
    hessian = x.t() @ x / x.shape[0]
    hessian += damp * hessian.diagonal().mean() * torch.eye(hessian.shape[0], dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(hessian), upper=True)
    rows, cols = w.shape
    keep = torch.ones_like(w, dtype=torch.bool)
    total = round(w.numel() * sparsity)
    for j in range(cols):
        if n_m is None and j % block == 0:
            saliency = w.square() / u.diagonal().square()
            if rule == "block":
                part = saliency[:, j : j + block].reshape(-1)
                pruned = torch.zeros_like(part, dtype=torch.bool)
                pruned[torch.argsort(part)[: round(part.numel() * sparsity)]] = True
                keep[:, j : j + block] = ~pruned.reshape(rows, -1)
            elif (j // block) % rerank_every == 0:
                decided = torch.zeros_like(keep)
                decided[:, :j] = True
                ranked = torch.where(decided, torch.where(keep, torch.inf, -1.0), saliency).reshape(-1)
                pruned = torch.zeros_like(ranked, dtype=torch.bool)
                pruned[torch.argsort(ranked, stable=True)[:total]] = True
                pruned = pruned.reshape(rows, cols)
                keep[:, j : j + block] = ~pruned[:, j : j + block]
                shares = {k: int(pruned[:, k : k + block].sum()) for k in range(j, cols, block)}
            else:
                part = saliency[:, j : j + block].reshape(-1)
                pruned = torch.zeros_like(part, dtype=torch.bool)
                pruned[torch.argsort(part, stable=True)[: shares[j]]] = True
                keep[:, j : j + block] = ~pruned.reshape(rows, -1)
        if n_m is not None and j % n_m[1] == 0:
            saliency = w[:, j : j + n_m[1]].square() / u.diagonal()[j : j + n_m[1]].square()
            run = torch.ones_like(saliency, dtype=torch.bool)
            run.scatter_(1, torch.argsort(saliency, dim=1)[:, : n_m[0]], False)
            keep[:, j : j + n_m[1]] = run
        error = torch.where(keep[:, j], 0.0, w[:, j]) / u[j, j]
        w[:, j:] -= error.unsqueeze(1) * u[j, j:].unsqueeze(0)
    return torch.where(keep, w, 0.0), keep


# -- SparseGPT ---------------------------------------------------------------------------------


def test_sparsegpt_by_hand_prunes_the_cheaper_weight_and_moves_it_onto_the_correlated_one():
    # X's rows (2,2), (2,0), (0,2), (0,0): H = XᵀX/4 = [[2, 1], [1, 2]], damped by 0.01·mean(diag) = 0.02.
    # U = chol((H+λI)⁻¹): U₁₁² = c/(ac−b²), U₂₂² = 1/c with a = c = 2.02, b = 1.
    # Saliencies w²/U²: 1·(ac−b²)/c = 1.525 for w₁ = 1, 9·c = 18.18 for w₂ = 3 → prune w₁, and the OBS update
    # moves it onto w₂ through the correlation: w₂ + w₁·b/c = 3 + 1/2.02.
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 3.0]]))
    x = torch.tensor([[2.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    pruned = one_shot(layer, x, "sparsegpt")
    assert torch.allclose(pruned.weight, torch.tensor([[0.0, 3 + 1 / 2.02]]), atol=1e-6)


@pytest.mark.parametrize(("block", "rerank_every"), [(128, 4), (4, 1), (2, 4), (3, 2)])
def test_sparsegpt_matches_the_papers_algorithm_on_a_linear(block, rerank_every):
    torch.manual_seed(0)
    layer = nn.Linear(12, 6)
    x = torch.randn(40, 12) @ torch.randn(12, 12)  # correlated inputs, so the update matters
    expected, keep = paper_sparsegpt(layer.weight.detach(), x, 0.5, block=block, rule="layer",
                                     rerank_every=rerank_every)
    pruned = one_shot(layer, x, {"kind": "sparsegpt", "block_size": block, "rerank_every": rerank_every})
    assert torch.equal(pruned.weight != 0, keep)
    assert torch.allclose(pruned.weight.double(), expected, atol=1e-4, rtol=1e-4)


def test_one_block_is_exactly_the_papers_block_rule_and_beats_magnitude():
    torch.manual_seed(1)
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(64, 16) @ torch.randn(16, 16)
    dense, weight = layer(x).detach(), layer.weight.detach().clone()
    expected, keep = paper_sparsegpt(weight, x, 0.75, rule="block")
    pruned = one_shot(layer, x, "sparsegpt", 0.75)
    assert torch.equal(pruned.weight != 0, keep) and int(keep.sum()) == 32
    assert torch.allclose(pruned.weight.double(), expected, atol=1e-4, rtol=1e-4)
    top = torch.zeros(weight.numel(), dtype=torch.bool)
    top[weight.abs().flatten().argsort()[-32:]] = True
    magnitude = torch.where(top.reshape(weight.shape), weight, 0.0)
    assert (pruned(x) - dense).square().sum() < 0.7 * (x @ magnitude.t() - dense).square().sum()  # 0.63


def test_sparsegpt_2_of_4_matches_the_papers_runs_over_several_blocks():
    torch.manual_seed(2)
    layer = nn.Linear(12, 5)
    x = torch.randn(50, 12) @ torch.randn(12, 12)
    expected, keep = paper_sparsegpt(layer.weight.detach(), x, 0.5, n_m=(2, 4))
    pruned = one_shot(layer, x, {"kind": "sparsegpt", "block_size": 4}, n_m_ratio=(2, 4))
    assert torch.equal(pruned.weight != 0, keep)
    assert torch.equal((pruned.weight == 0).reshape(5, 3, 4).sum(-1), torch.full((5, 3), 2))
    assert torch.allclose(pruned.weight.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m", [2, 4, 8, 16])
def test_the_lowest_of_each_run_are_those_a_stable_sort_puts_first(m):
    from sparsify.criteria.sparsegpt_select import lowest_in_runs

    torch.manual_seed(m)
    runs = 300
    saliency = torch.randint(0, 4, (m, runs)).float()  # few values: many ties
    saliency[:, :5] = 1.0  # whole runs tied
    saliency[0, 5], saliency[m - 1, 6] = float("nan"), float("nan")
    counts = torch.randint(0, m + 1, (runs,))
    sortable = torch.nan_to_num(saliency, nan=float("inf"))
    expected = torch.argsort(torch.argsort(sortable, dim=0, stable=True), dim=0) < counts
    chosen = lowest_in_runs(saliency, counts)
    assert torch.equal(chosen, expected)
    assert torch.equal(chosen.sum(0), counts)
    assert torch.equal(chosen[:, 0], torch.arange(m) < counts[0])  # a tied run: the earlier positions first
    assert not chosen[0, 5] or counts[5] == m  # NaN ranks highest


@pytest.mark.parametrize("n_m_ratio", [None, (2, 4), (1, 4)])
def test_sparsegpt_skips_the_patterns_ranking_and_gives_the_same_weights(n_m_ratio, monkeypatch):
    # SparseGPT re-selects from the chosen mask's counts alone (all of them, or per n:m run): the update hands it
    # `Pattern.fresh_mask` without scoring; scored and ranked as before, the weights are the same bit for bit
    from sparsify.criteria import sparsegpt

    torch.manual_seed(11)
    model = nn.Sequential(nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.Linear(8, 5))
    x = torch.randn(24, 8, 6, 6)
    fields = {} if n_m_ratio is None else {"n_m_ratio": n_m_ratio}
    fresh = one_shot(copy.deepcopy(model), x, {"kind": "sparsegpt", "block_size": 8}, **fields)
    seen = []
    monkeypatch.setattr(sparsegpt._SparseGPTScorer, "reselects_alone",
                        lambda self, pruner, name: seen.append(name) and False)
    ranked = one_shot(copy.deepcopy(model), x, {"kind": "sparsegpt", "block_size": 8}, **fields)
    assert seen == ["0", "2", "3"]  # 5 × 8 at 50 %: 20 zeros, not whole rows (the others are)
    for ours, theirs in zip(fresh.parameters(), ranked.parameters()):
        assert torch.equal(ours, theirs)
    if n_m_ratio is not None:
        n, m = n_m_ratio
        runs = (fresh[2].weight == 0).reshape(8, -1, m).sum(-1)
        assert torch.equal(runs, torch.full_like(runs, n))


def test_an_n_m_patterns_fresh_mask_has_n_m_masks_counts_and_only_where_they_do_not_depend_on_scores():
    from sparsify.patterns import NMPattern, n_m_mask

    torch.manual_seed(12)
    for shape, dim in [((6, 8), 1), ((8, 6), 0), ((4, 8, 3, 3), 1)]:
        pattern = NMPattern(2, 4, dim)
        fresh = pattern.fresh_mask(torch.Size(shape), 0.5, torch.device("cpu"))
        assert fresh is not None and fresh.shape == shape
        assert torch.equal(pattern.run_counts(fresh), pattern.run_counts(n_m_mask(torch.rand(shape), (2, 4), dim)))
        assert fresh.untyped_storage().nbytes() == shape[dim]  # a view of one run's flags
    assert NMPattern(2, 4).fresh_mask(torch.Size((6, 10)), 0.5, torch.device("cpu")) is None  # a partial run
    assert NMPattern(2, 4).fresh_mask(torch.Size((6, 8)), 0.25, torch.device("cpu")) is None  # the ramp
    assert NMPattern(2, 4, by_runs=True).fresh_mask(torch.Size((6, 8)), 0.5, torch.device("cpu")) is None


def test_a_fresh_unstructured_mask_prunes_the_first_weights_and_is_a_view_where_they_are_whole_rows():
    from sparsify.patterns import CoreMLPattern

    pattern = CoreMLPattern()
    rows = pattern.fresh_mask(torch.Size((6, 4, 3)), 0.5, torch.device("cpu"))
    assert rows is not None and rows.untyped_storage().nbytes() == 6  # one flag per output channel
    assert torch.equal(rows.reshape(-1), torch.arange(72) >= 36)
    odd = pattern.fresh_mask(torch.Size((5, 4)), 0.5, torch.device("cpu"))
    assert odd is not None and torch.equal(odd.reshape(-1), torch.arange(20) >= 10)
    assert CoreMLPattern(granularity="per_channel").fresh_mask(torch.Size((5, 4)), 0.5, torch.device("cpu")) is None


def test_sparsegpt_2_of_4_equals_core_ml_tools_sparsegpt():
    lwc = pytest.importorskip("coremltools.optimize.torch.layerwise_compression")
    torch.manual_seed(3)
    layer = nn.Linear(16, 6)
    x = torch.randn(64, 16) @ torch.randn(16, 16)
    config = lwc.LayerwiseCompressorConfig.from_dict({
        "global_config": {"algorithm": "sparse_gpt", "n_m_ratio": [2, 4], "weight_dtype": "float32"},
        "calibration_nsamples": 8,
    })
    theirs = lwc.LayerwiseCompressor(nn.Sequential(layer), config).compress(list(x.split(8)), device="cpu")[0]
    ours = one_shot(layer, x, {"kind": "sparsegpt", "block_size": 8}, n_m_ratio=(2, 4))
    assert torch.equal(ours.weight != 0, theirs.weight != 0)
    assert torch.allclose(ours.weight, theirs.weight, atol=1e-5, rtol=1e-4)


def test_a_convolution_is_its_unfolded_patches_and_n_m_runs_over_input_channels_per_kernel_position():
    torch.manual_seed(4)
    conv = nn.Conv2d(8, 3, 2, padding=1)
    x = torch.randn(20, 8, 5, 5)
    columns = input_columns(conv, x)
    assert columns.shape == (20 * 36, 32)
    assert torch.allclose(columns @ conv.weight.detach().flatten(1).t() + conv.bias.detach(),
                          conv(x).detach().permute(0, 2, 3, 1).reshape(-1, 3), atol=1e-5)
    order = torch.arange(32).reshape(8, 4).t().reshape(-1)  # (kernel position, input channel)
    expected, keep = paper_sparsegpt(conv.weight.detach().flatten(1)[:, order], columns[:, order], 0.5, n_m=(2, 4))
    pruned = one_shot(conv, x, {"kind": "sparsegpt", "block_size": 8}, n_m_ratio=(2, 4))
    flat = pruned.weight.detach().flatten(1)[:, order]
    assert torch.equal(flat != 0, keep)
    assert torch.allclose(flat.double(), expected, atol=1e-4, rtol=1e-3)


def test_each_layer_is_calibrated_on_the_pruned_and_updated_layers_before_it():
    torch.manual_seed(5)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 10), act=nn.ReLU(), fc2=nn.Linear(10, 4)))
    x = torch.randn(60, 6) @ torch.randn(6, 6)
    w1, _ = paper_sparsegpt(model.fc1.weight.detach(), x, 0.5, rule="layer")
    hidden = torch.relu(x.double() @ w1.t() + model.fc1.bias.detach().double())
    w2, _ = paper_sparsegpt(model.fc2.weight.detach(), hidden, 0.5, rule="layer")
    unpruned_inputs, _ = paper_sparsegpt(model.fc2.weight.detach(), torch.relu(model.fc1(x)).detach(), 0.5)
    pruned = one_shot(model, x, "sparsegpt")
    assert torch.allclose(pruned.fc1.weight.double(), w1, atol=1e-4, rtol=1e-4)
    assert torch.allclose(pruned.fc2.weight.double(), w2, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(pruned.fc2.weight.double(), unpruned_inputs, atol=1e-3)


def test_update_bias_is_the_exact_damped_optimum_with_the_bias_as_a_never_pruned_input():
    torch.manual_seed(9)
    layer = nn.Linear(2, 1)
    x = torch.randn(30, 2) + torch.tensor([2.0, -1.0])  # inputs with a mean, so the bias can help
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.5, 3.0]]))
        layer.bias.fill_(0.25)
    start = torch.tensor([0.5, 3.0, 0.25], dtype=torch.float64)
    augmented = torch.cat([x, torch.ones(30, 1)], 1).double()
    hessian = augmented.t() @ augmented / 30
    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(3, dtype=torch.float64)
    # weight 0 is pruned; the others move to minimise (w − w₀)ᵀ(H + λI)(w − w₀): w_F = w₀_F + A_FF⁻¹ A_F0 w₀_0
    free = start[1:] + torch.linalg.solve(damped[1:, 1:], damped[1:, :1] * start[0]).squeeze(1)
    pruned = one_shot(layer, x, {"kind": "sparsegpt", "update_bias": True})
    assert torch.allclose(pruned.weight.double(), torch.tensor([[0.0, free[0]]], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(pruned.bias.double(), free[1:], atol=1e-5)


def test_asymmetric_fits_the_dense_outputs_from_the_pruned_inputs_then_prunes():
    torch.manual_seed(10)
    model = nn.Sequential(OrderedDict(fc1=nn.Linear(6, 10), act=nn.ReLU(), fc2=nn.Linear(10, 4)))
    x = torch.randn(60, 6) @ torch.randn(6, 6)
    dense_hidden = torch.relu(model.fc1(x)).detach().double()
    w1, _ = paper_sparsegpt(model.fc1.weight.detach(), x, 0.5, rule="layer")
    hidden = torch.relu(x.double() @ w1.t() + model.fc1.bias.detach().double())
    hessian, cross = hidden.t() @ hidden / 60, dense_hidden.t() @ hidden / 60
    damped = hessian + 0.01 * hessian.diagonal().mean() * torch.eye(10, dtype=torch.float64)
    weight = model.fc2.weight.detach().double()
    fitted = weight + weight @ (cross - hessian) @ torch.linalg.inv(damped)
    w2, _ = paper_sparsegpt(fitted, hidden, 0.5, rule="layer")
    pruned = one_shot(model, x, {"kind": "sparsegpt", "asymmetric": True})
    assert torch.allclose(pruned.fc1.weight.double(), w1, atol=1e-4, rtol=1e-4)
    assert torch.allclose(pruned.fc2.weight.double(), w2, atol=1e-4, rtol=1e-3)


# -- Wanda ---------------------------------------------------------------------------------------


def test_wanda_scores_weights_by_magnitude_times_input_norm():
    # inputs (1, 2) and (1, −2): column RMS 1 and 2, so |W|·‖X‖ = [[1, 2], [4, 8]] for W = [[1, 1], [4, 4]]
    x = torch.tensor([[1.0, 2.0], [1.0, -2.0]])
    weight = torch.tensor([[1.0, 1.0], [4.0, 4.0]])
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    per_layer = one_shot(layer, x, {"kind": "wanda", "per_output": False})
    assert torch.equal(per_layer.weight, torch.tensor([[0.0, 0.0], [4.0, 4.0]]))  # the two lowest: row 0
    with torch.no_grad():
        layer = nn.Linear(2, 2, bias=False)
        layer.weight.copy_(weight)
    per_output = one_shot(layer, x, "wanda")  # the paper's comparison group: each row loses its lowest
    assert torch.equal(per_output.weight, torch.tensor([[0.0, 1.0], [0.0, 4.0]]))


def test_wanda_on_a_convolution_uses_the_norms_of_its_unfolded_input_columns():
    torch.manual_seed(11)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(10, 3, 6, 6) * torch.tensor([1.0, 5.0, 0.2]).reshape(1, 3, 1, 1)
    columns = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 27)
    scores = conv.weight.detach().abs().flatten(1) * columns.square().mean(0).sqrt()
    expected = torch.ones(108, dtype=torch.bool)
    expected[scores.flatten().argsort()[:54]] = False
    pruned = one_shot(conv, x, {"kind": "wanda", "per_output": False})
    assert torch.equal(pruned.weight.flatten() != 0, expected)


def test_wanda_along_output_channels_is_magnitude_since_a_column_shares_its_input_norm():
    torch.manual_seed(6)
    layer = nn.Linear(8, 8)
    x = torch.randn(30, 8) * torch.arange(1.0, 9.0)
    weight = layer.weight.detach().clone()
    pruned = one_shot(layer, x, "wanda", n_m_ratio=(2, 4), dim=0)
    runs = weight.abs().t().reshape(8, 2, 4)
    expected = torch.ones_like(runs, dtype=torch.bool).scatter_(2, runs.argsort(2)[..., :2], False)
    assert torch.equal(pruned.weight != 0, expected.reshape(8, 8).t())


# -- the machine: counts, scopes, schedules, errors ---------------------------------------------


def test_gradual_updates_only_grow_the_masks_and_every_layer_lands_on_its_level():
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    x = torch.randn(40, 3, 8, 8)
    for criterion in ("sparsegpt", "wanda"):
        config = PrunerConfig(global_config=ModulePrunerConfig(
            target_sparsity=0.75, criterion=criterion, scheduler={"update_steps": [1, 2]}))
        pruner = Pruner(model, config, sampler=sampler_of(x))
        prepared = pruner.prepare()
        pruner.step()
        first = {n: t.mask.clone() for n, t in pruner.targets.items()}
        pruner.step()
        for name, target in pruner.targets.items():
            assert not (target.mask & ~first[name]).any()
            assert int((~target.mask).sum()) == round(0.75 * target.orig.numel())
        assert prepared is not model


def test_global_scope_ranks_the_unpruned_models_wanda_scores_then_reselects_per_layer():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(50, 16)
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.6, criterion="sparsegpt", scope="global"))
    pruner = Pruner(model, config, sampler=sampler_of(x))
    pruner.prepare(inplace=True)
    pruner.prune_now()
    zeros = {n: int((~t.mask).sum()) for n, t in pruner.targets.items()}
    assert sum(zeros.values()) == round(0.6 * (16 * 32 + 32 * 4))
    assert zeros["0"] != round(0.6 * 512)  # the budget is not uniform


def test_q_k_v_projections_share_one_stage_and_one_statistic():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))

        def forward(self, x):
            attention = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), -1)
            return self.out(attention @ self.v(x))

    model = Block()
    x = torch.randn(12, 5, 8)
    pruner = Pruner(model, PrunerConfig(global_config=ModulePrunerConfig(criterion="sparsegpt")), sampler_of(x, 4))
    pruner.prepare(inplace=True)
    calibration = Calibration(model, pruner.sampler, pruner.targets, 3, "test")
    stages = calibration.stages(list(pruner.targets))
    assert [s.names for s in stages] == [["q", "k", "v"], ["out"]]
    assert stages[0].leader == {"q": "q", "k": "q", "v": "q"}
    pruner.prune_now()
    assert all(int((~t.mask).sum()) == 32 for t in pruner.targets.values())


class _Stack(nn.Module):
    """Decoder-style: an embedding, blocks in a ModuleList called with one shared keyword argument, a head."""

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x, scale=None):
            return x + self.down(torch.relu(self.up(x))) * scale

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.embed = nn.Linear(4, 8)
        self.blocks = nn.ModuleList(self.Block() for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x, scale = self.embed(x), torch.tensor(0.5)
        for block in self.blocks:
            x = block(x, scale=scale)
        return self.head(x)


@pytest.mark.parametrize("criterion", [{"kind": "sparsegpt", "true_sequential": True},
                                       {"kind": "sparsegpt", "asymmetric": True},
                                       {"kind": "wanda", "true_sequential": True}])
def test_a_chain_of_blocks_runs_each_block_on_cached_inputs_with_the_same_result(criterion, monkeypatch):
    from sparsify.criteria import chain

    x = torch.randn(40, 5, 4)
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.6, criterion=criterion))

    def pruned() -> dict[str, torch.Tensor]:
        pruner = Pruner(_Stack(), config, sampler_of(x))
        pruner.prepare(inplace=True)
        pruner.prune_now()
        return pruner.finalize(inplace=True).state_dict()

    with_chain = pruned()
    probe = chain.ChainProbe(_Stack())
    assert [n for n, _ in probe.candidates] == ["blocks"]
    monkeypatch.setattr(chain.ChainProbe, "result", lambda self, targets: None)
    without = pruned()
    for key, value in with_chain.items():
        assert torch.equal(value == 0, without[key] == 0), key
        assert torch.allclose(value, without[key], atol=1e-5), key


def test_the_chain_probe_finds_decoder_blocks_and_the_calibration_uses_them():
    model = _Stack()
    config = PrunerConfig(global_config=ModulePrunerConfig(criterion="wanda"))
    pruner = Pruner(model, config, sampler_of(torch.randn(8, 4)))
    pruner.prepare(inplace=True)
    calibration = Calibration(model, pruner.sampler, pruner.targets, 2, "test")
    assert [s.names for s in calibration.stages(list(pruner.targets))][:3] == [["embed"], ["blocks.0.up"],
                                                                              ["blocks.0.down"]]
    assert calibration.chain is not None
    assert [name for name, _ in calibration.chain.blocks] == ["blocks.0", "blocks.1", "blocks.2"]
    assert calibration.chain.block_of("blocks.1.down") == 1 and calibration.chain.block_of("head") is None


@pytest.mark.parametrize("kind", ["sparsegpt", "wanda"])
def test_layerwise_criteria_calibrate_each_block_of_a_chain_on_one_forward_by_default(kind):
    """The default order is the reference codes' and Core ML Tools': every layer of block ``b`` calibrated on the
    block's inputs with blocks ``< b`` pruned — exactly pruning block after block, each with sequential=False."""
    model = _Stack()
    x = torch.randn(40, 5, 4)
    pruner = Pruner(model, PrunerConfig(global_config=ModulePrunerConfig(criterion=kind)), sampler_of(x))
    pruner.prepare(inplace=True)
    calibration = Calibration(model, pruner.sampler, pruner.targets, 4, "test")
    names = list(pruner.targets)
    assert [s.names for s in calibration.stages(names, by_block=True)] == [
        ["embed"], ["blocks.0.up", "blocks.0.down"], ["blocks.1.up", "blocks.1.down"],
        ["blocks.2.up", "blocks.2.down"], ["head"]]
    assert len(calibration.stages(names)) == 8  # true_sequential: one stage per layer

    def pruned(steps: list[tuple[str, object]]) -> dict[str, torch.Tensor]:
        model = _Stack()
        for pattern, criterion in steps:
            entry = ModulePrunerConfig(target_sparsity=0.6, criterion=criterion)
            pruner = Pruner(model, PrunerConfig(module_name_configs={pattern: entry}), sampler_of(x))
            pruner.prepare(inplace=True)
            pruner.prune_now()
            model = pruner.finalize(inplace=True)
        return model.state_dict()

    by_default = pruned([(".*", kind)])
    block_after_block = pruned([("embed", kind)] + [
        (rf"blocks\.{b}\..*", {"kind": kind, "sequential": False}) for b in range(3)] + [("head", kind)])
    layer_after_layer = pruned([(".*", {"kind": kind, "true_sequential": True})])
    for key, value in by_default.items():
        assert torch.equal(value == 0, block_after_block[key] == 0), key
        assert torch.allclose(value, block_after_block[key], atol=1e-5), key
    if kind == "sparsegpt":  # the OBS update changes the kept weights; Wanda only the masks
        assert not torch.allclose(by_default["blocks.0.down.weight"], layer_after_layer["blocks.0.down.weight"])
    else:
        assert not torch.equal(by_default["blocks.0.down.weight"] == 0, layer_after_layer["blocks.0.down.weight"] == 0)
    assert torch.equal(by_default["blocks.0.up.weight"], layer_after_layer["blocks.0.up.weight"])


def test_bad_settings_and_unsupported_layers_fail_early_naming_them():
    with pytest.raises(ValueError, match=r"SparseGPTCriterion.damp=0.0 is invalid"):
        criterion_from_dict({"kind": "sparsegpt", "damp": 0.0})
    with pytest.raises(ValueError, match=r"SparseGPTCriterion.block_size=0 is invalid"):
        criterion_from_dict({"kind": "sparsegpt", "block_size": 0})
    with pytest.raises(ValueError, match=r"SparseGPTCriterion.rerank_every=0 is invalid"):
        criterion_from_dict({"kind": "sparsegpt", "rerank_every": 0})
    with pytest.raises(TypeError, match=r"WandaCriterion.per_output='yes' is invalid"):
        criterion_from_dict({"kind": "wanda", "per_output": "yes"})
    with pytest.raises(ValueError, match="unknown key.*'percdamp'"):
        criterion_from_dict({"kind": "sparsegpt", "percdamp": 0.01})
    config = PrunerConfig(global_config=ModulePrunerConfig(criterion="sparsegpt"))
    with pytest.raises(ValueError, match=r"on data \(forward only, no loss needed\): pass sampler=<calibration data>"):
        Pruner(nn.Linear(4, 4), config).prepare()
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match=r"module '0' \(Conv2d\) has groups=2"):
        Pruner(grouped, config, sampler_of(torch.randn(4, 4, 5, 5))).prepare()
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    pruner = Pruner(attention, config, GradSampler([((torch.randn(2, 3, 8),) * 3, {}, None)], progress=False))
    pruner.prepare(inplace=True)
    with pytest.raises(RuntimeError, match=r"\['out_proj'\] were not called"):
        pruner.prune_now()
    assert int((~pruner.targets["out_proj"].mask).sum()) == 0  # the failed update changed nothing


def test_settings_round_trip_through_a_config_dict():
    entry = {"target_sparsity": 0.7, "criterion": {"kind": "sparsegpt", "block_size": 64, "damp": 0.05,
                                                   "update_bias": True, "asymmetric": True}}
    config = PrunerConfig.from_dict({"global_config": entry})
    criterion = config.global_config.criterion
    assert criterion.as_dict() == {"kind": "sparsegpt", "num_batches": 128, "block_size": 64, "damp": 0.05,
                                   "sequential": True, "update_bias": True, "asymmetric": True,
                                   "true_sequential": False, "rerank_every": 4}
    assert criterion.describe() == "sparsegpt(block_size=64, damp=0.05, update_bias=True, asymmetric=True)"
    assert PrunerConfig.from_dict(config.as_dict()) == config
    assert criterion_from_dict("wanda").as_dict() == {"kind": "wanda", "num_batches": 128, "sequential": True,
                                                      "per_output": True, "true_sequential": False}


def test_a_forward_only_sampler_cannot_give_gradients():
    sampler = GradSampler([(torch.randn(2, 4), None)], progress=False)
    with pytest.raises(ValueError, match="loss_fn=None, so it cannot give gradients"):
        next(sampler.gradients(nn.Linear(4, 2), [], 1))


@pytest.mark.slow
def test_ddp_ranks_sum_their_statistics_and_match_a_single_process(tmp_path):
    job = Path(__file__).resolve().parents[1] / "jobs" / "layerwise_ddp_job.py"
    subprocess.run([sys.executable, str(job), str(tmp_path)], check=True, timeout=300)
    rank0, rank1, single = (torch.load(tmp_path / f"{n}.pt") for n in ("rank0", "rank1", "single"))
    for criterion, state in rank0.items():
        for key, value in state.items():
            assert torch.equal(value, rank1[criterion][key]), (criterion, key)
            assert torch.equal(value == 0, single[criterion][key] == 0), (criterion, key)
            assert torch.allclose(value, single[criterion][key], atol=1e-5), (criterion, key)


# -- the engine's refinement contract ------------------------------------------------------------


class _Flip(Scorer):
    def __init__(self, change_count: bool) -> None:
        self.change_count = change_count

    def scores(self, pruner, name):
        return pruner.targets[name].orig.detach().abs()

    def after_masks(self, pruner, masks):
        return {n: torch.ones_like(m) if self.change_count else m.flip(-1) for n, m in masks.items()}


@attrs.define(eq=True, frozen=True)
class _FlipCriterion(Criterion):
    kind: ClassVar[str] = "test_flip"
    change_count: bool = False

    def scorer(self) -> Scorer:
        return _Flip(self.change_count)


def test_refined_masks_replace_the_chosen_ones_only_with_the_same_count(caplog):
    caplog.set_level(logging.ERROR)
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]]))
    pruner = Pruner(layer, PrunerConfig(global_config=ModulePrunerConfig(criterion=_FlipCriterion())))
    pruner.prepare(inplace=True)
    pruner.prune_now()
    assert torch.equal(layer.weight_mask, torch.tensor([[True, True, False, False], [False, False, True, True]]))
    other = nn.Linear(4, 2)
    pruner = Pruner(other, PrunerConfig(global_config=ModulePrunerConfig(criterion=_FlipCriterion(True))))
    pruner.prepare(inplace=True)
    with pytest.raises(RuntimeError, match="prunes 0 weights where the pattern and scope chose 4"):
        pruner.prune_now()
    assert bool(other.weight_mask.all())


def test_sampler_targets_and_loss_are_unused_by_forward_only_criteria():
    x = torch.randn(20, 6)
    model = nn.Linear(6, 3)
    sampler = GradSampler([(x[:10], torch.zeros(10)), (x[10:], torch.zeros(10))], F.cross_entropy, progress=False)
    config = PrunerConfig(global_config=ModulePrunerConfig(criterion={"kind": "wanda", "num_batches": 2}))
    pruner = Pruner(model, config, sampler)
    pruner.prepare(inplace=True)
    pruner.prune_now()
    assert int((~model.weight_mask).sum()) == 9
