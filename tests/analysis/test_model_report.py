"""model_report: numbers against hand-computed models, in every life of a model, in every output format."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from sparsify.analysis.model_report import infer_pattern, model_report
from sparsify.patterns import n_m_mask


def _linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight), bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def _pruned(model: nn.Module, sparsity: float) -> tuple[MagnitudePruner, nn.Module]:
    config = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(target_sparsity=sparsity))
    pruner = MagnitudePruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    return pruner, prepared


def test_numbers_by_hand() -> None:
    # 4x4, 6 zeros; row 1 is all zero; row 2 sums to zero but is not zero (Core ML Tools would count it)
    model = nn.Sequential(_linear([[1, 2, 0, 4], [0, 0, 0, 0], [1, -1, 0, 0], [3, 3, 3, 3]]))
    row = model_report(model)["0"]
    assert (row.params, row.nonzeros, row.achieved) == (16, 9, 7 / 16)
    assert row.structured_sparsity == 0.25
    # 2x1 blocks (rows 2i, 2i+1 at one column): only (w[0,2], w[1,2]) = (0, 0) is zero, 1 of 8
    assert row.block2_sparsity == 0.125
    assert row.requested is None and row.pattern == "unstructured" and row.pattern_source == "inferred"
    assert (row.dense_fp16, row.dense_fp32) == (32, 64)
    # nothing is pruned (no mask, no metadata), so an export stores it dense
    assert not row.sparse and row.coreml_fp16 == 32 and row.smaller == 1.0


def test_bytes_by_hand_for_a_pruned_layer() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    pruner, prepared = _pruned(model, 0.5)
    report = model_report(prepared)
    assert report.rule == "sparsify"
    row = report["0"]
    assert (row.params, row.nonzeros, row.requested) == (4096, 2048, 0.5)
    assert row.sparse and row.metadata
    assert row.coreml_fp16 == 2048 * 2 + 4096 // 8
    assert row.coreml_fp32 == 2048 * 4 + 4096 // 8
    assert row.smaller == pytest.approx(8192 / 4608)
    assert report.other_params == 64 + 8  # the biases
    assert report.params == 4096 + 512 and report.nonzeros == 2048 + 256
    assert report.sparsity == pytest.approx(0.5) and report.requested == pytest.approx(0.5)
    # the same numbers after finalize, read from the Core ML metadata instead of the masks
    after = model_report(pruner.finalize())
    assert [(r.nonzeros, r.coreml_fp16, r.sparse) for r in after.layers] == [
        (r.nonzeros, r.coreml_fp16, r.sparse) for r in report.layers]
    assert after["0"].requested == 0.5  # the finalized modules keep what was asked...
    assert model_report(pruner.finalize(), requested=0.25)["0"].requested == 0.25  # ...the argument wins
    assert model_report(pruner.finalize().state_dict())["0"].requested is None  # a state dict cannot say


def test_pattern_read_from_the_hook() -> None:
    model = nn.Sequential(nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 16), nn.Linear(16, 16))
    config = (MagnitudePrunerConfig()
              .set_module_name("0", ModuleMagnitudePrunerConfig(target_sparsity=0.5, granularity="per_kernel"))
              .set_module_name("2", ModuleMagnitudePrunerConfig(target_sparsity=0.5, block_size=4))
              .set_module_name("3", ModuleMagnitudePrunerConfig(n_m_ratio=(2, 4))))
    pruner = MagnitudePruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    report = model_report(prepared)
    assert [(r.pattern, r.pattern_source) for r in report.layers] == [
        ("per_kernel", "hook"), ("block 4", "hook"), ("2:4", "hook")]
    assert [r.requested for r in report.layers] == [0.5, 0.5, 0.5]
    # the zeros alone tell the same story once finalized
    assert [r.pattern for r in model_report(pruner.finalize()).layers] == ["per_kernel", "block 4", "2:4"]
    # and the config tells it when given
    finalized = model_report(pruner.finalize(), requested=config)
    assert [(r.pattern, r.pattern_source, r.requested) for r in finalized.layers] == [
        ("per_kernel", "config", 0.5), ("block 4", "config", 0.5), ("2:4", "config", 0.5)]


def test_infer_pattern() -> None:
    w = torch.randn(8, 8)
    assert infer_pattern(w) == "dense"
    rows = w.clone()
    rows[[1, 5]] = 0
    assert infer_pattern(rows) == "per_channel"
    blocks = w.clone()
    blocks[0:4, [0, 3]] = 0
    blocks[4:8, [5]] = 0
    assert infer_pattern(blocks) == "block 4"
    pairs = w.clone()
    pairs[0:2, 1] = 0
    pairs[6:8, 2] = 0
    assert infer_pattern(pairs) == "block 2"
    assert infer_pattern(w * n_m_mask(w.abs(), (2, 4))) == "2:4"
    assert infer_pattern(w * n_m_mask(w.abs(), (1, 2), dim=0)) == "1:2 dim 0"
    conv = torch.randn(8, 8, 3, 3)
    assert infer_pattern(conv * n_m_mask(conv.abs(), (3, 4))) == "3:4"
    kernels = torch.randn(4, 3, 3, 3)
    kernels[0, 1] = 0
    kernels[2, 2] = 0
    assert infer_pattern(kernels) == "per_kernel"
    scattered = w.clone()
    scattered[0, 0] = scattered[3, 5] = 0
    assert infer_pattern(scattered) == "unstructured"


def _tiled(weight: torch.Tensor, out_size: int, in_size: int) -> torch.Tensor:
    """Zero half of the (out_size x in_size) tiles of ``weight`` at each kernel position, in its [Co, K, Ci] view."""
    view = weight.movedim(1, -1).reshape(weight.shape[0], -1, weight.shape[1]).clone()
    co, k, ci = view.shape
    keep = torch.rand(co // out_size, k, ci // in_size) > 0.5
    keep[0, 0, 0], keep[-1, -1, -1] = True, False  # both kinds present
    mask = keep.repeat_interleave(out_size, 0).repeat_interleave(in_size, 2)
    tiled = (view * mask).reshape(co, *weight.shape[2:], ci).movedim(-1, 1)
    return tiled


def test_infer_pattern_tiles() -> None:
    """NxM tiles (N output x M input channels at each kernel position) are named, never 'unstructured'."""
    torch.manual_seed(0)
    conv = torch.randn(16, 8, 3, 3)
    assert infer_pattern(_tiled(conv, 4, 1)) == "block 4"  # 4x1 = Core ML's block_size=4
    assert infer_pattern(_tiled(torch.randn(4, 8, 3, 3), 4, 1)) == "block 4"  # a single tile of output channels
    assert infer_pattern(_tiled(conv, 1, 4)) == "1x4"
    assert infer_pattern(_tiled(conv, 2, 2)) == "2x2"
    assert infer_pattern(_tiled(conv, 2, 8)) == "2x8"
    assert infer_pattern(_tiled(torch.randn(32, 16), 1, 2)) == "1x2"
    assert infer_pattern(_tiled(torch.randn(32, 16, 1, 1), 8, 1)) == "block 8"
    columns = torch.randn(16, 8, 3, 3)
    columns[:, [1, 6]] = 0  # whole input channels, every kernel position
    assert infer_pattern(columns) == "channelx1"
    pointwise = torch.randn(32, 32, 1, 1)  # a 1x1 kernel is one weight: not "per_kernel"
    assert infer_pattern(pointwise * n_m_mask(pointwise.abs(), (2, 4))) == "2:4"


@pytest.mark.parametrize(("tiles", "name"), [("4x1", "block 4"), ("1x4", "1x4"), ("2x2", "2x2")])
def test_tile_pruned_models_name_their_tiles(tiles: str, name: str) -> None:
    """A conv and a linear pruned with the engine's tile pattern: named by their tiles, prepared (from the mask
    hook's tile field), finalized (inferred from the zeros) or with the config (config)."""
    import sparsify

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16 * 6 * 6, 32))
    config = sparsify.PrunerConfig(global_config=sparsify.ModulePrunerConfig(
        target_sparsity=0.5, pattern=tiles, scheduler={"kind": "constant", "begin_step": 0}))
    pruner = sparsify.Pruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    assert [(r.pattern, r.pattern_source) for r in model_report(prepared).layers] == [(name, "hook")] * 2
    finalized = pruner.finalize()
    assert [r.pattern for r in model_report(finalized).layers] == [name, name]
    assert [(r.pattern, r.pattern_source) for r in model_report(finalized, requested=config).layers] == [
        (name, "config")] * 2


