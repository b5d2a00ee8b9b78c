"""SparseML recipes: reading rules, refusals that name the feature and line, and the entry points
(`Recipe`, `ScheduledModifierManager`) running on `sparsify.Pruner`."""

from __future__ import annotations

import io
import logging
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsify import GradSampler
from sparsify.compat.plan import Schedule, UnsupportedFeatureError
from sparsify.compat.sparseml import (
    PassThrough,
    Recipe,
    ScheduledModifierManager,
    StepLevelsScheduler,
    epoch_levels,
    read_recipe_text,
)
from sparsify.safe_io import SourceError

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
    num_grads: 16
    fisher_block_size: 50
---

# Pruning MNISTNet with M-FAC
"""


class Net(nn.Module):
    """MNISTNet's shape, scaled to 8×8 inputs: convs under ``features``, a linear ``classifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2), nn.ReLU())
        self.classifier = nn.Linear(8 * 9, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _data(batches: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(batches)]


def _zeros(module: nn.Module) -> float:
    return float((module.weight == 0).float().mean())


def _recipe(body: str, name: str = "recipe.yaml") -> Recipe:
    return Recipe.from_string(body, name=name)


def test_mnist_tutorial_recipe_one_shot(tmp_path) -> None:
    path = tmp_path / "pruning-mnistnet-one_shot-mfac.md"
    path.write_text(MNIST_MFAC)
    model = Net()
    session = Recipe.from_yaml(path).oneshot(model, GradSampler(_data(), F.cross_entropy, progress=False))
    pruned = session.model
    assert pruned is not model and _zeros(model.classifier) == 0.0  # inplace=False: the input is untouched
    for module in (pruned.features[0], pruned.features[2], pruned.classifier):  # layer-wise, SparseML's default
        assert _zeros(module) == pytest.approx(0.35, abs=1 / module.weight.numel())
    with pytest.raises(ValueError, match="mfac pruning needs calibration data in one shot"):
        Recipe.from_yaml(path).oneshot(Net())


def test_manager_apply_and_modify_are_sparseml_entry_points() -> None:
    recipe = MNIST_MFAC.replace("!MFACPruningModifier", "!GMPruningModifier").replace(
        "    num_grads: 16\n    fisher_block_size: 50\n", "").replace("end_epoch: 1.0", "end_epoch: 2.0")
    model = Net()
    ScheduledModifierManager.from_yaml(recipe).apply(model)  # recipe text, one shot, in place
    assert _zeros(model.classifier) == pytest.approx(0.35, abs=0.002)

    model = Net()
    manager = ScheduledModifierManager.from_yaml(recipe)
    optimizer = manager.modify(model, torch.optim.SGD(model.parameters(), lr=0.01), steps_per_epoch=2)
    levels = []
    for x, y in _data(5):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()  # the wrapped step prunes on schedule
        optimizer.zero_grad()
        levels.append(round(_zeros(model.classifier), 3))
    # epochs 0-2, every epoch, 2 steps per epoch: updates at steps 0 (prepare), 2, 4 at 0, 1-(1/2)^3, 1 of 0.35
    assert levels == [0.0, pytest.approx(0.306, abs=0.002), 0.306, 0.35, 0.35]
    assert manager.finalize(model) is model and not hasattr(model.classifier, "weight_mask")
    assert isinstance(optimizer.param_groups, list)  # the wrapper is the optimizer otherwise


def test_epochs_become_steps_at_sparsemls_own_levels() -> None:
    cubic = epoch_levels(Schedule("epoch", 1.0, 3.0, 0.5, "cubic"), 0.05, 0.85, steps_per_epoch=4)
    assert cubic.steps == (4, 6, 8, 10, 12)
    assert cubic.levels == pytest.approx([0.05 + 0.8 * (1 - (1 - p) ** 3) for p in (0, 0.25, 0.5, 0.75, 1)])
    assert cubic.compute_sparsity(5, 0.2, None) == 0.2 and cubic.compute_sparsity(6, 0.2, None) == cubic.levels[1]
    inverse = epoch_levels(Schedule("epoch", 0.0, 1.0, 0.5, "inverse_cubic"), 0.0, 0.8, steps_per_epoch=2)
    assert inverse.levels == pytest.approx([0.0, 0.8 * (1 - 0.5 ** (1 / 3)), 0.8])
    inc1 = epoch_levels(Schedule("epoch", 0.0, 4.0, 1.0, "inc1"), 0.0, 0.3, steps_per_epoch=3)
    assert inc1.steps == (0, 3, 6, 9, 12) and inc1.levels == pytest.approx([0.06, 0.12, 0.18, 0.24, 0.3])
    assert StepLevelsScheduler(**{k: v for k, v in inc1.as_dict().items() if k != "kind"}) == inc1
    with pytest.raises(ValueError, match="strictly increasing"):
        StepLevelsScheduler((2, 2), (0.1, 0.2))


def test_parameter_selection_is_sparsemls() -> None:
    body = """
modifiers:
  - !GMPruningModifier
    params: ["re:features.*.weight", "classifier.weight"]
    init_sparsity: 0.0
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 1.0
"""
    resolved = _recipe(body).describe(Net())
    assert resolved[0].modules == {"features.0": 0.5, "features.2": 0.5, "classifier": 0.5}
    unanchored = _recipe(body.replace('"re:features.*.weight", ', '"re:.0.weight", '))
    with pytest.raises(SourceError, match=r"recipe\.yaml:3: modifier 0 \(GMPruningModifier\): params entry 're:\.0\."
                                          r"weight' matches no parameter of the model \(SparseML requires every "
                                          r"entry to match; 're:' entries use re\.match, anchored at the start\)"):
        unanchored.describe(Net())
    biases = _recipe(body.replace('["re:features.*.weight", "classifier.weight"]', '["re:features"]'))
    assert set(biases.describe(Net())[0].modules) == {"features.0", "features.2"}  # the biases stay dense


def test_training_parts_are_named_once_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sparsify")
    body = """
num_epochs: 3
training_modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: eval(num_epochs)}
  - !SetLearningRateModifier {learning_rate: 0.1}
  - !LearningRateFunctionModifier {start_epoch: 0, end_epoch: 2, lr_func: linear, init_lr: 0.1, final_lr: 0.0}
pruning_modifiers:
  - !MagnitudePruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.0, final_sparsity: 0.5,
                               start_epoch: 0, end_epoch: eval(num_epochs - 2), update_frequency: 1}
distillation_modifiers:
  - !DistillationModifier {hardness: 1.0, temperature: 2.0, distill_output_keys: [start_logits]}
quantization_modifiers:
  - !QuantizationModifier {start_epoch: 2}
"""
    recipe = _recipe(body)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "recipe.yaml: training length (EpochRangeModifier, line(s) 4) is not applied: sparsify applies the pruning "
        "part only",
        "recipe.yaml: learning rate (LearningRateFunctionModifier, SetLearningRateModifier, line(s) 5, 6) is not "
        "applied: sparsify applies the pruning part only",
        "recipe.yaml: distillation (DistillationModifier, line(s) 11) is not applied: sparsify applies the pruning "
        "part only",
        "recipe.yaml: quantization (QuantizationModifier, line(s) 13) is not applied: sparsify applies the pruning "
        "part only",
    ]
    assert recipe.plan.groups[0].schedule.end == 1 and recipe.plan.groups[0].scope == "local"


