"""The ``sparsify`` command on real files: saved state dicts, TorchScript, torch.export programs, .mlpackages.

Exit codes are part of the interface: 0 success, 1 failure (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig
from sparsify.cli import main
from sparsify.demo.models import SmallCNN
from sparsify.model_files import read_tensor_file

SHAPE = (1, 1, 8, 8)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """main() configures logging for its process; keep that from leaking into other tests."""
    names = ("sparsify", "coremltools", "")
    levels = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SmallCNN pruned to 80 % and finalized, saved in every format the CLI reads."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    model = SmallCNN(SHAPE[1:]).eval()
    config = MagnitudePrunerConfig(global_config=ModuleMagnitudePrunerConfig(target_sparsity=0.8))
    pruner = MagnitudePruner(model, config)
    pruner.prepare(inplace=True)
    pruner.step()
    model = pruner.finalize(inplace=True).eval()
    example = torch.rand(SHAPE)
    paths = {
        "state_dict": folder / "model.pt",
        "checkpoint": folder / "checkpoint.pt",
        "torchscript": folder / "traced.pt",
        "dense_torchscript": folder / "dense.pt",
        "exported": folder / "program.pt2",
        "pickled": folder / "pickled.pt",
        "not_a_model": folder / "numbers.pt",
        "garbage": folder / "garbage.pt",
    }
    torch.save(model.state_dict(), paths["state_dict"])
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, paths["checkpoint"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, example).save(str(paths["torchscript"]))
        torch.jit.trace(SmallCNN(SHAPE[1:]).eval(), example).save(str(paths["dense_torchscript"]))
    torch.export.save(torch.export.export(model, (example,)), paths["exported"])
    torch.save(model, paths["pickled"])
    torch.save({"lr": 0.1, "epoch": 3}, paths["not_a_model"])
    paths["garbage"].write_text("not a model")
    return paths


@pytest.fixture(scope="module")
def package(saved: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TorchScript model exported by ``sparsify export`` (done once for the module)."""
    out = tmp_path_factory.mktemp("export") / "model.mlpackage"
    assert main(["export", str(saved["torchscript"]), str(out), "--input-shape", "1,1,8,8"]) == 0
    return out


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    assert info.value.code == 2
    return capsys.readouterr().err


# -- help and usage ---------------------------------------------------------------------------------


