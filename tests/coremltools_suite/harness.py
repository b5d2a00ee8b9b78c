"""Run Core ML Tools' own pruning tests against sparsify, with only the imports changed.

Core ML Tools ships its pruning tests inside its wheel (``coremltools/test/optimize/torch/``). At run
time this module copies them into a temporary directory (their code is never committed here),
rewrites the import lines that name Core ML Tools' pruning package to name sparsify instead
(`IMPORT_MAP`), runs them with pytest in a subprocess, and returns one outcome per test.

What is copied and what is not:

* copied and rewritten: the suite's ``conftest.py`` (its fixtures) and every ``test_*.py`` under
  ``pruning/`` and ``conversion/pruning/``;
* not copied: the helpers those files import by absolute name (``coremltools.test.optimize.torch.utils``,
  ``conversion/conversion_utils.py``, ``pruning/pruning_utils.py``, ``models/``). They hold no pruning
  code and are imported unchanged from the installed wheel.

Two checks keep the run honest: after rewriting, no copied file may still mention Core ML Tools'
pruning modules (`StagingError` otherwise), and the plugin scans each collected test module for
globals that come from Core ML Tools' pruning code (reported as ``leaks``).

The four conversion tests cannot run on Linux (`LINUX_SKIPS`): they convert the pruned model and, on
macOS, compare its outputs with ``MLModel.predict``, which needs the Core ML runtime; Core ML Tools
itself marks them ``skipif(macOS < 15)``. They are skipped by node id, with that reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "EXPECTED_PASSED_ON_LINUX",
    "IMPORT_MAP",
    "LINUX_SKIPS",
    "Rewrite",
    "StagingError",
    "SuiteResult",
    "find_suite",
    "rewrite_imports",
    "run_suite",
    "stage",
]

# Core ML Tools module -> the sparsify module that replaces it. Longest names first, so a submodule is
# never rewritten as its parent package.
IMPORT_MAP: dict[str, str] = {
    "coremltools.optimize.torch.pruning.magnitude_pruner": "sparsify.magnitude_pruner",
    "coremltools.optimize.torch.pruning.pruning_scheduler": "sparsify.pruning_scheduler",
    "coremltools.optimize.torch.pruning._utils": "sparsify.compat.coremltools",
    "coremltools.optimize.torch._utils.metadata_utils": "sparsify.compat.coremltools",
    "coremltools.optimize.torch.pruning": "sparsify",
}

# Anything that still names these after rewriting would test Core ML Tools instead of sparsify
# (``coremltools.test.optimize.torch.pruning`` is the suite's own helper package, not pruning code).
_LEAK = re.compile(r"(?<!test\.)optimize\.torch\.(pruning|_utils\.metadata_utils)\b")
_IMPORT = re.compile(r"^(?P<indent>\s*)(?P<kw>from|import)\s+(?P<module>[\w.]+)(?P<rest>.*)$")

# Test files, relative to coremltools/test/optimize/torch/.
SUITE_GLOBS = ("pruning/test_*.py", "conversion/pruning/test_*.py")
CONFTEST = "conftest.py"

_PREDICT = (
    "needs macOS: converts the pruned model and checks it with MLModel.predict, which needs the Core ML "
    "runtime (absent on Linux); Core ML Tools marks it skipif(macOS < 15)"
)
LINUX_SKIPS: dict[str, str] = {
    f"conversion/pruning/test_pruning_conversion.py::test_magnitude_pruner[{case}]": _PREDICT
    for case in (
        "unstructured_sparsity",
        "block_structured_sparsity",
        "n_m_structured_sparsity",
        "general_structured_sparsity",
    )
}
EXPECTED_PASSED_ON_LINUX = 50

_PLUGIN = "cmlsuite_plugin"


class StagingError(RuntimeError):
    """The installed Core ML Tools suite cannot be staged faithfully (missing, or an unmapped import)."""


@dataclass(frozen=True)
class Rewrite:
    """One rewritten import line."""

    path: str  # relative to the suite root
    line: int
    before: str
    after: str


@dataclass
class SuiteResult:
    """Per-test outcomes of one run: ``outcomes[nodeid] = (outcome, detail)``.

    ``outcome`` is ``passed``, ``failed``, ``error`` (setup/teardown) or ``skipped``; ``detail`` is
    the skip reason or the one-line failure message. ``collect_errors`` maps a file that could not be
    imported to the error (its tests are then missing from ``outcomes``).
    """

    outcomes: dict[str, tuple[str, str]]
    collect_errors: dict[str, str]
    leaks: list[str]
    rewrites: list[Rewrite]
    sparsify_file: str
    returncode: int
    output: str = field(repr=False)

    def named(self, outcome: str) -> dict[str, str]:
        """``{nodeid: detail}`` of the tests with this outcome."""
        return {node: detail for node, (out, detail) in self.outcomes.items() if out == outcome}

    @property
    def passed(self) -> list[str]:
        return sorted(self.named("passed"))

    @property
    def problems(self) -> dict[str, str]:
        """Everything that is neither a pass nor an expected skip, by node id or file."""
        found = {**self.named("failed"), **self.named("error"), **self.collect_errors}
        found.update({f"leak: {leak}": "test module uses Core ML Tools' pruning code" for leak in self.leaks})
        return found

    def summary(self) -> str:
        counts = {out: len(self.named(out)) for out in ("passed", "failed", "error", "skipped")}
        parts = [f"{n} {out}" for out, n in counts.items() if n]
        if self.collect_errors:
            parts.append(f"{len(self.collect_errors)} file(s) not importable")
        return ", ".join(parts) or "nothing ran"


def find_suite() -> Path:
    """The installed wheel's ``coremltools/test/optimize/torch`` folder (coremltools is not imported)."""
    spec = importlib.util.find_spec("coremltools")
    if spec is None or spec.origin is None:
        raise StagingError("coremltools is not installed: the Core ML Tools suite ships inside its wheel")
    root = Path(spec.origin).parent / "test" / "optimize" / "torch"
    if not (root / CONFTEST).is_file():
        raise StagingError(f"{root} holds no {CONFTEST}: this coremltools install does not ship its tests")
    return root


