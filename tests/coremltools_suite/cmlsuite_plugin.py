"""pytest plugin loaded (``-p cmlsuite_plugin``) into the subprocess that runs Core ML Tools' staged suite.

It skips the tests named in ``$CMLSUITE_SKIPS`` (``{nodeid: reason}``), records every test's outcome,
the files that failed to import, and any test-module global that comes from Core ML Tools' pruning
code, and writes them as JSON to ``$CMLSUITE_RESULTS`` for `harness.run_suite` to read.
"""

from __future__ import annotations

import json
import os
import types
from typing import Any

import pytest

_FOREIGN = ("coremltools.optimize.torch.pruning", "coremltools.optimize.torch._utils.metadata_utils")

_outcomes: dict[str, list[str]] = {}
_collect_errors: dict[str, str] = {}
_leaks: list[str] = []


def _origin(value: Any) -> str:
    if isinstance(value, types.ModuleType):
        return value.__name__
    return getattr(value, "__module__", None) or ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skips: dict[str, str] = json.loads(os.environ.get("CMLSUITE_SKIPS", "{}"))
    seen = set()
    for item in items:
        if item.nodeid in skips:
            # first among the skip marks, so this reason is the one reported
            item.add_marker(pytest.mark.skipif(True, reason=skips[item.nodeid]), append=False)
        module = item.getparent(pytest.Module)
        if module is None or module.nodeid in seen:
            continue
        seen.add(module.nodeid)
        for name, value in vars(module.obj).items():
            origin = _origin(value)
            if origin.startswith(_FOREIGN):
                _leaks.append(f"{module.nodeid}: {name} from {origin}")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _collect_errors[report.nodeid] = _message(report)


def _message(report: Any) -> str:
    """The failure's exception line(s), on one line."""
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    else:
        lines = str(report.longrepr).strip().splitlines()
        errors = [line[1:] for line in lines if line.startswith("E ")]
        text = "\n".join(errors) if errors else (lines[-1] if lines else "")
    return " ".join(text.split())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = report.nodeid
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _outcomes[node] = ["skipped", reason.removeprefix("Skipped: ")]
    elif report.failed:
        outcome = "failed" if report.when == "call" else "error"
        if node not in _outcomes or _outcomes[node][0] == "passed":
            _outcomes[node] = [outcome, _message(report)]
    elif report.when == "call":
        _outcomes[node] = ["passed", ""]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = os.environ.get("CMLSUITE_RESULTS")
    if not path:
        return
    try:
        import sparsify

        sparsify_file = sparsify.__file__
    except Exception as exc:  # reported by the harness instead of a traceback here
        sparsify_file = f"<import sparsify failed: {exc!r}>"
    data = {
        "outcomes": _outcomes,
        "collect_errors": _collect_errors,
        "leaks": _leaks,
        "sparsify_file": sparsify_file,
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
