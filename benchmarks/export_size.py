"""Core ML export: weight-file bytes against dense and against the sparse format's limit, and time.

Sizes — the five-layer model of the Core ML Tools study (``Conv2d(64,128,3) → Conv2d(128,128,3) →
pool → Linear(128,1024) → Linear(1024,512) → Linear(512,10)``, 881 664 conv/linear weights), pruned
unstructured by :class:`sparsify.MagnitudePruner` to each sparsity, exported three ways at iOS16, fp16:

* ``export_coreml`` (sparsify);
* ``coremltools.convert`` of the same finalized model (Core ML Tools' metadata route);
* the limit of the format: every pruned weight at ``nnz × 2 + ceil(numel / 8)`` bytes, every other
  tensor at ``numel × 2``, no headers or alignment.

Time — ``export_coreml`` against plain ``coremltools.convert`` (metadata route) on torchvision's
ResNet-18 pruned 75 % unstructured, iOS16 and iOS18, interleaved round by round, medians reported.

    python benchmarks/export_size.py              # sizes and times (about 3 minutes on 2 cores)
    python benchmarks/export_size.py --no-time    # sizes only
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore")
logging.getLogger("coremltools").setLevel(logging.ERROR)


def _study_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(64, 128, 3), nn.ReLU(), nn.Conv2d(128, 128, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(), nn.Linear(512, 10),
    ).eval()


def _finalized(model: nn.Module, sparsity: float) -> nn.Module:
    from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig

    config = MagnitudePrunerConfig(global_config=ModuleMagnitudePrunerConfig(target_sparsity=sparsity))
    pruner = MagnitudePruner(model, config)
    pruner.prepare(inplace=True)
    pruner.step()
    return pruner.finalize()


def _plain_convert(model: nn.Module, example: torch.Tensor, path: str, target: object) -> int:
    import coremltools as ct

    traced = torch.jit.trace(model, example)
    mlmodel = ct.convert(traced, inputs=[ct.TensorType(shape=example.shape)], convert_to="mlprogram",
                         minimum_deployment_target=target)
    mlmodel.save(path)
    return os.path.getsize(os.path.join(path, "Data", "com.apple.CoreML", "weights", "weight.bin"))


def _limit(model: nn.Module) -> int:
    """The format's limit, fp16, no headers: each weight of rank >= 2 at the smaller of sparse
    (``nnz × 2 + ceil(numel / 8)``) and dense (``numel × 2``), every other tensor dense."""
    total = 0
    for name, tensor in model.state_dict().items():
        if "_COREML_" in name or not tensor.is_floating_point():
            continue
        dense = tensor.numel() * 2
        sparse = int(torch.count_nonzero(tensor)) * 2 + math.ceil(tensor.numel() / 8)
        total += min(dense, sparse) if tensor.dim() >= 2 else dense
    return total


def sizes(folder: str) -> None:
    import coremltools as ct

    from sparsify.export.coreml import export_coreml

    example = torch.randn(1, 64, 16, 16)
    print("| sparsity | export_coreml bytes | / dense | theory (1-s)+1/16 | limit bytes | / limit "
          "| coremltools.convert bytes |")
    print("|---|---|---|---|---|---|---|")
    for sparsity in (0.0, 0.5, 0.75, 0.9):
        torch.manual_seed(0)
        model = _study_model()
        if sparsity:
            model = _finalized(model, sparsity)
        report = export_coreml(model, example, os.path.join(folder, f"s{sparsity}.mlpackage"),
                               sparse_weights="pruned" if sparsity else "all")
        plain = _plain_convert(model, example, os.path.join(folder, f"plain{sparsity}.mlpackage"), ct.target.iOS16)
        limit = _limit(model)
        theory = (1 - sparsity) + 1 / 16 if sparsity else 1.0
        print(f"| {sparsity:.0%} | {report.total_bytes:,} | {report.ratio:.3f} | {theory:.4f} | {limit:,} "
              f"| {report.total_bytes / limit:.4f} | {plain:,} |")


def times(folder: str, rounds: int) -> None:
    import coremltools as ct
    import torchvision

    from sparsify.export.coreml import export_coreml

    torch.manual_seed(0)
    model = _finalized(torchvision.models.resnet18(weights=None).eval(), 0.75)
    example = torch.randn(1, 3, 224, 224)
    variants = {
        ("export_coreml", "iOS16"): lambda p: export_coreml(model, example, p, minimum_deployment_target="iOS16",
                                                                   overwrite=True),
        ("coremltools.convert", "iOS16"): lambda p: _plain_convert(model, example, p, ct.target.iOS16),
        ("export_coreml", "iOS18"): lambda p: export_coreml(model, example, p, minimum_deployment_target="iOS18",
                                                                   overwrite=True),
        ("coremltools.convert", "iOS18"): lambda p: _plain_convert(model, example, p, ct.target.iOS18),
    }
    seconds: dict[tuple[str, str], list[float]] = {key: [] for key in variants}
    for _ in range(rounds):
        for key, run in variants.items():
            start = time.perf_counter()
            run(os.path.join(folder, f"{key[0]}-{key[1]}.mlpackage"))
            seconds[key].append(time.perf_counter() - start)
    print(f"\nResNet-18, 75 % unstructured, median of {rounds} rounds (torch threads: {torch.get_num_threads()})\n")
    print("| route | target | seconds |")
    print("|---|---|---|")
    for (route, target), values in seconds.items():
        print(f"| {route} | {target} | {statistics.median(values):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-time", action="store_true", help="skip the ResNet-18 timing")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sizes(folder)
        if not args.no_time:
            times(folder, args.rounds)


if __name__ == "__main__":
    main()
