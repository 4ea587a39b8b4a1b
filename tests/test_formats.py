"""Format registry: every format round-trips, info() is exact, storage_table shows the known effect."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from format_cases import SETTINGS, code_matrices
from hypothesis import given
from hypothesis import strategies as st

from sparsefab.compress import container, formats
from sparsefab.compress.errors import FormatError, SparsefabError
from sparsefab.compress.quant import QuantParams, quantize


@SETTINGS
@given(code_matrices(max_cols=100))
def test_every_format_roundtrips(case):
    a, bits = case
    for name in formats.NAMES:
        params = {}
        if name == "nm":
            n = max(1, int(np.count_nonzero(np.pad(a, ((0, 0), (0, -a.shape[1] % 8))).reshape(a.shape[0], -1, 8),
                                            axis=2).max()))
            if n >= 8:
                continue
            params = {"n": n, "m": 8}
        data = formats.encode(a, name, bits=bits, **params)
        codes, q = formats.decode(data)
        np.testing.assert_array_equal(codes, a, err_msg=name)
        assert codes.dtype == np.int8 and q == QuantParams.none(bits)
        d = formats.info(data)
        assert d["format"] == name and d["shape"] == list(a.shape) and d["bits"] == bits
        assert d["nnz"] == np.count_nonzero(a)
        assert d["bytes_total"] == len(data)
        assert (d["bytes_header"] + d["bytes_meta"] + d["bytes_index"] + d["bytes_values"]
                + d["bytes_padding"] == len(data))
        assert 0 <= d["bytes_padding"] < 24


def test_quant_params_travel_with_every_format():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((12, 40)).astype(np.float32)
    w[np.abs(w) < 0.8] = 0
    for gran, gs in (("tensor", None), ("channel", None), ("group", 16)):
        codes, q = quantize(w, bits=4, granularity=gran, group_size=gs)
        for name in ("dense", "bitmap", "csr", "rle", "coo"):
            data = formats.encode(codes, name, bits=4, quant=q)
            c2, q2 = formats.decode(data)
            np.testing.assert_array_equal(c2, codes)
            assert q2 == q, (name, gran)
            assert formats.info(data)["bytes_quant"] == len(q.to_bytes())


def test_quant_mismatch_rejected():
    _, q = quantize(np.ones((3, 4), np.float32), bits=8, granularity="channel")
    with pytest.raises(SparsefabError, match="8-bit codes, the format stores 4-bit"):
        formats.encode(np.zeros((3, 4), np.int8), "bitmap", bits=4, quant=q)
    with pytest.raises(SparsefabError, match="3 scales"):
        formats.encode(np.zeros((5, 4), np.int8), "csr", bits=8, quant=q)


def test_bad_arguments():
    with pytest.raises(SparsefabError, match="format 'zip'"):
        formats.encode(np.zeros((2, 2), np.int8), "zip")
    with pytest.raises(SparsefabError, match="unknown parameter 'block'"):
        formats.encode(np.zeros((2, 2), np.int8), "csr", block=16)
    with pytest.raises(FormatError, match="bad magic"):
        formats.decode(b"PK\x03\x04" + bytes(100))
    with pytest.raises(FormatError, match="truncated"):
        formats.info(b"SFWT")


def _prune_random(shape, sparsity, bits, seed):
    """Random nonzero codes with exactly round(sparsity * size) of them, at random places, set to 0."""
    rng = np.random.default_rng(seed)
    hi = (1 << (bits - 1)) - 1
    a = rng.integers(1, hi + 1, size=shape) * rng.choice([-1, 1], size=shape)
    a.reshape(-1)[rng.permutation(a.size)[: round(sparsity * a.size)]] = 0
    return a


@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7, 0.75])
@pytest.mark.parametrize("shape", [(128, 512), (64, 100), (300, 784)])
def test_known_effect_index_share(sparsity, shape):
    """8 -> 4 bits: the index share grows for CSR and RLE; bitmap's stays the smallest.

    Unstructured random pruning at an exact sparsity (quantization adds no extra zeros
    here).  The bitmap costs 1/(1-s) index bits per nonzero, EIE's RLE 4 bits (+ padding
    entries): they break even at s = 75 %, where the bitmap's row padding to the bus word
    decides (docs/FORMATS.md, "Which format when").
    """
    seed = int(sparsity * 100) * 1000 + shape[1]
    share = {}
    for bits in (8, 4):
        codes = _prune_random(shape, sparsity, bits, seed)
        _, q = quantize(np.ones(shape, np.float32), bits=bits, granularity="channel")
        table = {r["format"]: r for r in formats.storage_table(codes, bits, quant=q)}
        share[bits] = {k: v["index_share"] for k, v in table.items() if v["applicable"]}
        sparse = {k: v for k, v in share[bits].items() if k in ("csr", "rle", "coo")}
        if sparsity < 0.75:
            assert share[bits]["bitmap"] < min(sparse.values()), (seed, bits, share[bits])
        else:
            # break-even with 4-bit runs (4 index bits per nonzero each): the bitmap is within
            # its bus-word row padding of RLE and far below CSR and COO
            assert share[bits]["bitmap"] < 1.03 * share[bits]["rle"], (seed, bits, share[bits])
            assert share[bits]["bitmap"] < min(share[bits]["csr"], share[bits]["coo"]), (seed, bits, share[bits])
    for name in ("csr", "rle"):
        assert share[4][name] > share[8][name], (seed, name, share)


def test_storage_table_rows():
    a = _prune_random((16, 64), 0.5, 8, seed=5)
    table = formats.storage_table(a, 8, nm=(2, 4))
    by = {r["format"]: r for r in table}
    assert by["nm"]["applicable"] is False and "not 2:4" in by["nm"]["reason"]
    for r in table:
        if r["applicable"]:
            data = formats.encode(a, r["format"], bits=8, **({} if r["format"] != "bitmap" else
                                                              {"block": 16, "bus_bits": 64}))
            assert r["bytes_total"] == len(data)
    assert by["dense"]["ratio_vs_dense"] == 1.0
    text = formats.format_table(table)
    assert "bitmap B=16 W=64" in text and "n/a" in text


@SETTINGS
@given(code_matrices(max_rows=6, max_cols=40), st.sampled_from(formats.NAMES), st.data())
def test_forged_files_never_crash(case, name, data):
    """Random byte edits with a recomputed CRC: decode returns a valid matrix or raises FormatError."""
    a, bits = case
    params = {"n": 1, "m": 64} if name == "nm" else {}
    if name == "nm":
        a = a * (np.arange(a.shape[1]) % 64 == 0)  # at most 1 nonzero per group of 64
    blob = bytearray(formats.encode(a, name, bits=bits, **params))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        if pos in range(60, 64):
            continue
        blob[pos] = data.draw(st.integers(0, 255))
    blob[60:64] = struct.pack("<I", zlib.crc32(bytes(blob[64:]), zlib.crc32(bytes(blob[:60]))) & 0xFFFFFFFF)
    try:
        codes, q = formats.decode(bytes(blob))
    except FormatError as exc:
        assert "\n" not in str(exc)
        return
    h = container.parse_header(bytes(blob))
    assert codes.shape == (h.rows, h.cols) and codes.dtype == np.int8
    assert np.count_nonzero(codes) == h.nnz
    lo, hi = -(1 << (h.bits - 1)), (1 << (h.bits - 1)) - 1
    assert codes.min() >= lo and codes.max() <= hi
    assert formats.encode(codes, h.format_name, bits=h.bits, quant=q, **formats.params_of(h)) == bytes(blob)
