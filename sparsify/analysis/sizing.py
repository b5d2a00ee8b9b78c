"""How many bytes Core ML needs to store a weight, dense or sparse — pure arithmetic, no Core ML needed.

Core ML (``mlprogram``, ``minimum_deployment_target >= iOS16``) stores a sparse weight as a
``constexpr_sparse_to_dense`` op with two constants:

* ``nonzero_data`` — the ``nnz`` kept values, ``nnz × element bytes`` (2 for fp16, 4 for fp32);
* ``mask`` — one bit per element of the dense tensor, ``ceil(N / 8)`` bytes (iOS16/17: a packed
  ``uint8`` tensor of ``ceil(N / 8)`` elements; iOS18: a ``uint1`` tensor of ``N`` elements).

so a layer of ``N`` weights at sparsity ``s`` costs ``(1 - s) + 1/16`` of its dense fp16 size
(``(1 - s) + 1/32`` in fp32): sparse storage *loses* below 6.25 % sparsity in fp16.

Constants live in ``Data/com.apple.CoreML/weights/weight.bin``: a 64-byte file header, then one blob
per constant, each a 64-byte header followed by the data, every blob starting on a 64-byte boundary.
Constants with fewer than 10 elements are written inline in the model description instead (a bias of
8 values, the mask of a weight with at most 72 elements on iOS16). `weight_file_bytes` adds this
up in the order given, the last blob unpadded as the converter writes it, so `model_report`'s dense
size, `inspect_mlpackage`'s and `export_coreml`'s (a real dense conversion) are the same number for
the same model (174,932 bytes for the tutorial's CNN; padding every blob gave 174,976).

Which weights are stored sparse depends on how the model is exported (``rule``). A *pruned* weight is
one with a mask (prepared model) or with Core ML compression metadata (the
``_COREML_/<param>/compression_type`` buffer that `sparsify.MagnitudePruner.finalize` writes):

* ``"sparsify"`` — `sparsify.export.coreml.export_coreml` (``sparsify export``): every pruned weight of
  rank ≥ 2 whose sparse blobs are smaller than its dense blob (headers included), counting exact
  zeros only. The model is converted dense first, so every conv → batch norm pair is fused.
* ``"sparsify_all"`` — the same with ``sparse_weights="all"``: any weight of rank ≥ 2, pruned or not.
* ``"metadata"`` — plain ``coremltools.convert`` (default pipeline): exactly the weights that carry
  metadata, whatever their sparsity — even a 0 %-sparse one, which then costs 1/16 more than dense.
  Every value with ``|w| <= 2**-10`` (fp16 epsilon, `METADATA_ZERO_THRESHOLD`) becomes zero, and
  a batch norm after a pruned conv stays unfused.
* ``"default_pruning"`` — ``coremltools.convert(..., pass_pipeline=ct.PassPipeline.DEFAULT_PRUNING)``:
  weights with metadata as above, plus every other constant of rank ≥ 2 with more than 2048 elements
  whose fraction of ``|w| <= 1e-12`` is at least 0.5; a batch norm after a sparse conv stays unfused.

A fused batch norm disappears from the file and its conv gains a bias (`fuses_batchnorm`).

Joint compression (``export_coreml(..., palettize_bits=N)`` or ``quantize="int8"``, iOS18 only, the
``"sparsify"`` rules only) adds two storages per kind, each chosen only where it is the smallest
(`stored_tensor` compares every allowed form; ties go to the simpler one, except that a compressed
pruned weight keeps its mask):

* palettized, one look-up table per tensor: ``numel`` indices of ``N`` bits, packed, plus a table of
  ``2**N`` values (``constexpr_lut_to_dense``); sparse + palettized (``constexpr_lut_to_sparse``): the
  ``nnz`` kept values' indices, the table, and the one-bit mask;
* quantized, symmetric ``int8`` with one scale per output channel: ``numel`` bytes plus the scales
  (``constexpr_blockwise_shift_scale``); sparse + quantized (``constexpr_sparse_blockwise_shift_scale``):
  ``nnz`` bytes, the scales and the mask (the mask is one blob that both ops read).

A 90 %-sparse fp16 weight thus costs ``0.1 × N/16 + 1/16`` of dense with ``N``-bit palettes
(0.0875 at 4 bits) and ``0.1/2 + 1/16`` (0.1125) as int8, against 0.1625 sparse alone.

The byte counts and rules were measured against real ``.mlpackage`` exports (``tests/analysis/test_sizing.py``
converts models and compares).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

__all__ = [
    "DEFAULT_PRUNING_MIN_NUMEL",
    "DEFAULT_PRUNING_MIN_SPARSITY",
    "DEFAULT_PRUNING_ZERO_THRESHOLD",
    "ELEMENT_BYTES",
    "JOINT_TARGET",
    "METADATA_ZERO_THRESHOLD",
    "PALETTIZE_BITS",
    "QUANTIZE_DTYPES",
    "RULES",
    "TARGETS",
    "StoredTensor",
    "blob_file_bytes",
    "check_compression",
    "compression_name",
    "dense_bytes",
    "fuses_batchnorm",
    "sparse_bytes",
    "stored_tensor",
    "stores_sparse",
    "weight_file_bytes",
    "zero_threshold",
]

ELEMENT_BYTES = {"fp16": 2, "fp32": 4}
RULES = ("sparsify", "sparsify_all", "metadata", "default_pruning")
TARGETS = ("iOS16", "iOS17", "iOS18")
PALETTIZE_BITS = (1, 2, 3, 4, 6, 8)  # what constexpr_lut_to_dense / _to_sparse accept
QUANTIZE_DTYPES = ("int8",)
JOINT_TARGET = "iOS18"  # the first target with joint compression ops

METADATA_ZERO_THRESHOLD = 2.0**-10  # np.finfo(np.float16).eps, what the converter zeroes in metadata weights
DEFAULT_PRUNING_ZERO_THRESHOLD = 1e-12  # OpThresholdPrunerConfig's default threshold
DEFAULT_PRUNING_MIN_SPARSITY = 0.5  # ... its minimum_sparsity_percentile
DEFAULT_PRUNING_MIN_NUMEL = 2048  # ... its weight_threshold: only constants with MORE elements are pruned

_FILE_HEADER = 64
_BLOB_HEADER = 64
_ALIGNMENT = 64
_MIN_FILE_ELEMENTS = 10  # smaller constants are written inline in the model description


def _check_precision(precision: str) -> int:
    if precision not in ELEMENT_BYTES:
        allowed = ", ".join(map(repr, ELEMENT_BYTES))
        raise ValueError(f"precision={precision!r} is invalid: allowed values are {allowed}")
    return ELEMENT_BYTES[precision]


def dense_bytes(numel: int, precision: str = "fp16") -> int:
    """Bytes of a dense weight: ``numel × element bytes``."""
    return numel * _check_precision(precision)


def sparse_bytes(numel: int, nnz: int, precision: str = "fp16") -> int:
    """Bytes of a sparse weight in Core ML's format: ``nnz × element bytes + ceil(numel / 8)``."""
    if not 0 <= nnz <= numel:
        raise ValueError(f"nnz={nnz!r} is invalid: allowed 0 <= nnz <= numel ({numel})")
    return nnz * _check_precision(precision) + math.ceil(numel / 8)