def test_pattern_from_the_engine_pattern_field() -> None:
    """A hook or config with the engine's ``pattern`` gets the name inference gives its zeros."""
    from sparsify.analysis.pattern_names import describe_pattern

    names = {p: describe_pattern(pattern=p) for p in ("4x1", "1x4", "2x2", "1xchannel", "channelx1", "1x1", "2:4")}
    assert names == {"4x1": "block 4", "1x4": "1x4", "2x2": "2x2", "1xchannel": "per_channel",
                     "channelx1": "channelx1", "1x1": "unstructured", "2:4": "2:4"}
    model = nn.Sequential(nn.Linear(8, 16))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    next(iter(model[0]._forward_pre_hooks.values())).tiles = "1x4"  # as a tile-pattern hook would carry it
    row = model_report(model)["0"]
    assert (row.pattern, row.pattern_source) == ("1x4", "hook")


def test_joint_compression_estimate() -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8))
    _, prepared = _pruned(model, 0.9)
    report = model_report(prepared, palettize_bits=4)
    assert report.target == "iOS18" and report.compression == "palettize 4 bits"
    row = report["0"]
    kept = row.nonzeros
    assert row.storage == "sparse+palettized" and row.sparse
    assert row.coreml_fp16 == math.ceil(kept * 4 / 8) + 16 * 2 + 4096 // 8
    assert row.coreml_fp32 == math.ceil(kept * 4 / 8) + 16 * 4 + 4096 // 8
    assert "sparse+palettized" in report.to_text() and "palettize 4 bits" in report.to_text()
    assert report.as_dict()["compression"] == "palettize 4 bits"
    int8 = model_report(prepared, quantize="int8")["0"]
    assert (int8.storage, int8.coreml_fp16) == ("sparse+quantized", kept + 64 * 2 + 4096 // 8)
    plain = model_report(prepared, target="iOS18")
    assert plain.compression is None and plain["0"].storage == "sparse"
    assert model_report(prepared, palettize_bits=4).file_fp16 < model_report(prepared, quantize="int8").file_fp16 \
        < plain.file_fp16
    with pytest.raises(ValueError, match="target='iOS17' is invalid with palettize_bits / quantize"):
        model_report(prepared, palettize_bits=4, target="iOS17")
    with pytest.raises(ValueError, match="palettize_bits=7 is invalid"):
        model_report(prepared, palettize_bits=7)
    with pytest.raises(ValueError, match="rule='default_pruning' is invalid with palettize_bits / quantize"):
        model_report(prepared, quantize="int8", rule="default_pruning")


def test_torch_prune_and_state_dicts() -> None:
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    prune.l1_unstructured(model[0], "weight", amount=0.3)
    prune.random_unstructured(model[2], "weight", amount=40)  # an int amount counts weights
    report = model_report(model)
    assert report["0"].requested == pytest.approx(0.3) and report["0"].nonzeros == 140
    assert report["2"].requested == pytest.approx(0.4) and report["2"].nonzeros == 60
    assert [r.kind for r in report.layers] == ["Linear", "Linear"]
    # a state dict gives the same numbers (no module types, no hooks)
    from_state = model_report(model.state_dict())
    assert [(r.name, r.nonzeros, r.coreml_fp16) for r in from_state.layers] == [
        (r.name, r.nonzeros, r.coreml_fp16) for r in report.layers]
    assert from_state.file_fp16 == report.file_fp16
    assert [r.kind for r in from_state.layers] == ["", ""]


def test_tied_weights_counted_once() -> None:
    embed = nn.Embedding(50, 16)
    head = nn.Linear(16, 50, bias=False)
    head.weight = embed.weight
    model = nn.Sequential(embed, head)
    report = model_report(model)
    assert [r.name for r in report.layers] == ["0"]
    assert report.params == 800


def test_buffers_batch_norms_and_other_tensors() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.Flatten(), nn.LazyLinear(4))
    model(torch.zeros(1, 3, 5, 5))
    model.register_buffer("causal", torch.ones(8, 8))
    report = model_report(model)
    assert [r.name for r in report.layers] == ["0", "3"]  # rank-2 buffers are not weights to report
    # the export folds the batch norm into the conv, which gains a bias of 16: + 4 + the buffer 64
    assert report.other_params == 16 + 4 + 64
    # plain coremltools.convert keeps a batch norm unfused after a conv with pruning metadata
    _, prepared = _pruned(model, 0.5)
    assert model_report(prepared, rule="metadata").other_params == 4 * 16 + 4 + 64
    assert model_report(prepared).other_params == 16 + 4 + 64
    # a state dict cannot tell buffers from parameters: the rank-2 buffer is reported as a weight
    from_state = model_report(prepared.state_dict(), rule="metadata")
    assert [r.name for r in from_state.layers] == ["causal", "0", "3"]
    assert from_state.other_params == 4 * 16 + 4


