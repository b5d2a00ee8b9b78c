"""The one machine: every criterion × pattern × scope × schedule through `sparsify.Pruner` lands on its target."""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria import GradSampler, criterion_kinds

CRITERIA = {
    "magnitude": "magnitude",
    "gradient": "gradient",
    "snip": "snip",
    "snip_momentum": {"kind": "snip_momentum", "decay": 0.8},
    "mfac": {"kind": "mfac", "num_grads": 4, "fisher_block_size": 64},
    "sparsegpt": {"kind": "sparsegpt", "num_batches": 2, "block_size": 32},
    "wanda": {"kind": "wanda", "num_batches": 2},
}
CALIBRATED = {"sparsegpt", "wanda"}  # layer-wise: they need calibration data (a tiny set here)
PATTERNS = {
    "unstructured": {},
    "per_kernel": {"granularity": "per_kernel"},
    "per_channel": {"granularity": "per_channel"},
    "block": {"block_size": 4},
    "n:m": {"n_m_ratio": (2, 4)},
    "tiles": {"pattern": "4x1"},
}
SCHEDULES = {
    "polynomial": {"update_steps": [2, 4, 6], "power": 3},
    "constant": {"begin_step": 3},
    "linear": {"kind": "linear", "start_step": 2, "end_step": 6, "frequency": 2},
    "cosine": {"kind": "cosine", "start_step": 2, "end_step": 6, "frequency": 2},
    "exponential": {"kind": "exponential", "start_step": 2, "end_step": 6, "frequency": 2},
    "cubic_fast_start": {"kind": "cubic_fast_start", "start_step": 2, "end_step": 6, "frequency": 2},
    "cubic_slow_start": {"kind": "cubic_slow_start", "start_step": 2, "end_step": 6, "frequency": 2},
}
TARGET = 0.5


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(4, 8, 3)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 16, 3)), ("relu2", nn.ReLU()), ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(256, 16)), ("relu3", nn.ReLU()), ("fc2", nn.Linear(16, 4)),
    ]))


def test_every_registered_criterion_is_covered():
    assert set(CRITERIA) == set(criterion_kinds())


@pytest.mark.parametrize("criterion", list(CRITERIA))
def test_every_combination_lands_on_its_target(criterion, caplog):
    caplog.set_level(logging.ERROR)
    torch.manual_seed(1)
    x, y = torch.randn(8, 4, 8, 8), torch.randint(0, 4, (8,))
    sampler = GradSampler([(x[:4], None), (x[4:], None)], progress=False) if criterion in CALIBRATED else None
    failures = []
    for (pattern, fields), scope, (schedule, scheduler) in itertools.product(
        PATTERNS.items(), ("local", "global"), SCHEDULES.items()
    ):
        model = small_model()
        config = PrunerConfig(global_config=ModulePrunerConfig(
            target_sparsity=TARGET, scheduler=scheduler, criterion=CRITERIA[criterion], scope=scope, **fields
        ))
        pruner = Pruner(model, config, sampler=sampler)
        model = pruner.prepare(inplace=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(8):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            pruner.step()
        final = pruner.finalize(inplace=True)
        weights = {name: m.weight for name, m in final.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        zeros = {name: int((w == 0).sum()) for name, w in weights.items()}
        sizes = {name: w.numel() for name, w in weights.items()}
        total = sum(zeros.values()) / sum(sizes.values())
        case = f"{criterion}/{pattern}/{scope}/{schedule}"
        if scope == "local":
            # each layer alone: within one group of its pattern (a block of 4 channels on fc2 = the whole layer)
            for name, count in zeros.items():
                group = pruner.targets[name].pattern.weights_per_group(weights[name].shape)
                if abs(count - TARGET * sizes[name]) > group:
                    failures.append(f"{case}: {name} has {count} zeros of {sizes[name]}")
        elif abs(total - TARGET) > 0.02:
            failures.append(f"{case}: {total:.4f} sparsity overall")
    assert not failures, "\n".join(failures)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight  # weight tying, as in GPT-style LMs

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens))


def test_a_tied_embedding_gets_the_heads_mask_so_validated_and_shipped_logits_agree():
    model = TiedLM()
    pruner = Pruner(model, PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5)))
    pruner.prepare(inplace=True)
    pruner.step()
    tokens = torch.arange(16)
    validated = model(tokens).detach()
    assert model.emb.weight_mask is model.head.weight_mask  # one mask for the shared parameter
    assert int((model.emb.weight == 0).sum()) == 64
    final = pruner.finalize(inplace=True)
    assert torch.equal(final(tokens), validated)
    assert final.emb.weight is final.head.weight


