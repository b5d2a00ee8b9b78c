"""The example flows run end to end (``--quick``) as users run them: a subprocess, real files written; and
``sparsify demo`` runs from the built wheel, without the source checkout."""

from __future__ import annotations

import email
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--quick", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_coreml_tutorial(tmp_path: Path) -> None:
    out = run_example("coreml_tutorial.py", "--out", str(tmp_path))
    assert "data: digits, train (256, 1, 8, 8), test (128, 1, 8, 8), 10 classes\n      from scikit-learn" in out
    assert "dense model:" in out and "test accuracy" in out
    # the pruning report in Core ML Tools' format, with the conv / linear targets reached
    assert "name | #params | weight_sparsity | weight_sparsity |       sparsity" in out
    assert "global |   86816" in out
    # the summary table: accuracy, sparsity, size, the weight.bin bytes of the exports
    assert "summary (conv + linear weights" in out
    for row in ("dense |", "pruned 70/80 % |", "pruned 90 % |"):
        assert row in out
    assert "90.0% |  8,683 / 86,816 |     33.9 |     29,844 |   5.86x" in out
    # the export report and the verification read back from the saved packages
    assert "minimum_deployment_target=iOS16" in out
    assert f"verification with inspect_mlpackage (the saved files only, in {tmp_path}):" in out
    assert "pruned90.mlpackage |          4 |        4 of 8 |           29,844 |      5.86x" in out
    assert out.rstrip().endswith("(1 torch thread(s))")
    tables = [line for line in out.splitlines() if " | " in line]
    assert len(tables) > 20
    # Tables fit 100 columns (the pruner's report splits Core ML Tools' long column names over two lines)
    assert max(map(len, tables)) <= 100
    packages = [tmp_path / "pruned70-80.mlpackage", tmp_path / "pruned90.mlpackage"]
    for package in packages:
        assert (package / "Manifest.json").is_file()
        weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
        assert weights.is_file() and weights.stat().st_size > 0
        assert f"  {package}  (" in out, "the paths written are printed"
    assert packages[1].joinpath("Data/com.apple.CoreML/weights/weight.bin").stat().st_size < \
        packages[0].joinpath("Data/com.apple.CoreML/weights/weight.bin").stat().st_size


def test_mit_lab(tmp_path: Path) -> None:
    out = run_example("mit_lab.py", "--out", str(tmp_path))
    assert "dense model: accuracy" in out and "(87,370 parameters × 32 bits)" in out
    assert "sensitivity scan:" in out and "90%" in out
    assert "after one-shot 90% pruning: accuracy" in out
    assert "fine-tune epoch 1: accuracy" in out
    # 90 % of the 86,816 conv/linear weights pruned; the 554 biases and norm parameters stay
    assert "pruned 90% + fine-tune |" in out and "9,237 |" in out and "9.46x" in out
    assert "size (non-zeros × 32 bits)" in out and "Core ML weight.bin estimate" in out
    pictures = ["weights_dense.png", "sensitivity.png", "weights_pruned.png", "layer_sparsity.png", "heatmap.png"]
    for name in pictures:
        path = tmp_path / name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name
        assert f"  {path}" in out


