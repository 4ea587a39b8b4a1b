"""Tests for sparsefab.compress.prune."""

import numpy as np
import pytest

from sparsefab.compress.errors import SparsefabError
from sparsefab.compress.prune import (
    parse_prune_spec,
    prune,
    prune_blocks,
    prune_cols,
    prune_magnitude,
    prune_nm,
    prune_quant_aware,
    prune_rows,
    prune_wanda,
    sparsity,
)
from sparsefab.compress.quant import dequantize, parse_quant_spec, quantize

SEED = 20261122


def test_parse_prune_spec():
    assert parse_prune_spec("magnitude:0.75") == {"method": "magnitude", "sparsity": 0.75, "scope": "global"}
    assert parse_prune_spec("magnitude:0.5:row")["scope"] == "row"
    assert parse_prune_spec("wanda:0.5") == {"method": "wanda", "sparsity": 0.5}
    assert parse_prune_spec("nm:2:4") == {"method": "nm", "n": 2, "m": 4}
    assert parse_prune_spec("nm:1:8")["m"] == 8
    assert parse_prune_spec("rows:0.25") == {"method": "rows", "sparsity": 0.25}
    assert parse_prune_spec("cols:0.25")["method"] == "cols"
    assert parse_prune_spec("blocks:0.5:4x4") == {"method": "blocks", "sparsity": 0.5, "block": (4, 4)}
    assert parse_prune_spec("blocks:0.5:1x8")["block"] == (1, 8)
    assert parse_prune_spec("qa:0.5") == {"method": "qa", "sparsity": 0.5, "balance_block": None}
    assert parse_prune_spec("qa:0.5:16")["balance_block"] == 16


@pytest.mark.parametrize(
    "spec",
    ["", "magnitude", "magnitude:", "magnitude:x", "magnitude:1.5", "magnitude:-0.1", "magnitude:0.5:col",
     "wanda:0.5:1", "nm:4:2", "nm:2:2", "nm:0:4", "nm:2", "nm:2:4:8", "nm:a:b", "rows:", "blocks:0.5",
     "blocks:0.5:4", "blocks:0.5:0x4", "blocks:0.5:4x4x4", "qa:0.5:0", "random:0.5", "nm:1:512", None],
)
def test_parse_prune_spec_bad(spec):
    with pytest.raises(SparsefabError, match="--prune"):
        parse_prune_spec(spec)


def test_sparsity():
    assert sparsity(np.array([[0, 1], [0, 0]])) == 0.75
    assert sparsity(np.zeros((0, 3))) == 0.0


# ----------------------------------------------------------------- unstructured