def test_two_config_entries_rank_globally_on_their_own():
    model = small_model()
    with torch.no_grad():
        model.fc1.weight.mul_(100)  # one global ranking over everything would spare fc1 entirely
    conv = ModulePrunerConfig(target_sparsity=0.6, scope="global")
    linear = ModulePrunerConfig(target_sparsity=0.6, scope="global")
    pruner = Pruner(model, PrunerConfig(module_type_configs={nn.Conv2d: conv, nn.Linear: linear}))
    pruner.prepare(inplace=True)
    pruner.step()
    zeros = {n: int((~t.mask).sum()) for n, t in pruner.targets.items()}
    sizes = {n: t.orig.numel() for n, t in pruner.targets.items()}
    assert zeros["conv1"] + zeros["conv2"] == int(0.6 * (sizes["conv1"] + sizes["conv2"]))
    assert zeros["fc1"] + zeros["fc2"] == int(0.6 * (sizes["fc1"] + sizes["fc2"]))
    assert zeros["fc1"] > 0


def test_constant_weights_reach_their_target_and_nan_weights_are_reported(caplog):
    layer = nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight.fill_(0.5)
        layer.weight[0, :6] = float("nan")
    pruner = Pruner(layer, PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5)))
    pruner.prepare(inplace=True)
    pruner.step()
    mask = layer.weight_mask
    assert int((~mask).sum()) == 50
    assert not mask[0, :6].any()  # NaN ranks lowest
    assert "6 of 100 scores are NaN or infinite" in caplog.text


def test_finalize_before_the_schedule_ends_says_how_far_it_got(caplog):
    model = small_model()
    config = PrunerConfig(global_config=ModulePrunerConfig(
        target_sparsity=0.8, scheduler={"update_steps": list(range(1, 9))}))
    pruner = Pruner(model, config)
    pruner.prepare(inplace=True)
    for _ in range(3):
        pruner.step()
    pruner.finalize(inplace=True)
    assert "finalize() at step 3, before the schedule ended: 4 module(s) below their target sparsity" in caplog.text