def zero_threshold(rule: str, metadata: bool) -> float:
    """Values with ``|w| <= threshold`` are stored as zeros of a sparse weight under ``rule``."""
    _check_rule(rule)
    if rule.startswith("sparsify"):
        return 0.0
    return METADATA_ZERO_THRESHOLD if metadata else DEFAULT_PRUNING_ZERO_THRESHOLD


def stores_sparse(
    numel: int, rank: int, nnz: int, *, metadata: bool, rule: str = "sparsify", precision: str = "fp16",
    target: str = "iOS16",
) -> bool:
    """Whether this weight is exported as a sparse constant under ``rule`` (module docstring).

    ``nnz`` counts the values above `zero_threshold`; ``metadata`` says whether the weight is
    pruned (carries Core ML compression metadata, or a mask that ``finalize()`` turns into metadata).
    ``precision`` and ``target`` matter for the ``"sparsify"`` rules, which store sparse only when
    that is smaller.
    """
    return stored_tensor(numel, rank, nnz, metadata=metadata, rule=rule, precision=precision, target=target).sparse


def stored_tensor(
    numel: int, rank: int, nnz: int, *, metadata: bool, rule: str = "sparsify", precision: str = "fp16",
    target: str = "iOS16", palettize_bits: int | None = None, quantize: str | None = None, channels: int = 1,
) -> StoredTensor:
    """How this weight is exported under ``rule``: the `StoredTensor` (sparse or not, compressed or not).

    Under the ``"sparsify"`` rules every form the export may use is compared and the smallest file
    bytes win: dense; sparse (rank >= 2, pruned or ``"sparsify_all"``); and, when ``palettize_bits``
    or ``quantize`` is given (iOS18, rank >= 2), each of those compressed. ``channels`` is the number
    of output channels (one ``int8`` scale each). The other rules follow Core ML Tools' converter.
    """
    _check_rule(rule)
    check_compression(palettize_bits, quantize, target, rule)
    dense = StoredTensor(numel, nnz, False)
    if not rule.startswith("sparsify"):
        if metadata:
            return StoredTensor(numel, nnz, True)
        if rule == "metadata" or rank < 2 or numel <= DEFAULT_PRUNING_MIN_NUMEL:
            return dense
        return StoredTensor(numel, nnz, (numel - nnz) / numel >= DEFAULT_PRUNING_MIN_SPARSITY)
    if rank < 2:
        return dense
    may_be_sparse = metadata or rule == "sparsify_all"
    options = [dense, *([StoredTensor(numel, nnz, True)] if may_be_sparse else [])]
    if palettize_bits is not None or quantize is not None:
        # sparse first: on a tie, a pruned weight keeps its exact zeros rather than a palette entry for them
        options += [attrs.evolve(o, palettize_bits=palettize_bits, quantize=quantize, channels=channels)
                    for o in reversed(options)]
    return min(options, key=lambda o: o.file_bytes(precision, target))  # min keeps the first of equals