def test_help_teaches_with_examples() -> None:
    result = subprocess.run([sys.executable, "-m", "sparsify", "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for text in ("demo", "report", "export", "inspect", "examples:", "sparsify export traced.pt model.mlpackage",
                 "exit codes: 0 success, 1 failure", "2 bad usage"):
        assert text in result.stdout


@pytest.mark.parametrize("command", ["report", "export", "inspect"])
def test_command_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"sparsify {command}" in out


def test_demo_help_is_the_tutorials(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: sparsify demo" in out and "--quick" in out and "--dataset" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("sparsify ")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], saved: dict[str, Path]) -> None:
    assert "required: COMMAND" in usage_error(capsys)
    assert "invalid choice: 'shrink'" in usage_error(capsys, "shrink")
    assert "required: model, -o/--output" in usage_error(capsys, "prune")
    assert "required: model" in usage_error(capsys, "report")
    assert "unrecognized arguments: --bogus" in usage_error(capsys, "report", saved["state_dict"], "--bogus")
    assert "invalid choice: 'xml'" in usage_error(capsys, "report", saved["state_dict"], "--format", "xml")
    err = usage_error(capsys, "export", saved["torchscript"], "x.mlpackage", "--input-shape", "1,a")
    assert "--input-shape '1,a' is invalid: allowed positive integers separated by commas" in err


# -- report ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["state_dict", "checkpoint", "torchscript", "exported"])
def test_report_reads_every_format(capsys: pytest.CaptureFixture[str], saved: dict[str, Path], kind: str) -> None:
    code, out, err = run(capsys, "report", saved[kind])
    assert code == 0, err
    assert "80.0%" in out and "total" in out and "86,816" in out
    assert "Core ML weight.bin estimate" in out


def test_report_formats(capsys: pytest.CaptureFixture[str], saved: dict[str, Path]) -> None:
    code, out, _ = run(capsys, "report", saved["state_dict"], "--format", "json", "--requested", "0.8",
                       "--rule", "metadata", "--target", "iOS18")
    assert code == 0
    data = json.loads(out)
    assert data["rule"] == "metadata" and data["target"] == "iOS18"
    assert {layer["name"] for layer in data["layers"]} == {"0", "4", "9", "12"}
    assert abs(data["total"]["achieved"] - 0.8) < 1e-3 and data["total"]["requested"] == pytest.approx(0.8)
    code, out, _ = run(capsys, "report", saved["state_dict"], "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("name,") and out.splitlines()[-1].startswith("total,")
    code, out, _ = run(capsys, "report", saved["state_dict"], "--format", "markdown")
    assert code == 0 and out.startswith("| layer |")


@pytest.mark.parametrize(("kind", "message"), [
    ("pickled", "is refused: the file refers to sparsify.demo.models.SmallCNN: only tensors and plain data are read"),
    ("not_a_model", r"holds a dict with keys \['epoch', 'lr'\] but no state dict"),
    ("garbage", "is refused: not a zip archive written by torch.save"),
])
def test_report_failures_exit_1(capsys: pytest.CaptureFixture[str], saved: dict[str, Path], kind: str,
                                message: str) -> None:
    code, out, err = run(capsys, "report", saved[kind])
    assert code == 1 and out == ""
    assert err.startswith("error: ")
    assert re.search(message, err), err


def test_report_missing_file_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "report", tmp_path / "nope.pt")
    assert code == 1 and "is not a file" in err


# -- files from strangers: nothing in them runs -------------------------------------------------------


def test_reader_returns_what_torch_loads(tmp_path: Path, saved: dict[str, Path]) -> None:
    """read_tensor_file against torch's own loaders: same keys, order, values, dtypes, shapes and strides."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    obj = {
        "dtypes": {str(dtype): torch.tensor([0, 1, 2, 3]).to(dtype) for dtype in (
            torch.float16, torch.bfloat16, torch.float64, torch.bool, torch.int8, torch.uint8, torch.int64,
            torch.complex64)},
        "views": [base, base.t(), base[1:, ::2]],  # one storage, strided and offset views
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5),
        "parameter": torch.nn.Parameter(torch.ones(2, 2)),
        "plain": (1, 2.5, "text", None, True, {"nested": [1, 2]}),
        "size": torch.Size([2, 3]),
        "dtype": torch.float16,
    }
    path = tmp_path / "many.pt"
    torch.save(obj, path)
    expected, got = torch.load(path, weights_only=True), read_tensor_file(path)
    for name, tensor in expected["dtypes"].items():
        assert got["dtypes"][name].dtype == tensor.dtype and torch.equal(got["dtypes"][name], tensor)
    for ours, theirs in zip(got["views"], expected["views"]):
        assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()
        assert ours.storage_offset() == theirs.storage_offset()
    assert got["empty"].shape == (0, 3) and got["scalar"].item() == 2.5
    assert torch.equal(got["parameter"], torch.ones(2, 2))
    assert got["plain"] == expected["plain"] and got["size"] == (2, 3) and got["dtype"] is torch.float16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(saved["torchscript"])).state_dict()
    ours = read_tensor_file(saved["torchscript"])
    assert list(ours) == list(scripted) and all(torch.equal(ours[k], scripted[k]) for k in scripted)
    program = torch.export.load(str(saved["exported"])).state_dict
    ours = read_tensor_file(saved["exported"])
    assert set(ours) == set(program) and all(torch.equal(ours[k], program[k]) for k in program)



class _Payload:
    """Unpickled, it creates the folder ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


def _with_member(source: Path, target: Path, member_suffix: str | tuple[str, ...], data: bytes) -> Path:
    """A copy of the zip ``source`` whose member ending in ``member_suffix`` is replaced by ``data``."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as copy:
        names = [name for name in original.namelist() if name.endswith(member_suffix)]
        assert names, member_suffix
        for info in original.infolist():
            copy.writestr(info, data if info.filename == names[0] else original.read(info))
    return target


@pytest.fixture
def crafted(saved: dict[str, Path], tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Files whose pickle creates ``marker`` when unpickled with plain pickle (checked here first)."""
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker), protocol=2)
    pickle.loads(payload)  # the payload is live: plain unpickling runs it
    assert marker.is_dir()
    marker.rmdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as nested:  # a torch.save zip holding the payload
        nested.writestr("archive/data.pkl", payload)
    files = {
        "raw_pickle": tmp_path / "raw.pt",
        "torch_save": _with_member(saved["state_dict"], tmp_path / "evil.pt", "/data.pkl", payload),
        "torchscript": _with_member(saved["torchscript"], tmp_path / "evil_ts.pt", "/data.pkl", payload),
        # torch >= 2.8 writes data/sample_inputs/model.pt, older releases serialized_example_inputs.pt
        "exported_inputs": _with_member(saved["exported"], tmp_path / "evil_inputs.pt2",
                                        ("/sample_inputs/model.pt", "serialized_example_inputs.pt"), buffer.getvalue()),
    }
    files["raw_pickle"].write_bytes(payload)
    return marker, files


