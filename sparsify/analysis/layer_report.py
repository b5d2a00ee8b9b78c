"""The rows and totals of `sparsify.analysis.model_report.model_report`, and their text, Markdown, CSV
and JSON forms."""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from typing import Any

import attrs

from .._table import markdown_table, text_table

__all__ = ["LayerReport", "ModelReport"]


@attrs.frozen
class LayerReport:
    """One weight: counts, sparsity, pattern and Core ML storage (bytes of the data, no headers)."""

    name: str
    kind: str  # module class name, "" when read from a state dict
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    requested: float | None
    pattern: str
    pattern_source: str  # "hook", "config" or "inferred"
    structured_sparsity: float  # fraction of output channels entirely zero (magnitudes)
    block2_sparsity: float  # fraction of zero 2x1 blocks (channels 2i, 2i+1 at one position), -1 for odd counts
    metadata: bool  # carries (or, once finalized, will carry) Core ML pruning metadata
    stored_nonzeros: int  # non-zeros Core ML keeps (it zeroes |w| <= threshold, see sizing)
    sparse: bool  # stored sparse in an fp16 export
    sparse_fp32: bool  # ... in an fp32 export (the "sparsify" rules decide by size, which can differ)
    dense_fp16: int
    dense_fp32: int
    coreml_fp16: int
    coreml_fp32: int
    storage: str = ""  # the fp16 export's storage ("sparse", "sparse+palettized", ...); "" = from `sparse`

    @property
    def achieved(self) -> float:
        """Fraction of zeros in the weight."""
        return 1 - self.nonzeros / self.params if self.params else 0.0

    @property
    def smaller(self) -> float:
        """``dense / Core ML`` bytes in fp16 (how many times smaller the stored weight is)."""
        return self.dense_fp16 / self.coreml_fp16 if self.coreml_fp16 else math.inf

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["shape"] = list(self.shape)
        data["achieved"] = self.achieved
        data["smaller_fp16"] = self.smaller
        data["smaller_fp32"] = self.dense_fp32 / self.coreml_fp32 if self.coreml_fp32 else math.inf
        return data