def _build_wheel(folder: Path) -> Path:
    """``pip wheel`` of this checkout (no network: the running setuptools builds it)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder),
         str(ROOT)], capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = folder.glob("sparsify_coreml-*.whl")
    return wheel


def _setuptools_major() -> int:
    if importlib.util.find_spec("setuptools") is None:
        return 0
    from importlib.metadata import version

    return int(version("setuptools").split(".")[0])


@pytest.mark.skipif(_setuptools_major() < 77, reason="building the wheel needs setuptools >= 77 (SPDX license)")
def test_demo_runs_from_the_wheel(tmp_path: Path) -> None:
    """The wheel carries the demo, the license and the metadata; ``python -m sparsify demo`` runs from it
    alone (the checkout is not on the path: the unpacked wheel is what a ``pip install --no-deps`` puts in
    site-packages, and the dependencies come from this interpreter)."""
    wheel = _build_wheel(tmp_path / "dist")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(unpacked)
        info = next(name.rsplit("/", 1)[0] for name in names if name.endswith(".dist-info/METADATA"))
        metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "sparsify/demo/coreml_tutorial.py" in names and "sparsify/py.typed" in names
    assert f"{info}/licenses/LICENSE" in names
    assert metadata["Name"] == "sparsify-coreml" and metadata["License-Expression"] == "BSD-3-Clause"
    requires = metadata.get_all("Requires-Dist")
    assert not any(r.startswith("cattrs") for r in requires)
    assert "torch>=2.7" in requires and 'torchvision>=0.22; extra == "vision"' in requires
    assert "sparsify = sparsify.cli:main" in entry_points
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    result = subprocess.run(
        [sys.executable, "-c", "import sparsify, sys; print(sparsify.__file__); sys.argv[0] = 'sparsify'; "
         "from sparsify.cli import main; sys.exit(main())", "demo", "--quick", "--no-export", "--out", "out"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stdout.splitlines()[0] == str(unpacked / "sparsify" / "__init__.py")
    assert "pruning report (Core ML Tools' format):" in result.stdout and "nothing (--no-export)" in result.stdout


_NO_SKLEARN = """
import runpy, sys

class _NotInstalled:  # what a plain `pip install sparsify-coreml` has: no scikit-learn
    def find_spec(self, name, path=None, target=None):
        if name == "sklearn" or name.startswith("sklearn."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
sys.argv = ["sparsify", "demo", "--quick", "--no-export", "--threads", "1"]
runpy.run_module("sparsify", run_name="__main__")
"""


def test_demo_without_scikit_learn_says_exactly_what_to_install(tmp_path: Path) -> None:
    """``sparsify demo`` after ``pip install sparsify-coreml`` (scikit-learn is the ``data`` extra): one line
    naming the real distribution's extras, exit code 1 — not ``sparsify[data]`` (another PyPI project)."""
    result = subprocess.run([sys.executable, "-c", _NO_SKLEARN], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        "error: ImportError: the 'digits' dataset needs scikit-learn, which is not installed: pip install "
        "'sparsify-coreml[data]' (or pip install scikit-learn); or use MNIST: --dataset mnist --download, with "
        "pip install 'sparsify-coreml[vision]'"
    )


def test_install_hints_name_the_real_distribution() -> None:
    """Every install hint in the package and the docs names ``sparsify-coreml`` (PyPI's ``sparsify`` is not us)."""
    import re

    files = [*(ROOT / "sparsify").rglob("*.py"), *(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]
    wrong = [f"{path.relative_to(ROOT)}: {match.group(0)}" for path in files
             for match in re.finditer(r"pip install [\"']?sparsify(\[|[\"'\s]|$)", path.read_text())]
    assert wrong == []


_ONLY_THE_MAIN_JOBS_EXTRAS = """
import runpy, sys

_OPTIONAL = ("safetensors", "transformers", "accelerate", "datasets", "huggingface_hub", "pandas", "pyarrow",
             "matplotlib", "torchvision", "coreai", "coreai_torch", "coreai_opt", "tokenizers")

class _NotInstalled:  # README's command 1 installs `.[data]` only: none of the other extras' packages
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _OPTIONAL:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
import importlib.util
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (  # "is it installed?" probes (torch._dynamo's) say no
    None if name.split(".")[0] in _OPTIONAL else _find_spec(name, package))
sys.argv = ["sparsify", "demo", "--quick", "--threads", "1", "--out", "demo"]
runpy.run_module("sparsify", run_name="__main__")
assert not [m for m in sys.modules if m.split(".")[0] in _OPTIONAL], "an optional package was imported"
"""


def test_the_main_job_needs_only_the_data_extra(tmp_path: Path) -> None:
    """README's command 1 installs ``.[data]`` (scikit-learn) and nothing else: ``import sparsify`` and the whole
    main job (train, prune, report, export, verify) run without any other extra's packages (a top-level
    ``safetensors`` import in the streaming package once broke exactly this, in CI)."""
    result = subprocess.run([sys.executable, "-c", _ONLY_THE_MAIN_JOBS_EXTRAS], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "demo").is_dir()
