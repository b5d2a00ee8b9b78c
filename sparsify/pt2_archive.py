"""`check_exported_archive`: a ``torch.export`` archive (``.pt2``) is read by ``torch.export.load`` only after
every member in it was judged by what the archive's own format says it is *and* by its content.

Why: ``torch.export.load`` is not a safe loader. Depending on the member it calls ``torch.load(...,
weights_only=False)`` (weights and constants its config marks ``use_pickle``, the sample inputs, the
legacy ``<model>.pt`` state dicts, the ``serialized_*`` members of torch <= 2.7's zip — some of them named
``.json``), ``pickle.loads`` (``opaque_obj_`` constants), TorchScript's unpickler (``custom_obj_``
constants) or AOTInductor's loader of compiled shared libraries (``data/aotinductor/``). A member's *name*
says nothing: the check that used to skip ``*.json`` members let a pickled weight named ``w.json`` run.

So every member is put in exactly one of these kinds, from the archive's layout and its payload configs
(``data/weights/<model>_weights_config.json``, ``data/constants/<model>_constants_config.json``), never
from its file-name suffix, and then its bytes are checked for that kind:

* **pickled** (anything torch would unpickle): must be a ``torch.save`` zip (starting ``PK\\x03\\x04``, as
  ``torch.load`` tests), read with torch's own zip reader, with no TorchScript in it, whose ``data.pkl``
  passes sparsify's restricted unpickler (`sparsify.model_files`): tensors and plain data only, every
  class refused before anything is called;
* **raw** (a tensor's bytes, read by torch without unpickling): every config entry naming it must say
  ``use_pickle: false``, its size must fit its dtype and shape, and it must not be a pickle stream that
  imports or calls anything (content, whatever the name);
* **JSON** (the program, the configs, module info): must parse as JSON; the program must pass
  `sparsify.pt2_program.check_program` (symbolic sizes go to ``sympy.sympify``, i.e. ``eval``);
* **text records** (``archive_format``, ``archive_version``, ``byteorder``, ``.data/version``,
  ``.data/serialization_id``, ``version``): a few ASCII characters of the expected form;
* **extra files** (``extra/``): UTF-8 text (torch returns them as strings), not a pickle stream.

Refused outright: Python objects among the constants (``custom_obj_`` / ``opaque_obj_``), compiled code
(``data/aotinductor/``, ``data/executorch/``, ``data/mtia``, ``xl_model_weights/``), duplicate member
names, config paths that leave their folder, and any member the layout does not account for. A rooted
archive's members, and every nested ``torch.save`` zip, are read through ``torch._C.PyTorchFileReader`` —
the reader ``torch.export.load`` and ``torch.load`` use — so the bytes checked are the bytes torch would
read. Every error names the member.

Layouts (read in torch 2.7's and torch 2.15's ``torch/export/__init__.py``): the ``pt2`` archive that
``torch.export.save`` writes from torch 2.8 on (everything under one root folder, read by torch's C++
archive reader, weights described by payload configs; the same reader still takes weights and constants
as pickled ``data/weights/<model>.pt`` / ``data/constants/<model>.pt`` under that root); and the zip that
torch <= 2.7's ``torch.export.save`` writes (``serialized_exported_program.json``,
``serialized_state_dict.pt``, ``serialized_constants.pt``, ``serialized_example_inputs.pt``, ``version``
and ``extra_files/`` at the top level; older files have ``serialized_state_dict.json`` /
``serialized_constants.json``, pickles too), which torch 2.7's ``torch.export.load`` reads with
``zipfile`` and newer torch falls back to. Members are read with the reader the matching torch uses. A
``pt2`` layout at the top level (``archive_format`` and ``version`` beside ``models/``: torch 2.6 / 2.7's
AOTInductor packages) is refused: no ``torch.export.load`` reads it (torch's archive reader wants a root
folder; the fallback wants ``serialized_exported_program.json``).
"""

from __future__ import annotations

import io
import json
import pickletools
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .model_files import (
    _SCALAR_TYPES,
    DEFAULT_MAX_BYTES,
    FileRefusedError,
    _open_zip,
    _Storage,
    _unpickle,
    _view,
    check_file_size,
)
from .pt2_program import ProgramRefusedError, check_program

