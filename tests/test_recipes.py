"""SparseML-style recipes: safe loading, modifiers, parameter selection, one-shot and training-loop use."""

import io
import logging
import os

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from sparsify import ConstantSparsityScheduler, PolynomialDecayScheduler, Pruner
from sparsify.compat.sparseml import Recipe, epochs_to_scheduler, load_recipe_text
from sparsify.criteria.sampler import GradSampler

LICENSE = "<!--\nCopyright (c) 2021 - present / Neuralmagic, Inc. All Rights Reserved.\n-->\n\n"
MNIST_MFAC = LICENSE + """---
pruning_modifiers:
  - !MFACPruningModifier
    params: __ALL_PRUNABLE__
    init_sparsity: 0.0
    final_sparsity: 0.35
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 1.0
    num_grads: 512
    fisher_block_size: 2000
---

# Pruning MNISTNet with M-FAC
This recipe prunes a model to 35% sparsity using the M-FAC pruning algorithm.
"""
MNIST_MAGNITUDE = MNIST_MFAC.replace("!MFACPruningModifier", "!GMPruningModifier").replace(
    "    num_grads: 512\n    fisher_block_size: 2000\n", ""
)


class Net(nn.Module):
    """MNISTNet's shape, scaled to 8×8 inputs: convs under ``features``, a linear ``classifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU())
        self.classifier = nn.Linear(8 * 9, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


PRUNABLE = ["features.0", "features.2", "classifier"]


def _sampler(batches: int = 512) -> GradSampler:
    def data():
        g = torch.Generator().manual_seed(2)
        for _ in range(batches):
            yield [torch.randn(4, 1, 8, 8, generator=g)], {}, torch.randint(0, 10, (4,), generator=g)

    return GradSampler(data, F.cross_entropy, progress=False)


def _sparsities(session) -> dict[str, float]:
    return {name: row["unstructured_weight_sparsity"] for name, row in session.report().items()}


def test_mnist_tutorial_recipe_runs_one_shot_in_a_few_lines(tmp_path) -> None:
    (tmp_path / "mfac.md").write_text(MNIST_MFAC)
    model = Net()

    recipe = Recipe.from_yaml(tmp_path / "mfac.md")
    session = recipe.oneshot(model, _sampler())
    pruned = session.model

    assert pruned is not model and isinstance(session.pruner, Pruner)
    for name, level in _sparsities(session).items():
        assert level == pytest.approx(0.35, abs=0.02), name  # layer-wise: SparseML's default scope
    log = session.pruner.scorer_of("classifier").log
    assert log[0]["num_grads"] == 512 and log[0]["damp_ratio"] == pytest.approx(0.01)
    assert "_COREML_/weight/compression_type" in dict(pruned.classifier.named_buffers())
    magnitude = Recipe.from_string(MNIST_MAGNITUDE).oneshot(model)
    assert magnitude.pruner.targets["classifier"].config.criterion.kind == "magnitude"
    assert _sparsities(magnitude) == _sparsities(session)
    layers = ("classifier", "features.0", "features.2")
    assert any(not torch.equal(pruned.get_submodule(n).weight == 0, magnitude.model.get_submodule(n).weight == 0)
               for n in layers)


def test_safe_loader_rejects_python_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(os, "system", lambda command: calls.append(command))
    for text in ('!!python/object/apply:os.system ["echo hacked"]\n',
                 'modifiers:\n  - !!python/object/apply:os.system ["echo hacked"]\n',
                 "x: !!python/name:os.system\n"):
        with pytest.raises(yaml.constructor.ConstructorError, match="could not determine a constructor"):
            Recipe.from_string(text)
    with pytest.raises(ValueError, match="!python/object/apply:os.system is not supported"):
        Recipe.from_string('modifiers:\n  - !python/object/apply:os.system {command: "echo hacked"}\n')
    assert calls == []


def test_unknown_and_training_modifiers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sparsify")
    text = """
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0.0, end_epoch: 3.0}
  - !SetLearningRateModifier {start_epoch: 0.0, learning_rate: 0.0004}
modifiers:
  - !GlobalMagnitudePruningModifier {params: __ALL_PRUNABLE__, final_sparsity: 0.5}