@pytest.mark.parametrize("s", [0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
@pytest.mark.parametrize("scope", ["global", "row"])
def test_magnitude_sparsity_and_threshold(s, scope):
    rng = np.random.default_rng(SEED)
    w = rng.normal(size=(37, 53)).astype(np.float32)
    r = prune_magnitude(w, s, scope=scope)
    assert r.weights.dtype == np.float32 and r.weights.shape == w.shape
    if scope == "global":
        assert np.count_nonzero(r.weights == 0) == int(np.floor(s * w.size + 0.5)), f"seed {SEED}"
        kept, dropped = np.abs(w[r.mask]), np.abs(w[~r.mask])
        if kept.size and dropped.size:
            assert kept.min() >= dropped.max()
    else:
        per_row = np.count_nonzero(r.weights == 0, axis=1)
        assert (per_row == int(np.floor(s * 53 + 0.5))).all()
    np.testing.assert_array_equal(r.weights[r.mask], w[r.mask])
    assert r.sparsity == sparsity(r.weights) and r.target == s


def test_magnitude_ties_are_deterministic_by_index():
    w = np.array([[1.0, 1.0, 1.0, 1.0], [2.0, -1.0, 1.0, 3.0]])
    r = prune_magnitude(w, 0.25)  # 2 of 8: both are |1| ties, the lowest indices go
    np.testing.assert_array_equal(r.mask, [[False, False, True, True], [True, True, True, True]])
    r = prune_magnitude(np.array([[0, -128, 5, 127]], np.int8), 0.5)  # int8 -128 must not overflow abs
    np.testing.assert_array_equal(r.weights, [[0, -128, 0, 127]])


def test_magnitude_counts_existing_zeros():
    w = np.array([[0.0, 0.0, 1.0, 2.0, 3.0, 4.0]])
    r = prune_magnitude(w, 0.5)
    np.testing.assert_array_equal(r.weights, [[0, 0, 0, 2, 3, 4]])
    assert r.sparsity == 0.5


def test_wanda_equals_magnitude_with_equal_column_norms():
    rng = np.random.default_rng(SEED + 1)
    w = rng.normal(size=(16, 32))
    # orthogonal-ish construction: every column of X has norm exactly 2
    X = np.zeros((64, 32))
    X[np.arange(32) * 2, np.arange(32)] = 2.0
    X[np.arange(32) * 2 + 1, np.arange(32)] = 0.0
    for s in (0.25, 0.5, 0.75):
        a = prune_wanda(w, s, X)
        b = prune_magnitude(w, s, scope="row")
        np.testing.assert_array_equal(a.mask, b.mask, err_msg=f"seed {SEED + 1}")


def test_wanda_uses_activation_norms():
    w = np.array([[1.0, 2.0, 3.0, 4.0]])
    X = np.array([[100.0, 1.0, 1.0, 0.1]])  # scores 100, 2, 3, 0.4
    r = prune_wanda(w, 0.5, X)
    np.testing.assert_array_equal(r.mask, [[True, False, True, False]])
    with pytest.raises(SparsefabError, match="calib"):
        prune_wanda(w, 0.5, np.ones((3, 5)))
    with pytest.raises(SparsefabError, match="non-finite"):
        prune_wanda(w, 0.5, np.array([[np.nan, 1, 1, 1]]))
    with pytest.raises(SparsefabError, match="required"):
        prune(w, "wanda:0.5")


# ----------------------------------------------------------------- N:M


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (1, 2), (3, 16), (2, 32)])
@pytest.mark.parametrize("cols", [64, 70])
def test_nm_structure_exact(n, m, cols):
    rng = np.random.default_rng(SEED + n * 100 + m)
    w = rng.normal(size=(9, cols))
    r = prune_nm(w, n, m)
    full = cols // m
    nz = (r.weights != 0)
    groups = nz[:, : full * m].reshape(9, full, m).sum(axis=2)
    assert (groups == n).all(), f"seed {SEED + n * 100 + m}"
    tail = cols - full * m
    if tail:
        assert (nz[:, full * m:].sum(axis=1) == min(n, tail)).all()
    # the kept ones are the largest of their group
    g = np.abs(w[:, : full * m]).reshape(9, full, m)
    k = nz[:, : full * m].reshape(9, full, m)
    assert (np.where(k, g, np.inf).min(axis=2) >= np.where(k, -np.inf, g).max(axis=2)).all()


def test_nm_with_existing_zeros_and_ties():
    w = np.array([[0.0, 0.0, 0.0, 5.0, 1.0, 1.0, 1.0, 1.0, 7.0, 7.0]])
    r = prune_nm(w, 2, 4)
    np.testing.assert_array_equal(r.mask, [[True, False, False, True, True, True, False, False, True, True]])
    np.testing.assert_array_equal(r.weights, [[0, 0, 0, 5, 1, 1, 0, 0, 7, 7]])
    with pytest.raises(SparsefabError, match="N:M"):
        prune_nm(w, 4, 4)
    with pytest.raises(SparsefabError, match="integer"):
        prune_nm(w, 2.0, 4)


# ----------------------------------------------------------------- structured


def test_rows_cols_blocks():
    rng = np.random.default_rng(SEED + 2)
    w = rng.normal(size=(20, 30)) * rng.uniform(0.1, 2, size=(20, 1))
    r = prune_rows(w, 0.25)
    zero_rows = (r.weights == 0).all(axis=1)
    assert zero_rows.sum() == 5 and r.sparsity == 0.25
    norms = np.linalg.norm(w, axis=1)
    assert norms[zero_rows].max() <= norms[~zero_rows].min()
    r = prune_cols(w, 0.3)
    zero_cols = (r.weights == 0).all(axis=0)
    assert zero_cols.sum() == 9 and abs(r.sparsity - 0.3) < 1e-12
    norms = np.linalg.norm(w, axis=0)
    assert norms[zero_cols].max() <= norms[~zero_cols].min()
    r = prune_blocks(w, 0.5, (4, 5))
    blocks = r.mask.reshape(5, 4, 6, 5)
    assert (blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3))).all()  # whole blocks only
    assert (~blocks.any(axis=(1, 3))).sum() == 15 and r.sparsity == 0.5


