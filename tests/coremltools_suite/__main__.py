"""Run Core ML Tools' pruning tests against sparsify and print one line per test.

    python tests/coremltools_suite              # this checkout's sparsify
    python tests/coremltools_suite --keep /tmp/cmlsuite -- -k n_m   # keep the staged copy; extra pytest args

Exit status 0 when every test passed or was skipped by name (`LINUX_SKIPS`), 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a folder: `python tests/coremltools_suite`

from harness import EXPECTED_PASSED_ON_LINUX, run_suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/coremltools_suite", description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=None, help="checkout whose sparsify to test (default: this one)")
    parser.add_argument("--keep", type=Path, default=None, help="stage into this folder and leave it there")
    parser.add_argument("--rewrites", action="store_true", help="also print every rewritten import line")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    result = run_suite(repo=args.repo, keep=args.keep, extra_args=tuple(args.pytest_args))
    print(f"sparsify under test: {result.sparsify_file}")
    if args.rewrites:
        for rw in result.rewrites:
            print(f"rewrote {rw.path}:{rw.line}: {rw.before}  ->  {rw.after}")
    width = max((len(node) for node in result.outcomes), default=0)
    for node, (outcome, detail) in sorted(result.outcomes.items()):
        print(f"{outcome:7}  {node:{width}}  {detail}".rstrip())
    for where, message in {**result.collect_errors, **{leak: "" for leak in result.leaks}}.items():
        print(f"ERROR    {where}  {message}".rstrip())
    print(f"\n{result.summary()} (Core ML Tools' suite, {EXPECTED_PASSED_ON_LINUX} expected to pass on Linux)")
    return 1 if result.problems else 0


if __name__ == "__main__":
    sys.exit(main())