"""
    recipe = Recipe.from_string(text)
    assert recipe.ignored == ["EpochRangeModifier", "SetLearningRateModifier"]
    assert "training modifier, not pruning" in caplog.text
    assert recipe.modifiers[0].global_sparsity
    with pytest.raises(ValueError, match="!RigLPruningModifier is not supported; allowed pruning modifiers are !GM"):
        Recipe.from_string("modifiers:\n  - !RigLPruningModifier {params: __ALL_PRUNABLE__}\n")
    with pytest.raises(ValueError, match="has no pruning modifier"):
        Recipe.from_string(text.split("modifiers:\n  - !Global")[0])
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['num_grads'\\]; allowed keys are params"):
        Recipe.from_string("modifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, num_grads: 3}\n")
    with pytest.raises(ValueError, match="'params' is required"):
        Recipe.from_string("modifiers:\n  - !GMPruningModifier {final_sparsity: 0.5}\n")
    with pytest.raises(ValueError, match="does not evaluate expressions"):
        Recipe.from_string("modifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, end_epoch: eval(3 * 2)}\n")


def _targets(params: str) -> dict[str, float]:
    recipe = Recipe.from_string(f"modifiers:\n  - !GMPruningModifier {{params: {params}, final_sparsity: 0.5}}\n")
    return recipe.describe(Net())[0][1]


def test_parameter_selection() -> None:
    assert list(_targets("__ALL_PRUNABLE__")) == PRUNABLE
    assert list(_targets("[classifier.weight, features.0.weight]")) == ["features.0", "classifier"]  # model order
    assert list(_targets("['re:features']")) == ["features.0", "features.2"]  # re.match: a prefix is enough
    assert list(_targets("['re:.*2']")) == ["features.2"]
    with pytest.raises(ValueError, match="'re:0' matches no prunable weight; prunable weights are features.0.weight"):
        _targets("['re:0']")
    with pytest.raises(ValueError, match="'classifier.bias' matches no prunable weight"):
        _targets("[classifier.bias]")
    with pytest.raises(ValueError, match="'__ALL__' selects biases"):
        _targets("__ALL__")


def test_per_parameter_targets_with_anchors_and_old_mfac_options() -> None:
    text = """
targets: &targets
  0.3: [features.0.weight]
  0.6: ['re:features.2', classifier.weight]
devices: &devices ["cpu"]
pruning_modifiers:
  - !MFACPruningModifier
    params: []
    final_sparsity: *targets
    mfac_options:
      num_grads: {0.0: 16, 0.5: 32}
      fisher_block_size: 50
      available_gpus: *devices
"""
    recipe = Recipe.from_string(text)
    modifier = recipe.modifiers[0]
    assert modifier.mfac_options == {"num_grads": {0.0: 16, 0.5: 32}, "fisher_block_size": 50, "devices": ["cpu"]}
    expected = {"features.0": 0.3, "features.2": 0.6, "classifier": 0.6}
    assert recipe.describe(Net()) == [("MFACPruningModifier", expected)]
    session = recipe.oneshot(Net(), _sampler())
    levels = _sparsities(session)
    assert levels["features.0"] == pytest.approx(0.3, abs=0.03) and levels["classifier"] == pytest.approx(0.6, abs=0.01)
    criterion = session.pruner.targets["features.0"].config.criterion
    assert criterion.devices == ("cpu",) and criterion.fisher_block_size == 50
    with pytest.raises(ValueError, match="set params: \\[\\]"):
        Recipe.from_string(text.replace("params: []", "params: __ALL_PRUNABLE__"))


def test_mask_types() -> None:
    base = "modifiers:\n  - !MFACPruningModifier {{params: __ALL_PRUNABLE__, final_sparsity: {s}, mask_type: '{t}'}}\n"
    session = Recipe.from_string(base.format(s=0.5, t="2:4")).oneshot(Net(), _sampler(64))
    weight = session.model.classifier.weight
    assert all(int(run.sum()) == 2 for run in (weight.reshape(-1, 4) == 0))  # 2 kept of every 4
    config = session.pruner.config.module_name_configs["classifier"]
    assert config.n_m_ratio == (2, 4)
    three_of_four = Recipe.from_string(base.format(s=0.25, t="3:4")).modifiers[0]
    assert three_of_four._pattern() == {"n_m_ratio": (1, 4)}  # SparseML's "3:4" keeps 3: 25 % sparsity
    with pytest.raises(ValueError, match="mask_type='block4' is invalid: allowed 'unstructured', 'filter' or 'N:M'"):
        Recipe.from_string(base.format(s=0.5, t="block4"))
    with pytest.raises(ValueError, match="mask_type='2:4' needs global_sparsity: false"):
        Recipe.from_string(base.format(s=0.5, t="2:4").replace("mask_type", "global_sparsity: true, mask_type"))


def test_epochs_become_sparseml_cubic_steps() -> None:
    scheduler = epochs_to_scheduler(1.0, 3.0, 0.5, steps_per_epoch=10)
    assert isinstance(scheduler, PolynomialDecayScheduler)
    assert scheduler.update_steps.tolist() == [10, 15, 20, 25, 30]

    class Config:
        initial_sparsity, target_sparsity = 0.05, 0.8

    for i, step in enumerate([10, 15, 20, 25, 30]):
        p = i / 4  # SparseML: s = init + (final - init) · (1 - (1 - p)³)
        assert scheduler.compute_sparsity(step, -1.0, Config) == pytest.approx(0.05 + 0.75 * (1 - (1 - p) ** 3))
    linear = epochs_to_scheduler(0.0, 2.0, 1.0, steps_per_epoch=7, power=1)
    assert linear.update_steps.tolist() == [0, 7, 14] and linear.power == 1
    assert epochs_to_scheduler(2.0, 2.0, 1.0, 5) == ConstantSparsityScheduler(begin_step=10)
    with pytest.raises(ValueError, match="steps_per_epoch=0 is invalid"):
        epochs_to_scheduler(0.0, 1.0, 1.0, 0)


def _train(session, steps: int, seed: int = 3) -> None:
    optimizer = torch.optim.SGD(session.model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(session.model(x), y).backward()
        optimizer.step()
        session.step()


def test_attached_to_a_training_loop() -> None:
    text = """
