"""The Core ML metadata format has one owner (`sparsify.coreml_metadata`), and the pruning machine does not
import the analysis tools (they build on it)."""

from __future__ import annotations

import ast
from pathlib import Path

from torch import nn

from sparsify import Pruner, PrunerConfig
from sparsify.coreml_metadata import (
    METADATA_PREFIX,
    METADATA_VERSION_BUFFER,
    is_metadata_key,
    metadata_buffer,
    parse_metadata_key,
)

PACKAGE = Path(__file__).resolve().parents[1] / "sparsify"


def test_buffer_names_and_keys() -> None:
    assert METADATA_PREFIX == "_COREML_/"
    assert METADATA_VERSION_BUFFER == "_COREML_/metadata_version"
    assert metadata_buffer("weight", "compression_type") == "_COREML_/weight/compression_type"
    assert parse_metadata_key("features.0._COREML_/weight/compression_type") == (
        "features.0", "weight", "compression_type")
    assert parse_metadata_key("_COREML_/weight/compression_type") == ("", "weight", "compression_type")
    assert parse_metadata_key("_COREML_/metadata_version") is None
    assert parse_metadata_key("fc.weight") is None
    assert is_metadata_key("fc._COREML_/weight/compression_type") and not is_metadata_key("fc.weight_mask")


def test_finalize_writes_the_names_the_owner_defines() -> None:
    model = nn.Sequential(nn.Linear(8, 8))
    pruner = Pruner(model, PrunerConfig())
    pruner.prepare(inplace=True)
    pruner.prune_now()
    state = pruner.finalize(inplace=True).state_dict()
    assert [k for k in state if is_metadata_key(k)] == [METADATA_VERSION_BUFFER,
                                                        f"0.{metadata_buffer('weight', 'compression_type')}"]
    assert state["0._COREML_/weight/compression_type"].tolist() == [1]


def test_the_prefix_is_spelled_in_one_module() -> None:
    spelled = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("_COREML_"):
                spelled.add(path.relative_to(PACKAGE).as_posix())
    assert spelled == {"coreml_metadata.py"}


def test_the_pruning_machine_imports_no_analysis_module() -> None:
    """``sparsify.analysis`` builds on ``sparsify.pruning``, never the other way (no import cycle)."""
    found = []
    for path in sorted((PACKAGE / "pruning").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                if module in ("..analysis", "sparsify.analysis") or module.startswith(("..analysis.",
                                                                                      "sparsify.analysis.")):
                    found.append(f"{path.name}: {module}")
    assert found == []
