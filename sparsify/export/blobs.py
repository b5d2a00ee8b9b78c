"""The weight file of an ML Program package, read defensively: every blob is checked before it is used.

Format (the public MIL blob storage, version 2): a 64-byte file header (``uint32`` blob count,
``uint32`` version = 2, reserved words), then one blob per constant: a 64-byte header (``uint32``
sentinel ``0xDEADBEEF``, ``uint32`` data type, ``uint64`` size in bytes, ``uint64`` offset of the
data, reserved words) followed by the data, each blob aligned to 64 bytes. The model description
points at a blob by the offset of its header. Sub-byte types (``uint1`` masks, ``uint4`` palette
indices, ...) are packed least significant bit first.

Why defensive: a truncated copy of a package still has valid headers for its first blobs, and
``np.unpackbits(..., count=n)`` pads a short mask with zeros — a cut-off sparse weight would read as
a *sparser* weight. Here a blob whose data ends early, lies past the end of the file, or is smaller
than its value's type and shape need raises `DamagedPackageError` naming the file.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import DamagedPackageError

__all__ = ["BITS", "Value", "WeightFiles", "shape_of"]

_FILE_HEADER = struct.Struct("<II")  # blob count, version
_FILE_HEADER_SIZE = 64
_BLOB_SENTINEL = 0xDEADBEEF
_BLOB_HEADER = struct.Struct("<IIQQ")  # sentinel, data type, size in bytes, offset of the data
_VERSION = 2

# bits per element of each MIL data type (proto enum name → bits), and the numpy type to decode it
BITS = {
    "BOOL": 8, "FLOAT8E4M3FN": 8, "FLOAT8E5M2": 8, "FLOAT16": 16, "BFLOAT16": 16, "FLOAT32": 32,
    "FLOAT64": 64, "INT4": 4, "INT8": 8, "INT16": 16, "INT32": 32, "INT64": 64, "UINT1": 1, "UINT2": 2,
    "UINT3": 3, "UINT4": 4, "UINT6": 6, "UINT8": 8, "UINT16": 16, "UINT32": 32, "UINT64": 64,
}
_NUMPY = {
    "FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64, "INT8": np.int8,
    "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16,
    "UINT32": np.uint32, "UINT64": np.uint64,
}
_SUB_BYTE = {"UINT1": 1, "UINT2": 2, "UINT3": 3, "UINT4": 4, "UINT6": 6, "INT4": 4}


class WeightFiles:
    """Opens the weight files of a package (lazily, each once) and reads blobs by offset."""

    def __init__(self, weights_dir: str | os.PathLike[str] | None, package: str = "") -> None:
        self.dir = Path(weights_dir) if weights_dir else None
        self.package = package or (str(self.dir) if self.dir else "the model")
        self._handles: dict[str, tuple[BinaryIO, int]] = {}

    def __enter__(self) -> WeightFiles:
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle, _ in self._handles.values():
            handle.close()
        self._handles.clear()

    def _damaged(self, base: str, message: str) -> DamagedPackageError:
        return DamagedPackageError(self.package, f"weights/{base}", message)

    def _open(self, base: str) -> tuple[BinaryIO, int]:
        if base in self._handles:
            return self._handles[base]
        path = self.dir / base if self.dir is not None else None
        if path is None or not path.is_file():
            raise self._damaged(base, "the model refers to this weight file, which does not exist")
        handle = open(path, "rb")  # noqa: SIM115 - closed in __exit__
        size = os.fstat(handle.fileno()).st_size
        header = handle.read(_FILE_HEADER.size)
        if size < _FILE_HEADER_SIZE or len(header) < _FILE_HEADER.size:
            handle.close()
            raise self._damaged(base, f"{size} bytes, shorter than the {_FILE_HEADER_SIZE}-byte file header")
        _, version = _FILE_HEADER.unpack(header)
        if version != _VERSION:
            handle.close()
            raise self._damaged(base, f"weight file version {version}, expected {_VERSION}")
        self._handles[base] = (handle, size)
        return handle, size

    def blob(self, file_name: str, offset: int) -> bytes:
        """The data of the blob whose header is at ``offset`` in ``file_name`` (``@model_path/weights/x.bin``)."""
        base = file_name.split("/")[-1]
        handle, size = self._open(base)
        if offset < _FILE_HEADER_SIZE or offset + _BLOB_HEADER.size > size:
            raise self._damaged(base, f"the blob header at offset {offset} is outside the file ({size} bytes)")
        handle.seek(offset)
        sentinel, _, length, data_offset = _BLOB_HEADER.unpack(handle.read(_BLOB_HEADER.size))
        if sentinel != _BLOB_SENTINEL:
            raise self._damaged(base, f"no blob header at offset {offset} (found 0x{sentinel:08X})")
        if data_offset + length > size:
            raise self._damaged(base, f"the blob at offset {offset} holds {length} bytes from offset {data_offset}, "
                                      f"past the end of the file ({size} bytes): it is truncated")
        handle.seek(data_offset)
        data = handle.read(length)
        if len(data) != length:
            raise self._damaged(base, f"the blob at offset {offset} could not be read in full")
        return data


def shape_of(value_type: Any) -> tuple[int, ...]:
    """The shape of a ``MIL_pb2.ValueType`` (``-1`` for a dimension that is not a constant)."""
    dims = value_type.tensorType.dimensions
    return tuple(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else -1 for d in dims)


@dataclass
class Value:
    """A tensor value in the model description: its type, and where its data is."""

    spec: Any  # MIL_pb2.Value

    @property
    def dtype(self) -> str:
        from coremltools.proto import MIL_pb2

        return MIL_pb2.DataType.Name(self.spec.type.tensorType.dataType)

    @property
    def shape(self) -> tuple[int, ...]:
        return shape_of(self.spec.type)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def in_file(self) -> bool:
        return self.spec.WhichOneof("value") == "blobFileValue"

    @property
    def blob_key(self) -> tuple[str, int] | None:
        """``(file, offset)`` of the blob holding the data (two values may share one blob)."""
        if not self.in_file:
            return None
        return self.spec.blobFileValue.fileName.split("/")[-1], int(self.spec.blobFileValue.offset)

    def needed_bytes(self) -> int:
        return math.ceil(self.numel * BITS.get(self.dtype, 8) / 8)

    def raw(self, files: WeightFiles) -> bytes | None:
        """The stored bytes (sub-byte types packed), or ``None`` for an immediate list of numbers."""
        if self.in_file:
            ref = self.spec.blobFileValue
            data = files.blob(ref.fileName, ref.offset)
            if len(data) < self.needed_bytes():
                raise files._damaged(
                    ref.fileName.split("/")[-1],
                    f"the blob at offset {ref.offset} holds {len(data)} bytes, but its value "
                    f"({self.dtype.lower()} {list(self.shape)}) needs {self.needed_bytes()}",
                )
            return data
        tensor = self.spec.immediateValue.tensor
        return tensor.bytes.values if tensor.WhichOneof("value") == "bytes" else None

    def nbytes(self, files: WeightFiles) -> int:
        raw = self.raw(files)
        return len(raw) if raw is not None else self.needed_bytes()

    def array(self, files: WeightFiles) -> np.ndarray | None:
        """The values as numpy: numpy types as they are, sub-byte integers unpacked (``None`` otherwise)."""
        if self.dtype in _SUB_BYTE:
            return self.ints(files)
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

    def ints(self, files: WeightFiles) -> np.ndarray | None:
        """A sub-byte integer tensor unpacked (LSB first), ``int8`` for ``int4`` and ``uint8`` otherwise."""
        nbits = _SUB_BYTE.get(self.dtype)
        raw = self.raw(files)
        if nbits is None or raw is None:
            return None
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[: self.numel * nbits]
        values = (bits.reshape(-1, nbits).astype(np.uint16) << np.arange(nbits, dtype=np.uint16)).sum(1)
        if self.dtype == "INT4":
            return np.where(values >= 8, values.astype(np.int16) - 16, values).astype(np.int8).reshape(self.shape)
        return values.astype(np.uint8).reshape(self.shape)

    def bits(self, files: WeightFiles, count: int) -> np.ndarray | None:
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
        if packed.size * 8 < count:
            raise DamagedPackageError(files.package, "model description",
                                      f"a mask of {packed.size} bytes cannot cover {count} elements")
        return np.unpackbits(packed.reshape(-1), count=count, bitorder="little").astype(bool)
