"""The one machine: every criterion × pattern × scope × schedule through `sparsify.Pruner` lands on its target."""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria import criterion_kinds

CRITERIA = {
    "magnitude": "magnitude",
    "gradient": "gradient",
    "snip": "snip",
    "snip_momentum": {"kind": "snip_momentum", "decay": 0.8},
    "mfac": {"kind": "mfac", "num_grads": 4, "fisher_block_size": 64},
}
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
    failures = []
    for (pattern, fields), scope, (schedule, scheduler) in itertools.product(
        PATTERNS.items(), ("local", "global"), SCHEDULES.items()
    ):
        model = small_model()
        config = PrunerConfig(global_config=ModulePrunerConfig(
            target_sparsity=TARGET, scheduler=scheduler, criterion=CRITERIA[criterion], scope=scope, **fields
        ))
        pruner = Pruner(model, config)
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
