"""Lifecycle surprises (issue 22, part B): what a user does between prepare() and finalize() that the pruner
used to miss or misread — a replaced module, a second pruner, a truthy string for a flag, NaN calibration data,
two spellings of n:m, a model with nothing to prune, GPT-2's Conv1D under Core ML Tools' preset."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import sparsify
from sparsify import (
    GradSampler,
    MagnitudePruner,
    MagnitudePrunerConfig,
    ModulePrunerConfig,
    Pruner,
    PrunerConfig,
)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))


def cnn() -> nn.Sequential:
    """A first conv with 3 input channels: no whole runs of 4."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


# -- 1. a module replaced after prepare() ---------------------------------------------------------------------

REPLACED = ("module '2' (Linear) was replaced after prepare() by a new Linear, which is not masked; the pruner masks "
            "the module that was there, so the new one would stay dense. Replace modules before prepare(): abandon() "
            "this pruner (or put the original module back) and prepare a new Pruner on the changed model")


def test_a_module_replaced_after_prepare_is_refused_by_step_finalize_and_prune_now(caplog) -> None:
    model = mlp()
    pruner = Pruner(model)
    pruner.prepare(inplace=True)
    pruner.step()
    old = model[2]
    model[2] = nn.Linear(8, 4)
    with caplog.at_level(logging.WARNING, logger="sparsify"):
        report = pruner.report()
    assert report["0"]["unstructured_weight_sparsity"] == 0.5
    assert report["2"]["unstructured_weight_sparsity"] == 0.0  # the new module, dense: not the old one's 0.5
    assert ("report(): module '2' (Linear) was replaced after prepare() by a new Linear, which is not masked; its row "
            "shows the module there now, which the pruner does not prune (step() and finalize() refuse to go on)"
            ) in caplog.messages
    for action, call in (("step()", pruner.step), ("finalize()", pruner.finalize), ("prune_now()", pruner.prune_now)):
        with pytest.raises(RuntimeError) as error:
            call()
        assert str(error.value) == f"{action}: {REPLACED}"
    assert pruner.step_count == 1  # the refused step did not count
    pruner.abandon()  # undoes prepare() on the module it masked, though it is no longer in the model
    assert not hasattr(old, "weight_orig") and isinstance(old.weight, nn.Parameter)
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]


def test_a_removed_module_is_named_too() -> None:
    model = mlp()
    pruner = Pruner(model)
    pruner.prepare(inplace=True)
    del model[2]
    with pytest.raises(RuntimeError, match=r"^step\(\): module '2' \(Linear\) was removed after prepare\(\); the "):
        pruner.step()


# -- 2. a second pruner on a prepared model ------------------------------------------------------------------

ALREADY = ("the model is already prepared for pruning: 2 module(s) the config selects are already masked by {owner} "
           "('0', '2'); a second pruner cannot mask a weight again: finalize() the first pruner (or abandon() it to "
           "undo its prepare()) before preparing another, or prune everything with one pruner and one config")


@pytest.mark.parametrize("second", ["Pruner", "MagnitudePruner", "prune"])
def test_a_second_pruner_on_a_prepared_model_is_refused_with_the_reason(second: str) -> None:
    model = mlp()
    Pruner(model).prepare(inplace=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as error:
        if second == "prune":
            sparsify.prune(model, 0.5, inplace=True)
        else:
            {"Pruner": Pruner, "MagnitudePruner": MagnitudePruner}[second](model).prepare(inplace=True)
    assert str(error.value) == ALREADY.format(owner="a sparsify Pruner")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing changed


def test_a_model_masked_by_torch_prune_is_named_as_such() -> None:
    model = mlp()
    for layer in (model[0], model[2]):
        torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.5)
    with pytest.raises(ValueError) as error:
        Pruner(model).prepare()
    assert str(error.value) == ALREADY.format(owner="torch.nn.utils.prune (or Core ML Tools)")


