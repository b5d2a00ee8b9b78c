"""Hugging Face transformers models: GPT-2's transposed Conv1D, BERT's Linear layers, save_pretrained /
from_pretrained, and Core ML export — on small models built from configs (nothing is downloaded)."""

from __future__ import annotations

import copy
import logging
import os

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

import sparsify  # noqa: E402
from sparsify import MagnitudePrunerConfig, ModulePrunerConfig, Pruner, PrunerConfig  # noqa: E402
from sparsify.compat import hf  # noqa: E402
from sparsify.config.model import Conv1D as SparsifyConv1D  # noqa: E402

PATTERNS = {  # all at 50 %
    "unstructured": {},
    "2:4": {"n_m_ratio": (2, 4)},
    "1xchannel": {"pattern": "1xchannel"},
    "channelx1": {"pattern": "channelx1"},
    "4x1": {"pattern": "4x1"},
    "block4": {"block_size": 4},
    "global": {"scope": "global"},
    "global 1xchannel": {"pattern": "1xchannel", "scope": "global"},
}


def gpt2(**overrides) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=16, bos_token_id=0,
                        eos_token_id=0, **overrides)
    return GPT2LMHeadModel(config).eval()


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(config).eval()


def conv1d_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, Conv1D)]


def linear_twins(convs: list[Conv1D]) -> nn.Sequential:
    """``nn.Linear`` layers computing the same as ``convs`` (weight ``[out, in]`` = the Conv1D weight transposed)."""
    twins = []
    for conv in convs:
        linear = nn.Linear(conv.nx, conv.nf)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            linear.bias.copy_(conv.bias)
        twins.append(linear)
    return nn.Sequential(*twins)


# -- configs accept Conv1D without importing transformers ------------------------------------------


def test_conv1d_is_a_supported_type_recognised_by_class():
    layer = Conv1D(8, 4)
    assert isinstance(layer, SparsifyConv1D) and issubclass(Conv1D, SparsifyConv1D)
    assert not isinstance(nn.Conv1d(4, 8, 1), SparsifyConv1D)
    fake = type("Conv1D", (nn.Module,), {})  # same name, another package: not transformers' layout
    assert not issubclass(fake, SparsifyConv1D)
    for key in ("Conv1D", Conv1D, SparsifyConv1D):
        config = PrunerConfig(module_type_configs={key: ModulePrunerConfig(target_sparsity=0.25)})
        assert config.get_module_config("c", layer).target_sparsity == 0.25
        assert config.as_dict()["module_type_configs"] == {"Conv1D": ModulePrunerConfig(target_sparsity=0.25).as_dict()}
    assert PrunerConfig(module_types=["Conv1D"]).lookup("c", layer)[1] == "global_config"
    assert PrunerConfig(module_types=[Conv1D]).module_types == ("Conv1D",)
    assert PrunerConfig(module_types=["Linear"]).lookup("c", layer)[0] is None
    with pytest.raises(ValueError, match="string keys must be one of Linear, Conv1d, Conv2d, Conv3d"):
        MagnitudePrunerConfig(module_type_configs={"Conv1D": None})  # Core ML Tools' preset: its own four types


def test_dry_run_lists_gpt2_conv1d_layers_as_pruned():
    table = sparsify.dry_run(gpt2(), PrunerConfig(module_type_configs={"Conv1D": ModulePrunerConfig()}))
    assert table.selected() == conv1d_names(gpt2())
    assert len(table.selected()) == 8


# -- orientation: a Conv1D is pruned exactly as the equivalent nn.Linear ---------------------------


@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_conv1d_is_pruned_exactly_as_the_equivalent_linear(pattern):
    model = gpt2()
    convs = [model.transformer.h[0].attn.c_attn, model.transformer.h[0].mlp.c_proj]  # [32, 96] and [128, 32]
    convs = nn.Sequential(*copy.deepcopy(convs))
    twins = linear_twins(list(convs))
    config = PrunerConfig(global_config=ModulePrunerConfig(**PATTERNS[pattern]))
    conv_pruner, linear_pruner = Pruner(convs, config), Pruner(twins, config)
    conv_pruner.prepare(inplace=True)
    linear_pruner.prepare(inplace=True)
    conv_pruner.step()
    linear_pruner.step()
    for i in ("0", "1"):
        conv_mask, linear_mask = convs.get_submodule(i).weight_mask, twins.get_submodule(i).weight_mask
        assert conv_mask.shape == convs.get_submodule(i).weight_orig.shape  # stored in the [in, out] layout
        assert torch.equal(conv_mask.t(), linear_mask)
    x = torch.randn(3, 32)
    assert torch.allclose(convs[0](x), twins[0](x), atol=1e-6)
    zeros = sum(int((~convs.get_submodule(i).weight_mask).sum()) for i in ("0", "1"))
    assert zeros == (3072 + 4096) // 2


