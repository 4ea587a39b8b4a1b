"""Bitmap format (format 1): the contract between the golden model and the RTL decoder.

Byte layout (docs/FORMATS.md, "bitmap"; CONTRACTS.md section C):

* parameters: block ``B`` in {8, 16, 32, 64} (header p0), bus ``W`` in {32, 64} (header
  p1), code width ``b`` in {2, 4, 8};
* ``stride_bits = roundup(ceil(cols / B) * B, W)``: every row's mask occupies that many bits;
* **index** = the mask bitstream: bit ``r * stride_bits + c`` is 1 iff ``W[r, c] != 0``
  (padding bits ``c >= cols`` are 0); bit ``k`` is bit ``k % 8`` of byte ``k // 8``, so a
  W-bit little-endian bus word ``j`` carries bits ``[j*W, (j+1)*W)``; row ``r``'s mask
  starts on a W-bit word boundary.  ``index_len = rows * stride_bits / 8``, whatever nnz;
* **values** = the nonzero codes in row-major order, continuous across rows, value ``i``
  at bits ``[i*b, (i+1)*b)``, ``b``-bit two's complement.  ``values_len = ceil(nnz*b/8)``;
* **meta** = the quantization block, then ``row_ptr`` as u32[rows + 1] (prefix sum of
  per-row counts), so hardware starts row ``r`` at value bit ``row_ptr[r] * b``.

Size: ``64 + pad8(q + 4*(rows+1)) + pad8(rows*stride_bits/8) + pad8(ceil(nnz*b/8))``
(:func:`encoded_size`).

Hardware testbenches take the bus words from :func:`bitmap_sections` (a
:class:`BitmapImage`) and never re-derive the layout; :func:`bitmap_codes` inverts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import container
from .bitstream import hex_lines, pack_signed, unpack_signed, words
from .errors import FormatError, SparsefabError

BLOCKS = (8, 16, 32, 64)
BUSES = (32, 64)


def _check_params(bits: int, block: int, bus_bits: int) -> None:
    if bits not in container.BITS:
        raise SparsefabError(f"bits={bits}: expected 2, 4 or 8")
    if block not in BLOCKS:
        raise SparsefabError(f"block={block}: expected one of 8, 16, 32, 64")
    if bus_bits not in BUSES:
        raise SparsefabError(f"bus_bits={bus_bits}: expected 32 or 64")


def stride_bits(cols: int, *, block: int, bus_bits: int) -> int:
    """Mask bits per row: ``roundup(ceil(cols / block) * block, bus_bits)``."""
    blocks = -(-int(cols) // block)
    return -(-(blocks * block) // bus_bits) * bus_bits


def encoded_size(rows: int, cols: int, nnz: int, *, bits: int, block: int, bus_bits: int,
                 quant_len: int) -> int:
    """Exact file size of a bitmap container (the formula of docs/FORMATS.md).

    ``64 + pad8(quant_len + 4*(rows+1)) + pad8(rows*stride_bits/8) + pad8(ceil(nnz*bits/8))``.
    """
    p8 = container.pad8
    sb = stride_bits(cols, block=block, bus_bits=bus_bits)
    return (container.HEADER_SIZE + p8(quant_len + 4 * (rows + 1)) + p8(rows * sb // 8)
            + p8((nnz * bits + 7) // 8))


@dataclass(frozen=True, eq=False)
class BitmapImage:
    """The bitmap sections as hardware sees them.

    Attributes
    ----------
    rows, cols, bits, block, bus_bits : int
        Shape and parameters.
    stride_bits : int
        Mask bits per row (a multiple of ``bus_bits``).
    nnz : int
        Number of nonzero codes.
    row_ptr : ndarray of uint32, shape (rows + 1,)
        Index of each row's first value; ``row_ptr[rows] == nnz``.
    mask_words : ndarray of uint32 (W=32) or uint64 (W=64), shape (rows, stride_bits // W)
        The index section as W-bit little-endian bus words; bit ``c`` of row ``r`` is bit
        ``c % W`` of ``mask_words[r, c // W]``.
    value_words : ndarray of uint32 or uint64, shape (ceil(nnz * bits / W),)
        The values bitstream as W-bit words (the last one zero-padded); value ``i`` is at
        bits ``[i*bits, (i+1)*bits)`` of the stream.
    """

    rows: int
    cols: int
    bits: int
    block: int
    bus_bits: int
    stride_bits: int
    nnz: int
    row_ptr: np.ndarray
    mask_words: np.ndarray
    value_words: np.ndarray

    @property
    def words_per_row(self) -> int:
        """Mask words per row (``stride_bits // bus_bits``)."""
        return self.stride_bits // self.bus_bits

    @property
    def index_bytes(self) -> bytes:
        """The index section, exactly as stored in the file (``rows * stride_bits / 8`` bytes)."""
        dt = "<u8" if self.bus_bits == 64 else "<u4"
        return self.mask_words.astype(dt).tobytes()

    @property
    def values_bytes(self) -> bytes:
        """The values section, exactly as stored in the file (``ceil(nnz * bits / 8)`` bytes)."""
        dt = "<u8" if self.bus_bits == 64 else "<u4"
        return self.value_words.astype(dt).tobytes()[: (self.nnz * self.bits + 7) // 8]

    @property
    def row_counts(self) -> np.ndarray:
        """Nonzeros per row (int64, shape (rows,))."""
        return np.diff(self.row_ptr.astype(np.int64))

    @property
    def row_value_bit(self) -> np.ndarray:
        """Bit address of each row's first value in the values stream: ``row_ptr * bits``."""
        return self.row_ptr.astype(np.int64) * self.bits

    @property
    def block_masks(self) -> np.ndarray:
        """Per-block masks as uint64, shape (rows, ceil(cols / block)); bit k = column block*j + k."""
        nblk = -(-self.cols // self.block)
        raw = np.frombuffer(self.index_bytes, dtype=f"<u{self.block // 8}").reshape(self.rows, -1)
        return raw[:, :nblk].astype(np.uint64)

    @property
    def block_counts(self) -> np.ndarray:
        """Nonzeros per block, shape (rows, ceil(cols / block))."""
        return _popcount64(self.block_masks)

    def mask_hex(self) -> str:
        """Mask words, one per line, for Verilog ``$readmemh`` (row 0 word 0 first)."""
        return hex_lines(self.mask_words, self.bus_bits)

    def values_hex(self) -> str:
        """Value words, one per line, for Verilog ``$readmemh``."""
        return hex_lines(self.value_words, self.bus_bits)

    def row_ptr_hex(self) -> str:
        """``row_ptr`` as 32-bit words, one per line."""
        return hex_lines(self.row_ptr, 32)


def _popcount64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint64)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    b = np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1)  # pragma: no cover
    return b.sum(axis=-1).astype(np.int64)  # pragma: no cover


def _popcount_rows(packed: np.ndarray) -> np.ndarray:
    """Set bits per row of a (rows, nbytes) uint8 array, as int64."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(packed).sum(axis=1, dtype=np.int64)
    return np.unpackbits(packed, axis=1).sum(axis=1, dtype=np.int64)  # pragma: no cover


def bitmap_sections(codes, *, bits: int = 8, block: int = 16, bus_bits: int = 64) -> BitmapImage:
    """Encode a code matrix into the bitmap sections as bus words.

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
        Signed codes that fit ``bits``-bit two's complement (zero = pruned).
    bits : int
        Code width, 2, 4 or 8.
    block : int
        Mask block ``B`` in {8, 16, 32, 64}.
    bus_bits : int
        Bus width ``W`` in {32, 64}.

    Returns
    -------
    BitmapImage
    """
    _check_params(bits, block, bus_bits)
    c = container.as_codes(codes, bits)
    rows, cols = c.shape
    sb = stride_bits(cols, block=block, bus_bits=bus_bits)
    mask = c != 0
    packed = np.packbits(mask, axis=1, bitorder="little")  # (rows, ceil(cols/8)), tail bits 0
    stride_bytes = sb // 8
    if packed.shape[1] != stride_bytes:
        full = np.zeros((rows, stride_bytes), np.uint8)
        full[:, : packed.shape[1]] = packed
        packed = full
    counts = _popcount_rows(packed)
    nnz = int(counts.sum())
    if nnz >= 1 << 32:  # pragma: no cover - needs > 4 G nonzeros, beyond MAX_ELEMENTS
        raise SparsefabError(f"codes: {nnz} nonzeros do not fit the u32 row pointers")
    row_ptr = np.zeros(rows + 1, np.uint32)
    np.cumsum(counts, out=row_ptr[1:])
    vals = pack_signed(np.extract(mask, c), bits)  # row-major; faster than c[mask]
    wdt = "<u8" if bus_bits == 64 else "<u4"
    out_dt = np.uint64 if bus_bits == 64 else np.uint32
    mask_words = np.ascontiguousarray(packed).view(wdt).reshape(rows, sb // bus_bits).astype(out_dt, copy=False)
    return BitmapImage(rows, cols, bits, block, bus_bits, sb, nnz, row_ptr, mask_words,
                       words(vals, bus_bits))


def _codes_from_sections(rows: int, cols: int, bits: int, sb: int, nnz: int, row_ptr: np.ndarray,
                         index, values) -> np.ndarray:
    """Rebuild the codes from raw sections, checking every structural invariant."""
    rp = row_ptr.astype(np.int64)
    if rp[0] != 0 or rp[-1] != nnz:
        raise FormatError(f"bitmap row_ptr: starts at {rp[0]} and ends at {rp[-1]}, expected 0 and nnz={nnz}")
    d = np.diff(rp)
    if (d < 0).any():
        r = int(np.argmax(d < 0))
        raise FormatError(f"bitmap row_ptr: decreases at row {r} ({rp[r]} -> {rp[r + 1]})")
    sbytes = sb // 8
    idx = np.frombuffer(index, dtype=np.uint8).reshape(rows, sbytes)
    used = (cols + 7) // 8
    tail = cols % 8
    bad_pad = idx[:, used:].any(axis=1)
    if tail:
        bad_pad |= (idx[:, used - 1] >> np.uint8(tail)) != 0
    if bad_pad.any():
        r = int(np.argmax(bad_pad))
        raise FormatError(f"bitmap mask: row {r} has padding bits set beyond column {cols - 1}")
    mask = np.unpackbits(idx[:, :used], axis=1, count=cols, bitorder="little").view(np.bool_)
    counts = _popcount_rows(idx[:, :used])
    if not np.array_equal(counts, d):
        r = int(np.argmax(counts != d))
        raise FormatError(f"bitmap mask: row {r} has {counts[r]} mask bits but row_ptr gives {d[r]} values")
    vals = unpack_signed(values, bits, nnz)
    if nnz and not vals.all():
        i = int(np.argmin(vals != 0))
        raise FormatError(f"bitmap values: value {i} is 0 but its mask bit is 1")
    tail_bits = (nnz * bits) % 8
    if tail_bits and (values[-1] >> tail_bits):
        raise FormatError("bitmap values: padding bits after the last value are not zero")
    out = np.zeros((rows, cols), np.int8)
    out.reshape(-1)[np.flatnonzero(mask)] = vals  # faster than out[mask] = vals
    return out


def bitmap_codes(image: BitmapImage) -> np.ndarray:
    """Inverse of :func:`bitmap_sections`: the int8 code matrix, with every invariant checked."""
    _check_params(image.bits, image.block, image.bus_bits)
    if image.stride_bits != stride_bits(image.cols, block=image.block, bus_bits=image.bus_bits):
        raise FormatError(f"bitmap image: stride_bits={image.stride_bits} does not match cols={image.cols}")
    rp = np.asarray(image.row_ptr)
    if rp.shape != (image.rows + 1,):
        raise FormatError(f"bitmap image: row_ptr has shape {rp.shape}, expected ({image.rows + 1},)")
    mw = np.asarray(image.mask_words)
    if mw.size * image.bus_bits != image.rows * image.stride_bits:
        raise FormatError(f"bitmap image: {mw.size} mask words, expected "
                          f"{image.rows * image.stride_bits // image.bus_bits}")
    nval = -(-image.nnz * image.bits // image.bus_bits)
    if np.asarray(image.value_words).size != nval:
        raise FormatError(f"bitmap image: {np.asarray(image.value_words).size} value words, expected {nval}")
    vb = image.values_bytes
    if any(bytes(image.value_words.astype("<u8" if image.bus_bits == 64 else "<u4").tobytes())[len(vb):]):
        raise FormatError("bitmap values: padding bits after the last value are not zero")
    return _codes_from_sections(image.rows, image.cols, image.bits, image.stride_bits, image.nnz,
                                rp, image.index_bytes, vb)


# --- container encode / decode -------------------------------------------------------------

def encode(codes, *, bits: int = 8, block: int = 16, bus_bits: int = 64, quant=None) -> bytes:
    """Encode a code matrix as a bitmap container (format 1).

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
        Signed codes fitting ``bits``.
    bits, block, bus_bits : int
        See :func:`bitmap_sections`.
    quant : QuantParams or None
        Quantization parameters stored in the meta section (None: the "none" kind,
        integer codes with no scale).

    Returns
    -------
    bytes
        The file; its length is :func:`encoded_size`.
    """
    img = bitmap_sections(codes, bits=bits, block=block, bus_bits=bus_bits)
    return image_to_bytes(img, quant=quant)


def image_to_bytes(img: BitmapImage, *, quant=None) -> bytes:
    """Serialise a :class:`BitmapImage` (plus quantization block) as a container."""
    meta = container.quant_block(quant, img.bits, (img.rows, img.cols)) + img.row_ptr.astype("<u4").tobytes()
    return container.pack(format="bitmap", bits=img.bits, rows=img.rows, cols=img.cols, nnz=img.nnz,
                          p0=img.block, p1=img.bus_bits, meta=meta, index=img.index_bytes,
                          values=img.values_bytes)


def _check_header(h: container.Header) -> None:
    if h.p0 not in BLOCKS:
        raise FormatError(f"bitmap header: block p0={h.p0}, expected one of 8, 16, 32, 64")
    if h.p1 not in BUSES:
        raise FormatError(f"bitmap header: bus p1={h.p1}, expected 32 or 64")
    if h.p2 != 0:
        raise FormatError(f"bitmap header: p2={h.p2}, expected 0")
    sb = stride_bits(h.cols, block=h.p0, bus_bits=h.p1)
    container.expect(h, "index_len", h.index_len, h.rows * sb // 8)
    container.expect(h, "values_len", h.values_len, (h.nnz * h.bits + 7) // 8)
    if h.meta_len < 4 * (h.rows + 1):
        raise FormatError(f"header: meta_len={h.meta_len} is shorter than the {4 * (h.rows + 1)}-byte row_ptr")


def read_image(data) -> tuple[BitmapImage, object]:
    """Parse and validate a bitmap container; return its :class:`BitmapImage` and quant params."""
    h, meta, index, values = container.parse(data, "bitmap", _check_header)
    quant, rest = container.split_quant(meta, h)
    container.expect(h, "meta_len", h.meta_len, len(meta) - len(rest) + 4 * (h.rows + 1))
    row_ptr = np.frombuffer(rest, dtype="<u4").astype(np.uint32)
    sb = stride_bits(h.cols, block=h.p0, bus_bits=h.p1)
    # Validate the whole structure once (raises FormatError on any inconsistency).
    _codes_from_sections(h.rows, h.cols, h.bits, sb, h.nnz, row_ptr, index, values)
    out_dt = np.uint64 if h.p1 == 64 else np.uint32
    wdt = "<u8" if h.p1 == 64 else "<u4"
    mw = np.frombuffer(index, dtype=wdt).reshape(h.rows, sb // h.p1).astype(out_dt)
    img = BitmapImage(h.rows, h.cols, h.bits, h.p0, h.p1, sb, h.nnz, row_ptr, mw, words(values, h.p1))
    return img, quant


def decode(data) -> tuple[np.ndarray, object]:
    """Decode a bitmap container: ``(codes int8 (rows, cols), QuantParams)``.

    Integer codes stored without a scale come back with ``QuantParams.none(bits)``.
    """
    h, meta, index, values = container.parse(data, "bitmap", _check_header)
    quant, rest = container.split_quant(meta, h)
    container.expect(h, "meta_len", h.meta_len, len(meta) - len(rest) + 4 * (h.rows + 1))
    row_ptr = np.frombuffer(rest, dtype="<u4")
    sb = stride_bits(h.cols, block=h.p0, bus_bits=h.p1)
    return _codes_from_sections(h.rows, h.cols, h.bits, sb, h.nnz, row_ptr, index, values), quant


def section_sizes(h: container.Header) -> dict:
    """Format-specific info fields for :func:`sparsefab.compress.formats.info`."""
    return {"block": h.p0, "bus_bits": h.p1, "stride_bits": stride_bits(h.cols, block=h.p0, bus_bits=h.p1)}
