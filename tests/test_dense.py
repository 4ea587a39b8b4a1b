"""Dense format: round trip, exact byte layout, forged files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from format_cases import SETTINGS, code_matrices
from hypothesis import given

from sparsefab.compress import container, dense
from sparsefab.compress.errors import FormatError


@SETTINGS
@given(code_matrices())
def test_roundtrip(case):
    a, bits = case
    data = dense.encode(a, bits=bits)
    codes, q = dense.decode(data)
    np.testing.assert_array_equal(codes, a)
    h = container.parse_header(data)
    assert h.index_len == 0 and h.values_len == (a.size * bits + 7) // 8
    assert h.nnz == np.count_nonzero(a) and q.granularity == "none" and q.bits == bits


def test_known_bytes():
    a = np.array([[1, -2, 0], [-8, 7, -1]])
    data = dense.encode(a, bits=4)
    h = container.parse_header(data)
    assert data[h.values_offset:h.values_offset + 3] == bytes([0xE1, 0x80, 0xF7])
    data2 = dense.encode(np.array([[1, -2, 0, -1, 1]]), bits=2)
    h2 = container.parse_header(data2)
    assert data2[h2.values_offset:h2.values_offset + 2] == bytes([0b11_00_10_01, 0b01])


def test_wrong_nnz_is_caught():
    b = bytearray(dense.encode(np.array([[1, 0], [0, 2]]), bits=8))
    b[16:24] = struct.pack("<Q", 3)
    b[60:64] = struct.pack("<I", zlib.crc32(bytes(b[64:]), zlib.crc32(bytes(b[:60]))) & 0xFFFFFFFF)
    with pytest.raises(FormatError, match="decoded 2 nonzero codes, header says nnz=3"):
        dense.decode(bytes(b))