@attrs.frozen
class ModelReport:
    """Per-layer rows plus whole-model totals; print with `to_text` or ``str()``."""

    layers: tuple[LayerReport, ...]
    other_params: int  # elements of the other floating-point tensors (biases, norms, ...)
    rule: str  # which weights Core ML stores sparse, see sparsify.analysis.sizing
    target: str  # deployment target the weight.bin estimate is for
    file_fp16: int  # estimated weight.bin bytes, fp16 model
    file_fp32: int
    file_dense_fp16: int  # ... and the same model stored dense
    file_dense_fp32: int
    compression: str | None = None  # "palettize N bits" / "quantize int8": joint compression in the estimate

    # -- totals ------------------------------------------------------------------------------

    def _sum(self, field: str) -> int:
        return sum(getattr(layer, field) for layer in self.layers)

    @property
    def params(self) -> int:
        return self._sum("params")

    @property
    def nonzeros(self) -> int:
        return self._sum("nonzeros")

    @property
    def sparsity(self) -> float:
        """Count-weighted sparsity of the reported layers."""
        return 1 - self.nonzeros / self.params if self.params else 0.0

    @property
    def requested(self) -> float | None:
        """Count-weighted requested sparsity (layers without a request count as 0), or ``None``."""
        if all(layer.requested is None for layer in self.layers):
            return None
        return sum((layer.requested or 0.0) * layer.params for layer in self.layers) / max(self.params, 1)

    @property
    def smaller(self) -> float:
        """How many times smaller the whole fp16 ``weight.bin`` is than the dense one."""
        return self.file_dense_fp16 / self.file_fp16

    def __getitem__(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in the report; layers are {[layer.name for layer in self.layers]}")

    # -- output ------------------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "target": self.target,
            "compression": self.compression,
            "layers": [layer.as_dict() for layer in self.layers],
            "total": {
                "params": self.params, "nonzeros": self.nonzeros, "requested": self.requested,
                "achieved": self.sparsity, "other_params": self.other_params,
                **{k: self._sum(k) for k in ("dense_fp16", "dense_fp32", "coreml_fp16", "coreml_fp32")},
            },
            "weight_file": {
                "fp16": self.file_fp16, "fp32": self.file_fp32,
                "dense_fp16": self.file_dense_fp16, "dense_fp32": self.file_dense_fp32,
                "smaller_fp16": self.smaller, "smaller_fp32": self.file_dense_fp32 / self.file_fp32,
            },
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent)

    def to_csv(self) -> str:
        """One line per layer with every field (bytes as integers), then a ``total`` line."""
        rows = [layer.as_dict() for layer in self.layers]
        columns = list(rows[0]) if rows else list(attrs.fields_dict(LayerReport))
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "shape": "x".join(map(str, row["shape"]))})
        total = self.as_dict()["total"]
        writer.writerow({"name": "total", **{k: v for k, v in total.items() if k in columns}})
        return out.getvalue()

    def _table(self) -> tuple[list[str], list[list[str]]]:
        """The header and the rows (the last one the totals); columns from `_SIZES` on are sizes."""
        header = ["layer", "type", "pattern", "params", "nonzeros", "requested", "achieved", "channels 0",
                  "stored", "fp16 dense", "fp16 Core ML", "fp32 dense", "fp32 Core ML", "× smaller"]
        rows = []
        for layer in self.layers:
            stored = layer.storage or ("sparse" if layer.sparse else "dense")
            if layer.coreml_fp16 > layer.dense_fp16:
                stored += " (!)"
            rows.append([
                layer.name, layer.kind, layer.pattern, f"{layer.params:,}", f"{layer.nonzeros:,}",
                _pct(layer.requested), _pct(layer.achieved), _pct(layer.structured_sparsity), stored,
                _bytes(layer.dense_fp16), _bytes(layer.coreml_fp16), _bytes(layer.dense_fp32),
                _bytes(layer.coreml_fp32), f"{layer.smaller:.2f}×",
            ])
        total_fp16 = self._sum("coreml_fp16")
        rows.append([
            "total", "", "", f"{self.params:,}", f"{self.nonzeros:,}", _pct(self.requested), _pct(self.sparsity),
            "", "", _bytes(self._sum("dense_fp16")), _bytes(total_fp16), _bytes(self._sum("dense_fp32")),
            _bytes(self._sum("coreml_fp32")),
            f"{self._sum('dense_fp16') / total_fp16:.2f}×" if total_fp16 else "",
        ])
        return header, rows

    def _footer(self) -> list[str]:
        lines = [
            f"Core ML weight.bin estimate ({self.target}+, {_RULE_NAMES[self.rule]}"
            f"{', ' + self.compression if self.compression else ''}, {self.other_params:,} other "
            f"parameters stored dense): fp16 {_bytes(self.file_fp16)} vs {_bytes(self.file_dense_fp16)} dense "
            f"({self.smaller:.2f}× smaller); fp32 {_bytes(self.file_fp32)} vs {_bytes(self.file_dense_fp32)} "
            f"({self.file_dense_fp32 / self.file_fp32:.2f}× smaller).",
            "'channels 0' = output channels whose weights are all zero.",
        ]
        if any(layer.coreml_fp16 > layer.dense_fp16 for layer in self.layers):
            lines.append("'(!)' = stored sparse although that is larger than dense (below 1/16 sparsity in fp16).")
        return lines

    def to_text(self, width: int = 100) -> str:
        """Aligned plain text with a footer for the whole model, ``width`` columns wide where it can be.

        One table when it fits; otherwise two sharing the layer column, the counts and then the sizes
        (only layer names longer than about 30 characters make those wider). The footer is wrapped.
        """
        header, rows = self._table()
        every = list(range(len(header)))
        one = text_table([header], rows, left=3, rules_before=[len(rows) - 1])
        parts = [every] if len(one[1]) <= width else [every[:_SIZES], [0, *every[_SIZES:]]]
        lines: list[str] = []
        for columns in parts:
            lines += [*text_table([header], rows, left=3, rules_before=[len(rows) - 1], columns=columns), ""]
        footer = [textwrap.fill(text, width, break_on_hyphens=False) for text in self._footer()]
        return "\n".join([*lines, *footer])

    def to_markdown(self) -> str:
        header, rows = self._table()
        rows[-1] = [f"**{c}**" if c else c for c in rows[-1]]
        table = markdown_table(header, rows, left=3)
        return "\n".join([*table, "", *self._footer()])

    def __str__(self) -> str:
        return self.to_text()


_SIZES = 8  # the first size column of `ModelReport._table` ("stored"): where to_text splits a wide table

_RULE_NAMES = {
    "sparsify": "as sparsify export stores it",
    "sparsify_all": "as export_coreml(sparse_weights='all') stores it",
    "metadata": "as coremltools.convert stores it",
    "default_pruning": "as coremltools.convert with DEFAULT_PRUNING stores it",
}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# ----------------------------------------------------------------------------------------------
# Reading a model