@pytest.mark.parametrize("command", ["report", "export"])
@pytest.mark.parametrize("name", ["raw_pickle", "torch_save", "torchscript", "exported_inputs"])
def test_crafted_files_are_refused_and_never_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 crafted: tuple[Path, dict[str, Path]], command: str,
                                                 name: str) -> None:
    marker, files = crafted
    argv = [command, files[name]] + ([tmp_path / "out.mlpackage", "--input-shape", "1,1,8,8"]
                                     if command == "export" else [])
    code, out, err = run(capsys, *argv)
    assert not marker.exists(), "the file's code ran"
    if command == "report" and name == "exported_inputs":  # report reads the weights only: fine
        assert code == 0 and "80.0%" in out
        return
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1, err
    assert "is refused:" in err
    assert "posix.mkdir" in err or "not a zip archive" in err or "a damaged torch.save zip" in err, err


def test_exported_weights_with_a_pickle_are_refused(capsys: pytest.CaptureFixture[str], saved: dict[str, Path],
                                                    tmp_path: Path, crafted: tuple[Path, dict[str, Path]]) -> None:
    """A weight record marked ``use_pickle`` (torch.export.load unpickles it with weights_only=False)."""
    marker, _ = crafted
    with zipfile.ZipFile(saved["exported"]) as archive:
        config_name = next((n for n in archive.namelist() if n.endswith("_weights_config.json")), None)
        if config_name is None:
            pytest.skip(f"torch {torch.__version__} writes no weights config (the pt2 archive came in torch 2.8)")
        config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    evil = _with_member(saved["exported"], tmp_path / "evil.pt2", config_name, json.dumps(config).encode())
    evil = _with_member(evil, tmp_path / "evil2.pt2", f"/data/weights/{first['path_name']}",
                        pickle.dumps(_Payload(marker), protocol=2))
    for argv in (["report", evil], ["export", evil, tmp_path / "x.mlpackage"]):
        code, _, err = run(capsys, *argv)
        expected = "not a zip archive" if argv[0] == "report" else "a pickle outside a torch.save zip"
        assert code == 1 and "is refused:" in err and expected in err, err
    assert not marker.exists()


