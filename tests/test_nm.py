"""N:M format: slot layout, round trip, partial groups, rejection of non-N:M matrices."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from format_cases import SETTINGS
from hypothesis import given
from hypothesis import strategies as st

from sparsefab.compress import container, nm
from sparsefab.compress.errors import FormatError, SparsefabError


@st.composite
def nm_matrices(draw):
    m = draw(st.sampled_from([2, 4, 8, 16]))
    n = draw(st.integers(1, m - 1))
    bits = draw(st.sampled_from([2, 4, 8]))
    rows, cols = draw(st.integers(1, 8)), draw(st.integers(1, 70))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    g = -(-cols // m)
    vals = rng.choice(np.array([lo, hi, 1, -1, 0]), size=(rows, g, m))
    keep = np.argsort(rng.random((rows, g, m)), axis=2) < n
    a = (vals * keep).reshape(rows, g * m)[:, :cols]
    return a.astype(np.int64), bits, n, m


@SETTINGS
@given(nm_matrices())
def test_roundtrip(case):
    a, bits, n, m = case
    data = nm.encode(a, bits=bits, n=n, m=m)
    codes, _ = nm.decode(data)
    np.testing.assert_array_equal(codes, a)
    h = container.parse_header(data)
    slots = a.shape[0] * (-(-a.shape[1] // m)) * n
    assert (h.p0, h.p1, h.nnz) == (m, n, np.count_nonzero(a))
    assert h.index_len == (slots * (m.bit_length() - 1) + 7) // 8
    assert h.values_len == (slots * bits + 7) // 8


def test_known_slots_and_bytes():
    a = np.array([[0, 0, 3, 0, 1, 2, 0, 0, 0, 5]])   # cols=10: last group padded to 4
    pos, vals = nm.nm_slots(a, n=2, m=4)
    # zero slots take the lowest free positions
    assert pos.tolist() == [[[0, 2], [0, 1], [0, 1]]]
    assert vals.tolist() == [[[0, 3], [1, 2], [0, 5]]]
    data = nm.encode(a, bits=8, n=2, m=4)
    h = container.parse_header(data)
    # 2-bit positions 0,2,0,1,0,1 LSB first -> 0b01_00_10_00 = 0x48, 0b01_00 = 0x04
    assert data[h.index_offset:h.index_offset + h.index_len] == bytes([0x48, 0x04])
    assert data[h.values_offset:h.values_offset + h.values_len] == bytes([0, 3, 1, 2, 0, 5])


def test_partial_group_with_fewer_columns_than_n():
    a = np.array([[1, 0, 0, 2, 7]])  # 2:4, last group has one real column
    codes, _ = nm.decode(nm.encode(a, n=2, m=4))
    np.testing.assert_array_equal(codes, a)


def test_not_nm_names_the_first_group():
    a = np.zeros((3, 8), np.int64)
    a[1, 4:7] = 1
    a[2, :] = 1
    with pytest.raises(SparsefabError, match=r"not 2:4 sparse: row 1, columns 4\.\.7 hold 3 nonzeros"):
        nm.encode(a, n=2, m=4)
    with pytest.raises(SparsefabError, match="m=3"):
        nm.encode(a, n=1, m=3)
    with pytest.raises(SparsefabError, match="n=4"):
        nm.encode(a, n=4, m=4)
    assert nm.max_group_nonzeros(a, m=4) == 4


def test_forged_positions():
    a = np.array([[0, 0, 3, 0, 1, 2, 0, 0]])
    data = bytearray(nm.encode(a, n=2, m=4))
    h = container.parse_header(bytes(data))
    data[h.index_offset] = 0b0001_1000  # group 0 positions (0, 2) -> (0, 2), group 1 (1, 0)
    data[60:64] = struct.pack("<I", zlib.crc32(bytes(data[64:]), zlib.crc32(bytes(data[:60]))) & 0xFFFFFFFF)
    with pytest.raises(FormatError, match="not strictly increasing"):
        nm.decode(bytes(data))
