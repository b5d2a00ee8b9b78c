"""Read a saved Core AI ``.aimodel``: which ops it runs, how each weight is stored, and (optionally) its values.

An ``.aimodel`` is a folder: ``main.mlirb`` (the program as MLIR bytecode, weights included),
``main.hash`` (the SHA-256 of ``main.mlirb``) and ``metadata.json``. `inspect_aimodel` checks the
folder before anything parses it — the files' total size against a limit, ``metadata.json`` as plain
JSON (at most 1 MiB), the hash against the bytecode — and only then hands ``main.mlirb`` to Core AI's
own bytecode *parser* (``coreai.authoring.asset.load_module_from_bytecode``): nothing in the file is
executed, unpickled or imported. The parser is native code: a file crafted to crash it is refused by
the hash check only when it was damaged after saving, not when it was written that way, so inspect
files you did not make in a process you can afford to lose (the ``sparsify inspect`` command).

What it reports (`AIModelReport`): ``op_counts`` (every op of the ``main`` graph), ``weights`` — one
`StoredWeight` per floating-point tensor a compute op reads: a plain ``coreai.constant``, or the end of
a decompression chain (``build_sparse_with_bitmask`` → ``sparse_with_bitmask_to_dense``, optionally fed
by ``lut_to_dense`` or followed by ``blockwise_shift_scale``) — with its shape, storage (``"dense"``,
``"sparse"``, ``"quantized int8"``, ``"palettized 4 bits"``, ``"sparse+quantized int8"``, ...), the
non-zeros it holds, and the bytes of its constants (values, mask, palette, scales), computed from their
types. ``total_bytes`` is the size of ``main.mlirb``, measured.

Constant values are copied out with Core AI's ``copy_constant_value_to_array`` into a buffer of the size
the constant's type says, and decoded here (`decode_raw`); converting an attribute to numpy directly
aborts the process on types numpy lacks (float8), so that is never done.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.report import Report
from ..model_files import DEFAULT_MAX_BYTES
from .errors import DamagedPackageError, NotAPackageError

__all__ = ["AIModelReport", "StoredWeight", "decode_raw", "inspect_aimodel", "require_coreai"]

BYTECODE, HASH, METADATA = "main.mlirb", "main.hash", "metadata.json"
_METADATA_LIMIT = 1 << 20
_DECOMPRESSION = {
    "coreai.build_sparse_with_bitmask", "coreai.sparse_with_bitmask_to_dense", "coreai.lut_to_dense",
    "coreai.blockwise_shift_scale",
}
_FLOATS = ("f32", "f16", "bf16", "f64")
_NUMPY = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "si8": np.int8, "ui8": np.uint8,
          "si16": np.int16, "ui16": np.uint16, "si32": np.int32, "ui32": np.uint32, "si64": np.int64,
          "ui64": np.uint64, "i1": np.bool_}
_ML_DTYPES = {"bf16": "bfloat16", "f8E4M3FN": "float8_e4m3fn", "f8E5M2": "float8_e5m2"}
_INSTALL = "pip install 'sparsify-coreml[coreai]' (coreai-core, coreai-torch, coreai-opt: Linux x86-64, CPython 3.11+)"


def require_coreai(what: str) -> None:
    """Raise ``ImportError`` saying how to install Core AI when ``coreai`` is missing."""
    try:
        import coreai  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{what} needs Core AI's Python packages: {_INSTALL}") from exc


@dataclass(frozen=True)
class StoredWeight:
    """One floating-point tensor of the program, as stored."""

    index: int  # its position among the program's weights, in program order
    shape: tuple[int, ...]
    storage: str
    dtype: str  # element type of the stored values: "f32", "si8", "ui4" (palette indices), "f8E4M3FN", ...
    numel: int
    nonzeros: int | None  # stored non-zero values (sparse: the mask's set bits; dense: decoded)
    bytes: int  # bytes of its constants, from their types
    consumers: tuple[str, ...]  # the ops that read it

    @property
    def sparsity(self) -> float | None:
        return None if self.nonzeros is None or not self.numel else 1.0 - self.nonzeros / self.numel

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "consumers": list(self.consumers),
                "sparsity": self.sparsity}


@dataclass
class AIModelReport:
    """What `inspect_aimodel` read from a saved ``.aimodel``."""

    path: str
    total_bytes: int  # main.mlirb
    weights: list[StoredWeight]
    op_counts: dict[str, int]
    metadata: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    outputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    values: list[np.ndarray | None] | None = field(default=None, repr=False)  # decode=True: dense float32 values

    @property
    def dense_bytes(self) -> int:
        """What the floating-point weights would take stored dense in their own dtype (float32 unless stored
        narrower), computed: the payload of an uncompressed export."""
        return sum(w.numel * (2 if w.dtype in ("f16", "bf16") else 4) for w in self.weights)

    def storage_counts(self) -> dict[str, int]:
        return dict(Counter(w.storage for w in self.weights))

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "total_bytes": self.total_bytes, "dense_bytes": self.dense_bytes,
                "op_counts": dict(self.op_counts), "metadata": dict(self.metadata),
                "inputs": {k: list(v) for k, v in self.inputs.items()},
                "outputs": {k: list(v) for k, v in self.outputs.items()},
                "weights": [w.as_dict() for w in self.weights]}

    def to_text(self) -> str:
        table = Report({
            f"#{w.index}": {"storage": w.storage, "dtype": w.dtype, "shape": "x".join(map(str, w.shape)) or "scalar",
                            "numel": w.numel, "nonzeros": "?" if w.nonzeros is None else w.nonzeros,
                            "sparsity": "?" if w.sparsity is None else f"{w.sparsity:.3f}", "bytes": w.bytes,
                            "read by": ", ".join(sorted(set(w.consumers)))}
            for w in self.weights
        })
        counts = ", ".join(f"{n}: {c}" for n, c in sorted(self.storage_counts().items()))
        ops = ", ".join(f"{n.removeprefix('coreai.')} x{c}" for n, c in sorted(self.op_counts.items()))
        return "\n".join([
            f"{self.path} ({self.metadata.get('producer', 'unknown producer')})",
            f"inputs: {self.inputs}; outputs: {self.outputs}",
            f"ops: {ops}",
            str(table),
            f"weights: {counts}; main.mlirb {self.total_bytes} bytes (the weights dense: {self.dense_bytes} bytes)",
        ])

    __str__ = to_text


def check_folder(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Check an ``.aimodel`` folder before parsing anything in it; returns its metadata (plain JSON)."""
    if not path.exists() and not path.is_symlink():
        raise FileNotFoundError(f"{path}: no such .aimodel")
    if path.is_symlink() or not path.is_dir():
        raise NotAPackageError(str(path), "a file or link, not an .aimodel folder")
    if not (path / BYTECODE).is_file() or (path / BYTECODE).is_symlink():
        raise NotAPackageError(str(path), f"no {BYTECODE}: not a Core AI model folder")
    files = [p for p in path.rglob("*") if p.is_file() or p.is_symlink()]
    links = [p.relative_to(path).as_posix() for p in files if p.is_symlink()]
    if links:
        raise DamagedPackageError(str(path), links[0], "a symbolic link inside the model folder is refused")
    total = sum(p.stat().st_size for p in files)
    if total > max_bytes:
        raise ValueError(f"{path} holds {total:,} bytes, over the limit of {max_bytes:,} bytes")
    metadata: dict[str, Any] = {}
    meta_path = path / METADATA
    if meta_path.is_file():
        if meta_path.stat().st_size > _METADATA_LIMIT:
            raise DamagedPackageError(str(path), METADATA, f"over {_METADATA_LIMIT} bytes")
        try:
            loaded = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise DamagedPackageError(str(path), METADATA, f"not JSON ({exc})") from exc
        metadata = loaded if isinstance(loaded, dict) else {"value": loaded}
    hash_path = path / HASH
    if hash_path.is_file():
        digest = hashlib.sha256((path / BYTECODE).read_bytes()).digest()
        if hash_path.read_bytes() != digest:
            raise DamagedPackageError(str(path), BYTECODE, f"its SHA-256 differs from {HASH}")
    return metadata


