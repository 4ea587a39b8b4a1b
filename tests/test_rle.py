"""EIE-style zero-run-length format: exact entries, padding zeros, round trip, forged files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from format_cases import SETTINGS, code_matrices
from hypothesis import given
from hypothesis import strategies as st

from sparsefab.compress import container, rle
from sparsefab.compress.errors import FormatError, SparsefabError


def test_known_entries_and_padding_zero():
    a = np.zeros((3, 60), np.int64)
    a[0, [0, 16, 17, 50]] = [1, 2, 3, -1]
    a[2, [15, 59]] = [7, 5]
    row_ptr, runs, vals = rle.rle_entries(a, run_bits=4)
    # gap 15 fits one entry; gap 32 needs two padding entries (15, 0) covering 16 columns each
    assert row_ptr.tolist() == [0, 6, 6, 10]
    assert runs.tolist() == [0, 15, 0, 15, 15, 0, 15, 15, 15, 11]
    assert vals.tolist() == [1, 2, 3, 0, 0, -1, 7, 0, 0, 5]
    data = rle.encode(a, bits=8, run_bits=4)
    h = container.parse_header(data)
    assert (h.p0, h.p1, h.nnz) == (4, 8, 6)
    # runs packed 4 bits each, LSB first, after 4 one-byte row pointers
    idx = data[h.index_offset:h.index_offset + h.index_len]
    assert idx == bytes([0, 6, 6, 10]) + bytes([0xF0, 0xF0, 0x0F, 0xFF, 0xBF])


@pytest.mark.parametrize("gap,pads", [(14, 0), (15, 0), (16, 1), (31, 1), (32, 2), (47, 2), (48, 3)])
def test_padding_count(gap, pads):
    a = np.zeros((1, gap + 1), np.int64)
    a[0, gap] = 3
    _, runs, vals = rle.rle_entries(a, run_bits=4)
    assert vals.tolist() == [0] * pads + [3]
    assert runs.tolist() == [15] * pads + [gap - 16 * pads]


@SETTINGS
@given(code_matrices(max_cols=200), st.sampled_from([1, 2, 3, 4, 8]))
def test_roundtrip(case, run_bits):
    a, bits = case
    data = rle.encode(a, bits=bits, run_bits=run_bits)
    codes, _ = rle.decode(data)
    np.testing.assert_array_equal(codes, a)
    row_ptr, runs, vals = rle.rle_entries(a, bits=bits, run_bits=run_bits)
    h = container.parse_header(data)
    E = int(row_ptr[-1])
    assert h.index_len == (a.shape[0] + 1) * h.p1 // 8 + (E * run_bits + 7) // 8
    assert h.values_len == (E * bits + 7) // 8
    assert h.nnz == np.count_nonzero(a)


def test_bad_parameters():
    with pytest.raises(SparsefabError, match="run_bits=0"):
        rle.encode(np.ones((1, 1), np.int8), run_bits=0)
    with pytest.raises(SparsefabError, match="ptr_bits=12"):
        rle.encode(np.ones((1, 1), np.int8), ptr_bits=12)
    with pytest.raises(SparsefabError, match="entries need ptr_bits >= 16"):
        rle.encode(np.ones((1, 300), np.int8), ptr_bits=8)


def _forge(data: bytes, off: int, raw: bytes) -> bytes:
    b = bytearray(data)
    b[off:off + len(raw)] = raw
    b[60:64] = struct.pack("<I", zlib.crc32(bytes(b[64:]), zlib.crc32(bytes(b[:60]))) & 0xFFFFFFFF)
    return bytes(b)


def test_forged_entries():
    a = np.zeros((1, 40), np.int64)
    a[0, [3, 39]] = [4, 5]   # entries (3, 4), (15, 0), (15, 0), (3, 5): runs 0x3F 0xF3
    data = rle.encode(a, bits=8, run_bits=4)
    h = container.parse_header(data)
    runs_off = h.index_offset + 2
    with pytest.raises(FormatError, match="row 0 run past column 39"):
        rle.decode(_forge(data, runs_off, bytes([0xF3, 0xFF])))
    with pytest.raises(FormatError, match="padding entries must have run 15"):
        rle.decode(_forge(data, runs_off, bytes([0x73])))
    with pytest.raises(FormatError, match="header says nnz"):
        rle.decode(_forge(data, 16, struct.pack("<Q", 3)))