def rewrite_imports(source: str, path: str = "<source>") -> tuple[str, list[Rewrite]]:
    """``source`` with every import of a Core ML Tools pruning module pointed at sparsify.

    Only the module name of ``from X import ...`` / ``import X as Y`` lines changes; the imported
    names and the rest of the file stay byte for byte. Raises `StagingError` if Core ML Tools'
    pruning code is still named anywhere afterwards (an import form this map does not cover).
    """
    lines = source.splitlines(keepends=True)
    rewrites: list[Rewrite] = []
    for number, line in enumerate(lines, start=1):
        match = _IMPORT.match(line.rstrip("\r\n"))
        if not match:
            continue
        module = match["module"]
        target = IMPORT_MAP.get(module)
        if target is None:
            continue
        if match["kw"] == "import" and " as " not in match["rest"]:
            raise StagingError(
                f"{path}:{number}: `import {module}` without `as` binds the name coremltools; "
                f"only `from {module} import ...` and `import {module} as ...` can be rewritten"
            )
        new = f"{match['indent']}{match['kw']} {target}{match['rest']}" + line[len(line.rstrip("\r\n")):]
        lines[number - 1] = new
        rewrites.append(Rewrite(path, number, line.strip(), new.strip()))
    text = "".join(lines)
    for number, line in enumerate(text.splitlines(), start=1):
        if _LEAK.search(line):
            raise StagingError(
                f"{path}:{number}: still names Core ML Tools' pruning code after rewriting: {line.strip()!r}; "
                f"add its module to IMPORT_MAP"
            )
    return text, rewrites


def stage(dest: Path, suite: Path | None = None) -> list[Rewrite]:
    """Copy the suite's conftest and pruning test files into ``dest`` (same layout), imports rewritten."""
    suite = find_suite() if suite is None else suite
    files = [suite / CONFTEST, *sorted(p for pattern in SUITE_GLOBS for p in suite.glob(pattern))]
    if len(files) == 1:
        raise StagingError(f"no test files match {SUITE_GLOBS} under {suite}")
    rewrites: list[Rewrite] = []
    for src in files:
        rel = src.relative_to(suite).as_posix()
        text, done = rewrite_imports(src.read_text(encoding="utf-8"), rel)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        rewrites += done
    (dest / "pytest.ini").write_text("[pytest]\naddopts =\n", encoding="utf-8")
    return rewrites


def _checkout_root() -> Path:
    """The checkout this harness belongs to (``tests/coremltools_suite/`` → repository root)."""
    return Path(__file__).resolve().parents[2]


def run_suite(
    repo: Path | None = None,
    skips: dict[str, str] | None = None,
    keep: Path | None = None,
    extra_args: tuple[str, ...] = (),
) -> SuiteResult:
    """Stage the suite and run it against the sparsify in ``repo`` (default: this checkout).

    ``skips`` maps node ids to skip reasons (default: `LINUX_SKIPS` except on macOS). ``keep`` stages
    into that folder instead of a temporary one and leaves it there, for inspection or a rerun.
    """
    repo = _checkout_root() if repo is None else Path(repo).resolve()
    if not (repo / "sparsify" / "__init__.py").is_file():
        raise StagingError(f"{repo} holds no sparsify package")
    if skips is None:
        skips = {} if sys.platform == "darwin" else LINUX_SKIPS
    if keep is not None:
        keep = Path(keep)
        shutil.rmtree(keep, ignore_errors=True)
        keep.mkdir(parents=True)
        return _run(keep, repo, skips, extra_args)
    with tempfile.TemporaryDirectory(prefix="coremltools-suite-") as tmp:
        return _run(Path(tmp), repo, skips, extra_args)


def _run(where: Path, repo: Path, skips: dict[str, str], extra_args: tuple[str, ...]) -> SuiteResult:
    suite_dir = where / "suite"
    rewrites = stage(suite_dir)
    results = where / "results.json"
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.setdefault("OMP_NUM_THREADS", "1")  # the suite's tensors are tiny; threads only contend
    paths = [str(repo), str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["CMLSUITE_RESULTS"] = str(results)
    env["CMLSUITE_SKIPS"] = json.dumps(skips)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", _PLUGIN,
        "--import-mode=importlib", "--continue-on-collection-errors",
        "--rootdir", str(suite_dir), "-c", str(suite_dir / "pytest.ini"), str(suite_dir), *extra_args,
    ]
    proc = subprocess.run(command, cwd=where, env=env, capture_output=True, text=True, check=False)
    output = proc.stdout + proc.stderr
    if not results.is_file():
        raise RuntimeError(f"the suite did not run (exit {proc.returncode}):\n{output[-4000:]}")
    data = json.loads(results.read_text(encoding="utf-8"))
    sparsify_file = data["sparsify_file"]
    if sparsify_file.startswith("<") or not Path(sparsify_file).resolve().is_relative_to(repo):
        raise RuntimeError(f"the suite imported sparsify from {sparsify_file}, not from {repo}")
    return SuiteResult(
        outcomes={node: (out, detail) for node, (out, detail) in data["outcomes"].items()},
        collect_errors=data["collect_errors"],
        leaks=data["leaks"],
        rewrites=rewrites,
        sparsify_file=sparsify_file,
        returncode=proc.returncode,
        output=output,
    )
