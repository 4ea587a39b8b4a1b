"""N:M structured-sparse format (format 4): per group of M columns, N values + N positions.

Each row is cut into ``G = ceil(cols / M)`` groups of ``M`` consecutive columns.  A group
holds at most ``N`` nonzeros (else the matrix is not N:M and encoding fails naming the
first offending group).  When ``cols`` is not a multiple of ``M``, the last group of each
row is padded with implicit zero columns ``cols .. G*M-1``; those columns may appear as
slots (value 0) but never hold a nonzero.

Every group stores exactly ``N`` slots, in increasing position order.  The slots are the
group's nonzero positions plus, when it has fewer than ``N``, the lowest positions that
hold a zero (these slots carry the value 0), so the encoding of a matrix is unique.

Byte layout (docs/FORMATS.md, "nm"): header p0 = M (a power of two, 2..256), p1 = N
(1 <= N < M), p2 = 0; nnz = the number of nonzero codes.

* meta = the quantization block only;
* index = the ``rows*G*N`` slot positions (0..M-1), each ``log2(M)`` bits, LSB-first
  bitstream in row, group, slot order; ``index_len = ceil(rows*G*N*log2(M)/8)``;
* values = the ``rows*G*N`` slot values at ``b`` bits in the same order,
  ``values_len = ceil(rows*G*N*b/8)``.
"""

from __future__ import annotations

import numpy as np

from . import container
from .bitstream import pack_signed, pack_unsigned, unpack_signed, unpack_unsigned
from .errors import FormatError, SparsefabError


def _check_nm(n: int, m: int) -> int:
    if not isinstance(m, (int, np.integer)) or m < 2 or m > 256 or m & (m - 1):
        raise SparsefabError(f"m={m!r}: expected a power of two in 2..256")
    if not isinstance(n, (int, np.integer)) or not 1 <= n < m:
        raise SparsefabError(f"n={n!r}: expected 1 <= n < m={m}")
    return int(m).bit_length() - 1


