"""Core ML storage estimates: the formula by hand, then against the bytes of real .mlpackage exports."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from sparsify.analysis.model_report import model_report
from sparsify.analysis.sizing import (
    METADATA_ZERO_THRESHOLD,
    StoredTensor,
    dense_bytes,
    fuses_batchnorm,
    sparse_bytes,
    stored_tensor,
    stores_sparse,
    weight_file_bytes,
    zero_threshold,
)

# -- the formula ---------------------------------------------------------------------------------


def test_dense_and_sparse_bytes_by_hand() -> None:
    assert dense_bytes(1000, "fp16") == 2000
    assert dense_bytes(1000, "fp32") == 4000
    # 1000 weights, 250 kept: 250 values + 125 bytes of mask
    assert sparse_bytes(1000, 250, "fp16") == 250 * 2 + 125
    assert sparse_bytes(1000, 250, "fp32") == 250 * 4 + 125
    assert sparse_bytes(1001, 0, "fp16") == 126  # the mask rounds up to whole bytes
    # ratio to dense fp16 is (1 - s) + 1/16
    assert sparse_bytes(4096, 1024, "fp16") / dense_bytes(4096, "fp16") == pytest.approx(0.25 + 1 / 16)


def test_bad_arguments_name_the_value() -> None:
    with pytest.raises(ValueError, match="precision='bf16'.*'fp16', 'fp32'"):
        dense_bytes(10, "bf16")
    with pytest.raises(ValueError, match="nnz=11"):
        sparse_bytes(10, 11)
    with pytest.raises(ValueError, match="rule='best'"):
        stores_sparse(10, 2, 1, metadata=False, rule="best")
    with pytest.raises(ValueError, match="rule='best'"):
        fuses_batchnorm("best", conv_metadata=False, conv_sparse=False)
    with pytest.raises(ValueError, match="target='iOS15'"):
        StoredTensor(10, 10, False).file_bytes("fp16", "iOS15")


def test_joint_compression_bytes_by_hand() -> None:
    # 4096 weights, 410 kept, 4-bit palette: 205 bytes of indices, 16 fp16 entries, 512 bytes of mask
    joint = StoredTensor(4096, 410, True, palettize_bits=4)
    assert joint.blobs("fp16", "iOS18") == [(410, 205), (16, 32), (4096, 512)]
    assert joint.payload_bytes("fp16") == 205 + 32 + 512 and joint.storage == "sparse+palettized"
    # the file: a 64-byte header per blob, each padded to 64 bytes
    assert joint.file_bytes("fp16", "iOS18") == (64 + 256) + (64 + 64) + (64 + 512)
    # int8 with 64 output channels: 410 bytes, 64 fp16 scales, the mask
    assert StoredTensor(4096, 410, True, quantize="int8", channels=64).blobs("fp16", "iOS18") == [
        (410, 410), (64, 128), (4096, 512)]
    # dense forms: every element's index / byte
    assert StoredTensor(4096, 4096, False, palettize_bits=2).blobs("fp32", "iOS18") == [(4096, 1024), (4, 16)]
    assert StoredTensor(4096, 4096, False, quantize="int8", channels=8).storage == "quantized"
    # 2-bit tables (4 entries) and 8 scales are inline in the model description: no blob of their own
    assert StoredTensor(4096, 4096, False, palettize_bits=2).file_bytes("fp16", "iOS18") == 64 + 1024
    # the ratio at 90 % sparsity: 0.1 * N/16 + 1/16 of dense with N-bit palettes, 0.1/2 + 1/16 as int8
    numel = 2**20
    kept = numel // 10
    assert StoredTensor(numel, kept, True, palettize_bits=4).payload_bytes() / (2 * numel) == pytest.approx(
        0.0875, abs=1e-4)
    assert StoredTensor(numel, kept, True, quantize="int8").payload_bytes() / (2 * numel) == pytest.approx(
        0.1125, abs=1e-4)


def test_joint_compression_choice_and_refusals() -> None:
    # 90 % pruned: sparse + palettized; unpruned: palettized; 3 % pruned: palettized (the mask costs more)
    assert stored_tensor(4096, 2, 410, metadata=True, target="iOS18", palettize_bits=4).storage == "sparse+palettized"
    assert stored_tensor(4096, 2, 4096, metadata=False, target="iOS18", palettize_bits=4).storage == "palettized"
    assert stored_tensor(4096, 2, 3970, metadata=True, target="iOS18", quantize="int8", channels=64).storage == \
        "quantized"
    assert stored_tensor(64, 1, 64, metadata=False, target="iOS18", palettize_bits=4).storage == "dense"  # rank 1
    # a tie between sparse + palettized and palettized (432 weights, half kept: 448 bytes each) keeps the zeros
    tie = [StoredTensor(432, 216, sparse, palettize_bits=4).file_bytes("fp16", "iOS18") for sparse in (True, False)]
    assert tie == [448, 448]
    assert stored_tensor(432, 4, 216, metadata=True, target="iOS18", palettize_bits=4).sparse
    cases = [
        ({"palettize_bits": 5}, "palettize_bits=5 is invalid: allowed values are 1, 2, 3, 4, 6, 8"),
        ({"quantize": "int4"}, "quantize='int4' is invalid: allowed values are 'int8'"),
        ({"palettize_bits": 4, "quantize": "int8"}, "mutually exclusive"),
        ({"palettize_bits": 4, "target": "iOS17"}, "target='iOS17' is invalid with palettize_bits / quantize"),
        ({"quantize": "int8", "rule": "metadata"}, "rule='metadata' is invalid with palettize_bits / quantize"),
    ]
    for kwargs, message in cases:
        arguments = {"metadata": True, "target": "iOS18", **kwargs}
        with pytest.raises(ValueError, match=message):
            stored_tensor(4096, 2, 410, **arguments)


def test_which_weights_are_stored_sparse() -> None:
    # sparsify's export: pruned weights of rank >= 2, only where sparse blobs are smaller than the dense one
    assert stores_sparse(4096, 2, 3700, metadata=True)  # 9.7 % sparse: 8 192 vs 8 256 bytes in fp16
    assert not stores_sparse(4096, 2, 3900, metadata=True)  # 4.8 %: sparse would be larger in fp16...
    assert stores_sparse(4096, 2, 3900, metadata=True, precision="fp32")  # ...but not in fp32
    assert not stores_sparse(4096, 2, 0, metadata=False)  # not pruned
    assert stores_sparse(4096, 2, 0, metadata=False, rule="sparsify_all")
    assert not stores_sparse(4096, 1, 0, metadata=True)  # rank 1 stays dense
    assert zero_threshold("sparsify", True) == 0.0
    # metadata: always sparse, whatever the sparsity
    assert stores_sparse(100, 2, 100, metadata=True, rule="metadata")
    assert not stores_sparse(10_000, 2, 0, metadata=False, rule="metadata")
    # DEFAULT_PRUNING: rank >= 2, more than 2048 elements, at least half zeros
    assert stores_sparse(4096, 2, 2048, metadata=False, rule="default_pruning")
    assert not stores_sparse(4096, 2, 2049, metadata=False, rule="default_pruning")
    assert not stores_sparse(2048, 2, 0, metadata=False, rule="default_pruning")
    assert not stores_sparse(4096, 1, 0, metadata=False, rule="default_pruning")
    assert zero_threshold("metadata", True) == np.finfo(np.float16).eps == METADATA_ZERO_THRESHOLD
    assert zero_threshold("default_pruning", False) == 1e-12
    # batch norm folding: sparsify converts dense first; coremltools cannot fold into a sparse conv
    assert fuses_batchnorm("sparsify", conv_metadata=True, conv_sparse=True)
    assert not fuses_batchnorm("metadata", conv_metadata=True, conv_sparse=True)
    assert fuses_batchnorm("metadata", conv_metadata=False, conv_sparse=False)
    assert not fuses_batchnorm("default_pruning", conv_metadata=False, conv_sparse=True)


def test_weight_file_layout_by_hand() -> None:
    # dense 640 fp16 values: 64-byte header + 1280 bytes (a multiple of 64)
    assert StoredTensor(640, 640, False).file_bytes("fp16") == 64 + 1280
    # 8 values are inlined in the model description: nothing in weight.bin
    assert StoredTensor(8, 8, False).file_bytes("fp16") == 0
    # sparse 72 weights, 18 kept: data 36 B (padded to 64) + header; the 9-byte iOS16 mask is inlined
    assert StoredTensor(72, 18, True).file_bytes("fp16", "iOS16") == 64 + 64
    # ... but iOS18 stores the mask as 72 uint1 elements, in the file
    assert StoredTensor(72, 18, True).file_bytes("fp16", "iOS18") == 2 * (64 + 64)
    assert weight_file_bytes([StoredTensor(640, 640, False), StoredTensor(8, 8, False)]) == 64 + 64 + 1280


# -- against real exports ----------------------------------------------------------------------------

ct = pytest.importorskip("coremltools")


def _export(model: nn.Module, example: torch.Tensor, path: Path, *, precision: str = "fp16",
            target: str = "iOS16", pipeline: object = None) -> tuple[int, list[int]]:
    """Convert and save; return the size of weight.bin and the nnz of every sparse op."""
    kwargs = {} if pipeline is None else {"pass_pipeline": pipeline}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            traced = torch.jit.trace(model.eval(), example)
            mlmodel = ct.convert(
                traced, inputs=[ct.TensorType(shape=example.shape)], convert_to="mlprogram",
                minimum_deployment_target=getattr(ct.target, target),
                compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                **kwargs,
            )
        finally:
            logging.disable(logging.NOTSET)
    mlmodel.save(str(path))
    ops = mlmodel._mil_program.functions["main"].find_ops(op_type="constexpr_sparse_to_dense")
    size = (path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size
    return size, sorted(int(op.nonzero_data.val.size) for op in ops)


def _odd_cnn() -> nn.Module:
    # odd shapes (masks that are not whole bytes), a tiny first conv, biases of every size
    return nn.Sequential(
        nn.Conv2d(3, 7, 3), nn.ReLU(), nn.Conv2d(7, 12, 3, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(12 * 4 * 4, 53), nn.ReLU(), nn.Linear(53, 9),
    )


def _prune(model: nn.Module, **module_config: object) -> tuple[nn.Module, nn.Module]:
    config = MagnitudePrunerConfig().set_global(ModuleMagnitudePrunerConfig(**module_config))
    pruner = MagnitudePruner(model, config)
    prepared = pruner.prepare()
    pruner.step()
    return prepared, pruner.finalize()


@pytest.mark.parametrize(
    ("sparsity", "precision", "target"),
    [(0.75, "fp16", "iOS16"), (0.5, "fp32", "iOS17"), (0.9, "fp16", "iOS18")],
)
def test_estimate_matches_exported_package(tmp_path: Path, sparsity: float, precision: str, target: str) -> None:
    prepared, finalized = _prune(_odd_cnn(), target_sparsity=sparsity)
    example = torch.randn(1, 3, 8, 8)
    size, nnz = _export(finalized, example, tmp_path / "m.mlpackage", precision=precision, target=target)
    # the report of the prepared model (before finalize) and of the finalized one predict the same file
    for model in (prepared, finalized):
        report = model_report(model, rule="metadata", target=target)
        estimate = report.file_fp16 if precision == "fp16" else report.file_fp32
        assert abs(estimate - size) <= 63, (estimate, size)  # the last blob is unpadded: order decides
        assert sorted(layer.stored_nonzeros for layer in report.layers) == nnz
    dense = report.file_dense_fp16 if precision == "fp16" else report.file_dense_fp32
    assert dense > size  # and the sparse file is smaller than the dense one


def test_dense_export_matches(tmp_path: Path) -> None:
    model = _odd_cnn()
    size, nnz = _export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.mlpackage")
    report = model_report(model)
    assert nnz == [] and not any(layer.sparse for layer in report.layers)
    assert abs(report.file_fp16 - size) <= 63
    assert report.file_fp16 == report.file_dense_fp16


def test_converter_zeroes_tiny_weights_of_pruned_layers(tmp_path: Path) -> None:
    # per-channel pruning keeps small weights; the metadata path zeroes every |w| <= 2**-10 of them
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        model[0].weight.mul_(0.004)
    _, finalized = _prune(model, target_sparsity=0.5, granularity="per_channel")
    size, nnz = _export(finalized, torch.randn(1, 40), tmp_path / "m.mlpackage")
    report = model_report(finalized, rule="metadata")
    first = report["0"]
    assert first.stored_nonzeros < first.nonzeros  # the converter dropped some kept weights
    assert sorted(layer.stored_nonzeros for layer in report.layers) == nnz
    assert abs(report.file_fp16 - size) <= 63


def test_default_pruning_pipeline_on_a_plain_model(tmp_path: Path) -> None:
    # no metadata: only DEFAULT_PRUNING stores sparse, and only weights > 2048 elements at >= 50 %
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 10))
    with torch.no_grad():
        for layer, zero_fraction in ((model[0], 0.6), (model[2], 0.3), (model[4], 0.9)):
            flat = layer.weight.view(-1)
            flat[: math.floor(flat.numel() * zero_fraction)] = 0
    size, nnz = _export(model, torch.randn(1, 64), tmp_path / "m.mlpackage", pipeline=ct.PassPipeline.DEFAULT_PRUNING)
    report = model_report(model, rule="default_pruning")
    assert [layer.sparse for layer in report.layers] == [True, False, False]  # 30 % too little; 320 too small
    assert nnz == [report["0"].stored_nonzeros]
    assert abs(report.file_fp16 - size) <= 63


def _bn_cnn() -> nn.Module:
    # the example CNN's shape: conv → batch norm pairs, which the converter folds when it can
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10),
    )
    with torch.no_grad():
        for bn in (model[1], model[5]):  # non-trivial statistics, as after training
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    return model


def test_batch_norms_with_coremltools_convert(tmp_path: Path) -> None:
    # metadata on the convs keeps their batch norms unfused: 4 x 16 + 4 x 32 values stay in the file
    _, finalized = _prune(_bn_cnn(), target_sparsity=0.8)
    size, nnz = _export(finalized, torch.randn(1, 1, 8, 8), tmp_path / "m.mlpackage")
    report = model_report(finalized, rule="metadata")
    assert sorted(layer.stored_nonzeros for layer in report.layers) == nnz
    assert abs(report.file_fp16 - size) <= 63
    # dense: both pairs are folded, the second conv gains a bias
    size, _ = _export(_bn_cnn(), torch.randn(1, 1, 8, 8), tmp_path / "dense.mlpackage")
    report = model_report(_bn_cnn(), rule="metadata")
    assert abs(report.file_fp16 - size) <= 63


@pytest.mark.parametrize(("sparsity", "precision"), [(0.9, "float16"), (0.05, "float32"), (0.05, "float16")])
def test_estimate_matches_sparsify_export(tmp_path: Path, sparsity: float, precision: str) -> None:
    export = pytest.importorskip("sparsify.export.coreml")
    prepared, finalized = _prune(_bn_cnn(), target_sparsity=sparsity)
    path = tmp_path / "m.mlpackage"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            exported = export.export_coreml(finalized, torch.randn(1, 1, 8, 8), path, compute_precision=precision)
        finally:
            logging.disable(logging.NOTSET)
    size = (path / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").stat().st_size
    assert size == exported.total_bytes
    short = "fp16" if precision == "float16" else "fp32"
    for model in (prepared, finalized, finalized.state_dict()):
        report = model_report(model)  # rule "sparsify", iOS16: the exporter's defaults
        estimate = report.file_fp16 if short == "fp16" else report.file_fp32
        assert abs(estimate - size) <= 63, (estimate, size)
        dense = report.file_dense_fp16 if short == "fp16" else report.file_dense_fp32
        assert abs(dense - exported.dense_bytes) <= 63
    fc = report["9"]  # 8 192 weights: at 5 % the mask pays in fp32 (above 1/32) but not in fp16 (below 1/16)
    assert (fc.sparse, fc.sparse_fp32) == ((True, True) if sparsity == 0.9 else (False, True))


def test_equal_constants_are_stored_once(tmp_path: Path) -> None:
    """Untrained batch norms fold into all-zero biases; the converter keeps one constant per distinct value of
    >= 100 elements, and so does the estimate (it computes the folded biases)."""
    export = pytest.importorskip("sparsify.export.coreml")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 128, 3, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                          nn.Conv2d(128, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                          nn.Conv2d(128, 128, 1, bias=False), nn.BatchNorm2d(128)).eval()
    _, finalized = _prune(model, target_sparsity=0.75)
    exported = export.export_coreml(finalized, torch.randn(1, 3, 8, 8), tmp_path / "m.mlpackage")
    assert sum(1 for row in exported.rows if row.storage == "dense") == 1  # three zero biases, one constant
    report = model_report(finalized)
    assert abs(report.file_fp16 - exported.total_bytes) <= 63
    with torch.no_grad():  # trained-looking batch norms: three different biases, three constants
        for bn in (model[1], model[4], model[7]):
            bn.bias.normal_()
    _, finalized = _prune(model, target_sparsity=0.75)
    exported = export.export_coreml(finalized, torch.randn(1, 3, 8, 8), tmp_path / "m2.mlpackage")
    assert sum(1 for row in exported.rows if row.storage == "dense") == 3
    assert abs(model_report(finalized).file_fp16 - exported.total_bytes) <= 63


def test_one_dense_size_per_model(tmp_path: Path) -> None:
    """model_report (before export), export_coreml (a real dense conversion) and inspect_mlpackage (the saved
    package) give the tutorial CNN the same dense weight-file size, to the byte: the converter does not pad
    the last blob, and neither does any estimate (padding every blob used to give 44 bytes more)."""
    export = pytest.importorskip("sparsify.export.coreml")
    from sparsify.demo.models import SmallCNN
    from sparsify.export.mlpackage import inspect_mlpackage

    torch.manual_seed(0)
    _, finalized = _prune(SmallCNN((1, 8, 8)).eval(), target_sparsity=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = export.export_coreml(finalized, torch.randn(1, 1, 8, 8), tmp_path / "m.mlpackage")
    sizes = {model_report(finalized).file_dense_fp16, exported.dense_bytes,
             inspect_mlpackage(tmp_path / "m.mlpackage").dense_bytes}
    assert len(sizes) == 1, sizes  # 174 932 bytes with torch 2.15 and coremltools 9.0
