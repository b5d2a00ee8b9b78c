"""Peak memory and time of layer-wise pruning of a Llama: streaming, in memory, Core ML Tools.

    python benchmarks/streaming_memory.py --rounds 2
    python benchmarks/streaming_memory.py --rounds 1 --model tinyllama-1.1b --method wanda --only imports streaming

The model (random weights, seeded): ``LlamaForCausalLM`` with hidden 1024, 8 layers, intermediate 2816,
16 heads, vocab 8000 — 119.0 M parameters, 476 MB in float32 — saved with ``save_pretrained`` in 100 MB shards
(float32) under ``$SPARSIFY_BENCH_CACHE`` (default ``/tmp/sparsify-bench``). Calibration: 8 windows of 128
random tokens (seeded), as a list of ``{"input_ids": [1, 128]}`` dicts. ``--model tinyllama-1.1b``: TinyLlama's
shape (hidden 2048, 22 layers, intermediate 5632, 32 heads, 4 key-value heads, vocab 32000: 1.1 B parameters),
saved in bfloat16, 1 GB shards, calibrated on 16 windows of 512 tokens; ``--model llama-2-7b``: Llama-2-7B's shape
(hidden 4096, 32 layers, intermediate 11008, 32 heads, vocab 32000: 6.7 B parameters), bfloat16, 2 GB shards, 8
windows of 512 tokens (streaming only on a 24 GB machine: the model alone takes 25 GiB in float32). ``--method``:
SparseGPT 50 % (the default), SparseGPT 2:4 or Wanda 50 % (Core ML Tools has no Wanda: it runs for SparseGPT). Every run
also records its CPU seconds (``cpu_seconds``), a steadier figure than the wall time on a shared machine.

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
  ``input_cacher="gpt"``, layers ``model.layers.N``; ``n_m_ratio=(2, 4)`` for 2:4) on the same windows.

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
#: the models (``--model``): shape, storage dtype, shard size, calibration windows × tokens
MODELS = {
    "llama-119m": ({"hidden_size": 1024, "num_hidden_layers": 8, "intermediate_size": 2816,
                    "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 8000},
                   "float32", "100MB", (8, 128)),
    "tinyllama-1.1b": ({"hidden_size": 2048, "num_hidden_layers": 22, "intermediate_size": 5632,
                        "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000},
                       "bfloat16", "1GB", (16, 512)),
    "llama-2-7b": ({"hidden_size": 4096, "num_hidden_layers": 32, "intermediate_size": 11008,
                    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000},
                   "bfloat16", "2GB", (8, 512)),
}
MODEL = os.environ.get("SPARSIFY_BENCH_MODEL", "llama-119m")
#: the pruning (``--method``): sparsify's choices; Core ML Tools has SparseGPT only (50 % and 2:4)
METHODS = {"sparsegpt": {"criterion": "sparsegpt"}, "sparsegpt-2:4": {"criterion": "sparsegpt", "pattern": "2:4"},
           "wanda": {"criterion": "wanda"}}
#: the same pruning in Core ML Tools' ``ModuleSparseGPTConfig`` (``n_m_ratio``: n zeros in every m)
COREML_METHODS = {"sparsegpt": {"target_sparsity": 0.5}, "sparsegpt-2:4": {"n_m_ratio": [2, 4]}}
METHOD = os.environ.get("SPARSIFY_BENCH_METHOD", "sparsegpt")
SHAPE, DTYPE, SHARD, WINDOWS = MODELS[MODEL]
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
    return CACHE / ("llama-119m-fp32-100MB" if MODEL == "llama-119m" else f"{MODEL}-{DTYPE}-{SHARD}")


def build_source() -> Path:
    """Save the model once (random weights, seeded; the model's storage dtype and shard size)."""
    path = source_dir()
    if (path / "model.safetensors.index.json").exists():
        return path
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPE, use_cache=False, tie_word_embeddings=False)
    # built in the storage dtype: a 7 B model in float32 would not fit in this machine's memory
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPE))
    model.save_pretrained(path, max_shard_size=SHARD)
    return path