@pytest.mark.parametrize(("body", "message"), [
    ("modifiers:\n  - !RigLPruningModifier\n    params: __ALL_PRUNABLE__\n",
     r"^recipe\.yaml:2: RigLPruningModifier is not supported: RigL regrows weights by gradient during training"),
    ("x: 1\nmodifiers:\n  - !FancyModifier {}\n", r"^recipe\.yaml:3: FancyModifier is not supported: not a modifier"),
    ("modifiers:\n  - !GMPruningModifier\n    params: __ALL_PRUNABLE__\n    leave_enabled: false\n",
     r"^recipe\.yaml:2: leave_enabled: false is not supported"),
    ("modifiers:\n  - !GMPruningModifier\n    params: x\n    init_sparsity: __FROM_PARAM__\n",
     r"init_sparsity: __FROM_PARAM__ is not supported"),
])
def test_refusals_name_the_feature_file_and_line(body: str, message: str) -> None:
    with pytest.raises(UnsupportedFeatureError, match=message):
        _recipe(body)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("mask_type", "'3:4'", r"final_sparsity=0\.5 with mask_type='3:4': SparseML's N:M requires the sparsity of the "
                           r"pattern, 0\.25"),
    ("mask_type", "[1, 0]", r"mask_type=\[1, 0\] is invalid: a block is \[out, in\], two integers > 0"),
    ("mask_type", "diagonal", r"mask_type='diagonal' is invalid: allowed 'unstructured', 'block4'"),
    ("inter_func", "quadratic", r"inter_func='quadratic' is invalid: allowed cubic, linear, inverse_cubic"),
    ("update_frequency", "1e-7", r"update_frequency=1e-07 over epochs 0-1 asks for more than a million mask updates"),
    ("end_epoch", ".inf", r"end_epoch=inf is invalid: expected a finite number"),
    ("final_sparsity", "1.5", r"final_sparsity=1\.5 is invalid: allowed 0 <= final_sparsity <= 1"),
    ("num_grads", "8", r"unknown key\(s\) \['num_grads'\] for GMPruningModifier"),
])
def test_bad_fields_are_early_errors_naming_them(field: str, value: str, message: str) -> None:
    base = {"params": "__ALL_PRUNABLE__", "init_sparsity": "0.0", "final_sparsity": "0.5", "start_epoch": "0.0",
            "end_epoch": "1.0", "update_frequency": "1.0"}
    base[field] = value
    body = "modifiers:\n  - !GMPruningModifier\n" + "".join(f"    {k}: {v}\n" for k, v in base.items())
    with pytest.raises(SourceError, match=r"^recipe\.yaml:2: modifier 0 \(GMPruningModifier\): " + message):
        _recipe(body)


