"""Read a saved Core ML ``.mlpackage`` on any platform: which ops it runs, how each weight is stored.

`inspect_mlpackage` needs no Core ML runtime (none exists on Linux): it reads the model
description with ``coremltools.models.MLModel(path, skip_model_load=True)`` and the weight values
straight from ``Data/com.apple.CoreML/weights/*.bin``. It works on any ML Program package, whoever
made it (plain ``coremltools``, `sparsify.export.coreml.export_coreml`, Xcode).

What it reports (`PackageReport`):

* ``op_counts`` — how many ops of each type the program holds (all functions, nested blocks
  included), e.g. ``{"const": 12, "constexpr_sparse_to_dense": 4, "conv": 2, ...}``;
* ``rows`` — one `WeightInfo` per weight: every ``const`` stored in the weight file, and every
  compressed weight (a ``constexpr_*`` op that a compute op reads). For each: shape, storage
  (``"dense"``, ``"sparse"``, ``"palettized"``, ``"quantized"``, ``"sparse+quantized"``, ...), the
  number of non-zeros (for sparse weights: the set bits of the mask), and its bytes in the weight file;
* ``total_bytes`` — the size of the weight file(s), measured;
* ``dense_bytes`` — what the same weights would take stored dense, computed from
  `sparsify.analysis.sizing` (exact up to the last blob's padding, at most 63 bytes over).

How weights are stored (the public MIL blob format, version 2): a 64-byte file header, then one blob
per constant: a 64-byte header (``uint32`` sentinel ``0xDEADBEEF``, ``uint32`` data type, ``uint64``
size in bytes, ``uint64`` offset of the data, reserved words) followed by the data, each blob aligned
to 64 bytes. The model description points at a blob by the offset of its header. A sparse weight
(``constexpr_sparse_to_dense``) holds ``nonzero_data`` (the kept values, row-major) and ``mask``
(one bit per element, least significant bit first: a packed ``uint8`` tensor on iOS16/17, a
``uint1`` tensor of the weight's shape on iOS18+).
"""

from __future__ import annotations

import math
import os
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..analysis.report import Report
from ..analysis.sizing import StoredTensor, weight_file_bytes

__all__ = [
    "PackageReport",
    "WeightInfo",
    "inspect_mlpackage",
    "read_constants",
    "read_program",
    "read_weights",
    "weight_file_sizes",
]

_BLOB_SENTINEL = 0xDEADBEEF
_BLOB_HEADER = struct.Struct("<IIQQ")  # sentinel, data type, size in bytes, offset of the data

# bits per element of each MIL data type (proto enum name → bits), and the numpy type to decode it
_BITS = {
    "BOOL": 8, "FLOAT8E4M3FN": 8, "FLOAT8E5M2": 8, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT32": 32,
    "FLOAT64": 64, "INT4": 4, "INT8": 8, "INT16": 16, "INT32": 32, "INT64": 64, "UINT1": 1, "UINT2": 2,
    "UINT3": 3, "UINT4": 4, "UINT6": 6, "UINT8": 8, "UINT16": 16, "UINT32": 32, "UINT64": 64,
}
_NUMPY = {
    "FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64, "INT8": np.int8,
    "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16,
    "UINT32": np.uint32, "UINT64": np.uint64,
}
_PRECISION = {"float16": "fp16", "float32": "fp32"}  # dtype name → sparsify.analysis.sizing precision


class _Sparsity:
    """``sparsity`` from ``nonzeros`` and ``numel`` (shared by the report rows)."""

    numel: int
    nonzeros: int | None

    @property
    def sparsity(self) -> float | None:
        """Fraction of zero elements (``None`` when the non-zeros are unknown)."""
        if self.nonzeros is None or self.numel == 0:
            return None
        return 1.0 - self.nonzeros / self.numel