def test_requested_forms_and_errors() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    assert [r.requested for r in model_report(model, requested={"1": 0.3}).layers] == [None, 0.3]
    with pytest.raises(ValueError, match=r"unknown layer\(s\) \['2'\]"):
        model_report(model, requested={"2": 0.5})
    with pytest.raises(ValueError, match="requested sparsity 1.5"):
        model_report(model, requested=1.5)
    with pytest.raises(TypeError, match="requested='half'"):
        model_report(model, requested="half")
    with pytest.raises(ValueError, match="rule='fast'"):
        model_report(model, rule="fast")
    with pytest.raises(ValueError, match="target='iOS15'"):
        model_report(model, target="iOS15")
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        model_report([1, 2])
    config = MagnitudePrunerConfig(module_name_configs={"0": ModuleMagnitudePrunerConfig(target_sparsity=0.7)})
    assert [r.requested for r in model_report(model, requested=config).layers] == [0.7, 0.0]


def test_sparse_storage_larger_than_dense_is_flagged() -> None:
    model = nn.Sequential(nn.Linear(64, 64))
    _, prepared = _pruned(model, 0.04)
    # plain coremltools.convert stores every pruned weight sparse, even when that is larger
    report = model_report(prepared, rule="metadata")
    assert report["0"].sparse and report["0"].coreml_fp16 > report["0"].dense_fp16
    assert "sparse (!)" in report.to_text()
    # sparsify's export keeps it dense: 2 % sparsity does not pay for the mask in fp16, but does in fp32
    report = model_report(prepared)
    assert not report["0"].sparse and report["0"].coreml_fp16 == report["0"].dense_fp16
    assert report["0"].sparse_fp32 and report["0"].coreml_fp32 < report["0"].dense_fp32
    assert "sparse (!)" not in report.to_text()


