"""Dense format (format 0): every code, row-major, packed at ``bits`` bits.

Byte layout (docs/FORMATS.md, "dense"): meta = the quantization block only; index is
empty; values = all ``rows * cols`` codes in row-major order, code ``i`` at bits
``[i*b, (i+1)*b)`` (b-bit two's complement, LSB first), ``values_len =
ceil(rows*cols*b/8)``.  Header p0 = p1 = p2 = 0; nnz is the number of nonzero codes
(checked on decode).
"""

from __future__ import annotations

import numpy as np

from . import container
from .bitstream import pack_signed, unpack_signed
from .errors import FormatError


def encode(codes, *, bits: int = 8, quant=None) -> bytes:
    """Encode a code matrix densely.

    Parameters
    ----------
    codes : array_like of int, shape (rows, cols)
        Signed codes fitting ``bits``-bit two's complement.
    bits : int
        2, 4 or 8.
    quant : QuantParams or None
        Stored in the meta section (None: the "none" kind).
    """
    c = container.as_codes(codes, bits)
    rows, cols = c.shape
    return container.pack(format="dense", bits=bits, rows=rows, cols=cols, nnz=int(np.count_nonzero(c)),
                          meta=container.quant_block(quant, bits, c.shape), index=b"",
                          values=pack_signed(c, bits))


def _check_header(h: container.Header) -> None:
    for name in ("p0", "p1", "p2"):
        if getattr(h, name):
            raise FormatError(f"dense header: {name}={getattr(h, name)}, expected 0")
    container.expect(h, "index_len", h.index_len, 0)
    container.expect(h, "values_len", h.values_len, (h.rows * h.cols * h.bits + 7) // 8)


def decode(data) -> tuple[np.ndarray, object]:
    """Decode a dense container: ``(codes int8 (rows, cols), QuantParams)``."""
    h, quant, rest, _, values = container.open_container(data, "dense", _check_header)
    if len(rest):
        raise FormatError(f"dense meta: {len(rest)} unexpected bytes after the quantization block")
    n = h.rows * h.cols
    tail = (n * h.bits) % 8
    if tail and values[-1] >> tail:
        raise FormatError("dense values: padding bits after the last code are not zero")
    codes = unpack_signed(values, h.bits, n).reshape(h.rows, h.cols)
    container.check_nonzero_count(h, codes)
    return codes, quant