def _groups(c: np.ndarray, m: int) -> np.ndarray:
    rows, cols = c.shape
    g = -(-cols // m)
    if g * m == cols:
        return c.reshape(rows, g, m)
    padded = np.zeros((rows, g * m), c.dtype)
    padded[:, :cols] = c
    return padded.reshape(rows, g, m)


def _group_counts(nz: np.ndarray) -> np.ndarray:
    """Nonzeros per group of a (rows, G, M) bool array, as int16 (a pass per position is
    much faster than a NumPy reduction over a short last axis)."""
    counts = np.zeros(nz.shape[:2], np.int16)
    for p in range(nz.shape[2]):
        counts += nz[:, :, p]
    return counts


def max_group_nonzeros(codes, *, m: int = 4) -> int:
    """The smallest N for which ``codes`` is N:M (the largest nonzero count of any group)."""
    c = np.asarray(codes)
    if c.size == 0:
        return 0
    return int(_group_counts(_groups(c, m) != 0).max())


def nm_slots(codes, *, bits: int = 8, n: int = 2, m: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The slots of an N:M matrix: ``(positions int64, values int8)``, both (rows, G, N)."""
    _check_nm(n, m)
    c = container.as_codes(codes, bits)
    grp = _groups(c, m)
    nz = grp != 0
    counts = _group_counts(nz)
    if counts.max(initial=0) > n:
        r, g = (int(i) for i in np.argwhere(counts > n)[0])
        hi = min((g + 1) * m, c.shape[1]) - 1
        raise SparsefabError(f"not {n}:{m} sparse: row {r}, columns {g * m}..{hi} hold {counts[r, g]} "
                             f"nonzeros (at most {n} allowed)")
    # Slot p is chosen if it holds a nonzero, or if it is one of the first (n - count)
    # zeros of its group; that gives exactly n slots per group, already in position order.
    need = (n - counts).astype(np.int16)
    zeros_seen = np.zeros(counts.shape, np.int16)
    chosen_mask = np.empty(grp.shape, np.bool_)
    for p in range(m):  # loop over the m positions of a group, vectorised over all groups
        z = ~nz[:, :, p]
        chosen_mask[:, :, p] = ~z | (zeros_seen < need)
        zeros_seen += z
    flat = np.flatnonzero(chosen_mask)
    chosen = (flat & (m - 1)).reshape(*counts.shape, n)
    values = grp.reshape(-1)[flat].reshape(*counts.shape, n)
    return chosen.astype(np.int64), values


def encode(codes, *, bits: int = 8, n: int = 2, m: int = 4, quant=None) -> bytes:
    """Encode an N:M sparse code matrix.

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
        Every group of ``m`` columns holds at most ``n`` nonzeros.
    bits : int
        Code width, 2, 4 or 8.
    n, m : int
        ``1 <= n < m``, ``m`` a power of two up to 256.
    quant : QuantParams or None
    """
    pbits = _check_nm(n, m)
    c = container.as_codes(codes, bits)
    pos, vals = nm_slots(c, bits=bits, n=n, m=m)
    return container.pack(format="nm", bits=bits, rows=c.shape[0], cols=c.shape[1],
                          nnz=int(np.count_nonzero(vals)), p0=m, p1=n,
                          meta=container.quant_block(quant, bits, c.shape),
                          index=pack_unsigned(pos, pbits), values=pack_signed(vals, bits))


def _check_header(h: container.Header) -> None:
    m, n = h.p0, h.p1
    if m < 2 or m > 256 or m & (m - 1) or not 1 <= n < m:
        raise FormatError(f"nm header: M={m}, N={n}; expected M a power of two in 2..256 and 1 <= N < M")
    if h.p2:
        raise FormatError(f"nm header: p2={h.p2}, expected 0")
    slots = h.rows * (-(-h.cols // m)) * n
    container.expect(h, "index_len", h.index_len, (slots * (m.bit_length() - 1) + 7) // 8)
    container.expect(h, "values_len", h.values_len, (slots * h.bits + 7) // 8)


def decode(data) -> tuple[np.ndarray, object]:
    """Decode an N:M container: ``(codes int8 (rows, cols), QuantParams)``."""
    h, quant, rest, index, values = container.open_container(data, "nm", _check_header)
    if len(rest):
        raise FormatError(f"nm meta: {len(rest)} unexpected bytes after the quantization block")
    m, n = h.p0, h.p1
    pbits = m.bit_length() - 1
    g = -(-h.cols // m)
    slots = h.rows * g * n
    for name, sec, width in (("index", index, pbits), ("values", values, h.bits)):
        tail = (slots * width) % 8
        if tail and sec[-1] >> tail:
            raise FormatError(f"nm {name}: padding bits after the last slot are not zero")
    pos = unpack_unsigned(index, pbits, slots).reshape(h.rows, g, n)
    vals = unpack_signed(values, h.bits, slots).reshape(h.rows, g, n)
    if n > 1:
        bad = np.diff(pos, axis=2) <= 0
        if bad.any():
            r, gg, _ = (int(i) for i in np.argwhere(bad)[0])
            raise FormatError(f"nm: row {r} group {gg} positions {pos[r, gg].tolist()} not strictly increasing")
    out = np.zeros((h.rows, g * m), np.int8)
    base = (np.arange(h.rows * g, dtype=np.int64) * m).reshape(h.rows, g, 1)
    out.reshape(-1)[(base + pos).reshape(-1)] = vals.reshape(-1)
    if g * m != h.cols and out[:, h.cols:].any():
        r = int(np.argmax(out[:, h.cols:].any(axis=1)))
        raise FormatError(f"nm: row {r} has a nonzero in a padding column >= cols={h.cols}")
    codes = np.ascontiguousarray(out[:, :h.cols])
    container.check_nonzero_count(h, codes)
    return codes, quant
