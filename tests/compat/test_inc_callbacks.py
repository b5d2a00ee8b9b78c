"""INC callbacks on the engine, and the end-to-end INC-style run: snip-momentum, 4x1, exp decay, global scope
with a 0.98 cap, in a training loop -> exact target, finalized with Core ML metadata, exported when possible."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig, Pruner
from sparsify.compat.inc import WeightPruningConfig, from_inc_config
from sparsify.compat.inc_callbacks import CompressionManager, PruningCallbacks, prepare_compression, prepare_pruning
from sparsify.patterns.ranking import pruned_count

INC_CONFIG = {
    "pruning_type": "snip_momentum",
    "pattern": "4x1",
    "target_sparsity": 0.9,
    "sparsity_decay_type": "exp",
    "pruning_scope": "global",
    "max_sparsity_ratio_per_op": 0.98,
    "start_step": 2,
    "end_step": 20,
    "pruning_frequency": 2,
}


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Linear(64, 64)  # a branch the loss ignores: zero gradient, so |W*G| = 0 everywhere
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        h = torch.relu(self.fc(x.flatten(1)))
        return self.head(h + 0.0 * self.gate(h))


def _batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 1, 16, 16, generator=gen), torch.randint(0, 10, (16,), generator=gen))
            for _ in range(count)]


def _inc_loop(manager: CompressionManager, model: nn.Module, batches) -> torch.optim.Optimizer:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # built before on_train_begin, as in INC
    sgd_step = type(optimizer).step  # (torch wraps it once, when the first optimizer is built)
    callbacks = manager.callbacks
    callbacks.on_train_begin()
    for step, (x, y) in enumerate(batches):
        callbacks.on_step_begin(step)
        nn.functional.cross_entropy(model(x), y).backward()
        callbacks.on_before_optimizer_step()
        optimizer.step()
        callbacks.on_after_optimizer_step()
        optimizer.zero_grad()
    callbacks.on_train_end()
    assert type(optimizer).step is sgd_step and "step" not in vars(optimizer)  # no optimizer patching
    return optimizer


def test_inc_style_run_hits_exact_target_and_exports(tmp_path) -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    save = torch.save
    manager = prepare_compression(model, INC_CONFIG)
    _inc_loop(manager, model, _batches(24))
    assert torch.save is save

    final = manager.model
    assert final is model  # prepared and finalized in place: the optimizer trained these parameters
    pruned = {name: getattr(final, name).weight for name in ("gate", "conv1", "conv2", "fc")}
    total = sum(w.numel() for w in pruned.values())
    zeros = {name: int((w == 0).sum()) for name, w in pruned.items()}
    assert sum(zeros.values()) == pruned_count(total, 0.9) // 4 * 4  # the exact global target, in whole tiles
    assert zeros["gate"] == pruned_count(64 * 64, 0.98) // 4 * 4  # would be emptied: pinned at the 0.98 cap
    assert all(z <= 0.98 * pruned[n].numel() for n, z in zeros.items())
    assert int((final.head.weight == 0).sum()) == 0  # INC leaves the classifier head dense
    for name, weight in pruned.items():  # 4x1 tiles: 4 output channels of one input at one kernel position
        co = weight.shape[0]
        tiles = (weight == 0).movedim(1, -1).reshape(co // 4, 4, -1).float().mean(1)
        assert torch.all((tiles == 0) | (tiles == 1)), name
        module = getattr(final, name)
        assert module._buffers["_COREML_/weight/compression_type"].tolist() == [1]
        assert not hasattr(module, "weight_orig") and not hasattr(module, "weight_mask")
    assert "_COREML_/metadata_version" in final._buffers

    if importlib.util.find_spec("sparsify.export.coreml") is None:
        pytest.skip("sparsify.export.coreml is not available")
    from sparsify.export.coreml import export_coreml

    report = export_coreml(final, torch.randn(1, 1, 16, 16), tmp_path / "inc.mlpackage")
    storage = {row.name: row.storage for row in report.rows}
    assert storage["fc.weight"] == "sparse" and storage["gate.weight"] == "sparse"
    assert report.total_bytes < report.dense_bytes


def test_callbacks_map_onto_the_lifecycle() -> None:
    model = SmallCNN()
    pruner = Pruner(model, from_inc_config({**INC_CONFIG, "pruning_type": "magnitude"}, model))
    callbacks = PruningCallbacks(pruner, finalize_on_train_end=False)
    callbacks.on_train_begin(dataloader=None)
    assert hasattr(model.fc, "weight_orig") and callbacks.model is model
    callbacks.on_epoch_begin(0)
    for _ in range(20):
        callbacks.on_step_begin()
        callbacks.on_before_optimizer_step()
        callbacks.on_after_optimizer_step()
        callbacks.on_step_end()
    callbacks.on_epoch_end()
    assert pruner.step_count == 20
    callbacks.on_train_end()
    assert hasattr(model.fc, "weight_orig")  # not finalized on request


def test_callbacks_drive_any_engine_pruner() -> None:
    model = SmallCNN()
    config = MagnitudePrunerConfig(global_config=ModuleMagnitudePrunerConfig(target_sparsity=0.5))
    callbacks = PruningCallbacks(MagnitudePruner(model, config))
    callbacks.on_train_begin()
    callbacks.on_before_optimizer_step()  # no gradient criterion: nothing to do
    callbacks.on_after_optimizer_step()
    callbacks.on_train_end()
    assert float((model.fc.weight == 0).float().mean()) == pytest.approx(0.5)
    with pytest.raises(TypeError, match="sparsify pruner"):
        PruningCallbacks(model)


def test_prepare_pruning_steps_with_the_optimizer_and_undoes_its_patch() -> None:
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    sgd_step = type(optimizer).step
    config = WeightPruningConfig(target_sparsity=0.5, pruning_type="snip", pattern="1x1", start_step=1, end_step=4,
                                 pruning_frequency=1, sparsity_decay_type="linear", op_names=["fc"])
    handle = prepare_pruning(model, config, optimizer)
    assert hasattr(model.fc, "weight_mask") and "step" in vars(optimizer)
    levels = []
    for x, y in _batches(5):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        levels.append(float((model.fc.weight == 0).float().mean()))
    # INC's linear schedule over steps 1-4 (T = 3): at the start of step g, (g - 1)/3 of 0.5
    assert levels == pytest.approx([0.0, 1 / 6, 1 / 3, 0.5, 0.5], abs=1 / 16384)
    final = handle.finalize()
    assert final is model and "step" not in vars(optimizer) and type(optimizer).step is sgd_step
    assert not hasattr(model.fc, "weight_mask") and float((model.conv1.weight == 0).float().mean()) == 0.0


def test_prepare_pruning_one_shot_on_calibration_data() -> None:
    model = SmallCNN()
    handle = prepare_pruning(model, {"pruning_type": "snip_momentum", "pattern": "4x1", "target_sparsity": 0.8,
                                     "op_names": ["conv2", "fc"], "pruning_scope": "local"},
                             dataloader=_batches(8), loss_func=nn.functional.cross_entropy)
    assert handle.model is model and not hasattr(model.fc, "weight_mask")
    for name in ("conv2", "fc"):  # local scope: each layer at 0.8, in whole 4x1 tiles
        weight = getattr(model, name).weight
        assert float((weight == 0).float().mean()) == pytest.approx(0.8, abs=4 / weight.numel())
    with pytest.raises(ValueError, match="needs an optimizer .* or a dataloader"):
        prepare_pruning(SmallCNN(), {})


@pytest.mark.parametrize("make", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=8),
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda epoch: 1.0 / (epoch + 1)),
], ids=["StepLR", "OneCycleLR", "LambdaLR"])
def test_prepare_pruning_then_any_lr_scheduler(make, recwarn: pytest.WarningsRecorder) -> None:
    """INC patches ``optimizer.step`` as a bound method, so torch's schedulers can wrap it (they read
    ``step.__func__``): the schedule, the pruning and the optimizer's pickling all keep working."""
    import io
    import pickle

    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    config = WeightPruningConfig(target_sparsity=0.5, pruning_type="snip", pattern="1x1", start_step=1, end_step=4,
                                 pruning_frequency=1, sparsity_decay_type="linear", op_names=["fc"])
    handle = prepare_pruning(model, config, optimizer)
    scheduler = make(optimizer)  # was: AttributeError: 'function' object has no attribute '__func__'
    reference = make(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.05, momentum=0.9))
    levels, rates, expected_rates = [], [], []
    for x, y in _batches(5):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        reference.optimizer.step()
        reference.step()
        levels.append(float((model.fc.weight == 0).float().mean()))
        rates.append(optimizer.param_groups[0]["lr"])
        expected_rates.append(reference.optimizer.param_groups[0]["lr"])
    assert levels == pytest.approx([0.0, 1 / 6, 1 / 3, 0.5, 0.5], abs=1 / 16384)
    assert rates == pytest.approx(expected_rates) and len(set(rates)) > 1
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    state = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, state)
    copy = pickle.loads(pickle.dumps(optimizer))  # torch pickles the state, not the patched step
    assert "step" not in vars(copy) and copy.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    handle.remove()  # the scheduler's wrapper stays; the patch now passes straight through
    mask_before = model.fc.weight == 0
    nn.functional.cross_entropy(model(_batches(1)[0][0]), _batches(1)[0][1]).backward()
    optimizer.step()
    scheduler.step()
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    assert handle.pruner.step_count == 5 and torch.equal(mask_before, model.fc.weight_mask == 0)