def test_a_tensor_outside_its_storage_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A size that reaches past the stored bytes (out-of-bounds reads in a loader that trusts it)."""
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        text = archive.read(name)
    lying = text.replace(b"K\x04\x85", b"M\x00\x10\x85")  # size (4,) -> (4096,)
    assert lying != text
    _with_member(path, tmp_path / "lying.pt", "/data.pkl", lying)
    code, _, err = run(capsys, "report", tmp_path / "lying.pt")
    assert code == 1 and "a tensor of size (4096,) reaches element 4095 of a storage of 4" in err


def test_size_limits(capsys: pytest.CaptureFixture[str], saved: dict[str, Path], package: Path,
                     tmp_path: Path) -> None:
    size = saved["state_dict"].stat().st_size
    code, _, err = run(capsys, "--max-file-size", "1K", "report", saved["state_dict"])
    assert code == 1 and f"the model file is {size:,} bytes, over the limit of 1,024 bytes" in err
    assert "--max-file-size" in err
    code, _, err = run(capsys, "--max-file-size", "10K", "inspect", package)
    assert code == 1 and "over the limit of 10,240 bytes" in err
    assert run(capsys, "--max-file-size", "1M", "report", saved["state_dict"])[0] == 0
    assert "--max-file-size '1X' is invalid" in usage_error(capsys, "--max-file-size", "1X", "report", "x.pt")
    big = tmp_path / "big.yaml"  # configs: sparsify.safe_io's limit, 10 MiB
    big.write_text("global_config:\n  target_sparsity: 0.5\n" + "# padding\n" * 1_100_000)
    assert main(["dry-run", "sparsify.demo.models:SmallCNN", str(big)]) == 1
    err = capsys.readouterr().err
    assert f"error: {big}: the file is 11,000,038 bytes; the limit is 10,485,760 bytes" in err
    assert err.count("\n") == 1


def test_yaml_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("global_config:\n  target_sparsity: [0.5\n")
    assert main(["dry-run", "sparsify.demo.models:SmallCNN", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err == f"error: {broken}:3: invalid YAML: while parsing a flow sequence did not find expected ',' or ']'\n"
    bomb = tmp_path / "bomb.yaml"  # "billion laughs": 9 levels of 9 aliases, 537 bytes
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb.write_text("\n".join(lines) + "\n")
    assert main(["dry-run", "sparsify.demo.models:SmallCNN", str(bomb)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bomb}:7: the document expands to more than 1,000,000 values")
    assert err.count("\n") == 1
    assert main(["dry-run", "sparsify.demo.models:SmallCNN", str(tmp_path / "none.yaml"), "--format", "inc"]) == 1
    assert "config path" in capsys.readouterr().err


def test_inspect_non_packages_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    folder = tmp_path / "empty.mlpackage"
    folder.mkdir()
    for path, what in ((text_file, "a file"), (folder, "a folder without Manifest.json")):
        code, out, err = run(capsys, "inspect", path)
        assert code == 1 and out == ""
        assert err == f"error: {path} is {what}, not an .mlpackage\n"


# -- export and inspect --------------------------------------------------------------------------


def test_export_torchscript_writes_a_verified_package(capsys: pytest.CaptureFixture[str], package: Path) -> None:
    capsys.readouterr()
    assert (package / "Manifest.json").is_file()
    code, out, err = run(capsys, "inspect", package)
    assert code == 0, err
    assert "constexpr_sparse_to_dense" in out and "sparse" in out
    code, out, _ = run(capsys, "inspect", package, "--format", "json")
    data = json.loads(out)
    assert data["op_counts"]["constexpr_sparse_to_dense"] >= 2
    assert data["total_bytes"] < data["dense_bytes"]


def test_export_prints_the_verification(capsys: pytest.CaptureFixture[str], saved: dict[str, Path],
                                        tmp_path: Path) -> None:
    out_path = tmp_path / "program.mlpackage"
    code, out, err = run(capsys, "export", saved["exported"], out_path)  # a torch.export program knows its shapes
    assert code == 0, err
    assert out_path.is_dir()
    assert f"verified {out_path}: " in out and "constexpr_sparse_to_dense op(s)" in out and "x smaller" in out
    code, _, err = run(capsys, "export", saved["exported"], out_path)
    assert code == 1 and "exists; pass --force to overwrite it" in err


def test_export_failures_exit_1(capsys: pytest.CaptureFixture[str], saved: dict[str, Path], tmp_path: Path) -> None:
    out_path = tmp_path / "x.mlpackage"
    code, _, err = run(capsys, "export", saved["state_dict"], out_path)
    assert code == 1 and "is a state dict: export needs the model's code too" in err
    code, _, err = run(capsys, "export", saved["torchscript"], out_path)
    assert code == 1 and "give the input's shape with --input-shape" in err
    code, _, err = run(capsys, "export", saved["torchscript"], tmp_path / "x.zip", "--input-shape", "1,1,8,8")
    assert code == 1 and "must end in '.mlpackage'" in err
    assert not out_path.exists()


def test_export_strict_fails_on_warnings(capsys: pytest.CaptureFixture[str], saved: dict[str, Path],
                                         tmp_path: Path) -> None:
    """An unpruned model exports dense with a warning: fine normally, a failure with --strict."""
    argv = ["export", saved["dense_torchscript"], tmp_path / "dense.mlpackage", "--input-shape", "1x1x8x8",
            "--precision", "float32"]
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "compute_precision=float32" in out and "warning: no pruned weight found" in out
    code, _, err = run(capsys, *argv, "--force", "--strict")
    assert code == 1 and "error: --strict: the export has 1 warning(s)" in err


def test_inspect_missing_package_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "inspect", tmp_path / "none.mlpackage")
    assert code == 1 and "no such .mlpackage" in err


# -- demo -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_runs_the_tutorial(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "demo", "--quick", "--no-export", "--out", tmp_path)
    assert code == 0, err
    assert "pruning report (Core ML Tools' format):" in out
    assert "summary (conv + linear weights" in out and "pruned 70/80 %" in out


def test_demo_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "demo", "--dataset", "mnist", "--data-root", tmp_path, "--out", tmp_path)
    assert code == 1 and "error: DatasetNotFoundError: cannot load dataset 'mnist'; tried:" in err
    assert len(err.splitlines()) == 1
    assert "--threads 0 is invalid: allowed an integer >= 1" in usage_error(capsys, "demo", "--threads", "0")
    assert "invalid choice: 'cifar'" in usage_error(capsys, "demo", "--dataset", "cifar")


# -- dry-run ------------------------------------------------------------------------------------


def test_dry_run_lists_every_module_and_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "prune.yaml"
    config.write_text('global_config:\n  target_sparsity: 0.8\nmodule_name_configs:\n  "9": null\n')
    assert main(["dry-run", "sparsify.demo.models:SmallCNN", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:8]}
    assert rows["0"][3] == "prune" and rows["4"][3] == "prune" and rows["12"][3] == "prune"
    legend = dict(line.split(" ", 1) for line in lines[8:-1])  # long cells are keys, spelled out below
    assert rows["9"][3] == "skip" and legend[rows["9"][4]] == "excluded by name rule '9'"
    assert rows["1"][1] == "BatchNorm2d" and legend[rows["1"][4]] == "type BatchNorm2d is not supported"
    assert legend[rows["0"][5]].startswith("pattern unstructured, criterion magnitude, final 0.8000, scope local")
    assert max(len(line) for line in lines[:8]) <= 100
    assert lines[-1] == "3 of 6 modules pruned, covering 21280 of 86912 listed weights"


def test_dry_run_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    refused = tmp_path / "refused.yaml"
    refused.write_text("global_config:\n  n_m_ratio: [1, 2]\n  param_name: bias\n")
    assert main(["dry-run", "sparsify.demo.models:SmallCNN", str(refused)]) == 1  # prepare() would refuse the biases
    assert "n_m_ratio needs a weight of rank >= 2" in capsys.readouterr().out
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("global_config:\n  target_sparsity: 7\n")
    assert main(["dry-run", "sparsify.demo.models:SmallCNN", str(invalid)]) == 1
    assert "target_sparsity=7.0 is invalid: allowed 0.0 <= target_sparsity <= 1.0" in capsys.readouterr().err
    assert main(["dry-run", "no.such.module:Model"]) == 1
    assert "cannot import it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["dry-run", "sparsify.demo.models:SmallCNN", "--format", "obs"])
    assert usage.value.code == 2


def test_dry_run_reads_gradual_and_inc_configs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    inc = tmp_path / "inc.yaml"
    inc.write_text("pruning_type: snip_momentum\npattern: 4x1\ntarget_sparsity: 0.9\npruning_scope: global\n")
    assert main(["dry-run", "sparsify.demo.models:SmallCNN", str(inc), "--format", "inc"]) == 0
    out = capsys.readouterr().out
    assert "snip_momentum" in out and "4x1" in out and "is not supported" in out


def test_prune_a_saved_model_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sparsify.demo.models import SmallCNN

    weights = tmp_path / "model.pt"
    torch.save(SmallCNN().state_dict(), weights)
    out = tmp_path / "pruned.pt"
    args = ["prune", "sparsify.demo.models:SmallCNN", "--weights", str(weights), "-o", str(out)]
    assert main([*args, "--sparsity", "0.75", "--granularity", "per_channel"]) == 0
    state = torch.load(out, weights_only=True)
    conv = state["4.weight"]
    assert int((conv.flatten(1).abs().sum(1) == 0).sum()) == 48  # 48 of 64 output channels, whole
    assert int((state["12.weight"] == 0).sum()) == 1920  # 75 % of 2560: the Linear falls back to per-scalar
    assert state["4._COREML_/weight/compression_type"].tolist() == [1]
    assert "saved the pruned model (state dict" in capsys.readouterr().out
    assert main([*args, "--sparsity", "0.5"]) == 1  # exists
    assert "pass --force" in capsys.readouterr().err
    traced = tmp_path / "pruned.ts"
    two_of_four = ["prune", "sparsify.demo.models:SmallCNN", "--n-m", "2:4", "--trace", "1,1,8,8", "-o", str(traced)]
    assert main(two_of_four) == 0
    program = torch.jit.load(str(traced))
    assert all(int((run == 0).sum()) == 2 for run in program.state_dict()["9.weight"].reshape(-1, 4))
    assert main(["prune", "sparsify.demo.models:SmallCNN", "--sparsity", "0.5", "--criterion", "snip",
                 "-o", str(tmp_path / "x.pt")]) == 1
    assert "criterion snip needs data" in capsys.readouterr().err
    assert main(["prune", "sparsify.demo.models:SmallCNN", "-o", str(tmp_path / "y.pt")]) == 1
    assert "give --sparsity" in capsys.readouterr().err


def test_prune_checks_its_output_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A wrong ``-o`` fails first (the factory is never imported) with the path in the message, and an
    existing file is replaced only with --force (and then completely: written beside it, renamed)."""
    (tmp_path / "a_file").write_text("x")
    existing = tmp_path / "mine.pt"
    existing.write_text("my own file")
    cases = {
        tmp_path: f"-o {tmp_path} is a directory: give the path of the file to write",
        existing: f"-o {existing} exists; pass --force to overwrite it",
        tmp_path / "a_file" / "sub" / "out.pt": f"-o {tmp_path / 'a_file' / 'sub' / 'out.pt'}: {tmp_path / 'a_file'} "
                                                "is a file, not a folder",
    }
    for output, message in cases.items():
        code = main(["prune", "no.such.module:factory", "--sparsity", "0.5", "-o", str(output)])
        assert code == 1 and capsys.readouterr().err == f"error: {message}\n"
    assert existing.read_text() == "my own file"
    nested = tmp_path / "new" / "folder" / "out.pt"
    assert main(["prune", "sparsify.demo.models:SmallCNN", "--sparsity", "0.5", "-o", str(nested)]) == 0
    assert main(["prune", "sparsify.demo.models:SmallCNN", "--sparsity", "0.5", "-o", str(existing), "--force"]) == 0
    assert set(torch.load(existing, weights_only=True)) == set(torch.load(nested, weights_only=True))
    assert sorted(p.name for p in existing.parent.iterdir()) == ["a_file", "mine.pt", "new"]  # no temporary left


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_prune_refuses_an_unwritable_output_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert main(["prune", "no.such.module:factory", "--sparsity", "0.5", "-o", str(folder / "out.pt")]) == 1
    finally:
        folder.chmod(0o700)
    assert "cannot write there (permission denied)" in capsys.readouterr().err


