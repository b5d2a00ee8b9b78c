"""One-shot pruning of a small Hugging Face-style transformer: held-out loss, sparsify vs Core ML Tools' SparseGPT.

A ``transformers.LlamaForCausalLM`` (built locally from a config — nothing is downloaded: 4 decoder layers,
hidden 128, MLP 384, 4 heads; ``q/k/v/o`` and ``gate/up/down`` projections are ``nn.Linear``) is trained as a
character-level language model on Python standard-library source files (seeded; cached under
``/tmp/sparsify-bench``). Then the ``nn.Linear`` layers of its decoder layers (not the embeddings or the head) are
pruned in one shot — 50 % unstructured and 2:4 — with no fine-tuning, and the cross-entropy on held-out files is
measured:

* Core ML Tools SparseGPT — ``LayerwiseCompressor`` over ``model.layers.N`` with the ``"gpt"`` input cacher;
* sparsify magnitude, SparseGPT (default: each decoder layer's linears calibrated on one forward of that layer;
  ``true_sequential=True``: each linear on the pruned linears before it, inside the decoder layer too;
  ``sequential=False``: every layer calibrated on the unpruned model in one pass; ``asymmetric=True``), and
  Wanda (``Pruner(..., sampler).prune_now()``).

Both SparseGPTs get the same calibration sequences. ``transformers`` is needed (the ``hf`` extra):

    PYTHONPATH=. python benchmarks/oneshot_transformer.py     # ~5 min on 2 busy cores (training: once, cached)
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _oneshot_common import CACHE, quiet_coremltools  # benchmarks/ is the script's folder: on sys.path
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.criteria import GradSampler

VOCAB = 128


def corpus(files: int, offset: int) -> torch.Tensor:
    """ASCII bytes of ``files`` standard-library modules (sorted by name, from ``offset``); others → 0."""
    paths = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[offset : offset + files]
    text = b"".join(p.read_bytes() for p in paths)
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    return torch.where(data < VOCAB, data, 0)


def windows(data: torch.Tensor, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(data) - length - 1, (count,), generator=generator)
    return torch.stack([data[s : s + length + 1] for s in starts.tolist()])


def build(args: argparse.Namespace) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=args.hidden, intermediate_size=3 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=args.length, tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


def trained(args: argparse.Namespace, train: torch.Tensor) -> nn.Module:
    model = build(args)
    path = CACHE / f"llama-char-{args.layers}x{args.hidden}-seed{args.seed}-s{args.steps}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=args.steps, pct_start=0.1)
    model.train()
    for step in range(args.steps):
        batch = windows(train, 32, args.length, generator)
        loss = F.cross_entropy(model(batch[:, :-1]).logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}/{args.steps}: training loss {loss.item():.3f}", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def held_out_loss(model: nn.Module, test: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(b[:, :-1]).logits.reshape(-1, VOCAB), b[:, 1:].reshape(-1)).item()
                  for b in test.split(32)]
    return statistics.mean(losses)


def coreml_sparsegpt(model: nn.Module, pattern: dict, calibration: torch.Tensor) -> nn.Module:
    from coremltools.optimize.torch.layerwise_compression import LayerwiseCompressor, LayerwiseCompressorConfig

    config = LayerwiseCompressorConfig.from_dict({
        "layers": [r"model\.layers\.\d+"], "input_cacher": "gpt", "calibration_nsamples": len(calibration),
        "global_config": {"algorithm": "sparse_gpt", "weight_dtype": "float32", **pattern},
    })
    return LayerwiseCompressor(model, config).compress([b.unsqueeze(0) for b in calibration], device="cpu")


def sparsify_with(criterion):
    def run(model: nn.Module, pattern: dict, calibration: torch.Tensor) -> nn.Module:
        fields = {"n_m_ratio": tuple(pattern["n_m_ratio"])} if "n_m_ratio" in pattern else {
            "target_sparsity": pattern["target_sparsity"]}
        entry = ModulePrunerConfig(criterion=criterion, **fields)
        config = PrunerConfig(module_name_configs={r"model\.layers\..*": entry})
        pruner = Pruner(model, config, GradSampler([(b.unsqueeze(0), None) for b in calibration], progress=False))
        pruner.prepare()
        pruner.prune_now()
        return pruner.finalize(inplace=True)

    return run


METHODS = {
    "Core ML Tools SparseGPT": coreml_sparsegpt,
    "sparsify magnitude": sparsify_with("magnitude"),
    "sparsify SparseGPT": sparsify_with("sparsegpt"),
    "sparsify SparseGPT, true_sequential=True": sparsify_with({"kind": "sparsegpt", "true_sequential": True}),
    "sparsify SparseGPT, sequential=False": sparsify_with({"kind": "sparsegpt", "sequential": False}),
    "sparsify SparseGPT + asymmetric": sparsify_with({"kind": "sparsegpt", "asymmetric": True}),
    "sparsify Wanda": sparsify_with("wanda"),
}
PATTERNS = {"50 %": {"target_sparsity": 0.5}, "2:4": {"n_m_ratio": [2, 4]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--calibration", type=int, default=128, help="calibration sequences")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="1: stable timings on a shared machine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    quiet_coremltools()
    torch.set_num_threads(args.threads)
    train, test_text = corpus(60, 0), corpus(20, 60)
    model = trained(args, train)
    generator = torch.Generator().manual_seed(1000 + args.seed)
    test = windows(test_text, 256, args.length, generator)
    calibration = windows(train, args.calibration, args.length, generator)[:, :-1]
    layers = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in n)
    dense = held_out_loss(model, test)
    print(f"LlamaForCausalLM {args.layers}x{args.hidden}, {layers:,} decoder Linear weights, {len(train):,} training "
          f"characters; dense held-out loss {dense:.4f}", flush=True)
    losses: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    times: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PATTERNS} for m in METHODS}
    for label, pattern in PATTERNS.items():
        for round_ in range(args.rounds):
            for name, method in METHODS.items():
                started = time.perf_counter()
                pruned = method(copy.deepcopy(model), pattern, calibration)
                times[name][label].append(time.perf_counter() - started)
                if round_ == 0:
                    losses[name][label] = held_out_loss(pruned, test)
                    print(f"  {label} {name}: held-out loss {losses[name][label]:.4f} "
                          f"({times[name][label][-1]:.2f} s)", flush=True)
    print(f"\nheld-out cross-entropy (dense {dense:.4f}); median time of {args.rounds} interleaved round(s), "
          f"{args.threads} threads; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| method | " + " | ".join(PATTERNS) + " | time " + " / ".join(PATTERNS) + " (s) |")
    print("|---|" + "---|" * len(PATTERNS) + "---|")
    for name in METHODS:
        cells = " | ".join(f"{losses[name][p]:.4f}" for p in PATTERNS)
        spent = " / ".join(f"{statistics.median(times[name][p]):.2f}" for p in PATTERNS)
        print(f"| {name} | {cells} | {spent} |")


if __name__ == "__main__":
    main()
