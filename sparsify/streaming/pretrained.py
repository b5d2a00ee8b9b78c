"""`prune_pretrained`: prune a Hugging Face checkpoint block by block, never holding more than one block.

The loop (see `docs/streaming.md`):

1. the model is built from ``config.json`` on the meta device (`Skeleton`); the calibration batches are read
   and merged as `sparsify.prune` reads and merges them (`sparsify.streaming.data`), and the modules in front of
   the first decoder block (embeddings, rotary embedding) are loaded to capture each batch's inputs of that block;
2. every tensor outside the blocks is copied as it is into the first shard of ``target``;
3. for each block: its tensors are read from the memory-mapped source shards, in float32; it is pruned by the
   machine `sparsify.prune` runs (`sparsify.streaming.blocks`); its tensors are written, in the source's
   dtype, to its own shard; the block then runs on the calibration inputs with the weights just written,
   giving the next block's inputs; it is freed;
4. the config and the other small files of ``source``, the sparsity record (``sparsity.json``, the format
   ``save_pretrained`` of a pruned model writes) and, last, the shard index are written.

Every file is written under a temporary name and renamed when whole, and the progress manifest
(`sparsify.streaming.progress`) is updated after each block, so an interrupted call leaves a consistent target
and the same call again resumes after the last finished block, recomputing the next block's inputs from the
finished shards: the result is the same file an uninterrupted call writes.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import attrs
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm

from .._memory import large_allocations_unmapped, release_freed_memory
from .._module_types import Conv1D
from ..calibration import as_calibration_data
from ..config import ModulePrunerConfig
from ..pruning.plan import hook_fields
from ..pruning.sparsity_record import FORMAT, SPARSITY_FILE, write_record
from .activations import ActivationStore, spill
from .blocks import forward_block, prune_block
from .checkpoint import INDEX_NAME, SourceCheckpoint, write_atomically, write_json
from .data import digest, kept_batches, merged_batches
from .progress import MANIFEST_NAME, Progress
from .skeleton import Skeleton

__all__ = ["SPARSITY_FILE", "BlockResult", "prune_pretrained"]

logger = logging.getLogger(__name__)

_CRITERIA = ("magnitude", "sparsegpt", "wanda")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".index.json")
_MAX_COPIED_BYTES = 512 * 1024 * 1024


@attrs.frozen
class BlockResult:
    """What one finished block reports to ``on_block`` (and the log)."""

    index: int
    num_blocks: int
    seconds: float
    peak_rss_bytes: int
    sparsity: dict[str, float]


def prune_pretrained(
    source: str | Path,
    target: str | Path,
    sparsity: float,
    *,
    sampler: Any = None,
    offload: str = "auto",
    max_activation_bytes: int = 2 * 2**30,
    offload_dir: str | Path | None = None,
    on_block: Callable[[BlockResult], None] | None = None,
    progress: bool = True,
    **choices: Any,
) -> Path:
    """Prune the Hugging Face checkpoint directory ``source`` into ``target``, one decoder block in memory at a time.

    Args:
        source: a directory with ``config.json`` and safetensors weights (``model.safetensors``, or shards and
            ``model.safetensors.index.json``), float32, bfloat16 or float16.
        target: a new or empty directory (or one an interrupted call with the same arguments left: it resumes).
            It becomes a checkpoint ``from_pretrained`` loads — same config and dtype, one shard per decoder
            block plus one for the rest, a shard index — with ``sparsity.json`` recording every pruned
            layer's pattern and level, as ``save_pretrained`` of a pruned model writes it
            (`sparsify.pruning.sparsity_record`; `sparsify.from_pretrained_pruned` reads it).
        sparsity: each decoder linear layer's target fraction of zeros.
        sampler: calibration data, exactly as `sparsify.prune` takes it (`sparsify.calibration`: a list of dicts
            of tensors such as ``{"input_ids", "attention_mask"}``, token tensors ``[B, T]``, a
            ``datasets.Dataset``, a `CalibrationData`, ...); needed by ``"sparsegpt"`` and ``"wanda"``.
        offload: where the calibration activations between blocks live: ``"memory"``, ``"disk"``
            (memory-mapped files) or ``"auto"`` (disk when they pass ``max_activation_bytes``).
        max_activation_bytes: the ``"auto"`` limit for a block's input and output activations together.
        offload_dir: where spilled activations go (default: a hidden folder in ``target``, removed at the end).
        on_block: called with a `BlockResult` after each block's shard is safely written; an exception it
            raises stops the run there, and the same call later resumes after that block.
        progress: show a progress bar over the blocks.
        **choices: the layer-wise choices `sparsify.prune` takes — ``criterion`` (``"magnitude"``,
            ``"sparsegpt"``, ``"wanda"`` or a dict with their settings), ``n_m_ratio``, ``pattern``,
            ``granularity``, ``block_size``, ``dim``, ``max_sparsity`` — each layer ranked on its own
            (``scope="local"``).

    Returns:
        ``target`` as a `Path`.
    """
    source, target = Path(source), Path(target)
    module_config = _module_config(sparsity, choices)
    criterion = module_config.criterion
    if criterion.needs_data and sampler is None:
        raise ValueError(f"criterion {criterion.kind!r} needs calibration data: prune_pretrained(source, target, "
                         f"{sparsity}, criterion={criterion.kind!r}, sampler=[{{'input_ids': ...}}, ...])")
    checkpoint = SourceCheckpoint(source)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(source))
    skeleton = Skeleton(config, checkpoint)
    try:
        with large_allocations_unmapped():  # a block's freed temporaries go back to the system, not to the heap
            return _run(skeleton, checkpoint, source, target, module_config, sampler, offload, max_activation_bytes,
                        offload_dir, on_block, progress)
    finally:
        skeleton.close()


def _module_config(sparsity: float, choices: dict[str, Any]) -> ModulePrunerConfig:
    if "scheduler" in choices or "target_sparsity" in choices:
        raise TypeError("prune_pretrained() prunes in one shot to `sparsity`: do not pass scheduler or "
                        "target_sparsity")
    module_config = ModulePrunerConfig(target_sparsity=sparsity, **choices)
    kind = module_config.criterion.kind
    if kind not in _CRITERIA:
        raise ValueError(f"prune_pretrained: criterion={kind!r} is not layer-wise (it needs the whole model at "
                         f"once); allowed: {', '.join(map(repr, _CRITERIA))}")
    if module_config.scope != "local":
        raise ValueError(f"prune_pretrained: scope={module_config.scope!r} ranks all layers together, which needs "
                         f"every block at once; allowed: 'local' (each layer at its own level)")
    if getattr(module_config.criterion, "asymmetric", False):
        raise ValueError("prune_pretrained: asymmetric=True needs the unpruned model's activations beside the "
                         "pruned ones for every block; it is not streamed yet (use sparsify.prune in memory)")
    return module_config


def _widest_input(block: nn.Module) -> int:
    widths = [m.in_features for m in block.modules() if isinstance(m, nn.Linear)]
    widths += [int(m.weight.shape[0]) for m in block.modules() if isinstance(m, Conv1D)]  # type: ignore[index]
    return max(widths, default=1)


def _peak_rss() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))


def _run(
    skeleton: Skeleton, checkpoint: SourceCheckpoint, source: Path, target: Path, module_config: ModulePrunerConfig,
    sampler: Any, offload: str, max_bytes: int, offload_dir: str | Path | None,
    on_block: Callable[[BlockResult], None] | None, show: bool,
) -> Path:
    criterion = module_config.criterion
    kind = criterion.kind
    calibrated = criterion.needs_data
    batches: list[Any] = []
    first = torch.zeros(0)
    if calibrated:
        skeleton.load_on_call()
        batches = kept_batches(as_calibration_data(sampler), int(getattr(criterion, "num_batches", 128)), kind)
        first = skeleton.capture_first_block(batches[:1])[0][0]
        rows = first.numel() // first.shape[-1]
        batches = merged_batches(batches, rows, _widest_input(skeleton.layers[0]))
    settings = _jsonable({
        "sparsity": module_config.target_sparsity, "config": module_config.as_dict(),
        "calibration": digest(batches) if calibrated else None,
        "source": {key: [str(checkpoint.dtype(key)), checkpoint.nbytes(key)] for key in checkpoint.names()},
    })
    state = Progress(target, settings)
    state.open()
    num_blocks = len(skeleton.layers)
    if state.complete:
        logger.info("prune_pretrained: %s is already complete", target)
        return target
    for leftover in target.glob(".*.partial"):
        leftover.unlink()
    names = [f"model-{k:05d}-of-{num_blocks + 1:05d}.safetensors" for k in range(1, num_blocks + 2)]
    if state.outside is None:
        outside = checkpoint.tensors(skeleton.outside_keys())
        _write_shard(target / names[0], outside)
        del outside
        state.outside = state.entry(names[0])
        state.save(num_blocks)

    estimate = 2 * first.numel() * 4 * len(batches)
    on_disk = spill(offload, estimate, max_bytes)
    folder = Path(offload_dir) if offload_dir is not None else target / ".sparsify-activations"
    inputs = ActivationStore(on_disk, folder, "a")
    kwargs: list[dict[str, Any]] = []
    for batch in batches:
        [(hidden, call_kwargs)] = skeleton.capture_first_block([batch])
        inputs.add(hidden.shape).copy_(hidden)
        kwargs.append(call_kwargs)
        del hidden
    del first
    skeleton.unload_outside()
    release_freed_memory()
    layers = skeleton.layers
    stored_propagation = bool(getattr(criterion, "sequential", True))
    try:
        for index in range(len(state.blocks) if calibrated else 0):  # resume: finished blocks' outputs from shards
            block = _stored_block(skeleton, checkpoint, target, state, index, stored_propagation)
            inputs = _through(block, inputs, kwargs, index)
            skeleton.unload_block(index)
        with tqdm(total=num_blocks, initial=len(state.blocks), desc="prune_pretrained", unit="block",
                  disable=not show) as bar:
            for index in range(len(state.blocks), num_blocks):
                started = time.perf_counter()
                keys = skeleton.block_keys(index)
                original = checkpoint.tensors(keys.values())
                block = skeleton.load_block(index, {local: original.pop(key) for local, key in keys.items()})
                del original  # float32 tensors became the block's own; others were upcast copies
                outputs = None
                if calibrated and not stored_propagation:  # every block calibrated on the unpruned model's activations
                    outputs = _through(block, inputs, kwargs, index, keep=True)
                pruned = prune_block(block, module_config, list(zip(inputs.batches, kwargs)))
                stored, levels = _stored(keys, pruned, checkpoint, module_config)
                del pruned
                _write_shard(target / names[index + 1], stored)
                if stored_propagation and calibrated:
                    block.load_state_dict({local: stored[key].float() for local, key in keys.items()},
                                          strict=True, assign=True)
                    outputs = _through(block, inputs, kwargs, index, keep=True)
                if outputs is not None:
                    inputs.close()
                    inputs = outputs
                del stored
                skeleton.unload_block(index)
                release_freed_memory()
                result = BlockResult(index, num_blocks, time.perf_counter() - started, _peak_rss(), levels)
                state.blocks.append(state.entry(names[index + 1], index=index, seconds=round(result.seconds, 3),
                                                layers=_jsonable(levels)))
                state.save(num_blocks)
                logger.info("prune_pretrained: block %d/%d in %.1f s, peak RSS %.0f MiB, sparsity %s", index + 1,
                            num_blocks, result.seconds, result.peak_rss_bytes / 2**20,
                            ", ".join(f"{k.rsplit('.', 2)[-2]} {v:.3f}" for k, v in levels.items()))
                bar.set_postfix(peak_rss=f"{result.peak_rss_bytes / 2**20:.0f}MiB", refresh=False)
                bar.update(1)
                if on_block is not None:
                    on_block(result)
    finally:
        inputs.close()
        if offload_dir is None and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
    _finish(source, target, checkpoint, skeleton, state, names, module_config)
    del layers
    return target


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    def write(temporary: Path) -> None:
        save_file(tensors, str(temporary), metadata={"format": "pt"})

    write_atomically(path, write)


def _copy(source: Path, target: Path) -> None:
    def write(temporary: Path) -> None:
        shutil.copyfile(source, temporary)

    write_atomically(target, write)


def _through(block: nn.Module, inputs: ActivationStore, kwargs: list[dict[str, Any]], index: int,
             keep: bool = False) -> ActivationStore:
    """``block``'s outputs on ``inputs`` in a new store (``inputs`` closed unless ``keep``)."""
    outputs = ActivationStore(inputs.on_disk, inputs.directory, "b" if index % 2 == 0 else "a")
    for tensor in inputs.batches:
        outputs.add(tensor.shape)
    forward_block(block, list(zip(inputs.batches, kwargs)), outputs.batches)
    if not keep:
        inputs.close()
    return outputs


