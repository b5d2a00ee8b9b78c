"""Calibration data as users have it (`sparsify.calibration`): items, merging, text windows, datasets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _lms import SEQ, VOCAB, tiny_llama, token_batches
from torch import nn

import sparsify
from sparsify.calibration import CalibrationData, GradSampler, batch_size, merged, split_batch, text_windows


def test_items_as_users_have_them() -> None:
    ids = torch.tensor([3, 4, 5])
    item = split_batch({"input_ids": ids, "attention_mask": torch.ones(3, dtype=torch.long), "labels": ids})
    assert item.args == () and item.target is None
    assert {k: v.shape for k, v in item.kwargs.items()} == {k: (1, 3) for k in ("input_ids", "attention_mask",
                                                                                 "labels")}
    listed = split_batch({"input_ids": [[3, 4, 5]], "attention_mask": [[1, 1, 0]]})  # a tokenizer without tensors
    assert torch.equal(listed.kwargs["attention_mask"], torch.tensor([[1, 1, 0]]))
    assert split_batch(ids).args[0].shape == (1, 3)  # an unbatched token tensor gets a batch of one
    x = torch.randn(5)
    assert split_batch(x).args[0] is x  # a float input is the model's business
    assert split_batch(torch.ones(2, 3, dtype=torch.long)).args[0].shape == (2, 3)
    with pytest.raises(TypeError, match=r"key 'text' holds text \('hello'...\): tokenize it first"):
        split_batch({"text": "hello"})
    with pytest.raises(TypeError, match=r"yielded a tuple of length 1: allowed a dict of tensors"):
        split_batch((ids,))


def test_merging_only_where_exactly_equivalent() -> None:
    a, b = torch.ones(2, 4, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)
    pos = torch.arange(4).unsqueeze(0)
    items = [((), {"input_ids": a, "attention_mask": a, "position_ids": pos}, None),
             ((), {"input_ids": b, "attention_mask": a, "position_ids": pos}, None)]
    [(_, kwargs, _)] = merged(items, 8)
    assert kwargs["input_ids"].shape == (4, 4) and kwargs["attention_mask"].shape == (4, 4)
    assert kwargs["position_ids"] is pos  # broadcast [1, T] beside [B, T]: passed once, never concatenated
    shifted = [items[0], ((), {**items[1][1], "position_ids": pos + 1}, None)]
    assert len(merged(shifted, 8)) == 2  # different broadcast tensors: one by one
    one = [((), {"input_ids": a[:1], "position_ids": pos}, None)] * 3  # B = 1: position_ids is batched too
    [(_, kwargs, _)] = merged(one, 8)
    assert kwargs["position_ids"].shape == (3, 4)
    assert len(merged([((), {"input_ids": a}, None), ((), {"input_ids": torch.ones(2, 5, dtype=torch.long)},
                                                           None)], 8)) == 2  # other lengths
    unbatched = [((torch.randn(4),), {}, None)] * 2
    assert batch_size(*unbatched[0][:2]) is None and len(merged(unbatched, 8)) == 2
    assert len(merged(items, 1)) == 2


def test_position_ids_beside_a_batch_prune_like_expanded_ones() -> None:
    """Items with position_ids [1, T] beside input_ids [B, T] prune exactly as the same rows given [B, T]."""
    pos = torch.arange(SEQ).unsqueeze(0)
    data = [{"input_ids": t, "attention_mask": torch.ones_like(t), "position_ids": pos} for t in token_batches()]
    expanded = [{**d, "position_ids": pos.expand(2, -1)} for d in data]
    outs = [sparsify.prune(tiny_llama(), 0.5, criterion="sparsegpt", sampler=d) for d in (data, expanded)]
    for (name, p1), (_, p2) in zip(outs[0].named_parameters(), outs[1].named_parameters()):
        torch.testing.assert_close(p1, p2, msg=name)


def test_text_windows_random_and_consecutive() -> None:
    def tok(text: str) -> list[int]:
        return [ord(c) % 50 for c in text]

    texts = ["abcdefghij", "klmnopqrst"]  # 20 tokens in one stream (no eos)
    windows = text_windows(texts, tok, seq_len=4, num_samples=3, seed=7)
    assert [w["input_ids"].shape for w in windows] == [(1, 4)] * 3
    assert all(torch.equal(w["attention_mask"], torch.ones(1, 4, dtype=torch.long)) for w in windows)
    again = text_windows(texts, tok, seq_len=4, num_samples=3, seed=7)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(windows, again))
    stream = tok("".join(texts))
    for w in windows:  # each window is a slice of the stream
        ids = w["input_ids"][0].tolist()
        assert any(stream[s:s + 4] == ids for s in range(17))
    consecutive = text_windows(texts, tok, seq_len=6, num_samples=None)
    assert [w["input_ids"][0].tolist() for w in consecutive] == [stream[0:6], stream[6:12], stream[12:18]]
    with pytest.raises(ValueError, match="the texts give 20 tokens, fewer than seq_len=21"):
        text_windows(texts, tok, seq_len=21, num_samples=1)
    with pytest.raises(ValueError, match="num_samples=0 is invalid"):
        text_windows(texts, tok, seq_len=2, num_samples=0)


def test_text_windows_with_a_trained_tokenizers_bpe() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator(["def f(x): return x + 1"] * 20,
                                  trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]"]))
    windows = text_windows(["def f(x): return x + 1"] * 5, tokenizer, seq_len=5, num_samples=2)
    assert [w["input_ids"].shape for w in windows] == [(1, 5), (1, 5)]


def test_datasets_dataset_columns() -> None:
    datasets = pytest.importorskip("datasets")
    rows = [t[0].tolist() for t in token_batches(count=3, batch=1)]
    dataset = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "input_ids": rows,
                                          "attention_mask": [[1] * SEQ] * 3})
    items = list(CalibrationData(dataset).items())
    assert len(items) == 3 and set(items[0].kwargs) == {"input_ids", "attention_mask"}
    assert torch.equal(items[1].kwargs["input_ids"], torch.tensor([rows[1]]))
    pruned = sparsify.prune(tiny_llama(), 0.5, criterion="wanda", sampler=dataset)
    assert float((pruned.model.layers[0].mlp.up_proj.weight == 0).float().mean()) == 0.5
    with pytest.raises(ValueError, match="has no numeric columns \\(columns: text\\): tokenize it first"):
        list(CalibrationData(datasets.Dataset.from_dict({"text": ["a"]})).items())


def test_a_models_own_loss_gives_gradients_without_loss_fn() -> None:
    model = tiny_llama()
    ids = token_batches(count=1)[0]
    sampler = GradSampler([{"input_ids": ids, "labels": ids}], progress=False)
    weight = model.model.layers[0].mlp.up_proj.weight
    [(grad,)] = list(sampler.gradients(model, [weight], 1))
    logits = model(ids).logits
    expected = torch.autograd.grad(F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)),
                                   [weight])[0]
    torch.testing.assert_close(grad, expected)
    with pytest.raises(ValueError, match="loss_fn=None, so it cannot give gradients: the model's outputs carry no"):
        next(GradSampler([torch.randn(2, 4)], progress=False).gradients(nn.Linear(4, 2), [], 1))


def test_errors_ask_only_for_what_the_criterion_needs() -> None:
    with pytest.raises(ValueError, match=r"criterion 'sparsegpt' needs calibration data .*forward only, no loss"):
        sparsify.prune(tiny_llama(), 0.5, criterion="sparsegpt")
    with pytest.raises(ValueError, match=r"criterion 'snip' needs calibration data .*GradSampler\(data, loss_fn\)"):
        sparsify.prune(tiny_llama(), 0.5, criterion="snip")
    with pytest.raises(TypeError, match="sampler must be calibration data .* got int"):
        sparsify.prune(tiny_llama(), 0.5, criterion="wanda", sampler=3)
    with pytest.raises(TypeError, match=r"sampler is one dict \(keys \['input_ids'\]\): give a list of such items"):
        sparsify.prune(tiny_llama(), 0.5, criterion="wanda", sampler={"input_ids": token_batches()[0]})
