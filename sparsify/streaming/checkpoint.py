"""Reading a Hugging Face checkpoint directory tensor by tensor, and writing one so that no file is half there.

Why its own reader: `prune_pretrained` must never hold the whole model. The source directory's
``model.safetensors.index.json`` (or its single ``model.safetensors``) maps every tensor to a shard, and
``safetensors.safe_open`` memory-maps a shard and copies out only the tensors asked for, so a decoder block
costs its own bytes. Every file here is untrusted input: the index and ``config.json`` are size-limited JSON
(`sparsify.safe_io.read_text`), shard names must be plain file names inside the directory, and weights are read
only from safetensors (nothing is unpickled; ``pytorch_model.bin`` checkpoints are refused with what to do).

Writing (`write_atomically`): every file goes to a hidden temporary name in the target directory, is flushed to
disk, and is then renamed to its final name — a rename is atomic on POSIX file systems, so a crash or Ctrl-C
leaves either the whole file under its name or none of it. `prune_pretrained` writes the shard index last, so a
target that ``from_pretrained`` can open is always complete.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..safe_io import read_text

__all__ = ["SourceCheckpoint", "read_json", "write_atomically", "write_json"]

#: the largest JSON file (config, index, manifest) read from a checkpoint directory
MAX_JSON_BYTES = 64 * 1024 * 1024
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.safetensors$")


def read_json(path: Path, what: str) -> Any:
    """``path`` parsed as JSON (at most `MAX_JSON_BYTES`), errors naming the file."""
    try:
        return json.loads(read_text(path, max_bytes=MAX_JSON_BYTES))
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {error}") from None


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary)`` for a hidden temporary file beside ``path``, flush it to disk and rename it to
    ``path`` (see the module docs); the temporary file is removed if ``write`` fails or is interrupted."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a file system without directory handles: the rename itself is still atomic
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON at ``path``, atomically (`write_atomically`)."""
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    def write(temporary: Path) -> None:
        temporary.write_text(text)

    write_atomically(path, write)


class SourceCheckpoint:
    """A Hugging Face checkpoint directory read lazily: which shard holds each tensor, its dtype, its values.

    Args:
        path: a directory with ``config.json`` and either ``model.safetensors`` or
            ``model.safetensors.index.json`` plus the shards it names.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise ValueError(f"source {str(path)!r} is not a directory: give a Hugging Face checkpoint directory "
                             f"(config.json + model.safetensors or model.safetensors.index.json)")
        if not (self.path / "config.json").is_file():
            raise ValueError(f"source {str(path)!r} has no config.json: give a Hugging Face checkpoint directory")
        self.weight_map = self._weight_map()
        self._dtypes: dict[str, torch.dtype] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for shard in sorted(set(self.weight_map.values())):
            with safe_open(str(self.path / shard), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 — safe_open is not a mapping
                    if self.weight_map.get(key) == shard:
                        view = handle.get_slice(key)
                        self._dtypes[key] = _DTYPES.get(view.get_dtype(), torch.float32)
                        self._shapes[key] = tuple(view.get_shape())
        missing = sorted(set(self.weight_map) - set(self._dtypes))
        if missing:
            raise ValueError(f"source {str(path)!r}: the index names tensor(s) {missing[:5]} that their shard does "
                             f"not hold")

    def _weight_map(self) -> dict[str, str]:
        index = self.path / INDEX_NAME
        if index.is_file():
            data = read_json(index, "shard index")
            weight_map = data.get("weight_map") if isinstance(data, Mapping) else None
            if not isinstance(weight_map, Mapping) or not weight_map:
                raise ValueError(f"shard index {str(index)!r} has no 'weight_map' mapping tensor names to shards")
            for key, shard in weight_map.items():
                if not isinstance(shard, str) or not _PLAIN_NAME.match(shard):
                    raise ValueError(f"shard index {str(index)!r}: tensor {key!r} names shard {shard!r}; allowed: a "
                                     f"plain '*.safetensors' file name inside the directory")
                if not (self.path / shard).is_file():
                    raise ValueError(f"shard index {str(index)!r}: shard {shard!r} (of tensor {key!r}) is missing")
            return {str(k): str(v) for k, v in weight_map.items()}
        if (self.path / SINGLE_NAME).is_file():
            with safe_open(str(self.path / SINGLE_NAME), framework="pt") as handle:
                return dict.fromkeys(handle.keys(), SINGLE_NAME)
        found = sorted(p.name for p in self.path.iterdir() if p.suffix in {".bin", ".pt", ".pth"})
        hint = (f" (it holds {found}: pickled weights are not read; load the model once and save_pretrained it "
                f"with safe_serialization=True)") if found else ""
        raise ValueError(f"source {str(self.path)!r} has neither {SINGLE_NAME} nor {INDEX_NAME}{hint}")

    def names(self) -> list[str]:
        """Every tensor's checkpoint key, in the index's order."""
        return list(self.weight_map)

    def dtype(self, key: str) -> torch.dtype:
        return self._dtypes[key]

    def nbytes(self, key: str) -> int:
        numel = 1
        for size in self._shapes[key]:
            numel *= size
        return numel * self._dtypes[key].itemsize

    def tensors(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The named tensors, in their stored dtype, each shard opened once."""
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            by_shard.setdefault(self.weight_map[key], []).append(key)
        out: dict[str, torch.Tensor] = {}
        for shard, names in by_shard.items():
            with safe_open(str(self.path / shard), framework="pt") as handle:
                for key in names:
                    out[key] = handle.get_tensor(key).clone()  # own memory: the shard's map closes here
        return out


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