def inspect_aimodel(path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                    decode: bool = False) -> AIModelReport:
    """Read ``path`` (an ``.aimodel`` folder) without running it; see the module docstring.

    With ``decode=True`` every weight's dense values are decoded too and kept in ``report.values``
    (not part of `AIModelReport.as_dict`), in the order of ``report.weights`` (``None`` for a chain this
    module cannot decode: palettes other than one per tensor).
    """
    path = Path(path)
    metadata = check_folder(path, max_bytes)
    require_coreai(f"reading {path}")
    from coreai.authoring import Context
    from coreai.authoring.asset import load_module_from_bytecode

    try:
        module = load_module_from_bytecode(context=Context()._mlir_context, path=path / BYTECODE)
    except Exception as exc:  # the native parser's error, whatever its class
        raise DamagedPackageError(str(path), BYTECODE, f"Core AI cannot parse it ({exc})") from exc
    program = _Program(module)
    report = AIModelReport(
        path=str(path), total_bytes=(path / BYTECODE).stat().st_size, weights=program.weights(),
        op_counts=dict(program.op_counts), metadata=metadata, inputs=program.inputs, outputs=program.outputs,
    )
    if decode:
        report.values = program.values()
    return report


# -- the program ---------------------------------------------------------------------------------


def _type_of(value: Any) -> tuple[tuple[int, ...], str]:
    t = value.type
    shape = tuple(int(d) for d in t.shape) if hasattr(t, "shape") else ()
    text = str(t.element_type) if hasattr(t, "element_type") else str(t)
    return shape, text.split(",")[0].strip()


