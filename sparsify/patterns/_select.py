"""Exact selection of the lowest scores in linear time and in chunk-sized memory.

Both the one-layer ranking (`sparsify.patterns.ranking.lowest`) and the global ranking (`sparsify.scope`)
need "the ``count`` lowest scores, ties broken by position". Sorting, ``kthvalue`` and ``argsort`` all copy
the scores and allocate an ``int64`` index per score: 12 bytes per weight at a mask update, more than the
update's own result. This module finds the cut with a radix selection that streams over the scores in
pieces of ``CHUNK`` elements:

* each score is mapped to an integer key with the same order (``-0.0`` and ``+0.0`` alike, key 0);
* a histogram of the top 16 bits of the keys — every element counted ``weights_per_group`` times — says in
  which bucket the cut falls; the next pass histograms the next 16 bits of the elements in that bucket
  only, and so on (2 passes for float32, 4 for float64). The last bucket *is* the cut value;
* one more pass counts, per layer, the elements equal to the cut (the ties), and the masks are written
  piece by piece: every score below the cut, plus the first ties in index order.

Nothing of the scores' size is allocated except the ``bool`` result; temporaries are a few ``CHUNK``-sized
pieces. Results are identical to a stable sort of all scores, ties included (the tests compare both).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = ["at_most", "cut", "fill_first_ties", "smallest"]

_DIGITS = 1 << 16
_INF_TOP = 0x7F80  # the top 16 bits of float32 +inf: from there on, a bucket's upper edge is no number
#: elements per piece: keys, digits and comparisons live in cache-sized pieces, never in score-sized arrays
CHUNK = 1 << 20


def _int_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.int64 if dtype == torch.float64 else torch.int32


def _keys(values: torch.Tensor, signed: bool) -> torch.Tensor:
    """Integers ordered like the float ``values`` (NaN already mapped), ``-0.0`` and ``+0.0`` alike (key 0).

    Non-negative floats are ordered like their bits, so without sign bits the bits are the keys (no copy);
    otherwise negative values get their magnitude negated.
    """
    bits = values.view(_int_dtype(values.dtype))
    if not signed:
        return bits
    sign = bits >> (bits.element_size() * 8 - 1)  # 0 or -1
    key = bits & torch.iinfo(bits.dtype).max  # the magnitude
    return key.bitwise_xor_(sign).sub_(sign)  # negated where the sign was set: (x ^ -1) + 1 == -x


def _digit(keys: torch.Tensor, level: int) -> torch.Tensor:
    """The ``level``-th 16-bit digit of ``keys``, from the top, as an index into a histogram."""
    shift = keys.element_size() * 8 - 16 * (level + 1)
    if level == 0:  # arithmetic shift of a signed key: move it to [0, 2**16)
        return torch.bitwise_right_shift(keys, shift).add_(_DIGITS // 2)
    return torch.bitwise_right_shift(keys, shift).bitwise_and_(_DIGITS - 1)


def _pieces(flat: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(slice, piece)`` of a 1-D tensor, ``CHUNK`` elements at a time."""
    for start in range(0, flat.numel(), CHUNK):
        yield slice(start, start + CHUNK), flat[start : start + CHUNK]


def cut(
    values: list[torch.Tensor], sizes: list[int], budget: int, within: list[torch.Tensor | None] | None = None
) -> tuple[torch.Tensor | None, int, list[int]]:
    """Weighted selection: the smallest value ``v`` with ``sum(size · count(x <= v)) > budget``.

    ``values`` holds 1-D float tensors of one dtype, one per layer, each element weighing ``sizes[i]``;
    ``within[i]``, if given and not ``None``, says which elements of layer ``i`` take part. Returns ``v``
    (a 0-d tensor), ``budget - sum(size · count(x < v))`` and each layer's count of ``x == v`` (taking part);
    or ``(None, 0, [])`` when everything fits in the budget.
    """
    if not values:
        return None, 0, []
    device, dtype = values[0].device, values[0].dtype
    within = within or [None] * len(values)
    signed = [bool(v.numel()) and int(v.view(_int_dtype(dtype)).min()) < 0 for v in values]
    bits = torch.finfo(dtype).bits
    levels = bits // 16
    if len(values) == 1 and sizes == [1] and within == [None] and dtype == torch.float32:
        return _cut_one(values[0], signed[0], budget)
    left, prefix = budget, 0
    for level in range(levels):
        histogram = torch.zeros(_DIGITS + 1, dtype=torch.int64, device=device)  # the last bin: not taking part
        top = prefix - (1 << (16 * level - 1)) if level else 0  # the chosen digits so far, as a shifted key
        for flat, sign, size, part in zip(values, signed, sizes, within):
            for where, piece in _pieces(flat):
                keys = _keys(piece, sign)
                digit = _digit(keys, level)
                out = None if part is None else ~part[where]
                if level:  # only the elements whose higher digits are the chosen ones
                    other = torch.bitwise_right_shift(keys, bits - 16 * level) != top
                    out = other if out is None else out.logical_or_(other)
                if out is not None:
                    digit.masked_fill_(out, _DIGITS)
                histogram += torch.bincount(digit, minlength=_DIGITS + 1) * size
        cumulative = histogram[:_DIGITS].cumsum(0)
        bucket = int(torch.searchsorted(cumulative, torch.tensor(left, device=device), right=True))
        if bucket == _DIGITS:  # only possible at the first level: the budget takes every candidate
            return None, 0, []
        if bucket:
            left -= int(cumulative[bucket - 1])
        prefix = prefix * _DIGITS + bucket
    key = prefix - (1 << (levels * 16 - 1))  # undo the first digit's offset
    key_bits = key if key >= 0 else (-key) | torch.iinfo(_int_dtype(dtype)).min
    value = torch.tensor(key_bits, dtype=_int_dtype(dtype)).view(dtype).to(device)
    ties = [_count_equal(flat, value, part) for flat, part in zip(values, within)]
    return value, left, ties


