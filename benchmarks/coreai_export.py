"""Core AI export: a 90 %-pruned ResNet-18 as ``.aimodel``, against dense and against coreai-opt's own export.

Models: torchvision's ResNet-18 (``weights=None``, seed 0: no download), every conv and linear weight pruned
by `sparsify.prune` — 90 % unstructured (magnitude, per layer) and 2:4 (``n_m_ratio=(2, 4)``, 50 %) — then:

* ``dense``: the same finalized model exported by coreai-torch as it is (its zeros stored dense);
* ``coreai-opt``: coreai-opt's own route for the *same masks*: each pruned weight gets coreai-torch's
  ``SparseModule`` parametrization (values + mask), which is what ``coreai_opt.pruning.MagnitudePruner.
  finalize()`` (backend CoreAI) does, then ``torch.export`` + ``TorchConverter().to_coreai()``;
* ``sparsify``: `sparsify.export.coreai.export_coreai` (sparse), then with ``quantize="int8"`` and
  ``palettize_bits=4``.

Every sparsify export is run on this machine (Linux) by `export_coreai` itself and compared with torch on a
random input (``rel. aimodel-torch``: max |aimodel - torch| / max |torch|, torch computing with the stored
weights; ``rel. vs uncompr.``: the same for torch with the stored weights against the fp32 pruned model).
``llama 50%``: a 4-layer Llama (hidden 128, vocabulary 512) built from a transformers config, every linear
of its decoder layers pruned 50 % (embeddings and head dense), exported on 64 random token ids.

``coreai-opt`` is converted in the same release mode (no debug info); ``--debug-info`` converts both with
coreai-torch's default debug information. Sizes are ``main.mlirb``; times are the median of ``--rounds``
interleaved rounds (sparsify's time includes reading the file back and running it, not a dense conversion:
``measure_dense=False``).

    python benchmarks/coreai_export.py                 # about 5 minutes on 2 busy cores
    python benchmarks/coreai_export.py --rounds 1 --patterns 90%
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

logging.getLogger("sparsify").setLevel(logging.ERROR)

PATTERNS = {"90%": {"sparsity": 0.9}, "2:4": {"sparsity": 0.5, "n_m_ratio": (2, 4)},
            "llama 50%": {"sparsity": 0.5}}
KINDS = {"sparsify": {}, "sparsify int8": {"quantize": "int8"}, "sparsify 4-bit palettes": {"palettize_bits": 4}}


class Logits(nn.Module):
    """A causal LM as a plain ``input_ids -> logits`` function (no cache), for torch.export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def small_llama() -> nn.Module:
    """A 4-layer Llama (hidden 128) built from a transformers config: random weights, nothing downloaded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128)
    return Logits(LlamaForCausalLM(config)).eval()


def pruned_model(pattern: str) -> tuple[nn.Module, torch.Tensor]:
    """The model pruned by sparsify, and the input to export and verify it with."""
    import sparsify

    choice = dict(PATTERNS[pattern])
    sparsity = choice.pop("sparsity")
    if pattern.startswith("llama"):  # the decoder layers' linears; embeddings (never) and head (kept) dense
        ids = torch.randint(0, 512, (1, 64), generator=torch.Generator().manual_seed(1))
        return sparsify.prune(small_llama(), sparsity, keep_classifier_dense=True).eval(), ids
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return sparsify.prune(model, sparsity, **choice).eval(), x


def coreai_opt_export(model: nn.Module, x: torch.Tensor, path: Path, debug_info: bool) -> float:
    """coreai-opt's Core AI export of ``model``'s zeros: SparseModule parametrizations, then coreai-torch."""
    from coreai_torch._compression.custom_layers import SparseModule
    from coreai_torch._compression.utils import wrap_for_parametrization

    from sparsify.export.coreai_run import convert_program, quiet_coreai

    started = time.perf_counter()
    model = copy.deepcopy(model)
    sparse = wrap_for_parametrization(SparseModule)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and bool((module.weight == 0).any()):
            weight = module.weight.detach()
            mask = weight != 0
            parametrize.register_parametrization(module, "weight", sparse(weight[mask].flatten(), mask), unsafe=True)
    with quiet_coreai():
        convert_program(model, (x,), debug_info).save_asset(path)
    return time.perf_counter() - started


def dense_export(model: nn.Module, x: torch.Tensor, path: Path, debug_info: bool) -> float:
    from sparsify.export.coreai_run import convert_program, quiet_coreai

    started = time.perf_counter()
    with quiet_coreai():
        convert_program(model, (x,), debug_info).save_asset(path)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS),
                        help="ResNet-18 at 90 %% and 2:4, a small Llama (transformers) at 50 %%")
    parser.add_argument("--debug-info", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from sparsify.export.coreai import export_coreai

    for pattern in args.patterns:
        model, x = pruned_model(pattern)
        sizes: dict[str, int] = {}
        times: dict[str, list[float]] = {}
        diffs: dict[str, tuple[float, float]] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for name in ("dense", "coreai-opt", *KINDS):
                    path = Path(tmp) / f"{name.replace(' ', '_')}.aimodel"
                    if name == "dense":
                        seconds = dense_export(model, x, path, args.debug_info)
                    elif name == "coreai-opt":
                        seconds = coreai_opt_export(model, x, path, args.debug_info)
                    else:
                        started = time.perf_counter()
                        report = export_coreai(model, x, path, overwrite=True, measure_dense=False,
                                               debug_info=args.debug_info, **KINDS[name])
                        seconds = time.perf_counter() - started
                        diffs[name] = (report.max_rel_diff, report.compression_rel_diff)
                    sizes[name] = (path / "main.mlirb").stat().st_size
                    times.setdefault(name, []).append(seconds)
        title = "Llama (4 layers, hidden 128)" if pattern.startswith("llama") else "ResNet-18"
        print(f"\n{title}, {pattern} ({args.rounds} round(s), torch {torch.__version__})")
        print(f"{'export':<26}{'main.mlirb bytes':>18}{'vs dense':>10}{'vs coreai-opt':>15}"
              f"{'rel. aimodel-torch':>20}{'rel. vs uncompr.':>18}{'seconds':>9}")
        for name in ("dense", "coreai-opt", *KINDS):
            abs_diff, comp = diffs.get(name, (float("nan"), float("nan")))
            print(f"{name:<26}{sizes[name]:>18,}{sizes[name] / sizes['dense']:>10.3f}"
                  f"{sizes[name] / sizes['coreai-opt']:>15.3f}{abs_diff:>20.2e}{comp:>18.2e}"
                  f"{statistics.median(times[name]):>9.2f}")


if __name__ == "__main__":
    main()
