"""Vectorised packing of fixed-width integer fields into LSB-first bitstreams.

Every compressed format of sparsefab stores its fields the same way: field ``i`` of
width ``k`` occupies bits ``[i*k, (i+1)*k)`` of the stream, and bit ``n`` of the stream
is bit ``n % 8`` of byte ``n // 8`` (least significant bit first).  Read as ``W``-bit
little-endian words, word ``j`` therefore carries bits ``[j*W, (j+1)*W)``; this is what
hardware decoders consume.

Signed fields are two's complement of width ``k``.
"""

from __future__ import annotations

import numpy as np

from .errors import SparsefabError

_WORD_DTYPES = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}


def packed_len(count: int, width: int) -> int:
    """Bytes needed for ``count`` fields of ``width`` bits: ``ceil(count * width / 8)``."""
    return (int(count) * int(width) + 7) // 8


def pack_unsigned(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers (each < ``2**width``) into ``packed_len(len, width)`` bytes.

    Parameters
    ----------
    values : array of int
        One-dimensional; values are taken modulo ``2**width`` (callers range-check first).
    width : int
        Field width in bits, 1..32 (or 64).
    """
    v = np.asarray(values).reshape(-1)
    n = v.size
    if width in _WORD_DTYPES:
        return v.astype(_WORD_DTYPES[width], copy=False).tobytes()
    if width in (1, 2, 4):
        per = 8 // width
        u = (v.astype(np.uint8, copy=False) & np.uint8((1 << width) - 1))
        pad = (-n) % per
        if pad:
            u = np.concatenate([u, np.zeros(pad, np.uint8)])
        u = u.reshape(-1, per)
        out = np.zeros(u.shape[0], np.uint8)
        for k in range(per):  # loop over the fields of one byte, not over elements
            out |= u[:, k] << np.uint8(k * width)
        return out.tobytes()
    # Generic width: expand to bits (little-endian within each field) and pack.
    u = v.astype(np.uint64, copy=False)
    shifts = np.arange(width, dtype=np.uint64)
    bits = ((u[:, None] >> shifts) & np.uint64(1)).astype(np.uint8).reshape(-1)
    return np.packbits(bits, bitorder="little").tobytes()


def unpack_unsigned(data, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_unsigned`: ``count`` fields of ``width`` bits as int64.

    ``data`` must hold at least ``packed_len(count, width)`` bytes.
    """
    need = packed_len(count, width)
    buf = np.frombuffer(data, dtype=np.uint8, count=need) if need else np.zeros(0, np.uint8)
    if width in _WORD_DTYPES:
        return buf.view(_WORD_DTYPES[width]).astype(np.int64)
    if width in (1, 2, 4):
        per = 8 // width
        shifts = (np.arange(per, dtype=np.uint8) * np.uint8(width))
        u = (buf[:, None] >> shifts) & np.uint8((1 << width) - 1)
        return u.reshape(-1)[:count].astype(np.int64)
    bits = np.unpackbits(buf, bitorder="little")[: count * width].reshape(count, width)
    weights = (np.int64(1) << np.arange(width, dtype=np.int64))
    return bits.astype(np.int64) @ weights


def check_signed_range(values: np.ndarray, bits: int, what: str = "codes") -> None:
    """Raise if any value does not fit ``bits``-bit two's complement, naming the first one."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    v = np.asarray(values)
    if v.size == 0:
        return
    if int(v.min()) < lo or int(v.max()) > hi:
        bad = np.argwhere((v < lo) | (v > hi))[0]
        pos = tuple(int(i) for i in bad)
        raise SparsefabError(
            f"{what}: value {int(v[pos])} at index {pos if len(pos) > 1 else pos[0]} "
            f"does not fit {bits}-bit two's complement [{lo}, {hi}]")


def pack_signed(values: np.ndarray, bits: int) -> bytes:
    """Pack signed ``bits``-bit two's-complement codes (range already checked)."""
    v = np.asarray(values).reshape(-1)
    if bits == 8:
        return v.astype(np.int8, copy=False).tobytes()
    u = v.astype(np.int8, copy=False).view(np.uint8) & np.uint8((1 << bits) - 1)
    return pack_unsigned(u, bits)


def unpack_signed(data, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_signed`: ``count`` codes as int8 (bits <= 8)."""
    if bits == 8:
        return np.frombuffer(data, dtype=np.int8, count=count).copy()
    u = unpack_unsigned(data, bits, count).astype(np.int16)
    sign = np.int16(1 << (bits - 1))
    return ((u ^ sign) - sign).astype(np.int8)


def words(data: bytes, bus_bits: int) -> np.ndarray:
    """View a byte string (zero-padded to a whole word) as ``bus_bits``-bit little-endian words."""
    if bus_bits not in (8, 16, 32, 64):
        raise SparsefabError(f"bus_bits={bus_bits}: expected 8, 16, 32 or 64")
    nbytes = bus_bits // 8
    pad = (-len(data)) % nbytes
    buf = bytes(data) + b"\0" * pad
    return np.frombuffer(buf, dtype=_WORD_DTYPES[bus_bits]).astype(
        np.uint64 if bus_bits == 64 else np.uint32)


def words_to_bytes(w: np.ndarray, bus_bits: int) -> bytes:
    """Inverse of :func:`words`: the little-endian bytes of the words."""
    return np.asarray(w).astype(_WORD_DTYPES[bus_bits]).tobytes()


def hex_lines(w: np.ndarray, bus_bits: int) -> str:
    """One hexadecimal word per line, as Verilog ``$readmemh`` reads it."""
    digits = bus_bits // 4
    return "".join(f"{int(x):0{digits}x}\n" for x in np.asarray(w).reshape(-1))
