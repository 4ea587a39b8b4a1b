"""CSR format: round trip, equality with scipy.sparse.csr_matrix, widths, forged files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import scipy.sparse as sp
from format_cases import SETTINGS, code_matrices
from hypothesis import given
from hypothesis import strategies as st

from sparsefab.compress import container, csr
from sparsefab.compress.errors import FormatError, SparsefabError


@SETTINGS
@given(code_matrices(max_cols=300), st.sampled_from([None, 16, 32]), st.sampled_from([None, 32]))
def test_roundtrip_and_equal_to_scipy(case, index_bits, ptr_bits):
    a, bits = case
    data = csr.encode(a, bits=bits, index_bits=index_bits, ptr_bits=ptr_bits)
    codes, _ = csr.decode(data)
    np.testing.assert_array_equal(codes, a)
    indptr, indices, vals, h, _ = csr.read_arrays(data)
    m = sp.csr_matrix(a)
    m.sort_indices()
    np.testing.assert_array_equal(indptr, m.indptr)
    np.testing.assert_array_equal(indices, m.indices)
    np.testing.assert_array_equal(vals, m.data)
    ref = csr.csr_arrays(a, bits=bits)
    for x, y in zip(ref, (m.indptr, m.indices, m.data), strict=True):
        np.testing.assert_array_equal(x, y)
    # index section = indptr at rp bits then indices at ci bits, exactly
    ci, rp = h.p0, h.p1
    assert ci == (index_bits or (8 if a.shape[1] <= 256 else 16))
    assert h.index_len == ((a.shape[0] + 1) * rp + h.nnz * ci) // 8
    idx = data[h.index_offset:h.index_offset + h.index_len]
    assert idx == m.indptr.astype(f"<u{rp // 8}").tobytes() + m.indices.astype(f"<u{ci // 8}").tobytes()


def test_width_errors():
    with pytest.raises(SparsefabError, match="cols=300 needs index_bits >= 16, got 8"):
        csr.encode(np.ones((1, 300), np.int8), index_bits=8)
    with pytest.raises(SparsefabError, match="nnz=300 needs ptr_bits >= 16, got 8"):
        csr.encode(np.ones((2, 150), np.int8), ptr_bits=8)
    with pytest.raises(SparsefabError, match="index_bits=12"):
        csr.encode(np.ones((2, 2), np.int8), index_bits=12)


def _forge(data: bytes, off: int, raw: bytes) -> bytes:
    b = bytearray(data)
    b[off:off + len(raw)] = raw
    b[60:64] = struct.pack("<I", zlib.crc32(bytes(b[64:]), zlib.crc32(bytes(b[:60]))) & 0xFFFFFFFF)
    return bytes(b)


def test_forged_arrays():
    a = np.array([[0, 5, 0, 7], [1, 0, 0, 0]])
    data = csr.encode(a, index_bits=8, ptr_bits=8)
    h = container.parse_header(data)
    ix = h.index_offset + 3  # indices start after 3 one-byte row pointers
    with pytest.raises(FormatError, match="not strictly increasing"):
        csr.decode(_forge(data, ix, bytes([3, 1])))
    with pytest.raises(FormatError, match="beyond cols=4"):
        csr.decode(_forge(data, ix, bytes([9])))
    with pytest.raises(FormatError, match="decreases at row 1"):
        csr.decode(_forge(data, h.index_offset + 1, bytes([4])))
    with pytest.raises(FormatError, match="explicit zero"):
        csr.decode(_forge(data, h.values_offset, bytes([0])))
    with pytest.raises(FormatError, match="truncated file"):
        csr.decode(_forge(data, 40, struct.pack("<Q", h.index_len + 8)))
    with pytest.raises(FormatError, match=r"index_len=6 but csr 2x4 \(nnz=2, bits=8\) implies 5"):
        csr.decode(_forge(data, 16, struct.pack("<Q", 2)))