# -- 3. boolean arguments are booleans ------------------------------------------------------------------------

def test_prune_inplace_no_is_refused_and_the_model_is_untouched() -> None:
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError) as error:
        sparsify.prune(model, 0.5, inplace="no")
    assert str(error.value) == "prune(inplace='no') is invalid: expected True or False, got str"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(TypeError) as error:
        sparsify.prune(model, 0.5, keep_classifier_dense=1)
    assert str(error.value) == "prune(keep_classifier_dense=1) is invalid: expected True or False, got int"


def _flag_calls() -> list[tuple[str, object]]:
    from sparsify.analysis.sensitivity import SensitivityScan, sensitivity_scan
    from sparsify.checkpoints import load_state_dict
    from sparsify.compat.coremltools import CompressionMetadata
    from sparsify.compat.inc_callbacks import prepare_compression
    from sparsify.compat.sparseml import Recipe
    from sparsify.demo.datasets import load_dataset

    recipe = Recipe.from_string("modifiers:\n  - !GMPruningModifier {init_sparsity: 0.0, final_sparsity: 0.5, "
                              "start_epoch: 0.0, end_epoch: 1.0, update_frequency: 1.0, params: __ALL_PRUNABLE__}\n")
    model = mlp()
    return [
        ("Pruner.prepare(inplace='no')", lambda: Pruner(model).prepare(inplace="no")),
        ("MagnitudePruner.prepare(inplace='no')", lambda: MagnitudePruner(model).prepare(inplace="no")),
        ("Pruner.finalize(inplace='no')", lambda: Pruner(model).finalize(inplace="no")),
        ("PrunerConfig.keep_classifier_dense='no'", lambda: PrunerConfig(keep_classifier_dense="no")),
        ("SparseGPTCriterion.sequential='no'", lambda: ModulePrunerConfig(criterion={"kind": "sparsegpt",
                                                                                     "sequential": "no"})),
        ("GradSampler(progress='no')", lambda: GradSampler([], progress="no")),
        ("sensitivity_scan(progress='no')", lambda: sensitivity_scan(model, lambda m: 1.0, progress="no")),
        ("load_state_dict(strict='no')", lambda: load_state_dict(model, model.state_dict(), strict="no")),
        ("PruningCallbacks(finalize_on_train_end='no')",
         lambda: prepare_compression(model, {"target_sparsity": 0.5}, finalize_on_train_end="no")),
        ("CompressionMetadata.register(override_compression_type='no')",
         lambda: CompressionMetadata("weight").register(model[0], override_compression_type="no")),
        ("Recipe.oneshot(inplace='no')", lambda: recipe.oneshot(model, inplace="no")),
        ("Recipe.oneshot(finalize='no')", lambda: recipe.oneshot(model, finalize="no")),
        ("Recipe(inplace='no')", lambda: recipe.attach(model, 10, inplace="no")),
        ("Recipe.pruner(one_shot='no')", lambda: recipe.pruner(model, one_shot="no")),
        ("load_dataset(download='no')", lambda: load_dataset("digits", download="no")),
        ("SensitivityScan.from_dict(higher_is_better='false')", lambda: SensitivityScan.from_dict(
            {"baseline": 1.0, "sparsities": [0.5], "metric": {"0": [1.0]}, "params": {"0": 64},
             "higher_is_better": "false"})),
    ]


def test_every_boolean_keyword_of_the_public_api_refuses_a_string() -> None:
    calls = _flag_calls()
    for expected, call in calls:
        with pytest.raises(TypeError) as error:
            call()  # type: ignore[operator]
        assert expected + " is invalid: expected True or False" in str(error.value), (expected, error.value)


def test_the_hf_callback_refuses_a_string_flag() -> None:
    pytest.importorskip("transformers")
    from sparsify.compat.hf import PruningCallback

    with pytest.raises(TypeError, match=r"^PruningCallback\(finalize_at_end='no'\) is invalid: expected True or False"):
        PruningCallback(Pruner(mlp()), finalize_at_end="no")