@dataclass(frozen=True)
class WeightInfo(_Sparsity):
    """How one weight of a Core ML program is stored."""

    name: str  # the name of the value in the program (the output of its const / constexpr op)
    op_name: str  # the name of the op producing it (coremltools' op-name configs refer to this)
    function: str
    op_type: str  # "const", or the constexpr op that produces the weight
    storage: str  # "dense", "sparse", "palettized", "quantized", "sparse+quantized", ...
    shape: tuple[int, ...]
    dtype: str  # of the weight as the compute ops see it ("float16", "float32", ...)
    numel: int
    nonzeros: int | None  # None where it cannot be read without decompressing (palettized, quantized)
    bytes: int  # data bytes in the weight file (or inline in the description), headers excluded
    consumers: tuple[str, ...] = ()  # op types that read it

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "consumers": list(self.consumers),
                "sparsity": self.sparsity}


@dataclass
class PackageReport:
    """What `inspect_mlpackage` found in one package."""

    path: str
    specification_version: int
    functions: tuple[str, ...]
    op_counts: dict[str, int]
    rows: list[WeightInfo]
    total_bytes: int  # size of the weight file(s), measured
    dense_bytes: int  # the same weights stored dense, computed
    weight_files: dict[str, int] = field(default_factory=dict)  # file name → bytes

    @property
    def ratio(self) -> float:
        """``total_bytes / dense_bytes`` (1.0 for an empty package)."""
        return self.total_bytes / self.dense_bytes if self.dense_bytes else 1.0

    def weight(self, name: str) -> WeightInfo:
        """The row of the weight called ``name`` (its value name in the program)."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no weight named {name!r} in {self.path}; weights: {', '.join(r.name for r in self.rows)}")

    def storage_counts(self) -> dict[str, int]:
        """Number of weights per storage kind."""
        return dict(Counter(row.storage for row in self.rows))

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data."""
        return {
            "path": self.path,
            "specification_version": self.specification_version,
            "functions": list(self.functions),
            "op_counts": dict(self.op_counts),
            "total_bytes": self.total_bytes,
            "dense_bytes": self.dense_bytes,
            "ratio": self.ratio,
            "weight_files": dict(self.weight_files),
            "rows": [row.as_dict() for row in self.rows],
        }

    def to_text(self) -> str:
        """Op counts, a table of the weights, and the weight-file size against dense."""
        ops = ", ".join(f"{op_type}: {n}" for op_type, n in sorted(self.op_counts.items(), key=lambda kv: -kv[1]))
        table = Report({
            row.name: {
                "storage": row.storage, "shape": "x".join(map(str, row.shape)) or "scalar", "dtype": row.dtype,
                "numel": row.numel, "nonzeros": "?" if row.nonzeros is None else row.nonzeros,
                "sparsity": "?" if row.sparsity is None else f"{row.sparsity:.3f}", "bytes": row.bytes,
            }
            for row in self.rows
        })
        return "\n".join([
            f"{self.path} (specification version {self.specification_version}, "
            f"functions: {', '.join(self.functions)})",
            f"ops: {ops}",
            str(table),
            f"weight file: {self.total_bytes} bytes; stored dense: {self.dense_bytes} bytes "
            f"(ratio {self.ratio:.3f})",
        ])

    __str__ = to_text


def inspect_mlpackage(path: str | os.PathLike[str]) -> PackageReport:
    """Read ``path`` (a saved ``.mlpackage``) and report its ops and how every weight is stored.

    Raises ``FileNotFoundError`` when nothing is at ``path`` and ``ValueError`` when the package is not
    an ML Program (a ``neuralNetwork`` model keeps no weight file of this kind).
    """
    model = _load(path)
    return read_program(model.get_spec(), model.weights_dir, str(path))


def _load(path: str | os.PathLike[str]) -> Any:
    import coremltools as ct

    if not Path(path).exists():
        raise FileNotFoundError(f"path={str(path)!r}: no such .mlpackage")
    return ct.models.MLModel(str(path), skip_model_load=True)


def _check_program(spec: Any, path: str) -> None:
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise ValueError(f"{path or 'the model'} is a {kind!r} model: only ML Programs (mlprogram) can be inspected")


