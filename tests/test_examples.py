"""The example flows run end to end (``--quick``) as users run them: a subprocess, real files written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
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
    assert "data: DatasetSplits('digits'" in out
    assert "dense model:" in out and "test accuracy" in out
    # the pruning report in Core ML Tools' format, with the conv / linear targets reached
    assert "name | #params | structured_weight_sparsity | unstructured_weight_sparsity" in out
    assert "global |   86816" in out
    # the summary table: accuracy, sparsity, size, the weight.bin bytes of the exports
    assert "summary (conv + linear weights" in out
    for row in ("dense |", "pruned 70/80 % |", "pruned 90 % |"):
        assert row in out
    assert "90.0% |   8,683 / 86,816" in out
    # the export report and the verification read back from the saved packages
    assert "minimum_deployment_target=iOS16" in out
    assert "verification with inspect_mlpackage" in out
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