@pytest.mark.parametrize("criterion", [{"kind": "sparsegpt", "update_bias": True, "num_batches": 4},
                                       {"kind": "wanda", "num_batches": 4}], ids=["sparsegpt", "wanda"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "1xchannel", "4x1"])
def test_layer_wise_criteria_prune_conv1d_as_the_equivalent_linear(criterion, pattern):
    """Calibrated on the same inputs, a Conv1D gets the Linear's mask and (SparseGPT) updated weight and bias,
    transposed: its input features are the columns the Hessian and the activation norms measure."""
    model = gpt2()
    block = model.transformer.h[0]
    for conv in (block.attn.c_attn, block.mlp.c_proj):  # [32, 96] and [128, 32]
        convs = nn.Sequential(copy.deepcopy(conv))
        twins = linear_twins(list(convs))
        torch.manual_seed(1)
        data = [(torch.randn(8, 5, conv.nx), None) for _ in range(4)]
        config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5, criterion=criterion,
                                                               **PATTERNS[pattern]))
        for net in (convs, twins):
            pruner = Pruner(net, config, sparsify.GradSampler(data, progress=False))
            pruner.prepare(inplace=True)
            pruner.step()
        conv_layer, linear_layer = convs[0], twins[0]
        assert torch.equal(conv_layer.weight_mask.t(), linear_layer.weight_mask)
        assert torch.equal(conv_layer.weight_orig.t(), linear_layer.weight_orig)
        assert torch.equal(conv_layer.bias, linear_layer.bias)
        assert int((~conv_layer.weight_mask).sum()) == conv.weight.numel() // 2
        if criterion["kind"] == "sparsegpt" and pattern != "1xchannel":  # OBS moved the kept weights and the bias
            assert not torch.equal(conv_layer.weight_orig, conv.weight) and not torch.equal(conv_layer.bias, conv.bias)


def test_layer_wise_criteria_prune_a_whole_gpt2_at_2_4_closer_to_dense_than_magnitude():
    model = gpt2()
    torch.manual_seed(1)
    data = [(torch.randint(0, 100, (4, 12)), None) for _ in range(8)]
    held_out = torch.randint(0, 100, (16, 12))
    with torch.no_grad():
        dense = model(held_out).logits
    errors = {}
    for criterion in ("magnitude", "wanda", "sparsegpt"):
        spec = criterion if criterion == "magnitude" else {"kind": criterion, "num_batches": 8}
        pruned = sparsify.prune(model, 0.5, module_types=["Conv1D"], criterion=spec, n_m_ratio=(2, 4),
                                sampler=sparsify.GradSampler(data, progress=False))
        for name in conv1d_names(pruned):
            weight = pruned.get_submodule(name).weight  # [in, out]: each output's inputs in runs of 4
            assert (weight.t() == 0).reshape(weight.shape[1], -1, 4).sum(-1).eq(2).all(), (criterion, name)
        with torch.no_grad():
            errors[criterion] = float((pruned(held_out).logits - dense).pow(2).mean())
    # measured: magnitude 3.66e-4, wanda 3.60e-4 (random weights have no outlier features), sparsegpt 2.03e-4
    assert errors["sparsegpt"] < 0.7 * errors["magnitude"] and errors["wanda"] < errors["magnitude"], errors


@pytest.mark.parametrize("pattern", ["unstructured", "1xchannel", "global"])
def test_a_gradient_criterion_prunes_conv1d_as_the_equivalent_linear_while_training(pattern):
    """snip_momentum is monotone (masks only grow): its kept-mask is read in the [out, in] view too."""
    model = gpt2()
    mlp = model.transformer.h[0].mlp
    convs = nn.Sequential(copy.deepcopy(mlp.c_fc), copy.deepcopy(mlp.c_proj))  # [32, 128] and [128, 32]
    twins = linear_twins(list(convs))
    config = PrunerConfig(global_config=ModulePrunerConfig(
        target_sparsity=0.5, criterion="snip_momentum", scheduler={"update_steps": [1, 2, 3]}, **PATTERNS[pattern]))
    pruners = [Pruner(net, config) for net in (convs, twins)]
    for pruner in pruners:
        pruner.prepare(inplace=True)
    x = torch.randn(4, 32)
    for _ in range(3):
        for net, pruner in zip((convs, twins), pruners):
            net.zero_grad()
            torch.relu(net(x)).pow(2).sum().backward()
            pruner.step()
    for i in ("0", "1"):
        assert torch.equal(convs.get_submodule(i).weight_mask.t(), twins.get_submodule(i).weight_mask)
    assert sum(int((~convs.get_submodule(i).weight_mask).sum()) for i in ("0", "1")) == 4096


