"""`sparsify.export.coreai.export_coreai`: exactly the pruned zeros stored sparse in a Core AI ``.aimodel``,
jointly quantized or palettized, read back, and run on this machine against torch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sparsify
from sparsify.export.aimodel_reader import decode_raw

REASON = ("Core AI (coreai-core, coreai-torch) is not installed: pip install 'sparsify-coreml[coreai]' "
          "(Linux x86-64, CPython 3.11+)")


def _coreai() -> None:
    pytest.importorskip("coreai", reason=REASON)
    pytest.importorskip("coreai_torch", reason=REASON)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 6 * 6, 10)).eval()


def _x() -> torch.Tensor:
    return torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(1))


def test_decode_raw_unpacks_sub_byte_values_least_significant_bit_first() -> None:
    # four 4-bit values 1, 2, 3, 15 packed low nibble first; nine 1-bit values
    assert decode_raw(np.array([0x21, 0xF3], dtype=np.uint8), (4,), "ui4").tolist() == [1, 2, 3, 15]
    bits = decode_raw(np.array([0b10000101, 0b1], dtype=np.uint8), (3, 3), "ui1")
    assert bits.reshape(-1).tolist() == [1, 0, 1, 0, 0, 0, 0, 1, 1]
    assert decode_raw(np.array([0, 0, 128, 63], dtype=np.uint8), (1,), "f32").tolist() == [1.0]


def test_pruned_weights_are_stored_sparse_exactly_and_the_saved_model_runs(tmp_path: Path) -> None:
    _coreai()
    from sparsify.export.coreai import export_coreai

    pruned = sparsify.prune(_model(), 0.75)
    report = export_coreai(pruned, _x(), tmp_path / "m.aimodel", extra_inputs=[torch.randn(2, 8, 8, 8)])
    rows = {r.name: (r.storage, r.nonzeros, r.torch_nonzeros, r.pruned) for r in report.rows}
    assert rows == {"0.weight": ("sparse", 1152, 1152, True), "0.bias": ("dense", 64, 64, False),
                    "3.weight": ("sparse", 5760, 5760, True), "3.bias": ("dense", 10, 10, False)}
    # values + one bit per element, float32
    assert report.row("0.weight").bytes == 1152 * 4 + 4608 // 8
    assert report.row("3.weight").bytes == 5760 * 4 + 23040 // 8
    assert report.total_bytes == (tmp_path / "m.aimodel" / "main.mlirb").stat().st_size
    assert report.dense_bytes is not None and report.total_bytes < 0.31 * report.dense_bytes
    assert report.inputs_checked == 2 and report.max_abs_diff < 1e-5 and report.compression_abs_diff == 0.0
    assert report.warnings == []
    values = dict(zip([r.name for r in report.rows], report.package.values))  # decoded from the file
    assert np.array_equal(values["3.weight"], pruned[3].weight.detach().numpy())


@pytest.mark.parametrize("choice", [
    {"granularity": "per_channel"}, {"block_size": 2}, {"n_m_ratio": (2, 4)}, {"pattern": "1x4"}, {},
], ids=["channels", "blocks", "n:m", "tiles", "unstructured"])
def test_every_pattern_is_stored_as_its_mask(tmp_path: Path, choice: dict) -> None:
    _coreai()
    from sparsify.export.coreai import export_coreai

    pruned = sparsify.prune(_model(), 0.5, **choice)
    report = export_coreai(pruned, _x(), tmp_path / "m.aimodel", measure_dense=False)
    values = dict(zip([r.name for r in report.rows], report.package.values))
    for name, module in (("0.weight", pruned[0]), ("3.weight", pruned[3])):
        row = report.row(name)
        assert row.storage == "sparse" and row.nonzeros == row.torch_nonzeros == int(module.weight.count_nonzero())
        assert np.array_equal(values[name], module.weight.detach().numpy())


@pytest.mark.parametrize(("kwargs", "storage", "value_bytes"), [
    ({"quantize": "int8"}, "sparse+quantized int8", 1), ({"quantize": "fp8_e4m3fn"}, "sparse+quantized fp8_e4m3fn", 1),
    ({"palettize_bits": 4}, "sparse+palettized 4 bits", 0.5),
])
def test_joint_compression_is_smaller_and_runs_as_torch_with_the_stored_weights(
        tmp_path: Path, kwargs: dict, storage: str, value_bytes: float) -> None:
    _coreai()
    from sparsify.export.coreai import export_coreai

    pruned = sparsify.prune(_model(), 0.75)
    sparse = export_coreai(pruned, _x(), tmp_path / "s.aimodel", measure_dense=False)
    joint = export_coreai(pruned, _x(), tmp_path / "j.aimodel", measure_dense=False, **kwargs)
    row = joint.row("3.weight")
    assert row.storage == storage and row.nonzeros == 5760
    assert row.bytes >= 5760 * value_bytes + 23040 // 8 and row.bytes < 0.5 * sparse.row("3.weight").bytes
    assert joint.total_bytes < 0.5 * sparse.total_bytes
    assert joint.max_abs_diff < 1e-5  # the .aimodel computes what torch computes with the stored weights
    assert 0 < joint.compression_abs_diff < 0.05 and 0 < row.error < 0.05
    assert joint.row("3.bias").storage == "dense"


def test_zeros_without_a_mask_are_reported_and_sparse_weights_all_stores_them(
        tmp_path: Path, sparsify_logs: pytest.LogCaptureFixture) -> None:
    _coreai()
    from sparsify.export.coreai import export_coreai

    model = _model()
    with torch.no_grad():
        model[3].weight[:, ::2] = 0  # 11520 zeros set by hand: no mask, no pruning record
    report = export_coreai(model, _x(), tmp_path / "a.aimodel", measure_dense=False)
    assert report.row("3.weight").storage == "dense"
    assert report.warnings[0].startswith("no pruned weight found")
    assert ("3.weight: 11520 of its 23040 weights are exactly zero but it has no mask or pruning record, so they "
            "are stored dense; sparse_weights='all' stores them sparse") in report.warnings[1]
    assert any("3.weight: 11520 of its" in r.getMessage() for r in sparsify_logs.records)
    every = export_coreai(model, _x(), tmp_path / "b.aimodel", measure_dense=False, sparse_weights="all")
    assert every.row("3.weight").storage == "sparse" and every.row("3.weight").nonzeros == 11520


def test_an_existing_path_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    _coreai()
    from sparsify.export.coreai import export_coreai

    path = tmp_path / "m.aimodel"
    pruned = sparsify.prune(_model(), 0.75)
    export_coreai(pruned, _x(), path, measure_dense=False, verify=False)
    before = (path / "main.mlirb").read_bytes()
    with pytest.raises(FileExistsError, match=rf"path='{path}' exists; pass overwrite=True to replace it"):
        export_coreai(pruned, _x(), path, measure_dense=False)
    assert (path / "main.mlirb").read_bytes() == before
    export_coreai(sparsify.prune(_model(), 0.9), _x(), path, overwrite=True, measure_dense=False, verify=False)
    assert (path / "main.mlirb").read_bytes() != before
    notes = tmp_path / "notes.aimodel"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an .aimodel folder"):
        export_coreai(pruned, _x(), notes, overwrite=True, measure_dense=False)
    assert (notes / "todo.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.aimodel", "notes.aimodel"]  # no staging left


def test_a_mismatch_past_the_tolerance_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    _coreai()
    from sparsify.export.coreai import ExportMismatchError, export_coreai

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(256, 256) for _ in range(4)]).eval()
    with pytest.raises(ExportMismatchError, match=r"differs from torch on input 0, output 0: max \|aimodel - torch\| "
                       r"= .* outside atol=0 \+ rtol=0\*\|torch\|; nothing was written"):
        export_coreai(model, torch.randn(64, 256), tmp_path / "m.aimodel", atol=0, rtol=0, measure_dense=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_bad_arguments_are_refused_before_any_work(tmp_path: Path) -> None:
    from sparsify.export.coreai import export_coreai

    model = _model()
    with pytest.raises(ValueError, match=r"export_coreai.palettize_bits=5 is invalid: allowed values are None, 1, 2"):
        export_coreai(model, _x(), tmp_path / "m.aimodel", palettize_bits=5)
    with pytest.raises(ValueError, match=r"quantize='int4' is invalid: allowed values are None, 'int8', 'fp8_e4m3fn'"):
        export_coreai(model, _x(), tmp_path / "m.aimodel", quantize="int4")
    with pytest.raises(ValueError, match=r"path='.*m.mlpackage' is invalid: the name must end in '.aimodel'"):
        export_coreai(model, _x(), tmp_path / "m.mlpackage")
    with pytest.raises(TypeError, match="TorchScript cannot be converted to Core AI"):
        export_coreai(torch.jit.trace(model, _x()), _x(), tmp_path / "m.aimodel")
    assert list(tmp_path.iterdir()) == []


def test_inspect_refuses_a_damaged_or_foreign_folder(tmp_path: Path) -> None:
    from sparsify.export.aimodel_reader import inspect_aimodel
    from sparsify.export.errors import DamagedPackageError, NotAPackageError

    with pytest.raises(FileNotFoundError, match="no such .aimodel"):
        inspect_aimodel(tmp_path / "none.aimodel")
    (tmp_path / "x.aimodel").mkdir()
    with pytest.raises(NotAPackageError, match="no main.mlirb"):
        inspect_aimodel(tmp_path / "x.aimodel")
    (tmp_path / "x.aimodel" / "main.mlirb").write_bytes(b"ML\xefR junk")
    (tmp_path / "x.aimodel" / "main.hash").write_bytes(b"\0" * 32)
    with pytest.raises(DamagedPackageError, match="main.mlirb: its SHA-256 differs from main.hash"):
        inspect_aimodel(tmp_path / "x.aimodel")
    with pytest.raises(ValueError, match="over the limit of 10 bytes"):
        inspect_aimodel(tmp_path / "x.aimodel", max_bytes=10)


def test_inspect_reads_a_saved_model_without_running_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _coreai()
    from sparsify.export.aimodel_reader import inspect_aimodel
    from sparsify.export.coreai import export_coreai

    caplog.set_level(logging.INFO, logger="sparsify")
    export_coreai(sparsify.prune(_model(), 0.75), _x(), tmp_path / "m.aimodel", quantize="int8", measure_dense=False,
                  verify=False)
    report = inspect_aimodel(tmp_path / "m.aimodel")
    assert report.storage_counts() == {"sparse+quantized int8": 2, "dense": 2}
    assert [(w.shape, w.nonzeros) for w in report.weights if w.storage != "dense"] == [((64, 8, 3, 3), 1152),
                                                                                         ((10, 2304), 5760)]
    assert report.op_counts["coreai.blockwise_shift_scale"] == 2 and report.inputs == {"input0": (2, 8, 8, 8)}
    assert "main.mlirb" in report.to_text() and report.as_dict()["weights"][0]["storage"] == "sparse+quantized int8"


def test_cli_exports_an_aimodel_and_inspects_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _coreai()
    from sparsify.cli import main

    pruned = sparsify.prune(_model(), 0.75)
    torch.export.save(torch.export.export(pruned, (_x(),)), tmp_path / "m.pt2")
    assert main(["export", str(tmp_path / "m.pt2"), str(tmp_path / "m.aimodel")]) == 0
    out = capsys.readouterr().out
    assert "2 of 4 weights stored sparse" in out and "ran on this machine on 1 input(s)" in out
    assert main(["inspect", str(tmp_path / "m.aimodel"), "--format", "json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert [w["storage"] for w in data["weights"]].count("sparse") == 2
    assert main(["export", str(tmp_path / "m.pt2"), str(tmp_path / "x.mlpackage"), "--to", "coreai"]) == 1
    assert "--to coreai writes an .aimodel folder" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "none.aimodel")]) == 1
    assert "no such .aimodel" in capsys.readouterr().err


def test_a_prepared_model_and_token_ids(tmp_path: Path) -> None:
    _coreai()
    from sparsify.export.coreai import export_coreai

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 32), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 50)).eval()
    pruner = sparsify.Pruner(model, sparsify.PrunerConfig(global_config={"target_sparsity": 0.5}))
    pruner.prepare(inplace=True)
    pruner.step()  # masks installed, not finalized: export_coreai bakes them into its own copy
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))  # int64: fed as int32
    report = export_coreai(model, ids, tmp_path / "m.aimodel", measure_dense=False,
                           extra_inputs=[torch.randint(0, 50, (2, 7))])
    assert [(r.name, r.storage, r.nonzeros) for r in report.rows if r.pruned] == [
        ("1.weight", "sparse", 1024), ("3.weight", "sparse", 1600)]
    assert report.row("0.weight").storage == "dense" and report.inputs_checked == 2 and report.max_abs_diff < 1e-5
    assert hasattr(model[1], "weight_mask")  # the model passed in keeps its masks


def test_a_pruned_weight_kept_dense_because_sparse_is_larger_is_said(tmp_path: Path) -> None:
    _coreai()
    from sparsify.export.coreai import export_coreai

    pruned = sparsify.prune(_model(), 0.1)  # 4-bit indices + a 1-bit mask beat 4-bit dense above 1/4 zeros
    report = export_coreai(pruned, _x(), tmp_path / "m.aimodel", palettize_bits=4, measure_dense=False)
    row = report.row("3.weight")
    # 4-bit indices, the palette, and lut_to_dense's int16 axis
    assert row.storage == "palettized 4 bits" and row.bytes == 23040 // 2 + 16 * 4 + 2
    assert row.nonzeros == 20736 == row.torch_nonzeros  # decoded: the palette has no zero entry here
    assert ("3.weight: pruned, but its 2304 zeros are stored dense: sparse storage would take 13312 bytes against "
            "11584 (palettized 4 bits)") in report.warnings
    assert report.max_abs_diff < 1e-5