def test_output_formats() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    _, prepared = _pruned(model, 0.8)
    report = model_report(prepared)

    text = report.to_text()
    assert str(report) == text
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["layer", "type", "pattern"]
    assert any(line.startswith("total") for line in lines)
    assert "weight.bin estimate" in text and "80.0%" in text
    # 14 columns would be 149 wide: the counts and the sizes are two tables of at most 100 columns
    assert max(map(len, lines)) <= 100
    headers = [line.split("  ") for line in lines if line.startswith("layer")]
    assert [[c.strip() for c in h if c.strip()] for h in headers] == [
        ["layer", "type", "pattern", "params", "nonzeros", "requested", "achieved", "channels 0"],
        ["layer", "stored", "fp16 dense", "fp16 Core ML", "fp32 dense", "fp32 Core ML", "× smaller"],
    ]
    assert [line.split()[0] for line in lines if line[:1].isdigit()] == ["0", "2", "0", "2"]
    wide = report.to_text(width=200).splitlines()
    assert sum(line.startswith("layer") for line in wide) == 1 and max(map(len, wide)) > 100

    markdown = report.to_markdown().splitlines()
    assert markdown[0].startswith("| layer |") and markdown[1].startswith("| --- |")
    assert markdown[-4].startswith("| **total** |")

    rows = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert [r["name"] for r in rows] == ["0", "2", "total"]
    assert int(rows[1]["params"]) == 2880 and rows[1]["shape"] == "10x288"
    assert int(rows[2]["coreml_fp16"]) == report.layers[0].coreml_fp16 + report.layers[1].coreml_fp16

    data = json.loads(report.to_json())
    assert data["rule"] == "sparsify" and data["target"] == "iOS16"
    assert data["layers"][1]["nonzeros"] == report["2"].nonzeros
    assert data["weight_file"]["fp16"] == report.file_fp16
    assert data["total"]["achieved"] == pytest.approx(report.sparsity)
    with pytest.raises(KeyError, match="no layer 'nope'"):
        report["nope"]


