"""Peak memory and time of SparseGPT 50 % on a 119 M-parameter Llama: streaming, in memory, Core ML Tools.

    python benchmarks/streaming_memory.py --rounds 2

The model (random weights, seeded): ``LlamaForCausalLM`` with hidden 1024, 8 layers, intermediate 2816,
16 heads, vocab 8000 — 119.0 M parameters, 476 MB in float32 — saved with ``save_pretrained`` in 100 MB shards
(float32) under ``$SPARSIFY_BENCH_CACHE`` (default ``/tmp/sparsify-bench``). Calibration: 8 windows of 128
random tokens (seeded), as a list of ``{"input_ids": [1, 128]}`` dicts.

Every measurement runs in a fresh child process (``--worker``) with one torch thread:

* ``imports`` — imports torch, transformers and sparsify, and the model's code (``transformers`` loads
  ``LlamaForCausalLM`` lazily; with it come sympy, torchvision and triton: 235 MiB more than ``bare imports``,
  which imports the three packages only) — the floor: every run below needs that code;
* ``streaming`` — ``sparsify.prune_pretrained(source, target, 0.5, criterion="sparsegpt", sampler=...)``;
  its peak resident set (``VmHWM``) minus the ``imports`` process's peak is the figure the issue bounds by half
  the model's float32 bytes;
* ``in memory`` — ``from_pretrained`` then ``sparsify.prune(model, 0.5, criterion="sparsegpt", sampler=...,
  inplace=True, keep_classifier_dense=True)``;
* ``Core ML Tools`` — ``from_pretrained`` then ``LayerwiseCompressor`` (SparseGPT, ``weight_dtype="float32"``,
  ``input_cacher="gpt"``, layers ``model.layers.N``) on the same 8 windows.

For the last two, "above the model" is the peak resident set during pruning minus the resident set just after
loading (the peak is reset with ``/proc/self/clear_refs`` after ``malloc_trim``). Rounds interleave the
workers; the table gives medians. The streaming target is then loaded with ``from_pretrained`` and compared
with the in-memory result: every decoder linear at 0.5 and the largest weight difference.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("SPARSIFY_BENCH_CACHE", "/tmp/sparsify-bench"))
SHAPE = {"hidden_size": 1024, "num_hidden_layers": 8, "intermediate_size": 2816, "num_attention_heads": 16,
         "num_key_value_heads": 16, "vocab_size": 8000}
WORKERS = ("bare imports", "imports", "streaming", "in memory", "Core ML Tools")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(field + r":\s+(\d+)", status.read())
    assert match is not None
    return int(match.group(1))


def _reset_peak() -> int:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    rss = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    return rss


def source_dir() -> Path:
    return CACHE / "llama-119m-fp32-100MB"


def build_source() -> Path:
    """Save the model once (float32, 100 MB shards)."""
    path = source_dir()
    if (path / "model.safetensors.index.json").exists():
        return path
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, use_cache=False, tie_word_embeddings=False)
    AutoModelForCausalLM.from_config(config).save_pretrained(path, max_shard_size="100MB")
    return path


def calibration() -> list:
    import torch

    generator = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, SHAPE["vocab_size"], (1, 128), generator=generator)} for _ in range(8)]


def worker(name: str, out: Path) -> dict:
    import torch
    import transformers  # noqa: F401 — the floor imports it too

    import sparsify

    torch.set_num_threads(1)
    result: dict = {}
    if name == "bare imports":
        result["peak_kib"] = _status_kib("VmHWM")
        return result
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM  # noqa: F401 — the model's code

    if name == "imports":
        result["peak_kib"] = _status_kib("VmHWM")
        return result
    data = calibration()
    source = source_dir()
    if name == "streaming":
        start, cpu = time.perf_counter(), time.process_time()
        sparsify.prune_pretrained(source, out, 0.5, criterion="sparsegpt", sampler=data, progress=False)
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu
        result["peak_kib"] = _status_kib("VmHWM")
        return result
    model = AutoModelForCausalLM.from_pretrained(source)
    before = _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    if name == "in memory":
        sparsify.prune(model, 0.5, criterion="sparsegpt", sampler=data, inplace=True, keep_classifier_dense=True)
    else:
        from coremltools.optimize.torch.layerwise_compression import LayerwiseCompressor, LayerwiseCompressorConfig

        config = LayerwiseCompressorConfig.from_dict({
            "layers": [r"model\.layers\.\d+"], "input_cacher": "gpt", "calibration_nsamples": len(data),
            "global_config": {"algorithm": "sparse_gpt", "weight_dtype": "float32", "target_sparsity": 0.5},
        })
        LayerwiseCompressor(model, config).compress([d["input_ids"] for d in data], device="cpu")
    result["seconds"] = time.perf_counter() - start
    result["cpu_seconds"] = time.process_time() - cpu
    result["model_kib"] = before
    result["above_model_kib"] = _status_kib("VmHWM") - before
    if name == "in memory":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items() if "_COREML_" not in k},
                  str(out / "in_memory.safetensors"))
    return result


def compare(target: Path, in_memory: Path) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    streamed = AutoModelForCausalLM.from_pretrained(target).state_dict()
    reference = load_file(str(in_memory))
    linears = [k for k in streamed if re.search(r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", k)]
    return {
        "decoder_linears": len(linears),
        "all_at_half": all(float((streamed[k] == 0).float().mean()) == 0.5 for k in linears),
        "max_difference": max(float((streamed[k] - reference[k]).abs().max()) for k in streamed),
        "parameters": sum(v.numel() for v in streamed.values()),
        "loads_dtype": str(next(iter(streamed.values())).dtype),
        "same_keys": set(streamed) == set(reference),
        "max_difference_is_finite": bool(torch.isfinite(torch.tensor(0.0)).item()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=WORKERS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", nargs="*", choices=WORKERS, default=list(WORKERS))
    parser.add_argument("--mmap-threshold", type=int, help="MALLOC_MMAP_THRESHOLD_ for every child (glibc)")
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.out)))
        return
    build_source()
    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    work = CACHE / "streaming-work"
    for round_ in range(args.rounds):
        for name in args.only:
            out = work / f"{name.replace(' ', '-')}-{round_}"
            if out.exists():
                subprocess.run(["rm", "-rf", str(out)], check=True)
            if name != "streaming":
                out.mkdir(parents=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            if args.mmap_threshold:
                env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
            done = subprocess.run([sys.executable, __file__, "--worker", name, "--out", str(out)], env=env,
                                  capture_output=True, text=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode or not line:
                sys.exit(f"{name} failed:\n{done.stderr[-4000:]}")
            runs[name].append(json.loads(line[0][7:]))
            print(name, runs[name][-1], flush=True)
    model_bytes = sum(p.stat().st_size for p in source_dir().glob("*.safetensors"))
    floor = statistics.median(r["peak_kib"] for r in runs["imports"]) if "imports" in runs else 0
    bare = statistics.median(r["peak_kib"] for r in runs["bare imports"]) if "bare imports" in runs else 0
    print(f"\nmodel: {model_bytes / 2**20:.0f} MiB on disk (float32); peak of the imports-only process "
          f"{floor / 1024:.0f} MiB (bare imports {bare / 1024:.0f} MiB)")
    print("| run | time (s) | peak above imports (MiB) | peak above the loaded model (MiB) |")
    print("|---|---:|---:|---:|")
    for name, results in runs.items():
        if name.endswith("imports"):
            continue
        seconds = statistics.median(r["seconds"] for r in results)
        if name == "streaming":
            above = statistics.median(r["peak_kib"] for r in results) - floor
            print(f"| {name} | {seconds:.1f} | {above / 1024:.0f} ({above * 1024 / model_bytes:.2f} × the model) | — |")
        else:
            above = statistics.median(r["above_model_kib"] for r in results)
            print(f"| {name} | {seconds:.1f} | — | {above / 1024:.0f} |")
    if "streaming" in runs and "in memory" in runs:
        last = args.rounds - 1
        print("\n", compare(work / f"streaming-{last}", work / f"in-memory-{last}" / "in_memory.safetensors"))


if __name__ == "__main__":
    main()
