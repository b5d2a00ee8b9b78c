"""Joint compression: a 90 %-pruned ResNet-18 exported sparse, sparse + 4-bit palettes, sparse + int8.

Model: torchvision's ResNet-18 (``weights=None``, seed 0), every conv and linear weight pruned 90 %
by `sparsify.MagnitudePruner` (magnitude, per layer) and finalized (which writes the Core ML
metadata). Each export is `sparsify.export.coreml.export_coreml` at iOS18, fp16:

* ``sparse``: ``minimum_deployment_target="iOS18"``;
* ``palettize 4``: ``palettize_bits=4`` (sparse + palettized, ``constexpr_lut_to_sparse``);
* ``int8``: ``quantize="int8"`` (sparse + quantized, ``constexpr_sparse_blockwise_shift_scale``).

Reported per export, all read back from the saved package: the weight file against the dense fp16
conversion of the same model (``report.dense_bytes``), `sparsify.analysis.model_report`'s estimate of
the same file, the compression error of the conv weights (RMS of ``stored - dense`` over the kept
weights, relative to their RMS; mean and max over the 20 conv layers), and the export time (median of ``--rounds``
interleaved rounds). ``--coremltools`` adds Core ML Tools' own route for comparison, done by hand:
``coremltools.convert`` of the finalized model (its metadata makes the pruned weights sparse), then
``palettize_weights`` / ``linear_quantize_weights`` with ``joint_compression=True`` and default
settings (k-means over the weights with their zeros put back).

    python benchmarks/export_joint.py                    # about 2 minutes on 2 busy cores
    python benchmarks/export_joint.py --rounds 1 --coremltools
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

logging.getLogger("coremltools").setLevel(logging.ERROR)

KINDS = {
    "sparse": {"minimum_deployment_target": "iOS18"},
    "palettize 4": {"palettize_bits": 4},
    "int8": {"quantize": "int8"},
}


def pruned_resnet18(sparsity: float = 0.9) -> nn.Module:
    import torchvision

    from sparsify import MagnitudePruner, MagnitudePrunerConfig, ModuleMagnitudePrunerConfig

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    config = MagnitudePrunerConfig(global_config=ModuleMagnitudePrunerConfig(target_sparsity=sparsity))
    pruner = MagnitudePruner(model, config)
    pruner.prepare(inplace=True)
    pruner.step()
    return pruner.finalize()


def _conv_error(stored: dict[str, np.ndarray], reference: dict[str, np.ndarray], pairs: list[tuple[str, str]]) -> str:
    """Mean and max over the conv weights of RMS(stored - reference) / RMS(reference), over the kept weights."""
    errors = []
    for stored_name, reference_name in pairs:
        ref = reference[reference_name].astype(np.float64)
        got = stored[stored_name].astype(np.float64)
        if ref.ndim != 4:
            continue
        kept = ref != 0
        errors.append(float(np.sqrt(((got - ref)[kept] ** 2).mean() / (ref[kept] ** 2).mean())))
    return f"{np.mean(errors):.4f} / {max(errors):.4f}" if errors else "-"


def run(rounds: int, coremltools_route: bool) -> None:
    from sparsify.analysis.model_report import model_report
    from sparsify.export.coreml import export_coreml
    from sparsify.export.mlpackage import read_weights

    model = pruned_resnet18()
    example = torch.randn(1, 3, 224, 224)
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    reports = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(rounds):
            for kind, kwargs in KINDS.items():
                path = Path(folder) / f"{kind.replace(' ', '_')}.mlpackage"
                start = time.perf_counter()
                reports[kind] = export_coreml(model, example, path, overwrite=True, **kwargs)
                times[kind].append(time.perf_counter() - start)
        sparse = reports["sparse"]
        reference = read_weights(sparse.path)
        by_torch_name = {row.name: row.coreml_name for row in sparse.rows}
        estimate_args = {"sparse": {"target": "iOS18"}, "palettize 4": {"palettize_bits": 4},
                         "int8": {"quantize": "int8"}}
        print(f"ResNet-18, 90 % pruned, iOS18 fp16; dense weight file {sparse.dense_bytes:,} bytes")
        print(f"{'export':<14}{'weight file':>14}{'vs dense':>10}{'estimate':>12}{'conv error mean/max':>22}"
              f"{'time (s)':>10}")
        for kind, report in reports.items():
            estimate = model_report(model, **estimate_args[kind]).file_fp16
            stored = read_weights(report.path)
            pairs = [(row.coreml_name, by_torch_name[row.name]) for row in report.rows if row.name in by_torch_name]
            error = _conv_error(stored, reference, pairs) if kind != "sparse" else "0"
            print(f"{kind:<14}{report.total_bytes:>14,}{report.ratio:>10.4f}{estimate:>12,}{error:>22}"
                  f"{statistics.median(times[kind]):>10.1f}")
        if coremltools_route:
            from sparsify.export.quiet import quiet

            with quiet():  # Core ML Tools' progress bars and warnings, as inside export_coreml
                lines = _coremltools_route(model, example, Path(folder), sparse.dense_bytes)
            print("\n".join(lines))


def _coremltools_route(model: nn.Module, example: torch.Tensor, folder: Path, dense_bytes: int) -> list[str]:
    import coremltools as ct
    from coremltools.optimize import coreml as cto

    from sparsify.export.mlpackage import inspect_mlpackage, read_weights

    traced = torch.jit.trace(model, example)
    converted = ct.convert(traced, inputs=[ct.TensorType(shape=example.shape)], convert_to="mlprogram",
                           minimum_deployment_target=ct.target.iOS18)
    converted.save(str(folder / "ct_sparse.mlpackage"))
    reference = read_weights(folder / "ct_sparse.mlpackage")  # its pruned weights, sparse and uncompressed
    routes = {
        "palettize 4": lambda m: cto.palettize_weights(m, cto.OptimizationConfig(
            global_config=cto.OpPalettizerConfig(nbits=4)), joint_compression=True),
        "int8": lambda m: cto.linear_quantize_weights(m, cto.OptimizationConfig(
            global_config=cto.OpLinearQuantizerConfig(dtype="int8")), joint_compression=True),
    }
    lines = [f"Core ML Tools by hand (convert with metadata, then joint compression, default settings); "
             f"sparse alone: {inspect_mlpackage(folder / 'ct_sparse.mlpackage').total_bytes / dense_bytes:.4f}"]
    for kind, compress in routes.items():
        path = folder / f"ct_{kind.replace(' ', '_')}.mlpackage"
        start = time.perf_counter()
        compress(converted).save(str(path))
        elapsed = time.perf_counter() - start
        package = inspect_mlpackage(path)
        stored = read_weights(path)
        error = _conv_error(stored, reference, [(name, name) for name in stored if name in reference])
        lines.append(f"{kind:<14}{package.total_bytes:>14,}{package.total_bytes / dense_bytes:>10.4f}{'':>12}"
                     f"{error:>22}{elapsed:>10.1f} (compression step only)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds for the timings (default 3)")
    parser.add_argument("--coremltools", action="store_true", help="also run Core ML Tools' own route")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.rounds, args.coremltools)


if __name__ == "__main__":
    main()
