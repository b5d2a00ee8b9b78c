"""Nothing in a ``torch.export`` archive runs: every member is judged by the archive's own layout and configs
and by its content, never by its name, before ``torch.export.load`` reads it.

Each test plants a payload — a pickle whose reduce creates the folder ``marker`` — under a member name or
a config flag the format allows, and checks that sparsify refuses the archive naming that member and that
the marker never appears. Controls show the payloads are live: the installed torch's own loader runs them.

The suite runs on torch 2.15 and on torch 2.7, whose ``torch.export.save`` writes different layouts: 2.15 a
``pt2`` archive under a root folder with payload configs, 2.7 the top-level ``serialized_*`` zip. Tests
that take the installed torch's archive are layout-aware; tests of a feature only one layout has (payload
configs) skip on a probe of that feature, naming it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from sparsify.cli import main
from sparsify.cli_files import CommandError, load_model
from sparsify.model_files import FileRefusedError
from sparsify.pt2_archive import _is_code_pickle, check_exported_archive

# torch.export.save writes payload configs (data/weights/<model>_weights_config.json) from the module that
# writes rooted pt2 archives, torch.export.pt2_archive (torch >= 2.8); torch 2.7 writes the serialized_* zip.
_WRITES_CONFIGS = importlib.util.find_spec("torch.export.pt2_archive") is not None
_needs_configs = pytest.mark.skipif(
    not _WRITES_CONFIGS, reason=f"torch {torch.__version__}'s torch.export.save writes no payload configs "
    "(torch.export.pt2_archive, torch >= 2.8): it writes the serialized_* zip, covered by the layout tests")
_OLD_PROGRAM = "serialized_exported_program.json"
_OLD_PICKLES = ("serialized_state_dict.pt", "serialized_constants.pt", "serialized_example_inputs.pt")


class _Payload:
    """Unpickled, it creates the folder ``marker``: the proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.marker),)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)  # a 1,024-byte weight: room for a payload of the same size
        self.bn = nn.BatchNorm1d(16)
        self.scale = torch.linspace(0.5, 1.5, 16)  # a plain tensor attribute: an exported constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x)) * self.scale


Members = dict[str, bytes]