__all__ = ["check_exported_archive"]

_ZIP_MAGIC = b"PK\x03\x04"
_TEXT_RECORDS = {
    "archive_format": re.compile(rb"pt2"),
    "archive_version": re.compile(rb"\d{1,8}"),
    "byteorder": re.compile(rb"little|big"),
    ".data/version": re.compile(rb"\d{1,8}\n?"),
    ".data/serialization_id": re.compile(rb"[0-9A-Za-z_\-]{0,128}"),
}
_OLD_TEXT_RECORDS = {"version": re.compile(rb"\d{1,4}(\.\d{1,4}){0,3}\n?")}
_OLD_PICKLES = frozenset({"serialized_state_dict.pt", "serialized_state_dict.json", "serialized_constants.pt",
                          "serialized_constants.json", "serialized_example_inputs.pt"})
_OLD_PROGRAM = "serialized_exported_program.json"
_COMPILED = ("data/aotinductor/", "data/executorch/", "data/mtia", "xl_model_weights/")
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX",
                           "EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID"})
_PLAIN_NAME = re.compile(r"[^/\\]+")


def _is_code_pickle(data: bytes) -> bool:
    """Whether ``data`` starts with pickle streams (one after another, as legacy ``torch.save`` writes them)
    one of which imports or calls something. Raw tensor bytes essentially never parse to a STOP."""
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        code = False
        try:
            for opcode, _, _ in pickletools.genops(stream):
                code = code or opcode.name in _CODE_OPCODES
                if opcode.name == "STOP":
                    break
            else:
                return False
        except Exception:  # not (or no longer) a pickle: nothing more can be unpickled from here
            return False
        if code:
            return True
    return False


def _first_line(error: Exception) -> str:
    """A torch error's message without its traceback or its request for an enhancement report."""
    return (str(error).splitlines() or [""])[0].split("  (Could this error message")[0]


def _check_pickled(data: bytes, max_bytes: int) -> None:
    """What ``torch.load(io.BytesIO(data), weights_only=False)`` would unpickle passes the restricted reader."""
    if not data:
        return  # torch reads an empty artifact as nothing
    if not data.startswith(_ZIP_MAGIC):
        raise FileRefusedError("a pickle outside a torch.save zip (torch.load would unpickle it as code)")
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        records = reader.get_all_records()
        size_of = getattr(reader, "get_record_size", None) or (lambda name: len(reader.get_record(name)))
        total = sum(size_of(name) for name in records)
    except RuntimeError as error:
        raise FileRefusedError(f"a damaged torch.save zip ({_first_line(error)})") from error
    if total > max_bytes:
        raise FileRefusedError(f"unpacks to {total:,} bytes, over the limit of {max_bytes:,} bytes")
    if "constants.pkl" in records or any(name.startswith("code/") for name in records):
        raise FileRefusedError("a TorchScript archive (torch.load would hand it to torch.jit.load)")
    if "data.pkl" not in records:
        raise FileRefusedError("a zip without data.pkl: not written by torch.save")
    if "byteorder" in records and reader.get_record("byteorder").strip() not in (b"little", b""):
        raise FileRefusedError("written on a big-endian machine: not read")
    storages = {name[5:]: bytearray(reader.get_record(name)) for name in records if name.startswith("data/")}
    _unpickle(reader.get_record("data.pkl"), storages)


def _check_raw(data: bytes, entries: list[dict[str, Any]]) -> None:
    """A tensor's bytes that torch reads without unpickling: they fit every config entry naming them."""
    for meta in entries:
        tensor_meta = meta.get("tensor_meta")
        if not isinstance(tensor_meta, dict):
            raise FileRefusedError("its config entry has no tensor_meta")
        number = tensor_meta.get("dtype")
        dtype = _SCALAR_TYPES.get(number) if isinstance(number, int) else None
        if dtype is None:
            raise FileRefusedError(f"dtype number {number!r} is not read")
        try:
            sizes = [d["as_int"] for d in tensor_meta["sizes"]]
            strides = [d["as_int"] for d in tensor_meta["strides"]]
            offset = tensor_meta.get("storage_offset", {"as_int": 0})["as_int"]
        except (KeyError, TypeError) as error:
            raise FileRefusedError(f"its tensor_meta has no concrete sizes, strides and offset ({error!r})") from error
        _view(_Storage(bytearray(data), dtype), offset, sizes, strides)
    if _is_code_pickle(data):
        raise FileRefusedError("its bytes are a pickle that imports or calls something, not tensor data")