def _cut_one(flat: torch.Tensor, signed: bool, budget: int) -> tuple[torch.Tensor | None, int, list[int]]:
    """`cut` of one unweighted float32 tensor: the histogram of the top 16 bits finds the cut's bucket, whose
    elements (a small share: 1/128 of a binary order of magnitude) are gathered and sorted — one pass less than
    the second histogram and the tie count, for the same result."""
    histogram = torch.zeros(_DIGITS, dtype=torch.int64, device=flat.device)
    for _, piece in _pieces(flat):
        histogram += torch.bincount(_digit(_keys(piece, signed), 0), minlength=_DIGITS)
    cumulative = histogram.cumsum(0)
    bucket = int(torch.searchsorted(cumulative, torch.tensor(budget, device=flat.device), right=True))
    if bucket == _DIGITS:  # the budget takes every element
        return None, 0, []
    left = budget - (int(cumulative[bucket - 1]) if bucket else 0)
    shifted = bucket - _DIGITS // 2  # the bucket as the keys' top 16 bits (`_digit` adds half the digits)
    if not signed and flat.device.type == "cpu" and shifted + 1 < _INF_TOP:
        # non-negative floats: the bucket is the interval [lo, hi) of values; NumPy gathers it 5× faster
        low, high = (float(torch.tensor(top << 16, dtype=torch.int32).view(torch.float32)) for top in
                     (shifted, shifted + 1))
        members = [torch.from_numpy(array[(array >= low) & (array < high)])
                   for array in (piece.numpy() for _, piece in _pieces(flat.detach()))]
    else:
        members = [piece[torch.bitwise_right_shift(_keys(piece, signed), 16) == shifted]
                   for _, piece in _pieces(flat)]
    ordered = torch.cat(members).sort().values  # -0.0 and +0.0 compare equal here too
    value = ordered[left]
    below = int(torch.searchsorted(ordered, value, right=False))
    ties = int(torch.searchsorted(ordered, value, right=True)) - below
    return value.clone(), left - below, [ties]


def _count_equal(flat: torch.Tensor, value: torch.Tensor, within: torch.Tensor | None) -> int:
    count = 0
    for where, piece in _pieces(flat):
        equal = piece == value
        if within is not None:
            equal.logical_and_(within[where])
        count += int(torch.count_nonzero(equal))
    return count


def fill_first_ties(
    out: torch.Tensor, flat: torch.Tensor, value: torch.Tensor, take: int, within: torch.Tensor | None = None
) -> int:
    """Set ``out`` (1-D ``bool``) at the first ``take`` elements of ``flat`` equal to ``value`` (and ``within``),
    in index order; returns how many of ``take`` were not found."""
    for where, piece in _pieces(flat):
        if take <= 0:
            break
        tie = piece == value
        if within is not None:
            tie.logical_and_(within[where])
        count = int(torch.count_nonzero(tie))
        if count > take:
            positions = tie.nonzero().squeeze(1)[take:]  # at most one piece of int64 positions
            tie[positions] = False
            count = take
        out[where].logical_or_(tie)
        take -= count
    return take


def at_most(
    flat: torch.Tensor, value: torch.Tensor, ties: int, take: int, within: torch.Tensor | None = None
) -> torch.Tensor:
    """``flat < value`` plus the first ``take`` of the ``ties`` elements equal to ``value``, all ``within``."""
    chosen = torch.empty(flat.shape, dtype=torch.bool, device=flat.device)
    compare = torch.le if take == ties else torch.lt
    for where, piece in _pieces(flat):
        compare(piece, value, out=chosen[where])
        if within is not None:
            chosen[where].logical_and_(within[where])
    if 0 < take < ties:
        fill_first_ties(chosen, flat, value, take, within)
    return chosen


def smallest(flat: torch.Tensor, count: int) -> torch.Tensor:
    """``bool`` mask of the ``count`` lowest scores of a 1-D tensor, ties by index (what a stable argsort gives)."""
    if count <= 0:
        return torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if count >= flat.numel():
        return torch.ones(flat.shape, dtype=torch.bool, device=flat.device)
    value, left, (ties,) = cut([flat], [1], count)
    assert value is not None  # 0 < count < numel: the cut falls inside
    return at_most(flat, value, ties, left)
