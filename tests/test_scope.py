"""Global and local scope: exact counts, caps (water-filling), ties, normalisation."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsify.patterns import keep_count, ranked_mask
from sparsify.scope import _normalized, _per_layer, _rankable, global_keep_masks, local_keep_masks, pruned_count


def _pruned(masks, sizes=None):
    sizes = sizes or {}
    return sum(int((~m).sum()) * sizes.get(n, 1) for n, m in masks.items())


def test_worked_example_raw_global_ranking():
    scores = {"a": torch.tensor([1.0, 5.0, 2.0, 8.0]), "b": torch.tensor([[3.0, 0.5], [7.0, 4.0]])}
    masks = global_keep_masks(scores, 0.5)  # 8 weights -> prune 4: 0.5, 1, 2, 3
    assert masks["a"].tolist() == [False, True, False, True]
    assert masks["b"].tolist() == [[False, False], [True, True]]
    assert masks["b"].shape == scores["b"].shape and masks["b"].dtype == torch.bool


def test_max_cap_pins_layer_and_keeps_exact_count():
    scores = {"small": torch.tensor([0.1, 0.2, 0.3, 0.4]), "big": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    # raw ranking would empty "small"; the 0.5 cap lets it lose only 2, so "big" loses 2 more
    masks = global_keep_masks(scores, 0.5, max_sparsity=0.5)
    assert masks["small"].tolist() == [False, False, True, True]
    assert masks["big"].tolist() == [False, False, True, True]


def test_min_cap_forces_a_layer_to_prune():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    masks = global_keep_masks(scores, 0.25, min_sparsity={"b": 0.25})
    assert masks["a"].tolist() == [False, True, True, True]
    assert masks["b"].tolist() == [False, True, True, True]


def test_weights_per_group_counts_weights_not_groups():
    # "tiles" has 2 groups of 4 weights, "dense" has 4 single weights: 12 weights, prune 6
    scores = {"tiles": torch.tensor([0.5, 9.0]), "dense": torch.tensor([0.1, 0.2, 5.0, 6.0])}
    masks = global_keep_masks(scores, 0.5, weights_per_group={"tiles": 4})
    assert _pruned(masks, {"tiles": 4}) == 6
    assert masks["tiles"].tolist() == [False, True]
    assert masks["dense"].tolist() == [False, False, True, True]


def test_ties_are_broken_deterministically_and_count_stays_exact():
    scores = {"a": torch.zeros(10), "b": torch.zeros(6)}
    masks = global_keep_masks(scores, 0.5)
    assert _pruned(masks) == 8
    assert masks["a"].tolist() == [False] * 8 + [True] * 2  # layer order, then index
    assert masks["b"].all()


def test_normalisation_makes_scales_comparable():
    scores = {"small": torch.tensor([0.01, 0.02, 0.03, 0.04]), "big": torch.tensor([10.0, 20.0, 30.0, 40.0])}
    raw = global_keep_masks(scores, 0.5)
    assert not raw["small"].any()
    fair = global_keep_masks(scores, 0.5, normalize="mean")
    assert fair["small"].tolist() == fair["big"].tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="normalize"):
        global_keep_masks(scores, 0.5, normalize="zscore")


def test_nan_scores_are_pruned_first_and_counts_stay_exact():
    scores = {"a": torch.tensor([1.0, float("nan"), 3.0, 4.0]), "b": torch.tensor([0.5, 2.0, float("inf"), 5.0])}
    for normalize in (None, "mean"):
        masks = global_keep_masks(scores, 0.25, normalize=normalize)
        assert masks["a"].tolist() == [True, False, True, True]
        assert masks["b"].tolist() == [False, True, True, True]
    assert local_keep_masks({"a": scores["a"]}, 0.25)["a"].tolist() == [True, False, True, True]


def test_infeasible_caps_win_with_a_warning(caplog):
    scores = {"a": torch.arange(4.0), "b": torch.arange(4.0)}
    with caplog.at_level(logging.WARNING):
        masks = global_keep_masks(scores, 0.9, max_sparsity=0.5)
    assert _pruned(masks) == 4
    assert "caps win" in caplog.text


def test_bad_arguments_name_the_field():
    scores = {"a": torch.arange(4.0)}
    with pytest.raises(ValueError, match="sparsity"):
        global_keep_masks(scores, 1.5)
    with pytest.raises(ValueError, match=r"max_sparsity\['a'\]"):
        global_keep_masks(scores, 0.5, max_sparsity={"a": 2.0})
    with pytest.raises(ValueError, match="min_sparsity"):
        global_keep_masks(scores, 0.5, min_sparsity=0.6, max_sparsity=0.5)
    assert global_keep_masks({}, 0.5) == {}


def test_single_layer_global_equals_engine_count():
    torch.manual_seed(0)
    scores = torch.rand(7, 13)
    for s in (0.0, 0.14, 0.3, 0.5, 0.7, 0.9, 1.0):
        got = global_keep_masks({"w": scores}, s)["w"]
        assert int(got.sum()) == int(ranked_mask(scores, s).sum()) == keep_count(scores.numel(), s)


def test_local_scope_exact_counts():
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 0.0]), "b": torch.ones(10)}
    masks = local_keep_masks(scores, {"a": 0.5, "b": 0.3})
    assert masks["a"].tolist() == [True, False, True, False]
    assert int((~masks["b"]).sum()) == pruned_count(10, 0.3) == 3


_layers = st.lists(
    st.tuples(st.integers(1, 40), st.integers(1, 4), st.floats(0.0, 0.6), st.floats(0.6, 1.0)),
    min_size=1, max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(layers=_layers, sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2**16), ties=st.booleans())
def test_property_exact_global_count_with_caps(layers, sparsity, seed, ties):
    gen = torch.Generator().manual_seed(seed)
    scores, sizes, lo, hi = {}, {}, {}, {}
    for i, (n, size, low, high) in enumerate(layers):
        raw = torch.rand(n, generator=gen)
        scores[f"l{i}"] = raw.mul(4).floor() if ties else raw
        sizes[f"l{i}"], lo[f"l{i}"], hi[f"l{i}"] = size, low, high
    masks = global_keep_masks(scores, sparsity, weights_per_group=sizes, min_sparsity=lo, max_sparsity=hi)
    total = sum(s.numel() * sizes[n] for n, s in scores.items())
    target = pruned_count(total, sparsity)
    mandatory = sum(pruned_count(s.numel(), lo[n]) * sizes[n] for n, s in scores.items())
    ceiling = sum(pruned_count(s.numel(), hi[n]) * sizes[n] for n, s in scores.items())
    got = _pruned(masks, sizes)
    # every layer within its caps
    for name, mask in masks.items():
        n_pruned = int((~mask).sum())
        assert pruned_count(mask.numel(), lo[name]) <= n_pruned <= pruned_count(mask.numel(), hi[name])
    if mandatory <= target <= ceiling:
        assert target - max(sizes.values()) < got <= target
        if all(v == 1 for v in sizes.values()):
            assert got == target
    else:
        assert got == (mandatory if target < mandatory else ceiling)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 30), min_size=1, max_size=4), sparsity=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_property_global_ranking_is_a_threshold(sizes, sparsity, seed):
    """Without caps, every pruned score is <= every kept score (one ranking across layers)."""
    gen = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": torch.rand(n, generator=gen) for i, n in enumerate(sizes)}
    masks = global_keep_masks(scores, sparsity)
    pruned = torch.cat([s[~masks[n]] for n, s in scores.items()])
    kept = torch.cat([s[masks[n]] for n, s in scores.items()])
    if pruned.numel() and kept.numel():
        assert pruned.max() <= kept.min()
    assert int(pruned.numel()) == pruned_count(sum(sizes), sparsity)


# -- the linear-time selection gives the masks of the sort-based implementation it replaced ------------------------


def _reference_local(scores, sparsity):
    """The sort-based `local_keep_masks` before the linear-time selection (kept as the reference)."""
    masks = {}
    for name, score in scores.items():
        flat = _rankable(score.detach().reshape(-1))
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        order = torch.argsort(flat, stable=True)
        keep[order[: pruned_count(flat.numel(), _per_layer(sparsity, name, 0.0))]] = False
        masks[name] = keep.reshape(score.shape)
    return masks


def _reference_global(scores, sparsity, *, weights_per_group=None, min_sparsity=0.0, max_sparsity=1.0,
                      normalize=None, layer_weights=None):
    """The sort-based `global_keep_masks` before the linear-time selection (argument checks left out)."""
    names = list(scores)
    flats, sizes, weights, lows, highs, mandatory = [], [], [], [], [], 0
    for name in names:
        size = int(_per_layer(weights_per_group, name, 1))
        lo_s, hi_s = _per_layer(min_sparsity, name, 0.0), _per_layer(max_sparsity, name, 1.0)
        flat = _rankable(scores[name].detach().reshape(-1))
        n = flat.numel()
        flats.append(_normalized(flat, normalize))
        sizes.append(size)
        if layer_weights is None or name not in layer_weights:
            weights.append(n * size)
            highs.append(pruned_count(n, hi_s))
            lows.append(pruned_count(n, lo_s))
        else:
            weights.append(int(layer_weights[name]))
            highs.append(min(n, pruned_count(weights[-1], hi_s) // size))
            lows.append(min(highs[-1], -(-pruned_count(weights[-1], lo_s) // size)))
        mandatory += lows[-1] * size
    budget = max(0, pruned_count(sum(weights), float(sparsity)) - mandatory)
    orders, cand_scores, cand_sizes = [], [], []
    for flat, size, lo, hi in zip(flats, sizes, lows, highs):
        order = torch.argsort(flat, stable=True)
        orders.append(order)
        cand_scores.append(flat[order[lo:hi]])
        cand_sizes.append(torch.full((hi - lo,), size, dtype=torch.int64))
    all_scores, all_sizes = torch.cat(cand_scores), torch.cat(cand_sizes)
    ranking = torch.argsort(all_scores, stable=True)
    cumulative = torch.cumsum(all_sizes[ranking], 0)
    taken = int(torch.searchsorted(cumulative, torch.tensor(budget), right=True))
    chosen = torch.zeros(all_scores.numel(), dtype=torch.bool)
    chosen[ranking[:taken]] = True
    masks, offset = {}, 0
    for name, flat, order, lo, hi in zip(names, flats, orders, lows, highs):
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        keep[order[:lo]] = False
        keep[order[lo:hi][chosen[offset : offset + hi - lo]]] = False
        offset += hi - lo
        masks[name] = keep.reshape(scores[name].shape)
    return masks


_SPECIALS = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -1.0, 1e-30])


def _random_scores(gen, n, kind, dtype):
    raw = torch.randn(n, generator=gen, dtype=torch.float64)
    if kind == "ties":
        raw = raw.mul(2).round()  # few distinct values, +0.0 and -0.0 among them
    elif kind == "specials":
        raw[torch.randint(0, n, (max(1, n // 4),), generator=gen)] = _SPECIALS[
            torch.randint(0, len(_SPECIALS), (max(1, n // 4),), generator=gen)].double()
    elif kind == "abs":
        raw = raw.abs()
    return raw.to(dtype)


_layer_specs = st.lists(
    st.tuples(st.integers(1, 60), st.integers(1, 4), st.sampled_from([None, 0.0, 0.2, 0.5]),
              st.sampled_from([None, 1.0, 0.9, 0.6]), st.booleans()),
    min_size=1, max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(layers=_layer_specs, sparsity=st.floats(0.0, 1.0), seed=st.integers(0, 2**31),
       kind=st.sampled_from(["plain", "ties", "specials", "abs"]),
       normalize=st.sampled_from([None, "mean", "l2", "max"]),
       double=st.sampled_from([False, True, "mixed"]), nm=st.booleans())
def test_property_identical_to_the_sort_based_implementation(layers, sparsity, seed, kind, normalize, double, nm):
    gen = torch.Generator().manual_seed(seed)
    scores, sizes, lows, highs, layer_weights = {}, {}, {}, {}, {}
    for i, (n, size, low, high, shaped) in enumerate(layers):
        dtype = torch.float64 if double is True or (double == "mixed" and i % 2) else torch.float32
        flat = _random_scores(gen, n * (2 if shaped else 1), kind, dtype)
        scores[f"l{i}"] = flat.reshape(2, n) if shaped else flat
        sizes[f"l{i}"] = size
        if low is not None:
            lows[f"l{i}"] = low
        if high is not None:
            highs[f"l{i}"] = max(high, low or 0.0)
        if nm:  # n:m-like runs: a group of `size` zeros stands for a run of 2 * size weights
            layer_weights[f"l{i}"] = scores[f"l{i}"].numel() * size * 2
    kwargs = {"weights_per_group": sizes, "min_sparsity": lows, "max_sparsity": highs, "normalize": normalize,
              "layer_weights": layer_weights or None}
    got = global_keep_masks(scores, sparsity, **kwargs)
    expected = _reference_global(scores, sparsity, **kwargs)
    assert got.keys() == expected.keys()
    for name in got:
        assert torch.equal(got[name], expected[name]), name
    local = local_keep_masks(scores, sparsity)
    for name, mask in _reference_local(scores, sparsity).items():
        assert torch.equal(local[name], mask), name


def test_large_layers_with_heavy_ties_match_the_sort_based_implementation():
    gen = torch.Generator().manual_seed(0)
    scores = {
        "zeros": torch.zeros(70_000),
        "few": torch.randint(0, 5, (300, 400), generator=gen).float(),
        "spread": torch.randn(90_000, generator=gen).abs(),
        "double": torch.randn(50_000, generator=gen, dtype=torch.float64).abs(),
    }
    for sparsity in (0.1, 0.5, 0.77, 0.95):
        caps = {"min_sparsity": {"few": 0.3}, "max_sparsity": {"zeros": 0.6, "spread": 0.98}}
        got = global_keep_masks(scores, sparsity, weights_per_group={"few": 3}, **caps)
        expected = _reference_global(scores, sparsity, weights_per_group={"few": 3}, **caps)
        for name in scores:
            assert torch.equal(got[name], expected[name]), (sparsity, name)
