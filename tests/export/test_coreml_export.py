"""export_coreml: real conversions, checked against torch and against the saved files.

Conversions cost CPU, so one small CNN carries every pruning mode (one layer each) and is converted
once per variant; torchvision's ResNet-18 and MobileNetV2 are converted once each, with modes mixed
across layers.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch
from torch import nn

ct = pytest.importorskip("coremltools")

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig  # noqa: E402
from sparsify.analysis.model_report import model_report  # noqa: E402
from sparsify.export.coreml import export_coreml  # noqa: E402
from sparsify.export.errors import ConversionError  # noqa: E402
from sparsify.export.mlpackage import inspect_mlpackage, read_weights  # noqa: E402
from sparsify.masking import is_masked  # noqa: E402

Cfg = ModuleMagnitudePrunerConfig


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3)  # per-channel, followed by a batch norm that Core ML fuses into it
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3)  # unstructured
        self.conv3 = nn.Conv2d(32, 32, 1)  # n:m 2:4
        self.conv4 = nn.Conv2d(32, 32, 1)  # pruned 3 %: too little for sparse storage to pay off
        self.fc1 = nn.Linear(32, 64)  # blocks of 4 output channels, tiny weights (|w| < fp16 eps)
        self.fc2 = nn.Linear(64, 10)  # not pruned, tiny weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv4(torch.relu(self.conv3(torch.relu(self.conv2(x))))))
        return self.fc2(torch.relu(self.fc1(x.mean((2, 3)))))


MODES = {
    "conv1": Cfg(target_sparsity=0.5, granularity="per_channel"),
    "conv2": Cfg(target_sparsity=0.75),
    "conv3": Cfg(n_m_ratio=(2, 4)),
    "conv4": Cfg(target_sparsity=0.03),
    "fc1": Cfg(target_sparsity=0.5, block_size=4),
}
SPARSE = ("conv1.weight", "conv2.weight", "conv3.weight", "fc1.weight")
EXAMPLE = torch.randn(1, 3, 16, 16)


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        model.fc1.weight.mul_(1e-3)
        model.fc2.weight.mul_(1e-3)
        model.bn1.weight.uniform_(0.5, 2.0)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.running_mean.normal_()
    return model


def _pruned(model: nn.Module, modes: dict) -> tuple[nn.Module, nn.Module]:
    """(prepared, finalized) copies."""
    pruner = MagnitudePruner(model, MagnitudePrunerConfig(module_name_configs=modes))
    prepared = pruner.prepare()
    pruner.step()
    return prepared, pruner.finalize()


@pytest.fixture(scope="module")
def cnn() -> dict:
    prepared, finalized = _pruned(_small_cnn(), MODES)
    return {"prepared": prepared, "finalized": finalized}


@pytest.fixture(scope="module")
def exported(cnn: dict, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    path = tmp_path_factory.mktemp("export") / "cnn.mlpackage"
    before = copy.deepcopy(cnn["finalized"].state_dict())
    report = export_coreml(cnn["finalized"], EXAMPLE, path)
    return report, path, before


def _bytes_formula(row, element: int = 2) -> int:
    return row.nonzeros * element + math.ceil(row.numel / 8)


def test_pruned_weights_are_sparse_with_torch_nonzeros(cnn: dict, exported: tuple) -> None:
    report, _, _ = exported
    model = cnn["finalized"]
    for name in SPARSE:
        row = report.row(name)
        weight = model.get_parameter(name)
        assert row.pruned and row.storage == "sparse", row
        assert row.shape == tuple(weight.shape)
        assert row.nonzeros == row.torch_nonzeros == int(torch.count_nonzero(weight))
        assert abs(row.bytes - _bytes_formula(row)) <= 0.05 * _bytes_formula(row)
    assert report.op_counts["constexpr_sparse_to_dense"] == len(SPARSE)


def test_each_pattern_survives_exactly(cnn: dict, exported: tuple) -> None:
    """The decoded Core ML weights have zeros exactly where torch has them (batch-norm fusion only
    rescales conv1's channels), and the unfused ones are the torch values in fp16, tiny ones included."""
    report, path, _ = exported
    model = cnn["finalized"]
    values = read_weights(path)
    for name in SPARSE:
        torch_weight = model.get_parameter(name).detach().numpy()
        coreml = values[report.row(name).coreml_name]
        np.testing.assert_array_equal(coreml == 0, torch_weight == 0)
        if name != "conv1.weight":
            np.testing.assert_array_equal(coreml, torch_weight.astype(np.float16))
    assert (values[report.row("conv1.weight").coreml_name].reshape(16, -1) == 0).all(1).sum() == 8  # 8 channels


def test_unpruned_and_tiny_weights_are_not_zeroed(cnn: dict, exported: tuple) -> None:
    report, path, _ = exported
    fc2 = report.row("fc2.weight")
    assert not fc2.pruned and fc2.storage == "dense"
    assert fc2.nonzeros == fc2.numel == fc2.torch_nonzeros
    weight = cnn["finalized"].fc2.weight.detach().numpy()
    assert np.abs(weight).max() < 2**-10  # all below the converter's metadata threshold ...
    np.testing.assert_array_equal(read_weights(path)[fc2.coreml_name], weight.astype(np.float16))  # ... all kept
    fc1 = report.row("fc1.weight")  # pruned in blocks, its kept weights are just as tiny
    assert fc1.nonzeros == fc1.torch_nonzeros == fc1.numel // 2


def test_layer_too_little_pruned_stays_dense_with_warning(exported: tuple) -> None:
    report, _, _ = exported
    conv4 = report.row("conv4.weight")
    assert conv4.pruned and conv4.storage == "dense"
    assert 0 < 1 - conv4.nonzeros / conv4.numel < 1 / 16
    assert any(w.startswith("conv4.weight (pruned") and "stays dense" in w for w in report.warnings)
    assert len(report.warnings) == 1


def test_sizes_and_batch_norm_fusion(exported: tuple, tmp_path: object) -> None:
    report, path, _ = exported
    weight_bin = os.path.join(path, "Data", "com.apple.CoreML", "weights", "weight.bin")
    assert report.total_bytes == os.path.getsize(weight_bin)
    # dense_bytes is the dense conversion of the same model: equal to plain coremltools on the unpruned one
    traced = torch.jit.trace(_small_cnn(), EXAMPLE)
    plain = ct.convert(traced, inputs=[ct.TensorType(shape=EXAMPLE.shape)], convert_to="mlprogram",
                       minimum_deployment_target=ct.target.iOS16)
    plain.save(str(tmp_path / "plain.mlpackage"))
    plain_report = inspect_mlpackage(tmp_path / "plain.mlpackage")
    assert report.dense_bytes == plain_report.total_bytes
    assert report.package.dense_bytes == report.dense_bytes  # one dense size: computed = converted
    assert report.total_bytes < 0.6 * report.dense_bytes
    assert "batch_norm" not in report.op_counts  # fused, unlike on Core ML Tools' metadata path below
    assert report.op_counts == plain_report.op_counts | {
        "const": plain_report.op_counts["const"] - len(SPARSE), "constexpr_sparse_to_dense": len(SPARSE)}


def test_coremltools_metadata_path_zeroes_tiny_weights(cnn: dict, exported: tuple, tmp_path: object) -> None:
    """Why the export does not let coremltools read the metadata: on the very same finalized model
    it drops every kept weight of fc1 (all below 2**-10), emits a sparse op for the 3 %-sparse conv4,
    and leaves the batch norm unfused. (inspect_mlpackage reads this plain coremltools package too.)"""
    ours, _, _ = exported
    traced = torch.jit.trace(cnn["finalized"], EXAMPLE)
    theirs = ct.convert(traced, inputs=[ct.TensorType(shape=EXAMPLE.shape)], convert_to="mlprogram",
                        minimum_deployment_target=ct.target.iOS16)
    theirs.save(str(tmp_path / "metadata.mlpackage"))
    package = inspect_mlpackage(tmp_path / "metadata.mlpackage")
    rows = {row.name.removesuffix("_cast_fp16"): row for row in package.rows}
    assert rows["fc1_weight"].storage == "sparse" and rows["fc1_weight"].nonzeros == 0
    assert ours.row("fc1.weight").nonzeros == ours.row("fc1.weight").numel // 2
    assert rows["conv4_weight"].storage == "sparse" and rows["conv4_weight"].bytes > 2 * rows["conv4_weight"].numel
    assert package.op_counts["batch_norm"] == 1


def test_input_model_is_untouched(cnn: dict, exported: tuple) -> None:
    _, _, before = exported
    after = cnn["finalized"].state_dict()
    assert after.keys() == before.keys() and any("_COREML_" in k for k in after)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_prepared_model_exports_like_finalized(cnn: dict, exported: tuple, tmp_path: object) -> None:
    prepared = cnn["prepared"]
    orig = prepared.conv2.weight_orig.detach().clone()
    report = export_coreml(prepared, EXAMPLE, tmp_path / "prepared.mlpackage")
    finalized_report = exported[0]
    assert report.total_bytes == finalized_report.total_bytes
    assert [(r.name, r.storage, r.nonzeros) for r in report.rows] == [
        (r.name, r.storage, r.nonzeros) for r in finalized_report.rows]
    assert is_masked(prepared.conv2) and torch.equal(prepared.conv2.weight_orig, orig)  # still prepared
    assert int(torch.count_nonzero(prepared.conv2.weight_orig)) == orig.numel()


def test_deployment_targets(exported: tuple, tmp_path: object) -> None:
    report, _, _ = exported
    assert report.minimum_deployment_target == "iOS16" and report.package.specification_version == 7
    for too_old in (ct.target.iOS15, "iOS15", "macOS12", "watchOS8"):
        with pytest.raises(ValueError, match=r"minimum_deployment_target=.*(iOS15|macOS12|watchOS8).* iOS16 or newer"):
            export_coreml(nn.Linear(4, 4), torch.randn(1, 4), tmp_path / "old.mlpackage",
                          minimum_deployment_target=too_old)
    with pytest.raises(ValueError, match="'iOS99' is invalid.*iOS17"):
        export_coreml(nn.Linear(4, 4), torch.randn(1, 4), tmp_path / "x.mlpackage", minimum_deployment_target="iOS99")
    with pytest.raises(TypeError, match="minimum_deployment_target=16"):
        export_coreml(nn.Linear(4, 4), torch.randn(1, 4), tmp_path / "x.mlpackage", minimum_deployment_target=16)
    assert not (tmp_path / "old.mlpackage").exists()


def test_ios18_and_float32_and_torch_export(cnn: dict, exported: tuple, tmp_path: object) -> None:
    base, _, _ = exported
    model = cnn["finalized"]
    ios18 = export_coreml(model, EXAMPLE, tmp_path / "ios18.mlpackage", minimum_deployment_target="iOS18")
    assert ios18.package.specification_version == 9
    fp32 = export_coreml(model, (EXAMPLE,), tmp_path / "fp32.mlpackage", compute_precision="float32")
    exported_program = export_coreml(model, EXAMPLE, tmp_path / "export.mlpackage", trace="export")
    assert exported_program.trace == "export"
    for name in SPARSE:
        expected = base.row(name)
        for report in (ios18, fp32, exported_program):
            row = report.row(name)
            assert (row.storage, row.nonzeros) == ("sparse", expected.nonzeros), (report.path, row)
        assert ios18.row(name).bytes == expected.bytes - 4 * len(expected.shape)  # no uint32 shape input
        assert abs(fp32.row(name).bytes - _bytes_formula(expected, 4)) <= 0.05 * _bytes_formula(expected, 4)
    assert exported_program.total_bytes == base.total_bytes
    assert fp32.total_bytes > 1.9 * base.total_bytes - 64 * 16


def test_torchscript_and_exported_program_inputs(cnn: dict, exported: tuple, tmp_path: object) -> None:
    base = exported[0]
    model = cnn["finalized"]
    scripted = torch.jit.trace(model, EXAMPLE)
    scripted_prepared = torch.jit.trace(cnn["prepared"], EXAMPLE, check_trace=False)  # masks in the graph
    program = torch.export.export(model, (EXAMPLE,))
    for source, name in ((scripted, "scripted"), (scripted_prepared, "scripted_prepared"), (program, "program")):
        report = export_coreml(source, EXAMPLE, tmp_path / f"{name}.mlpackage")
        assert report.total_bytes == base.total_bytes, name
        assert {r.name for r in report.rows if r.storage == "sparse"} == set(SPARSE), name
    assert "_COREML_/metadata_version" in dict(scripted.named_buffers())  # the TorchScript is untouched
    with pytest.raises(ValueError, match="trace='export' is invalid: a TorchScript model"):
        export_coreml(scripted, EXAMPLE, tmp_path / "x.mlpackage", trace="export")


def test_unpruned_model_and_sparse_weights_all(tmp_path: object, sparsify_logs: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    with torch.no_grad():
        model[0].weight[:, :48] = 0  # 75 % exact zeros, but no metadata: not "pruned"
    report = export_coreml(model, torch.randn(1, 64), tmp_path / "plain.mlpackage")
    assert {r.storage for r in report.rows} == {"dense"} and report.total_bytes == report.dense_bytes
    assert any("no pruned weight found" in r.getMessage() for r in sparsify_logs.records)
    assert report.warnings == [r.getMessage() for r in sparsify_logs.records if r.levelno == logging.WARNING]
    everything = export_coreml(model, torch.randn(1, 64), tmp_path / "all.mlpackage", sparse_weights="all")
    assert everything.row("0.weight").storage == "sparse" and everything.row("0.weight").nonzeros == 128 * 16
    assert everything.row("2.weight").storage == "dense"  # no zeros: sparse would be larger
    assert not everything.warnings


def test_joint_compression_metadata_is_refused(tmp_path: object) -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].register_buffer("_COREML_/weight/compression_type", torch.tensor([1, 3]))
    with pytest.raises(ValueError, match=r"0.weight carries Core ML compression types \[1, 3\].*palettize_bits="):
        export_coreml(model, torch.randn(1, 4), tmp_path / "joint.mlpackage")


@pytest.mark.parametrize("kwargs, error, match", [
    ({"path": "model.mlmodel"}, ValueError, "path='model.mlmodel' is invalid: the name must end in '.mlpackage'"),
    ({"trace": "script"}, ValueError, "trace='script' is invalid: allowed values are None, 'jit', 'export'"),
    ({"sparse_weights": "some"}, ValueError, "sparse_weights='some' is invalid"),
    ({"compute_precision": "int8"}, ValueError, "compute_precision='int8' is invalid"),
    ({"convert_kwargs": {"convert_to": "neuralnetwork"}}, ValueError, "convert_to must be passed as export_coreml"),
    ({"example_inputs": [1.0]}, TypeError, "example_inputs=.* expected a tensor"),
    ({"model": "model.pt"}, TypeError, "model must be a torch.nn.Module"),
    ({"palettize_bits": 5}, ValueError, r"palettize_bits=5 is invalid: allowed values are None, 1, 2, 3, 4, 6, 8"),
    ({"palettize_bits": True}, ValueError, r"palettize_bits=True is invalid"),
    ({"palettize_bits": 4.0}, ValueError, r"palettize_bits=4.0 is invalid: allowed values are None, 1, 2, 3, 4, 6, 8 "
                                          r"\(an int; got float\)"),
    ({"palettize_bits": "4"}, ValueError, r"palettize_bits='4' is invalid: .* \(an int; got str\)"),
    ({"palettize_bits": 16}, ValueError, r"palettize_bits=16 is invalid: allowed values are None, 1, 2, 3, 4, 6, 8"),
    ({"overwrite": "no"}, TypeError, r"overwrite='no' is invalid: allowed values are True and False"),
    ({"quantize": "int4"}, ValueError, r"quantize='int4' is invalid: allowed values are None, 'int8'"),
    ({"quantize": "int8", "palettize_bits": 4}, ValueError, r"quantize='int8' is invalid: palettize_bits=4 is given"),
    ({"palettize_bits": 4, "minimum_deployment_target": "iOS17"}, ValueError,
     r"minimum_deployment_target='iOS17' is invalid: joint compression \(palettize_bits / quantize\) needs iOS18 or "
     r"newer, as a coremltools.target or its name: iOS18, .*macOS15"),
    ({"quantize": "int8", "minimum_deployment_target": ct.target.macOS14}, ValueError,
     r"minimum_deployment_target='iOS17' is invalid: joint compression"),
])
def test_bad_arguments(tmp_path: object, kwargs: dict, error: type, match: str) -> None:
    arguments = {"model": nn.Linear(4, 4), "example_inputs": torch.randn(1, 4), "path": tmp_path / "m.mlpackage"}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        export_coreml(arguments.pop("model"), arguments.pop("example_inputs"), arguments.pop("path"), **arguments)
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_report_conveniences(exported: tuple) -> None:
    report, path, _ = exported
    data = json.loads(json.dumps(report.as_dict()))
    assert data["path"] == str(path) and data["total_bytes"] == report.total_bytes
    assert data["dense_bytes"] == report.dense_bytes and len(data["rows"]) == len(report.rows)
    text = report.to_text()
    assert all(name in text for name in SPARSE) and "4 of" in text and "warning: conv4.weight" in text
    with pytest.raises(KeyError, match="no weight named 'nope'"):
        report.row("nope")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models(arch: str, tmp_path: object) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    config = MagnitudePrunerConfig(
        module_type_configs={nn.Conv2d: Cfg(target_sparsity=0.75), nn.Linear: Cfg(n_m_ratio=(2, 4))},
        module_name_configs={
            r"layer1\..*|features\.1\..*": Cfg(target_sparsity=0.5, block_size=4),
            r"layer2\.0\.conv1|features\.3\.conv\.0\.0": Cfg(target_sparsity=0.5, granularity="per_channel"),
        },
    )
    pruner = MagnitudePruner(model, config)
    pruner.prepare(inplace=True)
    pruner.step()
    finalized = pruner.finalize()
    report = export_coreml(finalized, torch.randn(1, 3, 224, 224), tmp_path / f"{arch}.mlpackage")
    pruned = [row for row in report.rows if row.pruned]
    expected = [n for n, m in finalized.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sorted(row.name for row in pruned) == sorted(f"{n}.weight" for n in expected)
    for row in pruned:
        assert row.storage == "sparse", row
        assert row.nonzeros == row.torch_nonzeros
        assert abs(row.bytes - _bytes_formula(row)) <= 0.05 * _bytes_formula(row)
    assert report.op_counts["constexpr_sparse_to_dense"] == len(pruned)
    assert "batch_norm" not in report.op_counts
    assert report.total_bytes < 0.45 * report.dense_bytes
    assert not report.warnings


# -- joint compression (iOS18) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def joint(cnn: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("joint")
    model = cnn["finalized"]
    return {kind: (export_coreml(model, EXAMPLE, root / f"{kind}.mlpackage", **kwargs), root / f"{kind}.mlpackage")
            for kind, kwargs in {"palettized": {"palettize_bits": 4}, "quantized": {"quantize": "int8"},
                                 "sparse": {"minimum_deployment_target": "iOS18"}}.items()}


@pytest.mark.parametrize("kwargs", [{}, {"palettize_bits": 4}], ids=["sparse", "sparse+palettized"])
def test_no_temporary_package_is_left_behind(cnn: dict, tmp_path, monkeypatch: pytest.MonkeyPatch,
                                             kwargs: dict) -> None:
    """coremltools keeps a temporary .mlpackage behind every conversion and compression step until the process
    exits; the export removes the ones it made once the package is saved (a job exporting every epoch would
    otherwise fill the temp folder)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # every temporary folder of this test lands here
    report = export_coreml(cnn["finalized"], EXAMPLE, tmp_path / "cnn.mlpackage", **kwargs)
    assert report.op_counts["constexpr_sparse_to_dense" if not kwargs else "constexpr_lut_to_sparse"] >= 1
    assert sorted(p.name for p in scratch.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.mlpackage", "tmp"]


def test_joint_sparse_palettized(cnn: dict, joint: dict) -> None:
    report, path = joint["palettized"]
    assert report.minimum_deployment_target == "iOS18" and report.compression == "palettize 4 bits"
    model = cnn["finalized"]
    values = read_weights(path)
    for name in SPARSE:  # conv1 included: a tie with dense palettized goes to the form that keeps the zeros
        row = report.row(name)
        torch_weight = model.get_parameter(name).detach().numpy()
        assert row.storage == "sparse+palettized", row
        assert row.nonzeros == row.torch_nonzeros
        assert row.bytes == math.ceil(row.nonzeros * 4 / 8) + math.ceil(row.numel / 8) + 16 * 2  # indices, mask, table
        decoded = values[row.coreml_name]
        np.testing.assert_array_equal(decoded == 0, torch_weight == 0)  # the pruning survives exactly
        assert len(np.unique(decoded[decoded != 0])) <= 16
        assert 0 < row.error < 0.15
    assert report.op_counts["constexpr_lut_to_sparse"] == len(SPARSE)
    for name in ("conv4.weight", "fc2.weight"):  # too little sparsity (or none) for the mask to pay: palettized
        assert report.row(name).storage == "palettized"
    assert report.total_bytes == os.path.getsize(os.path.join(path, "Data", "com.apple.CoreML", "weights",
                                                              "weight.bin"))
    assert report.total_bytes < 0.6 * joint["sparse"][0].total_bytes
    assert [w.split(" stays dense")[0] for w in report.warnings] == [
        "conv4.weight (pruned, 1024 weights, sparsity 0.029)"]
    assert report.warnings[0].endswith("its zeros are no longer exact zeros once compressed")


def test_joint_sparse_quantized(cnn: dict, joint: dict) -> None:
    report, path = joint["quantized"]
    assert report.compression == "quantize int8" and report.op_counts["constexpr_sparse_blockwise_shift_scale"] == 4
    values = read_weights(path)
    dense = read_weights(joint["sparse"][1])
    for name in SPARSE:
        row = report.row(name)
        kept = row.torch_nonzeros
        assert row.storage == "sparse+quantized"
        assert row.bytes == kept + math.ceil(row.numel / 8) + 2 * row.shape[0]  # int8 values, mask, fp16 scales
        decoded = values[row.coreml_name].astype(np.float64)
        reference = dense[joint["sparse"][0].row(name).coreml_name].astype(np.float64)
        step = np.abs(reference).reshape(row.shape[0], -1).max(1) / 127
        assert np.all(decoded[reference == 0] == 0)  # every pruned weight is still exactly zero
        rounded = (decoded == 0) & (reference != 0)  # kept values below half an int8 step round to zero
        step_each = np.repeat(step, math.prod(row.shape[1:])).reshape(row.shape)
        assert np.all(np.abs(reference[rounded]) <= step_each[rounded] / 2 + 2**-24)
        assert row.nonzeros == kept - int(rounded.sum())  # counted on the decoded weight
        # symmetric int8 per output channel: at most half a step, max |w| of the channel / 127 / 2
        error = np.abs(decoded - reference).reshape(row.shape[0], -1).max(1)
        if name != "fc1.weight":  # fc1's weights are ~1e-3: its fp16 scales are subnormal and coarse
            assert np.all(error <= step / 2 + 2**-10 * np.abs(reference).reshape(row.shape[0], -1).max(1))
        assert row.error == pytest.approx(error.max() / np.abs(reference).max())
    assert report.row("fc1.weight").error > 4 * report.row("conv2.weight").error  # the report shows it


def test_model_report_estimates_joint_exports(cnn: dict, joint: dict) -> None:
    """model_report's estimate of each export: the same storage per weight, the file within the last blob's
    padding (the estimate pads every blob to 64 bytes)."""
    model = cnn["finalized"]
    for kind, kwargs in (("palettized", {"palettize_bits": 4}), ("quantized", {"quantize": "int8"}),
                         ("sparse", {"target": "iOS18"})):
        report = joint[kind][0]
        estimate = model_report(model, **kwargs)
        assert estimate.target == "iOS18"
        stored = {row.name.removesuffix(".weight"): row.storage for row in report.rows if row.name.endswith("weight")}
        assert {layer.name: layer.storage for layer in estimate.layers} == stored
        assert 0 <= estimate.file_fp16 - report.total_bytes < 64


# -- conversion routes and wrappers ---------------------------------------------------------------


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.attn(x, x, x)
        return self.head(y.mean(1))


def _finalized(model: nn.Module, sparsity: float = 0.75) -> nn.Module:
    config = MagnitudePrunerConfig(module_type_configs={nn.Linear: Cfg(target_sparsity=sparsity)})
    pruner = MagnitudePruner(model.eval(), config)
    pruner.prepare(inplace=True)
    pruner.step()
    return pruner.finalize()


def test_multihead_attention_falls_back_to_torch_export(tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sparsify")
    model = _finalized(_Attention())
    example = torch.randn(1, 6, 32)
    report = export_coreml(model, example, tmp_path / "attention.mlpackage")
    assert report.trace == "export"
    assert list(report.trace_failures) == ["jit"]
    # coremltools 9 raises NotImplementedError, 8.3 RuntimeError, both naming the op
    assert "_native_multi_head_attention" in report.trace_failures["jit"]
    assert any(r.getMessage().startswith("export_coreml: converted with torch.export (trace='export'); "
                                         "TorchScript tracing (torch.jit.trace) failed first: ")
               and "_native_multi_head_attention" in r.getMessage() for r in caplog.records)
    for name in ("attn.out_proj.weight", "head.weight"):
        row = report.row(name)
        assert (row.storage, row.nonzeros) == ("sparse", row.torch_nonzeros), row
    assert f"jit failed first: {report.trace_failures['jit']}" in report.to_text()
    assert report.as_dict()["trace_failures"] == report.trace_failures
    forced = (r"trace='jit' was asked for; trace=None also tries the other route\)\. "
              r"TorchScript tracing \(torch.jit.trace\): (NotImplemented|Runtime)Error")
    with pytest.raises(ConversionError, match=forced) as caught:
        export_coreml(model, example, tmp_path / "forced.mlpackage", trace="jit")
    assert list(caught.value.failures) == ["jit"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attention.mlpackage"]  # no package, no staging folder


def test_vision_transformer_with_default_arguments(tmp_path: object) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=64, mlp_dim=128)
    model = _finalized(vit, 0.5)
    report = export_coreml(model, torch.randn(1, 3, 32, 32), tmp_path / "vit.mlpackage")
    assert report.trace == "export" and "jit" in report.trace_failures
    linears = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 7  # 2 x (attention out_proj + 2 MLP layers) + head: all pruned, all found
    for name in linears:
        row = report.row(name)
        assert (row.storage, row.nonzeros) == ("sparse", row.torch_nonzeros), row
    assert not report.warnings


def test_wrapped_models_are_unwrapped(cnn: dict, exported: tuple, tmp_path: object,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sparsify")
    base = exported[0]
    model = cnn["finalized"]
    wrapped = nn.DataParallel(model)
    report = export_coreml(wrapped, EXAMPLE, tmp_path / "dp.mlpackage")
    assert [(r.name, r.storage, r.nonzeros, r.bytes) for r in report.rows] == [
        (r.name, r.storage, r.nonzeros, r.bytes) for r in base.rows]  # names without 'module.'
    assert report.trace == "jit" and not report.trace_failures
    assert any("inside DataParallel" in r.getMessage() for r in caplog.records)
    compiled = export_coreml(torch.compile(model), EXAMPLE, tmp_path / "compiled.mlpackage")
    assert compiled.total_bytes == base.total_bytes
    assert wrapped.module is model and any("_COREML_" in k for k in model.state_dict())  # untouched


def test_distributed_data_parallel_is_unwrapped(cnn: dict, exported: tuple, tmp_path: object) -> None:
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = nn.parallel.DistributedDataParallel(copy.deepcopy(cnn["finalized"]))
        report = export_coreml(wrapped, EXAMPLE, tmp_path / "ddp.mlpackage")
    finally:
        dist.destroy_process_group()
    assert report.total_bytes == exported[0].total_bytes
    assert {r.name for r in report.rows if r.storage == "sparse"} == set(SPARSE)


# -- quiet by default -----------------------------------------------------------------------------


def test_export_prints_nothing_at_default_log_level(cnn: dict, tmp_path: object, capfd: pytest.CaptureFixture,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="sparsify")
    capfd.readouterr()
    report = export_coreml(cnn["finalized"], EXAMPLE, tmp_path / "quiet.mlpackage")
    inspect_mlpackage(tmp_path / "quiet.mlpackage")
    assert capfd.readouterr() == ("", "")
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("stderr: Running MIL default pipeline") for m in debug)  # tqdm's bars
    assert any("UserWarning" in m and "has been renamed" in m for m in debug)  # Core ML Tools' renaming warnings
    assert report.warnings  # sparsify's own warning (conv4) was logged, through logging, not printed
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == report.warnings


@pytest.mark.slow
def test_fresh_interpreter_export_is_silent(tmp_path: object) -> None:
    """Core ML Tools' import notices too (they appear once per process, so this needs a new one)."""
    import subprocess
    import sys

    script = (
        "import torch\n"
        "from torch import nn\n"
        "from sparsify.export.coreml import export_coreml\n"
        "model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()\n"
        f"export_coreml(model, torch.randn(1, 8), {str(tmp_path / 'm.mlpackage')!r}, sparse_weights='all')\n"
        "print('done')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert (result.returncode, result.stdout, result.stderr) == (0, "done\n", "")


# -- the destination ------------------------------------------------------------------------------


class _Counting(nn.Module):
    """Counts forward calls: a refusal "before any work" means the model was never traced."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc(x)


def _tree(root: object) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_destination_that_is_not_a_package_is_refused_untouched(exported: tuple, tmp_path: object) -> None:
    import shutil

    a_file = tmp_path / "file.mlpackage"
    a_file.write_text("my notes")
    folder = tmp_path / "folder.mlpackage"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "data.csv").write_text("1,2,3")
    package_plus = tmp_path / "plus.mlpackage"
    shutil.copytree(exported[1], package_plus)
    (package_plus / "README.txt").write_text("keep me")
    link = tmp_path / "link.mlpackage"
    link.symlink_to(folder)
    before = _tree(tmp_path)
    cases = {a_file: "is a file, not a directory",
             folder: r"is a directory holding files that are not part .* \(sub/data.csv\)",
             package_plus: r"is a directory holding .* \(README.txt\)", link: "is a symbolic link"}
    for path, what in cases.items():
        model = _Counting()
        with pytest.raises(FileExistsError, match=rf"path='{path}' exists and {what}.*nothing was changed"):
            export_coreml(model, torch.randn(1, 4), path, overwrite=True)
        assert model.calls == 0
    assert _tree(tmp_path) == before


def test_existing_package_or_empty_folder_is_replaced(exported: tuple, tmp_path: object) -> None:
    import shutil

    target = tmp_path / "model.mlpackage"
    shutil.copytree(exported[1], target)
    before = _tree(tmp_path)
    model = _Counting()
    with pytest.raises(FileExistsError, match=rf"path='{target}' exists; pass overwrite=True to replace it"):
        export_coreml(model, torch.randn(1, 4), target)  # as the command without --force: refused, untouched
    assert model.calls == 0 and _tree(tmp_path) == before
    report = export_coreml(nn.Sequential(nn.Linear(4, 4)), torch.randn(1, 4), target, overwrite=True)
    assert inspect_mlpackage(target).total_bytes == report.total_bytes < exported[0].total_bytes
    (tmp_path / "empty.mlpackage").mkdir()
    export_coreml(nn.Sequential(nn.Linear(4, 4)), torch.randn(1, 4), tmp_path / "empty.mlpackage")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.mlpackage", "model.mlpackage"]  # no staging left


def test_unwritable_destination_fails_before_conversion(tmp_path: object) -> None:
    (tmp_path / "a_file").write_text("x")
    model = _Counting()
    with pytest.raises(NotADirectoryError, match=r"export_coreml: cannot write to .*a_file/sub.*nothing was converted"):
        export_coreml(model, torch.randn(1, 4), tmp_path / "a_file" / "sub" / "m.mlpackage")
    assert model.calls == 0


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_read_only_folder_fails_before_conversion(tmp_path: object) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    model = _Counting()
    try:
        with pytest.raises(PermissionError, match="cannot write to"):
            export_coreml(model, torch.randn(1, 4), folder / "m.mlpackage")
    finally:
        folder.chmod(0o700)
    assert model.calls == 0


def test_failed_export_leaves_everything_as_it_was(exported: tuple, tmp_path: object) -> None:
    import shutil

    target = tmp_path / "model.mlpackage"
    shutil.copytree(exported[1], target)
    before = _tree(tmp_path)
    attention = _Attention().eval()
    for path in (target, tmp_path / "new" / "deeper" / "m.mlpackage"):
        with pytest.raises(ConversionError):
            export_coreml(attention, torch.randn(1, 6, 32), path, trace="jit", overwrite=True)
    assert _tree(tmp_path) == before  # the package intact, no staging folder, no created parent folders
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]


class _Chatty(nn.Module):
    """A third-party model that warns on every forward (as transformers' GPT-2 does once per layer)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.fc, self.text = nn.Linear(4, 4), text

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn(self.text, FutureWarning, stacklevel=1)
        return self.fc(x)


def test_a_warning_raised_on_every_forward_is_shown_once(tmp_path: object) -> None:
    text = f"deprecated, from {tmp_path}"  # unique: each distinct warning is re-issued once per process
    model = _Chatty(text)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        export_coreml(model, torch.randn(1, 4), tmp_path / "a.mlpackage")
        export_coreml(model, torch.randn(1, 4), tmp_path / "b.mlpackage")
    assert [str(w.message) for w in caught if w.category is FutureWarning] == [text]
