"""Compressed sparse row (format 2), arrays identical to ``scipy.sparse.csr_matrix``.

Byte layout (docs/FORMATS.md, "csr"): header p0 = column-index bits ``ci`` and p1 =
row-pointer bits ``rp`` (each 8, 16 or 32), p2 = 0.

* meta = the quantization block only;
* index = ``indptr`` (``rows + 1`` unsigned ``rp``-bit little-endian integers) immediately
  followed by ``indices`` (``nnz`` unsigned ``ci``-bit integers, column of each nonzero,
  increasing within a row); ``index_len = ((rows+1)*rp + nnz*ci) / 8``;
* values = ``data``, the ``nnz`` nonzero codes in row-major order at ``b`` bits (LSB-first
  bitstream), ``values_len = ceil(nnz*b/8)``.

``cols`` must not exceed ``2**ci`` and ``nnz`` must fit ``rp`` bits, else encoding fails
naming the smallest width that fits; by default the encoder picks those smallest widths.
"""

from __future__ import annotations

import numpy as np

from . import container
from .bitstream import pack_signed, pack_unsigned, unpack_signed, unpack_unsigned
from .errors import FormatError, SparsefabError

WIDTHS = (8, 16, 32)


def _check_widths(index_bits: int, ptr_bits: int) -> None:
    if index_bits not in WIDTHS:
        raise SparsefabError(f"index_bits={index_bits}: expected 8, 16 or 32")
    if ptr_bits not in WIDTHS:
        raise SparsefabError(f"ptr_bits={ptr_bits}: expected 8, 16 or 32")


def _min_width(n: int) -> int:
    return next((w for w in WIDTHS if n < 1 << w), 64)


def csr_arrays(codes, *, bits: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr int64, indices int64, data int8)`` of a code matrix (scipy's CSR arrays)."""
    c = container.as_codes(codes, bits)
    mask = c != 0
    indptr = np.zeros(c.shape[0] + 1, np.int64)
    np.cumsum(np.count_nonzero(mask, axis=1), out=indptr[1:])
    flat = np.flatnonzero(mask)
    return indptr, flat % c.shape[1], c.reshape(-1).take(flat)


def encode(codes, *, bits: int = 8, index_bits: int | None = None, ptr_bits: int | None = None,
           quant=None) -> bytes:
    """Encode a code matrix as CSR.

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
    bits : int
        Code width, 2, 4 or 8.
    index_bits : int, optional
        Column-index width ``ci`` (8, 16, 32); ``cols <= 2**ci``.  Default: the smallest
        that fits.
    ptr_bits : int, optional
        Row-pointer width ``rp`` (8, 16, 32); ``nnz < 2**rp``.  Default: the smallest
        that fits.
    quant : QuantParams or None
    """
    c = container.as_codes(codes, bits)
    rows, cols = c.shape
    indptr, indices, data = csr_arrays(c, bits=bits)
    nnz = int(indptr[-1])
    if index_bits is None:
        index_bits = _min_width(cols - 1)
    if ptr_bits is None:
        ptr_bits = _min_width(nnz)
    _check_widths(index_bits, ptr_bits)
    if cols > 1 << index_bits:
        raise SparsefabError(f"csr: cols={cols} needs index_bits >= {_min_width(cols - 1)}, got {index_bits}")
    if nnz >= 1 << ptr_bits:
        raise SparsefabError(f"csr: nnz={nnz} needs ptr_bits >= {_min_width(nnz)}, got {ptr_bits}")
    index = pack_unsigned(indptr, ptr_bits) + pack_unsigned(indices, index_bits)
    return container.pack(format="csr", bits=bits, rows=rows, cols=cols, nnz=nnz, p0=index_bits, p1=ptr_bits,
                          meta=container.quant_block(quant, bits, c.shape), index=index,
                          values=pack_signed(data, bits))


def _check_header(h: container.Header) -> None:
    if h.p0 not in WIDTHS or h.p1 not in WIDTHS:
        raise FormatError(f"csr header: index bits p0={h.p0}, pointer bits p1={h.p1}; expected 8, 16 or 32")
    if h.p2:
        raise FormatError(f"csr header: p2={h.p2}, expected 0")
    if h.cols > 1 << h.p0 or h.nnz >= 1 << h.p1:
        raise FormatError(f"csr header: cols={h.cols} or nnz={h.nnz} does not fit p0={h.p0}/p1={h.p1} bits")
    container.expect(h, "index_len", h.index_len, ((h.rows + 1) * h.p1 + h.nnz * h.p0) // 8)
    container.expect(h, "values_len", h.values_len, (h.nnz * h.bits + 7) // 8)


def read_arrays(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, container.Header, object]:
    """Parse a CSR container and check its arrays: ``(indptr, indices, data, header, quant)``."""
    h, quant, rest, index, values = container.open_container(data, "csr", _check_header)
    if len(rest):
        raise FormatError(f"csr meta: {len(rest)} unexpected bytes after the quantization block")
    split = (h.rows + 1) * h.p1 // 8
    indptr = unpack_unsigned(index[:split], h.p1, h.rows + 1)
    indices = unpack_unsigned(index[split:], h.p0, h.nnz)
    if indptr[0] != 0 or indptr[-1] != h.nnz:
        raise FormatError(f"csr indptr: starts at {indptr[0]}, ends at {indptr[-1]}; expected 0 and nnz={h.nnz}")
    counts = np.diff(indptr)
    if (counts < 0).any():
        r = int(np.argmax(counts < 0))
        raise FormatError(f"csr indptr: decreases at row {r} ({indptr[r]} -> {indptr[r + 1]})")
    if h.nnz:
        if int(indices.max()) >= h.cols:
            i = int(np.argmax(indices >= h.cols))
            raise FormatError(f"csr indices: entry {i} is column {indices[i]}, beyond cols={h.cols}")
        row = np.repeat(np.arange(h.rows), counts)
        bad = (np.diff(row) == 0) & (np.diff(indices) <= 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise FormatError(f"csr indices: row {row[i]} columns not strictly increasing at entry {i + 1}")
    vals = unpack_signed(values, h.bits, h.nnz)
    if h.nnz and not vals.all():
        i = int(np.argmin(vals != 0))
        raise FormatError(f"csr data: entry {i} is an explicit zero")
    tail = (h.nnz * h.bits) % 8
    if tail and values[-1] >> tail:
        raise FormatError("csr values: padding bits after the last value are not zero")
    return indptr, indices, vals, h, quant


def decode(data) -> tuple[np.ndarray, object]:
    """Decode a CSR container: ``(codes int8 (rows, cols), QuantParams)``."""
    indptr, indices, vals, h, quant = read_arrays(data)
    out = np.zeros((h.rows, h.cols), np.int8)
    row = np.repeat(np.arange(h.rows, dtype=np.int64), np.diff(indptr))
    out.reshape(-1)[row * h.cols + indices] = vals
    return out, quant