def _width(element: str) -> int:
    if element in ("f32", "si32", "ui32", "i32"):
        return 32
    if element in ("f16", "bf16", "si16", "ui16", "i16"):
        return 16
    if element in ("f64", "si64", "ui64", "i64"):
        return 64
    digits = "".join(c for c in element if c.isdigit())
    if element.startswith("f8"):
        return 8
    return int(digits) if digits else 32


def _raw(op: Any) -> np.ndarray:
    """The bytes of a constant, copied by Core AI into a buffer sized from its type."""
    from coreai._compiler._mlir_libs._coreaiIR import _bindings

    shape, element = _type_of(op.results[0])
    buffer = np.zeros(math.ceil(math.prod(shape) * _width(element) / 8), dtype=np.uint8)
    _bindings.compiler.copy_constant_value_to_array(constant_op=op, destination=buffer)
    return buffer


def decode_raw(buffer: np.ndarray, shape: tuple[int, ...], element: str) -> np.ndarray:
    """Values of ``shape`` from a constant's raw bytes: numpy dtypes, float8 / bfloat16 through ml_dtypes,
    and sub-byte unsigned integers (``ui1`` … ``ui6``) packed least significant bit first."""
    count = math.prod(shape)
    if element in _NUMPY:
        return np.frombuffer(buffer.tobytes(), dtype=_NUMPY[element], count=count).reshape(shape)
    if element in _ML_DTYPES:
        import ml_dtypes

        dtype = np.dtype(getattr(ml_dtypes, _ML_DTYPES[element]))
        return np.frombuffer(buffer.tobytes(), dtype=dtype, count=count).reshape(shape)
    if element.startswith("ui") and element[2:].isdigit() and int(element[2:]) < 8:
        bits = int(element[2:])
        stream = np.unpackbits(buffer, bitorder="little")[: count * bits].reshape(count, bits).astype(np.uint8)
        return (stream << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8).reshape(shape)
    raise ValueError(f"cannot decode constants of type {element}")


class _Chain:
    """A weight under construction: the constants and decompression ops that produce one tensor."""

    def __init__(self, op: Any) -> None:
        self.constants = [op]
        self.steps: list[Any] = []


