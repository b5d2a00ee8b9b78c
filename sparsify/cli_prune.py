"""``sparsify prune`` on a saved model: a Hugging Face model directory or a ``torch.export`` program, written back
as the same kind it read.

* **a Hugging Face directory** (``config.json`` + ``*.safetensors``): the class named by the config's
  ``architectures`` is loaded with ``from_pretrained(..., use_safetensors=True)`` (no pickle is read), pruned
  with the language-model defaults (decoder linears; head and embeddings dense) and written with
  ``save_pretrained`` — the pruned weights, ``sparsity.json`` (`sparsify.pruning.sparsity_record`) and the
  tokenizer files. Layer-wise criteria (``sparsegpt``, ``wanda``) and ``--layer-levels owl`` calibrate on
  ``--calibration TEXT_FILE``: ``--samples`` windows of ``--seq-len`` tokens cut by the directory's tokenizer
  (`sparsify.calibration.text_windows`).
* **a ``torch.export`` program** (``.pt2``): every parameter that feeds a linear or convolution as its weight
  is pruned (data-free criteria) through a stand-in module of that type, the program's weights are updated
  in place and it is saved again with ``torch.export.save``. Stand-ins are named by the parameter's name
  without ``.weight``, dots as ``_`` (for ``--config`` name rules).
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from .cli_files import CommandError, _archive_kind, check_output, load_model, save_atomically
from .model_files import FileRefusedError, check_file_size

if TYPE_CHECKING:
    from .config import PrunerConfig

__all__ = ["add_saved_model_arguments", "options_config", "prune_saved", "saved_kind"]

logger = logging.getLogger("sparsify.cli")

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "vocab.txt",
                    "merges.txt", "tokenizer.model", "added_tokens.json")
_WEIGHT_OPS = ("aten.linear.default", "aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default",
               "aten.convolution.default")


def saved_kind(spec: str) -> str | None:
    """``"hf"`` for a directory with ``config.json``, ``"exported"`` for a ``torch.export`` archive, else
    ``None`` (a model factory)."""
    path = Path(spec)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CommandError(f"{path} is a directory without config.json: not a Hugging Face model directory")
        return "hf"
    if path.is_file() and _archive_kind(path) == "exported":
        return "exported"
    return None


def add_saved_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only a saved language model uses."""
    parser.add_argument("--calibration", help="a text file to calibrate layer-wise criteria (sparsegpt, wanda) and "
                        "--layer-levels owl on (Hugging Face directories)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window (default 512)")
    parser.add_argument("--samples", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument("--layer-levels", choices=("owl",), help="per-layer levels by OWL (needs --calibration)")


def option_choices(args: argparse.Namespace) -> dict[str, Any]:
    """The pruning options of ``sparsify prune`` (criterion, scope, pattern, granularity, n:m) as
    `ModulePrunerConfig` keywords; ``--sparsity`` is the caller's (a target, or a one-shot level)."""
    choices: dict[str, Any] = {"criterion": args.criterion, "scope": args.scope}
    for field, value in (("pattern", args.pattern), ("granularity", args.granularity)):
        if value is not None:
            choices[field] = value
    if args.n_m is not None:
        from .patterns import n_m_from_string

        choices["n_m_ratio"] = n_m_from_string(args.n_m)
    return choices


def options_config(args: argparse.Namespace) -> PrunerConfig:
    """The `PrunerConfig` the command-line options describe when no ``--config`` file is given: ``--sparsity``
    as the target and `option_choices`; without ``--sparsity`` or ``--n-m`` there is nothing to prune to."""
    from .config import ModulePrunerConfig, PrunerConfig

    if args.sparsity is None and args.n_m is None:
        raise CommandError("give --sparsity (e.g. 0.8), --n-m (e.g. 2:4) or a config file with --config")
    choices = option_choices(args)
    if args.sparsity is not None:
        choices["target_sparsity"] = args.sparsity
    return PrunerConfig(global_config=ModulePrunerConfig(**choices))


def _output(args: argparse.Namespace, *, directory: bool = False) -> Path:
    """``-o``, checked before any work (`sparsify.cli_files.check_output`): a directory for a Hugging Face
    model, a file for a ``torch.export`` program."""
    return check_output(args.output, args.force, directory=directory)


def _load_hf(directory: Path, max_bytes: int) -> nn.Module:
    import transformers

    for weights in directory.glob("*.safetensors"):
        try:
            check_file_size(weights, max_bytes, "weights file")
        except FileRefusedError as error:
            raise CommandError(f"{error} (raise it with --max-file-size)") from error
    if not any(directory.glob("*.safetensors")):
        raise CommandError(f"{directory} has no .safetensors weights (pickled .bin weights are not read)")
    config = transformers.AutoConfig.from_pretrained(directory)
    names = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, names[0], None) if names else None
    if model_class is None:
        raise CommandError(f"{directory}/config.json names architectures={names}: not a transformers class")
    model: nn.Module = model_class.from_pretrained(directory, use_safetensors=True)
    return model