def test_gpt2_conv1d_sparsity_is_exact_per_layer_and_along_output_features():
    results = {}
    for name, fields in (("unstructured", PATTERNS["unstructured"]), ("2:4", PATTERNS["2:4"]),
                         ("1xchannel", PATTERNS["1xchannel"])):
        pruned = sparsify.prune(gpt2(), 0.5, module_types=["Conv1D"], **fields)
        results[name] = {n: pruned.get_submodule(n).weight.detach() for n in conv1d_names(pruned)}
    for name, weights in results.items():
        for layer, weight in weights.items():
            assert int((weight == 0).sum()) == weight.numel() // 2, (name, layer)
    for weight in results["2:4"].values():  # [in, out]: runs of 4 consecutive INPUT features per output
        runs = (weight.t() == 0).reshape(weight.shape[1], -1, 4).sum(-1)
        assert bool((runs == 2).all())
    for weight in results["1xchannel"].values():  # whole output features = columns of the [in, out] weight
        dead = (weight == 0).all(0)
        assert int(dead.sum()) == weight.shape[1] // 2
        assert not bool((weight[:, ~dead] == 0).any())


def test_report_counts_conv1d_output_channels():
    model = gpt2()
    pruner = Pruner(model, PrunerConfig(module_type_configs={"Conv1D": ModulePrunerConfig(**PATTERNS["1xchannel"])}))
    pruner.prepare(inplace=True)
    pruner.step()
    report = pruner.report()
    for name in conv1d_names(model):
        assert report[name]["structured_weight_sparsity"] == 0.5
        assert report[name]["unstructured_weight_sparsity"] == 0.5


def test_model_report_reads_conv1d_weights_as_out_by_in():
    pruned = sparsify.prune(gpt2(), 0.5, pattern="1xchannel", module_types=["Conv1D"])
    report = sparsify.model_report(pruned)
    for name in conv1d_names(pruned):
        row = report[name]
        assert row.shape == tuple(pruned.get_submodule(name).weight.shape[::-1])  # [out, in]
        assert row.structured_sparsity == 0.5  # half of the output features, whole
        assert row.pattern != "channelx1"


def test_a_tile_that_does_not_divide_conv1d_output_features_skips_it_naming_the_layout(caplog):
    model = nn.Sequential(Conv1D(6, 8))  # 6 output features, 8 input: weight stored [8, 6]
    caplog.set_level(logging.WARNING, logger="sparsify")
    pruner = Pruner(model, PrunerConfig(global_config=ModulePrunerConfig(pattern="4x1")))
    pruner.prepare(inplace=True)
    assert not pruner.targets
    assert "module '0' (Conv1D) (weight stored [in, out], seen here as [out, in]): pattern '4x1' needs the " \
           "output channels (6, weight shape (6, 8)) to be a multiple of 4" in caplog.text


def test_bert_linear_layers_prune_exactly():
    for fields in (PATTERNS["unstructured"], PATTERNS["2:4"], PATTERNS["1xchannel"]):
        pruned = sparsify.prune(bert(), 0.5, keep_classifier_dense=True, **fields)
        linears = {n: m.weight for n, m in pruned.named_modules() if isinstance(m, nn.Linear)}
        assert len(linears) == 14
        assert not bool((linears.pop("classifier") == 0).any())
        for name, weight in linears.items():
            assert int((weight == 0).sum()) == weight.numel() // 2, (fields, name)
            if "pattern" in fields:
                assert int((weight == 0).all(1).sum()) == weight.shape[0] // 2


# -- save_pretrained / from_pretrained ------------------------------------------------------------