class _Program:
    def __init__(self, module: Any) -> None:
        graphs = [op.operation for op in module.body.operations if op.operation.name == "coreai.graph"]
        if not graphs:
            raise ValueError("the program has no coreai.graph")
        named = [g for g in graphs if "sym_name" in g.attributes and str(g.attributes["sym_name"]).strip('"') == "main"]
        plain = [g for g in graphs if "composite_decl" not in g.attributes]  # composites: attention kernels ...
        self.graph = (named or plain or graphs)[0]
        self.op_counts: Counter[str] = Counter()
        self.chains: dict[Any, _Chain] = {}
        self.order: list[tuple[Any, _Chain]] = []
        self.consumers: dict[int, list[str]] = {}
        self.listed: set[int] = set()
        self.inputs: dict[str, tuple[int, ...]] = {}
        self.outputs: dict[str, tuple[int, ...]] = {}
        for graph in [self.graph, *[g for g in graphs if g is not self.graph]]:
            block = graph.regions[0].blocks[0]
            main = graph is self.graph
            if main:
                self.inputs = {f"input{i}": _type_of(arg)[0] for i, arg in enumerate(block.arguments)}
            self._walk(block, main)

    def _walk(self, block: Any, main: bool = True) -> None:
        for item in block.operations:
            op = item.operation
            self.op_counts[op.name] += 1
            if op.name == "coreai.constant":
                chain = _Chain(op)
                self.chains[op.results[0]] = chain
                continue
            sources = [self.chains.get(v) for v in op.operands]
            if op.name in _DECOMPRESSION and sources and all(s is not None for s in sources):
                merged = sources[0]
                assert merged is not None
                for other in sources[1:]:
                    if other is not None and other is not merged:
                        merged.constants += other.constants
                        merged.steps += other.steps
                merged.steps.append(op)
                self.chains[op.results[0]] = merged
                continue
            if op.name == "coreai.output" and main:
                self.outputs = {f"output{i}": _type_of(v)[0] for i, v in enumerate(op.operands)}
            for value in op.operands:
                used = self.chains.get(value)
                if used is None:
                    continue
                if id(used) not in self.listed and _type_of(value)[1] in _FLOATS:
                    self.listed.add(id(used))
                    self.order.append((value, used))
                self.consumers.setdefault(id(used), []).append(op.name.removeprefix("coreai."))
            for region in op.regions:
                for inner in region.blocks:
                    self._walk(inner, main=False)

    def weights(self) -> list[StoredWeight]:
        rows = []
        for index, (value, chain) in enumerate(self.order):
            shape, element = _type_of(value)
            names = [s.name for s in chain.steps]
            sparse = "coreai.build_sparse_with_bitmask" in names
            stored = chain.constants[0]
            kind = []
            if sparse:
                kind.append("sparse")
            data_element = _type_of(stored.results[0])[1]
            if "coreai.lut_to_dense" in names:
                indices = [c for c in chain.constants if _type_of(c.results[0])[1].startswith("ui")]
                data_element = _type_of(indices[0].results[0])[1] if indices else "?"
                kind.append(f"palettized {_width(data_element)} bits")
            elif "coreai.blockwise_shift_scale" in names:
                data_element = _type_of(stored.results[0])[1]
                kind.append(f"quantized {_quant_name(data_element)}")
            nonzeros = None
            if sparse:
                nonzeros = self._sparse_count(chain)
            elif not chain.steps and element in _NUMPY:
                nonzeros = int(np.count_nonzero(decode_raw(_raw(stored), shape, element)))
            else:  # compressed without a mask: decoded
                decoded = _decode_chain(chain)
                nonzeros = None if decoded is None else int(np.count_nonzero(decoded))
            numel = math.prod(shape)
            constant_bytes = sum(
                math.ceil(math.prod(_type_of(c.results[0])[0]) * _width(_type_of(c.results[0])[1]) / 8)
                for c in chain.constants
            )
            rows.append(StoredWeight(
                index=index, shape=shape, storage="+".join(kind) or "dense", dtype=data_element, numel=numel,
                nonzeros=nonzeros, bytes=constant_bytes, consumers=tuple(self.consumers.get(id(chain), ())),
            ))
        return rows

    def _sparse_count(self, chain: _Chain) -> int | None:
        for c in chain.constants:
            shape, element = _type_of(c.results[0])
            if element == "ui1":
                return int(np.unpackbits(_raw(c), bitorder="little")[: math.prod(shape)].sum())
        return None

    def values(self) -> list[np.ndarray | None]:
        """Each weight decoded to a dense float32 array (``None`` where a chain is not one this module knows)."""
        return [_decode_chain(chain) for _, chain in self.order]


def _quant_name(element: str) -> str:
    return {"si8": "int8", "ui8": "uint8", "f8E4M3FN": "fp8_e4m3fn", "f8E5M2": "fp8_e5m2"}.get(element, element)


def _decode_chain(chain: _Chain) -> np.ndarray | None:
    values: dict[Any, np.ndarray] = {}
    for c in chain.constants:
        shape, element = _type_of(c.results[0])
        values[c.results[0]] = decode_raw(_raw(c), shape, element)
    try:
        for step in chain.steps:
            args = [values[v] for v in step.operands]
            if step.name == "coreai.build_sparse_with_bitmask":
                data, mask = args
                dense = np.zeros(mask.shape, dtype=np.float32 if data.dtype.kind == "V" else data.dtype)
                dense[mask.astype(bool)] = data.reshape(-1)
                out = dense
            elif step.name == "coreai.sparse_with_bitmask_to_dense":
                out = args[0]
            elif step.name == "coreai.lut_to_dense":
                indices, lut = args[0], args[1]
                if lut.size != lut.shape[-2] or indices.ndim + 2 != lut.ndim:  # per-tensor scalar palettes only
                    return None
                out = lut.reshape(-1)[indices.astype(np.int64)]
            else:  # blockwise_shift_scale(data, scale, offset1[, offset2])
                data = args[0].astype(np.float32)
                scale = _expand(args[1].astype(np.float32), data.shape)
                offset = _expand(args[2].astype(np.float32), data.shape) if len(args) > 2 else 0.0
                extra = _expand(args[3].astype(np.float32), data.shape) if len(args) > 3 else 0.0
                out = (data - offset) * scale + extra
            values[step.results[0]] = out
    except (KeyError, ValueError, IndexError):
        return None
    return np.asarray(values[chain.steps[-1].results[0]] if chain.steps else values[chain.constants[0].results[0]],
                      dtype=np.float32)


def _expand(block: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A blockwise parameter repeated to ``shape`` (each of its dimensions divides the data's)."""
    if block.ndim != len(shape):
        return np.broadcast_to(block, shape)
    for axis, (have, want) in enumerate(zip(block.shape, shape)):
        if have != want:
            block = np.repeat(block, want // have, axis=axis)
    return block