def test_mask_types_become_sparsify_patterns() -> None:
    body = """
modifiers:
  - !GMPruningModifier {params: [features.2.weight], init_sparsity: 0.0, final_sparsity: 0.5, start_epoch: 0,
                        end_epoch: 0, update_frequency: 1, mask_type: MASK}
"""
    cases = [("block4", {"pattern": "1x4"}), ("[1, 4]", {"pattern": "1x4"}), ("'2:4'", {"n_m_ratio": (2, 4)}),
             ("tensorrt", {"n_m_ratio": (2, 4)})]
    for mask, fields in cases:
        recipe = _recipe(body.replace("MASK", mask))
        config = recipe.pruner(Net(), one_shot=True).config.module_name_configs[r"features\.2"]
        assert {k: getattr(config, k) for k in fields} == fields, mask
    model = Net()
    _recipe(body.replace("MASK", "[1, 4]")).oneshot(model, inplace=True)
    blocks = (model.features[2].weight == 0).movedim(1, -1).reshape(8, 9, 1, 4).float().mean(-1)  # 4 inputs at a spot
    assert set(blocks.unique().tolist()) == {0.0, 1.0} and _zeros(model.features[2]) == 0.5


def test_per_parameter_targets_anchors_and_old_mfac_options() -> None:
    body = """
targets: &targets
  0.25: [features.0.weight]
  0.75: ['re:classifier']
modifiers:
  - !MFACPruningModifier
    params: []
    final_sparsity: *targets
    init_sparsity: 0.0
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 1.0
    mfac_options:
      num_grads: {0.0: 8, 0.5: 16}
      fisher_block_size: 20
      available_gpus: ["cuda:0"]
"""
    recipe = _recipe(body)
    assert recipe.describe(Net())[0].modules == {"features.0": 0.25, "classifier": 0.75}
    group = recipe.plan.groups[0]
    assert group.options["num_grads"] == {0.0: 8, 0.5: 16} and group.options["fisher_block_size"] == 20
    assert group.options["devices"] == (["cuda:0"] if torch.cuda.is_available() else ["cpu"])
    model = recipe.oneshot(Net(), GradSampler(_data(), F.cross_entropy, progress=False)).model
    assert _zeros(model.features[0]) == pytest.approx(0.25, abs=1 / 36) and _zeros(model.features[2]) == 0.0


def test_constant_modifier_keeps_exactly_the_zeros() -> None:
    model = Net()
    with torch.no_grad():
        model.classifier.weight[:, :30] = 0.0
    body = "modifiers:\n  - !ConstantPruningModifier {params: __ALL_PRUNABLE__, start_epoch: 0, end_epoch: 2}\n"
    session = _recipe(body).attach(model, steps_per_epoch=2)
    zeros = model.classifier.weight == 0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for x, y in _data(4):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        session.step()
    session.finalize()
    assert torch.equal(model.classifier.weight == 0, zeros) and _zeros(model.features[0]) == 0.0


