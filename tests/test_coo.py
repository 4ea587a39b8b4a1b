"""COO format: round trip, layout, forged entries."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from format_cases import SETTINGS, code_matrices
from hypothesis import given

from sparsefab.compress import container, coo
from sparsefab.compress.errors import FormatError, SparsefabError


@SETTINGS
@given(code_matrices(max_rows=300, max_cols=300))
def test_roundtrip(case):
    a, bits = case
    data = coo.encode(a, bits=bits)
    np.testing.assert_array_equal(coo.decode(data)[0], a)
    h = container.parse_header(data)
    r, c = np.nonzero(a)
    idx = data[h.index_offset:h.index_offset + h.index_len]
    assert idx == r.astype(f"<u{h.p1 // 8}").tobytes() + c.astype(f"<u{h.p0 // 8}").tobytes()


def test_errors():
    with pytest.raises(SparsefabError, match="300 columns need index_bits >= 16"):
        coo.encode(np.ones((1, 300), np.int8), index_bits=8)
    a = np.array([[0, 1], [2, 0]])
    b = bytearray(coo.encode(a))
    h = container.parse_header(bytes(b))
    b[h.index_offset:h.index_offset + 2] = bytes([1, 0])  # rows (1, 0): out of order
    b[60:64] = struct.pack("<I", zlib.crc32(bytes(b[64:]), zlib.crc32(bytes(b[:60]))) & 0xFFFFFFFF)
    with pytest.raises(FormatError, match="not after the previous entry"):
        coo.decode(bytes(b))
