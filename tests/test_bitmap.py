"""Bitmap format (CONTRACTS C / docs/FORMATS.md): layout, round trip, size formula, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from format_cases import SETTINGS, code_matrices
from hypothesis import given
from hypothesis import strategies as st

from sparsefab.compress import bitmap, bitstream, container
from sparsefab.compress.errors import FormatError, SparsefabError
from sparsefab.compress.quant import QuantParams


def _quant_len():
    return len(QuantParams.none(8).to_bytes())


@SETTINGS
@given(code_matrices(), st.sampled_from(bitmap.BLOCKS), st.sampled_from(bitmap.BUSES))
def test_roundtrip_and_size_formula(case, block, bus):
    a, bits = case
    data = bitmap.encode(a, bits=bits, block=block, bus_bits=bus)
    codes, quant = bitmap.decode(data)
    assert codes.dtype == np.int8 and quant == QuantParams.none(bits)
    np.testing.assert_array_equal(codes, a)
    nnz = int(np.count_nonzero(a))
    assert len(data) == bitmap.encoded_size(a.shape[0], a.shape[1], nnz, bits=bits, block=block,
                                            bus_bits=bus, quant_len=_quant_len())
    img, _ = bitmap.read_image(data)
    np.testing.assert_array_equal(bitmap.bitmap_codes(img), a)
    h = container.parse_header(data)
    assert img.index_bytes == data[h.index_offset:h.index_offset + h.index_len]
    assert img.values_bytes == data[h.values_offset:h.values_offset + h.values_len]
    assert bitmap.image_to_bytes(img) == data


@SETTINGS
@given(code_matrices(), st.sampled_from(bitmap.BLOCKS), st.sampled_from(bitmap.BUSES))
def test_sections_follow_the_contract(case, block, bus):
    """Every mask bit, word and value position as CONTRACTS.md C states it, checked per element."""
    a, bits = case
    rows, cols = a.shape
    img = bitmap.bitmap_sections(a, bits=bits, block=block, bus_bits=bus)
    sb = -(-(-(-cols // block) * block) // bus) * bus
    assert img.stride_bits == sb and sb % bus == 0 and sb >= cols
    assert img.mask_words.shape == (rows, sb // bus)
    assert img.mask_words.dtype == (np.uint64 if bus == 64 else np.uint32)
    # bit r*stride + c of the stream is bit c % W of word (r, c // W)
    r, c = np.meshgrid(np.arange(rows), np.arange(sb), indexing="ij")
    bit = (img.mask_words[r, c // bus] >> (c % bus).astype(img.mask_words.dtype)) & 1
    expected = np.zeros((rows, sb), np.int64)
    expected[:, :cols] = a != 0
    np.testing.assert_array_equal(bit, expected)
    # row_ptr = prefix sum of per-row counts
    counts = np.count_nonzero(a, axis=1)
    np.testing.assert_array_equal(img.row_ptr, np.concatenate([[0], np.cumsum(counts)]))
    assert img.row_ptr.dtype == np.uint32 and img.nnz == counts.sum()
    # value i at bits [i*b, (i+1)*b) of the value stream, continuous across rows
    nz = a[a != 0]
    assert img.value_words.size == -(-img.nnz * bits // bus)
    stream = int.from_bytes(bitstream.words_to_bytes(img.value_words, bus), "little")
    for i, v in enumerate(nz.tolist()):
        field = (stream >> (i * bits)) & ((1 << bits) - 1)
        assert field - ((field >> (bits - 1)) << bits) == v
    assert stream >> (img.nnz * bits) == 0
    # block masks: bit k of block j is column j*B + k
    bm = img.block_masks
    assert bm.shape == (rows, -(-cols // block))
    np.testing.assert_array_equal(img.block_counts.sum(axis=1), counts)


def test_known_bytes():
    """A hand-worked example (also in docs/FORMATS.md)."""
    a = np.array([[1, 0, -1, 0, 0, 0, 0, 0, 0, 3],
                  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                  [0, -8, 0, 0, 0, 0, 0, 0, 0, 7]])
    img = bitmap.bitmap_sections(a, bits=4, block=8, bus_bits=32)
    assert img.stride_bits == 32
    assert img.mask_words.tolist() == [[0x205], [0], [0x202]]
    assert img.row_ptr.tolist() == [0, 3, 3, 5]
    # values 1, -1, 3, -8, 7 as nibbles, LSB first: 0x1, 0xf, 0x3, 0x8, 0x7
    assert img.values_bytes == bytes([0xF1, 0x83, 0x07])
    assert img.value_words.tolist() == [0x783F1]
    assert img.mask_hex() == "00000205\n00000000\n00000202\n"
    data = bitmap.encode(a, bits=4, block=8, bus_bits=32)
    h = container.parse_header(data)
    assert (h.format, h.bits, h.rows, h.cols, h.nnz, h.p0, h.p1) == (1, 4, 3, 10, 5, 8, 32)
    assert h.index_len == 12 and h.values_len == 3
    assert bytes(data[h.index_offset:h.index_offset + 12]) == bytes.fromhex("050200000000000002020000")


def test_index_size_depends_only_on_shape():
    rng = np.random.default_rng(1)
    sizes = set()
    for density in (0.0, 0.1, 0.5, 1.0):
        a = rng.integers(1, 100, size=(33, 77)) * (rng.random((33, 77)) < density)
        sizes.add(container.parse_header(bitmap.encode(a, bits=8)).index_len)
    assert len(sizes) == 1


def test_rejects_bad_input():
    with pytest.raises(SparsefabError, match="does not fit 4-bit"):
        bitmap.encode(np.array([[0, 8]]), bits=4)
    with pytest.raises(SparsefabError, match="2-D"):
        bitmap.encode(np.zeros(4, np.int8))
    with pytest.raises(SparsefabError, match="integer dtype"):
        bitmap.encode(np.zeros((2, 2), np.float32))
    with pytest.raises(SparsefabError, match="block=12"):
        bitmap.encode(np.zeros((2, 2), np.int8), block=12)
    with pytest.raises(SparsefabError, match="bus_bits=16"):
        bitmap.encode(np.zeros((2, 2), np.int8), bus_bits=16)
    with pytest.raises(SparsefabError, match="empty"):
        bitmap.encode(np.zeros((0, 3), np.int8))


def _forge(data: bytes, mutate) -> bytes:
    """Apply ``mutate(bytearray)`` then fix the CRC so only the structural check can catch it."""
    import struct
    import zlib
    b = bytearray(data)
    mutate(b)
    crc = zlib.crc32(bytes(b[64:]), zlib.crc32(bytes(b[:60]))) & 0xFFFFFFFF
    b[60:64] = struct.pack("<I", crc)
    return bytes(b)


def test_forged_structures_are_caught_with_valid_crc():
    a = np.array([[1, 0, 2], [0, 0, 3]])
    data = bitmap.encode(a, bits=8, block=8, bus_bits=32)
    h = container.parse_header(data)
    rp = h.meta_offset + _quant_len()
    # a mask bit without its value (row_ptr unchanged)
    with pytest.raises(FormatError, match="row 0 has 3 mask bits"):
        bitmap.decode(_forge(data, lambda b: b.__setitem__(h.index_offset, 0b111)))
    # a padding bit set
    with pytest.raises(FormatError, match="padding bits"):
        bitmap.decode(_forge(data, lambda b: b.__setitem__(h.index_offset, 0b1000_0101)))
    # row_ptr decreasing
    with pytest.raises(FormatError, match="row_ptr"):
        bitmap.decode(_forge(data, lambda b: b.__setitem__(rp + 4, 9)))
    # a zero value under a set mask bit
    with pytest.raises(FormatError, match="value 1 is 0"):
        bitmap.decode(_forge(data, lambda b: b.__setitem__(h.values_offset + 1, 0)))
    # bitmap_codes checks an image the same way
    img = bitmap.bitmap_sections(a, bits=8, block=8, bus_bits=32)
    bad = bitmap.BitmapImage(img.rows, img.cols, img.bits, img.block, img.bus_bits, img.stride_bits,
                             img.nnz, img.row_ptr, img.mask_words ^ np.uint32(2), img.value_words)
    with pytest.raises(FormatError, match="mask bits"):
        bitmap.bitmap_codes(bad)


def test_large_roundtrip_int8():
    rng = np.random.default_rng(7)
    a = (rng.integers(-128, 128, size=(300, 1000)) * (rng.random((300, 1000)) < 0.25)).astype(np.int8)
    for bits in (8,):
        codes, _ = bitmap.decode(bitmap.encode(a, bits=bits, block=64, bus_bits=64))
        np.testing.assert_array_equal(codes, a)


def test_known_file():
    """The worked example of docs/FORMATS.md, byte for byte (CRC included)."""
    a = np.array([[1, 0, -1, 0, 0, 0, 0, 0, 0, 3],
                  [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                  [0, -8, 0, 0, 0, 0, 0, 0, 0, 7]])
    expected = bytes.fromhex(
        "53 46 57 54 01 00 01 04 03 00 00 00 0a 00 00 00"
        "05 00 00 00 00 00 00 00 08 00 20 00 00 00 01 00"
        "20 00 00 00 00 00 00 00 0c 00 00 00 00 00 00 00"
        "03 00 00 00 00 00 00 00 00 00 00 00 d2 64 0b 47"
        "51 42 01 00 04 01 00 00 00 00 00 00 00 00 00 00"
        "00 00 00 00 03 00 00 00 03 00 00 00 05 00 00 00"
        "05 02 00 00 00 00 00 00 02 02 00 00 00 00 00 00"
        "f1 83 07 00 00 00 00 00")
    assert bitmap.encode(a, bits=4, block=8, bus_bits=32) == expected


@SETTINGS
@given(code_matrices(), st.sampled_from(bitmap.BLOCKS), st.sampled_from(bitmap.BUSES))
def test_size_bound_of_the_issue(case, block, bus):
    """size <= ceil(rows*cols/8) + ceil(nnz*b/8) + per-row offsets + bus padding + fixed header."""
    a, bits = case
    rows, cols = a.shape
    nnz = int(np.count_nonzero(a))
    size = len(bitmap.encode(a, bits=bits, block=block, bus_bits=bus))
    q = _quant_len()
    bound = (-(-rows * cols // 8) + -(-nnz * bits // 8) + 4 * (rows + 1) + rows * bus // 8 + q + 64 + 24)
    assert size <= bound
