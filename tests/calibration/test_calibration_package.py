"""The layer-wise calibration plumbing lives in `sparsify.calibration` (issue 23): the old `sparsify.criteria`
paths are the same objects, and the package imports nothing of the machine but `sparsify.masking`."""

from __future__ import annotations

import ast
from pathlib import Path

import sparsify.calibration.chain as chain
import sparsify.calibration.layer_inputs as layer_inputs
import sparsify.calibration.passes as passes
import sparsify.criteria._passes as old_passes
import sparsify.criteria.calibration as old_calibration
import sparsify.criteria.chain as old_chain

PACKAGE = Path(__file__).resolve().parents[2] / "sparsify" / "calibration"


def test_old_import_paths_are_the_moved_objects() -> None:
    for old, new in ((old_calibration, layer_inputs), (old_chain, chain), (old_passes, passes)):
        assert old.__all__, old.__name__
        for name in old.__all__:
            assert getattr(old, name) is getattr(new, name), f"{old.__name__}.{name}"
    assert old_calibration.MERGED_COLUMNS == 2**24
    assert layer_inputs.Calibration.__module__ == "sparsify.calibration.layer_inputs"
    assert chain.ChainProbe.__module__ == "sparsify.calibration.chain"


def test_the_calibration_package_imports_only_itself_masking_and_private_helpers() -> None:
    allowed = {"sparsify.calibration", "sparsify.masking"}
    imported: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = "sparsify.calibration" if node.level == 1 else "sparsify"
                target = f"{base}.{node.module}" if node.module else base
                imported.setdefault(path.name, set()).add(target)
    outside = {name: sorted(t for t in targets if not t.startswith("sparsify._")
                          and not any(t == a or t.startswith(a + ".") for a in allowed))
               for name, targets in imported.items()}
    assert {name: t for name, t in outside.items() if t} == {}
    assert "sparsify.masking" in imported["passes.py"]  # the one module of the machine it needs