def _stored_block(skeleton: Skeleton, checkpoint: SourceCheckpoint, target: Path, state: Progress, index: int,
                  stored: bool) -> nn.Module:
    """Finished block ``index`` with the weights its shard holds (or the source's, for unpruned propagation)."""
    keys = skeleton.block_keys(index)
    if stored:
        from safetensors import safe_open

        with safe_open(str(target / state.blocks[index]["shard"]), framework="pt") as handle:
            tensors = {local: handle.get_tensor(key) for local, key in keys.items()}
    else:
        loaded = checkpoint.tensors(keys.values())
        tensors = {local: loaded[key] for local, key in keys.items()}
    return skeleton.load_block(index, tensors)


def _stored(keys: dict[str, str], pruned: dict[str, torch.Tensor], checkpoint: SourceCheckpoint,
            module_config: ModulePrunerConfig) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The block's tensors to write (checkpoint keys, the source's dtypes: an unchanged bfloat16 or float16
    tensor comes back bit for bit from its float32 copy) and each pruned weight's measured sparsity."""
    stored = {key: pruned[local].to(checkpoint.dtype(key)).contiguous() for local, key in keys.items()}
    levels = {key: float((stored[key] == 0).float().mean()) for local, key in keys.items()
              if local.endswith("." + module_config.param_name) and stored[key].dim() >= 2}
    return stored, levels


