"""Core ML Tools' pruning helpers under sparsify's name: `n_m_mask`, `CompressionMetadata`, `CompressionType`.

Core ML Tools' users (and its own test suite) import these from private modules::

    from coremltools.optimize.torch.pruning._utils import n_m_mask
    from coremltools.optimize.torch._utils.metadata_utils import CompressionMetadata, CompressionType

With sparsify they come from here (``from sparsify.compat.coremltools import ...``), with the same
signatures, values and state-dict layout:

* `n_m_mask(weights, nm, dim=1)` returns the same 0/1 float mask as Core ML Tools' function; the mask
  itself is computed by sparsify's n:m pattern, so a mask built here equals the one the pruner
  applies.
* `CompressionType` has Core ML Tools' members and values (``pruning = 1``, ``palettization = 2``,
  ``quantization = 3``).
* `CompressionMetadata` reads and writes the ``_COREML_/<param>/<field>`` buffers that
  ``coremltools.convert`` reads and that `sparsify.MagnitudePruner.finalize` writes, so
  ``CompressionMetadata.from_state_dict(module.state_dict())`` parses a finalized module, and buffers
  written by either library parse with the other's class (tested both ways).

These are sparsify's own classes, not re-exports: importing this module does not import coremltools
(several seconds, and log noise on Linux). The enum is therefore a different class from Core ML
Tools' enum: compare members by ``.value`` (as the buffers and Core ML Tools' tests do), not by
identity.

Differences from Core ML Tools, deliberate: bad arguments raise `ValueError` naming the argument
(Core ML Tools uses ``assert``), and among exactly equal magnitudes in one run of ``m`` the
first-indexed weight is zeroed first (Core ML Tools' unstable ``argsort`` leaves that order
unspecified).
"""

from __future__ import annotations

import enum
from typing import Any

import attrs
import torch
from torch import nn

from .._checks import check_flags
from ..coreml_metadata import (
    BUFFER_NAME_SEPARATOR,
    METADATA_VERSION,
    METADATA_VERSION_BUFFER,
    STATE_DICT_METADATA_BUFFER_PREFIX,
    metadata_buffer,
)
from ..patterns import n_m_mask as _n_m_keep_mask

__all__ = [
    "METADATA_VERSION",
    "METADATA_VERSION_BUFFER",
    "CompressionMetadata",
    "CompressionType",
    "n_m_mask",
    "register_metadata_version",
]



def n_m_mask(weights: torch.Tensor, nm: tuple[int, int], dim: int = 1) -> torch.Tensor:
    """Core ML Tools' ``n_m_mask``: zero the ``n`` smallest ``|w|`` in every run of ``m`` along ``dim``.

    ``dim=1`` runs along input channels, ``dim=0`` along output channels; ``weights`` has rank 2
    (Linear) to 5 (Conv3d). A trailing partial run is padded with zeros, which rank lowest, so it
    loses fewer real weights (the achieved sparsity is below ``n/m`` unless the channel count is a
    multiple of ``m``), exactly as in Core ML Tools. Returns a float32 mask of ``weights``' shape on
    its device, ``1.0`` = keep.
    """
    if not (isinstance(nm, (tuple, list)) and len(nm) == 2 and all(isinstance(v, int) for v in nm)):
        raise ValueError(f"nm={nm!r} is invalid: allowed a pair of ints (n zeros, block size m)")
    num_zeros, block_size = nm
    if not 0 <= num_zeros < block_size:
        raise ValueError(
            f"nm={tuple(nm)!r} is invalid: n (number of zeros) = {num_zeros} must be >= 0 and less than "
            f"m (block size) = {block_size}"
        )
    if dim not in (0, 1):
        raise ValueError(
            f"dim={dim!r} is invalid: n:m masks run along dim 0 (output channels) or 1 (input channels)"
        )
    if not 2 <= weights.dim() <= 5:
        raise ValueError(
            f"weights of shape {tuple(weights.shape)} are invalid: allowed rank 2 to 5 (Linear, Conv1d-3d)"
        )
    return _n_m_keep_mask(weights.detach().abs(), (num_zeros, block_size), dim).to(torch.float32)


class CompressionType(enum.Enum):
    """What was done to a parameter, as recorded in its ``compression_type`` buffer (Core ML Tools' values)."""

    pruning = 1
    palettization = 2
    quantization = 3

    def __str__(self) -> str:
        return self.name


