"""Crossbar numerics and tile schedule (compress/crossbar.py), against NumPy matmul."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsefab.compress import crossbar as xb
from sparsefab.compress import tiling
from sparsefab.compress.errors import SparsefabError


def _case(seed, rows=90, cols=75, density=0.08):
    rng = np.random.default_rng(seed)
    w = ((rng.random((rows, cols)) < density) * rng.integers(-128, 128, (rows, cols))).astype(np.int64)
    x = rng.integers(-128, 128, (3, cols))
    m = tiling.build_map(w, tile=16, row_perm=rng.permutation(rows), col_perm=rng.permutation(cols),
                         fill=0.03)
    return w, x, m


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ideal_matches_matmul(seed):
    w, x, m = _case(seed)
    assert (xb.crossbar_matvec(w, x, m) == x @ w.T).all(), f"seed={seed}"
    assert (xb.crossbar_matvec(w, x[0], m) == w @ x[0]).all(), f"seed={seed}"
    # Without the leftover: exactly the crossbar part.
    _, left = tiling.split(w, m)
    assert (xb.crossbar_matvec(w, x, m, leftover=False) == x @ (w - left).T).all()


@settings(max_examples=30, derandomize=True, deadline=None)
@given(dac=st.integers(1, 8), xbits=st.sampled_from([4, 8]), seed=st.integers(0, 1000))
def test_slicing_is_exact(dac, xbits, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << (xbits - 1)), 1 << (xbits - 1), 200)
    dac = min(dac, xbits)
    d = xb.slice_input(x, xbits, dac)
    assert (sum(d[s] << (s * dac) for s in range(d.shape[0])) == x).all(), f"seed={seed}"
    # An ADC wide enough for the full scale never changes the result.
    w = rng.integers(-128, 128, (4, 16, 16))
    num = xb.Numerics(x_bits=xbits, dac_bits=dac, adc_bits=24)
    assert (xb.tile_mvm(w, x[:16], num) == w @ x[:16]).all()


def test_adc_rounding_and_saturation():
    c = np.array([-9, -8, -7, -1, 0, 1, 7, 8, 9, 1000, -1000])
    q = xb.adc(c, adc_bits=4, adc_shift=2)
    # round half up: (c + 2) >> 2, then clip to [-8, 7]
    assert q.tolist() == [-2, -2, -2, 0, 0, 0, 2, 2, 2, 7, -8]
    assert xb.adc(c, adc_bits=8, adc_shift=0).tolist() == [-9, -8, -7, -1, 0, 1, 7, 8, 9, 127, -128]


def test_adc_error_shrinks_with_bits():
    w, x, m = _case(5)
    ref = x @ w.T
    errs = []
    for bits in (6, 8, 10, 12):
        num = xb.Numerics(adc_bits=bits, adc_shift=xb.full_scale_shift(16, adc_bits=bits))
        errs.append(np.abs(xb.crossbar_matvec(w, x, m, num) - ref).max())
    assert errs == sorted(errs, reverse=True) and errs[0] > errs[-1], errs
    full = xb.Numerics(adc_bits=20, adc_shift=xb.full_scale_shift(16, adc_bits=20))
    assert (xb.crossbar_matvec(w, x, m, full) == ref).all()


def test_accumulator_wraps():
    w = np.full((1, 4096), 127)
    x = np.full(4096, 127)
    m = tiling.build_map(w, tile=64)
    y = xb.crossbar_matvec(w, x, m, xb.Numerics(acc_bits=16))
    assert y[0] == ((127 * 127 * 4096 + (1 << 15)) % (1 << 16)) - (1 << 15)


@pytest.mark.parametrize("engines", [1, 2, 3, 4])
def test_schedule_covers_each_tile_once(engines):
    w, x, m = _case(engines, rows=200, cols=150, density=0.05)
    s = xb.schedule(m, engines)
    run = s.waves[s.waves >= 0]
    assert sorted(run.tolist()) == list(range(m.n_tiles))
    # Each tile row on one engine, contiguous, flagged first/last exactly once.
    for e in range(engines):
        idx = s.waves[:, e][s.waves[:, e] >= 0]
        tr = m.tiles[idx, 0]
        assert (np.diff(tr) >= 0).all()
        assert s.first[: idx.size, e].sum() == s.last[: idx.size, e].sum() == np.unique(tr).size
    owners = {}
    for k, e in zip(*np.nonzero(s.waves >= 0), strict=True):
        owners.setdefault(int(m.tiles[s.waves[k, e], 0]), set()).add(int(e))
    assert all(len(v) == 1 for v in owners.values())
    assert s.n_waves >= -(-m.n_tiles // engines)


def test_tile_words_layout():
    t = np.arange(2 * 16 * 16).reshape(2, 16, 16)
    words = xb.tile_words(t, 4)
    # word j*(T/L)+g holds W[g*L + l, j]
    assert words[1, 3 * 4 + 2, 1] == t[1, 2 * 4 + 1, 3]
    with pytest.raises(SparsefabError, match="lanes"):
        xb.tile_words(t, 5)


def test_bad_input():
    w, x, m = _case(0)
    with pytest.raises(SparsefabError, match="x"):
        xb.crossbar_matvec(w, x[:, :10], m)
    with pytest.raises(SparsefabError, match="outside"):
        xb.crossbar_matvec(w, x * 4, m)
    with pytest.raises(SparsefabError, match="dac_bits"):
        xb.Numerics(dac_bits=9)
