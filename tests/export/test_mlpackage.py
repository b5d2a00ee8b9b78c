"""inspect_mlpackage on packages written by plain coremltools (no sparsify involved): every number is
checked against coremltools' own in-memory program or against the files on disk."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

ct = pytest.importorskip("coremltools")
cto = pytest.importorskip("coremltools.optimize.coreml")

from sparsify.export.errors import DamagedPackageError, MLPackageError, NotAPackageError  # noqa: E402
from sparsify.export.mlpackage import inspect_mlpackage, read_weights  # noqa: E402


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 24, 3)
        self.fc1 = nn.Linear(24, 100)  # 2400 weights: a mask of 300 bytes
        self.fc2 = nn.Linear(100, 7)  # 700 weights: the last mask byte holds 4 bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


_EXAMPLE = torch.randn(1, 3, 8, 8)


def _convert(target: object) -> object:
    torch.manual_seed(0)
    traced = torch.jit.trace(_Net().eval(), _EXAMPLE)
    return ct.convert(traced, inputs=[ct.TensorType(shape=_EXAMPLE.shape)], convert_to="mlprogram",
                      minimum_deployment_target=target)


def _save(model: object, path: object) -> str:
    model.save(str(path))
    return str(path)


def _ops(model: object, op_type: str | None = None) -> list:
    ops = list(model._mil_program.functions["main"].operations)
    return ops if op_type is None else [op for op in ops if op.op_type == op_type]


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[object, str]]:
    """Packages made by coremltools alone: dense, pruned (iOS16 and iOS18), palettized and quantized (iOS16 and
    iOS18), and jointly sparse + quantized / sparse + palettized (iOS18)."""
    root = tmp_path_factory.mktemp("mlpackages")
    dense16, dense18 = _convert(ct.target.iOS16), _convert(ct.target.iOS18)
    prune = cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.6, weight_threshold=100))
    sparse16, sparse18 = cto.prune_weights(dense16, prune), cto.prune_weights(dense18, prune)
    palettized = cto.palettize_weights(dense16, cto.OptimizationConfig(
        global_config=cto.OpPalettizerConfig(nbits=4, weight_threshold=100)))
    quantized = cto.linear_quantize_weights(dense16, cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(weight_threshold=100)))
    joint = cto.linear_quantize_weights(sparse18, cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(weight_threshold=100)), joint_compression=True)
    joint_lut = cto.palettize_weights(sparse18, cto.OptimizationConfig(
        global_config=cto.OpPalettizerConfig(nbits=4, mode="uniform", granularity="per_grouped_channel", group_size=1,
                                             weight_threshold=100)), joint_compression=True)
    palettized18 = cto.palettize_weights(dense18, cto.OptimizationConfig(
        global_config=cto.OpPalettizerConfig(nbits=2, weight_threshold=100)))
    quantized18 = cto.linear_quantize_weights(dense18, cto.OptimizationConfig(
        global_config=cto.OpLinearQuantizerConfig(mode="linear", dtype="int4", granularity="per_channel",
                                                  weight_threshold=100)))
    models = {"dense16": dense16, "sparse16": sparse16, "sparse18": sparse18, "palettized": palettized,
              "quantized": quantized, "joint": joint, "joint_lut": joint_lut, "palettized18": palettized18,
              "quantized18": quantized18}
    return {name: (model, _save(model, root / f"{name}.mlpackage")) for name, model in models.items()}


def _weight_bin(path: str) -> str:
    return os.path.join(path, "Data", "com.apple.CoreML", "weights", "weight.bin")


def test_dense_package_matches_coremltools_program(packages: dict) -> None:
    model, path = packages["dense16"]
    report = inspect_mlpackage(path)
    assert report.specification_version == 7
    assert report.functions == ("main",)
    assert report.op_counts == dict(Counter(op.op_type for op in _ops(model)))
    consts = {op.outputs[0].name: op.outputs[0].val for op in _ops(model, "const")
              if isinstance(op.outputs[0].val, np.ndarray) and op.outputs[0].val.size >= 10}
    assert {row.name for row in report.rows} == set(consts)
    for row in report.rows:
        value = consts[row.name]
        assert row.storage == "dense" and row.op_type == "const"
        assert row.shape == value.shape and row.dtype == "float16" and row.numel == value.size
        assert row.nonzeros == np.count_nonzero(value)
        assert row.bytes == value.nbytes
    assert report.total_bytes == os.path.getsize(_weight_bin(path))
    # dense_bytes is computed in the file's order, the last blob unpadded as the converter writes it
    assert report.dense_bytes == report.total_bytes
    values = read_weights(path)
    for name, value in consts.items():
        np.testing.assert_array_equal(values[name], value)


@pytest.mark.parametrize("name, spec_version", [("sparse16", 7), ("sparse18", 9)])
def test_sparse_package_masks_and_bytes(packages: dict, name: str, spec_version: int) -> None:
    model, path = packages[name]
    dense_values = read_weights(packages["dense16"][1])
    report = inspect_mlpackage(path)
    assert report.specification_version == spec_version
    sparse_ops = _ops(model, "constexpr_sparse_to_dense")
    assert report.op_counts["constexpr_sparse_to_dense"] == len(sparse_ops) == 3
    values = read_weights(path)
    for op in sparse_ops:
        row = report.weight(op.outputs[0].name)
        nnz = op.nonzero_data.val.size
        assert row.storage == "sparse"
        assert row.nonzeros == nnz
        assert row.sparsity == pytest.approx(1 - nnz / row.numel)
        shape_bytes = 4 * len(row.shape) if spec_version == 7 else 0  # iOS16 keeps the shape as uint32s
        assert row.bytes == nnz * 2 + math.ceil(row.numel / 8) + shape_bytes
        # the decoded weight puts the kept values back where the (little-endian) mask says
        decoded = values[row.name]
        original = dense_values[row.name.removesuffix("_sparsified")]
        kept = decoded != 0
        assert kept.sum() == nnz
        np.testing.assert_array_equal(decoded[kept], original[kept])
        assert np.abs(original[~kept]).max() <= np.abs(original[kept]).min()  # magnitude pruning
    assert report.total_bytes == os.path.getsize(_weight_bin(path))
    assert report.dense_bytes >= inspect_mlpackage(packages["dense16"][1]).total_bytes
    assert report.ratio < 0.7


@pytest.mark.parametrize("name, storage", [("palettized", "palettized"), ("quantized", "quantized"),
                                           ("joint", "sparse+quantized"), ("joint_lut", "sparse+palettized"),
                                           ("palettized18", "palettized"), ("quantized18", "quantized")])
def test_compressed_weights(packages: dict, name: str, storage: str) -> None:
    path = packages[name][1]
    report = inspect_mlpackage(path)
    compressed = [row for row in report.rows if row.op_type.startswith("constexpr_")]
    assert len(compressed) == 3
    assert {row.storage for row in compressed} == {storage}
    assert all(row.dtype == "float16" for row in compressed)
    assert report.total_bytes == os.path.getsize(_weight_bin(path))
    if storage.startswith("sparse+"):
        sparse = inspect_mlpackage(packages["sparse18"][1])  # what was compressed: same masks
        for row in compressed:  # the mask is still readable, so the non-zeros are known
            assert row.nonzeros == sparse.weight(row.name).nonzeros
    elif name in ("palettized", "quantized"):  # iOS16 ops: not decoded, so the non-zeros are unknown
        assert all(row.nonzeros is None and row.sparsity is None for row in compressed)
        assert all(row.name not in read_weights(path) for row in compressed)  # no silent wrong decoding
    if not storage.startswith("sparse+"):
        assert all(row.bytes < 0.6 * row.numel * 2 for row in compressed)  # 2, 4 or 8 bits instead of 16
        assert report.total_bytes < report.dense_bytes


@pytest.mark.parametrize("name", ["sparse16", "sparse18", "joint", "joint_lut", "palettized18", "quantized18"])
def test_decoded_weights_equal_coremltools_decompression(packages: dict, name: str) -> None:
    """read_weights decodes every storage it claims to from the file alone, exactly as Core ML Tools
    decompresses its in-memory program (per-channel tables, scales and offsets, int4, uint2 and uint4 included)."""
    model, path = packages[name]
    values = read_weights(path)
    report = inspect_mlpackage(path)
    ops = {op.outputs[0].name: op for op in _ops(model) if op.op_type.startswith("constexpr_")}
    decoded = [row for row in report.rows if row.op_type.startswith("constexpr_")]
    assert len(decoded) == 3
    for row in decoded:
        expected = ops[row.name].materialized_val_inference()
        np.testing.assert_array_equal(values[row.name], expected)
        assert row.nonzeros == np.count_nonzero(expected)


def test_shared_mask_blob_is_counted_once(packages: dict) -> None:
    """Sparse + quantized: the quantize op and the sparse op read one mask blob; bytes count it once."""
    report = inspect_mlpackage(packages["joint"][1])
    for row in (r for r in report.rows if r.storage == "sparse+quantized"):
        channels = row.shape[0]  # one fp16 scale per output channel
        assert row.bytes == row.nonzeros + math.ceil(row.numel / 8) + 2 * channels
    joint_lut = inspect_mlpackage(packages["joint_lut"][1])
    for row in (r for r in joint_lut.rows if r.storage == "sparse+palettized"):
        tables = row.shape[0]  # one 16-entry fp16 table per output channel
        assert row.bytes == math.ceil(row.nonzeros * 4 / 8) + math.ceil(row.numel / 8) + tables * 16 * 2


def test_report_conveniences(packages: dict) -> None:
    report = inspect_mlpackage(packages["sparse16"][1])
    data = json.loads(json.dumps(report.as_dict()))
    assert data["total_bytes"] == report.total_bytes and len(data["rows"]) == len(report.rows)
    assert data["rows"][0]["shape"] == list(report.rows[0].shape)
    text = report.to_text()
    assert "constexpr_sparse_to_dense: 3" in text and "weight file:" in text
    assert all(row.name in text for row in report.rows)
    assert report.storage_counts() == {"sparse": 3, "dense": 2}  # the 7-element fc2 bias is inline, not a blob
    with pytest.raises(KeyError, match="no weight named 'nope'"):
        report.weight("nope")


def test_missing_and_unsupported_packages(tmp_path: object, packages: dict) -> None:
    with pytest.raises(FileNotFoundError, match="no such .mlpackage"):
        inspect_mlpackage(tmp_path / "missing.mlpackage")
    torch.manual_seed(0)
    traced = torch.jit.trace(nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(1, 4))
    legacy = ct.convert(traced, inputs=[ct.TensorType(shape=(1, 4))], convert_to="neuralnetwork")
    legacy.save(str(tmp_path / "legacy.mlmodel"))
    with pytest.raises(NotAPackageError, match="'neuralNetwork' model: only ML Programs"):
        inspect_mlpackage(tmp_path / "legacy.mlmodel")


def test_paths_that_are_not_packages(tmp_path: object) -> None:
    """Each gets NotAPackageError (an MLPackageError, a ValueError) naming the path and what it is."""
    (tmp_path / "empty.mlpackage").mkdir()
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 not a core ml model at all")
    (tmp_path / "notes.txt").write_text("hello")
    cases = {
        tmp_path / "empty.mlpackage": "no Manifest.json in this directory: it is not an .mlpackage",
        tmp_path / "model.pt": "not a Core ML model file",
        tmp_path / "notes.txt": "not a Core ML model file",
    }
    for path, message in cases.items():
        with pytest.raises(NotAPackageError, match=message) as caught:
            inspect_mlpackage(path)
        assert caught.value.path == str(path) and str(caught.value).startswith(f"{path}: ")
        assert isinstance(caught.value, MLPackageError) and isinstance(caught.value, ValueError)


def _damaged_copy(packages: dict, tmp_path: object, name: str = "sparse18") -> str:
    copy = tmp_path / "damaged.mlpackage"
    shutil.copytree(packages[name][1], copy)
    return str(copy)


def test_damaged_weight_file(tmp_path: object, packages: dict) -> None:
    copy = _damaged_copy(packages, tmp_path, "dense16")
    with open(_weight_bin(copy), "r+b") as handle:  # overwrite the first blob's sentinel
        handle.seek(64)
        handle.write(b"\0\0\0\0")
    with pytest.raises(DamagedPackageError, match=r"weights/weight.bin: no blob header at offset 64 .*damaged"):
        inspect_mlpackage(copy)


def test_truncated_weight_file_is_damaged_not_sparser(tmp_path: object, packages: dict) -> None:
    """Cut inside the last blob (a mask): the first blobs still read, but the package is reported damaged
    instead of a sparse weight with fewer non-zeros (np.unpackbits would pad the short mask with zeros)."""
    copy = _damaged_copy(packages, tmp_path)
    size = os.path.getsize(_weight_bin(copy))
    with open(_weight_bin(copy), "r+b") as handle:
        handle.truncate(size - 40)
    with pytest.raises(DamagedPackageError, match=r"weights/weight.bin: .* past the end of the file .* truncated") \
            as caught:
        inspect_mlpackage(copy)
    assert caught.value.file == "weights/weight.bin" and caught.value.path == copy
    with pytest.raises(DamagedPackageError):
        read_weights(copy)
    with open(_weight_bin(copy), "r+b") as handle:  # cut inside the first blob's header
        handle.truncate(70)
    with pytest.raises(DamagedPackageError, match="outside the file"):
        inspect_mlpackage(copy)
    with open(_weight_bin(copy), "r+b") as handle:  # only part of the file header
        handle.truncate(10)
    with pytest.raises(DamagedPackageError, match="shorter than the 64-byte file header"):
        inspect_mlpackage(copy)


def test_blob_smaller_than_its_value(tmp_path: object, packages: dict) -> None:
    """A blob whose recorded size is too small for the value's type and shape is damage, not a short read."""
    copy = _damaged_copy(packages, tmp_path)
    with open(_weight_bin(copy), "r+b") as handle:
        handle.seek(64 + 8)  # the first blob header's size field
        size = int.from_bytes(handle.read(8), "little")
        handle.seek(64 + 8)
        handle.write((size - 1).to_bytes(8, "little"))
    with pytest.raises(DamagedPackageError, match=rf"holds {size - 1} bytes, but its value .* needs {size}"):
        inspect_mlpackage(copy)