def _type_values(names: list[Any] | None) -> list[int] | None:
    """Core ML Tools' converter: member *names* in, enum *values* out (``["pruning"]`` → ``[1]``)."""
    if not names:
        return None
    values = []
    for item in names:
        if item not in CompressionType.__members__:
            raise ValueError(
                f"compression_type item {item!r} is invalid: allowed {sorted(CompressionType.__members__)}"
            )
        values.append(CompressionType[item].value)
    return values


_INT_FIELDS = ("quantization_n_bits", "vector_axis")
_optional_tensor = attrs.validators.optional(attrs.validators.instance_of(torch.Tensor))


@attrs.define
class CompressionMetadata:
    """Per-parameter compression metadata, stored as ``_COREML_/<param_name>/<field>`` buffers.

    Same fields, constructor and buffers as Core ML Tools' class: ``compression_type`` is given as
    member names (``["pruning"]``) and held as values (``[1]``), which is what the buffer stores.
    """

    param_name: str | None = attrs.field(validator=attrs.validators.optional(attrs.validators.instance_of(str)))
    quantization_n_bits: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(int))
    )
    quantization_scale: torch.Tensor | None = attrs.field(default=None, validator=_optional_tensor)
    zero_point: torch.Tensor | None = attrs.field(default=None, validator=_optional_tensor)
    lut: torch.Tensor | None = attrs.field(default=None, validator=_optional_tensor)
    palettization_scale: torch.Tensor | None = attrs.field(default=None, validator=_optional_tensor)
    vector_axis: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.instance_of(int))
    )
    compression_type: list[int] | None = attrs.field(default=None, converter=_type_values)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a dict (``compression_type`` as values, as stored)."""
        return attrs.asdict(self, recurse=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionMetadata:
        """Build from a dict of fields (``compression_type`` as member names); unknown keys are an error."""
        allowed = [a.name for a in attrs.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(f"CompressionMetadata keys {unknown} are unknown: allowed {allowed}")
        return cls(**data)

    def _buffer_name(self, field: str) -> str:
        if self.param_name is None:  # allowed at construction, as in Core ML Tools, but buffers need a name
            raise ValueError(
                "CompressionMetadata.param_name=None is invalid here: register() names its buffers "
                "'_COREML_/<param_name>/<field>', so set the parameter's name (for example 'weight')"
            )
        return metadata_buffer(self.param_name, field)

    def register(self, module: nn.Module, override_compression_type: bool = False) -> None:
        """Write every set field as a buffer on ``module``.

        ``compression_type`` is appended to the module's existing list (joint compression records
        every step, in order) unless ``override_compression_type`` is set.
        """
        check_flags("CompressionMetadata.register", override_compression_type=override_compression_type)
        for field, value in self.as_dict().items():
            if field == "param_name" or value is None:
                continue
            name = self._buffer_name(field)
            if field == "compression_type" and not override_compression_type:
                existing = module._buffers.get(name)
                if existing is not None:
                    value = existing.tolist() + value
            module.register_buffer(name, value if torch.is_tensor(value) else torch.tensor(value))

    @classmethod
    def from_state_dict(cls, prefixed_dict: dict[str, Any]) -> dict[str, CompressionMetadata]:
        """Parse the metadata buffers of one module's ``state_dict()``: ``{param_name: metadata}``.

        Keys must be the module's own (``_COREML_/weight/compression_type``), not prefixed by a
        submodule path, as in Core ML Tools.
        """
        fields: dict[str, dict[str, Any]] = {}
        for key, value in prefixed_dict.items():
            if not key.startswith(STATE_DICT_METADATA_BUFFER_PREFIX) or key == METADATA_VERSION_BUFFER:
                continue
            parts = key.split(BUFFER_NAME_SEPARATOR)
            if len(parts) != 3:
                raise ValueError(
                    f"state-dict key {key!r} is invalid: allowed '_COREML_/<param_name>/<field>' "
                    f"(pass the module's own state_dict, not its parent's)"
                )
            _, param_name, field = parts
            entry = fields.setdefault(param_name, {"param_name": param_name})
            if field == "compression_type":
                value = [str(CompressionType(int(x))) for x in torch.as_tensor(value).reshape(-1).tolist()]
            elif field in _INT_FIELDS:
                value = int(value)  # stored as a 0-d tensor
            entry[field] = value
        return {name: cls.from_dict(entry) for name, entry in fields.items()}


def register_metadata_version(model: nn.Module) -> None:
    """Write the root ``_COREML_/metadata_version`` buffer (``tensor(1)``) that the converter checks."""
    model.register_buffer(METADATA_VERSION_BUFFER, torch.tensor(METADATA_VERSION))