def _finish(source: Path, target: Path, checkpoint: SourceCheckpoint, skeleton: Skeleton, state: Progress,
            names: list[str], module_config: ModulePrunerConfig) -> None:
    """Copy the config and small files, write the sparsity record, then the shard index (last: the target
    loads only once whole)."""
    for path in sorted(source.iterdir()):
        if (not path.is_file() or path.name.endswith(_WEIGHT_SUFFIXES) or path.name.startswith(".")
                or path.name in (MANIFEST_NAME, SPARSITY_FILE) or path.stat().st_size > _MAX_COPIED_BYTES):
            continue
        _copy(path, target / path.name)
    fields = hook_fields(cast(Any, SimpleNamespace(pattern=module_config.pattern_spec(), config=module_config)))
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    suffix = "." + module_config.param_name
    layers = {key.removesuffix(suffix): {"param": module_config.param_name, **fields, "level": round(level, 6),
                                         "tied_to": []}
              for block in state.blocks for key, level in block["layers"].items()}
    write_record(target, {"format": FORMAT, "version": 1, "layers": layers})
    weight_map = dict.fromkeys(skeleton.outside_keys(), names[0])
    for index in range(len(skeleton.layers)):
        weight_map.update(dict.fromkeys(skeleton.block_keys(index).values(), names[index + 1]))
    total = sum(checkpoint.nbytes(key) for key in weight_map)
    write_json(target / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})
    state.complete = True
    state.save(len(skeleton.layers))
