"""Reading model files of unknown origin: size limits, and nothing in a file ever runs.

* `read_tensor_file` reads the tensors of a ``torch.save`` file, a TorchScript archive or a
  ``torch.export`` program with its own pickle reader, which builds only containers, numbers, strings,
  dtypes and bounds-checked tensors, and refuses any other class or function *before* calling anything.
  It never calls ``torch.load``, ``torch.jit.load`` or ``torch.export.load``, so it does not depend on the
  ``weights_only`` unpickler of the installed torch (which had code-execution bugs before torch 2.10).
* `sparsify.pt2_archive.check_exported_archive` (importable from here too) refuses a ``torch.export``
  archive unless every member passes the check its kind needs, pickles this reader, so that
  ``torch.export.load`` (which falls back to ``weights_only=False``) finds nothing to run.

The ``sparsify`` command reads every model file through this module (YAML configs go through
`sparsify.safe_io`).
"""

from __future__ import annotations

import importlib
import io
import json
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

import torch

__all__ = ["DEFAULT_MAX_BYTES", "FileRefusedError", "check_file_size", "read_tensor_file"]

DEFAULT_MAX_BYTES = 8 * 1024**3
"""Largest file (and largest total of an archive's members) read by default: 8 GiB."""


class FileRefusedError(ValueError):
    """A file that is too large, damaged, or holds something other than tensors and plain data."""


def check_file_size(path: str | Path, max_bytes: int, what: str = "file") -> int:
    """The size of ``path``; `FileRefusedError` if it is over ``max_bytes`` (read nothing that big)."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise FileRefusedError(f"{path}: the {what} is {size:,} bytes, over the limit of {max_bytes:,} bytes")
    return size


class _StorageType:
    """What ``torch.FloatStorage`` & co. unpickle to: only their dtype is kept."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    def __init__(self, data: bytearray, dtype: torch.dtype) -> None:
        self.data, self.dtype = data, dtype

    def flat(self, dtype: torch.dtype) -> torch.Tensor:
        size = torch.empty((), dtype=dtype).element_size()
        if len(self.data) % size:
            raise FileRefusedError(f"a storage of {len(self.data)} bytes does not hold whole {dtype} elements")
        return torch.frombuffer(self.data, dtype=dtype) if self.data else torch.empty(0, dtype=dtype)


class _ScriptObject:
    """A TorchScript module or class instance: only its attribute dict (``state``) is kept."""

    name = "?"

    def __init__(self) -> None:
        self.state: Any = None


_DTYPES = {name: getattr(torch, name) for name in (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128",
)}
_STORAGES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128, "UntypedStorage": torch.uint8,
}
# torch.export's ScalarType numbers (torch/_export/serde/schema.py)
_SCALAR_TYPES = {1: torch.uint8, 2: torch.int8, 3: torch.int16, 4: torch.int32, 5: torch.int64, 6: torch.float16,
                 7: torch.float32, 8: torch.float64, 10: torch.complex64, 11: torch.complex128, 12: torch.bool,
                 13: torch.bfloat16}


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)) or not all(
        type(v) is int and v >= 0 for v in value  # bool is not a size
    ):
        raise FileRefusedError(f"tensor {what} {value!r} is not a sequence of non-negative integers")
    return tuple(value)


