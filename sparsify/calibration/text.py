"""Token windows from plain texts: the calibration (and evaluation) data of language models.

`text_windows` tokenizes every text, joins the token streams (with the tokenizer's end-of-sequence token
between texts when it has one) and cuts windows of ``seq_len`` tokens:

* ``num_samples=n`` — ``n`` windows at random offsets, drawn with ``torch.Generator().manual_seed(seed)``
  (SparseGPT's and Wanda's calibration recipe: random windows of a corpus);
* ``num_samples=None`` — every consecutive, non-overlapping window in order (the usual perplexity protocol;
  the tail shorter than ``seq_len`` is dropped).

Each window is ``{"input_ids": LongTensor [1, seq_len], "attention_mask": ones [1, seq_len]}``, the dict a
transformers causal LM takes — ready for ``sampler=`` and for `sparsify.analysis.perplexity`.

The tokenizer may be a transformers tokenizer, a ``tokenizers.Tokenizer``, or any callable turning one text
into a list of token ids.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["text_windows", "token_ids"]


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """The token ids of ``text`` (no special tokens where the tokenizer allows leaving them out)."""
    if hasattr(tokenizer, "encode") and type(tokenizer).__module__.split(".")[0] == "tokenizers":
        return list(tokenizer.encode(text, add_special_tokens=False).ids)
    if not callable(tokenizer):
        raise TypeError(
            f"tokenizer must be callable on a text (or a tokenizers.Tokenizer), got {type(tokenizer).__name__}"
        )
    try:
        out = tokenizer(text, add_special_tokens=False)
    except TypeError:
        out = tokenizer(text)
    if hasattr(out, "keys") and "input_ids" in out:
        out = out["input_ids"]
    elif hasattr(out, "ids"):
        out = out.ids
    if isinstance(out, torch.Tensor):
        out = out.reshape(-1).tolist()
    if not isinstance(out, (list, tuple)) or not all(isinstance(i, int) for i in out):
        raise TypeError(f"the tokenizer returned {type(out).__name__}: expected a list of token ids for one text")
    return list(out)


def _eos(tokenizer: Any) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None)
    return eos if isinstance(eos, int) else None


def text_windows(
    texts: Iterable[str] | str,
    tokenizer: Any,
    seq_len: int,
    num_samples: int | None,
    seed: int = 0,
) -> list[dict[str, torch.Tensor]]:
    """Windows of ``seq_len`` tokens cut from ``texts`` (see the module docs)."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len={seq_len!r} is invalid: allowed an integer >= 1")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 1):
        raise ValueError(f"num_samples={num_samples!r} is invalid: allowed an integer >= 1, or None for every "
                         f"consecutive window")
    if isinstance(texts, str):
        texts = [texts]
    eos = _eos(tokenizer)
    stream: list[int] = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is a {type(text).__name__}: allowed str")
        if stream and eos is not None:
            stream.append(eos)
        stream.extend(token_ids(tokenizer, text))
    if len(stream) < seq_len:
        raise ValueError(f"the texts give {len(stream)} tokens, fewer than seq_len={seq_len}: give more text or "
                         f"a shorter seq_len")
    tokens = torch.tensor(stream, dtype=torch.long)
    if num_samples is None:
        starts = list(range(0, len(stream) - seq_len + 1, seq_len))
    else:
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, len(stream) - seq_len + 1, (num_samples,), generator=generator).tolist()
    return [{"input_ids": tokens[s:s + seq_len].unsqueeze(0).clone(),
             "attention_mask": torch.ones(1, seq_len, dtype=torch.long)} for s in starts]
