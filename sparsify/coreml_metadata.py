"""The Core ML compression metadata format, defined once: the buffers ``coremltools.convert`` reads.

Core ML Tools records what was done to a parameter in buffers named ``_COREML_/<param_name>/<field>`` on
its module (``fc._COREML_/weight/compression_type = [1]`` in the state dict: pruned), plus one root buffer
``_COREML_/metadata_version``. Every module that writes, reads, strips or exports this metadata takes the
names from here (`sparsify.pruning.metadata` writes it at ``finalize()``, `sparsify.compat.coremltools`
is Core ML Tools' API over it, `sparsify.checkpoints`, `sparsify.pruning.saving`, `sparsify.export` and
`sparsify.model_report` read or strip it), so the format has one owner. This module imports nothing of
sparsify's, so any of them can use it.
"""

from __future__ import annotations

__all__ = [
    "BUFFER_NAME_SEPARATOR",
    "COMPRESSION_TYPE",
    "METADATA_PREFIX",
    "METADATA_VERSION",
    "METADATA_VERSION_BUFFER",
    "PRUNING",
    "STATE_DICT_METADATA_BUFFER_PREFIX",
    "is_metadata_key",
    "metadata_buffer",
    "parse_metadata_key",
]

#: Core ML Tools' names for the parts of a metadata buffer name
STATE_DICT_METADATA_BUFFER_PREFIX = "_COREML_"
BUFFER_NAME_SEPARATOR = "/"
#: what every metadata buffer name starts with (and every metadata state-dict key contains)
METADATA_PREFIX = STATE_DICT_METADATA_BUFFER_PREFIX + BUFFER_NAME_SEPARATOR
#: the root buffer the converter checks, and the version sparsify writes (Core ML Tools' ``tensor(1)``)
METADATA_VERSION_BUFFER = METADATA_PREFIX + "metadata_version"
METADATA_VERSION = 1
#: the field listing what was done to a parameter, and its value for pruning (``CompressionType.pruning``)
COMPRESSION_TYPE = "compression_type"
PRUNING = 1


def metadata_buffer(param_name: str, field: str) -> str:
    """The buffer name of ``field`` for ``param_name``: ``"_COREML_/weight/compression_type"``."""
    return BUFFER_NAME_SEPARATOR.join((STATE_DICT_METADATA_BUFFER_PREFIX, param_name, field))


def is_metadata_key(key: str) -> bool:
    """Whether a buffer name or state-dict key (``"fc._COREML_/weight/compression_type"``) is Core ML metadata."""
    return METADATA_PREFIX in key


def parse_metadata_key(key: str) -> tuple[str, str, str] | None:
    """``(module, param_name, field)`` of a per-parameter metadata key — ``("fc", "weight",
    "compression_type")`` for ``"fc._COREML_/weight/compression_type"`` (module ``""`` at the root) — or
    ``None`` for any other key, the version buffer included."""
    module, found, rest = key.partition(METADATA_PREFIX)
    param_name, separator, field = rest.rpartition(BUFFER_NAME_SEPARATOR)
    if not found or not separator or not param_name:
        return None
    return module.rstrip("."), param_name, field
