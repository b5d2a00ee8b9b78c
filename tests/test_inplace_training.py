"""In-place masking under the optimizers and training-loop features large models are trained with.

For every optimizer: gradual pruning while training with bf16 autocast, a gradient scaler, gradient
accumulation over two micro-batches, gradient clipping and ``zero_grad(set_to_none=True)``; after every
step the pruned weights are exactly zero and so is every per-entry optimizer state (momentum, first and
second moments) at the pruned entries — no momentum revives a weight.
"""

from collections.abc import Callable

import pytest
import torch
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov-foreach": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, foreach=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "adamw-foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, foreach=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
}
if hasattr(torch.optim, "Adafactor"):  # torch >= 2.5
    OPTIMIZERS["adafactor"] = lambda p: torch.optim.Adafactor(p, lr=1e-2)


def _model_and_pruner() -> tuple[nn.Module, Pruner]:
    torch.manual_seed(0)
    # 40 960 weights: above the size where masking switches from torch.where to the chunked integer kernel
    model = nn.Sequential(nn.Linear(256, 160), nn.ReLU(), nn.Linear(160, 10))
    config = PrunerConfig(global_config=ModulePrunerConfig(
        target_sparsity=0.75, masking="inplace", scheduler={"kind": "polynomial", "update_steps": [2, 4, 6]}))
    pruner = Pruner(model, config)
    return pruner.prepare(inplace=True), pruner


def _pruned_nonzeros(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Nonzero entries at pruned positions: in each weight, and in each optimizer state tensor of its shape."""
    found = {}
    for index in (0, 2):
        layer = model[index]
        param, pruned = layer.weight_orig, ~layer.weight_mask
        found[f"{index}.weight"] = int(param.detach()[pruned].count_nonzero())
        for key, value in optimizer.state[param].items():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                found[f"{index}.{key}"] = int(value[pruned].count_nonzero())
    return found


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_inplace_pruned_weights_and_optimizer_state_stay_exactly_zero(name: str) -> None:
    model, pruner = _model_and_pruner()
    optimizer = OPTIMIZERS[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    g = torch.Generator().manual_seed(1)
    state_seen = set()
    for step in range(1, 10):
        optimizer.zero_grad(set_to_none=True)
        for _ in range(2):  # gradient accumulation
            x, y = torch.randn(16, 256, generator=g), torch.randint(0, 10, (16,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y) / 2
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        for index in (0, 2):  # clipping sees the masked gradient, as in the default mode
            layer = model[index]
            assert int(layer.weight_orig.grad[~layer.weight_mask].count_nonzero()) == 0
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(optimizer)
        scaler.update()
        pruner.step()
        found = _pruned_nonzeros(model, optimizer)
        assert all(count == 0 for count in found.values()), (step, found)
        state_seen.update(found)
    pruned = sum(int((~model[i].weight_mask).sum()) for i in (0, 2))
    assert pruned == 30720 + 1200  # 75 % of 40 960 and of 1 600
    expected_state = {"sgd": {"momentum_buffer"}, "sgd-nesterov-foreach": {"momentum_buffer"},
                      "adam-amsgrad": {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}, "adafactor": set()}
    keys = expected_state.get(name, {"exp_avg", "exp_avg_sq"})
    assert state_seen == {f"{i}.{k}" for i in (0, 2) for k in ("weight", *keys)}


def test_inplace_forward_reads_the_parameter_itself_and_keeps_zeros_in_bf16_weights() -> None:
    """bf16 parameters (not only autocast): the masks zero their bits through the 16-bit integer view."""
    model, pruner = _model_and_pruner()
    model.to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
    g = torch.Generator().manual_seed(2)
    for _ in range(6):
        optimizer.zero_grad(set_to_none=True)
        x, y = torch.randn(8, 256, generator=g).bfloat16(), torch.randint(0, 10, (8,), generator=g)
        nn.functional.cross_entropy(model(x).float(), y).backward()
        optimizer.step()
        pruner.step()
        assert model[0].weight is model[0].weight_orig
        assert all(count == 0 for count in _pruned_nonzeros(model, optimizer).values())
    assert int((~model[0].weight_mask).sum()) == 30720