def fuses_batchnorm(rule: str, *, conv_metadata: bool, conv_sparse: bool) -> bool:
    """Whether the converter folds a batch norm into the conv before it (dense convs only)."""
    _check_rule(rule)
    if rule.startswith("sparsify"):
        return True  # converted dense, sparsified afterwards
    if rule == "metadata":
        return not conv_metadata
    return not conv_sparse


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is invalid: allowed values are {', '.join(map(repr, RULES))}")


def compression_name(palettize_bits: int | None, quantize: str | None) -> str | None:
    """``"palettize N bits"``, ``"quantize int8"`` or ``None``: how reports name the joint compression."""
    if palettize_bits is not None:
        return f"palettize {palettize_bits} bits"
    return None if quantize is None else f"quantize {quantize}"


def check_compression(palettize_bits: int | None, quantize: str | None, target: str, rule: str) -> None:
    """Raise ``ValueError`` naming the field unless the joint-compression settings can be estimated."""
    if palettize_bits is None and quantize is None:
        return
    if palettize_bits is not None and quantize is not None:
        raise ValueError(f"palettize_bits={palettize_bits!r} and quantize={quantize!r} are mutually exclusive: "
                         "allowed is one of them")
    if palettize_bits is not None and (type(palettize_bits) is not int or palettize_bits not in PALETTIZE_BITS):
        raise ValueError(f"palettize_bits={palettize_bits!r} is invalid: allowed values are "
                         f"{', '.join(map(str, PALETTIZE_BITS))} (an int; got {type(palettize_bits).__name__})")
    if quantize is not None and quantize not in QUANTIZE_DTYPES:
        allowed = ", ".join(map(repr, QUANTIZE_DTYPES))
        raise ValueError(f"quantize={quantize!r} is invalid: allowed values are {allowed}")
    if target != JOINT_TARGET:
        raise ValueError(f"target={target!r} is invalid with palettize_bits / quantize: joint compression needs "
                         f"{JOINT_TARGET!r} (Core ML's first target with constexpr_lut_to_sparse)")
    if not rule.startswith("sparsify"):
        raise ValueError(f"rule={rule!r} is invalid with palettize_bits / quantize: the estimate follows "
                         "sparsify's export, allowed rules are 'sparsify' and 'sparsify_all'")


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is invalid: allowed values are {', '.join(map(repr, TARGETS))}")