def _check_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise FileRefusedError(f"not JSON ({type(error).__name__})") from error


def _check_text(data: bytes, pattern: re.Pattern[bytes]) -> None:
    if not pattern.fullmatch(data):
        raise FileRefusedError(f"{data[:40]!r} is not a {pattern.pattern.decode()!r} record")


def _check_extra(data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileRefusedError("an extra file that is not UTF-8 text") from error
    if _is_code_pickle(data):
        raise FileRefusedError("a pickle stream that imports or calls something")


class _Archive:
    """The members of an archive as torch reads them: names (without the root folder) and their bytes."""

    def __init__(self, names: list[str], read: Callable[[str], bytes], shown: Callable[[str], str]) -> None:
        self.names, self.read, self.shown = names, read, shown
        self.checks: dict[str, list[Callable[[bytes], None]]] = {}

    def add(self, name: str, check: Callable[[bytes], None]) -> None:
        self.checks.setdefault(name, []).append(check)

    def run(self) -> None:
        """Check every member the layout accounts for, then refuse the first one it does not."""
        for name in [n for n in self.names if n in self.checks]:
            data = self.read(name)
            for check in self.checks[name]:
                try:
                    check(data)
                except (FileRefusedError, ProgramRefusedError) as error:
                    raise FileRefusedError(f"member {self.shown(name)}: {error}") from error
                except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
                    raise FileRefusedError(f"member {self.shown(name)}: damaged ({type(error).__name__}: "
                                           f"{error})") from error
        for name in self.names:
            if name not in self.checks:
                raise FileRefusedError(f"member {self.shown(name)}: not part of a torch.export archive's layout "
                                       "(nothing the format does not account for is read from an untrusted archive)")


def _program_check(data: bytes) -> None:
    check_program(_check_json(data))


def _payload_configs(archive: _Archive, max_bytes: int) -> None:
    """Classify the members named by the weights / constants configs (raw, pickled or refused)."""
    for config_name in [n for n in archive.names
                        if re.fullmatch(r"data/(weights/[^/]+_weights|constants/[^/]+_constants)_config\.json", n)]:
        folder = config_name.rsplit("/", 1)[0] + "/"
        shown = archive.shown(config_name)
        try:
            document = _check_json(archive.read(config_name))
        except FileRefusedError as error:
            raise FileRefusedError(f"member {shown}: {error}") from error
        entries = document.get("config") if isinstance(document, dict) else None
        if not isinstance(entries, dict):
            raise FileRefusedError(f"member {shown}: no 'config' mapping")
        archive.add(config_name, lambda data: None)
        raw: dict[str, list[dict[str, Any]]] = {}
        for fqn, meta in entries.items():
            path_name = meta.get("path_name") if isinstance(meta, dict) else None
            if not isinstance(path_name, str) or not _PLAIN_NAME.fullmatch(path_name) or path_name in (".", ".."):
                raise FileRefusedError(f"member {shown}: entry {fqn!r} names {path_name!r}, not a file in {folder}")
            member = folder + path_name
            if member not in archive.names:
                raise FileRefusedError(f"member {shown}: entry {fqn!r} names {member}, which is missing")
            if folder == "data/constants/" and not path_name.startswith("tensor_"):
                kind = "a TorchScript object" if path_name.startswith("custom_obj_") else "a pickled Python object"
                raise FileRefusedError(f"member {archive.shown(member)}: constant {fqn!r} is {kind} "
                                       "(torch would unpickle it as code)")
            if meta.get("use_pickle") is not False:  # anything but an explicit false is read with torch.load
                archive.add(member, lambda data: _check_pickled(data, max_bytes))
            else:
                raw.setdefault(member, []).append(meta)
        for member, metas in raw.items():
            archive.add(member, lambda data, metas=metas: _check_raw(data, metas))  # type: ignore[misc]


def _check_pt2(archive: _Archive, max_bytes: int) -> None:
    for name in archive.names:
        if name.startswith(_COMPILED):
            raise FileRefusedError(f"member {archive.shown(name)}: compiled code (AOTInductor / ExecuTorch); "
                                   "loading it runs native code from the file")
        if name in _TEXT_RECORDS:
            archive.add(name, lambda data, pattern=_TEXT_RECORDS[name]: _check_text(data, pattern))  # type: ignore[misc]
        elif re.fullmatch(r"models/[^/]+\.json", name):
            archive.add(name, _program_check)
        elif re.fullmatch(r"data/(sample_inputs|weights|constants)/[^/]+\.pt", name):
            archive.add(name, lambda data: _check_pickled(data, max_bytes))  # sample inputs, pickled state dicts
        elif re.fullmatch(r"data/(weights/[^/]+_model_param|constants/[^/]+_model_constants)_config\.json", name):
            archive.add(name, _check_json)
        elif name.startswith("extra/"):
            archive.add(name, _check_extra)
    _payload_configs(archive, max_bytes)
    if "archive_format" not in archive.names:
        raise FileRefusedError("no archive_format record: not a torch.export archive")
    archive.run()


def _check_old(archive: _Archive, max_bytes: int) -> None:
    """torch <= 2.7's zip: what torch 2.7's ``torch.export.save`` writes and its ``torch.export.load`` reads, and
    what newer ``torch.export.load`` falls back to when the archive is not a rooted pt2 archive."""
    for name in archive.names:
        if name in _OLD_TEXT_RECORDS:
            archive.add(name, lambda data, pattern=_OLD_TEXT_RECORDS[name]: _check_text(data, pattern))  # type: ignore[misc]
        elif name == _OLD_PROGRAM:
            archive.add(name, _program_check)
        elif name in _OLD_PICKLES:  # ".json" or not, torch.load reads them
            archive.add(name, lambda data: _check_pickled(data, max_bytes))
        elif name.startswith("extra_files/"):
            archive.add(name, _check_extra)
    archive.run()


def _duplicates(names: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({name for name in names if name.lower() in seen or seen.add(name.lower())})  # type: ignore[func-returns-value]


def check_exported_archive(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Refuse a ``torch.export`` archive unless nothing in it can run when ``torch.export.load`` reads it and
    ``ExportedProgram.module()`` runs it (see the module docstring); `FileRefusedError` names the member."""
    check_file_size(path, max_bytes)
    with _open_zip(path, max_bytes) as archive:
        names = archive.namelist()
        duplicates = _duplicates(names)
        if duplicates:
            raise FileRefusedError(f"member {duplicates[0]} appears more than once (readers disagree on which one "
                                   "counts)")
        if any("/" not in name for name in names):  # no root folder: torch <= 2.7's zip, read by zipfile
            if any(name.startswith("/") or "\\" in name or ".." in name.split("/") for name in names):
                raise FileRefusedError("a member name starts with '/', holds '\\' or a '..' folder")
            if "archive_format" in names:
                raise FileRefusedError(
                    "member archive_format: a pt2 archive without a root folder (the layout of torch 2.6 / 2.7's "
                    "AOTInductor packages), which torch.export.load does not read; re-save the program with "
                    "torch.export.save")
            _check_old(_Archive(names, archive.read, str), max_bytes)
            return
        root = names[0].split("/", 1)[0] + "/"
        for name in names:  # torch's reader decodes .data/version as it opens: check the records first
            pattern = _TEXT_RECORDS.get(name[len(root):]) if name.startswith(root) else None
            if pattern is not None:
                try:
                    _check_text(archive.read(name), pattern)
                except FileRefusedError as error:
                    raise FileRefusedError(f"member {name}: {error}") from error
    try:
        reader = torch._C.PyTorchFileReader(str(path))
        records = list(reader.get_all_records())
    except (RuntimeError, ValueError) as error:
        raise FileRefusedError(f"torch's archive reader refuses it ({_first_line(error)})") from error
    if sorted(records) != sorted(name[len(root):] for name in names):
        raise FileRefusedError("the zip's directory and torch's archive reader list different members")
    _check_pt2(_Archive(records, reader.get_record, lambda name: root + name), max_bytes)

