"""Embedding tables on the one machine: opt-in selection, exact masks, training, ties, refusals, export.

Core ML Tools never prunes ``nn.Embedding``; SparseML's ``__ALL_PRUNABLE__`` and INC 1.x's "every 2-D
parameter" do. sparsify prunes a table only when a rule names it (the real BERT recipes that select
embeddings are run in ``tests/compat/test_real_recipes.py``).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig, dry_run

WEIGHT = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-4.0, 0.1], [2.5, 0.2]])  # |w| all distinct


class TinyLM(nn.Module):
    """Embedding → mean over the sequence → Linear; ``tied`` shares the table with the output layer."""

    def __init__(self, vocab: int = 16, dim: int = 8, tied: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(1))


def _table(**kwargs: object) -> nn.Module:
    model = nn.Sequential(nn.Embedding(4, 2, **kwargs))  # type: ignore[arg-type]
    with torch.no_grad():
        model[0].weight.copy_(WEIGHT)
    return model


def _pruned(model: nn.Module, config: PrunerConfig) -> tuple[Pruner, nn.Module]:
    pruner = Pruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    return pruner, prepared


def test_global_config_alone_leaves_tables_dense() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    table = dry_run(model, PrunerConfig())
    assert [(r.name, r.action) for r in table] == [("emb", "skip"), ("head", "prune")]
    assert table[0].reason == ("Embedding is pruned only when named: a type rule ('Embedding'), a name rule or "
                               "module_types, not global_config")
    pruner, prepared = _pruned(model, PrunerConfig())
    assert list(pruner.targets) == ["head"]
    assert int((prepared.emb.weight == 0).sum()) == 0
    assert int((prepared.head.weight == 0).sum()) == 64  # 50 % of 16 × 8


@pytest.mark.parametrize(
    "config",
    [
        PrunerConfig(module_type_configs={nn.Embedding: ModulePrunerConfig(target_sparsity=0.5)}),
        PrunerConfig(module_type_configs={"Embedding": ModulePrunerConfig(target_sparsity=0.5)}),
        PrunerConfig(module_name_configs={"0": ModulePrunerConfig(target_sparsity=0.5)}),
        PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5), module_types=["Embedding"]),
    ],
    ids=["type", "type-name", "name-rule", "module_types"],
)
def test_a_named_table_gets_the_exact_magnitude_mask(config: PrunerConfig) -> None:
    pruner, prepared = _pruned(_table(), config)
    # the four largest |w| are 4, 3, 2.5 and 2
    expected = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    assert torch.equal(pruner.targets["0"].mask.float(), expected)
    assert torch.equal(prepared[0].weight, WEIGHT * expected)


def test_rows_are_tokens_and_n_m_runs_along_the_embedding_dimension() -> None:
    pruner, _ = _pruned(_table(), PrunerConfig(module_type_configs={
        nn.Embedding: ModulePrunerConfig(target_sparsity=0.5, pattern="1xchannel")}))
    # row L2 norms 2.24, 3.04, 4.00, 2.51: tokens 1 and 2 keep their rows
    assert pruner.targets["0"].mask.float().tolist() == [[0, 0], [1, 1], [1, 1], [0, 0]]
    torch.manual_seed(1)
    model = nn.Sequential(nn.Embedding(3, 8))
    pruner, _ = _pruned(model, PrunerConfig(module_type_configs={
        nn.Embedding: ModulePrunerConfig(n_m_ratio=(2, 4))}))
    weight = model[0].weight.detach().abs().view(3, 2, 4)
    kept = pruner.targets["0"].mask.view(3, 2, 4)
    assert kept.sum(-1).eq(2).all()
    assert torch.equal(kept, weight >= weight.topk(2, dim=-1).values[..., 1:])


def test_training_keeps_pruned_entries_at_zero_and_finalize_bakes_them() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5),
                          module_type_configs={nn.Embedding: ModulePrunerConfig(target_sparsity=0.75)})
    pruner, prepared = _pruned(model, config)
    optimizer = torch.optim.Adam(prepared.parameters(), lr=0.05)
    ids = torch.randint(0, 16, (32, 5))
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(prepared(ids), ids[:, 0]).backward()
        optimizer.step()
        pruner.step()
    mask = pruner.targets["emb"].mask
    assert int((~mask).sum()) == 96  # 75 % of 16 × 8
    assert torch.equal(prepared.emb.weight == 0, ~mask)  # as of the last forward
    assert not (pruner.targets["emb"].orig[~mask] == 0).all()  # weight_orig keeps them: masks can revive
    trained = (pruner.targets["emb"].orig * mask).detach()
    final = pruner.finalize()
    assert torch.equal(final.emb.weight, trained)
    assert not hasattr(final.emb, "weight_orig")
    assert int((final.emb.weight == 0).sum()) == 96 and int((final.head.weight == 0).sum()) == 64


def test_a_table_tied_to_the_output_layer_shares_one_mask() -> None:
    torch.manual_seed(0)
    shared = ModulePrunerConfig(target_sparsity=0.5)
    pruner, prepared = _pruned(TinyLM(tied=True), PrunerConfig(
        module_type_configs={nn.Embedding: shared, nn.Linear: shared}))
    assert prepared.emb.weight_orig is prepared.head.weight_orig
    assert torch.equal(prepared.emb.weight, prepared.head.weight)
    assert int((prepared.head.weight == 0).sum()) == 64
    final = pruner.finalize()
    assert final.emb.weight is final.head.weight and int((final.emb.weight == 0).sum()) == 64
    with pytest.raises(ValueError, match=r"head.weight is the same tensor as emb.weight \(tied weights\) but the two "
                                         r"modules have different configs"):
        Pruner(TinyLM(tied=True), PrunerConfig(module_type_configs={
            nn.Embedding: ModulePrunerConfig(target_sparsity=0.5),
            nn.Linear: ModulePrunerConfig(target_sparsity=0.7)})).prepare()


def test_a_table_tied_to_a_pruned_head_is_checked_like_a_named_one() -> None:
    model = TinyLM(tied=True)
    model.emb.max_norm = 1.0
    with pytest.raises(ValueError, match=r"module 'emb' \(Embedding, tied to 'head'\) has max_norm=1.0"):
        Pruner(model, PrunerConfig()).prepare(inplace=True)
    assert not hasattr(model.head, "weight_orig")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparse": True}, r"module '0' \(Embedding\) has sparse=True: its gradient is a sparse tensor"),
        ({"max_norm": 1.0}, r"module '0' \(Embedding\) has max_norm=1.0: its forward rescales the looked-up rows"),
    ],
)
def test_modes_the_mask_cannot_follow_are_refused_before_anything_changes(kwargs: dict, match: str) -> None:
    model = _table(**kwargs)
    before = copy.deepcopy(model.state_dict())
    config = PrunerConfig(module_type_configs={nn.Embedding: ModulePrunerConfig()})
    with pytest.raises(ValueError, match=match):
        Pruner(model, config).prepare(inplace=True)
    assert list(model.state_dict()) == ["0.weight"] and torch.equal(model[0].weight, before["0.weight"])
    assert [r.action for r in dry_run(model, config)] == ["error"]


def test_a_pruned_table_is_stored_sparse_in_the_mlpackage(tmp_path: object) -> None:
    pytest.importorskip("coremltools")
    from sparsify.export.coreml import export_coreml

    torch.manual_seed(0)
    model = TinyLM(vocab=64, dim=32)
    pruner, _ = _pruned(model, PrunerConfig(module_type_configs={
        nn.Embedding: ModulePrunerConfig(target_sparsity=0.8)}))
    final = pruner.finalize().eval()
    report = export_coreml(final, torch.randint(0, 64, (1, 6)), tmp_path / "lm.mlpackage")  # type: ignore[operator]
    row = report.row("emb.weight")
    assert row.pruned and row.storage == "sparse"
    assert row.nonzeros == row.torch_nonzeros == int(torch.count_nonzero(final.emb.weight)) == 410  # 20 % of 2048
    assert report.row("head.weight").storage == "dense"