def read_program(spec: Any, weights_dir: str | os.PathLike[str] | None, path: str = "") -> PackageReport:
    """`inspect_mlpackage` for a model description already in memory (``MLModel.get_spec()``)
    whose weight files are in ``weights_dir``."""
    _check_program(spec, path)
    with _WeightFiles(weights_dir) as files:
        program = _Program(spec.mlProgram, files)
        rows = [program.describe(weight) for weight in program.weights()]
    sizes = weight_file_sizes(weights_dir)
    return PackageReport(
        path=path,
        specification_version=spec.specificationVersion,
        functions=tuple(spec.mlProgram.functions),
        op_counts=dict(program.op_counts),
        rows=rows,
        total_bytes=sum(sizes.values()),
        dense_bytes=_dense_file_bytes(rows),
        weight_files=sizes,
    )


def read_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The values of the dense and sparse weights of a saved package, by value name (sparse ones
    decompressed: the mask's set bits, in row-major order, receive ``nonzero_data``). Palettized or
    quantized weights are left out."""
    model = _load(path)
    return _read_values(model.get_spec(), model.weights_dir, sparse=True, key=lambda op: op.outputs[0].name)


def read_constants(spec: Any, weights_dir: str | os.PathLike[str] | None) -> dict[str, np.ndarray]:
    """The dense floating-point weights of a model description (``const`` ops stored in the weight
    file), by op name in program order."""
    return _read_values(spec, weights_dir, sparse=False, key=_op_name)


def _read_values(spec: Any, weights_dir: Any, sparse: bool, key: Any) -> dict[str, np.ndarray]:
    _check_program(spec, "")
    with _WeightFiles(weights_dir) as files:
        program = _Program(spec.mlProgram, files)
        arrays = {}
        for weight in program.weights():
            if weight.op.type == "const" or sparse:
                value = program.value(weight)
                if value is not None and (sparse or value.dtype.kind == "f"):
                    arrays[key(weight.op)] = value
        return arrays


def weight_file_sizes(weights_dir: str | os.PathLike[str] | None) -> dict[str, int]:
    """Bytes of each file in a package's weights folder."""
    folder = Path(weights_dir) if weights_dir else None
    if folder is None or not folder.is_dir():
        return {}
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}


def _dense_file_bytes(rows: list[WeightInfo]) -> int:
    """Size of a weight file holding every row dense (rows of other dtypes as they are stored)."""
    total = weight_file_bytes(())  # the file header alone
    for row in rows:
        precision = _PRECISION.get(row.dtype)
        if precision is None:
            total += row.bytes
        else:
            total += StoredTensor(row.numel, row.numel, sparse=False).file_bytes(precision)
    return total


# -- reading values -------------------------------------------------------------------------------


class _WeightFiles:
    """Opens the weight files of a package and reads blobs by offset."""

    def __init__(self, weights_dir: str | os.PathLike[str] | None) -> None:
        self.dir = Path(weights_dir) if weights_dir else None
        self._handles: dict[str, BinaryIO] = {}

    def __enter__(self) -> _WeightFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def blob(self, file_name: str, offset: int) -> bytes:
        """The data of the blob whose header is at ``offset`` in ``file_name`` (``@model_path/weights/x.bin``)."""
        base = file_name.split("/")[-1]
        if base not in self._handles:
            if self.dir is None:
                raise FileNotFoundError(f"the model refers to weight file {file_name!r} but has no weights folder")
            self._handles[base] = open(self.dir / base, "rb")  # noqa: SIM115 - closed in __exit__
        handle = self._handles[base]
        handle.seek(offset)
        header = handle.read(_BLOB_HEADER.size)
        if len(header) < _BLOB_HEADER.size:
            raise ValueError(f"{base}: offset {offset} is past the end of the file; the package is damaged")
        sentinel, _, size, data_offset = _BLOB_HEADER.unpack(header)
        if sentinel != _BLOB_SENTINEL:
            raise ValueError(f"{base}: no blob header at offset {offset} (found 0x{sentinel:08X}); damaged package")
        handle.seek(data_offset)
        return handle.read(size)