modifiers:
  - !GMPruningModifier
    params: ['re:features']
    init_sparsity: 0.1
    final_sparsity: 0.6
    start_epoch: 1.0
    end_epoch: 3.0
    update_frequency: 1.0
  - !MFACPruningModifier
    params: [classifier.weight]
    final_sparsity: 0.5
    start_epoch: 1.0
    end_epoch: 2.0
    update_frequency: 1.0
    num_grads: 4
"""
    model = Net()
    session = Recipe.from_string(text).attach(model, steps_per_epoch=5)
    assert session.model is model  # in place by default, like prepare(inplace=True) in a training script
    assert _sparsities(session)["features.0"] == pytest.approx(0.1, abs=0.03)  # init_sparsity at prepare
    _train(session, 16)
    levels = _sparsities(session)
    assert levels["features.2"] == pytest.approx(0.6, abs=0.01) and levels["classifier"] == pytest.approx(0.5)
    mfac = session.pruner.scorer_of("classifier")
    assert [(e["step"], e["num_grads"]) for e in mfac.log] == [(10, 4)]  # recorded from training steps
    finalized = session.finalize()
    assert not hasattr(finalized.classifier, "weight_orig")


def test_constant_modifier_freezes_existing_zeros() -> None:
    model = Net()
    with torch.no_grad():
        model.classifier.weight[:, ::3] = 0
    zeros = model.classifier.weight == 0
    text = "modifiers:\n  - !ConstantPruningModifier {params: [classifier.weight], start_epoch: 0.0}\n"
    oneshot = Recipe.from_string(text).oneshot(model)
    assert torch.equal(oneshot.model.classifier.weight == 0, zeros)
    session = Recipe.from_string(text).attach(model, steps_per_epoch=4)
    frozen = session.pruner.targets["classifier"].config
    assert frozen.criterion.kind == "magnitude" and frozen.target_sparsity == pytest.approx(zeros.float().mean().item())
    _train(session, 5)
    assert torch.equal(session.model.classifier.weight == 0, zeros)


def test_recipe_errors_when_applied() -> None:
    overlap = """
modifiers:
  - !GMPruningModifier {params: __ALL_PRUNABLE__, final_sparsity: 0.5}
  - !GMPruningModifier {params: [classifier.weight], final_sparsity: 0.5}
"""
    with pytest.raises(ValueError, match="two modifiers of the recipe select the same module"):
        Recipe.from_string(overlap).oneshot(Net())
    with pytest.raises(ValueError, match="needs calibration data: recipe.oneshot\\(model, sampler="):
        Recipe.from_string(MNIST_MFAC).oneshot(Net())


def test_plain_yaml_stream_and_empty_text() -> None:
    body = MNIST_MFAC.split("---\n")[1]
    assert Recipe.from_yaml(io.StringIO(body)).modifiers[0].mfac_options["num_grads"] == 512
    assert load_recipe_text("") == {}
    with pytest.raises(ValueError, match="must be a mapping at the top level, got list"):
        load_recipe_text("- 1\n- 2\n")