def test_a_training_checkpoint_is_read_through_its_state_dict_or_refused() -> None:
    """``{"model": state_dict, "epoch": 3}`` is reported like its state dict (never as "0 layers")."""
    import sparsify

    torch.manual_seed(0)
    pruned = sparsify.prune(nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)), 0.5)
    direct = model_report(pruned.state_dict())
    for key in ("model", "state_dict", "model_state_dict"):
        report = model_report({key: pruned.state_dict(), "epoch": 3, "optimizer": {"lr": 0.1}})
        assert [(r.name, r.nonzeros, r.achieved) for r in report.layers] == \
            [(r.name, r.nonzeros, r.achieved) for r in direct.layers] == [("0", 128, 0.5), ("2", 32, 0.5)]
    for bad in ({"epoch": 3, "lr": 0.1}, {}):
        with pytest.raises(TypeError, match=r"model is a dict with keys .* but no state dict: expected tensors as "
                                            r"values, or a state dict under 'state_dict', 'model_state_dict', 'model'"):
            model_report(bad)


def test_the_requested_level_survives_finalize() -> None:
    """After ``sparsify.prune`` (and any finalize) the report shows the level asked for, not "-"."""
    import sparsify

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    report = model_report(sparsify.prune(model, 0.5))
    assert [(r.name, r.requested, r.achieved) for r in report.layers] == [("0", 0.5, 0.5), ("2", 0.5, 0.5)]
    assert "50.0%     50.0%" in report.to_text()
    finalized = _pruned(nn.Sequential(nn.Linear(8, 8)), 0.75)[0].finalize()
    assert [r.requested for r in model_report(finalized).layers] == [0.75]
    assert [r.requested for r in model_report(finalized.state_dict()).layers] == [None]  # a state dict cannot say


@pytest.mark.parametrize(("choices", "name"), [
    ({}, "unstructured"),
    ({"block_size": 4}, "block 4"),
    ({"granularity": "per_channel"}, "per_channel"),
    ({"n_m_ratio": (2, 4)}, "2:4"),
    ({"pattern": "4x1"}, "block 4"),
])
def test_a_pattern_has_one_name_in_every_report(choices: dict, name: str) -> None:
    """dry_run's settings, the prepared model's report (read from the hooks) and the finalized model's report
    (inferred from the zeros) name the pattern alike; ``per_scalar`` is only the config value."""
    import sparsify
    from sparsify import ModulePrunerConfig, Pruner, PrunerConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(16, 8))
    config = PrunerConfig(global_config=ModulePrunerConfig(target_sparsity=0.5, **choices))
    planned = {row.name: row.settings.get("pattern") for row in sparsify.dry_run(model, config)}
    pruner = Pruner(model, config)
    prepared = pruner.prepare()
    pruner.prune_now()
    from_hooks = model_report(prepared)["0"].pattern
    inferred = model_report(pruner.finalize())["0"].pattern
    expected_plan = "4x1" if "pattern" in choices else name  # a tile is shown as written in the config
    assert (planned["0"], from_hooks, inferred) == (expected_plan, name, name)