def _view(storage: Any, offset: Any, size: Any, stride: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``storage[offset:]`` viewed with ``size`` / ``stride``, after checking every element is inside it."""
    if not isinstance(storage, _Storage):
        raise FileRefusedError(f"a tensor is built on a {type(storage).__name__}, not on a storage")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride) or type(offset) is not int or offset < 0:
        raise FileRefusedError(f"tensor size {size}, stride {stride}, offset {offset!r} do not describe a tensor")
    flat = storage.flat(dtype or storage.dtype)
    if 0 in size:
        return torch.empty(size, dtype=flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.numel():
        raise FileRefusedError(f"a tensor of size {size} reaches element {last} of a storage of {flat.numel()}")
    return flat.as_strided(size, stride, offset)


def _rebuild_v2(storage: Any, offset: Any, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    return _view(storage, offset, size, stride)


def _rebuild_v3(storage: Any, offset: Any, size: Any, stride: Any, _grad: Any, _hooks: Any, dtype: Any,
                *_: Any) -> torch.Tensor:
    if not isinstance(dtype, torch.dtype) or dtype not in _DTYPES.values():
        raise FileRefusedError(f"tensor dtype {dtype!r} is not read")
    return _view(storage, offset, size, stride, dtype)


def _parameter(data: Any, *_: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise FileRefusedError(f"a Parameter holds a {type(data).__name__}, not a tensor")
    return data


def _same(value: Any, *_: Any) -> Any:
    return value


_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): torch.Size,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_v3,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.jit._pickle", "restore_type_tag"): _same,
    **{("torch.jit._pickle", f"build_{kind}list"): _same for kind in ("int", "float", "bool", "tensor", "double")},
    **{("torch", name): dtype for name, dtype in _DTYPES.items()},
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGES.items()},
}
_CONSTRUCTIBLE = (OrderedDict, set, frozenset)
# what REDUCE may call (compared by identity: a tensor on the stack must not get a chance to compare itself)
_CALLABLES = (*_CONSTRUCTIBLE, torch.Size, _rebuild_v2, _rebuild_v3, _parameter, _same)


def _one_of(value: Any, allowed: tuple[Any, ...]) -> bool:
    return any(value is candidate for candidate in allowed)


class _Unpickler(pickle._Unpickler):  # the pure-Python one: every opcode goes through dispatch
    """Builds containers, numbers, strings, tensors and (TorchScript) attribute dicts; refuses anything else."""

    dispatch: ClassVar[dict[int, Callable[[Any], None]]] = dict(pickle._Unpickler.dispatch)
    # the pure-Python unpickler's working state (not in typeshed)
    stack: list[Any]
    append: Callable[[Any], None]
    pop_mark: Callable[[], list[Any]]

    def __init__(self, data: bytes, records: Mapping[str, bytearray], script_objects: bool) -> None:
        super().__init__(io.BytesIO(data))
        self.records, self.script_objects = records, script_objects
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is not None:
            return found
        if self.script_objects and module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {"name": f"{module}.{name}"})
        raise FileRefusedError(f"the file refers to {module}.{name}: only tensors and plain data are read")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise FileRefusedError(f"persistent id {pid!r} is not a tensor storage")
        key = pid[2]
        if key not in self.storages:
            if key not in self.records:
                raise FileRefusedError(f"the file is damaged: storage {key!r} is missing")
            self.storages[key] = _Storage(self.records[key], pid[1].dtype)
        return self.storages[key]

    def _refuse(self) -> None:
        raise FileRefusedError("the pickle uses an opcode that only builds objects of other types")

    def _setitems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) not in (dict, OrderedDict):
            raise FileRefusedError(f"the pickle sets items of a {type(target).__name__}")
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]

    def _setitem(self) -> None:
        value, key = self.stack.pop(), self.stack.pop()
        if type(self.stack[-1]) not in (dict, OrderedDict):
            raise FileRefusedError(f"the pickle sets an item of a {type(self.stack[-1]).__name__}")
        self.stack[-1][key] = value

    def _appends(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise FileRefusedError(f"the pickle appends to a {type(self.stack[-1]).__name__}")
        self.stack[-1].extend(items)

    def _append(self) -> None:
        value = self.stack.pop()
        if type(self.stack[-1]) is not list:
            raise FileRefusedError(f"the pickle appends to a {type(self.stack[-1]).__name__}")
        self.stack[-1].append(value)

    def _build(self) -> None:
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, _ScriptObject):
            target.state = state
        elif type(target) is not OrderedDict:  # a state dict's ``_metadata`` is dropped
            raise FileRefusedError(f"the pickle sets the state of a {type(target).__name__}")

    def _newobj(self) -> None:
        args, cls = self.stack.pop(), self.stack.pop()
        if not (_one_of(cls, _CONSTRUCTIBLE) or (isinstance(cls, type) and issubclass(cls, _ScriptObject))):
            raise FileRefusedError(f"the pickle creates a {getattr(cls, '__name__', type(cls).__name__)}")
        self.append(cls.__new__(cls, *args))
        if isinstance(self.stack[-1], _ScriptObject):
            self.stack[-1].state = None

    def _reduce(self) -> None:
        args, func = self.stack.pop(), self.stack[-1]
        if not _one_of(func, _CALLABLES):
            raise FileRefusedError(f"the pickle calls a {type(func).__name__}")
        self.stack[-1] = func(*args)

    for _op, _method in ((pickle.SETITEMS, _setitems), (pickle.SETITEM, _setitem), (pickle.APPENDS, _appends),
                         (pickle.APPEND, _append), (pickle.BUILD, _build), (pickle.NEWOBJ, _newobj),
                         (pickle.REDUCE, _reduce)):
        dispatch[_op[0]] = _method
    for _op in (pickle.INST, pickle.OBJ, pickle.NEWOBJ_EX, pickle.EXT1, pickle.EXT2, pickle.EXT4,
                pickle.PERSID, pickle.ADDITEMS):
        dispatch[_op[0]] = _refuse
    del _op, _method


def _unpickle(data: bytes, records: Mapping[str, bytearray], script_objects: bool = False) -> Any:
    try:
        return _Unpickler(data, records, script_objects).load()
    except FileRefusedError:
        raise
    except Exception as error:  # a damaged pickle fails in many ways
        raise FileRefusedError(f"the file is damaged: {type(error).__name__}: {error}") from error


def _script_tensors(root: Any) -> dict[str, torch.Tensor]:
    """The tensors of a TorchScript module tree, named and ordered like its ``state_dict`` keys (without
    recursion: a crafted tree may be deep or cyclic)."""
    out: dict[str, torch.Tensor] = {}
    seen = {id(root)}
    stack = [(iter(_attributes(root)), "")]
    while stack:
        items, prefix = stack[-1]
        for name, value in items:
            if isinstance(value, torch.Tensor):
                out[prefix + str(name)] = value
            elif isinstance(value, _ScriptObject) and id(value) not in seen:
                seen.add(id(value))
                stack.append((iter(_attributes(value)), f"{prefix}{name}."))
                break
        else:
            stack.pop()
    return out


def _attributes(obj: Any) -> list[tuple[Any, Any]]:
    state = obj.state if isinstance(obj, _ScriptObject) else None
    return list(state.items()) if isinstance(state, dict) else []


def _torch_save_archive(archive: zipfile.ZipFile, prefix: str, script: bool) -> Any:
    """Unpickle ``<prefix>data.pkl`` with the storages under ``<prefix>data/``."""
    records = {name[len(prefix) + 5:]: bytearray(archive.read(name)) for name in archive.namelist()
               if name.startswith(prefix + "data/")}
    byteorder = prefix + "byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
        raise FileRefusedError("the file was written on a big-endian machine: not read")
    return _unpickle(archive.read(prefix + "data.pkl"), records, script_objects=script)


def _open_zip(source: str | Path | IO[bytes], max_bytes: int) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise FileRefusedError(
            f"not a zip archive written by torch.save, torch.jit.save or torch.export.save ({error}); "
            "files in the legacy (pickle-only) format are not read: they can run code"
        ) from error
    total = sum(info.file_size for info in archive.infolist())
    if total > max_bytes:
        raise FileRefusedError(f"the archive unpacks to {total:,} bytes, over the limit of {max_bytes:,} bytes")
    return archive


def _exported_tensors(archive: zipfile.ZipFile, root: str, max_bytes: int) -> dict[str, torch.Tensor]:
    """The weights of a ``torch.export.save`` archive, from its JSON configs and raw records."""
    names = set(archive.namelist())
    out: dict[str, torch.Tensor] = {}
    configs = sorted(n for n in names if n.startswith(root + "data/weights/") and n.endswith("_weights_config.json"))
    legacy = sorted(n for n in names if n.startswith(root + "data/weights/") and n.endswith(".pt"))
    legacy += sorted(n for n in names if n == root + "serialized_state_dict.pt")  # torch <= 2.5
    for config_name in configs:
        for fqn, meta in json.loads(archive.read(config_name))["config"].items():
            path = f"{root}data/weights/{meta['path_name']}"
            if meta.get("use_pickle"):
                value = read_tensor_file(io.BytesIO(archive.read(path)), max_bytes=max_bytes)
            else:
                tensor_meta = meta["tensor_meta"]
                dtype = _SCALAR_TYPES.get(tensor_meta["dtype"])
                if dtype is None:
                    raise FileRefusedError(f"weight {fqn!r}: dtype number {tensor_meta['dtype']!r} is not read")
                sizes = [d.get("as_int") for d in tensor_meta["sizes"]]
                strides = [d.get("as_int") for d in tensor_meta["strides"]]
                offset = tensor_meta.get("storage_offset", {"as_int": 0}).get("as_int")
                value = _view(_Storage(bytearray(archive.read(path)), dtype), offset, sizes, strides)
            if not isinstance(value, torch.Tensor):
                raise FileRefusedError(f"weight {fqn!r} is a {type(value).__name__}, not a tensor")
            out[str(fqn)] = value
    for name in legacy:
        value = read_tensor_file(io.BytesIO(archive.read(name)), max_bytes=max_bytes)
        if not isinstance(value, Mapping):
            raise FileRefusedError(f"{name} holds a {type(value).__name__}, not a state dict")
        out.update(value)
    return out


def read_tensor_file(source: str | Path | IO[bytes], *, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """What a file of unknown origin holds, read without running any of it.

    * a ``torch.save`` file: its object, made only of dicts, lists, tuples, sets, numbers, strings, dtypes
      and tensors;
    * a TorchScript archive (``torch.jit.save``): a dict of its tensors named like its ``state_dict``
      (its code is not compiled);
    * a ``torch.export.save`` program: a dict of its weights (its graph is not loaded).

    Raises `FileRefusedError` for anything else: a file over ``max_bytes`` (or an archive unpacking to
    more), a legacy pickle-only file, a pickle naming any other class or function (the check happens
    before anything is called), a tensor reaching outside its storage, a damaged archive.
    """
    if isinstance(source, (str, Path)):
        check_file_size(source, max_bytes)
    with _open_zip(source, max_bytes) as archive:
        try:
            return _read_archive(archive, max_bytes)
        except FileRefusedError:
            raise
        except (KeyError, ValueError, TypeError, AttributeError, RuntimeError, zipfile.BadZipFile) as error:
            raise FileRefusedError(f"the archive is damaged: {type(error).__name__}: {error}") from error


def _read_archive(archive: zipfile.ZipFile, max_bytes: int) -> Any:
    names = archive.namelist()
    exported = [n[: -len("archive_format")] for n in names if n.endswith("archive_format")]
    exported += [n[: -len("serialized_exported_program.json")] for n in names
                 if n.endswith("serialized_exported_program.json")]
    if exported:
        return _exported_tensors(archive, exported[0], max_bytes)
    pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pickles:
        raise FileRefusedError("the archive has no data.pkl: not written by torch.save or torch.jit.save")
    prefix = pickles[0][: -len("data.pkl")]
    if any(n.startswith(prefix + "code/") for n in names):
        return _script_tensors(_torch_save_archive(archive, prefix, script=True))
    return _torch_save_archive(archive, prefix, script=False)


def __getattr__(name: str) -> Any:
    """``check_exported_archive`` lives in `sparsify.pt2_archive` (it needs this module; kept importable here)."""
    if name == "check_exported_archive":
        return importlib.import_module("sparsify.pt2_archive").check_exported_archive
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
