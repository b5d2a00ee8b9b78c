"""Language-model defaults: the output head and the embeddings stay dense unless a name rule names them.

SparseGPT's and Wanda's reference code, llm-compressor and the papers' magnitude baselines prune the linear
layers of the decoder blocks only: the output head (``lm_head``) and the token / position embeddings stay
dense. A transformers language model — a model whose ``get_output_embeddings()`` returns a module — gets the
same default here with a `sparsify.PrunerConfig` (`sparsify.prune` included), whatever the criterion
(Core ML Tools' drop-in ``MagnitudePrunerConfig`` keeps Core ML Tools' selection): its output head, its
``get_input_embeddings()`` and every ``nn.Embedding`` are *language-model parts*, skipped unless a
``module_name_configs`` pattern with a config names them (``keep_classifier_dense`` is not needed).

**Tied weights.** GPT-2 ties ``lm_head.weight`` to ``transformer.wte.weight``. A weight held by two modules is
pruned only when both are selected by rules with one config (then they share one mask); pruning it through one
module alone would change the other too, so `tied_holders` refuses it when the other holder is a
language-model part or when the criterion is layer-wise (SparseGPT rewrites the kept values). A plain model
with a tied ``Embedding`` and magnitude pruning keeps sharing the head's mask (`sparsify.pruning.plan`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..config import PrunerConfig

__all__ = ["language_model_parts", "lm_exclusion", "lm_parts_for", "named_by_name_rule"]

logger = logging.getLogger(__name__)


def language_model_parts(model: nn.Module) -> dict[str, str]:
    """Qualified name → role (``"output head"``, ``"input embeddings"``, ``"embeddings"``) of a transformers
    language model's parts; empty for any other model."""
    get_output = getattr(model, "get_output_embeddings", None)
    try:
        head = get_output() if callable(get_output) else None
    except (NotImplementedError, AttributeError):
        head = None
    if not isinstance(head, nn.Module):
        return {}
    get_input = getattr(model, "get_input_embeddings", None)
    try:
        embeddings = get_input() if callable(get_input) else None
    except (NotImplementedError, AttributeError):
        embeddings = None
    parts: dict[str, str] = {}
    for name, module in model.named_modules():
        if module is head:
            parts[name] = "output head"
        elif module is embeddings:
            parts[name] = "input embeddings"
        elif isinstance(module, nn.Embedding):
            parts[name] = "embeddings"
    return parts


def lm_parts_for(model: nn.Module, config: Any) -> dict[str, str]:
    """`language_model_parts` where the defaults apply: sparsify's `PrunerConfig`. Core ML Tools' drop-in
    ``MagnitudePrunerConfig`` keeps Core ML Tools' own selection (every ``Linear``, the head included)."""
    return language_model_parts(model) if isinstance(config, PrunerConfig) else {}


def named_by_name_rule(config: Any, name: str) -> bool:
    """Whether a ``module_name_configs`` pattern with a config (not ``None``) is the first to match ``name``."""
    rules: Mapping[str, Any] = getattr(config, "module_name_configs", {}) or {}
    for pattern, module_config in rules.items():
        if re.fullmatch(pattern, name):
            return module_config is not None
    return False


def lm_exclusion(parts: Mapping[str, str], config: Any, name: str) -> str | None:
    """Why ``name`` stays dense by the language-model default, or ``None`` when it does not."""
    role = parts.get(name)
    if role is None or named_by_name_rule(config, name):
        return None
    return f"language-model {role} kept dense (name it in module_name_configs to prune it)"
