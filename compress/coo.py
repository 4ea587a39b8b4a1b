"""Coordinate list (format 5): one (row, column, value) triple per nonzero, row-major.

Byte layout (docs/FORMATS.md, "coo"): header p0 = column-index bits ``ci``, p1 = row-index
bits ``ri`` (each 8, 16 or 32; by default the smallest that fits), p2 = 0.

* meta = the quantization block only;
* index = the ``nnz`` row indices (unsigned ``ri``-bit little-endian) followed by the
  ``nnz`` column indices (unsigned ``ci``-bit), entries sorted row-major (strictly
  increasing ``row*cols + col``); ``index_len = nnz*(ri + ci)/8``;
* values = the ``nnz`` codes at ``b`` bits, ``values_len = ceil(nnz*b/8)``.
"""

from __future__ import annotations

import numpy as np

from . import container
from .bitstream import pack_signed, pack_unsigned, unpack_signed, unpack_unsigned
from .errors import FormatError, SparsefabError

WIDTHS = (8, 16, 32)


def _min_width(n: int) -> int:
    return next((w for w in WIDTHS if n < 1 << w), 64)


def encode(codes, *, bits: int = 8, index_bits: int | None = None, row_bits: int | None = None,
           quant=None) -> bytes:
    """Encode a code matrix as a coordinate list.

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
    bits : int
        Code width, 2, 4 or 8.
    index_bits, row_bits : int, optional
        Column- and row-index widths (8, 16, 32); default the smallest that fits.
    quant : QuantParams or None
    """
    c = container.as_codes(codes, bits)
    rows, cols = c.shape
    index_bits = _min_width(cols - 1) if index_bits is None else index_bits
    row_bits = _min_width(rows - 1) if row_bits is None else row_bits
    for name, w, n in (("index_bits", index_bits, cols), ("row_bits", row_bits, rows)):
        if w not in WIDTHS:
            raise SparsefabError(f"{name}={w}: expected 8, 16 or 32")
        if n > 1 << w:
            raise SparsefabError(f"coo: {n} {'columns' if name == 'index_bits' else 'rows'} need "
                                 f"{name} >= {_min_width(n - 1)}, got {w}")
    flat = np.flatnonzero(c)
    r, col = np.divmod(flat, cols)
    index = pack_unsigned(r, row_bits) + pack_unsigned(col, index_bits)
    return container.pack(format="coo", bits=bits, rows=rows, cols=cols, nnz=flat.size, p0=index_bits,
                          p1=row_bits, meta=container.quant_block(quant, bits, c.shape), index=index,
                          values=pack_signed(c.reshape(-1)[flat], bits))


def _check_header(h: container.Header) -> None:
    if h.p0 not in WIDTHS or h.p1 not in WIDTHS or h.p2:
        raise FormatError(f"coo header: p0={h.p0}, p1={h.p1}, p2={h.p2}; expected 8/16/32, 8/16/32, 0")
    if h.cols > 1 << h.p0 or h.rows > 1 << h.p1:
        raise FormatError(f"coo header: shape ({h.rows}, {h.cols}) does not fit p1={h.p1}/p0={h.p0} bits")
    container.expect(h, "index_len", h.index_len, h.nnz * (h.p0 + h.p1) // 8)
    container.expect(h, "values_len", h.values_len, (h.nnz * h.bits + 7) // 8)


def decode(data) -> tuple[np.ndarray, object]:
    """Decode a COO container: ``(codes int8 (rows, cols), QuantParams)``."""
    h, quant, rest, index, values = container.open_container(data, "coo", _check_header)
    if len(rest):
        raise FormatError(f"coo meta: {len(rest)} unexpected bytes after the quantization block")
    split = h.nnz * h.p1 // 8
    r = unpack_unsigned(index[:split], h.p1, h.nnz)
    c = unpack_unsigned(index[split:], h.p0, h.nnz)
    vals = unpack_signed(values, h.bits, h.nnz)
    tail = (h.nnz * h.bits) % 8
    if tail and values[-1] >> tail:
        raise FormatError("coo values: padding bits after the last value are not zero")
    out = np.zeros((h.rows, h.cols), np.int8)
    if h.nnz:
        if int(r.max()) >= h.rows or int(c.max()) >= h.cols:
            i = int(np.argmax((r >= h.rows) | (c >= h.cols)))
            raise FormatError(f"coo entry {i}: ({r[i]}, {c[i]}) outside shape ({h.rows}, {h.cols})")
        lin = r * h.cols + c
        if (np.diff(lin) <= 0).any():
            i = int(np.argmax(np.diff(lin) <= 0)) + 1
            raise FormatError(f"coo entry {i}: ({r[i]}, {c[i]}) not after the previous entry in row-major order")
        if not vals.all():
            i = int(np.argmin(vals != 0))
            raise FormatError(f"coo entry {i}: explicit zero value")
        out.reshape(-1)[lin] = vals
    return out, quant