# -- 4. non-finite calibration data ---------------------------------------------------------------------------

def _nan_data() -> list[tuple[torch.Tensor, None]]:
    torch.manual_seed(1)
    data = [(torch.randn(4, 8), None) for _ in range(3)]
    data[1][0][0, 2] = float("nan")
    data[2][0][1, 5] = float("inf")
    return data


@pytest.mark.parametrize("criterion,label", [("sparsegpt", "SparseGPT"), ("wanda", "Wanda")])
@pytest.mark.parametrize("scope", ["local", "global"])
def test_layerwise_criteria_name_the_layer_whose_calibration_inputs_are_not_finite(
    criterion: str, label: str, scope: str, caplog
) -> None:
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.WARNING, logger="sparsify"), pytest.raises(ValueError) as error:
        sparsify.prune(model, 0.5, criterion={"kind": criterion, "num_batches": 3}, scope=scope, inplace=True,
                       sampler=GradSampler(_nan_data(), progress=False))
    assert str(error.value) == (
        f"{label}: the calibration inputs of module '0' hold 2 non-finite value(s) (NaN or infinite) among 12 "
        "row(s): the sampler's data, or the layers before '0' on it, produce them, and no mask can be chosen from "
        "them; check the calibration data with torch.isfinite (and the model's activations on it)"
    )
    assert not any("damp" in m or "NaN" in m for m in caplog.messages)  # no damping warnings, no NaN-score ranking
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # inplace=True, nothing half-done


# -- 6. the two spellings of n:m -------------------------------------------------------------------------------

def test_pattern_2_4_and_n_m_ratio_2_4_give_the_same_masks_at_one_half() -> None:
    model = cnn()
    by_pattern = sparsify.prune(model, 0.5, pattern="2:4")
    by_ratio = sparsify.prune(model, 0.5, n_m_ratio=(2, 4))
    for index in (0, 3):  # the conv's 3 input channels: a padded partial run either way, not skipped
        assert torch.equal(by_pattern[index].weight == 0, by_ratio[index].weight == 0)
    assert int((by_pattern[0].weight == 0).sum()) == 72  # 2 zeros of the 3 channels at each of 8 × 9 positions


def test_the_two_spellings_ramp_the_same_way_under_a_schedule() -> None:
    masks = []
    for fields in ({"pattern": "2:4"}, {"n_m_ratio": (2, 4)}):
        model = cnn()
        config = PrunerConfig(global_config=ModulePrunerConfig(
            target_sparsity=0.5, scheduler={"update_steps": [1, 2, 3]}, **fields))
        pruner = Pruner(model, config)
        pruner.prepare(inplace=True)
        steps = []
        for _ in range(3):
            pruner.step()
            steps.append([mask.clone() for _, mask in pruner.named_masks()])
        masks.append(steps)
    for pattern_step, ratio_step in zip(*masks):
        assert all(torch.equal(a, b) for a, b in zip(pattern_step, ratio_step))


def test_the_scope_local_advice_appears_only_in_global_scope(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="sparsify"):
        sparsify.prune(cnn(), 0.3, pattern="2:4")  # below n/m: Neural Compressor's whole runs, the conv skipped
    skipped = [m for m in caplog.messages if m.endswith("skipped")]
    assert skipped == [
        "module '0' (Conv2d): pattern='2:4' by whole runs needs the input channels (3, weight shape (8, 3, 3, 3)) to "
        "be a multiple of m=4; at target_sparsity=0.3 (below 0.5) it makes that share of whole runs sparse, as "
        "Neural Compressor does; n_m_ratio=(2, 4) pads partial runs but always prunes 0.5; skipped"
    ]
    assert not any("scope='local'" in m for m in caplog.messages)
    with pytest.raises(ValueError) as error:
        sparsify.prune(cnn(), 0.5, pattern="2:4", scope="global")
    assert str(error.value) == (
        "module '0' (Conv2d): pattern='2:4' ranked globally needs the input channels (3, weight shape (8, 3, 3, 3)) "
        "to be a multiple of m=4; use scope='local' (partial runs padded) or exclude this module"
    )


