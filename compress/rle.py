"""Zero-run-length format, EIE style (format 3).

Each row is a list of entries ``(run, value)``: ``run`` is the number of zero codes
skipped since the previous entry of the row (or the row start), then comes ``value``.
With ``r`` run bits the longest run is ``R = 2**r - 1`` (15 for the default ``r = 4``).
A gap of ``g`` zeros before a nonzero is written as ``g // (R+1)`` padding entries
``(R, 0)`` (each covers ``R`` zeros plus one explicit zero, i.e. ``R+1`` columns) followed
by the entry ``(g % (R+1), value)``.  Zeros after a row's last nonzero are not stored:
the row pointers tell where each row's entries end.  This is EIE's relative indexing
(Han et al., ISCA 2016), applied along rows.

Byte layout (docs/FORMATS.md, "rle"): header p0 = run bits ``r`` (1..16, default 4), p1 =
row-pointer bits ``rp`` (8, 16 or 32; default the smallest that fits), p2 = 0; nnz = the
number of nonzero codes (padding entries are not counted).

* meta = the quantization block only;
* index = ``row_ptr`` (``rows + 1`` unsigned ``rp``-bit integers: entry index where each row
  starts; ``row_ptr[rows] = E``, the number of entries) followed by the ``E`` runs as an
  ``r``-bit LSB-first bitstream; ``index_len = (rows+1)*rp/8 + ceil(E*r/8)``;
* values = the ``E`` entry values (padding entries hold 0) at ``b`` bits,
  ``values_len = ceil(E*b/8)``.
"""

from __future__ import annotations

import numpy as np

from . import container
from .bitstream import pack_signed, pack_unsigned, unpack_signed, unpack_unsigned
from .errors import FormatError, SparsefabError

PTR_WIDTHS = (8, 16, 32)


def _min_width(n: int) -> int:
    return next((w for w in PTR_WIDTHS if n < 1 << w), 64)


def rle_entries(codes, *, bits: int = 8, run_bits: int = 4):
    """The EIE entries of a code matrix.

    Returns
    -------
    row_ptr : ndarray of int64, shape (rows + 1,)
        Entry index of each row's start.
    runs : ndarray of uint16, shape (E,)
    values : ndarray of int8, shape (E,)
        Padding entries have ``run = 2**run_bits - 1`` and value 0.
    """
    if not isinstance(run_bits, (int, np.integer)) or not 1 <= run_bits <= 16:
        raise SparsefabError(f"run_bits={run_bits!r}: expected an integer in 1..16")
    c = container.as_codes(codes, bits)
    rows, cols = c.shape
    mask = c.reshape(-1) != 0
    flat = np.flatnonzero(mask)
    vals = c.reshape(-1)[flat]
    nz_ptr = np.zeros(rows + 1, np.int64)
    np.cumsum(np.count_nonzero(c, axis=1), out=nz_ptr[1:])
    # gap = zeros before each nonzero since the previous one of its row (or the row start)
    prev = np.empty_like(flat)
    prev[:1] = -1
    prev[1:] = flat[:-1]
    firsts = nz_ptr[:-1][np.diff(nz_ptr) > 0]
    prev[firsts] = np.flatnonzero(np.diff(nz_ptr) > 0) * cols - 1
    gap = np.subtract(flat, prev, out=prev)
    gap -= 1
    period = 1 << run_bits  # R + 1
    pads = gap >> run_bits
    if not pads.any():  # common case: no run exceeds R
        return nz_ptr, gap.astype(np.uint16), vals
    ends = pads + 1
    np.cumsum(ends, out=ends)  # one past each nonzero's own entry
    ends -= 1
    E = int(ends[-1]) + 1
    runs = np.full(E, period - 1, np.uint16)
    values = np.zeros(E, np.int8)
    runs[ends] = gap & (period - 1)
    values[ends] = vals
    # entries before row r = nonzeros before it + their padding entries
    cs = np.zeros(flat.size + 1, np.int64)
    np.cumsum(pads, out=cs[1:])
    row_ptr = nz_ptr + cs[nz_ptr]
    return row_ptr, runs, values


def encode(codes, *, bits: int = 8, run_bits: int = 4, ptr_bits: int | None = None, quant=None) -> bytes:
    """Encode a code matrix as EIE-style zero runs.

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
    bits : int
        Code width, 2, 4 or 8.
    run_bits : int
        Run-length field width ``r`` (1..16); EIE uses 4.
    ptr_bits : int, optional
        Row-pointer width (8, 16, 32); default the smallest that holds the entry count.
    quant : QuantParams or None
    """
    c = container.as_codes(codes, bits)
    row_ptr, runs, values = rle_entries(c, bits=bits, run_bits=run_bits)
    E = int(row_ptr[-1])
    if ptr_bits is None:
        ptr_bits = _min_width(E)
    if ptr_bits not in PTR_WIDTHS:
        raise SparsefabError(f"ptr_bits={ptr_bits}: expected 8, 16 or 32")
    if E >= 1 << ptr_bits:
        raise SparsefabError(f"rle: {E} entries need ptr_bits >= {_min_width(E)}, got {ptr_bits}")
    index = pack_unsigned(row_ptr, ptr_bits) + pack_unsigned(runs, run_bits)
    return container.pack(format="rle", bits=bits, rows=c.shape[0], cols=c.shape[1],
                          nnz=int(np.count_nonzero(values)), p0=run_bits, p1=ptr_bits,
                          meta=container.quant_block(quant, bits, c.shape), index=index,
                          values=pack_signed(values, bits))


