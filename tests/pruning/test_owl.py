"""OWL (outlier-weighted layerwise sparsity): levels checked against a hand computation, with every criterion
and pattern through sparsify.prune(..., layer_levels="owl")."""

from __future__ import annotations

import pytest
import torch
from _lms import tiny_llama, token_batches
from torch import nn

import sparsify
from sparsify.analysis.owl import nm_counts, owl_levels, owl_spread


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8, bias=False)
        self.b = nn.Linear(8, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.b(torch.relu(self.a(x)))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList([_Block() for _ in range(3)])
        with torch.no_grad():
            self.blocks[1].a.weight[0, :3] = 4.0  # a few outlier weights: the blocks' ratios differ
            self.blocks[2].b.weight[2, 1] = 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(4, 8, generator=g) for _ in range(2)]


def _by_hand(net: _Net, data: list[torch.Tensor], m: float) -> list[float]:
    x = torch.cat(data)
    ratios = []
    with torch.no_grad():
        for block in net.blocks:
            hidden = torch.relu(block.a(x))
            scores = []
            for layer, inputs in ((block.a, x), (block.b, hidden)):
                norms = (inputs ** 2).sum(0) / inputs.shape[0]
                scores.append((layer.weight.abs() * norms.sqrt()).reshape(-1))
            flat = torch.cat(scores)
            ratios.append(100.0 * float((flat > m * flat.mean()).float().mean()))
            x = x + block.b(hidden)
    return ratios


def test_levels_match_a_hand_computation() -> None:
    net, data = _Net(), _data()
    ratios = _by_hand(net, data, m=3.0)
    assert len(set(ratios)) == 3  # three different outlier ratios
    lo, hi = min(ratios), max(ratios)
    density = [(r - lo) / (hi - lo) * 2 * 0.1 for r in ratios]
    expected = [1 - (d - sum(density) / 3 + 1 - 0.6) for d in density]
    names = [f"blocks.{i}.{n}" for i in range(3) for n in "ab"]
    owl = owl_levels(net, data, 0.6, names, m=3.0, lam=0.1)
    assert owl.layers == {f"blocks.{i}": [f"blocks.{i}.a", f"blocks.{i}.b"] for i in range(3)}
    assert list(owl.ratios.values()) == pytest.approx(ratios)
    assert list(owl.layer_levels.values()) == pytest.approx(expected)
    assert sum(owl.layer_levels.values()) / 3 == pytest.approx(0.6)
    assert max(owl.layer_levels.values()) - min(owl.layer_levels.values()) == pytest.approx(0.2)  # 2 lambda
    most = max(owl.ratios, key=owl.ratios.get)
    assert min(owl.layer_levels, key=owl.layer_levels.get) == most  # most outliers: the least pruned
    assert owl_spread([2.0, 2.0], 0.5, 0.08) == [0.5, 0.5]


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "sparsegpt"])
def test_prune_with_owl_levels_every_criterion(criterion: str) -> None:
    net, data = _Net(), _data()
    owl = owl_levels(net, data, 0.6, [f"blocks.{i}.{n}" for i in range(3) for n in "ab"], m=3.0, lam=0.1)
    pruned = sparsify.prune(net, 0.6, criterion=criterion, sampler=data, layer_levels="owl", owl_m=3.0,
                            owl_lambda=0.1)
    for name, level in owl.levels.items():
        weight = pruned.get_submodule(name).weight
        assert int((weight == 0).sum()) == int(level * 64 + 1e-6), name


def test_mixed_n_m_keeps_the_total() -> None:
    counts = nm_counts({"x": 0.45, "y": 0.55, "z": 0.5}, {"x": 64, "y": 64, "z": 64}, 4, 8)
    assert counts == {"x": 4, "y": 4, "z": 4}  # 3.6, 4.4, 4.0 round to the same total: 4 each
    counts = nm_counts({"x": 0.4, "y": 0.6, "z": 0.5}, {"x": 64, "y": 64, "z": 64}, 4, 8)
    assert counts == {"x": 3, "y": 5, "z": 4}
    net, data = _Net(), _data()
    pruned = sparsify.prune(net, 0.5, sampler=data, layer_levels="owl", owl_m=3.0, owl_lambda=0.15,
                            n_m_ratio=(4, 8), criterion="wanda")
    names = [f"blocks.{i}.{n}" for i in range(3) for n in "ab"]
    levels = owl_levels(net, data, 0.5, names, m=3.0, lam=0.15).levels
    counts = nm_counts(levels, dict.fromkeys(names, 64), 4, 8)
    zeros = {name: int((pruned.get_submodule(name).weight == 0).sum()) for name in names}
    assert zeros == {name: 8 * counts[name] for name in names}  # n zeros in each of the 8 rows' one run
    assert sum(zeros.values()) == 6 * 32 and len(set(zeros.values())) > 1


def test_owl_on_a_language_model_and_bad_settings() -> None:
    data = [{"input_ids": t} for t in token_batches()]
    model = tiny_llama()
    pruned = sparsify.prune(model, 0.5, criterion="wanda", sampler=data, layer_levels="owl", owl_m=2.0)
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)
    zeros = [float((pruned.model.layers[i].mlp.up_proj.weight == 0).float().mean()) for i in range(2)]
    assert sum(zeros) / 2 == pytest.approx(0.5, abs=1 / 2048) and zeros[0] != zeros[1]  # counts are floored
    with pytest.raises(ValueError, match="layer_levels='owl' measures each layer's outliers on calibration data"):
        sparsify.prune(model, 0.5, layer_levels="owl")
    with pytest.raises(ValueError, match="layer_levels='uniform' is invalid: allowed owl or None"):
        sparsify.prune(model, 0.5, layer_levels="uniform", sampler=data)
    with pytest.raises(ValueError, match="owl_lambda=0.9 is invalid"):
        sparsify.prune(model, 0.5, layer_levels="owl", owl_lambda=0.9, sampler=data)
    with pytest.raises(ValueError, match="scope='global' is not allowed"):
        sparsify.prune(model, 0.5, layer_levels="owl", scope="global", sampler=data)
    with pytest.raises(ValueError, match="pass layer_levels='owl' with them"):
        sparsify.prune(model, 0.5, owl_m=3.0)
