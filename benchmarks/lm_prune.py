"""Language-model pruning: perplexity and time of every method, against Core ML Tools' SparseGPT, in one run.

A Llama-style ``transformers.LlamaForCausalLM`` of 10.6 M parameters (8 decoder layers, hidden 256, MLP 704,
4 heads, vocabulary 8192, untied head; built from a config — nothing is downloaded) is trained here on the
Python standard library's ``.py`` sources (a byte-level BPE tokenizer trained on them with ``tokenizers``;
every 20th file, in sorted order, is held out). The trained checkpoint and tokenizer are cached under
``benchmarks/.cache/lm_prune`` (gitignored), so only the first run trains.

Then the decoder blocks' linear layers (not the embeddings or ``lm_head``: sparsify's language-model default)
are pruned in one shot at 50 / 60 / 70 % and 2:4 by magnitude, Wanda, SparseGPT and SparseGPT + asymmetric —
each also with OWL (``layer_levels="owl"``, M = 5, λ = 0.08) — and by Core ML Tools' SparseGPT
(``LayerwiseCompressor``, ``weight_dtype="float32"``), all on the same calibration windows; the perplexity on
consecutive held-out windows and the pruning time of each are printed as a Markdown table. Finally the 2:4
SparseGPT model is fine-tuned with its masks kept (`sparsify.from_pretrained_pruned` on its ``save_pretrained``
copy) and its perplexity measured again.

    PYTHONPATH=. python benchmarks/lm_prune.py                 # trains once (cached), then prunes and fine-tunes
    PYTHONPATH=. python benchmarks/lm_prune.py --train-only    # just the cached model
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sysconfig
import time
from pathlib import Path

import torch
from torch import nn

import sparsify
from sparsify.analysis import perplexity

CACHE = Path(__file__).resolve().parent / ".cache" / "lm_prune"
VOCAB = 8192


def corpus() -> tuple[list[str], list[str]]:
    """The standard library's ``.py`` files (no test suites), split into training and held-out texts."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if not ({"test", "tests", "site-packages", "idle_test"}
                                                          & set(p.relative_to(root).parts)))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
    return [t for i, t in enumerate(texts) if i % 20], [t for i, t in enumerate(texts) if not i % 20]


def tokenizer(train: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = CACHE / "tokenizer.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(train, trainers.BpeTrainer(vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel
                                                       .alphabet(), special_tokens=["<eos>"]))
    CACHE.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def stream(tok, texts: list[str]) -> torch.Tensor:
    eos = tok.token_to_id("<eos>")
    ids: list[int] = []
    for encoding in tok.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def build() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def window_loss(model: nn.Module, tokens: torch.Tensor, batch: int, length: int,
                generator: torch.Generator) -> torch.Tensor:
    """The language-model loss on ``batch`` random windows of ``length`` tokens (a training step's forward)."""
    starts = torch.randint(0, len(tokens) - length - 1, (batch,), generator=generator).tolist()
    ids = torch.stack([tokens[s : s + length] for s in starts])
    return model(input_ids=ids, labels=ids).loss