def test_a_manifest_cannot_point_outside_the_package(tmp_path: object, packages: dict) -> None:
    copy = _damaged_copy(packages, tmp_path)
    manifest = os.path.join(copy, "Manifest.json")
    with open(manifest) as handle:
        data = json.load(handle)
    data["itemInfoEntries"][data["rootModelIdentifier"]]["path"] = "../../Manifest.json"
    with open(manifest, "w") as handle:
        json.dump(data, handle)
    with pytest.raises(DamagedPackageError, match="the root model path '../../Manifest.json' leaves the package"):
        inspect_mlpackage(copy)


def test_missing_parts_of_a_package(tmp_path: object, packages: dict) -> None:
    copy = _damaged_copy(packages, tmp_path)
    os.remove(_weight_bin(copy))
    with pytest.raises(DamagedPackageError, match="weights/weight.bin: the model refers to this weight file"):
        inspect_mlpackage(copy)
    os.remove(os.path.join(copy, "Data", "com.apple.CoreML", "model.mlmodel"))
    with pytest.raises(DamagedPackageError, match="Data/com.apple.CoreML/model.mlmodel: the root model .* missing"):
        inspect_mlpackage(copy)
    with open(os.path.join(copy, "Manifest.json"), "w") as handle:
        handle.write("{not json")
    with pytest.raises(DamagedPackageError, match="Manifest.json: cannot be read as a package manifest"):
        inspect_mlpackage(copy)