def _members(path: Path) -> Members:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _write(members: Members | list[tuple[str, bytes]], path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in (members.items() if isinstance(members, dict) else members):
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real torch.export archive: weights, buffers, a constant, a dynamic batch size (symbolic sizes)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    batch = torch.export.Dim("batch", min=2, max=64)
    exported = torch.export.export(_Net().eval(), (torch.randn(4, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(exported, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker"


def _prefix(members: Members) -> str:
    """The root folder torch >= 2.8 puts every member in ("" for torch 2.7's top-level layout)."""
    roots = {name.split("/", 1)[0] for name in members}
    return f"{roots.pop()}/" if len(roots) == 1 and all("/" in name for name in members) else ""


def _program_name(members: Members) -> str:
    """The program: ``<root>/models/model.json`` (torch >= 2.8) or ``serialized_exported_program.json``."""
    return next(n for n in members if n.endswith("models/model.json") or n == _OLD_PROGRAM)


def _sample_inputs_name(members: Members) -> str:
    return next(n for n in members if n.endswith("sample_inputs/model.pt") or n == "serialized_example_inputs.pt")


def _payloads(marker: Path) -> dict[str, bytes]:
    raw = pickle.dumps(_Payload(marker), protocol=2)
    saved = io.BytesIO()
    torch.save(_Payload(marker), saved)
    return {"pickle": raw, "torch_save": saved.getvalue(), "pickle_then_zip": raw + saved.getvalue()}


def _refused(path: Path, member: str, marker: Path) -> str:
    """sparsify refuses ``path`` naming ``member`` — through the library check and through the loader the
    command uses (which would call torch.export.load next) — and nothing ran."""
    with pytest.raises(FileRefusedError) as info:
        check_exported_archive(path)
    assert f"member {member}:" in str(info.value), str(info.value)
    with pytest.raises(CommandError, match="is refused: member"):
        load_model(path)
    assert not marker.exists(), "code from the archive ran"
    return str(info.value)


def test_a_real_archive_passes_and_loads(program: Path) -> None:
    check_exported_archive(program)
    kind, loaded = load_model(program)
    assert kind == "exported"
    assert set(loaded.state_dict) == {"fc.weight", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean",
                                      "bn.running_var", "bn.num_batches_tracked"}


# The members torch.export.save writes for _Net (besides the raw weight / constant records of a pt2 archive).
_SAVED_MEMBERS = ({"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
                   "models/model.json", "data/sample_inputs/model.pt", "data/weights/model_weights_config.json",
                   "data/constants/model_constants_config.json"} if _WRITES_CONFIGS
                  else {_OLD_PROGRAM, *_OLD_PICKLES, "version"})


def _layout(kind: str, program: Path) -> Members:
    members = _members(program)
    if kind == "saved_by_the_installed_torch":
        return members
    if kind == "pickled_state_dicts_under_a_root":
        return _pickled_state_layout(program, members)
    return _serialized_zip(members)


@pytest.mark.parametrize("layout", ["saved_by_the_installed_torch", "pickled_state_dicts_under_a_root",
                                    "serialized_zip_of_torch_2_7"])
def test_a_payload_under_every_member_is_refused_naming_it(program: Path, tmp_path: Path, marker: Path,
                                                           layout: str) -> None:
    """Every member of the archive the installed torch writes (torch 2.15: a rooted pt2 archive with payload
    configs; torch 2.7: the serialized_* zip), and of the other layouts torch.export.load reads."""
    members = _layout(layout, program)
    check_exported_archive(_write(members, tmp_path / "benign.pt2"))
    if layout == "saved_by_the_installed_torch":
        prefix = _prefix(members)
        written = {name[len(prefix):] for name in members}
        assert written >= _SAVED_MEMBERS, sorted(members)
        raw_records = 8 if _WRITES_CONFIGS else 0  # 7 weights and buffers, 1 constant (torch 2.7: none)
        assert len(written - _SAVED_MEMBERS) == raw_records, sorted(members)
    refused = 0
    for form, payload in _payloads(marker).items():
        for name in members:
            evil = _write({**members, name: payload}, tmp_path / f"{form}.pt2")
            _refused(evil, name, marker)
            refused += 1
    assert refused == 3 * len(members)


def _edit_config(members: Members, folder: str, edit: Callable[[dict], None]) -> str:
    name = next(n for n in members if n.endswith(f"data/{folder}/model_{folder}_config.json"))
    config = json.loads(members[name])
    edit(config["config"])
    members[name] = json.dumps(config).encode()
    return name.rsplit("/", 1)[0] + "/"


def _first(entries: dict) -> dict:
    return next(iter(entries.values()))


# (folder, how the config is changed, the path_name the payload goes to)
_FLAGS: dict[str, tuple[str, Callable[[dict], None], str]] = {
    "pickled weight named .json": ("weights", lambda c: c.update(w={**_first(c), "use_pickle": True,
                                                                    "path_name": "w.json"}), "w.json"),
    "pickled weight named like a record": ("weights", lambda c: _first(c).update(use_pickle=True,
                                                                                 path_name="archive_format"),
                                           "archive_format"),
    "use_pickle missing": ("weights", lambda c: _first(c).pop("use_pickle"), "weight_0"),
    "use_pickle not a bool": ("weights", lambda c: _first(c).update(use_pickle="no"), "weight_0"),
    "raw and pickled share a file": ("weights", lambda c: c.update(extra={**_first(c), "use_pickle": True}),
                                     "weight_0"),
    "pickled constant named .json": ("constants", lambda c: _first(c).update(use_pickle=True,
                                                                            path_name="tensor_0.json"),
                                     "tensor_0.json"),
    "TorchScript object constant": ("constants", lambda c: _first(c).update(path_name="custom_obj_0"),
                                    "custom_obj_0"),
    "pickled Python object constant": ("constants", lambda c: _first(c).update(path_name="opaque_obj_0"),
                                       "opaque_obj_0"),
}


@_needs_configs
@pytest.mark.parametrize("case", list(_FLAGS))
@pytest.mark.parametrize("form", ["pickle", "torch_save"])
def test_every_config_flag_that_makes_torch_unpickle_is_judged_by_the_config(
        program: Path, tmp_path: Path, marker: Path, case: str, form: str) -> None:
    folder, edit, path_name = _FLAGS[case]
    members = _members(program)
    prefix = _edit_config(members, folder, edit)
    members[prefix + path_name] = _payloads(marker)[form]
    message = _refused(_write(members, tmp_path / "evil.pt2"), prefix + path_name, marker)
    if "object constant" in case:
        assert "torch would unpickle it as code" in message
    else:
        assert "posix.mkdir" in message or "outside a torch.save zip" in message, message


@_needs_configs
def test_the_pickled_json_weight_is_live_for_torch_itself(program: Path, tmp_path: Path, marker: Path) -> None:
    """Control: torch.export.load runs the payload the old name-based check let through."""
    members = _members(program)
    prefix = _edit_config(members, "weights", _FLAGS["pickled weight named .json"][1])
    members[prefix + "w.json"] = _payloads(marker)["pickle"]
    evil = _write(members, tmp_path / "evil.pt2")
    logging.disable(logging.CRITICAL)
    try:
        with pytest.raises(RuntimeError):
            torch.export.load(evil)
    finally:
        logging.disable(logging.NOTSET)
    assert marker.is_dir()


@_needs_configs
def test_config_paths_cannot_leave_their_folder(program: Path, tmp_path: Path, marker: Path) -> None:
    members = _members(program)
    _edit_config(members, "weights", lambda c: _first(c).update(path_name="../models/model.json"))
    with pytest.raises(FileRefusedError, match=r"names '\.\./models/model\.json', not a file in data/weights/"):
        check_exported_archive(_write(members, tmp_path / "evil.pt2"))


@_needs_configs
def test_a_raw_weight_whose_bytes_are_a_pickle_is_refused_by_its_content(program: Path, tmp_path: Path,
                                                                        marker: Path) -> None:
    """The config says raw (torch would not unpickle it), the size fits: the content still decides."""
    members = _members(program)
    config = json.loads(members[next(n for n in members if n.endswith("model_weights_config.json"))])["config"]
    name = next(n for n in members if n.endswith("data/weights/" + config["fc.weight"]["path_name"]))
    payload = _payloads(marker)["pickle"]
    assert len(members[name]) == 1024 > len(payload)
    members[name] = payload + bytes(1024 - len(payload))
    message = _refused(_write(members, tmp_path / "evil.pt2"), name, marker)
    assert "a pickle that imports or calls something" in message
    assert not _is_code_pickle(torch.randn(4096).numpy().tobytes())


@pytest.mark.parametrize("extra", ["unknown.pkl", "data/aotinductor/model/model.so", "data/weights/weight_9"])
def test_members_the_layout_does_not_account_for_are_refused(program: Path, tmp_path: Path, marker: Path,
                                                             extra: str) -> None:
    members = _members(program)
    prefix = _prefix(members)  # "" for torch 2.7's serialized_* zip, which reads no compiled code either
    name = prefix + extra
    members[name] = b"\x7fELF" if extra.endswith(".so") else b"data"
    message = _refused(_write(members, tmp_path / "evil.pt2"), name, marker)
    assert ("native code" if extra.endswith(".so") and prefix else "not part of a torch.export archive") in message


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_member_twice_is_refused(program: Path, tmp_path: Path, marker: Path) -> None:
    members = _members(program)
    name = _sample_inputs_name(members)
    evil = _write([*members.items(), (name, _payloads(marker)["torch_save"])], tmp_path / "evil.pt2")
    with pytest.raises(FileRefusedError, match=f"member {name} appears more than once"):
        check_exported_archive(evil)


def _program_with(members: Members, old: bytes, new: bytes) -> Members:
    name = _program_name(members)
    if old not in members[name]:
        pytest.skip(f"torch {torch.__version__}'s program has no {old[:40]!r}")
    return {**members, name: members[name].replace(old, new, 1)}


def test_code_in_a_symbolic_size_is_refused_and_live_for_torch(program: Path, tmp_path: Path, marker: Path) -> None:
    """torch.export.load hands every ``expr_str`` to sympy.sympify, i.e. to eval."""
    members = _members(program)
    symbol = next(iter(json.loads(members[_program_name(members)]).get("range_constraints") or {"s0": None}))
    code = f"__import__('os').mkdir({str(marker)!r}) or Symbol('{symbol}', positive=True, integer=True)"
    evil = _write(_program_with(members, f"Symbol('{symbol}', positive=True, integer=True)".encode(),
                                code.encode()), tmp_path / "evil.pt2")
    message = _refused(evil, _program_name(members), marker)
    assert ".expr_str = " in message and "calls \"__import__('os').mkdir\"" in message, message
    torch.export.load(evil)  # control: torch's own loader runs it
    assert marker.is_dir()


@pytest.mark.parametrize(("old", "new", "reason"), [
    (b'"torch.ops.aten.linear.default"', b'"torch.load"', "not a torch operator"),
    (b'"torch.ops.aten.linear.default"', b'"builtins.exec"', "not a torch operator"),
    (b'"torch.ops.aten.linear.default"', b'"_operator.attrgetter"', "not one of the operator functions"),
    (b'"torch.ops.aten.linear.default"', b'"torch.ops.aten.no_such_op.default"', "no such torch operator"),
    (b'"guards_code": []', b'"guards_code": ["__import__(\'os\')"]', "ExportedProgram.module() executes"),
    (b'"type": "builtins.tuple"', b'"type": "collections.defaultdict"', "collections.defaultdict"),
])
def test_program_parts_torch_would_run_are_refused(program: Path, tmp_path: Path, marker: Path, old: bytes,
                                                   new: bytes, reason: str) -> None:
    members = _members(program)
    if old.startswith(b'"type"'):  # the input spec is JSON inside a JSON string
        old, new = old.replace(b'"', b'\\"'), new.replace(b'"', b'\\"')
    evil = _write(_program_with(members, old, new), tmp_path / "evil.pt2")
    assert reason in _refused(evil, _program_name(members), marker)


def _saved(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _pickled_state_layout(program: Path, members: Members, prefix: str = "legacy/") -> Members:
    """A pt2 archive with weights and constants as pickled state dicts and no payload configs, which torch
    >= 2.8 reads under a root folder (``prefix=""``: the same at the top level, torch 2.6 / 2.7's AOTInductor
    package layout, which no torch.export.load reads)."""
    exported = torch.export.load(program)
    layout = {
        prefix + "archive_format": b"pt2",
        prefix + ("archive_version" if prefix else "version"): b"0",
        prefix + "models/model.json": members[_program_name(members)],
        prefix + "data/weights/model.pt": _saved(dict(exported.state_dict)),
        prefix + "data/constants/model.pt": _saved(dict(exported.constants)),
        prefix + "data/sample_inputs/model.pt": members[_sample_inputs_name(members)],
    }
    return {**({prefix + ".data/version": b"6\n", prefix + "byteorder": b"little"} if prefix else {}), **layout}


def _serialized_zip(members: Members) -> Members:
    """The zip torch <= 2.7's torch.export.save writes (every torch.export.load reads it), with the older
    ``serialized_state_dict.json`` name: a pickle named ``.json``. The program is the installed torch's."""
    from torch._export.serde.schema import SCHEMA_VERSION

    return {
        "version": ".".join(map(str, SCHEMA_VERSION)).encode(),
        _OLD_PROGRAM: members[_program_name(members)],
        "serialized_state_dict.json": _saved({}),
        "serialized_constants.pt": _saved({}),
        "serialized_example_inputs.pt": members[_sample_inputs_name(members)],
    }


def test_pickled_state_dicts_under_a_root_are_read_and_checked(program: Path, tmp_path: Path) -> None:
    members = _members(program)
    layout = _pickled_state_layout(program, members)
    benign = _write(layout, tmp_path / "legacy.pt2")
    check_exported_archive(benign)
    if _WRITES_CONFIGS:  # torch >= 2.8 reads this layout: the loaded program is the same
        x = torch.randn(3, 16)
        assert torch.equal(load_model(benign)[1].module()(x), torch.export.load(program).module()(x))
    evil = {**layout, "legacy/data/aotinductor/m.so": b"x"}
    with pytest.raises(FileRefusedError, match="member legacy/data/aotinductor/m.so: compiled code"):
        check_exported_archive(_write(evil, tmp_path / "evil.pt2"))


def test_a_pt2_layout_without_a_root_folder_is_refused(program: Path, tmp_path: Path) -> None:
    """No torch.export.load reads it (torch's archive reader wants a root folder, the fallback wants
    serialized_exported_program.json): sparsify says so instead of handing it to torch."""
    path = _write(_pickled_state_layout(program, _members(program), ""), tmp_path / "top.pt2")
    with pytest.raises(FileRefusedError, match="member archive_format: a pt2 archive without a root folder"):
        check_exported_archive(path)
    with pytest.raises(CommandError, match="a pt2 archive without a root folder"):
        load_model(path)
    logging.disable(logging.CRITICAL)
    try:
        with pytest.raises((RuntimeError, AssertionError, KeyError)):  # control: the installed torch reads none
            torch.export.load(path)
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.filterwarnings("ignore:This version of file is deprecated")
def test_the_serialized_zip_reads_pickles_named_json_and_they_are_checked(program: Path, tmp_path: Path,
                                                                          marker: Path) -> None:
    """torch <= 2.7's zip: ``serialized_state_dict.json`` is a pickle, and every torch.export.load runs it."""
    old = _serialized_zip(_members(program))
    check_exported_archive(_write(old, tmp_path / "old.pt2"))
    evil = _write({**old, "serialized_state_dict.json": _payloads(marker)["pickle"]}, tmp_path / "evil.pt2")
    _refused(evil, "serialized_state_dict.json", marker)
    _refused(_write({**old, "extra.pkl": b"x"}, tmp_path / "extra.pt2"), "extra.pkl", marker)
    logging.disable(logging.CRITICAL)
    try:
        with pytest.raises(RuntimeError, match="Invalid magic number"):  # control: torch unpickled it, then failed
            torch.export.load(evil)
    finally:
        logging.disable(logging.NOTSET)
    assert marker.is_dir()


def test_the_command_refuses_in_one_line_and_prune_weights_never_loads_a_program(
        program: Path, tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture[str]) -> None:
    members = _members(program)
    if _WRITES_CONFIGS:  # a weight the config marks pickled, named .json
        prefix = _edit_config(members, "weights", _FLAGS["pickled weight named .json"][1])
        name = prefix + "w.json"
    else:  # torch 2.7's zip: its pickled state dict
        name = "serialized_state_dict.pt"
    members[name] = _payloads(marker)["pickle"]
    evil = _write(members, tmp_path / "evil.pt2")
    code = main(["export", str(evil), str(tmp_path / "out.mlpackage")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1 and f"member {name}:" in err, err
    # --weights reads tensors only (never torch.export.load): the pickled weight is refused by the reader
    code = main(["prune", "sparsify.demo.models:SmallCNN", "--weights", str(evil), "--sparsity", "0.5",
                 "-o", str(tmp_path / "pruned.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "is refused" in err and "not a zip archive" in err, err
    assert not marker.exists()