def train_model(tokens: torch.Tensor, steps: int, batch: int, length: int) -> nn.Module:
    from transformers import LlamaForCausalLM

    folder = CACHE / f"llama-{steps}"
    if (folder / "config.json").exists():
        return LlamaForCausalLM.from_pretrained(folder).eval()
    model = build()
    print(f"training {sum(p.numel() for p in model.parameters()):,} parameters on {len(tokens):,} tokens, "
          f"{steps} steps of {batch} x {length}", flush=True)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps, pct_start=0.1)
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        loss = window_loss(model, tokens, batch, length, generator)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 10 == 0:
            print(f"  step {step + 1}/{steps}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    model.eval()
    model.save_pretrained(folder)
    return model


def calibration_windows(tokens: torch.Tensor, count: int, length: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    starts = torch.randint(0, len(tokens) - length, (count,), generator=generator).tolist()
    return [{"input_ids": tokens[s : s + length].unsqueeze(0)} for s in starts]


def eval_windows(tokens: torch.Tensor, count: int, length: int) -> list[torch.Tensor]:
    return [tokens[i * length : (i + 1) * length].unsqueeze(0) for i in range(count)]


def coreml_sparsegpt(model: nn.Module, level: float | None, calibration: list[dict[str, torch.Tensor]]) -> nn.Module:
    from coremltools.optimize.torch.layerwise_compression import LayerwiseCompressor, LayerwiseCompressorConfig

    pattern = {"n_m_ratio": [2, 4]} if level is None else {"target_sparsity": level}
    config = LayerwiseCompressorConfig.from_dict({
        "layers": [r"model\.layers\.\d+"], "input_cacher": "gpt", "calibration_nsamples": len(calibration),
        "global_config": {"algorithm": "sparse_gpt", "weight_dtype": "float32", **pattern},
    })
    return LayerwiseCompressor(model, config).compress([c["input_ids"] for c in calibration], device="cpu")


def sparsify_with(criterion: str | dict, owl: bool):
    def run(model: nn.Module, level: float | None, calibration: list[dict[str, torch.Tensor]]) -> nn.Module:
        pattern = {"n_m_ratio": (2, 4)} if level is None else {}
        data = calibration if criterion != "magnitude" or owl else None
        extra = {"layer_levels": "owl"} if owl else {}
        return sparsify.prune(model, 0.5 if level is None else level, criterion=criterion, sampler=data,
                              inplace=True, **pattern, **extra)

    return run


METHODS = {
    "Core ML Tools SparseGPT": coreml_sparsegpt,
    **{f"sparsify {label}{' + OWL' if owl else ''}": sparsify_with(criterion, owl)
       for label, criterion in (("magnitude", "magnitude"), ("Wanda", "wanda"), ("SparseGPT", "sparsegpt"),
                                ("SparseGPT + asymmetric", {"kind": "sparsegpt", "asymmetric": True}))
       for owl in (False, True)},
}
LEVELS = {"50 %": 0.5, "60 %": 0.6, "70 %": 0.7, "2:4": None}


def fine_tune(pruned: nn.Module, tokens: torch.Tensor, steps: int, batch: int, length: int) -> tuple[nn.Module, float]:
    from transformers import LlamaForCausalLM

    folder = CACHE / "pruned-2of4"
    pruned.save_pretrained(folder)
    pruner = sparsify.from_pretrained_pruned(LlamaForCausalLM, folder)
    model = pruner.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    generator = torch.Generator().manual_seed(2)
    model.train()
    started = time.perf_counter()
    for step in range(steps):
        loss = window_loss(model, tokens, batch, length, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
        if (step + 1) % 10 == 0:
            print(f"  fine-tuning step {step + 1}/{steps}: loss {loss.item():.3f}", flush=True)
    spent = time.perf_counter() - started
    final = pruner.finalize(inplace=True).eval()
    return final, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--calibration", type=int, default=16, help="calibration windows")
    parser.add_argument("--eval", type=int, default=24, help="held-out windows")
    parser.add_argument("--tune-steps", type=int, default=40)
    parser.add_argument("--tune-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--methods", default="", help="comma-separated substrings: run only these methods")
    parser.add_argument("--levels", default=",".join(LEVELS), help="comma-separated columns: run only these")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="  %(message)s")
    logging.getLogger("sparsify.analysis.owl").setLevel(logging.INFO)  # prints OWL's per-layer levels
    torch.set_num_threads(args.threads)
    train_texts, held_texts = corpus()
    tok = tokenizer(train_texts)
    cached = CACHE / "train_tokens.pt", CACHE / "held_tokens.pt"
    if all(path.exists() for path in cached):
        train, held = (torch.load(path, weights_only=True) for path in cached)
    else:
        train, held = stream(tok, train_texts), stream(tok, held_texts)
        for tensor, path in zip((train, held), cached):
            torch.save(tensor, path)
    model = train_model(train, args.train_steps, 4, args.length)
    if args.train_only:
        return
    from _oneshot_common import quiet_coremltools  # benchmarks/ is the script's folder: on sys.path

    quiet_coremltools()
    calibration = calibration_windows(train, args.calibration, args.length)
    test = eval_windows(held, args.eval, args.length)
    dense = perplexity(model, test, progress=False)
    print(f"LlamaForCausalLM, {sum(p.numel() for p in model.parameters()):,} parameters; {len(train):,} training "
          f"tokens; dense perplexity {dense.perplexity:.2f} on {dense.tokens} held-out tokens", flush=True)
    chosen = {k: v for k, v in METHODS.items() if not args.methods or any(s in k for s in args.methods.split(","))}
    results: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in chosen}
    keep: nn.Module | None = None

    def tune(pruned: nn.Module, before: float) -> nn.Module:
        tuned, spent = fine_tune(pruned, train, args.tune_steps, args.tune_batch, args.length)
        after = perplexity(tuned, test, progress=False).perplexity
        kept = all(bool(((m.weight.reshape(m.weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all())
                   for n, m in tuned.named_modules() if isinstance(m, nn.Linear) and ".layers." in n)
        print(f"\nfine-tuning the 2:4 SparseGPT model, masks kept, {args.tune_steps} steps of {args.tune_batch} x "
              f"{args.length} tokens ({spent:.0f} s): perplexity {before:.2f} -> {after:.2f} (dense "
              f"{dense.perplexity:.2f}); 2:4 kept: {kept}\n", flush=True)
        return tuned

    levels = {k: LEVELS[k] for k in args.levels.split(",")}  # in the order given
    for label, level in levels.items():
        for name, method in chosen.items():
            if level is None and name.endswith("+ OWL"):
                continue  # OWL at m = 4, lambda = 0.08 rounds every layer back to 2:4 (sparsify.analysis.owl)
            copy_ = copy.deepcopy(model)
            started = time.perf_counter()
            pruned = method(copy_, level, calibration)
            spent = time.perf_counter() - started
            score = perplexity(pruned, test, progress=False).perplexity
            results[name][label] = (score, spent)
            print(f"  {label} {name}: perplexity {score:.2f} ({spent:.1f} s)", flush=True)
            if level is None and name == "sparsify SparseGPT":
                keep = pruned
        if keep is not None and args.tune_steps:  # right after the 2:4 column
            tune(keep, results["sparsify SparseGPT"]["2:4"][0])
            keep = None
    print(f"\nperplexity on {dense.tokens} held-out tokens (dense {dense.perplexity:.2f}); pruning time in seconds, "
          f"one run each, {args.threads} threads; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| method | " + " | ".join(levels) + " | time " + " / ".join(levels) + " (s) |")
    print("|---|" + "---|" * len(levels) + "---|")
    for name in chosen:
        cells = " | ".join(f"{results[name][k][0]:.2f}" if k in results[name] else "-" for k in levels)
        spent = " / ".join(f"{results[name][k][1]:.1f}" if k in results[name] else "-" for k in levels)
        print(f"| {name} | {cells} | {spent} |")


if __name__ == "__main__":
    main()