@attrs.frozen
class StoredTensor:
    """One constant as Core ML will store it: ``numel`` elements, ``nnz`` of them kept, sparse or not,
    optionally palettized (``palettize_bits``) or quantized (``quantize``, ``channels`` scales) — iOS18."""

    numel: int
    nnz: int
    sparse: bool
    palettize_bits: int | None = None
    quantize: str | None = None
    channels: int = 1

    @property
    def storage(self) -> str:
        """The storage name `sparsify.export.mlpackage.inspect_mlpackage` reports for this form."""
        kinds = (["sparse"] if self.sparse else []) + (["palettized"] if self.palettize_bits else []) + (
            ["quantized"] if self.quantize else [])
        return "+".join(kinds) or "dense"

    def payload_bytes(self, precision: str = "fp16") -> int:
        """Bytes of the data alone (no headers, no alignment)."""
        target = JOINT_TARGET if self.palettize_bits or self.quantize else "iOS16"
        return sum(size for _, size in self.blobs(precision, target))

    def blobs(self, precision: str = "fp16", target: str = "iOS16") -> list[tuple[int, int]]:
        """``(elements, bytes)`` of each constant this tensor becomes (see the module docstring)."""
        _check_target(target)
        element = _check_precision(precision)
        if self.sparse and not 0 <= self.nnz <= self.numel:
            raise ValueError(f"nnz={self.nnz!r} is invalid: allowed 0 <= nnz <= numel ({self.numel})")
        mask_bytes = math.ceil(self.numel / 8)
        mask = [(self.numel if target == "iOS18" else mask_bytes, mask_bytes)] if self.sparse else []
        kept = self.nnz if self.sparse else self.numel
        if self.palettize_bits or self.quantize:
            check_compression(self.palettize_bits, self.quantize, target, "sparsify")
            if self.palettize_bits:
                entries = 2**self.palettize_bits
                return [(kept, math.ceil(kept * self.palettize_bits / 8)), (entries, entries * element), *mask]
            return [(kept, kept), (self.channels, self.channels * element), *mask]
        return [(kept, kept * element), *mask]

    def file_blob_sizes(self, precision: str = "fp16", target: str = "iOS16") -> list[int]:
        """Data bytes of each constant this tensor puts in ``weight.bin`` (those of at least 10 elements)."""
        return [size for elements, size in self.blobs(precision, target) if elements >= _MIN_FILE_ELEMENTS]

    def file_bytes(self, precision: str = "fp16", target: str = "iOS16") -> int:
        """Bytes this tensor adds to ``weight.bin`` in the middle of it: a 64-byte header plus the
        64-byte-aligned data for every constant of at least 10 elements (smaller ones are stored inline)."""
        sizes = self.file_blob_sizes(precision, target)
        return sum(_BLOB_HEADER + -(-size // _ALIGNMENT) * _ALIGNMENT for size in sizes)


def blob_file_bytes(sizes: Iterable[int]) -> int:
    """Size of a ``weight.bin`` holding blobs of these data sizes, in this order: the file header, each
    blob's header and data padded to 64 bytes — except the last, which the converter does not pad."""
    sizes = list(sizes)
    total = _FILE_HEADER + sum(_BLOB_HEADER + -(-size // _ALIGNMENT) * _ALIGNMENT for size in sizes)
    return total - (-sizes[-1] % _ALIGNMENT if sizes else 0)


def weight_file_bytes(tensors: Iterable[StoredTensor], precision: str = "fp16", target: str = "iOS16") -> int:
    """Size of ``weight.bin`` holding ``tensors`` in this order: the file header plus every blob (the last
    one unpadded). Exact when the converter keeps each tensor as one constant in this order (no folding,
    e.g. of batch norm into a dense conv; the state dict's order is the converter's for plain models)."""
    return blob_file_bytes(size for t in tensors for size in t.file_blob_sizes(precision, target))