def test_prune_in_one_call():
    import sparsify

    model = small_model()
    pruned = sparsify.prune(model, 0.75, pattern="4x1", scope="global", max_sparsity=0.9)
    assert pruned is not model and not hasattr(pruned.conv1, "weight_orig")
    weights = [m.weight for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == int(0.75 * sum(w.numel() for w in weights)) // 4 * 4
    assert max(float((w == 0).float().mean()) for w in weights) <= 0.9
    assert "_COREML_/weight/compression_type" in dict(pruned.conv1.named_buffers())
    with pytest.raises(TypeError, match="do not pass scheduler"):
        sparsify.prune(model, 0.5, scheduler={"begin_step": 3})


def test_a_one_shot_call_that_fails_leaves_the_model_as_it_was():
    import sparsify

    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="criterion 'snip' needs calibration data"):
        sparsify.prune(model, 0.5, criterion="snip", inplace=True)  # refused before anything changes
    budget = {"kind": "mfac", "num_grads": 4, "memory_budget": 2}  # 2 bytes: refused at the first update

    def batches():
        return [(torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2,))) for _ in range(4)]

    sampler = sparsify.GradSampler(batches, nn.functional.cross_entropy, progress=False)
    with pytest.raises(MemoryError, match="memory"):
        sparsify.prune(model, 0.5, criterion=budget, sampler=sampler, inplace=True)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())
    assert all(isinstance(m.weight, nn.Parameter) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert list(model.state_dict()) == list(before)  # parameter order restored too


@pytest.mark.parametrize("scope", ["local", "global"])
def test_neural_compressor_n_m_pattern_makes_whole_runs_sparse_up_to_its_target(scope):
    model = small_model()
    config = ModulePrunerConfig(pattern="2:4", target_sparsity=0.3, scope=scope)
    assert config.final_sparsity == 0.3 and config.pattern == "2:4"
    assert ModulePrunerConfig(pattern=" 3:4 ", target_sparsity=0.9).final_sparsity == 0.75  # capped at n / m
    pruner = Pruner(model, PrunerConfig(global_config=config))
    pruner.prepare(inplace=True)
    pruner.step()
    sparse_runs, all_runs = 0, 0
    for name, target in pruner.targets.items():
        runs = (~target.mask.expand(target.orig.shape)).movedim(1, -1).reshape(-1, 4)
        zeros = runs.sum(1)
        assert set(zeros.tolist()) <= {0, 2}, name  # every run dense or exactly 2:4
        if scope == "local":
            assert int((zeros == 2).sum()) == int(0.3 * target.orig.numel()) // 2, name
        sparse_runs += int((zeros == 2).sum())
        all_runs += runs.shape[0]
    assert sparse_runs == int(0.3 * 4 * all_runs) // 2 or scope == "local"
    with pytest.raises(ValueError, match=r"pattern='0:4' is invalid"):
        ModulePrunerConfig(pattern="0:4")
    with pytest.raises(ValueError, match="mutually exclusive"):
        ModulePrunerConfig(pattern="2:4", n_m_ratio=(2, 4))


def test_a_misspelled_module_type_and_a_name_rule_for_an_unsupported_layer_are_said(caplog):
    with pytest.raises(ValueError, match=r"PrunerConfig.module_types='Conv2D' is invalid: .*Conv2d"):
        PrunerConfig(module_types=["Conv2D"])
    model = nn.Sequential(OrderedDict([("rnn", nn.LSTM(4, 4)), ("fc", nn.Linear(4, 4))]))
    config = PrunerConfig(module_name_configs={"rnn": ModulePrunerConfig(), "fc": ModulePrunerConfig()})
    Pruner(model, config).prepare()
    assert "name rule 'rnn' matches only module(s) sparsify does not prune: rnn (LSTM)" in caplog.text


def test_a_mostly_nan_layer_is_still_pruned_to_its_target_and_reported(caplog):
    layer = nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight.view(-1)[:60] = float("nan")
    pruner = Pruner(layer, PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5)))
    pruner.prepare(inplace=True)
    pruner.step()
    assert int((~layer.weight_mask).sum()) == 50
    assert not layer.weight_mask.view(-1)[:50].any()
    assert "60 of 100 scores are NaN or infinite" in caplog.text


@pytest.mark.parametrize("criterion", ["magnitude", "snip_momentum"])
def test_in_place_masking_trains_to_the_same_target_with_pruned_entries_zero_in_the_parameter(criterion):
    torch.manual_seed(1)
    x, y = torch.randn(8, 4, 8, 8), torch.randint(0, 4, (8,))
    model = small_model()
    config = PrunerConfig(global_config=ModulePrunerConfig(
        target_sparsity=0.5, criterion=criterion, masking="inplace", pattern="4x1",
        scheduler={"kind": "linear", "start_step": 0, "end_step": 4, "frequency": 2}))
    pruner = Pruner(model, config)
    model = pruner.prepare(inplace=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(6):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        pruner.step()
        for target in pruner.targets.values():  # the parameter itself holds the zeros, after every step
            assert not target.orig.detach()[~target.mask.expand(target.orig.shape)].any()
    final = pruner.finalize(inplace=True)
    for name, module in final.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert int((module.weight == 0).sum()) == module.weight.numel() // 2, name
    assert ModulePrunerConfig(masking="inplace").as_dict()["masking"] == "inplace"
    with pytest.raises(ValueError, match="masking='fast' is invalid"):
        ModulePrunerConfig(masking="fast")


@pytest.mark.parametrize("scope", ["local", "global"])
def test_an_interrupt_in_prepare_restores_the_zeros_of_in_place_masks(monkeypatch: pytest.MonkeyPatch, scope) -> None:
    torch.manual_seed(2)
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    config = PrunerConfig(global_config=ModulePrunerConfig(
        initial_sparsity=0.5, target_sparsity=0.8, masking="inplace", scope=scope, criterion="snip_momentum"))
    pruner = Pruner(model, config)

    def interrupted(self: Pruner) -> None:  # the initial masks are in, their zeros written into the parameters
        assert sum(int((module.weight_orig == 0).sum()) for module in model.modules() if hasattr(module, "weight_orig"))
        raise KeyboardInterrupt

    monkeypatch.setattr(Pruner, "_attach_scorers", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pruner.prepare(inplace=True)
    assert dict(model.named_parameters()) == parameters  # the same Parameter objects
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(module._forward_pre_hooks for module in model.modules())
