"""Container header (CONTRACTS B): layout, CRC, validation before allocation."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from sparsefab.compress import bitmap, container
from sparsefab.compress.errors import FormatError, SparsefabError


def _sample() -> bytes:
    a = np.array([[1, 0, 2, 0, 0], [0, 0, 0, 0, 0], [-3, 4, 0, 0, 5]])
    return bitmap.encode(a, bits=8, block=8, bus_bits=32)


def _refresh_crc(b: bytearray) -> bytes:
    crc = zlib.crc32(bytes(b[64:]), zlib.crc32(bytes(b[:60]))) & 0xFFFFFFFF
    b[60:64] = struct.pack("<I", crc)
    return bytes(b)


def test_header_layout():
    data = _sample()
    assert data[:4] == b"SFWT"
    assert struct.unpack_from("<H", data, 4)[0] == 1
    assert data[6] == 1 and data[7] == 8
    rows, cols, nnz = struct.unpack_from("<IIQ", data, 8)
    assert (rows, cols, nnz) == (3, 5, 5)
    p0, p1, p2, flags = struct.unpack_from("<HHHH", data, 24)
    assert (p0, p1, p2, flags) == (8, 32, 0, 1)
    meta_len, index_len, values_len, rsv, crc = struct.unpack_from("<QQQII", data, 32)
    assert rsv == 0 and index_len == 3 * 32 // 8 and values_len == 5
    assert crc == zlib.crc32(data[64:], zlib.crc32(data[:60])) & 0xFFFFFFFF
    assert len(data) == 64 + container.pad8(meta_len) + container.pad8(index_len) + container.pad8(values_len)
    h = container.parse_header(data)
    # every section starts at a multiple of 8
    assert h.meta_offset % 8 == h.index_offset % 8 == h.values_offset % 8 == 0
    assert h.total_len == len(data)


def test_every_single_bit_flip_is_detected():
    data = _sample()
    for pos in range(len(data)):
        for bit in (0, 5):
            b = bytearray(data)
            b[pos] ^= 1 << bit
            with pytest.raises(FormatError) as exc:
                bitmap.decode(bytes(b))
            assert "\n" not in str(exc.value), f"byte {pos} bit {bit}"


def test_flip_in_padding_or_values_is_a_crc_error():
    data = _sample()
    h = container.parse_header(data)
    b = bytearray(data)
    b[h.values_offset] ^= 0x40
    with pytest.raises(FormatError, match="CRC mismatch"):
        bitmap.decode(bytes(b))


def test_truncated_and_trailing():
    data = _sample()
    for n in (0, 10, 63, 64, len(data) - 8, len(data) - 1):
        with pytest.raises(FormatError, match="truncated"):
            bitmap.decode(data[:n])
    with pytest.raises(FormatError, match="trailing bytes"):
        bitmap.decode(data + b"\0" * 8)


@pytest.mark.parametrize("offset,value,match", [
    (0, b"XFWT", "bad magic"),
    (4, struct.pack("<H", 2), "unsupported version 2"),
    (6, bytes([9]), "unknown format id 9"),
    (7, bytes([3]), "bits=3"),
    (30, struct.pack("<H", 0), "flags"),
    (56, struct.pack("<I", 7), "reserved"),
    (24, struct.pack("<H", 12), "block p0=12"),
    (26, struct.pack("<H", 16), "bus p1=16"),
    (16, struct.pack("<Q", 99), "nnz=99 exceeds"),
    (16, struct.pack("<Q", 6), "values_len=5 but"),
])
def test_forged_fields(offset, value, match):
    b = bytearray(_sample())
    b[offset:offset + len(value)] = value
    with pytest.raises(FormatError, match=match):
        bitmap.decode(_refresh_crc(b))


def test_wrong_format_is_refused():
    b = bytearray(_sample())
    b[6] = 2
    with pytest.raises(FormatError, match="holds format 'csr', expected 'bitmap'"):
        bitmap.decode(_refresh_crc(b))


@pytest.mark.parametrize("rows,cols", [(2**31, 2**31), (2**32 - 1, 1), (65536, 65536)])
def test_huge_shape_refused_before_allocation(rows, cols):
    b = bytearray(_sample())
    b[8:16] = struct.pack("<II", rows, cols)
    forged = _refresh_crc(b)
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as exc:
            bitmap.decode(forged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"decoder allocated {peak} bytes before refusing"
    assert "\n" not in str(exc.value)


def test_huge_lengths_refused():
    b = bytearray(_sample())
    b[40:48] = struct.pack("<Q", 2**62)
    with pytest.raises(FormatError, match="index_len=.* exceeds the file size"):
        bitmap.decode(_refresh_crc(b))


def test_nonzero_padding_refused():
    data = _sample()
    h = container.parse_header(data)
    b = bytearray(data)
    b[h.values_offset + h.values_len] = 1  # first padding byte of the values section
    with pytest.raises(FormatError, match="nonzero padding"):
        bitmap.decode(_refresh_crc(b))


def test_pack_rejects_bad_fields():
    with pytest.raises(SparsefabError, match="format 'zip'"):
        container.pack(format="zip", bits=8, rows=1, cols=1, nnz=0, meta=b"", index=b"", values=b"")
    with pytest.raises(SparsefabError, match="bits=3"):
        container.pack(format="dense", bits=3, rows=1, cols=1, nnz=0, meta=b"", index=b"", values=b"")
    with pytest.raises(SparsefabError, match="p0=70000"):
        container.pack(format="dense", bits=8, rows=1, cols=1, nnz=0, meta=b"", index=b"", values=b"",
                       p0=70000)
    with pytest.raises(SparsefabError, match="element limit"):
        container.check_shape(2**20, 2**20)
