"""Length-limited canonical Huffman codes (golden model of the KV codec's entropy coder).

A codebook is stored as its table of code lengths only (0 = symbol unused); the codes
themselves are *canonical*: symbols sorted by (length, symbol index) receive consecutive
code values, so hardware rebuilds every code from the lengths (as DEFLATE does).

Bit order: a code of length ``l`` with value ``c`` is emitted most significant bit first in
stream order (the first bit read is bit ``l-1`` of ``c``).  Decoders look at the next
``max_len`` bits of a stream (first bit read = most significant bit of the index) and
find symbol and length in one table lookup (:func:`decode_table`).
"""

from __future__ import annotations

import numpy as np

from .errors import SparsefabError


def limited_lengths(counts, max_len: int) -> np.ndarray:
    """Optimal code lengths with every length <= ``max_len`` (package-merge algorithm).

    Parameters
    ----------
    counts : array of int or float, shape [S]
        Symbol frequencies; symbols with count 0 get length 0 (no code), except that a
        single used symbol gets length 1 so that every code is at least one bit.
    max_len : int
        Longest allowed code, 1..24; ``2**max_len`` must cover the number of used symbols.

    Returns
    -------
    ndarray int64 [S]
        Code lengths; Kraft sum over used symbols is exactly 1 when 2+ symbols are used.
    """
    w = np.asarray(counts, dtype=np.float64).reshape(-1)
    if w.size == 0 or (w < 0).any() or not np.isfinite(w).all():
        raise SparsefabError("huffman counts: expected a non-empty array of finite counts >= 0")
    if not 1 <= int(max_len) <= 24:
        raise SparsefabError(f"max_len={max_len}: expected 1..24")
    used = np.flatnonzero(w > 0)
    lengths = np.zeros(w.size, np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    if used.size > (1 << max_len):
        raise SparsefabError(f"huffman: {used.size} symbols cannot have codes of <= {max_len} bits")
    # Package-merge (Larmore & Hirschberg): loop over code lengths and the <= 64 symbols of
    # a codebook; this runs once per codebook at training time, never per value.
    leaves = sorted((float(w[s]), (int(s),)) for s in used)
    packages = list(leaves)
    for _ in range(max_len - 1):
        paired = [(packages[i][0] + packages[i + 1][0], packages[i][1] + packages[i + 1][1])
                  for i in range(0, len(packages) - 1, 2)]
        packages = sorted(leaves + paired, key=lambda t: t[0])
    for _, syms in packages[: 2 * used.size - 2]:
        for s in syms:
            lengths[s] += 1
    return lengths


def kraft(lengths) -> float:
    """Kraft sum ``sum 2**-l`` over used symbols (1.0 for a complete code)."""
    ln = np.asarray(lengths, dtype=np.int64)
    ln = ln[ln > 0]
    return float(np.sum(np.ldexp(1.0, -ln))) if ln.size else 0.0


def check_lengths(lengths, max_len: int, what: str = "code lengths") -> np.ndarray:
    """Validate a length table: values in 0..max_len and a prefix code (Kraft sum <= 1)."""
    ln = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if ln.size == 0 or ln.min() < 0 or ln.max() > max_len:
        raise SparsefabError(f"{what}: lengths must be in 0..{max_len}, got range "
                             f"[{int(ln.min()) if ln.size else 0}, {int(ln.max()) if ln.size else 0}]")
    if not (ln > 0).any():
        raise SparsefabError(f"{what}: no symbol has a code")
    if kraft(ln) > 1.0:
        raise SparsefabError(f"{what}: Kraft sum {kraft(ln):.4f} > 1, not a prefix code")
    return ln


def canonical_codes(lengths) -> np.ndarray:
    """Canonical code values for a length table (0 where the length is 0)."""
    ln = np.asarray(lengths, dtype=np.int64).reshape(-1)
    codes = np.zeros(ln.size, np.int64)
    order = np.lexsort((np.arange(ln.size), ln))
    code = 0
    prev = 0
    for s in order:  # <= 64 symbols, once per codebook
        length = int(ln[s])
        if length == 0:
            continue
        code <<= length - prev
        codes[s] = code
        code += 1
        prev = length
    return codes


def decode_table(lengths, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Lookup table on the next ``max_len`` stream bits (first bit = MSB of the index).

    Returns ``(symbol, length)`` arrays of ``2**max_len`` entries; ``length`` is 0 where
    the bit pattern starts with no valid code (only possible for incomplete codes).
    """
    ln = np.asarray(lengths, dtype=np.int64).reshape(-1)
    codes = canonical_codes(ln)
    sym = np.zeros(1 << max_len, np.int64)
    tl = np.zeros(1 << max_len, np.int64)
    for s in np.flatnonzero(ln > 0):
        shift = max_len - int(ln[s])
        lo = int(codes[s]) << shift
        sym[lo: lo + (1 << shift)] = s
        tl[lo: lo + (1 << shift)] = ln[s]
    return sym, tl