def _check_header(h: container.Header) -> None:
    if not 1 <= h.p0 <= 16:
        raise FormatError(f"rle header: run bits p0={h.p0}, expected 1..16")
    if h.p1 not in PTR_WIDTHS:
        raise FormatError(f"rle header: pointer bits p1={h.p1}, expected 8, 16 or 32")
    if h.p2:
        raise FormatError(f"rle header: p2={h.p2}, expected 0")
    ptr_len = (h.rows + 1) * h.p1 // 8
    if h.index_len < ptr_len:
        raise FormatError(f"header: index_len={h.index_len} is shorter than the {ptr_len}-byte row pointers")
    # E (the entry count) is implied by values_len; it must also explain index_len.
    e_max = h.values_len * 8 // h.bits
    e_min = max(0, (h.values_len - 1) * 8 // h.bits + 1) if h.values_len else 0
    if not ptr_len + (e_min * h.p0 + 7) // 8 <= h.index_len <= ptr_len + (e_max * h.p0 + 7) // 8:
        raise FormatError(f"header: index_len={h.index_len} and values_len={h.values_len} "
                          f"imply different entry counts")
    if h.nnz > e_max:
        raise FormatError(f"header: nnz={h.nnz} exceeds the {e_max} entries values_len allows")


def read_entries(data):
    """Parse an RLE container and check it: ``(row_ptr, runs, values, header, quant)``."""
    h, quant, rest, index, values = container.open_container(data, "rle", _check_header)
    if len(rest):
        raise FormatError(f"rle meta: {len(rest)} unexpected bytes after the quantization block")
    split = (h.rows + 1) * h.p1 // 8
    row_ptr = unpack_unsigned(index[:split], h.p1, h.rows + 1)
    E = int(row_ptr[-1])
    container.expect(h, "index_len", h.index_len, split + (E * h.p0 + 7) // 8)
    container.expect(h, "values_len", h.values_len, (E * h.bits + 7) // 8)
    if row_ptr[0] != 0:
        raise FormatError(f"rle row_ptr: starts at {row_ptr[0]}, expected 0")
    counts = np.diff(row_ptr)
    if (counts < 0).any():
        r = int(np.argmax(counts < 0))
        raise FormatError(f"rle row_ptr: decreases at row {r} ({row_ptr[r]} -> {row_ptr[r + 1]})")
    runs = unpack_unsigned(index[split:], h.p0, E)
    vals = unpack_signed(values, h.bits, E)
    for name, sec, width in (("index", index, h.p0), ("values", values, h.bits)):
        tail = (E * width) % 8
        if tail and sec[-1] >> tail:
            raise FormatError(f"rle {name}: padding bits after the last entry are not zero")
    R = (1 << h.p0) - 1
    pad = vals == 0
    if (pad & (runs != R)).any():
        i = int(np.argmax(pad & (runs != R)))
        raise FormatError(f"rle entry {i}: zero value with run {runs[i]}, padding entries must have run {R}")
    last = row_ptr[1:][counts > 0] - 1
    if last.size and (vals[last] == 0).any():
        i = int(last[np.argmax(vals[last] == 0)])
        raise FormatError(f"rle entry {i}: a row ends with a padding entry")
    nnz = int(E - np.count_nonzero(pad))
    if nnz != h.nnz:
        raise FormatError(f"rle: {nnz} nonzero entries, header says nnz={h.nnz}")
    return row_ptr, runs, vals, h, quant


def decode(data) -> tuple[np.ndarray, object]:
    """Decode an RLE container: ``(codes int8 (rows, cols), QuantParams)``."""
    row_ptr, runs, vals, h, quant = read_entries(data)
    E = int(row_ptr[-1])
    out = np.zeros((h.rows, h.cols), np.int8)
    if E:
        counts = np.diff(row_ptr)
        # flat position of entry i of row r = r*cols + (steps of row r up to i) - 1, where a
        # step is run + 1; one cumulative sum over all entries plus one offset per row.
        cs = np.cumsum(runs + 1)
        before = np.concatenate([[0], cs])[row_ptr]  # steps before each row start, (rows+1,)
        used = before[1:] - before[:-1]  # columns each row's entries cover
        if used.max() > h.cols:
            r = int(np.argmax(used > h.cols))
            raise FormatError(f"rle entries of row {r} run past column {h.cols - 1}")
        offset = np.arange(h.rows, dtype=np.int64) * h.cols - before[:-1] - 1
        out.reshape(-1)[cs + np.repeat(offset, counts)] = vals
    return out, quant
