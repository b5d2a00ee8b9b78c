"""The source tree itself: no merge left half-done (a conflict inside a docstring still imports)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKERS = ("<" * 7 + " ", "=" * 7 + "\n", ">" * 7 + " ")


def test_no_merge_conflict_markers_in_the_tree() -> None:
    files = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "mkdocs.yml"]
    for folder in ("sparsify", "tests", "docs", "benchmarks", "examples", ".ci"):
        suffixes = {".py", ".md", ".yaml", ".toml", ""}
        files += [p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in suffixes]
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files if path.exists()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(keepends=True), 1)
        if line.startswith(MARKERS) or line == "=" * 7
    ]
    assert len(files) > 100 and found == []