def _prune_hf(args: argparse.Namespace) -> int:
    from .calibration import text_windows
    from .pruning import prune

    if args.config is not None:
        raise CommandError("--config is for model factories and .pt2 programs; a Hugging Face directory takes the "
                           "options (--sparsity, --criterion, --n-m, ...)")
    directory = Path(args.model)
    out = _output(args, directory=True)
    model = _load_hf(directory, args.max_file_size)
    choices = option_choices(args)
    sparsity = args.sparsity
    if sparsity is None:
        if "n_m_ratio" not in choices:
            raise CommandError("give --sparsity (e.g. 0.5) or --n-m (e.g. 2:4)")
        sparsity = choices["n_m_ratio"][0] / choices["n_m_ratio"][1]
    sampler = None
    if args.calibration is not None:
        from transformers import AutoTokenizer

        text = Path(args.calibration).read_text(encoding="utf-8", errors="replace")
        tokenizer = AutoTokenizer.from_pretrained(directory)
        try:
            sampler = text_windows([text], tokenizer, args.seq_len, args.samples, seed=0)
        except ValueError as error:
            raise CommandError(f"--calibration {args.calibration}: {error}") from error
        vocab = model.get_input_embeddings().num_embeddings  # type: ignore[operator]
        largest = max(int(w["input_ids"].max()) for w in sampler)
        if largest >= vocab:
            raise CommandError(f"{directory}'s tokenizer gives token id {largest}, but the model's vocabulary has "
                               f"{vocab} entries: the tokenizer does not belong to this model")
    try:
        pruned = prune(model, sparsity, sampler=sampler, inplace=True, layer_levels=args.layer_levels, **choices)
    except ValueError as error:
        raise CommandError(str(error)) from error
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    cast(Any, pruned).save_pretrained(out)
    for name in _TOKENIZER_FILES:
        if (directory / name).is_file():
            shutil.copyfile(directory / name, out / name)
    print(f"saved the pruned model (Hugging Face directory, with sparsity.json) to {out}")
    return 0


def _weights_of(program: Any) -> dict[str, torch.Tensor]:
    """The parameters the program's linears and convolutions read as their weight, by name."""
    inputs = dict(program.graph_signature.inputs_to_parameters)
    found: dict[str, torch.Tensor] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and str(node.target) in _WEIGHT_OPS and len(node.args) > 1:
            name = inputs.get(getattr(node.args[1], "name", None))
            if name is not None and name in program.state_dict:
                found[name] = program.state_dict[name]
    return found


def _stand_in(weight: torch.Tensor) -> nn.Module:
    module: nn.Module = nn.Linear(1, 1, bias=False) if weight.dim() == 2 else \
        {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[weight.dim()](1, 1, 1, bias=False)
    module.register_parameter("weight", nn.Parameter(weight.detach().clone()))
    return module


def _prune_exported(args: argparse.Namespace) -> int:
    from .cli_files import load_config
    from .pruning import Pruner

    out = _output(args)
    _, program = load_model(args.model, args.max_file_size)
    weights = {n: w for n, w in _weights_of(program).items() if 2 <= w.dim() <= 5}
    holder = nn.ModuleDict({re.sub(r"\.weight$", "", n).replace(".", "_"): _stand_in(w) for n, w in weights.items()})
    if args.config is not None:
        config = load_config(args.config, args.config_format, holder)
    else:
        config = options_config(args)
    pruner = Pruner(holder, config)
    pruner.prepare(inplace=True)
    if any(t.config.criterion.needs_data for t in pruner.targets.values()):
        raise CommandError("a torch.export program is pruned with data-free criteria only (e.g. magnitude)")
    pruner.prune_now()
    pruner.finalize(inplace=True)
    with torch.no_grad():
        for name, weight in weights.items():
            weight.copy_(holder[re.sub(r"\.weight$", "", name).replace(".", "_")].get_parameter("weight"))
    save_atomically(out, lambda temporary: torch.export.save(program, temporary))
    print(pruner.report())
    print(f"\nsaved the pruned torch.export program to {out}")
    return 0


def prune_saved(args: argparse.Namespace, kind: str) -> int:
    """``sparsify prune`` for a saved model of ``kind`` (see the module docs)."""
    if getattr(args, "weights", None) is not None:
        raise CommandError(f"--weights is for model factories: {args.model} holds its weights")
    if getattr(args, "trace", None) is not None:
        raise CommandError("--trace is for model factories: the output is the same kind as the input")
    return _prune_hf(args) if kind == "hf" else _prune_exported(args)