def test_layer_pruning_modifier_swaps_layers_and_undoes_on_failure() -> None:
    body = """
modifiers:
  - !LayerPruningModifier {layers: [features.1, features.3]}
  - !GMPruningModifier {params: [classifier.weight], init_sparsity: 0.0, final_sparsity: 0.5, start_epoch: 0,
                        end_epoch: 0, update_frequency: 1}
"""
    model = _recipe(body).oneshot(Net()).model
    assert isinstance(model.features[1], PassThrough) and isinstance(model.features[3], PassThrough)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 12) and _zeros(model.classifier) == 0.5
    original = Net()
    with pytest.raises(SourceError, match="layers entry 'features.9' is not a module of the model"):
        _recipe(body.replace("features.3", "features.9")).oneshot(original, inplace=True)
    assert isinstance(original.features[1], nn.ReLU)


def test_recipe_variables_override_and_unknown_ones_are_errors() -> None:
    body = "sparsity: 0.5\nmodifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.0, " \
           "final_sparsity: eval(sparsity), start_epoch: 0, end_epoch: 0, update_frequency: 1}\n"
    recipe = Recipe.from_string(body, {"sparsity": 0.7})
    assert recipe.plan.groups[0].targets[0].sparsity == 0.7
    with pytest.raises(SourceError, match="recipe_variables: 'nope' is not a variable of the recipe"):
        Recipe.from_string(body, {"nope": 1})


def test_llm_compressor_stages_and_their_sequential_update() -> None:
    body = """
sparsity_stage:
  run_type: oneshot
  sparsity_modifiers:
    SparseGPTModifier: {sparsity: 0.5, mask_structure: "2:4", sequential_update: false, targets: [Linear]}
"""
    plan = read_recipe_text(body, "stage.yaml")
    assert plan.format == "sparseml-staged" and plan.groups[0].method == "sparsegpt"
    assert plan.groups[0].structure.n_m == (2, 4) and plan.groups[0].targets[0].sparsity == 0.5
    assert plan.groups[0].options == {"damp": 0.01, "sequential": False}  # every layer on the dense model
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    pruner = Recipe(plan).pruner(model, one_shot=True, sampler=GradSampler(_data(), F.cross_entropy))
    pruner.prepare(inplace=True)
    assert {t.config.criterion.as_dict()["sequential"] for t in pruner.targets.values()} == {False}
    assert len(pruner.targets) == 2
    with pytest.raises(SourceError, match=r"sequential_update='yes' is invalid: expected true or false"):
        read_recipe_text(body.replace("sequential_update: false", "sequential_update: 'yes'"), "stage.yaml")


def test_obs_modifier_is_mfac_with_the_obs_update_and_absolute_damp(caplog: pytest.LogCaptureFixture) -> None:
    body = """
modifiers:
  - !OBSPruningModifier
    params: [classifier.weight]
    init_sparsity: 0.7
    final_sparsity: 0.9
    start_epoch: 2
    end_epoch: 26
    update_frequency: 4.0
    mask_type: block4
    num_grads: 1024
    damp: 1e-7
    fisher_block_size: 32
"""
    group = _recipe(body).plan.groups[0]
    assert (group.method, group.scope, group.structure.tile) == ("mfac", "global", "1x4")
    assert group.options == {"num_grads": 1024, "damp": 1e-7, "damp_mode": "absolute", "fisher_block_size": 32,
                             "num_recomputations": 1, "obs_update": True}


def test_overlapping_modifiers_and_recipe_streams() -> None:
    overlap = """
modifiers:
  - !GMPruningModifier {params: __ALL_PRUNABLE__, final_sparsity: 0.5, start_epoch: 0, end_epoch: 0}
  - !GMPruningModifier {params: [classifier.weight], final_sparsity: 0.7, start_epoch: 0, end_epoch: 0}
"""
    with pytest.raises(SourceError, match=r"^recipe\.yaml:4: modifier 1 \(GMPruningModifier\): classifier is also "
                                          r"pruned by recipe\.yaml:3: modifier 0 \(GMPruningModifier\)"):
        _recipe(overlap).oneshot(Net())
    body = MNIST_MFAC.split("---\n")[1]
    assert Recipe.from_yaml(io.StringIO(body)).plan.groups[0].options["num_grads"] == 16  # a stream: plain YAML
    assert Recipe.from_yaml(io.StringIO(MNIST_MFAC)).plan.groups[0].method == "mfac"  # a stream: front matter
    with pytest.raises(SourceError, match=r"^line 1: modifiers\[0\] is not a modifier \(expected '- !ModifierName'\)"):
        Recipe.from_string("- 1\n- 2\n")  # a top-level list is a list of modifiers, as in SparseML
    with pytest.raises(SourceError, match="the recipe is empty"):
        Recipe.from_string("")