def test_an_n_m_ratio_that_overrides_the_requested_sparsity_is_refused() -> None:
    """prune() is one-shot to `sparsity`: an n:m ratio that prunes another level is refused before any work
    (the language-model issue's 2:4 at 0.7 used to end at 0.5 silently)."""
    model = mlp()
    before = model[0].weight.detach().clone()
    with pytest.raises(ValueError) as error:
        sparsify.prune(model, 0.3, n_m_ratio=(2, 4))
    assert str(error.value) == ("prune(model, 0.3, n_m_ratio=(2, 4)): that pattern prunes 0.5 of each layer, not 0.3; "
                                "pass sparsity=0.5 or another pattern")
    assert torch.equal(model[0].weight, before)


# -- 7. nothing to prune ---------------------------------------------------------------------------------------

def test_a_model_with_nothing_to_prune_says_the_config_selects_no_module() -> None:
    with pytest.raises(ValueError) as error:
        sparsify.prune(nn.LSTM(8, 8), 0.5)
    assert str(error.value) == (
        "prune(): the config selects no module of this LSTM: it prunes Linear, Conv1d, Conv2d, Conv3d, Conv1D (and "
        "Embedding when a rule or module_types names it), and the model's layers with parameters are LSTM; a custom "
        "layer is pruned when it subclasses one of those types (nn.Linear, nn.Conv2d, ...), Embedding tables with "
        "module_types=['Embedding']"
    )
    with pytest.raises(ValueError, match=r"its rules exclude all 2 module\(s\) of those types \(module_types, name or "
                                         r"type rules set to None, keep_classifier_dense\); sparsify.dry_run"):
        sparsify.prune(mlp(), 0.5, module_types=["Conv2d"])


def test_prepare_warns_and_prune_now_says_why_when_nothing_is_selected(caplog) -> None:
    pruner = Pruner(nn.LSTM(8, 8))
    with caplog.at_level(logging.WARNING, logger="sparsify"):
        pruner.prepare()  # Core ML Tools' prepare() accepts it: a warning, not an error
    assert caplog.messages[-1].startswith("prepare(): the config selects no module of this LSTM: it prunes Linear")
    with pytest.raises(RuntimeError, match=r"^prune_now\(\): the config selects no module of this model \(see "):
        pruner.prune_now()


# -- 8. GPT-2's Conv1D under Core ML Tools' preset ---------------------------------------------------------------

def test_core_ml_tools_preset_says_once_that_conv1d_layers_stay_dense(caplog) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16))
    with caplog.at_level(logging.WARNING, logger="sparsify"):
        prepared = MagnitudePruner(model, MagnitudePrunerConfig()).prepare()
    notes = [m for m in caplog.messages if "Conv1D" in m]
    assert notes == [
        "MagnitudePrunerConfig prunes Core ML Tools' module types (Linear, Conv1d, Conv2d, Conv3d) only: 8 "
        "transformers Conv1D layer(s) (e.g. 'transformer.h.0.attn.c_attn') stay dense; to prune them, use "
        "sparsify.Pruner with a PrunerConfig, which includes Conv1D (e.g. PrunerConfig(module_type_configs={'Conv1D': "
        "ModulePrunerConfig(...)}), or module_types=[..., 'Conv1D'])"
    ]
    assert hasattr(prepared.lm_head, "weight_orig")  # Core ML Tools' four types are still pruned
    assert not hasattr(prepared.transformer.h[0].attn.c_attn, "weight_orig")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparsify"):
        Pruner(model, PrunerConfig()).prepare()  # the full config includes them: nothing to say
    assert not [m for m in caplog.messages if "Conv1D" in m]
