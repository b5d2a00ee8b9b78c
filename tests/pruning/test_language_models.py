"""Language models end to end: HF calibration data, head and embeddings dense, tied weights, dry_run agreeing,
n:m levels refused, save_pretrained recording the sparsity and a reload that keeps the zeros while fine-tuning."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from _lms import SEQ, tiny_gpt2, tiny_llama, token_batches
from torch import nn
from transformers.pytorch_utils import Conv1D

import sparsify
from sparsify import ModulePrunerConfig, PrunerConfig, dry_run


def _decoder_linears(model: nn.Module) -> list[str]:
    head = model.get_output_embeddings()
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and m is not head]


def _as_out_in(model: nn.Module, name: str) -> torch.Tensor:
    module = model.get_submodule(name)
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


def _data(position_ids: bool) -> list[dict[str, torch.Tensor]]:
    items = [{"input_ids": t, "attention_mask": torch.ones_like(t)} for t in token_batches()]
    if position_ids:
        items = [{**item, "position_ids": torch.arange(SEQ).unsqueeze(0)} for item in items]
    return items


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("criterion", ["sparsegpt", "wanda"])
@pytest.mark.parametrize("pattern", [{}, {"n_m_ratio": (2, 4)}], ids=["50%", "2:4"])
@pytest.mark.parametrize("position_ids", [False, True], ids=["dicts", "position_ids"])
def test_a_causal_lm_prunes_its_decoder_linears_only(build, criterion, pattern, position_ids, tmp_path) -> None:
    model = build()
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5, criterion=criterion, **pattern))
    table = dry_run(model, config)
    pruned = sparsify.prune(model, 0.5, criterion=criterion, sampler=_data(position_ids), **pattern)
    linears = _decoder_linears(model)
    assert len(linears) in (8, 14) and table.selected() == linears  # dry_run agrees with what was pruned
    for name in linears:
        weight = _as_out_in(pruned, name)
        assert int((weight == 0).sum()) == weight.numel() // 2, name
        if pattern:  # 2 zeros in every 4 consecutive input weights
            assert torch.equal((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1),
                               torch.full((weight.shape[0], weight.shape[1] // 4), 2)), name
    head = next(n for n, m in model.named_modules() if m is model.get_output_embeddings())
    untouched = [n for n, m in pruned.named_modules() if isinstance(m, nn.Embedding) or n == head]
    assert len(untouched) in (2, 3)
    for name in untouched:  # bit for bit (GPT-2's head is tied to wte: both unchanged)
        assert torch.equal(pruned.get_submodule(name).weight, before[f"{name}.weight"]), name
    rows = {row.name: row for row in table}
    assert rows[head].action == "skip" and "language-model output head kept dense" in rows[head].reason
    pruned.save_pretrained(tmp_path)
    record = json.loads((tmp_path / "sparsity.json").read_text())
    assert sorted(record["layers"]) == sorted(linears)
    assert {entry["level"] for entry in record["layers"].values()} == {0.5}
    reloaded = type(model).from_pretrained(tmp_path).eval()
    for name, param in pruned.state_dict().items():
        if "_COREML_" not in name:
            assert torch.equal(reloaded.state_dict()[name] == 0, param == 0), name


def test_reloaded_pruned_model_fine_tunes_with_its_zeros_kept(tmp_path) -> None:
    pruned = sparsify.prune(tiny_llama(), 0.5, criterion="wanda", sampler=_data(False), n_m_ratio=(2, 4))
    pruned.save_pretrained(tmp_path)
    pruner = sparsify.from_pretrained_pruned(type(pruned), tmp_path)
    model = pruner.model
    zeros = {n: _as_out_in(pruned, n) == 0 for n in _decoder_linears(pruned)}
    assert sorted(pruner.targets) == sorted(zeros)
    assert all(torch.equal(~pruner.targets[n].mask, zeros[n]) for n in zeros)  # masks from the saved zeros
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    data = token_batches(count=3, seed=5)
    for ids in data:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.step()
    state = optimizer.state_dict()  # the optimizer state goes on with the model (saved and loaded as usual)
    assert len(state["state"]) == len(list(model.parameters()))
    weight = model.model.layers[0].mlp.up_proj.weight_orig
    assert not torch.equal(weight.detach(), pruned.model.layers[0].mlp.up_proj.weight)  # it trained
    final = pruner.finalize(inplace=True)
    for name, zero in zeros.items():
        assert torch.equal(_as_out_in(final, name) == 0, zero), name
    final.save_pretrained(tmp_path / "again")
    record = json.loads((tmp_path / "again" / "sparsity.json").read_text())
    assert record["layers"]["model.layers.1.mlp.down_proj"]["n_m_ratio"] == [2, 4]


def test_a_sparsity_a_pattern_cannot_reach_is_refused_or_warned(caplog) -> None:
    with pytest.raises(ValueError, match=r"prune\(model, 0.7, n_m_ratio=\(2, 4\)\): that pattern prunes 0.5 of each "
                                         r"layer, not 0.7; pass sparsity=0.5"):
        sparsify.prune(tiny_gpt2(), 0.7, criterion="wanda", n_m_ratio=(2, 4), sampler=_data(False))
    with pytest.raises(ValueError, match=r"pattern='2:4'\): that pattern prunes 0.5"):
        sparsify.prune(tiny_gpt2(), 0.7, pattern="2:4")
    with caplog.at_level(logging.WARNING):
        sparsify.Pruner(tiny_llama(), PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.7,
                                                                                    pattern="2:4"))).prepare()
    assert "target_sparsity=0.7 is more than n:m 2:4 can reach; pruned to 0.5" in caplog.text


def test_a_tied_head_is_pruned_only_with_its_embedding() -> None:
    model = tiny_gpt2()
    layerwise = ModulePrunerConfig(criterion="sparsegpt")
    alone = PrunerConfig(module_name_configs={"lm_head": layerwise})
    with pytest.raises(ValueError, match=r"lm_head.weight is tied to module 'transformer.wte' \(Embedding\) as its "
                                         r"'weight', which no rule selects \(the language-model input embeddings\)"):
        sparsify.Pruner(model, alone, sampler=_data(False)).prepare()
    row = {r.name: r for r in dry_run(model, alone)}["lm_head"]
    assert row.action == "error" and "which no rule selects" in row.reason
    magnitude = ModulePrunerConfig()
    both = PrunerConfig(module_name_configs={"lm_head": magnitude, "transformer.wte": magnitude})
    rows = {r.name: r for r in dry_run(model, both)}
    assert rows["lm_head"].action == rows["transformer.wte"].action == "prune"
    pruner = sparsify.Pruner(model, both)
    prepared = pruner.prepare()
    pruner.step()
    assert sorted(dry_run(model, both).selected()) == sorted([*pruner.targets, *pruner.targets["transformer.wte"]
                                                              .tied_to])
    assert torch.equal(prepared.lm_head.weight, prepared.transformer.wte.weight)
    assert int((prepared.lm_head.weight == 0).sum()) == prepared.lm_head.weight.numel() // 2


class _TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens))


def test_dry_run_shows_a_tied_table_sharing_the_heads_mask() -> None:
    rows = {r.name: r for r in dry_run(_TiedLM(), PrunerConfig())}
    assert (rows["emb"].action, rows["emb"].reason) == ("prune", "tied to 'head': shares its weight and mask")
    pruner = sparsify.Pruner(_TiedLM(), PrunerConfig())
    pruner.prepare()
    assert pruner.targets["head"].tied_to == ["emb"]
    layerwise = PrunerConfig(global_config=ModulePrunerConfig(criterion="wanda"))
    row = {r.name: r for r in dry_run(_TiedLM(), layerwise)}["head"]
    assert row.action == "error" and "criterion 'wanda' would rewrite it" in row.reason


def test_core_ml_tools_configs_keep_core_ml_tools_selection() -> None:
    """The drop-in MagnitudePrunerConfig prunes every Linear, GPT-2's tied head included (the table shares it)."""
    model = tiny_gpt2()
    pruner = sparsify.MagnitudePruner(model)
    prepared = pruner.prepare()
    pruner.step()
    assert pruner.targets["lm_head"].tied_to == ["transformer.wte"]
    assert torch.equal(prepared.transformer.wte.weight, prepared.lm_head.weight)
    assert int((prepared.lm_head.weight == 0).sum()) == prepared.lm_head.weight.numel() // 2
    rows = {r.name: r for r in dry_run(model, sparsify.MagnitudePrunerConfig())}
    assert rows["lm_head"].action == rows["transformer.wte"].action == "prune"
