"""Perplexity and held-out loss of a causal LM on token windows (sparsify.analysis.perplexity)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _lms import VOCAB, tiny_llama, token_batches

from sparsify.analysis import perplexity


def test_perplexity_is_the_mean_next_token_loss() -> None:
    model = tiny_llama()
    windows = token_batches(count=3)
    with torch.no_grad():
        losses = [F.cross_entropy(model(w).logits[:, :-1].reshape(-1, VOCAB), w[:, 1:].reshape(-1), reduction="sum")
                  for w in windows]
    tokens = sum(w[:, 1:].numel() for w in windows)
    result = perplexity(model, windows, progress=False)
    assert result.tokens == tokens == 3 * 2 * 11
    assert result.loss == pytest.approx(float(sum(losses)) / tokens, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    as_dicts = perplexity(model, [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in windows],
                          progress=False)
    assert as_dicts.loss == pytest.approx(result.loss, rel=1e-6)


def test_masked_targets_do_not_count() -> None:
    model = tiny_llama()
    w = token_batches(count=1, batch=1)[0]
    mask = torch.ones_like(w)
    mask[:, -4:] = 0
    result = perplexity(model, [{"input_ids": w, "attention_mask": mask}], progress=False)
    with torch.no_grad():
        logits = model(input_ids=w, attention_mask=mask).logits
    expected = F.cross_entropy(logits[0, :7], w[0, 1:8])
    assert result.tokens == 7 and result.loss == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="hold no predicted token"):
        perplexity(model, [torch.tensor([[3]])], progress=False)