@dataclass
class _Value:
    """A tensor value in the description: its type and where its data is."""

    spec: Any  # MIL_pb2.Value

    @property
    def dtype(self) -> str:
        from coremltools.proto import MIL_pb2

        return MIL_pb2.DataType.Name(self.spec.type.tensorType.dataType)

    @property
    def shape(self) -> tuple[int, ...]:
        return _shape(self.spec.type)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def in_file(self) -> bool:
        return self.spec.WhichOneof("value") == "blobFileValue"

    def raw(self, files: _WeightFiles) -> bytes | None:
        """The stored bytes (sub-byte types packed), or ``None`` for an immediate list of numbers."""
        if self.in_file:
            return files.blob(self.spec.blobFileValue.fileName, self.spec.blobFileValue.offset)
        tensor = self.spec.immediateValue.tensor
        return tensor.bytes.values if tensor.WhichOneof("value") == "bytes" else None

    def nbytes(self, files: _WeightFiles) -> int:
        raw = self.raw(files)
        return len(raw) if raw is not None else math.ceil(self.numel * _BITS.get(self.dtype, 8) / 8)

    def array(self, files: _WeightFiles) -> np.ndarray | None:
        """The values as numpy, for types numpy has (``None`` for sub-byte and other types)."""
        np_type = _NUMPY.get(self.dtype)
        if np_type is None:
            return None
        raw = self.raw(files)
        if raw is not None:
            return np.frombuffer(raw, dtype=np_type, count=self.numel).reshape(self.shape)
        tensor = self.spec.immediateValue.tensor
        which = tensor.WhichOneof("value")
        values = getattr(tensor, which).values if which else []
        return np.asarray(values).astype(np_type).reshape(self.shape)

    def bits(self, files: _WeightFiles, count: int) -> np.ndarray | None:
        """The first ``count`` entries of a mask as ``bool``: packed bits (LSB first) or ``bool`` values."""
        if self.dtype == "BOOL":
            array = self.array(files)
            return None if array is None else array.reshape(-1)[:count] != 0
        if self.dtype not in ("UINT1", "UINT8"):
            return None
        raw = self.raw(files)
        packed = np.frombuffer(raw, dtype=np.uint8) if raw is not None else self.array(files)
        if packed is None:
            return None
        return np.unpackbits(packed.reshape(-1), count=count, bitorder="little").astype(bool)


def _shape(value_type: Any) -> tuple[int, ...]:
    dims = value_type.tensorType.dimensions
    return tuple(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else -1 for d in dims)


def _dtype_name(value_type: Any) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(value_type.tensorType.dataType).lower()


@dataclass
class _Weight:
    function: str
    op: Any  # MIL_pb2.Operation producing the weight


def _is_constexpr(op_type: str) -> bool:
    return op_type.startswith("constexpr_")


