"""The source tree itself: no merge left half-done (a conflict inside a docstring still imports)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
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



def test_tests_mirror_the_package_layout() -> None:
    """docs/design.md: each folder of tests/ is named after a subpackage of sparsify (or is ``project``), and test
    file names are unique across folders (pytest imports a test file of a folder without ``__init__.py`` by its
    base name, so two of one name would collide)."""
    tests = ROOT / "tests"
    files = sorted(tests.rglob("test_*.py"))
    names = [path.name for path in files]
    assert len(files) > 50 and sorted(name for name in set(names) if names.count(name) > 1) == []
    subpackages = {path.parent.name for path in (ROOT / "sparsify").glob("*/__init__.py")}
    folders = {path.parent.relative_to(tests).as_posix() for path in files} - {"."}
    assert folders - subpackages == {"project"}

def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_readme_two_commands_verbatim() -> None:
    """CI must run exactly the commands README.md gives (main job first, then the test suite), and the docs'
    front page repeats them word for word."""
    commands = _readme_commands()
    assert len(commands) == 2
    assert '".[data]"' in commands[0] and "examples/coreml_tutorial.py" in commands[0]
    assert '".[dev,coreai]"' in commands[1] and commands[1].endswith("-m pytest -n 2")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    positions = [ci.index(command) for command in commands]
    assert positions == sorted(positions)
    index = (ROOT / "docs" / "index.md").read_text().splitlines()
    assert all(command in index for command in commands)


# The loaders that can run code from a file, and the only places the library may call them (each after the
# check named in the comment). Everything else reads files with sparsify's own readers.
_CODE_LOADERS = {"torch.load", "torch.export.load", "torch.jit.load", "pickle.load", "pickle.loads",
                 "pickle.Unpickler", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "numpy.load", "np.load",
                 "dill.load", "joblib.load", "eval", "exec"}
_AUDITED = {
    ("sparsify/cli_files.py", "torch.jit.load"),  # after read_state_dict: its pickle holds only tensors
    ("sparsify/cli_files.py", "torch.export.load"),  # after sparsify.pt2_archive.check_exported_archive
}


def _dotted(node: object) -> str:
    import ast

    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_code_running_loaders_are_called_only_after_a_check() -> None:
    """``torch.load`` & co. appear in the library only where a check runs first (keeps every new reader on
    sparsify's own safe readers: `sparsify.model_files`, `sparsify.pt2_archive`, `sparsify.safe_io`)."""
    import ast

    calls = set()
    for path in sorted((ROOT / "sparsify").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and _dotted(node.func) in _CODE_LOADERS:
                calls.add((str(path.relative_to(ROOT)), _dotted(node.func)))
    assert calls == _AUDITED
