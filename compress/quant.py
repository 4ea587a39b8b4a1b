"""Quantization and the bit-exact integer path the RTL implements.

Two halves:

* **Float <-> code**: :func:`quantize` / :func:`dequantize` (symmetric or asymmetric, per
  tensor / per output channel / per group of G along the input dimension, 2..8 bits,
  min-max, percentile or MSE-optimal clipping), :func:`quantize_activations`, and the
  serialisable :class:`QuantParams` whose :meth:`QuantParams.to_bytes` is the "quant block"
  that starts the meta section of every weight file.
* **Integer path** (CONTRACTS.md section A, specified in ``docs/INTEGER_PATH.md``):
  :func:`spmv_int` (wrapping accumulation), :func:`requantize` (fixed-point multiplier,
  round-half-up shift, zero point, ReLU, saturation), :func:`quantize_multiplier`,
  :func:`layer_requant_params` and :func:`linear_int`.  The hardware output stage
  implements :func:`requantize` bit for bit; everybody (demo MLP, RTL testbenches) calls
  :func:`linear_int` rather than re-deriving it.

Everything is vectorised NumPy; bad input raises :class:`SparsefabError` with one line.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from .errors import FormatError, SparsefabError

__all__ = [
    "GRANULARITIES",
    "QLayer",
    "QuantParams",
    "code_range",
    "dequantize",
    "layer_requant_params",
    "linear_int",
    "parse_calib",
    "parse_quant_spec",
    "quantize",
    "quantize_activations",
    "quantize_multiplier",
    "requantize",
    "spmv_int",
]

GRANULARITIES = ("none", "tensor", "channel", "group")
_KIND_CODE = {g: i for i, g in enumerate(GRANULARITIES)}

MULTIPLIER_BITS = 16
MAX_SHIFT = 47
# |acc + bias| must fit this many bits (signed) so that t * multiplier fits int64 exactly;
# the RTL pre-scale register is 48 bits signed.
T_BITS = 48
MIN_BITS, MAX_BITS = 2, 8

# Quant block header: magic, version, kind, bits, flags, axis, reserved, group_size, count.
_QB_MAGIC = b"QB"
_QB_VERSION = 1
_QB_HEADER = struct.Struct("<2sBBBBBBII")  # 16 bytes
_QB_FLAG_SYMMETRIC = 0x01


# --------------------------------------------------------------------------- helpers


def code_range(bits: int) -> tuple[int, int]:
    """Signed two's-complement code range ``(-2**(bits-1), 2**(bits-1) - 1)``."""
    bits = _check_bits(bits, "bits", MIN_BITS, 32)
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _is_intlike(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_bits(bits, name: str, lo: int, hi: int) -> int:
    if not _is_intlike(bits) or not lo <= int(bits) <= hi:
        raise SparsefabError(f"{name}={bits!r}: expected an integer in [{lo}, {hi}]")
    return int(bits)


def _as_int64(x, name: str) -> np.ndarray:
    """Integer (not bool, not float) array-like -> int64 ndarray, rejecting uint64 > int64 max."""
    if _is_intlike(x):
        if not -(1 << 63) <= int(x) < (1 << 63):
            raise SparsefabError(f"{name}: value {int(x)} does not fit int64")
        return np.asarray(int(x), dtype=np.int64)
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise SparsefabError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and int(a.max()) >= (1 << 63):
        raise SparsefabError(f"{name}: value {int(a.max())} does not fit int64")
    return a.astype(np.int64, copy=False)


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _check_range(a: np.ndarray, lo: int, hi: int, name: str) -> None:
    """Raise naming the first element of ``a`` outside [lo, hi]."""
    if a.size == 0:
        return
    if int(a.min()) < lo or int(a.max()) > hi:
        bad = (a < lo) | (a > hi)
        pos = _first_bad(bad) if a.ndim else ()
        raise SparsefabError(f"{name}: value {int(a[pos])} at index {pos} outside [{lo}, {hi}]")


def _check_float(w, name: str) -> np.ndarray:
    a = np.asarray(w)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise SparsefabError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if a.size and not np.isfinite(a).all():
        pos = _first_bad(~np.isfinite(a)) if a.ndim else ()
        raise SparsefabError(f"{name}: non-finite value {a[pos]} at index {pos}")
    return a


def _per_channel_param(v, name: str, acc_shape: tuple[int, ...]) -> np.ndarray:
    """Scalar or 1-D integer parameter broadcast over the LAST axis of ``acc_shape``."""
    a = _as_int64(v, name)
    if a.ndim == 0:
        return a
    if a.ndim != 1:
        raise SparsefabError(f"{name}: expected a scalar or a 1-D array, got shape {a.shape}")
    if len(acc_shape) == 0 or a.shape[0] not in (1, acc_shape[-1]):
        last = acc_shape[-1] if acc_shape else "none (scalar acc)"
        raise SparsefabError(
            f"{name}: length {a.shape[0]} does not match the output-channel (last) axis of acc ({last})"
        )
    return a


# --------------------------------------------------------------------------- integer path


def spmv_int(W_codes, x_codes, acc_bits: int = 32) -> np.ndarray:
    """Integer matrix-vector product as the hardware computes it.

    ``acc[r] = sum_j W[r, j] * x[j]``, wrapped to ``acc_bits`` two's complement (hardware
    adders wrap; wrapping is exact modulo ``2**acc_bits`` whatever the summation order).

    Parameters
    ----------
    W_codes : integer array, shape (rows, cols)
        Weight codes (pruned weights are 0).
    x_codes : integer array, shape (cols,) or (n, cols)
        Input activation codes (raw, including any zero point: fold it into the bias,
        see :func:`layer_requant_params`).
    acc_bits : int, default 32
        Accumulator width, 2..64.

    Returns
    -------
    numpy.ndarray of int64, shape (rows,) or (n, rows)
    """
    acc_bits = _check_bits(acc_bits, "acc_bits", 2, 64)
    W = _as_int64(W_codes, "W_codes")
    x = _as_int64(x_codes, "x_codes")
    if W.ndim != 2:
        raise SparsefabError(f"W_codes: expected a 2-D array (rows, cols), got shape {W.shape}")
    if x.ndim not in (1, 2):
        raise SparsefabError(f"x_codes: expected shape (cols,) or (n, cols), got shape {x.shape}")
    if x.shape[-1] != W.shape[1]:
        raise SparsefabError(f"x_codes: last axis {x.shape[-1]} does not match W_codes cols {W.shape[1]}")
    wmax = int(np.abs(W).max()) if W.size else 0
    xmax = int(np.abs(x).max()) if x.size else 0
    if wmax * xmax * max(W.shape[1], 1) < (1 << 53):
        # Every partial sum is an integer below 2**53: float64 BLAS is exact and much faster.
        acc = np.rint(x.astype(np.float64) @ W.T.astype(np.float64)).astype(np.int64)
    else:
        acc = x @ W.T  # int64 wraps modulo 2**64, which is exact modulo 2**acc_bits
    if acc_bits < 64:
        half = np.int64(1 << (acc_bits - 1))
        mask = np.int64((1 << acc_bits) - 1)
        acc = ((acc + half) & mask) - half
    return acc


def requantize(acc, *, multiplier, shift, bias=0, out_zero_point: int = 0, relu: bool = False,
               out_bits: int = 8) -> np.ndarray:
    """Fixed-point output stage, bit-exact with the RTL (CONTRACTS.md A).

    ::

        t = acc + bias                      exact; must fit 48-bit signed
        p = t * multiplier                  multiplier in [0, 2**16)
        r = (p + 2**(shift-1)) >> shift     if shift > 0 else p  (arithmetic >>: round half up)
        v = r + out_zero_point
        v = max(v, out_zero_point)          if relu
        out = clip(v, -2**(out_bits-1), 2**(out_bits-1) - 1)

    Parameters
    ----------
    acc : integer array
        Accumulators, any shape; the last axis is the output channel.
    multiplier, shift, bias : int or 1-D integer array
        Scalars or per-output-channel arrays (length = ``acc.shape[-1]``).
        ``multiplier`` in [0, 2**16), ``shift`` in [0, 47].
    out_zero_point : int
        Output zero point, inside the ``out_bits`` code range.
    relu : bool
        Clamp below at the zero point (real value 0).
    out_bits : int
        Output width, 2..32.

    Returns
    -------
    numpy.ndarray of int32, shape of ``acc``.

    Notes
    -----
    ``r`` is computed as ``(p >> shift) + ((p >> (shift - 1)) & 1)``, which equals
    ``(p + 2**(shift-1)) >> shift`` exactly and cannot overflow.
    """
    if not isinstance(relu, (bool, np.bool_)):
        raise SparsefabError(f"relu={relu!r}: expected a bool")
    out_bits = _check_bits(out_bits, "out_bits", 2, 32)
    qmin, qmax = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    if not _is_intlike(out_zero_point) or not qmin <= int(out_zero_point) <= qmax:
        raise SparsefabError(f"out_zero_point={out_zero_point!r}: expected an integer in [{qmin}, {qmax}]")
    zp = np.int64(out_zero_point)
    a = _as_int64(acc, "acc")
    m = _per_channel_param(multiplier, "multiplier", a.shape)
    s = _per_channel_param(shift, "shift", a.shape)
    b = _per_channel_param(bias, "bias", a.shape)
    _check_range(m, 0, (1 << MULTIPLIER_BITS) - 1, "multiplier")
    _check_range(s, 0, MAX_SHIFT, "shift")
    lim = 1 << 62
    _check_range(a, -lim, lim - 1, "acc")
    _check_range(b, -lim, lim - 1, "bias")
    t = a + b
    tl = 1 << (T_BITS - 1)
    if t.size and (int(t.min()) < -tl or int(t.max()) >= tl):
        bad = (t < -tl) | (t >= tl)
        pos = _first_bad(bad) if t.ndim else ()
        raise SparsefabError(
            f"acc + bias = {int(t[pos])} at index {pos} does not fit {T_BITS}-bit signed (the RTL pre-scale width)"
        )
    p = t * m
    sm1 = np.maximum(s - 1, 0)
    rounded = (p >> s) + ((p >> sm1) & 1)
    r = np.where(s > 0, rounded, p)
    v = r + zp
    if relu:
        v = np.maximum(v, zp)
    return np.clip(v, qmin, qmax).astype(np.int32)


def quantize_multiplier(real_scale):
    """Fixed-point representation ``real ~= multiplier / 2**shift``.

    ``multiplier = round_half_up(real * 2**shift)`` with ``multiplier`` in
    ``[2**15, 2**16)`` (16-bit precision) when ``shift`` in [0, 47] allows; otherwise the
    closest representable pair: ``shift = 47`` with a smaller (possibly 0) multiplier for
    tiny scales, ``shift = 0`` with the multiplier saturated at ``2**16 - 1`` for scales
    ``>= 65535.5``.  ``real_scale == 0`` gives ``(0, 0)``.

    Parameters
    ----------
    real_scale : float or array of float
        Finite and >= 0.

    Returns
    -------
    (multiplier, shift)
        Python ints for a scalar input, int64 arrays of the input's shape otherwise.
    """
    scalar = np.ndim(real_scale) == 0
    r = np.asarray(real_scale)
    if r.dtype.kind not in "fiu" or r.dtype == np.bool_:
        raise SparsefabError(f"real_scale: expected a real number or array, got dtype {r.dtype}")
    r = r.astype(np.float64)
    if r.size and not np.isfinite(r).all():
        raise SparsefabError(f"real_scale: non-finite value {r[~np.isfinite(r)].flat[0]}")
    if r.size and (r < 0).any():
        raise SparsefabError(f"real_scale: negative value {r[r < 0].flat[0]}; expected >= 0")
    frac, exp = np.frexp(r)  # r = frac * 2**exp, frac in [0.5, 1)
    shift = 16 - exp.astype(np.int64)
    mult = np.floor(np.ldexp(frac, 16) + 0.5).astype(np.int64)
    carry = mult == (1 << 16)
    mult = np.where(carry, 1 << 15, mult)
    shift = np.where(carry, shift - 1, shift)
    tiny = shift > MAX_SHIFT
    if tiny.any():
        mult = np.where(tiny, np.floor(np.ldexp(np.where(tiny, r, 0.0), MAX_SHIFT) + 0.5).astype(np.int64), mult)
        shift = np.where(tiny, MAX_SHIFT, shift)
    big = shift < 0
    if big.any():
        rb = np.minimum(np.where(big, r, 0.0), float(1 << 17))
        mult = np.where(big, np.minimum(np.floor(rb + 0.5), (1 << 16) - 1).astype(np.int64), mult)
        shift = np.where(big, 0, shift)
    zero = r == 0
    mult = np.where(zero, 0, mult)
    shift = np.where(zero, 0, shift)
    if scalar:
        return int(mult), int(shift)
    return mult.astype(np.int64), shift.astype(np.int64)


# --------------------------------------------------------------------------- QuantParams


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class QuantParams:
    """How integer codes map to real values; serialises to the weight-file "quant block".

    ``real = (code - zero_point) * scale``, with ``scale``/``zero_point`` chosen per
    granularity:

    * ``'none'``: codes are given directly, no scale (``real = code``); ``scale`` and
      ``zero_point`` are empty.
    * ``'tensor'``: one scale.
    * ``'channel'``: one scale per index of ``axis`` (axis 0 = rows = output channels).
    * ``'group'``: 2-D only; per channel (index of ``axis``), one scale per group of
      ``group_size`` consecutive elements along the other axis (the input dimension for
      ``axis=0``); the last group of a row may be shorter.  Scales are stored
      channel-major: ``scale[c * n_groups + g]``.

    Attributes
    ----------
    scale : numpy.ndarray of float32, 1-D, read-only
        Finite, > 0.
    zero_point : numpy.ndarray of int32, 1-D, read-only
        Same length as ``scale``; all 0 when ``symmetric``.
    bits : int
        Code width, 2..8 (signed two's complement codes).
    symmetric : bool
    granularity : str
        One of ``'none' 'tensor' 'channel' 'group'``.
    group_size : int or None
        Only for ``'group'``.
    axis : int
        Channel axis (0 or 1 for 2-D weights); 0 for ``'none'``/``'tensor'``.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    bits: int
    symmetric: bool = True
    granularity: str = "tensor"
    group_size: int | None = None
    axis: int = 0

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise SparsefabError(f"granularity={self.granularity!r}: expected one of {', '.join(GRANULARITIES)}")
        _check_bits(self.bits, "bits", MIN_BITS, MAX_BITS)
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise SparsefabError(f"symmetric={self.symmetric!r}: expected a bool")
        if not _is_intlike(self.axis) or not 0 <= int(self.axis) <= 255:
            raise SparsefabError(f"axis={self.axis!r}: expected an integer in [0, 255]")
        scale = np.asarray(self.scale)
        zp = np.asarray(self.zero_point)
        if scale.dtype.kind != "f":
            raise SparsefabError(f"scale: expected a float array, got dtype {scale.dtype}")
        scale = scale.astype(np.float32).reshape(-1)
        zp = _as_int64(zp, "zero_point").reshape(-1)
        if self.granularity == "none":
            if scale.size or zp.size:
                raise SparsefabError("granularity 'none' takes no scale/zero_point (codes are given directly)")
            if not self.symmetric:
                raise SparsefabError("granularity 'none' must be symmetric (zero point 0)")
        elif scale.size == 0:
            raise SparsefabError(f"granularity {self.granularity!r} needs at least one scale")
        if self.granularity == "tensor" and scale.size != 1:
            raise SparsefabError(f"granularity 'tensor' takes exactly one scale, got {scale.size}")
        if zp.size != scale.size:
            raise SparsefabError(f"zero_point: {zp.size} values for {scale.size} scales")
        if scale.size and not (np.isfinite(scale).all() and (scale > 0).all()):
            bad = scale[~(np.isfinite(scale) & (scale > 0))][0]
            raise SparsefabError(f"scale: value {bad} is not finite and > 0")
        qmin, qmax = -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        _check_range(zp, qmin, qmax, "zero_point")
        if self.symmetric and zp.size and (zp != 0).any():
            raise SparsefabError("zero_point: symmetric quantization requires every zero point to be 0")
        if self.granularity == "group":
            if not _is_intlike(self.group_size) or not 1 <= int(self.group_size) <= 0xFFFFFFFF:
                raise SparsefabError(f"group_size={self.group_size!r}: expected an integer >= 1 for 'group'")
            if int(self.axis) > 1:
                raise SparsefabError(f"axis={self.axis}: 'group' is 2-D only, expected 0 or 1")
            object.__setattr__(self, "group_size", int(self.group_size))
        elif self.group_size not in (None, 0):
            raise SparsefabError(f"group_size={self.group_size!r}: only valid with granularity 'group'")
        else:
            object.__setattr__(self, "group_size", None)
        if self.granularity in ("none", "tensor") and int(self.axis) != 0:
            raise SparsefabError(f"axis={self.axis}: must be 0 for granularity {self.granularity!r}")
        object.__setattr__(self, "scale", _ro(scale))
        object.__setattr__(self, "zero_point", _ro(zp.astype(np.int32)))
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "symmetric", bool(self.symmetric))
        object.__setattr__(self, "axis", int(self.axis))

    # -- construction helpers
    @classmethod
    def none(cls, bits: int) -> QuantParams:
        """Parameters for integer codes given directly (no scale)."""
        return cls(np.zeros(0, np.float32), np.zeros(0, np.int32), bits, True, "none", None, 0)

    def __eq__(self, other) -> bool:
        if not isinstance(other, QuantParams):
            return NotImplemented
        return (
            self.bits == other.bits
            and self.symmetric == other.symmetric
            and self.granularity == other.granularity
            and self.group_size == other.group_size
            and self.axis == other.axis
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    __hash__ = None  # arrays inside: not hashable

    @property
    def qmin(self) -> int:
        """Smallest code, ``-2**(bits-1)``."""
        return -(1 << (self.bits - 1))

    @property
    def qmax(self) -> int:
        """Largest code, ``2**(bits-1) - 1``."""
        return (1 << (self.bits - 1)) - 1

    # -- shape checks
    def expected_count(self, shape: tuple[int, ...]) -> int:
        """Number of scales these parameters must hold for a tensor of ``shape``."""
        shape = tuple(int(d) for d in shape)
        g = self.granularity
        if g == "none":
            return 0
        if g == "tensor":
            return 1
        if self.axis >= len(shape):
            raise SparsefabError(f"axis={self.axis} out of range for a {len(shape)}-D tensor of shape {shape}")
        if g == "channel":
            return shape[self.axis]
        if len(shape) != 2:
            raise SparsefabError(f"granularity 'group' needs a 2-D tensor, got shape {shape}")
        n_in = shape[1 - self.axis]
        return shape[self.axis] * (-(-n_in // self.group_size))

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise :class:`FormatError` if the scale count does not fit a tensor of ``shape``."""
        try:
            want = self.expected_count(shape)
        except SparsefabError as exc:
            raise FormatError(f"quant block: {exc}") from None
        if want != self.scale.size:
            raise FormatError(
                f"quant block: {self.scale.size} scales, but granularity {self.granularity!r} "
                f"on shape {tuple(shape)} needs {want}"
            )

    def expand(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Scale (float64) and zero point (int64) broadcastable to ``shape``."""
        self.check_shape(shape)
        s = self.scale.astype(np.float64)
        z = self.zero_point.astype(np.int64)
        g = self.granularity
        if g == "none":
            return np.ones((1,) * len(shape)), np.zeros((1,) * len(shape), np.int64)
        if g == "tensor":
            return s.reshape((1,) * len(shape)), z.reshape((1,) * len(shape))
        if g == "channel":
            bshape = [1] * len(shape)
            bshape[self.axis] = shape[self.axis]
            return s.reshape(bshape), z.reshape(bshape)
        C, n_in = shape[self.axis], shape[1 - self.axis]
        ng = -(-n_in // self.group_size)
        s2 = np.repeat(s.reshape(C, ng), self.group_size, axis=1)[:, :n_in]
        z2 = np.repeat(z.reshape(C, ng), self.group_size, axis=1)[:, :n_in]
        if self.axis == 1:
            s2, z2 = s2.T, z2.T
        return s2, z2

    # -- serialisation
    def to_bytes(self) -> bytes:
        """The quant block (layout in docs/INTEGER_PATH.md); its length is a multiple of 8."""
        if self.axis > 1:
            raise SparsefabError(f"axis={self.axis}: the quant block holds 2-D weights only (axis 0 or 1)")
        n = self.scale.size
        flags = _QB_FLAG_SYMMETRIC if self.symmetric else 0
        head = _QB_HEADER.pack(_QB_MAGIC, _QB_VERSION, _KIND_CODE[self.granularity], self.bits, flags,
                               self.axis, 0, self.group_size or 0, n)
        body = self.scale.astype("<f4").tobytes()
        if not self.symmetric:
            body += self.zero_point.astype("<i4").tobytes()
        body += b"\0" * (-len(body) % 8)
        return head + body

    @classmethod
    def from_bytes(cls, buf) -> tuple[QuantParams, int]:
        """Parse a quant block at the start of ``buf``.

        Returns
        -------
        (QuantParams, consumed)
            ``consumed`` is the block length in bytes (a multiple of 8).

        Raises
        ------
        FormatError
            Truncated block, unknown magic/version/kind, bad bits/flags/axis/group size,
            a count that does not fit ``len(buf)``, non-zero padding, non-finite or
            non-positive scales, out-of-range zero points.
        """
        mv = memoryview(buf).cast("B")
        if len(mv) < _QB_HEADER.size:
            raise FormatError(f"quant block: truncated, {len(mv)} bytes < {_QB_HEADER.size}-byte header")
        magic, ver, kind, bits, flags, axis, rsv, gsize, count = _QB_HEADER.unpack_from(mv, 0)
        if magic != _QB_MAGIC:
            raise FormatError(f"quant block: bad magic {bytes(magic)!r}, expected {_QB_MAGIC!r}")
        if ver != _QB_VERSION:
            raise FormatError(f"quant block: unsupported version {ver}, expected {_QB_VERSION}")
        if kind >= len(GRANULARITIES):
            raise FormatError(f"quant block: unknown kind {kind}, expected 0..{len(GRANULARITIES) - 1}")
        gran = GRANULARITIES[kind]
        if not MIN_BITS <= bits <= MAX_BITS:
            raise FormatError(f"quant block: bits {bits} outside [{MIN_BITS}, {MAX_BITS}]")
        if flags & ~_QB_FLAG_SYMMETRIC:
            raise FormatError(f"quant block: unknown flags 0x{flags:02x}")
        if rsv:
            raise FormatError(f"quant block: reserved byte is {rsv}, expected 0")
        symmetric = bool(flags & _QB_FLAG_SYMMETRIC)
        if gran == "none" and count != 0:
            raise FormatError(f"quant block: kind 'none' with {count} scales, expected 0")
        if gran == "tensor" and count != 1:
            raise FormatError(f"quant block: kind 'tensor' with {count} scales, expected 1")
        if gran in ("channel", "group") and count == 0:
            raise FormatError(f"quant block: kind {gran!r} with 0 scales")
        if gran == "group" and gsize == 0:
            raise FormatError("quant block: kind 'group' with group size 0")
        if gran != "group" and gsize != 0:
            raise FormatError(f"quant block: group size {gsize} with kind {gran!r}, expected 0")
        if gran in ("none", "tensor") and axis != 0:
            raise FormatError(f"quant block: axis {axis} with kind {gran!r}, expected 0")
        if axis > 1:
            raise FormatError(f"quant block: axis {axis}, expected 0 or 1 (weight files are 2-D)")
        body = 4 * count * (1 if symmetric else 2)
        total = _QB_HEADER.size + body + (-body % 8)
        if total > len(mv):
            raise FormatError(f"quant block: {count} scales need {total} bytes, only {len(mv)} available")
        off = _QB_HEADER.size
        scale = np.frombuffer(mv, dtype="<f4", count=count, offset=off).astype(np.float32)
        off += 4 * count
        if symmetric:
            zp = np.zeros(count, np.int32)
        else:
            zp = np.frombuffer(mv, dtype="<i4", count=count, offset=off).astype(np.int32)
            off += 4 * count
        if any(mv[off:total]):
            raise FormatError("quant block: non-zero padding bytes")
        if count and not (np.isfinite(scale).all() and (scale > 0).all()):
            i = int(np.argmin(np.isfinite(scale) & (scale > 0)))
            raise FormatError(f"quant block: scale[{i}] = {scale[i]} is not finite and > 0")
        if count and not symmetric:
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            if (zp < lo).any() or (zp > hi).any():
                i = int(np.argmax((zp < lo) | (zp > hi)))
                raise FormatError(f"quant block: zero_point[{i}] = {zp[i]} outside [{lo}, {hi}]")
        try:
            params = cls(scale, zp, bits, symmetric, gran, gsize if gran == "group" else None, axis)
        except FormatError:
            raise
        except SparsefabError as exc:
            raise FormatError(f"quant block: {exc}") from None
        return params, total


# --------------------------------------------------------------------------- float <-> code


def parse_calib(calib: str) -> tuple[str, float | None]:
    """Parse ``'minmax'``, ``'percentile:P'`` (0 < P <= 100) or ``'mse'``."""
    if not isinstance(calib, str):
        raise SparsefabError(f"calib={calib!r}: expected 'minmax', 'percentile:P' or 'mse'")
    if calib in ("minmax", "mse"):
        return calib, None
    if calib.startswith("percentile:"):
        try:
            p = float(calib.split(":", 1)[1])
        except ValueError:
            p = float("nan")
        if not 0 < p <= 100:
            raise SparsefabError(f"calib={calib!r}: percentile must be a number in (0, 100]")
        return "percentile", p
    raise SparsefabError(f"calib={calib!r}: expected 'minmax', 'percentile:P' or 'mse'")


def parse_quant_spec(spec: str) -> dict:
    """Parse the CLI ``--quant`` value.

    ``'per-tensor'``, ``'per-channel'`` or ``'group:G'`` (G >= 1), optionally followed by
    ``',asym'`` for asymmetric quantization.

    Returns
    -------
    dict
        ``granularity``, ``group_size``, ``symmetric``: keyword arguments for :func:`quantize`.
    """
    err = f"--quant {spec!r}: expected per-tensor, per-channel or group:G (G >= 1), optionally ',asym'"
    if not isinstance(spec, str):
        raise SparsefabError(err)
    body, _, suffix = spec.strip().partition(",")
    if suffix not in ("", "asym", "sym"):
        raise SparsefabError(err)
    out = {"symmetric": suffix != "asym", "group_size": None}
    if body == "per-tensor":
        out["granularity"] = "tensor"
    elif body == "per-channel":
        out["granularity"] = "channel"
    elif body.startswith("group:") and body[6:].isdigit() and int(body[6:]) >= 1:
        out["granularity"] = "group"
        out["group_size"] = int(body[6:])
    else:
        raise SparsefabError(err)
    return out


def _frame(w: np.ndarray, granularity: str, axis: int) -> np.ndarray:
    """View ``w`` as 2-D (channels, elements): reductions run along axis 1."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def _unframe(x: np.ndarray, shape: tuple[int, ...], granularity: str, axis: int) -> np.ndarray:
    if granularity == "tensor":
        return x.reshape(shape)
    moved = (shape[axis],) + tuple(d for i, d in enumerate(shape) if i != axis)
    return np.moveaxis(x.reshape(moved), 0, axis)


class _Grouper:
    """Per-(channel, group) reductions along axis 1 of a 2-D frame; ragged last group allowed."""

    def __init__(self, n: int, group_size: int | None):
        self.n = n
        self.g = group_size if group_size else max(n, 1)
        self.starts = np.arange(0, n, self.g)
        self.ng = len(self.starts)

    def reduce(self, ufunc, x: np.ndarray) -> np.ndarray:
        return ufunc.reduceat(x, self.starts, axis=1)

    def expand(self, per_group: np.ndarray) -> np.ndarray:
        if self.ng == 1:
            return per_group  # (C, 1) broadcasts along the elements
        return np.repeat(per_group, self.g, axis=1)[:, : self.n]

    def percentile(self, x: np.ndarray, q: float) -> np.ndarray:
        nf = self.n // self.g
        parts = []
        if nf:
            parts.append(np.percentile(x[:, : nf * self.g].reshape(x.shape[0], nf, self.g), q, axis=2))
        if nf * self.g < self.n:
            parts.append(np.percentile(x[:, nf * self.g:], q, axis=1)[:, None])
        return np.concatenate(parts, axis=1)


def _scales_for(lo: np.ndarray, hi: np.ndarray, bits: int, symmetric: bool):
    """Scale and zero point (per group) for the clip range [lo, hi] (lo <= 0 <= hi)."""
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    tiny = float(np.finfo(np.float32).tiny)
    if symmetric:
        amax = np.maximum(-lo, hi)
        scale = np.where(amax > 0, amax / qmax, 1.0)
        scale = np.maximum(scale, tiny).astype(np.float32)
        return scale, np.zeros(scale.shape, np.int64)
    span = hi - lo
    scale = np.where(span > 0, span / (qmax - qmin), 1.0)
    scale = np.maximum(scale, tiny).astype(np.float32)
    zp = np.clip(qmin - np.rint(lo / scale.astype(np.float64)), qmin, qmax).astype(np.int64)
    return scale, zp


def _quant_frame(x, scale_e, zp_e, qmin, qmax):
    return np.clip(np.rint(x / scale_e) + zp_e, qmin, qmax)


_MAX_ABS = 1e38  # keeps every scale (and an asymmetric span) finite in float32
_MSE_COARSE = np.linspace(0.05, 1.0, 20)
_MSE_FINE = np.linspace(-0.04, 0.04, 9)


def quantize(w, *, bits: int, granularity: str = "tensor", group_size: int | None = None,
             symmetric: bool = True, calib: str = "minmax", axis: int = 0) -> tuple[np.ndarray, QuantParams]:
    """Quantize a float tensor to signed ``bits``-bit codes.

    ``code = clip(rint(w / scale) + zero_point, -2**(bits-1), 2**(bits-1) - 1)``
    (``rint`` rounds half to even).  Symmetric: ``scale = clip / (2**(bits-1) - 1)``,
    zero point 0 (so 0.0 -> code 0, pruned weights stay pruned).  Asymmetric: the clip
    range ``[lo, hi]`` always contains 0, ``scale = (hi - lo) / (2**bits - 1)``,
    ``zero_point = qmin - rint(lo / scale)``.  An all-zero channel/group gets scale 1.

    Parameters
    ----------
    w : float array
        Finite; any rank >= 1 for 'tensor'/'channel', 2-D for 'group'.
    bits : int
        2..8.
    granularity : {'tensor', 'channel', 'group'}
        One scale, one per index of ``axis``, or one per group of ``group_size``
        consecutive elements along the other axis (ragged last group).
    group_size : int, optional
        Required for 'group'.
    symmetric : bool
    calib : {'minmax', 'percentile:P', 'mse'}
        Clip range: min/max; the P-th percentile of |w| (symmetric) or the (100-P)-th and
        P-th percentiles (asymmetric); or the ratio of the min-max range (searched over
        0.05..1.0 in steps of 0.05, then refined by +-0.04 in steps of 0.01) minimising the squared
        reconstruction error of each channel/group.
    axis : int
        Channel axis (0 = rows = output channels).

    Returns
    -------
    codes : numpy.ndarray of int8, shape of ``w``
    params : QuantParams
    """
    bits = _check_bits(bits, "bits", MIN_BITS, MAX_BITS)
    if granularity not in ("tensor", "channel", "group"):
        raise SparsefabError(f"granularity={granularity!r}: expected 'tensor', 'channel' or 'group'")
    if not isinstance(symmetric, (bool, np.bool_)):
        raise SparsefabError(f"symmetric={symmetric!r}: expected a bool")
    method, pct = parse_calib(calib)
    w = _check_float(w, "w")
    if w.ndim == 0:
        raise SparsefabError("w: expected an array of rank >= 1, got a scalar")
    if w.size == 0:
        raise SparsefabError(f"w: empty array of shape {w.shape}")
    big = float(np.abs(w).max())
    if big > _MAX_ABS:
        raise SparsefabError(f"w: magnitude {big:g} exceeds {_MAX_ABS:g} (scales are float32)")
    if granularity == "tensor":
        axis = 0
    elif not _is_intlike(axis) or not 0 <= int(axis) < w.ndim:
        raise SparsefabError(f"axis={axis!r}: expected an integer in [0, {w.ndim - 1}] for shape {w.shape}")
    axis = int(axis)
    if granularity == "group":
        if w.ndim != 2:
            raise SparsefabError(f"w: granularity 'group' needs a 2-D array, got shape {w.shape}")
        if not _is_intlike(group_size) or int(group_size) < 1:
            raise SparsefabError(f"group_size={group_size!r}: expected an integer >= 1 for granularity 'group'")
        group_size = int(group_size)
    elif group_size is not None:
        raise SparsefabError(f"group_size={group_size!r}: only valid with granularity 'group'")
    qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    x = _frame(w, granularity, axis)
    frame_shape = x.shape
    if granularity == "group" and x.shape[1] % group_size == 0:
        # Even groups are channels of a (C * n_groups, G) view: same numbers, no repeat/reduceat.
        x = x.reshape(-1, group_size)
        grp = _Grouper(group_size, None)
    else:
        grp = _Grouper(x.shape[1], group_size)
    if method == "percentile":
        if symmetric:
            a = grp.percentile(np.abs(x), pct)
            lo, hi = -a, a
        else:
            lo = np.minimum(grp.percentile(x, 100 - pct), 0.0)
            hi = np.maximum(grp.percentile(x, pct), 0.0)
    else:
        lo = np.minimum(grp.reduce(np.minimum, x), 0.0)
        hi = np.maximum(grp.reduce(np.maximum, x), 0.0)
        if symmetric:
            a = np.maximum(-lo, hi)
            lo, hi = -a, a

    if method == "mse":
        # The search runs in float32 (half the memory traffic); only the ranking of the
        # candidate ratios depends on it, the final codes are computed in float64 below.
        x32 = x.astype(np.float32)

        def err_for(ratio):
            s, z = _scales_for(lo * ratio, hi * ratio, bits, symmetric)
            se, ze = grp.expand(s), grp.expand(z.astype(np.float32))
            q = np.rint(x32 / se)
            q += ze
            np.clip(q, qmin, qmax, out=q)
            q -= ze
            q *= se
            q -= x32
            np.square(q, out=q)
            return grp.reduce(np.add, q.astype(np.float64))

        best_err = np.full(lo.shape, np.inf)
        best_r = np.ones(lo.shape)
        for r in _MSE_COARSE:
            e = err_for(r)
            better = e < best_err
            best_err = np.where(better, e, best_err)
            best_r = np.where(better, r, best_r)
        center = best_r
        for d in _MSE_FINE:
            r = np.clip(center + d, 0.01, 1.0)
            e = err_for(r)
            better = e < best_err
            best_err = np.where(better, e, best_err)
            best_r = np.where(better, r, best_r)
        lo, hi = lo * best_r, hi * best_r

    scale, zp = _scales_for(lo, hi, bits, symmetric)
    se, ze = grp.expand(scale.astype(np.float64)), grp.expand(zp)
    codes = _quant_frame(x, se, ze, qmin, qmax).astype(np.int8).reshape(frame_shape)
    codes = _unframe(codes, w.shape, granularity, axis)
    params = QuantParams(scale.reshape(-1), zp.reshape(-1), bits, bool(symmetric), granularity,
                         group_size, axis)
    return codes, params


def dequantize(codes, params: QuantParams) -> np.ndarray:
    """Real values ``(codes - zero_point) * scale`` as float32.

    Parameters
    ----------
    codes : integer array
        Codes inside the ``params.bits`` range, shape consistent with ``params``.
    params : QuantParams

    Returns
    -------
    numpy.ndarray of float32, shape of ``codes``.
    """
    if not isinstance(params, QuantParams):
        raise SparsefabError(f"params: expected QuantParams, got {type(params).__name__}")
    c = _as_int64(codes, "codes")
    _check_range(c, params.qmin, params.qmax, "codes")
    try:
        s, z = params.expand(c.shape)
    except FormatError as exc:
        raise SparsefabError(str(exc).replace("quant block: ", "params: ")) from None
    return ((c - z) * s).astype(np.float32)


def quantize_activations(x, *, bits: int = 8, symmetric: bool = False, calib: str = "minmax"):
    """Quantize activations per tensor (one scale and zero point for the whole tensor).

    Parameters
    ----------
    x : float array
        Activations, e.g. calibration inputs of shape (n, features). Finite.
    bits : int, default 8
    symmetric : bool, default False
        Asymmetric uses the full code range for one-signed data such as post-ReLU values.
    calib : {'minmax', 'percentile:P', 'mse'}

    Returns
    -------
    codes : numpy.ndarray of int8
    scale : float
    zero_point : int
        ``x ~= (codes - zero_point) * scale``.
    """
    codes, p = quantize(np.asarray(x).reshape(-1) if np.ndim(x) == 0 else x, bits=bits,
                        granularity="tensor", symmetric=symmetric, calib=calib)
    return codes.reshape(np.shape(x)), float(p.scale[0]), int(p.zero_point[0])


# --------------------------------------------------------------------------- layers


@dataclass(frozen=True, eq=False)
class QLayer:
    """Per-output-channel integer parameters of one linear layer (inputs of :func:`requantize`).

    Attributes
    ----------
    bias : int32 array, shape (rows,)
        Integer bias in accumulator units (``w_scale * x_scale``), with the input zero
        point folded in: ``bias' = round(bias / (w_scale * x_scale)) - x_zp * sum_j W[r, j]``.
    multiplier, shift : int64 arrays, shape (rows,)
        ``multiplier / 2**shift ~= w_scale[r] * x_scale / y_scale``.
    out_zero_point : int
    out_bits : int
    """

    bias: np.ndarray
    multiplier: np.ndarray
    shift: np.ndarray
    out_zero_point: int = 0
    out_bits: int = 8

    def __post_init__(self):
        b = _as_int64(self.bias, "bias").reshape(-1)
        m = _as_int64(self.multiplier, "multiplier").reshape(-1)
        s = _as_int64(self.shift, "shift").reshape(-1)
        if not (b.size == m.size == s.size):
            raise SparsefabError(f"QLayer: bias/multiplier/shift lengths differ ({b.size}, {m.size}, {s.size})")
        _check_range(m, 0, (1 << MULTIPLIER_BITS) - 1, "multiplier")
        _check_range(s, 0, MAX_SHIFT, "shift")
        _check_range(b, -(1 << 31), (1 << 31) - 1, "bias")
        ob = _check_bits(self.out_bits, "out_bits", 2, 32)
        lo, hi = -(1 << (ob - 1)), (1 << (ob - 1)) - 1
        if not _is_intlike(self.out_zero_point) or not lo <= int(self.out_zero_point) <= hi:
            raise SparsefabError(f"out_zero_point={self.out_zero_point!r}: expected an integer in [{lo}, {hi}]")
        object.__setattr__(self, "bias", _ro(b.astype(np.int32)))
        object.__setattr__(self, "multiplier", _ro(m))
        object.__setattr__(self, "shift", _ro(s))
        object.__setattr__(self, "out_zero_point", int(self.out_zero_point))
        object.__setattr__(self, "out_bits", ob)


def layer_requant_params(w_scale, x_scale: float, y_scale: float, bias=None, *, W_codes=None,
                         x_zero_point: int = 0, y_zero_point: int = 0, out_bits: int = 8) -> QLayer:
    """Build the integer output-stage parameters of a linear layer ``y = W x + b``.

    Parameters
    ----------
    w_scale : float or 1-D float array
        Weight scale per output row (a scalar for per-tensor weights); symmetric weights.
    x_scale, y_scale : float
        Input and output activation scales (> 0).
    bias : 1-D float array, optional
        Real-valued bias per output row.
    W_codes : integer array (rows, cols), optional
        Needed when ``x_zero_point != 0`` (folded into the bias) and to know ``rows`` when
        everything else is scalar.
    x_zero_point, y_zero_point : int
        Activation zero points.
    out_bits : int

    Returns
    -------
    QLayer
        Raises SparsefabError if the folded bias does not fit int32.
    """
    ws = _check_float(w_scale, "w_scale").reshape(-1)
    for name, v in (("x_scale", x_scale), ("y_scale", y_scale)):
        if np.ndim(v) != 0:
            raise SparsefabError(f"{name}: expected a scalar (per-tensor activation scale), got shape {np.shape(v)}")
    xs = float(_check_float(x_scale, "x_scale"))
    ys = float(_check_float(y_scale, "y_scale"))
    if ws.size == 0 or (ws <= 0).any() or xs <= 0 or ys <= 0:
        raise SparsefabError("w_scale, x_scale, y_scale: expected values > 0")
    if not _is_intlike(x_zero_point):
        raise SparsefabError(f"x_zero_point={x_zero_point!r}: expected an integer")
    rows = None
    W = None
    if W_codes is not None:
        W = _as_int64(W_codes, "W_codes")
        if W.ndim != 2:
            raise SparsefabError(f"W_codes: expected a 2-D array, got shape {W.shape}")
        rows = W.shape[0]
    if bias is not None:
        b = _check_float(bias, "bias").reshape(-1)
        rows = rows if rows is not None else b.size
        if b.size != rows:
            raise SparsefabError(f"bias: length {b.size} does not match {rows} output rows")
    if ws.size != 1:
        if rows is not None and ws.size != rows:
            raise SparsefabError(f"w_scale: length {ws.size} does not match {rows} output rows")
        rows = ws.size
    if rows is None:
        raise SparsefabError("layer_requant_params: give W_codes, bias or a per-row w_scale to fix the row count")
    ws = np.broadcast_to(ws, (rows,)).astype(np.float64)
    acc_scale = ws * xs
    bias_int = np.zeros(rows, np.int64) if bias is None else np.rint(b / acc_scale)
    if bias is not None and not (np.abs(bias_int) < 2.0**62).all():
        raise SparsefabError("bias: too large for the accumulator scale (does not fit int32)")
    bias_int = np.asarray(bias_int).astype(np.int64)
    if int(x_zero_point) != 0:
        if W is None:
            raise SparsefabError("x_zero_point != 0 needs W_codes to fold it into the bias")
        bias_int = bias_int - int(x_zero_point) * W.sum(axis=1)
    if bias_int.size and (bias_int.min() < -(1 << 31) or bias_int.max() >= (1 << 31)):
        i = int(np.argmax((bias_int < -(1 << 31)) | (bias_int >= (1 << 31))))
        raise SparsefabError(f"bias: folded integer bias {int(bias_int[i])} of row {i} does not fit int32")
    mult, shift = quantize_multiplier(acc_scale / ys)
    return QLayer(bias_int, mult, shift, y_zero_point, out_bits)


def linear_int(W_codes, x_codes, qlayer: QLayer, relu: bool = False, *, acc_bits: int = 32) -> np.ndarray:
    """One integer linear layer exactly as the hardware runs it.

    ``requantize(spmv_int(W_codes, x_codes, acc_bits), **qlayer, relu=relu)``.

    Parameters
    ----------
    W_codes : integer array (rows, cols)
    x_codes : integer array (cols,) or (n, cols)
    qlayer : QLayer
        From :func:`layer_requant_params`; length ``rows``.
    relu : bool
    acc_bits : int, default 32

    Returns
    -------
    numpy.ndarray of int32, shape (rows,) or (n, rows)
    """
    if not isinstance(qlayer, QLayer):
        raise SparsefabError(f"qlayer: expected QLayer, got {type(qlayer).__name__}")
    acc = spmv_int(W_codes, x_codes, acc_bits=acc_bits)
    if qlayer.bias.size != acc.shape[-1]:
        raise SparsefabError(f"qlayer: {qlayer.bias.size} channels for {acc.shape[-1]} output rows")
    return requantize(acc, multiplier=qlayer.multiplier, shift=qlayer.shift, bias=qlayer.bias,
                      out_zero_point=qlayer.out_zero_point, relu=relu, out_bits=qlayer.out_bits)
