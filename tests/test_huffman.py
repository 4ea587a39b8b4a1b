"""Tests of compress/huffman.py: length-limited canonical Huffman codes."""

import heapq

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsefab.compress import huffman
from sparsefab.compress.errors import SparsefabError


def _plain_huffman_cost(w):
    """Independent reference: optimal (unlimited) Huffman cost with heapq."""
    h = [float(x) for x in w if x > 0]
    if len(h) < 2:
        return sum(h)
    heapq.heapify(h)
    cost = 0.0
    while len(h) > 1:
        a, b = heapq.heappop(h), heapq.heappop(h)
        cost += a + b
        heapq.heappush(h, a + b)
    return cost


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=40))
def test_unlimited_matches_huffman_cost(counts):
    w = np.array(counts)
    if (w > 0).sum() < 2:
        return
    ln = huffman.limited_lengths(w, 24)
    assert np.isclose((ln * w).sum(), _plain_huffman_cost(w)), counts
    assert huffman.kraft(ln) == pytest.approx(1.0)
    assert (ln[w == 0] == 0).all() and (ln[w > 0] > 0).all()


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=3, max_size=64), st.integers(6, 10))
def test_limited_respects_max_and_is_complete(counts, max_len):
    w = np.array(counts)
    ln = huffman.limited_lengths(w, max_len)
    assert ln.max() <= max_len
    assert huffman.kraft(ln) == pytest.approx(1.0)
    # never better than the unlimited optimum
    assert (ln * w).sum() >= _plain_huffman_cost(w) - 1e-6


def test_canonical_codes_prefix_free_and_table_decodes_every_code():
    rng = np.random.default_rng(1)
    w = rng.random(23) ** 4
    ln = huffman.limited_lengths(w, 8)
    codes = huffman.canonical_codes(ln)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, ln, strict=True) if n > 0]
    for a in words:
        for b in words:
            assert a is b or not b.startswith(a), (a, b)
    sym, tl = huffman.decode_table(ln, 8)
    for s in np.flatnonzero(ln > 0):
        idx = int(codes[s]) << (8 - int(ln[s]))
        assert sym[idx] == s and tl[idx] == ln[s]
    assert (tl > 0).all()  # complete code: every 8-bit window starts with a code


def test_canonical_order_matches_deflate_rule():
    # DEFLATE RFC 1951 example: lengths (3,3,3,3,3,2,4,4) -> codes 010,011,100,101,110,00,1110,1111
    codes = huffman.canonical_codes([3, 3, 3, 3, 3, 2, 4, 4])
    assert list(codes) == [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111]


def test_single_symbol_and_errors():
    assert list(huffman.limited_lengths([0, 5, 0], 8)) == [0, 1, 0]
    with pytest.raises(SparsefabError):
        huffman.limited_lengths([1] * 9, 3)
    with pytest.raises(SparsefabError):
        huffman.limited_lengths([1, -1], 8)
    with pytest.raises(SparsefabError, match="Kraft"):
        huffman.check_lengths([1, 1, 1], 8)
    with pytest.raises(SparsefabError):
        huffman.check_lengths([9, 1], 8)
