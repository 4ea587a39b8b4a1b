"""Tests for sparsefab.compress.quant: integer path bit-exactness, quantization, quant block."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsefab.compress.errors import FormatError, SparsefabError
from sparsefab.compress.quant import (
    QLayer,
    QuantParams,
    dequantize,
    layer_requant_params,
    linear_int,
    parse_quant_spec,
    quantize,
    quantize_activations,
    quantize_multiplier,
    requantize,
    spmv_int,
)

SEED = 20261122


# ----------------------------------------------------------------- independent slow references


def ref_requantize(acc, m, s, b, zp, relu, out_bits):
    """CONTRACTS.md A written with Python ints (arbitrary precision), one element."""
    t = int(acc) + int(b)
    p = t * int(m)
    r = (p + (1 << (s - 1))) >> s if s > 0 else p
    v = r + zp
    if relu:
        v = max(v, zp)
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return min(max(v, lo), hi)


def ref_spmv(W, x, acc_bits):
    out = []
    for row in W.tolist():
        acc = sum(a * b for a, b in zip(row, x.tolist(), strict=True))
        acc = ((acc + (1 << (acc_bits - 1))) % (1 << acc_bits)) - (1 << (acc_bits - 1))
        out.append(acc)
    return out


def check_requant(acc, m, s, b, zp, relu, out_bits):
    got = requantize(acc, multiplier=m, shift=s, bias=b, out_zero_point=zp, relu=relu, out_bits=out_bits)
    n = acc.shape[-1]
    mm, ss, bb = (np.broadcast_to(np.asarray(v), (n,)) for v in (m, s, b))
    flat = acc.reshape(-1, n)
    want = [[ref_requantize(flat[i, j], mm[j], int(ss[j]), bb[j], zp, relu, out_bits) for j in range(n)]
            for i in range(flat.shape[0])]
    np.testing.assert_array_equal(got.reshape(-1, n), np.array(want), err_msg=f"seed {SEED}")


# ----------------------------------------------------------------- requantize


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("out_bits", [8, 4, 16])
def test_requantize_random_bit_exact(relu, out_bits):
    rng = np.random.default_rng(SEED + out_bits + relu)
    n = 64
    acc = rng.integers(-(1 << 31), 1 << 31, size=(8, n), dtype=np.int64)
    m = rng.integers(0, 1 << 16, size=n)
    s = rng.integers(0, 48, size=n)
    b = rng.integers(-(1 << 31), 1 << 31, size=n)
    zp = int(rng.integers(-(1 << (out_bits - 1)), 1 << (out_bits - 1)))
    check_requant(acc, m, s, b, zp, relu, out_bits)


def test_requantize_realistic_scales_bit_exact():
    # Typical layer: small accumulators, shifts around 20..40, so rounding matters.
    rng = np.random.default_rng(SEED + 1)
    n = 128
    acc = rng.integers(-200_000, 200_000, size=(16, n), dtype=np.int64)
    m, s = quantize_multiplier(rng.uniform(1e-6, 1e-2, size=n))
    b = rng.integers(-5000, 5000, size=n)
    check_requant(acc, m, s, b, 3, True, 8)
    check_requant(acc, m, s, b, -7, False, 8)


def test_requantize_extremes_bit_exact():
    lim = [-(1 << 31), -(1 << 31) + 1, -1, 0, 1, (1 << 31) - 2, (1 << 31) - 1]
    acc = np.array(lim, dtype=np.int64)
    for m in (0, 1, (1 << 15), (1 << 16) - 1):
        for s in (0, 1, 2, 15, 31, 46, 47):
            for b in (-(1 << 31), 0, (1 << 31) - 1):
                for relu in (False, True):
                    check_requant(acc.reshape(-1, 1), m, s, b, 0, relu, 8)
    # Exact halves round up (toward +inf): 5/2 -> 3, -5/2 -> -2, -3/2 -> -1.
    out = requantize(np.array([5, -5, -3, 3, -1, 1]), multiplier=1, shift=1, out_bits=8)
    np.testing.assert_array_equal(out, [3, -2, -1, 2, 0, 1])
    # Saturation at both ends, and relu clamps at the zero point.
    out = requantize(np.array([10**6, -(10**6), -5]), multiplier=1, shift=0, out_zero_point=-3, relu=True)
    np.testing.assert_array_equal(out, [127, -3, -3])
    out = requantize(np.array([10**6, -(10**6)]), multiplier=1, shift=0, out_bits=4)
    np.testing.assert_array_equal(out, [7, -8])


@settings(derandomize=True, max_examples=150, deadline=None)
@given(
    acc=st.lists(st.integers(-(1 << 46), (1 << 46) - 1), min_size=1, max_size=6),
    bias=st.integers(-(1 << 46), (1 << 46) - 1),
    m=st.integers(0, (1 << 16) - 1),
    s=st.integers(0, 47),
    out_bits=st.integers(2, 32),
    zp_frac=st.floats(0, 1),
    relu=st.booleans(),
)
def test_requantize_property(acc, bias, m, s, out_bits, zp_frac, relu):
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    zp = min(hi, lo + int(zp_frac * (hi - lo + 1)))
    check_requant(np.array(acc, np.int64).reshape(-1, 1), m, s, bias, zp, relu, out_bits)


def test_requantize_t_limit():
    # |acc + bias| at the 48-bit limit is exact, beyond it is refused.
    top = (1 << 47) - 1
    check_requant(np.array([[top, -(1 << 47)]]), (1 << 16) - 1, 47, 0, 0, False, 32)
    with pytest.raises(SparsefabError, match="48-bit"):
        requantize(np.array([top]), multiplier=1, shift=0, bias=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"multiplier": 1 << 16, "shift": 0}, "multiplier"),
        ({"multiplier": -1, "shift": 0}, "multiplier"),
        ({"multiplier": 1, "shift": 48}, "shift"),
        ({"multiplier": 1, "shift": -1}, "shift"),
        ({"multiplier": 1.5, "shift": 0}, "integer"),
        ({"multiplier": 1, "shift": 0, "out_bits": 1}, "out_bits"),
        ({"multiplier": 1, "shift": 0, "out_zero_point": 128}, "out_zero_point"),
        ({"multiplier": 1, "shift": 0, "relu": 1}, "relu"),
        ({"multiplier": np.ones(3, np.int64), "shift": 0}, "length 3"),
        ({"multiplier": np.ones((2, 4), np.int64), "shift": 0}, "1-D"),
    ],
)
def test_requantize_bad_input(kwargs, match):
    with pytest.raises(SparsefabError, match=match):
        requantize(np.zeros(4, np.int64), **kwargs)


def test_requantize_rejects_float_acc():
    with pytest.raises(SparsefabError, match="integer"):
        requantize(np.zeros(4), multiplier=1, shift=0)


# ----------------------------------------------------------------- spmv_int


@pytest.mark.parametrize("acc_bits", [32, 16, 64])
def test_spmv_int_matches_python_ints(acc_bits):
    rng = np.random.default_rng(SEED + acc_bits)
    W = rng.integers(-128, 128, size=(9, 300), dtype=np.int8)
    x = rng.integers(-128, 128, size=300, dtype=np.int8)
    np.testing.assert_array_equal(spmv_int(W, x, acc_bits=acc_bits), ref_spmv(W, x, acc_bits))
    X = rng.integers(-128, 128, size=(3, 300), dtype=np.int8)
    got = spmv_int(W, X, acc_bits=acc_bits)
    assert got.shape == (3, 9) and got.dtype == np.int64
    for i in range(3):
        np.testing.assert_array_equal(got[i], ref_spmv(W, X[i], acc_bits))


def test_spmv_int_wraps_like_hardware():
    # Big codes force the exact int64 path; 32-bit wrap must still be right.
    W = np.full((2, 4), (1 << 20), np.int64)
    x = np.full(4, (1 << 12) - 1, np.int64)
    np.testing.assert_array_equal(spmv_int(W, x, acc_bits=32), ref_spmv(W, x, 32))
    W = np.full((1, 3), 1 << 40, np.int64)
    x = np.full(3, 1 << 20, np.int64)
    np.testing.assert_array_equal(spmv_int(W, x, acc_bits=64), ref_spmv(W, x, 64))


def test_spmv_int_bad_input():
    W = np.zeros((2, 3), np.int8)
    with pytest.raises(SparsefabError, match="integer"):
        spmv_int(W.astype(float), np.zeros(3, np.int8))
    with pytest.raises(SparsefabError, match="2-D"):
        spmv_int(np.zeros(3, np.int8), np.zeros(3, np.int8))
    with pytest.raises(SparsefabError, match="does not match"):
        spmv_int(W, np.zeros(4, np.int8))
    with pytest.raises(SparsefabError, match="acc_bits"):
        spmv_int(W, np.zeros(3, np.int8), acc_bits=65)


# ----------------------------------------------------------------- quantize_multiplier


def test_quantize_multiplier_precision_and_ranges():
    rng = np.random.default_rng(SEED + 2)
    real = np.concatenate([rng.uniform(0, 1, 500), 10.0 ** rng.uniform(-9, 4.5, 500)])
    m, s = quantize_multiplier(real)
    assert m.dtype == np.int64 and ((m >= 0) & (m < 1 << 16)).all() and ((s >= 0) & (s <= 47)).all()
    normal = (real >= 2.0**-32) & (real < 65535)
    assert (m[normal] >= 1 << 15).all()
    rel = np.abs(m[normal] / 2.0 ** s[normal] - real[normal]) / real[normal]
    assert rel.max() <= 2.0**-16, f"seed {SEED + 2}"
    for r in (0.5, 1.0, 0.3, 1e-7, 123.456, 2.0**-31.5):
        mm, ss = quantize_multiplier(r)
        assert isinstance(mm, int) and 1 << 15 <= mm < 1 << 16
        assert mm == int(np.floor(r * 2.0**ss + 0.5))


def test_quantize_multiplier_edges():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(1e6) == ((1 << 16) - 1, 0)
    assert quantize_multiplier(1.0) == (1 << 15, 15)
    # rounding carries into the next power of two
    assert quantize_multiplier(1.0 - 2.0**-20) == (1 << 15, 15)
    m, s = quantize_multiplier(2.0**-50)
    assert s == 47 and m == 0
    m, s = quantize_multiplier(2.0**-40)
    assert s == 47 and m == 128
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(SparsefabError):
            quantize_multiplier(bad)


# ----------------------------------------------------------------- quantize / dequantize


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran", ["tensor", "channel", "group"])
def test_round_trip_error_bound(bits, symmetric, gran):
    rng = np.random.default_rng(SEED + bits)
    w = rng.normal(size=(12, 50)) * rng.uniform(0.1, 3, size=(12, 1))
    kw = {"group_size": 16} if gran == "group" else {}
    codes, p = quantize(w, bits=bits, granularity=gran, symmetric=symmetric, **kw)
    assert codes.dtype == np.int8 and codes.shape == w.shape
    assert codes.min() >= -(1 << (bits - 1)) and codes.max() <= (1 << (bits - 1)) - 1
    s, z = p.expand(w.shape)
    dq = dequantize(codes, p)
    assert dq.dtype == np.float32
    # min-max: every value inside the clip range, so error <= scale / 2
    err = np.abs(dq.astype(np.float64) - w)
    assert (err <= s / 2 * (1 + 1e-6) + 1e-7).all(), f"seed {SEED + bits}"
    if symmetric:
        assert (z == 0).all()
        assert (dequantize(np.zeros_like(codes), p) == 0).all()


@pytest.mark.parametrize("calib", ["percentile:99", "mse"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_bound_inside_clip_range(calib, symmetric):
    rng = np.random.default_rng(SEED + 12)
    w = rng.standard_t(df=3, size=(8, 200))
    codes, p = quantize(w, bits=4, granularity="channel", symmetric=symmetric, calib=calib)
    s, z = (np.broadcast_to(a, w.shape) for a in p.expand(w.shape))
    lo, hi = (p.qmin - z) * s, (p.qmax - z) * s  # representable range (contains the clip range)
    inside = (w >= lo - s / 2) & (w <= hi + s / 2)
    assert (~inside).any(), "test data should exercise clipping"
    dq = dequantize(codes, p).astype(np.float64)
    err = np.abs(dq - w)
    assert (err[inside] <= s[inside] / 2 * (1 + 1e-6) + 1e-7).all(), f"seed {SEED + 12}"
    # outside, the value saturates at the nearest end of the range
    above, below = w > hi + s / 2, w < lo - s / 2
    np.testing.assert_allclose(dq[above], hi[above], rtol=1e-6)
    np.testing.assert_allclose(dq[below], lo[below], rtol=1e-6)


def test_group_layout_and_ragged_tail():
    rng = np.random.default_rng(SEED + 3)
    w = rng.normal(size=(3, 10))
    w[1, 8:] *= 100  # the ragged last group of row 1 has its own scale
    codes, p = quantize(w, bits=8, granularity="group", group_size=4)
    assert p.scale.size == 3 * 3 and p.group_size == 4
    np.testing.assert_allclose(p.scale[1 * 3 + 2], np.abs(w[1, 8:]).max() / 127, rtol=1e-6)
    np.testing.assert_allclose(p.scale[0], np.abs(w[0, :4]).max() / 127, rtol=1e-6)
    codes_t, p_t = quantize(w.T, bits=8, granularity="group", group_size=4, axis=1)
    np.testing.assert_array_equal(codes_t, codes.T)
    np.testing.assert_array_equal(p_t.scale, p.scale)


@pytest.mark.parametrize("cols", [32, 30])
@pytest.mark.parametrize("calib", ["minmax", "percentile:95", "mse"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_group_equals_per_slice_tensor_quantization(cols, calib, symmetric):
    # Independent reference: quantize every (row, group) slice on its own as one tensor.
    rng = np.random.default_rng(SEED + cols)
    w = rng.standard_t(df=3, size=(5, cols))
    G = 8
    codes, p = quantize(w, bits=4, granularity="group", group_size=G, calib=calib, symmetric=symmetric)
    ng = -(-cols // G)
    for r in range(5):
        for g in range(ng):
            c1, p1 = quantize(w[r, g * G:(g + 1) * G], bits=4, calib=calib, symmetric=symmetric)
            np.testing.assert_array_equal(codes[r, g * G:(g + 1) * G], c1, err_msg=f"row {r} group {g}")
            assert p.scale[r * ng + g] == p1.scale[0] and p.zero_point[r * ng + g] == p1.zero_point[0]


def test_channel_axis():
    rng = np.random.default_rng(SEED + 4)
    w = rng.normal(size=(5, 7)) * np.arange(1, 8)
    _, p0 = quantize(w, bits=8, granularity="channel", axis=0)
    _, p1 = quantize(w, bits=8, granularity="channel", axis=1)
    np.testing.assert_allclose(p0.scale, np.abs(w).max(axis=1) / 127, rtol=1e-6)
    np.testing.assert_allclose(p1.scale, np.abs(w).max(axis=0) / 127, rtol=1e-6)


def test_asymmetric_uses_full_range_and_exact_zero():
    rng = np.random.default_rng(SEED + 5)
    x = np.abs(rng.normal(size=1000))
    x[0] = 0.0
    codes, scale, zp = quantize_activations(x)
    assert zp == -128 and codes.min() == -128 and codes.max() == 127
    assert codes[0] == zp
    np.testing.assert_allclose((codes.astype(float) - zp) * scale, x, atol=scale / 2 + 1e-7)


def test_percentile_clips():
    rng = np.random.default_rng(SEED + 6)
    w = rng.normal(size=10000)
    w[0] = 100.0
    _, pmin = quantize(w, bits=8, calib="minmax")
    _, ppct = quantize(w, bits=8, calib="percentile:99.9")
    assert ppct.scale[0] < pmin.scale[0] / 10
    np.testing.assert_allclose(ppct.scale[0], np.percentile(np.abs(w), 99.9) / 127, rtol=1e-6)


@pytest.mark.parametrize("bits, gain", [(2, 0.7), (4, 0.8), (8, 1.0)])
def test_mse_beats_minmax_on_heavy_tails(bits, gain):
    # Student-t (df=3) weights: clipping the tails pays at low bit widths.  At 8 bits the
    # grid includes ratio 1.0, so MSE calibration can never be worse than min-max.
    rng = np.random.default_rng(SEED + 7)
    w = rng.standard_t(df=3, size=(16, 512))
    errs = {}
    for calib in ("minmax", "mse", "percentile:99.9"):
        codes, p = quantize(w, bits=bits, granularity="channel", calib=calib)
        errs[calib] = float(((dequantize(codes, p) - w) ** 2).mean())
    assert errs["mse"] <= errs["minmax"] * gain, (errs, SEED + 7)
    assert errs["mse"] <= errs["percentile:99.9"] * 1.0001, (errs, SEED + 7)


def test_all_zero_channel_and_none_kind():
    w = np.zeros((2, 3))
    w[1] = [1.0, -2.0, 0.5]
    codes, p = quantize(w, bits=4, granularity="channel")
    assert (codes[0] == 0).all() and p.scale[0] == 1.0
    none = QuantParams.none(8)
    np.testing.assert_array_equal(dequantize(np.array([[-128, 5]], np.int8), none), [[-128.0, 5.0]])


@pytest.mark.parametrize(
    "w, kwargs, match",
    [
        (np.array([1.0, np.nan]), {"bits": 8}, "non-finite"),
        (np.array([1.0, np.inf]), {"bits": 8}, "non-finite"),
        (np.ones(3), {"bits": 9}, "bits"),
        (np.ones(3), {"bits": 1}, "bits"),
        (np.ones(3), {"bits": 8, "granularity": "group", "group_size": 2}, "2-D"),
        (np.ones((2, 3)), {"bits": 8, "granularity": "group"}, "group_size"),
        (np.ones((2, 3)), {"bits": 8, "granularity": "tensor", "group_size": 3}, "group_size"),
        (np.ones((2, 3)), {"bits": 8, "granularity": "row"}, "granularity"),
        (np.ones((2, 3)), {"bits": 8, "calib": "percentile:101"}, "percentile"),
        (np.ones((2, 3)), {"bits": 8, "calib": "max"}, "calib"),
        (np.ones((2, 3)), {"bits": 8, "granularity": "channel", "axis": 2}, "axis"),
        (np.array(["a"]), {"bits": 8}, "dtype"),
        (np.zeros((0, 3)), {"bits": 8}, "empty"),
        (np.float64(1.0), {"bits": 8}, "scalar"),
        (np.array([1e300, -1e300]), {"bits": 8, "symmetric": False}, "float32"),
    ],
)
def test_quantize_bad_input(w, kwargs, match):
    with pytest.raises(SparsefabError, match=match):
        quantize(w, **kwargs)


def test_dequantize_bad_input():
    codes, p = quantize(np.ones((2, 4)), bits=4, granularity="channel")
    with pytest.raises(SparsefabError, match="outside"):
        dequantize(np.full((2, 4), 8), p)
    with pytest.raises(SparsefabError, match="needs"):
        dequantize(np.zeros((3, 4), np.int8), p)
    with pytest.raises(SparsefabError, match="integer"):
        dequantize(codes.astype(float), p)


# ----------------------------------------------------------------- quant block


def _all_params():
    rng = np.random.default_rng(SEED + 8)
    w = rng.normal(size=(6, 10))
    yield QuantParams.none(4)
    for sym in (True, False):
        yield quantize(w, bits=8, granularity="tensor", symmetric=sym)[1]
        yield quantize(w, bits=4, granularity="channel", symmetric=sym)[1]
        yield quantize(w, bits=2, granularity="group", group_size=3, symmetric=sym)[1]
        yield quantize(w, bits=8, granularity="channel", axis=1, symmetric=sym)[1]


def test_quant_block_round_trip():
    for p in _all_params():
        blob = p.to_bytes()
        assert len(blob) % 8 == 0
        q, used = QuantParams.from_bytes(blob + b"tail")
        assert used == len(blob) and q == p
        n = p.scale.size
        assert len(blob) == 16 + -(-4 * n * (1 if p.symmetric else 2) // 8) * 8


def test_quant_block_truncated_everywhere():
    for p in _all_params():
        blob = p.to_bytes()
        for cut in range(len(blob)):
            with pytest.raises(FormatError):
                QuantParams.from_bytes(blob[:cut])


@settings(derandomize=True, max_examples=200, deadline=None)
@given(data=st.data())
def test_quant_block_fuzz_never_crashes(data):
    # Any mutation of a valid block parses to valid params or raises FormatError, nothing else.
    blobs = [p.to_bytes() for p in _all_params()]
    blob = bytearray(data.draw(st.sampled_from(blobs)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    blob = bytes(blob[: data.draw(st.integers(0, len(blob)))])
    try:
        q, used = QuantParams.from_bytes(blob)
    except FormatError:
        return
    assert used <= len(blob) and q.to_bytes() == blob[:used]


def _patch(blob, off, fmt, value):
    import struct

    b = bytearray(blob)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


@pytest.mark.parametrize(
    "off, fmt, value, match",
    [
        (0, "<2s", b"XX", "magic"),
        (2, "<B", 2, "version"),
        (3, "<B", 9, "kind"),
        (4, "<B", 9, "bits"),
        (4, "<B", 1, "bits"),
        (5, "<B", 0x81, "flags"),
        (7, "<B", 1, "reserved"),
        (12, "<I", 0xFFFFFFFF, "need"),
        (12, "<I", 0, "0 scales"),
        (16, "<f", float("nan"), "scale"),
        (16, "<f", -1.0, "scale"),
        (16, "<f", 0.0, "scale"),
        (8, "<I", 5, "group size"),
        (6, "<B", 3, "axis"),
    ],
)
def test_quant_block_forged(off, fmt, value, match):
    rng = np.random.default_rng(SEED + 9)
    _, p = quantize(rng.normal(size=(5, 4)), bits=8, granularity="channel", axis=1)
    with pytest.raises(FormatError, match=match):
        QuantParams.from_bytes(_patch(p.to_bytes(), off, fmt, value))


def test_quant_block_forged_asym_and_padding():
    rng = np.random.default_rng(SEED + 10)
    _, p = quantize(rng.normal(size=(3, 4)), bits=4, granularity="channel", symmetric=False)
    blob = p.to_bytes()
    with pytest.raises(FormatError, match="zero_point"):
        QuantParams.from_bytes(_patch(blob, 16 + 4 * 3, "<i", 8))
    _, p = quantize(rng.normal(size=(3, 4)), bits=4, granularity="channel")
    blob = p.to_bytes()  # 3 scales -> 4 bytes of padding
    with pytest.raises(FormatError, match="padding"):
        QuantParams.from_bytes(_patch(blob, len(blob) - 1, "<B", 1))
    with pytest.raises(FormatError, match="needs"):
        p.check_shape((4, 4))


# ----------------------------------------------------------------- spec parser


def test_parse_quant_spec():
    assert parse_quant_spec("per-channel") == {"granularity": "channel", "group_size": None, "symmetric": True}
    assert parse_quant_spec("per-tensor")["granularity"] == "tensor"
    assert parse_quant_spec("group:128") == {"granularity": "group", "group_size": 128, "symmetric": True}
    assert parse_quant_spec("group:16,asym")["symmetric"] is False
    for bad in ("", "channel", "group:", "group:0", "group:-4", "group:1.5", "per-channel,foo", None):
        with pytest.raises(SparsefabError, match="--quant"):
            parse_quant_spec(bad)


# ----------------------------------------------------------------- layers


def test_linear_int_tracks_float_layer():
    rng = np.random.default_rng(SEED + 11)
    W = rng.normal(size=(32, 64)) * 0.2
    bias = rng.normal(size=32) * 0.1
    X = np.abs(rng.normal(size=(50, 64)))
    wc, wp = quantize(W, bits=8, granularity="channel")
    xc, xs, xz = quantize_activations(X)
    Y = np.maximum(X @ W.T + bias, 0)
    _, ys, yz = quantize_activations(Y)
    ql = layer_requant_params(wp.scale, xs, ys, bias, W_codes=wc, x_zero_point=xz, y_zero_point=yz)
    y = linear_int(wc, xc, ql, relu=True)
    assert y.shape == (50, 32) and y.dtype == np.int32
    yf = (y - yz) * ys
    assert np.abs(yf - Y).max() < 0.03 * np.abs(Y).max(), f"seed {SEED + 11}"
    # the same integers as calling the two stages by hand
    acc = spmv_int(wc, xc)
    np.testing.assert_array_equal(
        y, requantize(acc, multiplier=ql.multiplier, shift=ql.shift, bias=ql.bias, out_zero_point=yz, relu=True)
    )


def test_layer_params_bad_input():
    with pytest.raises(SparsefabError, match="W_codes"):
        layer_requant_params(np.ones(3), 0.1, 0.1, x_zero_point=5)
    with pytest.raises(SparsefabError, match="> 0"):
        layer_requant_params(np.ones(3), 0.0, 0.1)
    with pytest.raises(SparsefabError, match="int32"):
        layer_requant_params(np.full(2, 1e-6), 1e-6, 0.1, np.array([1e3, 0.0]))
    with pytest.raises(SparsefabError, match="lengths differ"):
        QLayer(np.zeros(2, np.int64), np.zeros(3, np.int64), np.zeros(3, np.int64))
