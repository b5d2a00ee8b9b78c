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
  (``"dense"``, ``"sparse"``, ``"palettized"``, ``"quantized"``, ``"sparse+palettized"``,
  ``"sparse+quantized"``), the number of non-zeros of the decoded weight (`sparsify.export.decode`;
  for a sparse weight that is not decoded, the set bits of its mask), and its bytes in the weight file
  (a blob that two ops share — the mask of sparse + quantized weights — is counted once);
* ``total_bytes`` — the size of the weight file(s), measured;
* ``dense_bytes`` — what the same weights would take stored dense, computed from
  `sparsify.analysis.sizing` in the file's order (the last blob unpadded, as the converter writes it),
  so it equals `export_coreml`'s real dense conversion for the same model.

The weight file's layout and its checks are in `sparsify.export.blobs`; decoding in
`sparsify.export.decode`. A sparse weight (``constexpr_sparse_to_dense``) holds ``nonzero_data`` (the
kept values, row-major) and ``mask`` (one bit per element, least significant bit first: a packed
``uint8`` tensor on iOS16/17, a ``uint1`` tensor of the weight's shape on iOS18+).

What is refused: a path that does not exist (``FileNotFoundError``); one that is not a Core ML model
at all, or not an ML Program (`NotAPackageError`); a package whose manifest, model description or
weight file is missing, truncated or inconsistent (`DamagedPackageError`, naming the file). Both are
`MLPackageError`s (a ``ValueError``): nothing is ever read past a damaged blob.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.report import Report
from ..analysis.sizing import StoredTensor, blob_file_bytes
from .blobs import Value, WeightFiles, shape_of
from .decode import decode, mask_of
from .errors import DamagedPackageError, NotAPackageError
from .quiet import quiet

__all__ = [
    "PackageReport",
    "WeightInfo",
    "inspect_mlpackage",
    "load_spec",
    "read_constants",
    "read_program",
    "read_weights",
    "weight_file_sizes",
]

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
    storage: str  # "dense", "sparse", "palettized", "quantized", "sparse+palettized", "sparse+quantized"
    shape: tuple[int, ...]
    dtype: str  # of the weight as the compute ops see it ("float16", "float32", ...)
    numel: int
    nonzeros: int | None  # of the decoded weight; None where no decoder applies (iOS16 palettized / quantized)
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

    Raises ``FileNotFoundError`` when nothing is at ``path``, `NotAPackageError` when it is no Core ML
    ML Program (a directory without ``Manifest.json``, a file of another kind, a ``neuralNetwork``
    model) and `DamagedPackageError` when one of its files is missing, truncated or inconsistent.
    """
    with quiet():
        spec, weights_dir = load_spec(path)
        return read_program(spec, weights_dir, str(path))


def load_spec(path: str | os.PathLike[str]) -> tuple[Any, Path | None]:
    """The model description of a package (or ``.mlmodel`` file) and its weights folder, read without
    Core ML Tools' ``MLModel`` so that every way a path can be wrong gets its own clear error."""
    from coremltools.proto import Model_pb2
    from google.protobuf.message import DecodeError

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"path={str(path)!r}: no such .mlpackage")
    if root.is_dir():
        model_file = _root_model(root)

        def error(message: str) -> Exception:
            return DamagedPackageError(str(path), str(model_file.relative_to(root)), message)
    else:
        model_file = root

        def error(message: str) -> Exception:
            return NotAPackageError(str(path), f"not a Core ML model file ({message}); expected an .mlpackage "
                                               "directory or an .mlmodel file")
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(model_file.read_bytes())
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise error(f"the model description cannot be parsed: {exc}") from exc
    if spec.specificationVersion <= 0 or spec.WhichOneof("Type") is None:
        raise error("it holds no model description")
    _check_program(spec, str(path))
    return spec, model_file.parent / "weights"