def _saved_keys(folder: str) -> set[str]:
    with safe_open(os.path.join(folder, "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_a_prepared_model_saved_with_save_pretrained_reloads_its_masked_weights(tmp_path):
    original = gpt2()
    pruner = Pruner(original, PrunerConfig(module_type_configs={"Conv1D": ModulePrunerConfig(n_m_ratio=(2, 4))}))
    model = pruner.prepare()
    pruner.step()
    ids = torch.randint(0, 100, (2, 8))
    expected = model(ids).logits.detach()
    model.save_pretrained(tmp_path / "prepared")
    keys = _saved_keys(str(tmp_path / "prepared"))
    assert not any(k.endswith(("_orig", "_mask", "_amount")) for k in keys)
    reloaded, info = GPT2LMHeadModel.from_pretrained(tmp_path / "prepared", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for name in conv1d_names(reloaded):
        assert torch.equal(reloaded.get_submodule(name).weight, model.get_submodule(name).weight)
        assert int((reloaded.get_submodule(name).weight == 0).sum()) == reloaded.get_submodule(name).weight.numel() // 2
    assert torch.equal(reloaded.eval()(ids).logits, expected)
    assert "save_pretrained" not in original.__dict__  # the model passed to prepare() is untouched
    assert hasattr(model.transformer.h[0].attn.c_attn, "weight_orig")  # saving left the masks in place


def test_finalized_and_helper_saves_reload_without_unexpected_keys(tmp_path):
    pruner = Pruner(gpt2(), PrunerConfig(module_type_configs={"Conv1D": ModulePrunerConfig()}))
    pruner.prepare(inplace=True)
    pruner.step()
    hf.save_pretrained(pruner.model, tmp_path / "helper")  # the same while prepared ...
    final = pruner.finalize()
    final.save_pretrained(tmp_path / "final")  # ... and once finalized (Core ML metadata left out)
    assert _saved_keys(str(tmp_path / "helper")) == _saved_keys(str(tmp_path / "final"))
    assert not any("_COREML_" in k for k in _saved_keys(str(tmp_path / "final")))
    for folder in ("helper", "final"):
        reloaded, info = GPT2LMHeadModel.from_pretrained(tmp_path / folder, output_loading_info=True)
        assert not info["unexpected_keys"] and not info["missing_keys"]
        for name in conv1d_names(final):
            assert torch.equal(reloaded.get_submodule(name).weight, final.get_submodule(name).weight)
    with pytest.raises(TypeError, match="Sequential has no save_pretrained method"):
        hf.save_pretrained(nn.Sequential(nn.Linear(2, 2)), tmp_path / "x")


def test_abandon_removes_the_save_pretrained_wrapper():
    model = gpt2()
    pruner = Pruner(model, PrunerConfig(module_type_configs={"Conv1D": ModulePrunerConfig()}))
    pruner.prepare(inplace=True)
    assert isinstance(model.__dict__["save_pretrained"], sparsify.pruning.saving.MaskedSavePretrained)
    pruner.abandon()
    assert "save_pretrained" not in model.__dict__


# -- Core ML export -------------------------------------------------------------------------------


class Logits(nn.Module):
    """Core ML converts tensors: return the logits of a transformers model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


@pytest.mark.slow
def test_pruned_gpt2_and_bert_export_to_core_ml_with_sparse_weights(tmp_path):
    pytest.importorskip("coremltools")
    ids = torch.randint(0, 100, (1, 8))
    gpt = sparsify.prune(gpt2(), 0.5, module_types=["Conv1D"], n_m_ratio=(2, 4))
    # TorchScript tracing converts GPT-2 (torch.export fails in coremltools: "Unsupported fx node alias"),
    # torch.export converts BERT on the newest releases (tracing fails in coremltools 9's 'int' op; coremltools 8.3
    # with torch 2.7 traces it): the default tries one, then the other
    report = sparsify.export_coreml(Logits(gpt), ids, tmp_path / "gpt2.mlpackage")
    assert report.trace == "jit"
    sparse = {r.name for r in report.rows if r.storage == "sparse"}
    assert sparse == {f"model.{n}.weight" for n in conv1d_names(gpt)}
    assert all(r.sparsity == 0.5 for r in report.rows if r.name in sparse)
    assert not report.warnings

    pruned_bert = sparsify.prune(bert(), 0.5, keep_classifier_dense=True)
    report = sparsify.export_coreml(Logits(pruned_bert), ids, tmp_path / "bert.mlpackage")
    assert (report.trace, list(report.trace_failures)) in (("export", ["jit"]), ("jit", []))
    sparse = {r.name for r in report.rows if r.storage == "sparse"}
    linears = [n for n, m in pruned_bert.named_modules() if isinstance(m, nn.Linear) and n != "classifier"]
    assert sparse == {f"model.{n}.weight" for n in linears}
    assert report.ratio < 0.75

    gpt.save_pretrained(tmp_path / "gpt2")  # reloaded: no metadata, so the zeros are found by value
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2").eval()
    again = sparsify.export_coreml(Logits(reloaded), ids, tmp_path / "again.mlpackage",
                                   sparse_weights="all")
    assert {r.name for r in again.rows if r.storage == "sparse"} >= {f"model.{n}.weight" for n in conv1d_names(gpt)}