class _Program:
    """Indexes one ML Program: ops, who reads which value, and the values behind each weight."""

    def __init__(self, program: Any, files: _WeightFiles) -> None:
        self.files = files
        self.op_counts: Counter[str] = Counter()
        self.producers: dict[str, Any] = {}  # value name → const / constexpr op
        self.consumers: dict[str, list[str]] = {}  # value name → op types reading it
        self.ops: list[tuple[str, Any]] = []
        for fn_name, function in program.functions.items():
            block = function.block_specializations.get(function.opset)
            if block is None:  # a function always names its opset; be lenient with odd files
                block = next(iter(function.block_specializations.values()))
            for op in _walk(block):
                self.op_counts[op.type] += 1
                self.ops.append((fn_name, op))
                if op.type == "const" or _is_constexpr(op.type):
                    for out in op.outputs:
                        self.producers[out.name] = op
                for argument in op.inputs.values():
                    for binding in argument.arguments:
                        if binding.WhichOneof("binding") == "name":
                            self.consumers.setdefault(binding.name, []).append(op.type)

    def weights(self) -> Iterator[_Weight]:
        """Consts stored in a weight file, and compressed weights, that something other than a
        ``constexpr_*`` op reads (parts of a compressed weight are not weights of their own)."""
        for fn_name, op in self.ops:
            if op.type == "const":
                if not _Value(op.attributes["val"]).in_file:
                    continue
            elif not _is_constexpr(op.type):
                continue
            readers = [r for out in op.outputs for r in self.consumers.get(out.name, [])]
            if readers and all(_is_constexpr(r) for r in readers):
                continue
            yield _Weight(fn_name, op)

    def parts(self, op: Any) -> tuple[list[str], dict[str, _Value]]:
        """Op types and tensor values (by ``op type.argument``) that make up the weight ``op`` produces."""
        op_types = [op.type]
        values: dict[str, _Value] = {}
        for key, value in op.attributes.items():
            if key != "name" and value.type.WhichOneof("type") == "tensorType":
                values[f"{op.type}.{key}"] = _Value(value)
        for key, argument in op.inputs.items():
            for binding in argument.arguments:
                if binding.WhichOneof("binding") == "value":
                    values[f"{op.type}.{key}"] = _Value(binding.value)
                elif (producer := self.producers.get(binding.name)) is not None:
                    sub_types, sub_values = self.parts(producer)
                    op_types += sub_types
                    if producer.type == "const":  # an input const: name it after the argument
                        values[f"{op.type}.{key}"] = next(iter(sub_values.values()))
                    else:
                        values.update(sub_values)
        return op_types, values

    def describe(self, weight: _Weight) -> WeightInfo:
        op = weight.op
        out = op.outputs[0]
        op_types, values = self.parts(op)
        shape = _shape(out.type)
        numel = math.prod(shape)
        storage = _storage(op_types)
        nonzeros: int | None = None
        if storage == "dense":
            array = values["const.val"].array(self.files)
            nonzeros = None if array is None else int(np.count_nonzero(array))
        elif "sparse" in storage:
            mask = _mask(values, numel)
            bits = None if mask is None else mask.bits(self.files, numel)
            nonzeros = None if bits is None else int(np.count_nonzero(bits))
        return WeightInfo(
            name=out.name,
            op_name=_op_name(op),
            function=weight.function,
            op_type=op.type,
            storage=storage,
            shape=shape,
            dtype=_dtype_name(out.type),
            numel=numel,
            nonzeros=nonzeros,
            bytes=sum(v.nbytes(self.files) for v in values.values()),
            consumers=tuple(self.consumers.get(out.name, ())),
        )

    def value(self, weight: _Weight) -> np.ndarray | None:
        """The weight's dense values, for plain and sparse (not otherwise compressed) weights."""
        op_types, values = self.parts(weight.op)
        shape = _shape(weight.op.outputs[0].type)
        if op_types == ["const"]:
            return values["const.val"].array(self.files)
        if op_types != ["constexpr_sparse_to_dense"]:
            return None
        data = values["constexpr_sparse_to_dense.nonzero_data"].array(self.files)
        mask = _mask(values, math.prod(shape))
        bits = None if mask is None else mask.bits(self.files, math.prod(shape))
        if data is None or bits is None:
            return None
        dense = np.zeros(bits.size, dtype=data.dtype)
        dense[bits] = data.reshape(-1)
        return dense.reshape(shape)


def _op_name(op: Any) -> str:
    """The op's ``name`` attribute (not always its output's name: ``op_4`` → ``var_4``)."""
    name = op.attributes.get("name")
    if name is not None and name.immediateValue.tensor.strings.values:
        return str(name.immediateValue.tensor.strings.values[0])
    return op.outputs[0].name


def _walk(block: Any) -> Iterator[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _walk(inner)


def _storage(op_types: list[str]) -> str:
    if op_types == ["const"]:
        return "dense"
    kinds = []
    if any("sparse" in t for t in op_types):
        kinds.append("sparse")
    if any("lut" in t for t in op_types):
        kinds.append("palettized")
    if any("quantize" in t or "shift_scale" in t for t in op_types):
        kinds.append("quantized")
    return "+".join(kinds) if kinds else op_types[0]


def _mask(values: dict[str, _Value], numel: int) -> _Value | None:
    """The bit mask of a sparse weight: iOS16's packed ``mask`` or a ``uint1`` tensor of the weight's size."""
    packed = values.get("constexpr_sparse_to_dense.mask")
    if packed is not None and packed.dtype == "UINT8" and packed.numel == math.ceil(numel / 8):
        return packed
    for value in values.values():
        if value.dtype == "UINT1" and value.numel == numel:
            return value
    return None