def test_recipe_variables_as_json_must_be_an_object() -> None:
    body = "sparsity: 0.5\nmodifiers:\n  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.0, " \
           "final_sparsity: eval(sparsity), start_epoch: 0, end_epoch: 0, update_frequency: 1}\n"
    manager = ScheduledModifierManager.from_yaml(body, recipe_variables='{"sparsity": 0.7}')
    model = nn.Sequential(nn.Linear(8, 8))
    manager.apply(model)
    assert int((model[0].weight == 0).sum()) == 64 - math.ceil(64 * (1 - 0.7))  # 44: the variable was applied
    for text, kind in (("[0.7]", "list"), ("0.7", "float"), ('"x"', "str")):
        with pytest.raises(ValueError, match=rf"recipe_variables='{re.escape(text)}' is invalid: allowed a mapping "
                                             rf"or a JSON object .* got a JSON {kind}"):
            ScheduledModifierManager.from_yaml(body, recipe_variables=text)


GMP_EPOCHS = """
modifiers:
  - !GMPruningModifier
    params: ["re:features.*weight"]
    init_sparsity: 0.0
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: 2.0
    update_frequency: 1.0
"""


@pytest.mark.parametrize("bad", [math.inf, math.nan, 0, -3, 2.5, True, "4"])
def test_steps_per_epoch_must_be_a_whole_number_of_steps(bad: object) -> None:
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    message = (f"steps_per_epoch={bad!r} is invalid: allowed a whole number of optimizer steps > 0 (the steps in "
               f"one epoch, e.g. len(train_loader))")
    with pytest.raises(ValueError) as info:
        Recipe.from_string(GMP_EPOCHS).attach(model, bad)  # type: ignore[arg-type]
    assert str(info.value) == message
    with pytest.raises(ValueError, match=re.escape(message)):
        ScheduledModifierManager.from_yaml(io.StringIO(GMP_EPOCHS)).modify(
            model, torch.optim.SGD(model.parameters(), lr=0.1), steps_per_epoch=bad)  # type: ignore[arg-type]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and not hasattr(
        model.features[0], "weight_mask")
    session = Recipe.from_string(GMP_EPOCHS).attach(model, 4.0)  # a whole float is a count
    assert session.pruner.step_count == 0


CARD_TWO_BLOCKS = """---
modifiers:
  - !GMPruningModifier
    params: ["re:features.*weight"]
    init_sparsity: 0.0
    final_sparsity: 0.5
    start_epoch: 0.0
    end_epoch: 2.0
    update_frequency: 1.0
---

# The model card

Also prune the classifier:

```yaml
more_modifiers:
  - !GMPruningModifier
    params: ["classifier.weight"]
    final_sparsity: 0.8
```
"""


@pytest.mark.parametrize("card, first, second, what", [
    (CARD_TWO_BLOCKS, 1, 16, "```yaml block"),
    ("# card\n\n```yaml" + GMP_EPOCHS + "```\n\ntext\n\n~~~yml\nx: 1\n~~~\n", 3, 16, "~~~yml block"),
], ids=["front-matter-and-fence", "two-fences"])
def test_markdown_card_with_two_yaml_blocks_is_refused_naming_the_second(tmp_path, card: str, first: int,
                                                                         second: int, what: str) -> None:
    path = tmp_path / "card.md"
    path.write_text(card)
    with pytest.raises(SourceError) as info:
        Recipe.from_yaml(path)
    assert info.value.line == second
    assert str(info.value) == (
        f"{path}:{second}: a second YAML block ({what}) starts here; the first "
        f"({'front matter' if first == 1 else '```yaml block'}) is at line {first}: SparseML reads only a recipe "
        f"card's front matter and would drop the other block, so sparsify refuses rather than apply half — keep the "
        f"whole recipe in one block")
    path.write_text(card.split("# The model card")[0] if first == 1 else card.split("text")[0])
    assert len(Recipe.from_yaml(path).plan.groups) == 1  # one block: read as before


