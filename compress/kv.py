"""Entropy-aware KV-cache codec (golden model), in the spirit of Ecco (ISCA 2025).

A tensor of FP16 (or BF16) values is cut into groups of ``group`` values; every group
becomes ONE compressed block of exactly ``block_bytes`` bytes, so block ``i`` of a file
lives at a fixed address.  Inside a block (bit-exact specification: docs/FORMATS_KV.md):

- a small header: codebook selector, a step code (exponent + mantissa), an offset, and
  the boundaries of the lane pairs;
- every value is quantized to a point of the selected codebook's centroid table (integer
  positions in units of ``unit = (2**mbits + f) * 2**(e + ebias)``; uniform tables are
  evenly spaced, trained tables may be non-uniform), shifted by the block offset;
- the symbols are coded with one of K length-limited canonical Huffman codes (the
  selector names it); values beyond the table are sent as an escape code followed by a
  raw ``esc_bits``-bit position;
- the symbols are split over ``lanes`` interleaved lanes (value ``i`` in lane ``i % lanes``);
  lanes go in pairs, the even lane forward and the odd lane backward from the two ends of
  the pair's region, so a decoder runs all lanes in parallel with only
  ``lanes/2 - 1`` boundary pointers stored.

The encoder picks, per block and codebook, the finest step whose coded size fits the
budget (rate control), then the codebook with the lowest distortion.  One codebook of the
set is always a fixed-rate ("flat") code that fits by construction: it is the documented
fallback for blocks the entropy codes cannot carry well; the counts of each case are
reported.  The decoder checks every block (selector, pointers, code validity, lane
overruns) and raises :class:`FormatError` naming the block: it is never wrong about what
it decodes.

NaN and Inf inputs are refused (one-line error naming the first index); subnormals are
coded like any value.  Reconstruction is exact integer arithmetic then one IEEE rounding
(round to nearest even) to FP16, or float32-then-BF16 for BF16.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from . import huffman
from .errors import FormatError, SparsefabError

CB_MAGIC = b"SFKC"
KV_MAGIC = b"SFKV"
VERSION = 1
CB_HEADER = 12          # bytes before the tables of a codebook file
KV_HEADER = 64          # bytes of the tensor file header
DTYPE_CODES = {"fp16": 1, "bf16": 2}
DTYPE_NAMES = {v: k for k, v in DTYPE_CODES.items()}
AXES = {"token": 0, "channel": 1}
AXIS_NAMES = {v: k for k, v in AXES.items()}
MAX_ALPHABET = 64
MAX_K = 8
MAX_BLOCKS = 1 << 31
DEFAULT_POLICY = "auto"    # compress(): "hw" (the RTL compressor's policy) when obits == 0, else "search"
TRAIN_POLICY = "search"    # policy of the training loop (codebooks trained so encode better under "hw" too)

# ---------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class KVParams:
    """Block geometry of the codec (stored in every compressed file header).

    Parameters
    ----------
    group : int
        Values per group = per block, 8..1024, a multiple of ``lanes``.
    block_bytes : int
        Fixed compressed block size in bytes, 4..256.
    lanes : int
        Parallel code lanes per block: 1, 2, 4 or 8.
    ebits, mbits : int
        Widths of the step exponent (1..6) and step mantissa (0..4) fields.
    obits : int
        Width of the signed block offset field (0..12; 0 = no offset).
    axis : str
        ``"token"``: a group is ``group`` consecutive channels of one token (row);
        ``"channel"``: ``group`` consecutive tokens of one channel (KIVI-style keys).
    """

    group: int = 128
    block_bytes: int = 63
    lanes: int = 2
    ebits: int = 4
    mbits: int = 3
    obits: int = 0
    axis: str = "token"

    def __post_init__(self):
        def bad(name, want):
            raise SparsefabError(f"kv params: {name}={getattr(self, name)!r}, expected {want}")
        for name in ("group", "block_bytes", "lanes", "ebits", "mbits", "obits"):
            if not isinstance(getattr(self, name), int | np.integer) or isinstance(getattr(self, name), bool):
                bad(name, "an integer")
        if not 8 <= self.group <= 1024:
            bad("group", "8..1024")
        if not 4 <= self.block_bytes <= 256:
            bad("block_bytes", "4..256")
        if self.lanes not in (1, 2, 4, 8):
            bad("lanes", "1, 2, 4 or 8")
        if self.group % self.lanes:
            bad("group", f"a multiple of lanes={self.lanes}")
        if not 1 <= self.ebits <= 6:
            bad("ebits", "1..6")
        if not 0 <= self.mbits <= 4:
            bad("mbits", "0..4")
        if not 0 <= self.obits <= 12:
            bad("obits", "0..12")
        if self.axis not in AXES:
            bad("axis", "'token' or 'channel'")

    @property
    def nbits(self) -> int:
        """Bits per block, ``8 * block_bytes``."""
        return 8 * self.block_bytes

    @property
    def pbits(self) -> int:
        """Width of a lane-pair boundary pointer: ``bit_length(nbits)``."""
        return int(self.nbits).bit_length()

    @property
    def npointers(self) -> int:
        """Stored lane-pair boundaries: ``lanes/2 - 1`` (0 for 1 or 2 lanes)."""
        return max(self.lanes // 2 - 1, 0)

    def selbits(self, k: int) -> int:
        """Width of the codebook selector for ``k`` codebooks: ``bit_length(k - 1)``."""
        return int(k - 1).bit_length()

    def header_bits(self, k: int) -> int:
        """Block header width in bits for ``k`` codebooks (= start of lane 0)."""
        return self.selbits(k) + self.ebits + self.mbits + self.obits + self.npointers * self.pbits


# ---------------------------------------------------------------------------- codebooks


@dataclass(frozen=True, eq=False)
class Codebooks:
    """K canonical Huffman codes with their centroid tables (a ``.sfkc`` file).

    Attributes
    ----------
    lengths : ndarray int [K, S]
        Code length of every symbol (0 = no code), at most ``max_len``.
    centroids : ndarray int [K, S]
        Reconstruction position of every symbol in units (signed 16-bit).  Symbol ``S-1``
        is the escape symbol when ``esc_bits > 0`` (its centroid is ignored, stored 0).
    max_len : int
        Longest code (1..15).
    esc_bits : int
        Raw bits after an escape code (0 = no escape, else 2..16).
    unit_per_step : int
        Units per quantization step of a uniform table (informative; 1..64).
    """

    lengths: np.ndarray
    centroids: np.ndarray
    max_len: int = 8
    esc_bits: int = 10
    unit_per_step: int = 4

    def __post_init__(self):
        ln = np.asarray(self.lengths, dtype=np.int64)
        ce = np.asarray(self.centroids, dtype=np.int64)
        if ln.ndim != 2 or ce.shape != ln.shape:
            raise SparsefabError(f"codebooks: lengths {ln.shape} and centroids {ce.shape} must both be [K, S]")
        k, s = ln.shape
        if not 1 <= k <= MAX_K or not 2 <= s <= MAX_ALPHABET:
            raise SparsefabError(f"codebooks: K={k}, S={s}; expected K in 1..{MAX_K}, S in 2..{MAX_ALPHABET}")
        if not 1 <= self.max_len <= 15:
            raise SparsefabError(f"codebooks: max_len={self.max_len}, expected 1..15")
        if self.esc_bits != 0 and not 2 <= self.esc_bits <= 16:
            raise SparsefabError(f"codebooks: esc_bits={self.esc_bits}, expected 0 or 2..16")
        if not 1 <= self.unit_per_step <= 64:
            raise SparsefabError(f"codebooks: unit_per_step={self.unit_per_step}, expected 1..64")
        if ce.min() < -32768 or ce.max() > 32767:
            raise SparsefabError("codebooks: centroids must fit signed 16 bits")
        for i in range(k):
            huffman.check_lengths(ln[i], self.max_len, f"codebook {i}")
            used = np.flatnonzero(ln[i] > 0)
            table = used[used != s - 1] if self.esc_bits else used
            if table.size == 0:
                raise SparsefabError(f"codebook {i}: no centroid symbol has a code")
            if np.unique(ce[i, table]).size != table.size:
                raise SparsefabError(f"codebook {i}: two coded symbols share one centroid")
        if self.esc_bits:
            ce = ce.copy()
            ce[:, s - 1] = 0
        object.__setattr__(self, "lengths", ln)
        object.__setattr__(self, "centroids", ce)

    @property
    def k(self) -> int:
        return self.lengths.shape[0]

    @property
    def s(self) -> int:
        return self.lengths.shape[1]

    @property
    def esc(self) -> int:
        """The escape symbol (``S-1``), or -1 when escapes are disabled."""
        return self.s - 1 if self.esc_bits else -1

    def has_esc(self, i: int) -> bool:
        return bool(self.esc_bits) and self.lengths[i, self.s - 1] > 0

    def table_symbols(self, i: int) -> np.ndarray:
        """Coded non-escape symbols of codebook ``i``."""
        used = np.flatnonzero(self.lengths[i] > 0)
        return used[used != self.esc] if self.esc_bits else used

    def fixed_rate(self, i: int) -> int:
        """Bits per value if codebook ``i`` is fixed-rate (one length, no escape), else 0."""
        ln = self.lengths[i][self.table_symbols(i)]
        if self.has_esc(i) or ln.min() != ln.max():
            return 0
        return int(ln[0])

    def to_bytes(self) -> bytes:
        """Serialise (see docs/FORMATS_KV.md, "codebook file")."""
        head = CB_MAGIC + struct.pack("<HBBBBBB", VERSION, self.k, self.s, self.max_len,
                                      self.esc_bits, self.unit_per_step, 0)
        body = self.lengths.astype("<u1").tobytes() + self.centroids.astype("<i2").tobytes()
        data = head + body
        return data + struct.pack("<I", zlib.crc32(data))

    @staticmethod
    def nbytes_for(k: int, s: int) -> int:
        return CB_HEADER + 3 * k * s + 4

    @classmethod
    def from_bytes(cls, data: bytes, what: str = "codebook file") -> Codebooks:
        """Parse and validate; sizes are checked before any table is allocated."""
        data = bytes(data)
        if len(data) < CB_HEADER + 4:
            raise FormatError(f"{what}: {len(data)} bytes, too short for a codebook header")
        if data[:4] != CB_MAGIC:
            raise FormatError(f"{what}: bad magic {data[:4]!r}, expected {CB_MAGIC!r}")
        version, k, s, max_len, esc_bits, ups, _ = struct.unpack_from("<HBBBBBB", data, 4)
        if version != VERSION:
            raise FormatError(f"{what}: version {version} not supported (expected {VERSION})")
        if not 1 <= k <= MAX_K or not 2 <= s <= MAX_ALPHABET:
            raise FormatError(f"{what}: K={k}, S={s} out of range (K 1..{MAX_K}, S 2..{MAX_ALPHABET})")
        need = cls.nbytes_for(k, s)
        if len(data) != need:
            raise FormatError(f"{what}: {len(data)} bytes, header implies {need}")
        (crc,) = struct.unpack_from("<I", data, need - 4)
        if zlib.crc32(data[: need - 4]) != crc:
            raise FormatError(f"{what}: CRC mismatch (corrupted)")
        ln = np.frombuffer(data, "<u1", k * s, CB_HEADER).reshape(k, s)
        ce = np.frombuffer(data, "<i2", k * s, CB_HEADER + k * s).reshape(k, s)
        try:
            return cls(ln, ce, max_len=max_len, esc_bits=esc_bits, unit_per_step=ups)
        except FormatError:
            raise
        except SparsefabError as exc:
            raise FormatError(f"{what}: {exc}") from None


def uniform_codebooks(*, params: KVParams, n_huffman: int = 3, alphabet: int = 24, max_len: int = 8,
                      esc_bits: int = 10, unit_per_step: int = 4,
                      widths=(0.7, 1.5, 3.0, 6.0)) -> Codebooks:
    """Untrained starting set: Laplacian-shaped codes on a uniform table + the flat fallback.

    Codebook ``i < n_huffman`` codes symbol ``s`` (centroid ``unit_per_step*(s - c)``,
    ``c = (alphabet-1)//2``) with lengths of a discrete Laplacian of width ``widths[i]``
    steps; the last codebook is the fixed-rate fallback of ``b`` bits per value, the
    largest ``b`` with ``header + group*b <= 8*block_bytes``.
    """
    k = n_huffman + 1
    s = int(alphabet)
    c = (s - 1) // 2 if esc_bits else s // 2
    nt = s - 1 if esc_bits else s
    lengths = np.zeros((k, s), np.int64)
    cents = np.zeros((k, s), np.int64)
    pos = np.arange(nt)
    for i in range(n_huffman):
        w = widths[i % len(widths)] * (1 + i // len(widths))
        p = np.exp(-np.abs(pos - c) / w)
        p = np.append(p, p.min() * 0.5) if esc_bits else p
        lengths[i] = huffman.limited_lengths(p / p.sum() * 1e6 + 1e-3, max_len)
        cents[i, :nt] = unit_per_step * (pos - c)
    lengths[k - 1], cents[k - 1] = _flat(params, k, s, esc_bits, unit_per_step)
    return Codebooks(lengths, cents, max_len=max_len, esc_bits=esc_bits, unit_per_step=unit_per_step)


def _flat(params: KVParams, k: int, s: int, esc_bits: int, ups: int):
    b = (params.nbits - params.header_bits(k)) // params.group
    nt = s - 1 if esc_bits else s
    b = min(b, int(nt).bit_length() - 1, 15)
    if b < 1:
        raise SparsefabError(f"block_bytes={params.block_bytes}: no room for a 1-bit fallback code "
                             f"of {params.group} values after a {params.header_bits(k)}-bit header")
    ln = np.zeros(s, np.int64)
    ce = np.zeros(s, np.int64)
    ln[: 1 << b] = b
    ce[: 1 << b] = ups * (np.arange(1 << b) - (1 << (b - 1)))
    return ln, ce


# ---------------------------------------------------------------------------- shapes and dtypes


def _canon3(shape) -> tuple[int, int, int]:
    """[P, T, C] view: 1-D [n] -> [1,1,n]; 2-D [T,C]; 3-D as is; 4-D [L,T,H,D] -> [L,T,H*D]."""
    if len(shape) == 1:
        return 1, 1, shape[0]
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    if len(shape) == 3:
        return tuple(shape)
    return shape[0], shape[1], shape[2] * shape[3]


def n_blocks(shape, params: KVParams) -> int:
    """Number of blocks of a tensor of ``shape`` (groups padded at the edge of the axis)."""
    p, t, c = _canon3(shape)
    if params.axis == "token":
        return p * t * -(-c // params.group)
    return p * c * -(-t // params.group)


def to_groups(x: np.ndarray, params: KVParams) -> np.ndarray:
    """Float64 groups [n_blocks, group]; edges are padded by repeating the last value."""
    p, t, c = _canon3(x.shape)
    g = params.group
    a = x.reshape(p, t, c)
    if params.axis == "channel":
        a = a.transpose(0, 2, 1)          # [P, C, T]: groups run along tokens
    pad = (-a.shape[2]) % g
    if pad:
        a = np.concatenate([a, np.repeat(a[:, :, -1:], pad, axis=2)], axis=2)
    return np.ascontiguousarray(a, dtype=np.float64).reshape(-1, g)


def from_groups(groups: np.ndarray, shape, params: KVParams) -> np.ndarray:
    """Inverse of :func:`to_groups` (padding dropped)."""
    p, t, c = _canon3(shape)
    if params.axis == "token":
        a = groups.reshape(p, t, -1)[:, :, :c]
    else:
        a = groups.reshape(p, c, -1)[:, :, :t].transpose(0, 2, 1)
    return np.ascontiguousarray(a).reshape(shape)


def bf16_to_float(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) -> float32 values (exact)."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def float_to_bf16(x: np.ndarray) -> np.ndarray:
    """Float values -> BF16 bit patterns: round to float32 (RNE), then to BF16 (RNE)."""
    f = np.asarray(x, np.float64).astype(np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    nan = np.isnan(f)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = r.astype(np.uint16)
    out[nan] = 0x7FC0
    return out


def input_values(x: np.ndarray, dtype: str | None = None) -> tuple[np.ndarray, str]:
    """Validate an input tensor; return its values as float64 and the dtype name.

    float16 arrays are FP16; uint16 arrays are BF16 bit patterns (``dtype="bf16"``); other
    float arrays are rounded to ``dtype`` (default FP16).  NaN/Inf are refused.
    """
    x = np.asarray(x)
    if x.ndim not in (1, 2, 3, 4) or x.size == 0:
        raise SparsefabError(f"kv input: shape {x.shape}, expected 1 to 4 non-empty dimensions "
                             "([tokens, channels] or [layers, tokens, heads, dim])")
    if any(d >= (1 << 32) for d in x.shape):
        raise SparsefabError(f"kv input: dimension in {x.shape} too large (max 2**32-1)")
    if x.dtype == np.uint16:
        if dtype not in (None, "bf16"):
            raise SparsefabError(f"kv input: uint16 data are BF16 bit patterns, not {dtype}")
        dtype = "bf16"
        vals = bf16_to_float(x).astype(np.float64)
    elif x.dtype == np.float16 and dtype in (None, "fp16"):
        dtype = "fp16"
        vals = x.astype(np.float64)
    elif np.issubdtype(x.dtype, np.floating):
        dtype = dtype or "fp16"
        if dtype not in DTYPE_CODES:
            raise SparsefabError(f"kv input: dtype {dtype!r}, expected 'fp16' or 'bf16'")
        with np.errstate(over="ignore"):
            vals = (x.astype(np.float16) if dtype == "fp16" else bf16_to_float(float_to_bf16(x))).astype(np.float64)
        if np.isfinite(x).all() and not np.isfinite(vals).all():
            raise SparsefabError(f"kv input: values up to {np.abs(x).max():g} overflow {dtype}")
    else:
        raise SparsefabError(f"kv input: dtype {x.dtype}, expected float16, uint16 (BF16 bits) or float32/64")
    bad = ~np.isfinite(vals)
    if bad.any():
        pos = tuple(int(i) for i in np.argwhere(bad)[0])
        raise SparsefabError(f"kv input: non-finite value {vals[pos]} at index {pos} "
                             "(NaN/Inf are not coded; replace them before compressing)")
    return vals, dtype


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """Exact float64 values -> output array (float16, or uint16 BF16 bits)."""
    if dtype == "fp16":
        with np.errstate(over="ignore"):
            return values.astype(np.float16)
    return float_to_bf16(values)


def output_values(out: np.ndarray, dtype: str) -> np.ndarray:
    """Output array -> float64 values."""
    return (out if dtype == "fp16" else bf16_to_float(out)).astype(np.float64)


# ---------------------------------------------------------------------------- block coder

def _units(t: np.ndarray, params: KVParams, ebias: int) -> np.ndarray:
    """Unit size of step code ``t`` = ``e << mbits | f``: ``(2**mbits + f) * 2**(e + ebias)``."""
    t = np.asarray(t, np.int64)
    f = t & ((1 << params.mbits) - 1)
    e = t >> params.mbits
    return np.ldexp(((1 << params.mbits) + f).astype(np.float64), (e + ebias).astype(np.int64))


def choose_ebias(amax: float, params: KVParams, cb: Codebooks) -> int:
    """Exponent bias of a tensor: the coarsest step code spans twice the largest |value|."""
    emax = (1 << params.ebits) - 1
    if amax <= 0:
        return -24 - emax
    top = math.ceil(math.log2(2.0 * amax / cb.unit_per_step)) - (params.mbits + 1) - emax
    return int(np.clip(top, -1000, 1000))


@dataclass
class _Choice:
    bits: np.ndarray      # [n] total block bits
    dist: np.ndarray      # [n] squared error (float64 reconstruction)
    sym: np.ndarray       # [n, G] symbol
    esc: np.ndarray       # [n, G] bool, escape used
    d: np.ndarray         # [n, G] raw escape position
    o: np.ndarray         # [n] offset
    t: np.ndarray         # [n] step code
    clipped: np.ndarray   # [n] values clipped at the escape range / table edge
    alt_sym: np.ndarray   # [n, G] second-nearest table symbol (shorter-code demotion)
    alt_dd: np.ndarray    # [n, G] extra squared error of the demotion
    alt_db: np.ndarray    # [n, G] bits saved by the demotion (<= 0: not a demotion)


def _quantize(x: np.ndarray, t: np.ndarray, i: int, cb: Codebooks, params: KVParams, ebias: int,
              hdr: int) -> _Choice:
    """Quantize groups ``x`` [n, G] with codebook ``i`` at step codes ``t`` [n]."""
    unit = _units(t, params, ebias)[:, None]
    ups = cb.unit_per_step
    if params.obits:
        lim = 1 << (params.obits - 1)
        o = np.clip(np.rint(x.mean(axis=1) / (unit[:, 0] * ups)), -lim, lim - 1).astype(np.int64)
    else:
        o = np.zeros(x.shape[0], np.int64)
    v = x / unit - (o * ups)[:, None]
    syms = cb.table_symbols(i)
    cents = cb.centroids[i, syms]
    order = np.argsort(cents)
    cs, ss = cents[order], syms[order]
    mids = (cs[1:] + cs[:-1]) / 2.0
    j = np.searchsorted(mids, v)
    c = cs[j]
    sym = ss[j]
    err = np.abs(v - c)
    lens = cb.lengths[i]
    bits_sym = lens[sym]
    j2 = np.clip(np.where(v > c, j + 1, j - 1), 0, cs.size - 1)
    alt_sym = ss[j2]
    unit2 = unit * unit
    alt_dd = ((v - cs[j2]) ** 2 - err ** 2) * unit2
    alt_db = bits_sym - lens[alt_sym]
    if cb.has_esc(i):
        lim = 1 << (cb.esc_bits - 1)
        d = np.clip(np.rint(v), -lim, lim - 1)
        esc = (err > ups) & (np.abs(v - d) < err)
        rec = np.where(esc, d, c)
        bits_sym = np.where(esc, lens[cb.esc] + cb.esc_bits, bits_sym)
        sym = np.where(esc, cb.esc, sym)
        d = d.astype(np.int64)
        clipped = (np.abs(v - rec) > ups).sum(axis=1)
        alt_db = np.where(esc, 0, alt_db)
    else:
        esc = np.zeros(v.shape, bool)
        d = np.zeros(v.shape, np.int64)
        rec = c
        clipped = (np.abs(v - rec) > ups).sum(axis=1)
    dist = (((v - rec) * unit) ** 2).sum(axis=1)
    bits = hdr + bits_sym.sum(axis=1)
    return _Choice(bits, dist, sym, esc, d, o, np.asarray(t, np.int64), clipped, alt_sym, alt_dd, alt_db)


def _demote(ch: _Choice, budget: int) -> _Choice:
    """Rate-distortion fill of the budget: from a step too fine to fit, move the values with
    the smallest extra error per saved bit to their second-nearest (shorter) code until the
    block fits.  Blocks that cannot be made to fit get ``bits = inf``-like (budget + 1)."""
    over = ch.bits - budget                                # bits to save, per block
    db = np.where(ch.alt_db > 0, ch.alt_db, 0)
    cost = np.where(db > 0, ch.alt_dd / np.maximum(db, 1), np.inf)
    order = np.argsort(cost, axis=1, kind="stable")
    dbs = np.take_along_axis(db, order, axis=1)
    cum = np.cumsum(dbs, axis=1)
    need = (cum - dbs) < over[:, None]                     # take items until the sum reaches `over`
    take = np.zeros_like(need)
    np.put_along_axis(take, order, need & (dbs > 0), axis=1)
    take &= over[:, None] > 0
    saved = (db * take).sum(axis=1)
    out = dataclasses.replace(ch)
    out.sym = np.where(take, ch.alt_sym, ch.sym)
    out.dist = ch.dist + np.where(take, ch.alt_dd, 0).sum(axis=1)
    out.bits = np.where(saved >= over, ch.bits - saved, budget + 1)
    return out


def _take(a: _Choice, b: _Choice, use_b: np.ndarray) -> _Choice:
    out = {}
    for f in dataclasses.fields(_Choice):
        x, y = getattr(a, f.name), getattr(b, f.name)
        m = use_b.reshape((-1,) + (1,) * (x.ndim - 1))
        out[f.name] = np.where(m, y, x)
    return _Choice(**out)


def _best_for_codebook(x, i, cb, params, ebias, hdr) -> _Choice:
    n = x.shape[0]
    T = 1 << (params.ebits + params.mbits)
    fr = cb.fixed_rate(i)
    if fr:
        # Fixed rate: every step fits; pick the step that just spans the group (min-max),
        # or its neighbours, by distortion.
        syms = cb.table_symbols(i)
        span = float(cb.centroids[i, syms].max() - cb.centroids[i, syms].min())
        need = (x.max(axis=1) - x.min(axis=1)) / max(span, 1.0)
        units = _units(np.arange(T), params, ebias)
        t0 = np.clip(np.searchsorted(units, need), 0, T - 1)
        best = _quantize(x, t0, i, cb, params, ebias, hdr)
        for dt in (-1, 1, 2):
            cand = _quantize(x, np.clip(t0 + dt, 0, T - 1), i, cb, params, ebias, hdr)
            best = _take(best, cand, cand.dist < best.dist)
        return best
    # Entropy code: binary search of the finest step code whose coded size fits.
    lo = np.zeros(n, np.int64)
    hi = np.full(n, T - 1, np.int64)
    for _ in range(params.ebits + params.mbits):
        mid = (lo + hi) // 2
        fits = _quantize(x, mid, i, cb, params, ebias, hdr).bits <= params.nbits
        hi = np.where(fits, mid, hi)
        lo = np.where(fits, lo, mid + 1)
    best = _quantize(x, hi, i, cb, params, ebias, hdr)
    # Use the slack: a finer step with a few values demoted to shorter codes often has less error.
    for dt in (1, 2):
        cand = _demote(_quantize(x, np.clip(hi - dt, 0, T - 1), i, cb, params, ebias, hdr), params.nbits)
        better = (hi - dt >= 0) & (cand.bits <= params.nbits) & (cand.dist < best.dist)
        best = _take(best, cand, better)
    # A coarser step that keeps every value inside the escape range can beat a clipped one.
    if (best.clipped > 0).any():
        # the finest step at which every value is inside the escape range (or the table span)
        lim = (1 << (cb.esc_bits - 1)) - 1 if cb.has_esc(i) else np.abs(cb.centroids[i]).max()
        need = np.abs(x).max(axis=1) / max(lim, 1)
        tc = np.clip(np.searchsorted(_units(np.arange(T), params, ebias), need), hi, T - 1)
        for dt in (0, 1, 2):
            cand = _quantize(x, np.clip(tc + dt, 0, T - 1), i, cb, params, ebias, hdr)
            better = (cand.bits <= params.nbits) & (cand.dist < best.dist)
            best = _take(best, cand, better)
    return best


def encode_groups(x: np.ndarray, cb: Codebooks, params: KVParams, ebias: int, *, policy: str = "search",
                  top: float = 2.0 ** 15):
    """Encode groups ``x`` [n, G] (float64 values) to blocks [n, block_bytes] uint8.

    ``policy="search"``: the multi-pass search (binary search of the step per codebook,
    rate-distortion fill of the slack, coarser-step retries, lowest distortion wins);
    ``policy="hw"``: the one-pass hardware policy that ``gen/kv_compress.py`` implements bit for bit
    (docs/FORMATS_KV.md section 5.2); values with ``|x| >= top`` (FP16: the top binade) are never
    rounded away from zero by it, so no reconstruction overflows to Inf (``compress`` passes ``2**15``
    for FP16 and ``2**127`` for BF16).

    Returns ``(blocks, info)`` where ``info`` holds per-block ``sel``, ``t``, ``o``,
    ``bits`` (used), ``escapes`` and ``clipped`` arrays.
    """
    n, g = x.shape
    if g != params.group:
        raise SparsefabError(f"encode: groups of {g} values, params say {params.group}")
    hdr = params.header_bits(cb.k)
    if not any(cb.fixed_rate(i) and hdr + g * cb.fixed_rate(i) <= params.nbits for i in range(cb.k)):
        raise SparsefabError(f"codebooks: no fixed-rate fallback codebook fits {g} values in "
                             f"{params.block_bytes} bytes after a {hdr}-bit header; retrain with these params")
    if policy not in POLICIES:
        raise SparsefabError(f"encode: policy={policy!r}, expected one of {POLICIES}")
    if policy == "hw":
        best, sel = _encode_choice_hw(x, cb, params, ebias, hdr, top)
    else:
        best, sel = _encode_choice(x, cb, params, ebias, hdr)
    blocks = _pack(best, sel, cb, params)
    info = {"sel": sel, "t": best.t, "o": best.o, "bits": best.bits,
            "escapes": best.esc.sum(axis=1), "clipped": best.clipped}
    return blocks, info


def _encode_choice(x, cb, params, ebias, hdr):
    n = x.shape[0]
    best = None
    sel = np.zeros(n, np.int64)
    for i in range(cb.k):  # loop over the K <= 8 codebooks, vectorised over blocks
        ch = _best_for_codebook(x, i, cb, params, ebias, hdr)
        ok = ch.bits <= params.nbits
        if best is None:
            best = ch
            best.dist = np.where(ok, ch.dist, np.inf)
            sel[:] = i
            continue
        take = ok & (ch.dist < best.dist)
        best = _take(best, ch, take)
        sel = np.where(take, i, sel)
    return best, sel



# ---------------------------------------------------------------------------- one-pass hardware policy
#
# ``policy="hw"`` (docs/FORMATS_KV.md section 5.2): one pass over the group after its statistics,
# every decision an exact integer (or exactly representable float64) computation that the RTL
# compressor (gen/kv_compress.py) reproduces bit for bit:
#   1. statistics: S = sum |x|, A = max |x|;
#   2. a window of HW_CANDIDATES consecutive step codes from the mean magnitude (code(S) - log2 G)
#      and never finer than the step that keeps A inside the escape range (no clipping);
#   3. every value quantized at every candidate step by a truncated reciprocal (z ~ 2**HW_F * |v|),
#      the code length under EVERY Huffman codebook at every candidate summed in parallel;
#   4. per block: the finest candidate step that fits under any Huffman codebook (ties: fewer bits,
#      then the lower codebook index); if none fits, the first fixed-rate codebook at the step that
#      keeps A inside its table (the fallback).

HW_F = 3                # fractional bits of the quantizer (z = floor(2**HW_F * |v|), truncated)
HW_K = 17               # reciprocal precision: R_D = ceil(2**HW_K / D)
HW_YBITS = 13           # integer bits of |v| * D kept before saturation (2**13 > 512 * 15)
HW_CANDIDATES = 12      # candidate step codes evaluated in parallel
HW_WINDOW = -28         # first candidate relative to code(mean |x|), in step codes, at HW_BPV bits/value
HW_BPV = (504 - 9) / 128  # lane bits per value the window offset is calibrated for (63-byte blocks)
POLICIES = ("search", "hw")


def hw_recip(mbits: int) -> np.ndarray:
    """Reciprocals ``R_D = ceil(2**HW_K / D)`` of the step mantissas ``D = 2**mbits + f``."""
    d = (1 << mbits) + np.arange(1 << mbits)
    return -(-(1 << HW_K) // d)


def hw_code(v: np.ndarray, params: KVParams, ebias: int) -> np.ndarray:
    """Floor step code of magnitudes ``v >= 0``: the largest (unclipped) ``t`` with ``unit(t) <= v``
    (the exponent of ``v`` and its ``mbits`` next bits); 0 maps to ``-2**20``."""
    v = np.asarray(v, np.float64)
    m, ex = np.frexp(np.where(v > 0, v, 1.0))            # v = m * 2**ex, 0.5 <= m < 1
    mb = params.mbits
    f = np.floor(m * (1 << (mb + 1))).astype(np.int64) - (1 << mb)
    t = ((ex.astype(np.int64) - 1 - mb - ebias) << mb) + f
    return np.where(v > 0, t, -(1 << 20))


def hw_range_log2(cb: Codebooks) -> int:
    """``floor(log2(lim))``: the Huffman codebooks reach ``lim`` units (escape range ``2**(esc_bits-1)``,
    or the smallest table edge when they have no escape), so a step with ``max|x| / unit < 2**k`` clips
    nothing."""
    huff = [i for i in range(cb.k) if not cb.fixed_rate(i)]
    if not huff:
        return 0
    if all(cb.has_esc(i) for i in huff):
        lim = 1 << (cb.esc_bits - 1)
    else:
        lim = min(int(np.abs(cb.centroids[i, cb.table_symbols(i)]).max()) for i in huff)
    return max(int(lim).bit_length() - 1, 0)


def hw_window_offset(cb: Codebooks, params: KVParams) -> int:
    """First candidate relative to the code of the mean: ``HW_WINDOW`` minus ``2**mbits`` step codes
    (one octave) per lane bit per value above ``HW_BPV`` (rounded), so the window follows the block
    budget (0 shift for 128 values in 63 bytes)."""
    bpv = (params.nbits - params.header_bits(cb.k)) / params.group
    return HW_WINDOW - int(round((1 << params.mbits) * (bpv - HW_BPV)))


def hw_window(x: np.ndarray, cb: Codebooks, params: KVParams, ebias: int):
    """First candidate step code per group [n], and the fallback step per group [n]."""
    T = 1 << (params.ebits + params.mbits)
    ax = np.abs(x)
    s = ax.sum(axis=1)
    a = ax.max(axis=1)
    mb = params.mbits
    lg = int(round((1 << mb) * math.log2(params.group)))
    tm = hw_code(s, params, ebias) - lg
    # escape range (or table span when the Huffman codebooks have no escape): A/unit < 2**k
    ta = hw_code(a, params, ebias)
    tl = ta - (hw_range_log2(cb) << mb) + 1
    C = min(HW_CANDIDATES, T)
    base = np.clip(np.maximum(tm + hw_window_offset(cb, params), tl), 0, T - C)
    hdr = params.header_bits(cb.k)
    fb = [i for i in range(cb.k) if cb.fixed_rate(i) and hdr + params.group * cb.fixed_rate(i) <= params.nbits][0]
    cs = cb.centroids[fb, cb.table_symbols(fb)]
    flim = int(max(min(-cs.min(), cs.max()), 1))
    tf = np.clip(ta - ((flim.bit_length() - 1) << mb) + 1, 0, T - 1)
    return base, tf


def hw_big_margin(cb: Codebooks) -> int:
    """Magnitude pulled off ``z`` (in ``2**-HW_F`` units) for values ``|x| >= top``: half the widest gap
    of any centroid table (at least ``unit_per_step``) plus one, so their nearest centroid and their
    escape value are never farther from zero than the value itself (no overflow to Inf)."""
    gap = cb.unit_per_step
    for i in range(cb.k):
        cs = np.sort(cb.centroids[i, cb.table_symbols(i)])
        if cs.size > 1:
            gap = max(gap, int(np.diff(cs).max()))
    return (gap << (HW_F - 1)) + 1


def _hw_quantize(x: np.ndarray, t: np.ndarray, i: int, cb: Codebooks, params: KVParams, ebias: int,
                 hdr: int, top: float = 2.0 ** 15) -> _Choice:
    """Quantize groups ``x`` [n, G] with codebook ``i`` at step codes ``t`` [n] by the integer rule
    of the hardware (no offset: ``obits`` must be 0)."""
    t = np.asarray(t, np.int64)
    mb = params.mbits
    e = t >> mb
    f = t & ((1 << mb) - 1)
    ymax = (1 << (HW_YBITS + HW_F)) - 1
    # y = floor(|x| * 2**F / 2**(e + ebias)), exact (power-of-two scaling of a float64)
    y = np.minimum(np.floor(np.ldexp(np.abs(x), (HW_F - e - ebias)[:, None])), ymax).astype(np.int64)
    z = (y * hw_recip(mb)[f][:, None]) >> HW_K             # ~ 2**F * |v|, truncated
    z = np.where(np.abs(x) >= top, np.maximum(z - hw_big_margin(cb), 0), z)
    neg = x < 0
    zs = np.where(neg, -z, z)
    ups = cb.unit_per_step
    syms = cb.table_symbols(i)
    cents = cb.centroids[i, syms]
    order = np.argsort(cents, kind="stable")
    cs, ss = cents[order], syms[order]
    mids = (cs[1:] + cs[:-1]) << (HW_F - 1)                 # midpoints in 2**-F units
    j = (zs[..., None] > mids).sum(axis=-1)
    rec = cs[j]
    sym = ss[j]
    err = np.abs(zs - (rec << HW_F))
    lens = cb.lengths[i]
    bits_sym = lens[sym]
    if cb.has_esc(i):
        lim = 1 << (cb.esc_bits - 1)
        r = np.minimum((z + (1 << (HW_F - 1))) >> HW_F, lim - 1)
        d = np.where(neg, -r, r)
        derr = np.abs(zs - (d << HW_F))
        esc = (err > (ups << HW_F)) & (derr < err)
        rec = np.where(esc, d, rec)
        err = np.where(esc, derr, err)
        bits_sym = np.where(esc, lens[cb.esc] + cb.esc_bits, bits_sym)
        sym = np.where(esc, cb.esc, sym)
        d = np.where(esc, d, 0)
    else:
        esc = np.zeros(x.shape, bool)
        d = np.zeros(x.shape, np.int64)
    clipped = (err > (ups << HW_F)).sum(axis=1)
    unit = _units(t, params, ebias)[:, None]
    dist = ((x - rec * unit) ** 2).sum(axis=1)
    bits = hdr + bits_sym.sum(axis=1)
    zero = np.zeros(x.shape, np.int64)
    return _Choice(bits, dist, sym, esc, d, np.zeros(x.shape[0], np.int64), t, clipped, zero, zero.astype(float), zero)


def _encode_choice_hw(x, cb, params, ebias, hdr, top=2.0 ** 15):
    """The one-pass hardware policy (see the section comment); returns ``(best, sel)``."""
    if params.obits:
        raise SparsefabError(f"policy 'hw': obits={params.obits}, the hardware policy codes no offset (use 0)")
    n = x.shape[0]
    T = 1 << (params.ebits + params.mbits)
    base, tf = hw_window(x, cb, params, ebias)
    C = min(HW_CANDIDATES, T)
    huff = [i for i in range(cb.k) if not cb.fixed_rate(i)]
    best_t = np.full(n, T, np.int64)          # finest fitting candidate so far
    best_b = np.full(n, params.nbits + 1, np.int64)
    best_i = np.full(n, -1, np.int64)
    for c in range(C):                         # loop over candidates and codebooks (<= 12 x 8)
        t = base + c
        for i in huff:
            b = _hw_quantize(x, t, i, cb, params, ebias, hdr, top).bits
            ok = b <= params.nbits
            better = ok & ((t < best_t) | ((t == best_t) & (b < best_b)))
            best_t = np.where(better, t, best_t)
            best_b = np.where(better, b, best_b)
            best_i = np.where(better, i, best_i)
    fixed = [i for i in range(cb.k) if cb.fixed_rate(i) and hdr + params.group * cb.fixed_rate(i) <= params.nbits]
    fb = fixed[0]
    nofit = best_i < 0
    sel = np.where(nofit, fb, best_i)
    t = np.where(nofit, tf, best_t)
    best = None
    for i in sorted(set(sel.tolist())):        # one quantization per used codebook
        ch = _hw_quantize(x, t, i, cb, params, ebias, hdr, top)
        best = ch if best is None else _take(best, ch, sel == i)
    return best, sel


def _lane_layout(bits_sym: np.ndarray, params: KVParams, hdr: int):
    """Per-symbol start offsets within lanes, lane totals, pair boundaries [n, pairs+1]."""
    n, g = bits_sym.shape
    L = params.lanes
    per = bits_sym.reshape(n, g // L, L)                 # value i -> lane i % L, slot i // L
    csum = np.cumsum(per, axis=1)
    start = csum - per                                  # exclusive prefix within the lane
    used = csum[:, -1, :]                               # [n, L]
    npairs = max(L // 2, 1)
    bnd = np.zeros((n, npairs + 1), np.int64)
    bnd[:, 0] = hdr
    if L == 1:
        bnd[:, 1] = params.nbits
    else:
        for p in range(npairs - 1):
            bnd[:, p + 1] = bnd[:, p] + used[:, 2 * p] + used[:, 2 * p + 1]
        bnd[:, npairs] = params.nbits
    return start.reshape(n, g), used, bnd


def _pack(ch: _Choice, sel: np.ndarray, cb: Codebooks, params: KVParams) -> np.ndarray:
    n, g = ch.sym.shape
    L = params.lanes
    hdr = params.header_bits(cb.k)
    codes = np.stack([huffman.canonical_codes(cb.lengths[i]) for i in range(cb.k)])
    clen = cb.lengths[sel[:, None], ch.sym]              # [n, G]
    code = codes[sel[:, None], ch.sym]
    tot = clen + np.where(ch.esc, cb.esc_bits, 0)
    start, used, bnd = _lane_layout(tot, params, hdr)
    W = cb.max_len + cb.esc_bits
    j = np.arange(W)
    # Bits of each symbol in stream order: code MSB first, then the raw escape LSB first.
    cbit = (code[..., None] >> np.clip(clen[..., None] - 1 - j, 0, None)) & 1
    draw = ch.d & ((1 << cb.esc_bits) - 1) if cb.esc_bits else np.zeros_like(ch.d)
    dbit = (draw[..., None] >> np.clip(j - clen[..., None], 0, None)) & 1
    val = np.where(j < clen[..., None], cbit, dbit).astype(np.uint8)
    valid = j < tot[..., None]
    lane = np.arange(g) % L
    pair = lane // 2
    fwd = (lane % 2 == 0) | (L == 1)
    off = start[..., None] + j                           # [n, G, W]
    b_lo = np.take_along_axis(bnd, np.broadcast_to(pair, (n, g)), axis=1)
    b_hi = np.take_along_axis(bnd, np.broadcast_to(pair + 1, (n, g)), axis=1)
    pos = np.where(fwd[None, :, None], b_lo[..., None] + off, b_hi[..., None] - 1 - off)
    out = np.zeros((n, params.nbits), np.uint8)
    rows = np.broadcast_to(np.arange(n)[:, None, None], pos.shape)
    out[rows[valid], pos[valid]] = val[valid]
    # Header fields, LSB first: sel, e, f, o, boundaries 1..pairs-1.
    fields = [(sel, params.selbits(cb.k)), (ch.t >> params.mbits, params.ebits),
              (ch.t & ((1 << params.mbits) - 1), params.mbits),
              (ch.o & ((1 << params.obits) - 1), params.obits)]
    fields += [(bnd[:, p], params.pbits) for p in range(1, params.npointers + 1)]
    at = 0
    for v, w in fields:
        if w:
            out[:, at: at + w] = ((v[:, None] >> np.arange(w)) & 1).astype(np.uint8)
            at += w
    return np.packbits(out, axis=1, bitorder="little")


def _read_field(bits: np.ndarray, at: int, w: int) -> np.ndarray:
    if w == 0:
        return np.zeros(bits.shape[0], np.int64)
    return (bits[:, at: at + w].astype(np.int64) << np.arange(w)).sum(axis=1)


def decode_blocks(blocks: np.ndarray, cb: Codebooks, params: KVParams, ebias: int,
                  *, first_block: int = 0):
    """Decode blocks [n, block_bytes] to exact float64 values [n, G].

    Raises :class:`FormatError` naming the first malformed block (selector out of range,
    boundaries out of order, a bit pattern that is no code, or a lane that runs past its
    region).  Returns ``(values, info)`` with per-block ``sel`` and ``used`` bits.
    """
    blocks = np.asarray(blocks, np.uint8)
    n = blocks.shape[0]
    g, L = params.group, params.lanes
    hdr = params.header_bits(cb.k)
    bits = np.unpackbits(blocks, axis=1, bitorder="little")
    if bits.shape[1] != params.nbits:
        raise FormatError(f"blocks of {blocks.shape[1]} bytes, expected {params.block_bytes}")
    at = 0
    sel = _read_field(bits, at, params.selbits(cb.k))
    at += params.selbits(cb.k)
    e = _read_field(bits, at, params.ebits)
    at += params.ebits
    f = _read_field(bits, at, params.mbits)
    at += params.mbits
    o = _read_field(bits, at, params.obits)
    at += params.obits
    if params.obits:
        o = np.where(o >= 1 << (params.obits - 1), o - (1 << params.obits), o)
    npairs = max(L // 2, 1)
    bnd = np.zeros((n, npairs + 1), np.int64)
    bnd[:, 0] = hdr
    bnd[:, npairs] = params.nbits
    for p in range(1, params.npointers + 1):
        bnd[:, p] = _read_field(bits, at, params.pbits)
        at += params.pbits

    def fail(mask, why):
        if mask.any():
            b = int(np.flatnonzero(mask)[0])
            raise FormatError(f"kv block {first_block + b}: {why}")

    fail(sel >= cb.k, f"codebook selector out of range (K={cb.k})")
    fail((np.diff(bnd, axis=1) < 0).any(axis=1), "lane boundary pointers out of order or beyond the block")
    # Lane state [n, L]: position of the next bit, direction, region.
    lane = np.arange(L)
    pair = lane // 2
    fwd = (lane % 2 == 0) | (L == 1)
    lo = bnd[:, pair]
    hi = bnd[:, pair + 1]
    pos = np.where(fwd, lo, hi - 1)
    step = np.where(fwd, 1, -1)
    used = np.zeros((n, L), np.int64)
    M = cb.max_len
    tabs = [huffman.decode_table(cb.lengths[i], M) for i in range(cb.k)]
    tsym = np.stack([t[0] for t in tabs])
    tlen = np.stack([t[1] for t in tabs])
    rows = np.arange(n)[:, None]
    jm = np.arange(M)

    def peek(offset, w):
        # Bits at offset..offset+w-1 in lane direction; outside the lane's region read 0.
        p = pos[..., None] + step[..., None] * (offset[..., None] + np.arange(w))
        inside = (p >= lo[..., None]) & (p < hi[..., None])
        b = bits[rows[..., None], np.clip(p, 0, params.nbits - 1)] & inside
        return b.astype(np.int64)

    vals = np.zeros((n, g // L, L), np.int64)
    esc_sym = cb.esc
    zero = np.zeros((n, L), np.int64)
    for slot in range(g // L):  # loop over the G/L slots of a lane, vectorised over blocks and lanes
        win = peek(used, M)
        idx = (win << (M - 1 - jm)).sum(axis=-1)
        s = tsym[sel[:, None], idx]
        ln = tlen[sel[:, None], idx]
        fail((ln == 0).any(axis=1), f"lane slot {slot}: bit pattern is not a code of codebook")
        if cb.esc_bits:
            isesc = s == esc_sym
            raw = (peek(used + ln, cb.esc_bits) << np.arange(cb.esc_bits)).sum(axis=-1)
            raw = np.where(raw >= 1 << (cb.esc_bits - 1), raw - (1 << cb.esc_bits), raw)
            r = np.where(isesc, raw, cb.centroids[sel[:, None], s])
            ln = ln + np.where(isesc, cb.esc_bits, zero)
        else:
            r = cb.centroids[sel[:, None], s]
        vals[:, slot, :] = r
        used = used + ln
    room = hi - lo
    if L == 1:
        over = used[:, 0] > room[:, 0]
    else:
        over = (used[:, 0::2] + used[:, 1::2] > room[:, 0::2]).any(axis=1)
    fail(over, "lanes run past their region (codes overlap)")
    r = vals.reshape(n, g) + (o * cb.unit_per_step)[:, None]
    mant = (1 << params.mbits) + f
    values = np.ldexp((r * mant[:, None]).astype(np.float64), (e + ebias)[:, None])
    return values, {"sel": sel, "used": used.sum(axis=1) + hdr}


# ---------------------------------------------------------------------------- files

_HDR = struct.Struct("<4sHBB4IBBHHBBBBhII16x")


@dataclass(frozen=True)
class KVHeader:
    """Parsed header of a compressed tensor file (see docs/FORMATS_KV.md)."""

    dtype: str
    shape: tuple
    params: KVParams
    ebias: int
    nblocks: int
    cb_len: int

    @property
    def blocks_offset(self) -> int:
        return KV_HEADER + _pad8(self.cb_len)

    @property
    def file_bytes(self) -> int:
        return self.blocks_offset + self.nblocks * self.params.block_bytes


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def compress(x: np.ndarray, *, codebooks: Codebooks, params: KVParams | None = None,
             dtype: str | None = None, policy: str = DEFAULT_POLICY) -> tuple[bytes, dict]:
    """Compress a KV tensor (or weights) to a self-contained ``.sfk`` file image.

    Parameters
    ----------
    x : ndarray, 1 to 4 dimensions
        float16 (FP16), uint16 (BF16 bit patterns) or float32/64 rounded to ``dtype``.
    codebooks : Codebooks
        Trained with the same geometry (:func:`train`); embedded in the file.
    params : KVParams
        Block geometry (default ``KVParams()``: 128 values in 63 bytes, 2 lanes).
    policy : str
        Encoder policy, ``"search"`` or ``"hw"`` (:func:`encode_groups`; the file format is the same),
        or ``"auto"`` (default): ``"hw"`` when ``params.obits == 0`` (the hardware policy codes no
        offset), else ``"search"``.  ``stats["policy"]`` names the policy used.

    Returns
    -------
    (data, stats)
        ``stats``: ``ratio`` (input bytes / file bytes, everything included), ``sqnr_db``,
        ``max_abs_err``, ``blocks``, ``fallback_blocks``, ``per_codebook``, ``escapes``,
        ``escape_blocks``, ``clipped_values``, ``mean_used_bits``, ``bits_per_value``.
    """
    params = params or KVParams()
    vals, dtype = input_values(x, dtype)
    nb = n_blocks(vals.shape, params)
    if nb >= MAX_BLOCKS:
        raise SparsefabError(f"kv input: {nb} blocks, more than the format's {MAX_BLOCKS}")
    groups = to_groups(vals, params)
    amax = float(np.abs(vals).max())
    ebias = choose_ebias(amax, params, codebooks)
    if policy == "auto":
        policy = "hw" if params.obits == 0 else "search"
    blocks, info = encode_groups(groups, codebooks, params, ebias, policy=policy,
                                 top=2.0 ** 15 if dtype == "fp16" else 2.0 ** 127)
    cbb = codebooks.to_bytes()
    shape = tuple(vals.shape) + (0,) * (4 - vals.ndim)
    head = _HDR.pack(KV_MAGIC, VERSION, DTYPE_CODES[dtype], vals.ndim, *shape, AXES[params.axis],
                     params.lanes, params.group, params.block_bytes, params.ebits, params.mbits,
                     params.obits, 0, ebias, nb, len(cbb))
    body = cbb + b"\0" * (_pad8(len(cbb)) - len(cbb)) + blocks.tobytes()
    crc = zlib.crc32(body, zlib.crc32(head))
    data = head + struct.pack("<I", crc) + body
    # Statistics from the real decoder output (the bits that were written).
    rec, _ = decode_blocks(blocks, codebooks, params, ebias)
    out = round_to(from_groups(rec, vals.shape, params), dtype)
    stats = _stats(vals, output_values(out, dtype), len(data), info, codebooks, params, nb)
    stats["policy"] = policy
    return data, stats


def _stats(vals, rec, nbytes, info, cb, params, nb) -> dict:
    err = rec - vals
    sig = float((vals ** 2).sum())
    noise = float((err ** 2).sum())
    fallback = [i for i in range(cb.k) if cb.fixed_rate(i)]
    sel = info["sel"]
    return {
        "ratio": 2 * vals.size / nbytes,
        "sqnr_db": 10 * math.log10(sig / noise) if noise > 0 else float("inf"),
        "max_abs_err": float(np.abs(err).max()),
        "blocks": int(nb),
        "fallback_blocks": int(np.isin(sel, fallback).sum()),
        "per_codebook": [int((sel == i).sum()) for i in range(cb.k)],
        "escapes": int(info["escapes"].sum()),
        "escape_blocks": int((info["escapes"] > 0).sum()),
        "clipped_values": int(info["clipped"].sum()),
        "mean_used_bits": float(info["bits"].mean()),
        "bits_per_value": 8.0 * nbytes / vals.size,
        "file_bytes": int(nbytes),
    }


def read_header(data: bytes, what: str = "kv file") -> tuple[KVHeader, Codebooks]:
    """Parse and validate a ``.sfk`` file image: every size against the file length and the
    shape BEFORE allocating, then the CRC, then the embedded codebooks."""
    if len(data) < KV_HEADER:
        raise FormatError(f"{what}: {len(data)} bytes, too short for the {KV_HEADER}-byte header")
    (magic, version, dt, ndim, s0, s1, s2, s3, axis, lanes, group, bb, ebits, mbits, obits, _r,
     ebias, nblocks, cb_len) = _HDR.unpack_from(data, 0)
    if magic != KV_MAGIC:
        raise FormatError(f"{what}: bad magic {magic!r}, expected {KV_MAGIC!r}")
    if version != VERSION:
        raise FormatError(f"{what}: version {version} not supported (expected {VERSION})")
    if dt not in DTYPE_NAMES:
        raise FormatError(f"{what}: dtype code {dt} unknown (1 fp16, 2 bf16)")
    if not 1 <= ndim <= 4:
        raise FormatError(f"{what}: ndim {ndim}, expected 1..4")
    shape = (s0, s1, s2, s3)[:ndim]
    if any(d == 0 for d in shape) or any((s0, s1, s2, s3)[ndim:]):
        raise FormatError(f"{what}: bad shape fields {(s0, s1, s2, s3)} for ndim {ndim}")
    if axis not in AXIS_NAMES:
        raise FormatError(f"{what}: axis code {axis} unknown (0 token, 1 channel)")
    try:
        params = KVParams(group=group, block_bytes=bb, lanes=lanes, ebits=ebits, mbits=mbits,
                          obits=obits, axis=AXIS_NAMES[axis])
    except SparsefabError as exc:
        raise FormatError(f"{what}: {exc}") from None
    want = n_blocks(shape, params)
    if nblocks != want:
        raise FormatError(f"{what}: header says {nblocks} blocks, shape {shape} implies {want}")
    if cb_len > 4096:
        raise FormatError(f"{what}: codebook length {cb_len} exceeds 4096 bytes")
    hdr = KVHeader(DTYPE_NAMES[dt], shape, params, ebias, nblocks, cb_len)
    if len(data) != hdr.file_bytes:
        raise FormatError(f"{what}: {len(data)} bytes, header implies {hdr.file_bytes}")
    (crc,) = struct.unpack_from("<I", data, 60)
    if zlib.crc32(data[KV_HEADER:], zlib.crc32(data[:60])) != crc:
        raise FormatError(f"{what}: CRC mismatch (corrupted)")
    cb = Codebooks.from_bytes(data[KV_HEADER: KV_HEADER + cb_len], f"{what}: embedded codebooks")
    if params.header_bits(cb.k) >= params.nbits:
        raise FormatError(f"{what}: block header of {params.header_bits(cb.k)} bits fills the block")
    return hdr, cb


def file_blocks(data: bytes, hdr: KVHeader) -> np.ndarray:
    """The blocks of a validated file image as uint8 [nblocks, block_bytes]."""
    return np.frombuffer(data, np.uint8, hdr.nblocks * hdr.params.block_bytes,
                         hdr.blocks_offset).reshape(hdr.nblocks, hdr.params.block_bytes)


def decompress(data: bytes, what: str = "kv file") -> tuple[np.ndarray, dict]:
    """Decode a ``.sfk`` file image to float16 (FP16) or uint16 (BF16 bits) of the original shape."""
    hdr, cb = read_header(bytes(data), what)
    blocks = file_blocks(data, hdr)
    rec, info = decode_blocks(blocks, cb, hdr.params, hdr.ebias)
    out = round_to(from_groups(rec, hdr.shape, hdr.params), hdr.dtype)
    return out, {"dtype": hdr.dtype, "shape": hdr.shape, "blocks": hdr.nblocks,
                 "per_codebook": [int((info["sel"] == i).sum()) for i in range(cb.k)]}


# ---------------------------------------------------------------------------- training


def train(calib: np.ndarray, *, params: KVParams | None = None, n_huffman: int = 3, alphabet: int = 24,
          max_len: int = 8, esc_bits: int = 10, unit_per_step: int = 4, iters: int = 4,
          centroids: str = "uniform", max_blocks: int = 8192, seed: int = 0,
          policy: str = TRAIN_POLICY) -> Codebooks:
    """Train K Huffman codebooks (+ the flat fallback) on calibration data.

    Lloyd-style alternation on blocks: encode with the current set (each block picks its
    lowest-distortion codebook), then rebuild each codebook's length-limited code from the
    symbol counts of its blocks (blocks encoded with the encoder ``policy`` the codebooks are
    for, see :func:`encode_groups`); with ``centroids="kmeans"`` each table point also moves to
    the mean position of the values it reconstructs (a non-uniform, k-means table).
    """
    params = params or KVParams()
    if centroids not in ("uniform", "kmeans"):
        raise SparsefabError(f"centroids={centroids!r}, expected 'uniform' or 'kmeans'")
    if policy not in POLICIES:
        raise SparsefabError(f"train: policy={policy!r}, expected one of {POLICIES}")
    if not 1 <= n_huffman <= MAX_K - 1:
        raise SparsefabError(f"n_huffman={n_huffman}, expected 1..{MAX_K - 1}")
    if not 4 <= alphabet <= MAX_ALPHABET:
        raise SparsefabError(f"alphabet={alphabet}, expected 4..{MAX_ALPHABET}")
    if (alphabet - (1 if esc_bits else 0)) > (1 << max_len):
        raise SparsefabError(f"alphabet={alphabet} needs codes longer than max_len={max_len}")
    vals, _ = input_values(calib)
    groups = to_groups(vals, params)
    rng = np.random.default_rng(seed)
    if groups.shape[0] > max_blocks:
        groups = groups[np.sort(rng.choice(groups.shape[0], max_blocks, replace=False))]
    cb = uniform_codebooks(params=params, n_huffman=n_huffman, alphabet=alphabet, max_len=max_len,
                           esc_bits=esc_bits, unit_per_step=unit_per_step)
    ebias = choose_ebias(float(np.abs(vals).max()), params, cb)
    hdr = params.header_bits(cb.k)
    for _ in range(iters):
        best, sel = (_encode_choice_hw if policy == "hw" else _encode_choice)(groups, cb, params, ebias, hdr)
        lengths = cb.lengths.copy()
        cents = cb.centroids.copy()
        for i in range(n_huffman):  # loop over codebooks only
            mine = sel == i
            if not mine.any():
                continue
            counts = np.bincount(best.sym[mine].ravel(), minlength=cb.s).astype(np.float64)
            support = cb.lengths[i] > 0
            counts = counts + support * (0.02 + 1e-4 * counts.sum() / support.sum())
            lengths[i] = huffman.limited_lengths(counts, max_len)
            if centroids == "kmeans":
                unit = _units(best.t[mine], params, ebias)[:, None]
                v = groups[mine] / unit - (best.o[mine] * unit_per_step)[:, None]
                s = best.sym[mine]
                keep = s != cb.esc
                sums = np.bincount(s[keep], weights=v[keep], minlength=cb.s)
                cnt = np.bincount(s[keep], minlength=cb.s)
                new = np.where(cnt > 0, np.rint(sums / np.maximum(cnt, 1)), cents[i]).astype(np.int64)
                tab = cb.table_symbols(i)
                if np.unique(new[tab]).size == tab.size and np.all(np.diff(new[tab]) > 0):
                    cents[i, tab] = new[tab]
        cb = Codebooks(lengths, cents, max_len=max_len, esc_bits=esc_bits, unit_per_step=unit_per_step)
    return cb


# ---------------------------------------------------------------------------- baselines


def sqnr_db(x: np.ndarray, xh: np.ndarray) -> float:
    """``10 log10(sum x^2 / sum (x - xh)^2)`` in float64 (inf when exact)."""
    x = np.asarray(x, np.float64)
    noise = float(((x - np.asarray(xh, np.float64)) ** 2).sum())
    return 10 * math.log10(float((x ** 2).sum()) / noise) if noise > 0 else float("inf")


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical zeroth-order entropy (bits per symbol) of an integer array."""
    _, c = np.unique(np.asarray(symbols).ravel(), return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def minmax_baseline(x: np.ndarray, *, bits: int, group: int = 128, axis: str = "token",
                    residual_fp16: bool = False) -> dict:
    """Min-max uniform quantization per group, scale and minimum stored as FP16.

    Returns ``sqnr_db``, ``ratio`` (2 bytes per value / (bits/8 per value + 4 bytes per
    group), padding counted), ``entropy`` (bits per symbol of the codes), the entropy-bound
    ratio (codes ideally entropy coded, same metadata) and the reconstruction ``recon``.
    With ``residual_fp16`` and ``axis="channel"`` (KIVI), the last ``T % group`` tokens
    that do not fill a group stay in FP16 (exact, 2 bytes each) instead of being padded.
    """
    if not 1 <= bits <= 8:
        raise SparsefabError(f"minmax bits={bits}, expected 1..8")
    vals, dtype = input_values(x)
    p3 = _canon3(vals.shape)
    if residual_fp16 and axis == "channel" and p3[1] % group and p3[1] > group:
        a = vals.reshape(p3)
        tf = p3[1] - p3[1] % group
        head = minmax_baseline(a[:, :tf].astype(np.float16), bits=bits, group=group, axis=axis)
        rec = np.concatenate([head["recon"].reshape(p3[0], tf, p3[2]), a[:, tf:]], axis=1)
        n_res = a[:, tf:].size
        qbytes = 2 * head["recon"].size / head["ratio"]
        ebytes = 2 * head["recon"].size / head["entropy_ratio"]
        return {"sqnr_db": sqnr_db(vals, rec.reshape(vals.shape)), "ratio": 2 * vals.size / (qbytes + 2 * n_res),
                "entropy": head["entropy"], "entropy_ratio": 2 * vals.size / (ebytes + 2 * n_res),
                "recon": rec.reshape(vals.shape)}
    p = KVParams(group=group, block_bytes=4, lanes=1, axis=axis)
    g = to_groups(vals, p)
    mn = g.min(axis=1, keepdims=True).astype(np.float16).astype(np.float64)
    sc = ((g.max(axis=1, keepdims=True) - mn) / ((1 << bits) - 1)).astype(np.float16).astype(np.float64)
    sc = np.where(sc > 0, sc, 1.0)
    q = np.clip(np.rint((g - mn) / sc), 0, (1 << bits) - 1)
    rec = output_values(round_to(from_groups(q * sc + mn, vals.shape, p), dtype), dtype)
    nbytes = g.shape[0] * (group * bits / 8 + 4)
    h = entropy_bits(q)
    return {"sqnr_db": sqnr_db(vals, rec), "ratio": 2 * vals.size / nbytes, "entropy": h,
            "entropy_ratio": 2 * vals.size / (g.shape[0] * (group * h / 8 + 4)), "recon": rec}


def codec_entropy(data: bytes) -> dict:
    """Entropy bound of the codec's own symbols: re-quantization-free, from the file.

    Returns the zeroth-order entropy of the decoded symbols (escape raw bits counted at
    their width) and the ratio an ideal entropy coder would reach with the same block
    headers: ``ratio_bound = 16 / (H + header_bits/G)``.
    """
    hdr, cb = read_header(bytes(data))
    p = hdr.params
    blocks = file_blocks(data, hdr)
    rec, _ = decode_blocks(blocks, cb, p, hdr.ebias)
    e = _read_field(np.unpackbits(blocks, axis=1, bitorder="little"), p.selbits(cb.k), p.ebits)
    f = _read_field(np.unpackbits(blocks, axis=1, bitorder="little"), p.selbits(cb.k) + p.ebits, p.mbits)
    unit = np.ldexp(((1 << p.mbits) + f).astype(np.float64), e + hdr.ebias)[:, None]
    r = np.rint(rec / unit).astype(np.int64)
    h = entropy_bits(r)
    bpv = h + p.header_bits(cb.k) / p.group
    return {"entropy": h, "bits_per_value_bound": bpv, "ratio_bound": 16.0 / bpv}


def subset_file(data: bytes, nblocks: int) -> bytes:
    """A valid ``.sfk`` image holding the first ``nblocks`` blocks of ``data`` as a 1-D tensor
    (same codebooks, geometry and ebias; ``axis`` token), for hardware runs on a sample."""
    hdr, cb = read_header(bytes(data))
    n = max(1, min(int(nblocks), hdr.nblocks))
    p = dataclasses.replace(hdr.params, axis="token")
    head = _HDR.pack(KV_MAGIC, VERSION, DTYPE_CODES[hdr.dtype], 1, n * p.group, 0, 0, 0, 0, p.lanes,
                     p.group, p.block_bytes, p.ebits, p.mbits, p.obits, 0, hdr.ebias, n, hdr.cb_len)
    body = bytes(data[KV_HEADER: hdr.blocks_offset + n * p.block_bytes])
    return head + struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + body
