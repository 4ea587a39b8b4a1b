"""The 64-byte container shared by every weight format (docs/FORMATS.md, "Container").

Layout: a 64-byte little-endian header, then the sections ``meta``, ``index`` and
``values`` in that order.  Each section starts at a multiple of 8 bytes from the start
of the file and is zero-padded to a multiple of 8 bytes, so 32- and 64-bit buses read
whole words.  The last header field is a CRC-32 (:func:`zlib.crc32`) of header bytes
``[0, 60)`` followed by every byte after the header.

:func:`parse` validates a file in this order, before allocating anything: size of the
header, magic, version, format, bits, flags, reserved fields, each section length
against the file size, then (through the format's ``check`` callback) against the sizes
the header's shape and parameters imply, and finally the CRC.  Every failure raises
:class:`~sparsefab.compress.errors.FormatError` with one line.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .bitstream import check_signed_range
from .errors import FormatError, SparsefabError

MAGIC = b"SFWT"
VERSION = 1
HEADER_SIZE = 64
ALIGN = 8
FLAG_SIGNED = 1
#: Format identifiers (header byte 6).
FORMAT_IDS: dict[str, int] = {"dense": 0, "bitmap": 1, "csr": 2, "rle": 3, "nm": 4, "coo": 5}
FORMAT_NAMES: dict[int, str] = {v: k for k, v in FORMAT_IDS.items()}
BITS = (2, 4, 8)
#: Largest matrix (rows * cols) a decoder will build: a forged header claiming a bigger
#: shape is refused before any allocation.  2**31 int8 codes = 2 GiB.
MAX_ELEMENTS = 1 << 31

_STRUCT = struct.Struct("<4sHBBIIQHHHHQQQII")
assert _STRUCT.size == HEADER_SIZE


def pad8(n: int) -> int:
    """``n`` rounded up to a multiple of 8."""
    return (int(n) + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Header:
    """The decoded 64-byte header (field meanings in docs/FORMATS.md)."""

    format: int
    bits: int
    rows: int
    cols: int
    nnz: int
    p0: int
    p1: int
    p2: int
    flags: int
    meta_len: int
    index_len: int
    values_len: int
    crc: int = 0

    @property
    def format_name(self) -> str:
        return FORMAT_NAMES[self.format]

    @property
    def meta_offset(self) -> int:
        return HEADER_SIZE

    @property
    def index_offset(self) -> int:
        return HEADER_SIZE + pad8(self.meta_len)

    @property
    def values_offset(self) -> int:
        return self.index_offset + pad8(self.index_len)

    @property
    def total_len(self) -> int:
        return self.values_offset + pad8(self.values_len)


def total_size(meta_len: int, index_len: int, values_len: int) -> int:
    """File size of a container with these section lengths."""
    return HEADER_SIZE + pad8(meta_len) + pad8(index_len) + pad8(values_len)


def check_shape(rows: int, cols: int, what: str = "matrix") -> None:
    """Shapes a container can hold: 1 <= rows, cols < 2**32 and rows*cols <= MAX_ELEMENTS."""
    if rows < 1 or cols < 1:
        raise SparsefabError(f"{what}: shape ({rows}, {cols}) is empty; expected at least 1 row and 1 column")
    if rows >= 1 << 32 or cols >= 1 << 32 or rows * cols > MAX_ELEMENTS:
        raise SparsefabError(f"{what}: shape ({rows}, {cols}) exceeds the {MAX_ELEMENTS}-element limit")


def as_codes(codes, bits: int, what: str = "codes") -> np.ndarray:
    """Validate a 2-D integer code matrix that fits ``bits``; return it as C-contiguous int8."""
    if bits not in BITS:
        raise SparsefabError(f"bits={bits}: expected 2, 4 or 8")
    a = np.asarray(codes)
    if a.ndim != 2:
        raise SparsefabError(f"{what}: expected a 2-D matrix, got {a.ndim}-D with shape {a.shape}")
    if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
        raise SparsefabError(f"{what}: expected an integer dtype, got {a.dtype}")
    check_shape(a.shape[0], a.shape[1], what)
    if a.dtype != np.int8 or bits < 8:
        check_signed_range(a, bits, what)
    return np.ascontiguousarray(a, dtype=np.int8)


def pack(*, format: str, bits: int, rows: int, cols: int, nnz: int, meta: bytes, index: bytes,
         values: bytes, p0: int = 0, p1: int = 0, p2: int = 0, flags: int = FLAG_SIGNED) -> bytes:
    """Assemble a container from its header fields and three sections.

    Parameters
    ----------
    format : str
        A key of :data:`FORMAT_IDS`.
    bits : int
        Code width, 2, 4 or 8.
    rows, cols, nnz : int
        Matrix shape and number of nonzero codes.
    meta, index, values : bytes
        The sections, unpadded (their lengths go in the header; padding is added here).
    p0, p1, p2 : int
        Format parameters (16 bits each).
    flags : int
        Bit 0: codes are signed two's complement.
    """
    if format not in FORMAT_IDS:
        raise SparsefabError(f"format {format!r}: expected one of {', '.join(FORMAT_IDS)}")
    if bits not in BITS:
        raise SparsefabError(f"bits={bits}: expected 2, 4 or 8")
    check_shape(rows, cols)
    for name, p in (("p0", p0), ("p1", p1), ("p2", p2)):
        if not 0 <= p < 1 << 16:
            raise SparsefabError(f"{name}={p}: header parameter must fit 16 bits")
    secs = (meta, index, values)
    lens = [len(x) for x in secs]
    head = _STRUCT.pack(MAGIC, VERSION, FORMAT_IDS[format], bits, rows, cols, nnz, p0, p1, p2, flags,
                        lens[0], lens[1], lens[2], 0, 0)[:60]
    parts = []
    for sec, n in zip(secs, lens, strict=True):
        parts.append(sec)
        if pad8(n) != n:
            parts.append(b"\0" * (pad8(n) - n))
    crc = zlib.crc32(head)
    for part in parts:
        crc = zlib.crc32(part, crc)
    return b"".join([head, struct.pack("<I", crc & 0xFFFFFFFF), *parts])


def parse_header(data) -> Header:
    """Decode and check the header against the file size (no CRC, no format-specific check)."""
    n = len(data)
    if n < HEADER_SIZE:
        raise FormatError(f"truncated file: {n} bytes, shorter than the {HEADER_SIZE}-byte header")
    (magic, version, fmt, bits, rows, cols, nnz, p0, p1, p2, flags, meta_len, index_len, values_len,
     reserved, crc) = _STRUCT.unpack_from(data, 0)
    if magic != MAGIC:
        raise FormatError(f"bad magic {bytes(magic)!r}: not a sparsefab weight file (expected {MAGIC!r})")
    if version != VERSION:
        raise FormatError(f"unsupported version {version} (this sparsefab reads version {VERSION})")
    if fmt not in FORMAT_NAMES:
        raise FormatError(f"unknown format id {fmt} (expected 0..{max(FORMAT_NAMES)})")
    if bits not in BITS:
        raise FormatError(f"header: bits={bits}, expected 2, 4 or 8")
    if flags != FLAG_SIGNED:
        raise FormatError(f"header: flags=0x{flags:04x}, expected 0x0001 (signed codes)")
    if reserved != 0:
        raise FormatError(f"header: reserved field at offset 56 is {reserved}, expected 0")
    if rows < 1 or cols < 1 or rows * cols > MAX_ELEMENTS:
        raise FormatError(f"header: shape ({rows}, {cols}) is empty or exceeds the {MAX_ELEMENTS}-element limit")
    if nnz > rows * cols:
        raise FormatError(f"header: nnz={nnz} exceeds rows*cols={rows * cols}")
    h = Header(fmt, bits, rows, cols, nnz, p0, p1, p2, flags, meta_len, index_len, values_len, crc)
    # Each length alone must fit the file before their padded sum is trusted.
    for name, ln in (("meta_len", meta_len), ("index_len", index_len), ("values_len", values_len)):
        if ln > n:
            raise FormatError(f"truncated or forged file: header {name}={ln} exceeds the file size {n}")
    if h.total_len != n:
        what = "truncated" if h.total_len > n else "trailing bytes in"
        raise FormatError(f"{what} file: header implies {h.total_len} bytes, file has {n}")
    return h


def check_crc(data, h: Header) -> None:
    """Raise FormatError if the CRC-32 does not match."""
    mv = memoryview(data)
    crc = zlib.crc32(mv[HEADER_SIZE:], zlib.crc32(mv[:60])) & 0xFFFFFFFF
    if crc != h.crc:
        raise FormatError(f"CRC mismatch: stored 0x{h.crc:08x}, computed 0x{crc:08x} (file corrupted)")


def expect(h: Header, field: str, actual: int, expected: int) -> None:
    """Raise FormatError if a header field differs from what the shape implies."""
    if actual != expected:
        raise FormatError(f"header: {field}={actual} but {h.format_name} {h.rows}x{h.cols} "
                          f"(nnz={h.nnz}, bits={h.bits}) implies {expected}")


def parse(data, format: str | None = None,
          check: Callable[[Header], None] | None = None) -> tuple[Header, memoryview, memoryview, memoryview]:
    """Validate a container and return its header and the three (unpadded) sections.

    Parameters
    ----------
    data : bytes-like
        The whole file.
    format : str, optional
        If given, the header's format must be this one.
    check : callable, optional
        ``check(header)`` raises FormatError if the section lengths or parameters differ
        from what the format and shape imply; it runs before the CRC and before any
        allocation.

    Returns
    -------
    header, meta, index, values
    """
    h = parse_header(data)
    if format is not None and h.format_name != format:
        raise FormatError(f"file holds format {h.format_name!r}, expected {format!r}")
    if check is not None:
        check(h)
    check_crc(data, h)
    mv = memoryview(data)
    meta = mv[h.meta_offset:h.meta_offset + h.meta_len]
    index = mv[h.index_offset:h.index_offset + h.index_len]
    values = mv[h.values_offset:h.values_offset + h.values_len]
    # Padding must be zero: two encodings of one matrix are byte-identical.
    for name, start, ln in (("meta", h.meta_offset, h.meta_len), ("index", h.index_offset, h.index_len),
                            ("values", h.values_offset, h.values_len)):
        if any(mv[start + ln:start + pad8(ln)]):
            raise FormatError(f"{name} section: nonzero padding bytes after its {ln} bytes")
    return h, meta, index, values


# --- quantization block (owner of the layout: compress/quant.py, QuantParams) -------------

def quant_block(quant, bits: int, shape: tuple[int, int]) -> bytes:
    """Bytes of the quantization block that starts every meta section.

    ``quant=None`` means integer codes with no scale (the "none" kind).  The parameters
    must have the container's ``bits`` and fit ``shape``.
    """
    from .quant import QuantParams

    if quant is None:
        quant = QuantParams.none(bits)
    if not isinstance(quant, QuantParams):
        raise SparsefabError(f"quant: expected QuantParams or None, got {type(quant).__name__}")
    if quant.bits != bits:
        raise SparsefabError(f"quant: parameters are for {quant.bits}-bit codes, the format stores {bits}-bit codes")
    try:
        quant.check_shape(shape)
    except SparsefabError as exc:
        raise SparsefabError(str(exc)) from None
    return quant.to_bytes()


def split_quant(meta, h: Header):
    """Parse the quantization block at the start of ``meta``; return it and the rest.

    The block must have the header's bits and fit its shape (FormatError otherwise).
    """
    from .quant import QuantParams

    mv = memoryview(meta)
    q, used = QuantParams.from_bytes(mv)
    if q.bits != h.bits:
        raise FormatError(f"quant block: bits={q.bits} but the header says bits={h.bits}")
    q.check_shape((h.rows, h.cols))
    return q, mv[used:]


def open_container(data, format: str, check: Callable[[Header], None] | None = None):
    """:func:`parse` plus the quantization block: ``(header, quant, format_meta, index, values)``."""
    h, meta, index, values = parse(data, format, check)
    quant, rest = split_quant(meta, h)
    return h, quant, rest, index, values


def check_nonzero_count(h: Header, codes: np.ndarray) -> None:
    """Raise FormatError if the decoded matrix does not hold the header's nnz nonzeros."""
    n = int(np.count_nonzero(codes))
    if n != h.nnz:
        raise FormatError(f"{h.format_name}: decoded {n} nonzero codes, header says nnz={h.nnz}")
