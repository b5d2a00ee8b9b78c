"""The memory-lean ranking gives exactly the masks of the implementation it replaced.

The references below are the engine's code before the change, kept verbatim: ``kthvalue`` for the threshold,
a float copy of the keep-mask for "already pruned first", whole-tensor ``argsort`` for n:m runs and a
whole-tensor square for block norms. Every fast path is run with the default piece size and with tiny pieces
(``_select.CHUNK`` of a few elements), so piece boundaries fall inside runs of ties.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_scope import _reference_global
from torch import nn

from sparsify import ModulePrunerConfig, Pruner, PrunerConfig
from sparsify.patterns import (
    CoreMLPattern,
    NMPattern,
    TilePattern,
    _select,
    lowest,
    lowest_per_span,
    n_m_mask,
    rank_keep,
    rankable,
)
from sparsify.patterns.coreml import _block_norms
from sparsify.patterns.tiles import as_3d, from_3d
from sparsify.scope import global_keep_masks

# -- references: the code before the change ---------------------------------------------------------------------


def _ref_lowest(flat, count, first=None):
    size = flat.numel()
    if count <= 0:
        return torch.zeros(size, dtype=torch.bool)
    if count >= size:
        return torch.ones(size, dtype=torch.bool)
    threshold = torch.kthvalue(flat, count).values
    chosen = flat < threshold
    missing = count - int(chosen.sum())
    tied = flat == threshold
    for group in ((tied & first, tied & ~first) if first is not None else (tied,)):
        if missing <= 0:
            break
        index = group.nonzero().squeeze(1)[:missing]
        chosen[index] = True
        missing -= index.numel()
    return chosen


def _ref_n_m_mask(scores, n_m_ratio, dim=1):
    n, m = n_m_ratio
    moved = rankable(scores).movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    channels = rows.shape[-1]
    padded = torch.nn.functional.pad(rows, (0, (-channels) % m))
    runs = padded.reshape(-1, m)
    mask = torch.ones_like(runs, dtype=torch.bool)
    if n:
        mask.scatter_(1, torch.argsort(runs, dim=1, stable=True)[:, :n], False)
    mask = mask.reshape(padded.shape)[:, :channels]
    return mask.reshape(moved.shape).movedim(-1, dim)


def _ref_block_norms(unit, block_size):
    channels = unit.shape[0]
    padding = (-channels) % block_size
    if padding:
        unit = torch.cat([unit, unit.new_zeros((padding, *unit.shape[1:]))], dim=0)
    blocks = unit.reshape(unit.shape[0] // block_size, block_size, *unit.shape[1:])
    return blocks.pow(2).sum(1).sqrt()


def _ref_nm_runs(pattern, scores):
    view = as_3d(scores)
    if pattern.dim == 0:
        view = view.transpose(0, 2)
    a, k, b = view.shape
    return view.reshape(a, k, b // pattern.m, pattern.m)


def _ref_nm_groups(pattern, scores):
    runs = _ref_nm_runs(pattern, rankable(scores))
    return torch.sort(runs, dim=-1, stable=True).values[..., : pattern.n].sum(-1)


def _ref_nm_expand(pattern, keep, scores):
    runs = _ref_nm_runs(pattern, rankable(scores))
    sparse = torch.ones_like(runs, dtype=torch.bool)
    sparse.scatter_(-1, torch.argsort(runs, dim=-1, stable=True)[..., : pattern.n], False)
    mask = sparse | keep.reshape(runs.shape[:-1]).unsqueeze(-1)
    view = mask.reshape(runs.shape[0], runs.shape[1], -1)
    if pattern.dim == 0:
        view = view.transpose(0, 2)
    return from_3d(view.contiguous(), scores.shape)


# -- helpers -------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _pieces(size):
    """Run the fast paths with pieces of ``size`` elements (``None``: the default)."""
    saved = _select.CHUNK
    _select.CHUNK = size or saved
    try:
        yield
    finally:
        _select.CHUNK = saved


def _scores(gen, shape, kind):
    raw = torch.randn(shape, generator=gen)
    if kind == "ties":
        return raw.mul(1.5).round().abs()  # a handful of values, many zeros
    if kind == "signed":
        return raw.mul(2).round()  # negative values, +0.0 and -0.0
    if kind == "zeros":
        return torch.zeros(shape)
    return raw.abs()


_KINDS = st.sampled_from(["plain", "ties", "signed", "zeros"])
_PIECES = st.sampled_from([None, 1, 3, 7, 64])

# -- worked examples ------------------------------------------------------------------------------------------------


def test_worked_example_ties_prefer_already_pruned_then_position():
    flat = torch.tensor([0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 3.0])
    first = torch.tensor([False, False, False, False, True, False, False])
    for size in (None, 1, 2, 3):
        with _pieces(size):
            # 0.0 is lowest; the two 1.0 ties taken: the already-pruned one (index 4), then index 2
            assert lowest(flat, 3, first).tolist() == [True, False, True, False, True, False, False]
            assert lowest(flat, 3).tolist() == [True, False, True, True, False, False, False]


# -- properties: identical masks ----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 300), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**31), kind=_KINDS,
       dtype=st.sampled_from([torch.float32, torch.float64]), pieces=_PIECES, with_first=st.booleans())
def test_lowest_is_the_kthvalue_reference(n, fraction, seed, kind, dtype, pieces, with_first):
    gen = torch.Generator().manual_seed(seed)
    flat = _scores(gen, (n,), kind).to(dtype)
    first = torch.rand(n, generator=gen) < 0.5 if with_first else None
    count = round(fraction * n)
    with _pieces(pieces):
        got = lowest(flat, count, first)
    assert torch.equal(got, _ref_lowest(flat, count, first))
    assert int(got.count_nonzero()) == min(max(count, 0), n)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 300), fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**31), kind=_KINDS,
       pieces=_PIECES)
def test_the_one_tensor_cut_is_the_general_cut(n, fraction, seed, kind, pieces):
    """`_select.cut` of one unweighted float32 tensor gathers and sorts the cut's bucket (`_cut_one`); the general
    path (taken here by an all-True ``within``) histograms twice and counts the ties: the same three answers."""
    flat = _scores(torch.Generator().manual_seed(seed), (n,), kind)
    count = round(fraction * n)
    with _pieces(pieces):
        fast = _select.cut([flat], [1], count)
        general = _select.cut([flat], [1], count, [torch.ones(n, dtype=torch.bool)])
    if general[0] is None:
        assert fast == (None, 0, [])
        return
    assert fast[0] is not None and float(fast[0]) == float(general[0]) and fast[1:] == general[1:]


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 30), cols=st.integers(1, 30), width=st.integers(1, 8), fraction=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**31), kind=_KINDS)
def test_lowest_per_span_counts_lowests_mask_in_each_span(rows, cols, width, fraction, seed, kind):
    scores = _scores(torch.Generator().manual_seed(seed), (rows, cols), kind)
    count = round(fraction * scores.numel())
    spans = [(a, min(a + width, cols)) for a in range(0, cols, width)]
    mask = lowest(scores.reshape(-1), count).reshape(rows, cols)
    assert lowest_per_span(scores, count, spans) == [int(mask[:, a:b].count_nonzero()) for a, b in spans]


def _patterns():
    return [
        CoreMLPattern(), CoreMLPattern("per_scalar", 4), CoreMLPattern("per_scalar", 3),
        CoreMLPattern("per_kernel"), CoreMLPattern("per_channel", 2), CoreMLPattern("per_kernel", 3),
        TilePattern(4, 1), TilePattern(1, 2), TilePattern(2, 2), TilePattern(1, None), TilePattern(None, 1),
        NMPattern(2, 4), NMPattern(1, 4, dim=0), NMPattern(2, 4, by_runs=True), NMPattern(1, 2, dim=0, by_runs=True),
    ]


@pytest.mark.parametrize("pattern", _patterns(), ids=lambda p: p.describe()[:24])
@pytest.mark.parametrize("shape", [(8, 12), (12, 8, 3, 2)], ids=["linear", "conv"])
@pytest.mark.parametrize("kind", ["plain", "ties", "zeros"])
def test_groups_pruned_groups_and_local_masks_match_the_reference(pattern, shape, kind):
    gen = torch.Generator().manual_seed(hash((pattern.describe(), shape, kind)) % 2**31)
    pattern = pattern.for_shape(shape) if isinstance(pattern, CoreMLPattern) else pattern
    scores = _scores(gen, shape, kind)
    kept = torch.rand(shape, generator=gen) < 0.6
    kept[: shape[0] // 2] &= torch.rand(shape, generator=gen)[: shape[0] // 2] < 0.3  # some whole groups pruned
    for pieces in (None, 1, 5):
        with _pieces(pieces):
            # "already pruned" groups without a float copy of the mask
            assert torch.equal(pattern.pruned_groups(kept), pattern.groups(kept.float())[0] == 0)
            if isinstance(pattern, NMPattern):
                grouped = pattern.groups(scores)[0]
                assert torch.equal(grouped, _ref_nm_groups(pattern, scores))
                keep = torch.rand(grouped.shape, generator=gen) < 0.5
                assert torch.equal(pattern.expand(keep, scores), _ref_nm_expand(pattern, keep, scores))
            for sparsity in (0.2, 0.5, 0.75):
                got = pattern.local_mask(scores, sparsity, kept)
                expected = _reference_local_mask(pattern, scores, sparsity, kept)
                assert torch.equal(got, expected), (pieces, sparsity)


def _reference_local_mask(pattern, scores, sparsity, kept):
    """`Pattern.local_mask` before the change: float copy of ``kept``, ``kthvalue`` threshold, whole-run sorts."""
    if isinstance(pattern, NMPattern) and not (pattern.by_runs and sparsity < pattern.max_sparsity - 1e-12):
        zeros = pattern.n if sparsity >= pattern.max_sparsity - 1e-12 else int(sparsity * pattern.m)
        if zeros == 0:
            return _reference_local_mask(CoreMLPattern(), scores, sparsity, None)
        return _ref_n_m_mask(scores, (zeros, pattern.m), pattern.dim)
    if isinstance(pattern, CoreMLPattern):
        grouped, units, total = pattern._unit_groups(scores)
        first = pattern._unit_groups(kept.float())[0] == 0 if kept is not None else None
    else:
        grouped, units = pattern.groups(scores)
        total = math.prod(scores.shape)
        first = pattern.groups(kept.float())[0] == 0 if kept is not None else None
    flat = rankable(grouped).reshape(-1)
    budget = total - int(torch.ceil(torch.as_tensor(total, dtype=torch.float32) * (1 - sparsity)).item())
    first_flat = first.reshape(-1) if first is not None else None
    if isinstance(units, int):
        pruned = _ref_lowest(flat, min(budget // units, flat.numel()), first_flat)
        keep = (~pruned).reshape(grouped.shape)
    else:
        keep = rank_keep(grouped, units, total, sparsity, first)
    return pattern.expand(keep, scores)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 30), nm=st.sampled_from([(1, 2), (2, 4), (3, 4), (0, 4)]),
       dim=st.sampled_from([0, 1]), seed=st.integers(0, 2**31), kind=_KINDS, pieces=_PIECES)
def test_n_m_mask_is_the_reference(rows, cols, nm, dim, seed, kind, pieces):
    scores = _scores(torch.Generator().manual_seed(seed), (rows, cols), kind)
    with _pieces(pieces):
        assert torch.equal(n_m_mask(scores, nm, dim), _ref_n_m_mask(scores, nm, dim))


@settings(max_examples=60, deadline=None)
@given(channels=st.integers(1, 40), rest=st.sampled_from([(), (1,), (5,), (3, 1, 1), (2, 3, 3)]),
       block=st.integers(2, 6), seed=st.integers(0, 2**31), pieces=_PIECES)
def test_block_norms_are_bit_identical(channels, rest, block, seed, pieces):
    unit = torch.randn((channels, *rest), generator=torch.Generator().manual_seed(seed)).abs()
    with _pieces(pieces):
        assert torch.equal(_block_norms(unit, block), _ref_block_norms(unit, block))


# -- the pruner: local and global scope, with caps, at small piece sizes --------------------------------------------


def _masks_after_update(scope, pieces, **fields):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24, bias=False), nn.Linear(24, 8, bias=False), nn.Linear(8, 8, bias=False))
    with torch.no_grad():
        model[1].weight.mul_(4).round_()  # heavy ties
        model[2].weight.zero_()
    config = ModulePrunerConfig(**{"target_sparsity": 0.5, "scope": scope, "max_sparsity": 0.9, "min_sparsity": 0.1,
                                   **fields})
    pruner = Pruner(model, PrunerConfig(global_config=config))
    prepared = pruner.prepare()
    prepared(torch.randn(5, 16)).square().sum().backward()
    pruner.observe_gradients()
    with _pieces(pieces):
        pruner.prune_now(0.25)
        pruner.prune_now(0.5)
    return [b.clone() for n, b in prepared.named_buffers() if n.endswith("weight_mask")]


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("fields", [{}, {"criterion": "snip"}, {"block_size": 4}, {"pattern": "4x1"},
                                    {"n_m_ratio": (2, 4), "max_sparsity": 0.5}],
                         ids=["magnitude", "snip", "block4", "4x1", "2:4"])
def test_pruner_masks_do_not_depend_on_the_piece_size(scope, fields):
    fields = dict(fields)
    expected = _masks_after_update(scope, None, **fields)
    for pieces in (1, 7):
        got = _masks_after_update(scope, pieces, **fields)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), pieces


@settings(max_examples=40, deadline=None)
@given(layers=st.lists(st.integers(1, 50), min_size=1, max_size=4), sparsity=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**31), kind=_KINDS, pieces=st.sampled_from([1, 3, 7]))
def test_global_ranking_with_caps_at_small_pieces_is_the_sort_reference(layers, sparsity, seed, kind, pieces):
    gen = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": _scores(gen, (n,), kind) for i, n in enumerate(layers)}
    caps = {"min_sparsity": {"l0": 0.2}, "max_sparsity": {"l1": 0.7}, "weights_per_group": {"l2": 3}}
    expected = _reference_global(scores, sparsity, **caps)
    with _pieces(pieces):
        got = global_keep_masks(scores, sparsity, **caps)
    assert all(torch.equal(got[n], expected[n]) for n in scores)