def _root_model(root: Path) -> Path:
    """The model description a package's ``Manifest.json`` names as its root model."""
    manifest = root / "Manifest.json"
    if not manifest.is_file():
        raise NotAPackageError(str(root), "no Manifest.json in this directory: it is not an .mlpackage")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        relative = data["itemInfoEntries"][data["rootModelIdentifier"]]["path"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DamagedPackageError(str(root), "Manifest.json", f"cannot be read as a package manifest ({exc!r})") \
            from exc
    model_file = root / "Data" / str(relative)
    if not model_file.resolve().is_relative_to((root / "Data").resolve()):
        raise DamagedPackageError(str(root), "Manifest.json", f"the root model path {relative!r} leaves the package")
    if not model_file.is_file():
        raise DamagedPackageError(str(root), f"Data/{relative}", "the root model named by Manifest.json is missing")
    return model_file


def _check_program(spec: Any, path: str) -> None:
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise NotAPackageError(path or "the model",
                               f"a {kind!r} model: only ML Programs (mlprogram) can be inspected")


def read_program(spec: Any, weights_dir: str | os.PathLike[str] | None, path: str = "") -> PackageReport:
    """`inspect_mlpackage` for a model description already in memory (``MLModel.get_spec()``)
    whose weight files are in ``weights_dir``."""
    _check_program(spec, path)
    with WeightFiles(weights_dir, path) as files:
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
    """The values of the weights of a saved package, by value name, decompressed (`sparsify.export.decode`):
    dense, sparse, and iOS18's palettized / quantized ones, alone or jointly with sparsity. A weight
    stored in a way that is not decoded (iOS16 palettized or quantized ops) is left out, never guessed."""
    with quiet():
        spec, weights_dir = load_spec(path)
        return _read_values(spec, weights_dir, str(path), dense_only=False, key=lambda op: op.outputs[0].name)


def read_constants(spec: Any, weights_dir: str | os.PathLike[str] | None) -> dict[str, np.ndarray]:
    """The dense floating-point weights of a model description (``const`` ops stored in the weight
    file), by op name in program order."""
    return _read_values(spec, weights_dir, "", dense_only=True, key=_op_name)


def _read_values(spec: Any, weights_dir: Any, path: str, dense_only: bool, key: Any) -> dict[str, np.ndarray]:
    _check_program(spec, path)
    with WeightFiles(weights_dir, path) as files:
        program = _Program(spec.mlProgram, files)
        arrays = {}
        for weight in program.weights():
            if weight.op.type == "const" or not dense_only:
                value = program.value(weight)
                if value is not None and (not dense_only or value.dtype.kind == "f"):
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
    sizes: list[int] = []
    for row in rows:  # in the file's order, so the last blob is left unpadded as the converter leaves it
        precision = _PRECISION.get(row.dtype)
        if precision is None:
            sizes += [row.bytes] if row.numel >= 10 else []
        else:
            sizes += StoredTensor(row.numel, row.numel, sparse=False).file_blob_sizes(precision)
    return blob_file_bytes(sizes)


def _dtype_name(value_type: Any) -> str:
    from coremltools.proto import MIL_pb2

    return str(MIL_pb2.DataType.Name(value_type.tensorType.dataType)).lower()


@dataclass
class _Weight:
    function: str
    op: Any  # MIL_pb2.Operation producing the weight


def _is_constexpr(op_type: str) -> bool:
    return op_type.startswith("constexpr_")


class _Program:
    """Indexes one ML Program: ops, who reads which value, and the values behind each weight."""

    def __init__(self, program: Any, files: WeightFiles) -> None:
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
                if not Value(op.attributes["val"]).in_file:
                    continue
            elif not _is_constexpr(op.type):
                continue
            readers = [r for out in op.outputs for r in self.consumers.get(out.name, [])]
            if readers and all(_is_constexpr(r) for r in readers):
                continue
            yield _Weight(fn_name, op)

    def parts(self, op: Any) -> tuple[list[str], dict[str, Value]]:
        """Op types and tensor values (by ``op type.argument``) that make up the weight ``op`` produces."""
        op_types = [op.type]
        values: dict[str, Value] = {}
        for key, value in op.attributes.items():
            if key != "name" and value.type.WhichOneof("type") == "tensorType":
                values[f"{op.type}.{key}"] = Value(value)
        for key, argument in op.inputs.items():
            for binding in argument.arguments:
                if binding.WhichOneof("binding") == "value":
                    values[f"{op.type}.{key}"] = Value(binding.value)
                elif (producer := self.producers.get(binding.name)) is not None:
                    sub_types, sub_values = self.parts(producer)
                    op_types += [t for t in sub_types if t not in op_types]
                    if producer.type == "const":  # an input const: name it after the argument
                        values[f"{op.type}.{key}"] = next(iter(sub_values.values()))
                    else:
                        values.update(sub_values)
        return op_types, values

    def describe(self, weight: _Weight) -> WeightInfo:
        op = weight.op
        out = op.outputs[0]
        op_types, values = self.parts(op)
        shape = shape_of(out.type)
        storage = _storage(op_types)
        array = decode(op_types, values, shape, self.files)
        nonzeros = None if array is None else int(np.count_nonzero(array))
        if nonzeros is None and storage.startswith("sparse"):  # not decoded, but the mask is readable
            mask = mask_of(values, shape, self.files)
            nonzeros = None if mask is None else int(np.count_nonzero(mask))
        blobs: dict[Any, int] = {}  # a blob shared by two ops (a mask) is counted once
        for key, value in values.items():
            blobs[value.blob_key or key] = value.nbytes(self.files)
        return WeightInfo(
            name=out.name,
            op_name=_op_name(op),
            function=weight.function,
            op_type=op.type,
            storage=storage,
            shape=shape,
            dtype=_dtype_name(out.type),
            numel=math.prod(shape),
            nonzeros=nonzeros,
            bytes=sum(blobs.values()),
            consumers=tuple(self.consumers.get(out.name, ())),
        )

    def value(self, weight: _Weight) -> np.ndarray | None:
        """The weight's dense values (`sparsify.export.decode`), ``None`` where no decoder applies."""
        op_types, values = self.parts(weight.op)
        return decode(op_types, values, shape_of(weight.op.outputs[0].type), self.files)


def _op_name(op: Any) -> str:
    """The op's ``name`` attribute (not always its output's name: ``op_4`` → ``var_4``)."""
    name = op.attributes.get("name")
    if name is not None and name.immediateValue.tensor.strings.values:
        return str(name.immediateValue.tensor.strings.values[0])
    return str(op.outputs[0].name)


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