def test_blocks_ragged_edges():
    w = np.ones((5, 7))
    w[4, :] = 10.0  # the ragged bottom row of blocks has a large RMS
    r = prune_blocks(w, 0.5, (2, 3))  # 3x3 blocks, edges of 1 row / 1 column
    assert r.mask[4].all()
    assert (~r.mask.reshape(-1)).sum() > 0
    with pytest.raises(SparsefabError, match="block"):
        prune_blocks(w, 0.5, (0, 2))
    with pytest.raises(SparsefabError, match="block"):
        prune_blocks(w, 0.5, "4x4")


# ----------------------------------------------------------------- quantization-aware


def test_quant_aware_counts_zero_codes():
    rng = np.random.default_rng(SEED + 3)
    w = rng.normal(size=(8, 64))
    w[:, 0] = 12.0  # outlier: most 4-bit codes round to 0 already
    codes, _ = quantize(w, bits=4, granularity="channel")
    already = float((codes == 0).mean())
    assert already > 0.5
    r = prune_quant_aware(w, 0.3, bits=4)
    assert r.sparsity == already and r.weights.dtype == np.int8  # target below what quantization gives
    np.testing.assert_array_equal(r.weights, codes)
    r = prune_quant_aware(w, 0.9, bits=4)
    assert r.sparsity == np.floor(0.9 * w.size + 0.5) / w.size
    assert ((r.weights == 0) | (r.weights == codes)).all()
    np.testing.assert_allclose(dequantize(r.weights, r.quant)[r.weights != 0], w[r.weights != 0], atol=12 / 7 / 2 + 1e-6)


@pytest.mark.parametrize("B, cols", [(16, 64), (16, 70), (8, 40)])
def test_quant_aware_balanced_blocks(B, cols):
    rng = np.random.default_rng(SEED + B + cols)
    w = rng.normal(size=(12, cols))
    s = 0.75
    r = prune_quant_aware(w, s, bits=8, balance_block=B)
    nz = r.weights != 0
    full = cols // B
    per_block = nz[:, : full * B].reshape(12, full, B).sum(axis=2)
    assert (per_block == B - int(np.floor(s * B + 0.5))).all(), f"seed {SEED + B + cols}"
    tail = cols - full * B
    if tail:
        assert (nz[:, full * B:].sum(axis=1) <= tail - int(np.floor(s * tail + 0.5))).all()


def test_quant_aware_integer_codes():
    codes = np.array([[0, 3, -2, 1], [7, -8, 0, 0]], np.int8)
    r = prune_quant_aware(codes, 0.5, bits=4)
    assert r.quant.granularity == "none"
    np.testing.assert_array_equal(r.weights, [[0, 3, -2, 0], [7, -8, 0, 0]])
    with pytest.raises(SparsefabError, match="does not fit 4 bits"):
        prune_quant_aware(np.array([[9, 0]]), 0.5, bits=4)


# ----------------------------------------------------------------- dispatcher / bad input


def test_prune_dispatcher():
    rng = np.random.default_rng(SEED + 4)
    w = rng.normal(size=(16, 32)).astype(np.float32)
    X = rng.normal(size=(40, 32))
    for spec, want in [("magnitude:0.75", 0.75), ("wanda:0.5", 0.5), ("nm:2:4", 0.5), ("rows:0.25", 0.25),
                       ("cols:0.25", 0.25), ("blocks:0.5:4x4", 0.5), ("qa:0.5", 0.5), ("qa:0.5:8", 0.5)]:
        r = prune(w, spec, calib=X)
        assert abs(r.sparsity - want) < 1e-9, (spec, r.sparsity)
    r = prune(w, "qa:0.5", bits=4, quant=parse_quant_spec("group:8"))
    assert r.quant.granularity == "group" and r.quant.bits == 4


@pytest.mark.parametrize(
    "w, match",
    [
        (np.array([[1.0, np.nan]]), "non-finite"),
        (np.array([[1.0, np.inf]]), "non-finite"),
        (np.ones(4), "2-D"),
        (np.ones((2, 2, 2)), "2-D"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_bad_weights(w, match):
    for spec in ("magnitude:0.5", "nm:2:4", "rows:0.5", "blocks:0.5:2x2", "qa:0.5"):
        with pytest.raises(SparsefabError, match=match):
            prune(w, spec)


def test_bad_sparsity():
    for s in (-0.1, 1.5, "0.5", True, float("nan")):
        with pytest.raises(SparsefabError, match="sparsity"):
            prune_magnitude(np.ones((2, 2)), s)
    with pytest.raises(SparsefabError, match="scope"):
        prune_magnitude(np.ones((2, 2)), 0.5, scope="col")