ACDC = """
modifiers:
  - !ACDCPruningModifier
    compression_sparsity: 0.75
    start_epoch: 0
    end_epoch: 4
    update_frequency: 1
    params: ["re:features.*weight", "classifier.weight"]
    global_sparsity: false
"""


def test_acdc_alternates_dense_and_compressed_phases_as_sparseml() -> None:
    """SparseML's AC/DC, by hand: end_epoch 4 is cut to 3 (epoch 3 is an odd, compressed phase of the absolute
    count: _finish_on_compression); updates at epochs 0 (phase 0: dense), 1 (compressed), 2 (dense), 3 = end
    (compressed). Two steps an epoch: the masks change before optimizer steps 2, 4 and 6. Pruned weights come
    back at zero; the momentum is zeroed after the first optimizer step of the dense phase (SparseML's
    optimizer_post_step)."""
    recipe = Recipe.from_string(ACDC)
    (group,) = recipe.plan.groups
    assert (group.schedule.start, group.schedule.end, group.scope) == (0, 3, "local")
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    manager = ScheduledModifierManager(recipe)
    wrapped = manager.modify(model, optimizer, steps_per_epoch=2)
    layers = {"features.0": model.features[0], "features.2": model.features[2], "classifier": model.classifier}
    levels, returned, momentum_zero = [], {}, []
    for step, (x, y) in enumerate(_data(8)):
        masks = {n: m.weight_mask.clone() for n, m in layers.items()}
        F.cross_entropy(model(x), y).backward()
        wrapped.step()
        wrapped.zero_grad()
        levels.append([round(float((m.weight_mask == 0).float().mean()), 4) for m in layers.values()])
        weights = {n: m.weight_orig * m.weight_mask for n, m in layers.items()}  # what the next forward uses
        if step == 3:  # dense again: the weights pruned in the compressed phase are back, at exactly zero
            returned = {n: torch.equal(weights[n] == 0, masks[n] == 0) for n in layers}
        if step == 3:
            pruned = {n: masks[n] == 0 for n in layers}
        if step == 4:  # and train from there (where their gradient is not zero)
            assert all(bool((weights[n][pruned[n]] != 0).any()) for n in layers)
        momentum_zero.append(all(float(optimizer.state[p]["momentum_buffer"].abs().sum()) == 0
                                 for p in model.parameters()))
    compressed = [0.75, 0.75, 0.75]  # 27 of 36, 216 of 288, 648 of 864: exact
    assert levels == [[0, 0, 0], compressed, compressed, [0, 0, 0], [0, 0, 0], compressed, compressed, compressed]
    assert returned == {"features.0": True, "features.2": True, "classifier": True}
    assert momentum_zero == [False, False, False, False, True, False, False, False]
    final = manager.finalize(model)
    assert [round(float((m.weight == 0).float().mean()), 4) for m in layers.values()] == compressed
    assert not hasattr(final.classifier, "weight_mask")


def test_acdc_fields_are_checked_and_one_shot_is_the_compressed_state() -> None:
    from sparsify.compat.sparseml.acdc import finish_on_compression

    # SparseML's arithmetic, on the absolute epoch: trailing epochs with odd floor(e / f) are cut
    assert [finish_on_compression(0, end, 1) for end in (1, 2, 3, 4, 5)] == [1, 1, 3, 3, 5]
    assert finish_on_compression(0, 9, 2) == 9 and finish_on_compression(0, 4, 2) == 2
    with pytest.raises(SourceError, match=r"compression_sparsity is required"):
        Recipe.from_string("modifiers:\n  - !ACDCPruningModifier\n    params: __ALL_PRUNABLE__\n")
    with pytest.raises(SourceError, match=r"start_epoch=0, end_epoch=0, update_frequency=1 are invalid"):
        Recipe.from_string(ACDC.replace("end_epoch: 4", "end_epoch: 0"))
    with pytest.raises(UnsupportedFeatureError, match=r"leave_enabled: false is not supported"):
        Recipe.from_string(ACDC + "    leave_enabled: false\n")
    model = Net()
    Recipe.from_string(ACDC.replace("global_sparsity: false", "global_sparsity: true")).oneshot(model, inplace=True)
    weights = [model.features[0].weight, model.features[2].weight, model.classifier.weight]
    assert sum(int((w == 0).sum()) for w in weights) == round(0.75 * sum(w.numel() for w in weights))