def test_quiet_means_quiet_for_every_subcommand(tmp_path: Path, saved: dict[str, Path], package: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """-q (before or after the command): no log lines, warnings or progress bars on stderr; commands run for
    the files they write print nothing; report, inspect and dry-run still print their result."""
    results = {
        "report": ["report", saved["state_dict"]],
        "inspect": ["inspect", package],
        "dry-run": ["dry-run", "sparsify.demo.models:SmallCNN"],
    }
    for name, argv in results.items():
        for quiet in (["-q", *argv], [*argv, "--quiet"]):
            code, out, err = run(capsys, *quiet)
            assert (code, err) == (0, ""), (name, err)
            assert out.strip(), name
    writers = {
        "prune": ["prune", "sparsify.demo.models:SmallCNN", "--sparsity", "0.5", "-o", tmp_path / "p.pt"],
        "export": ["export", saved["torchscript"], tmp_path / "m.mlpackage", "--input-shape", "1,1,8,8"],
        "demo": ["demo", "--quick", "--no-export", "--threads", "1", "--out", tmp_path / "demo"],
    }
    for name, argv in writers.items():
        assert run(capsys, "-q", *argv) == (0, "", ""), name
    assert (tmp_path / "p.pt").is_file() and (tmp_path / "m.mlpackage").is_dir()
    code, out, err = run(capsys, "-q", "prune", "sparsify.demo.models:SmallCNN", "--sparsity", "0.5",
                         "-o", tmp_path / "p.pt")
    assert (code, out) == (1, "") and err == f"error: -o {tmp_path / 'p.pt'} exists; pass --force to overwrite it\n"
    assert usage_error(capsys, "report", saved["state_dict"], "-q", "-v").endswith(
        "argument -q/--quiet: not allowed with argument -v/--verbose\n")


def test_a_closed_pipe_ends_the_command_quietly(saved: dict[str, Path]) -> None:
    """``sparsify report model.pt | head -0``: no traceback, no 'Exception ignored', exit code 141 (SIGPIPE)."""
    process = subprocess.Popen([sys.executable, "-m", "sparsify", "report", str(saved["state_dict"])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the reader is gone before the first write
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert err == ""