def calibration() -> list:
    import torch

    generator = torch.Generator().manual_seed(1)
    windows, tokens = WINDOWS
    return [{"input_ids": torch.randint(0, SHAPE["vocab_size"], (1, tokens), generator=generator)}
            for _ in range(windows)]


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
        sparsify.prune_pretrained(source, out, 0.5, sampler=data, progress=False, **METHODS[METHOD])
        result["seconds"] = time.perf_counter() - start
        result["cpu_seconds"] = time.process_time() - cpu
        result["peak_kib"] = _status_kib("VmHWM")
        return result
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)  # computed in float32, like streaming
    before = _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    if name == "in memory":
        sparsify.prune(model, 0.5, sampler=data, inplace=True, keep_classifier_dense=True, **METHODS[METHOD])
    else:
        from coremltools.optimize.torch.layerwise_compression import LayerwiseCompressor, LayerwiseCompressorConfig

        config = LayerwiseCompressorConfig.from_dict({
            "layers": [r"model\.layers\.\d+"], "input_cacher": "gpt", "calibration_nsamples": len(data),
            "global_config": {"algorithm": "sparse_gpt", "weight_dtype": "float32", **COREML_METHODS[METHOD]},
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


def _float32_bytes() -> int:
    """The model's size in float32, whatever its storage dtype (the issue's unit for the streaming peak)."""
    import math

    from safetensors import safe_open

    total = 0
    for path in source_dir().glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as handle:
            total += sum(4 * math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())  # noqa: SIM118 (a safe_open handle)
    return total


def compare(target: Path, in_memory: Path) -> dict:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    streamed = AutoModelForCausalLM.from_pretrained(target).state_dict()
    reference = load_file(str(in_memory))
    linears = [k for k in streamed if re.search(r"layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$", k)]
    differences = [(streamed[k].float() - reference[k].float()).abs() for k in streamed]
    return {
        "decoder_linears": len(linears),
        "all_at_half": all(float((streamed[k] == 0).float().mean()) == 0.5 for k in linears),
        "max_difference": max(float(d.max()) for d in differences),
        "all_finite": all(bool(torch.isfinite(d).all()) for d in differences),
        "parameters": sum(v.numel() for v in streamed.values()),
        "loads_dtype": str(next(iter(streamed.values())).dtype),
        "same_keys": set(streamed) == set(reference),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=WORKERS)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--only", nargs="*", choices=WORKERS, default=list(WORKERS))
    parser.add_argument("--mmap-threshold", type=int, help="MALLOC_MMAP_THRESHOLD_ for every child (glibc)")
    parser.add_argument("--model", choices=sorted(MODELS), default=MODEL)
    parser.add_argument("--method", choices=sorted(METHODS), default=METHOD)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.out)))
        return
    if (args.model, args.method) != (MODEL, METHOD):  # the children read them from the environment
        os.environ.update(SPARSIFY_BENCH_MODEL=args.model, SPARSIFY_BENCH_METHOD=args.method)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if METHOD not in COREML_METHODS and "Core ML Tools" in args.only:
        args.only.remove("Core ML Tools")
    build_source()
    runs: dict[str, list[dict]] = {name: [] for name in args.only}
    work = CACHE / f"streaming-work-{MODEL}-{METHOD}"
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
    model_bytes = _float32_bytes()
    floor = statistics.median(r["peak_kib"] for r in runs["imports"]) if "imports" in runs else 0
    bare = statistics.median(r["peak_kib"] for r in runs["bare imports"]) if "bare imports" in runs else 0
    print(f"\nmodel: {model_bytes / 2**20:.0f} MiB in float32 ({DTYPE} on disk); peak of the imports-only process "
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
    if "in memory" in runs and "Core ML Tools" in runs:
        ratios = [m["seconds"] / c["seconds"] for m, c in zip(runs["in memory"], runs["Core ML Tools"])]
        print(f"\nin memory / Core ML Tools, time per round: {', '.join(f'{r:.2f}' for r in ratios)}")
    if "streaming" in runs and "in memory" in runs:
        last = args.rounds - 1
        print("\n", compare(work / f"streaming-{last}", work / f"in-memory-{last}" / "in_memory.safetensors"))


if __name__ == "__main__":
    main()
