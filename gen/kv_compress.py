"""KVCompressor: FP16 values in, fixed-size entropy-coded KV blocks out (issue 4, section 2).

Bit-exact hardware twin of the golden block encoder of :mod:`sparsefab.compress.kv`
(format: docs/FORMATS_KV.md) under the policy :func:`reference_encode` states in golden-model
calls: the golden search WITHOUT its rate-distortion fill (``_demote``, a sort of the group on
float cost ratios), and with the coarser-step retry decided per block.  docs/FORMATS_KV.md section
5 makes the encoder informative: every block is a valid block of the format.  Owner: KV-codec
engineer #2 (compressor); the decompressor is ``gen/kv_decompress.py``.

Ports
-----
i_values : In(stream.Signature(ArrayLayout(unsigned(16), P)))
    ``P = values_per_cycle`` FP16 bit patterns per beat, in group order (value ``i`` of a
    group is element ``i % P`` of beat ``i // P``); ``group / P`` beats make one group.
o_words : Out(stream.Signature(StructLayout({"data": unsigned(W), "last": 1})))
    Each compressed block as ``ceil(8 * block_bytes / W)`` little-endian ``W``-bit words
    (``W = bus_bits``); block bit ``k`` is bit ``k % W`` of word ``k // W``; bits past the
    block are 0; ``last`` marks the final word of a block.
ebias : In(signed(8))
    Tensor exponent bias (file header field; :func:`sparsefab.compress.kv.choose_ebias`).
    Sampled when a group has been received; outside ``[ebias_min, ebias_max]`` (see
    :class:`KVCompressConfig`) the group is refused like a non-finite one.  ``ebias_min = -24``
    keeps every step a whole multiple of 2**-24 (exact integer error); with the default
    geometry it refuses tensors whose largest magnitude is <= 1/32 (scale them first).
    Input is FP16 only (BF16 tensors go through the software encoder).
error : Out(1)
    Sticky: a group was refused (NaN/Inf value, the golden policy refuses them; or an
    unsupported ``ebias``).  A refused group produces no block.  Cleared by reset.
count_blocks, count_fallback, count_escapes, count_dropped, count_passes : Out(32)
    Blocks emitted, blocks coded with a fixed-rate (fallback) codebook, escape-coded values
    in emitted blocks, refused groups, and quantizer passes run (for throughput analysis).
busy : Out(1)
    The encoder engine is working on a block.

Architecture
------------
An input stage unpacks FP16 to exact integers ``X = x * 2**24`` (|X| < 2**40), accumulates
the group sum / min / max and writes a ping-pong group buffer, so the next group streams
in while the engine encodes the current one.  The engine replays the golden search with
exact integer arithmetic, one *pass* (one codebook, one step code, ``P`` values per cycle
through a pipelined quantizer) at a time:

* every codebook is tried in order; an entropy codebook does the golden binary search over
  step codes (``ebits + mbits`` passes), the pass at the final step (skipped when already
  run), then, if that block clipped values, the coarser candidates ``tc, tc+1, tc+2`` with
  ``tc`` the finest step keeping ``max|x|`` inside the escape range (or table span); a
  fixed-rate codebook searches ``t0`` (min-max span) without a pass and runs
  ``t0, t0-1, t0+1, t0+2``;
* the quantizer computes ``floor(2 v)`` and whether ``2 v`` is an integer, with
  ``v = x / unit - o * ups``, by an arithmetic shift and a multiply-by-reciprocal
  division that is exact for every input (proved in :func:`magic`), so every decision
  the golden model makes on float64 (nearest centroid, round-half-even offset and escape
  value, escape choice, clipping) is reproduced exactly;
* the squared error is accumulated EXACTLY (integer, in units of ``2**-48``); the golden
  model sums float64 squares, which agrees except for candidates whose distortions differ
  by less than float64 rounding (see the report / docs);
* a final pass with the chosen codebook and step appends every code to one of ``lanes``
  lane buffers; an assembly step places lanes (even ones forward, odd ones reversed) and
  the header into the block, which goes out on ``o_words`` while the next block starts.

Throughput is ``group`` values per ``(passes * (group / P + DEPTH + 4) + assembly)`` cycles.
Measured (``sparsefab.sim.tb_kv_compress.measure``, default geometry, trained codebooks, 16 real
MiniLM groups, no stalls): 26.0 passes/block; P=4: 1233.4 cycles/block = 0.1038 values/cycle;
P=8: 816.4 cycles/block = 0.1568 values/cycle.  ECP5-85F (``sparsefab fpga build --board
ulx3s-85f --design kv-compress``, seed 1): 28006 LUT4, 5983 FF, 43 MULT18X18D, 2 DP16KD,
Fmax 28.67 MHz, critical path = the input stage (FP16 unpack -> P-input sum / min / max ->
group accumulators in one cycle).  That stage has since been split in three registered steps
(commit after c458221); Fmax not re-measured yet.  Tables (codes, centroids) are
elaboration-time constants taken from a :class:`~sparsefab.compress.kv.Codebooks` object.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sparsefab.compress import huffman
from sparsefab.compress import kv as kvg
from sparsefab.compress.errors import SparsefabError

__all__ = ["KVCompressConfig", "KVCompressor", "magic", "build"]

FP16_MAX = 65504.0
XW = 42            # signed width of X = x * 2**24 for any finite FP16 x (|X| <= 2047 << 29)
LIMB = 17          # multiplier limb width (fits an ECP5 MULT18X18 as unsigned)


def magic(d: int, n: int) -> tuple[int, int]:
    """Reciprocal ``(m, k)`` with ``(a * m) >> k == a // d`` for every ``0 <= a < 2**n``.

    ``k = n + bit_length(d)``, ``m = ceil(2**k / d)``: with ``m * d = 2**k + e``,
    ``0 <= e < d``, ``a * m / 2**k = a / d + a * e / (d * 2**k)`` and ``a * e < 2**k``, so
    the excess is below ``1/d`` and never reaches the next integer.
    """
    k = n + int(d).bit_length()
    return -(-(1 << k) // d), k


def _bl(x: int) -> int:
    return int(abs(int(x))).bit_length()


def _shl(m, x, amt, width):
    """``(x << amt)[:width]`` as a log-depth mux barrel (each level a named comb signal, so the
    netlist stays small and elaboration fast)."""
    v = Signal(unsigned(width))
    m.d.comb += v.eq(x)
    for i in range(len(amt)):
        k = 1 << i
        nv = Signal(unsigned(width))
        if k >= width:
            m.d.comb += nv.eq(Mux(amt[i], 0, v))
        else:
            m.d.comb += nv.eq(Mux(amt[i], Cat(Const(0, k), v[:width - k]), v))
        v = nv
    return v


def _shr(m, x, amt):
    """``x >> amt`` (arithmetic for signed ``x``) as a log-depth mux barrel, same width as ``x``."""
    w = len(x)
    sgn = x.shape().signed
    v = Signal(x.shape())
    m.d.comb += v.eq(x)
    for i in range(len(amt)):
        k = 1 << i
        fill = v[w - 1] if sgn else Const(0, 1)
        shifted = Cat(v[k:], fill.replicate(k)) if k < w else fill.replicate(w)
        nv = Signal(x.shape())
        m.d.comb += nv.eq(Mux(amt[i], shifted, v))
        v = nv
    return v


@dataclass(frozen=True)
class KVCompressConfig:
    """Frozen configuration of a :class:`KVCompressor` (also the JSON sidecar's ``config``)."""

    group: int
    block_bytes: int
    lanes: int
    ebits: int
    mbits: int
    obits: int
    k: int
    s: int
    max_len: int
    esc_bits: int
    unit_per_step: int
    values_per_cycle: int
    bus_bits: int
    ebias_min: int
    ebias_max: int
    codebooks_crc32: int
    format_version: int = kvg.VERSION

    @property
    def nbits(self) -> int:
        return 8 * self.block_bytes

    @property
    def words_per_block(self) -> int:
        return -(-self.nbits // self.bus_bits)

    @property
    def beats_per_group(self) -> int:
        return self.group // self.values_per_cycle


class KVCompressor(wiring.Component):
    """Hardware KV-block compressor, bit-exact with :func:`sparsefab.compress.kv.encode_groups`.

    Parameters
    ----------
    codebooks : sparsefab.compress.kv.Codebooks
        The K codebooks (elaboration-time constants); at least one fixed-rate codebook must
        fit the block (the golden fallback rule).
    params : sparsefab.compress.kv.KVParams
        Block geometry (``axis`` is irrelevant here: groups arrive already formed).
    values_per_cycle : int
        ``P``, values per input beat and per quantizer cycle; a multiple of ``lanes``
        dividing ``group``; 1..16.
    bus_bits : int
        Output word width ``W``: 8, 16, 32, 64 or 128.

    Ports: see the module docstring.  Latency: a group's block starts leaving
    ``cycles_per_block`` (data dependent, reported by the bench) after its last beat.
    """

    DEPTH = 11  # quantizer pipeline stages from read address to accumulated result

    def __init__(self, *, codebooks: kvg.Codebooks, params: kvg.KVParams | None = None,
                 values_per_cycle: int = 4, bus_bits: int = 64):
        self._MustUse__silence = True
        params = params or kvg.KVParams()
        if not isinstance(params, kvg.KVParams):
            raise SparsefabError(f"KVCompressor: params={params!r}, expected a KVParams")
        if not isinstance(codebooks, kvg.Codebooks):
            raise SparsefabError(f"KVCompressor: codebooks={codebooks!r}, expected a Codebooks")
        P = values_per_cycle
        if not isinstance(P, int) or isinstance(P, bool) or not 1 <= P <= 16:
            raise SparsefabError(f"KVCompressor: values_per_cycle={P!r}, expected an integer in [1, 16]")
        if P % params.lanes or params.group % P:
            raise SparsefabError(f"KVCompressor: values_per_cycle={P} must be a multiple of lanes="
                                 f"{params.lanes} and divide group={params.group}")
        if bus_bits not in (8, 16, 32, 64, 128):
            raise SparsefabError(f"KVCompressor: bus_bits={bus_bits!r}, expected 8, 16, 32, 64 or 128")
        cb = codebooks
        hdr = params.header_bits(cb.k)
        if hdr >= params.nbits:
            raise SparsefabError(f"KVCompressor: a {hdr}-bit block header fills {params.block_bytes}-byte blocks")
        if not any(cb.fixed_rate(i) and hdr + params.group * cb.fixed_rate(i) <= params.nbits
                   for i in range(cb.k)):
            raise SparsefabError(f"KVCompressor: no fixed-rate fallback codebook fits {params.group} values in "
                                 f"{params.block_bytes} bytes after a {hdr}-bit header")
        ebias_max = kvg.choose_ebias(FP16_MAX, params, cb)
        ebias_min = -24   # step units are whole multiples of 2**-24 (exact integer error)
        if ebias_max < ebias_min or not -128 <= ebias_max <= 127:
            raise SparsefabError(f"KVCompressor: ebias range [{ebias_min}, {ebias_max}] unsupported "
                                 f"(ebits={params.ebits}, mbits={params.mbits})")
        self._MustUse__silence = False
        self.params, self.codebooks = params, cb
        self.config = KVCompressConfig(
            group=params.group, block_bytes=params.block_bytes, lanes=params.lanes, ebits=params.ebits,
            mbits=params.mbits, obits=params.obits, k=cb.k, s=cb.s, max_len=cb.max_len,
            esc_bits=cb.esc_bits, unit_per_step=cb.unit_per_step, values_per_cycle=P, bus_bits=bus_bits,
            ebias_min=ebias_min, ebias_max=ebias_max, codebooks_crc32=zlib.crc32(cb.to_bytes()))
        self._derive()
        super().__init__({
            "i_values": In(stream.Signature(data.ArrayLayout(unsigned(16), P))),
            "o_words": Out(stream.Signature(data.StructLayout({"data": unsigned(bus_bits), "last": 1}))),
            "ebias": In(signed(8)),
            "error": Out(1),
            "busy": Out(1),
            "count_blocks": Out(32),
            "count_fallback": Out(32),
            "count_escapes": Out(32),
            "count_dropped": Out(32),
            "count_passes": Out(32),
        })

    # ------------------------------------------------------------------ constants

    def _derive(self):
        p, cb, c = self.params, self.codebooks, self.config
        self.hdr = p.header_bits(cb.k)
        self.T = 1 << (p.ebits + p.mbits)
        self.TB = p.ebits + p.mbits
        self.D = [(1 << p.mbits) + f for f in range(1 << p.mbits)]
        self.smax = (1 << p.ebits) - 1 + c.ebias_max + 24
        ups = cb.unit_per_step
        self.esc_lim = (1 << (cb.esc_bits - 1)) if cb.esc_bits else 1
        self.o_lim = (1 << (p.obits - 1)) if p.obits else 0
        maxcent = int(np.abs(cb.centroids).max())
        # Saturation of 2v: beyond every threshold the decisions do not change.
        tb = 2 * (maxcent + ups + self.esc_lim + 2)
        ou = 2 * self.o_lim * ups
        self.nsat = tb + ou + 4
        dmax = self.D[-1]
        self.ysat = self.nsat * dmax + dmax
        self.yn = _bl(self.ysat)
        self.mag = [magic(d, self.yn) for d in self.D]
        self.nw = _bl(self.nsat + ou) + 2
        # Offset: o = clip(rint(S / (G * ups * D * 2**s))) from the exact sum S of X.
        self.sw = XW + _bl(p.group) + 1
        self.DO = [p.group * ups * d for d in self.D]
        self.yosat = (self.o_lim + 2) * 2 * self.DO[-1]
        self.yon = _bl(self.yosat)
        self.mago = [magic(d, self.yon) for d in self.DO]
        self.kmo = max(k for _, k in self.mago)
        self.mago = [(-(-(1 << self.kmo) // d), self.kmo) for d in self.DO]
        # Exact error E = X - (rec + o*ups) * D << s: bound (see module docstring).
        xmax = 2047 << 29
        umax = dmax << self.smax
        self.ew = _bl(4 * xmax + umax * (2 * ups + maxcent + 1)) + 1
        self.rw = _bl(max(maxcent, self.esc_lim) + self.o_lim * ups) + 2
        self.dw = 2 * (self.ew - 1) + _bl(p.group) + 1
        # Per-codebook tables.
        self.fixed = [cb.fixed_rate(i) for i in range(cb.k)]
        self.has_esc = [cb.has_esc(i) for i in range(cb.k)]
        nm = max(len(cb.table_symbols(i)) for i in range(cb.k))
        self.nm = nm
        big = self.nsat * 4
        self.mids2, self.cs, self.ss = [], [], []
        for i in range(cb.k):
            syms = cb.table_symbols(i)
            cents = cb.centroids[i, syms]
            order = np.argsort(cents, kind="stable")
            cs, ss = [int(v) for v in cents[order]], [int(v) for v in syms[order]]
            mids = [cs[j] + cs[j + 1] for j in range(len(cs) - 1)]
            self.mids2.append(mids + [big] * (nm - 1 - len(mids)))
            self.cs.append(cs + [cs[-1]] * (nm - len(cs)))
            self.ss.append(ss + [ss[-1]] * (nm - len(ss)))
        self.span = [0] * cb.k
        for i in range(cb.k):
            if self.fixed[i]:
                cs = cb.centroids[i, cb.table_symbols(i)]
                span = float(cs.max() - cs.min())
                if span < 1.0 or span != int(span):
                    raise SparsefabError(f"KVCompressor: fixed-rate codebook {i} spans {span} units, expected >= 1")
                self.span[i] = int(span)
        self.cw = _bl(maxcent) + 2
        ml = cb.max_len
        self.rcode = []
        for i in range(cb.k):
            codes = huffman.canonical_codes(cb.lengths[i])
            row = []
            for s in range(cb.s):
                ln = int(cb.lengths[i, s])
                row.append(sum(((int(codes[s]) >> (ln - 1 - j)) & 1) << j for j in range(ln)))
            self.rcode.append(row)
        self.symw = ml + cb.esc_bits            # widest coded symbol in bits
        self.sbw = _bl(self.symw)
        self.ubw = _bl(p.nbits) + 1

    # ------------------------------------------------------------------ elaboration

    def elaborate(self, platform):
        m = Module()
        p, cb, cfg = self.params, self.codebooks, self.config
        P, G, L, K = cfg.values_per_cycle, p.group, p.lanes, cb.k
        NB = p.nbits
        BEATS = G // P
        ups = cb.unit_per_step

        # ---------------------------------------------------------------- input stage
        mem = Memory(shape=unsigned(16 * P), depth=2 << max(BEATS - 1, 0).bit_length(), init=[])
        m.submodules.mem = mem
        wr = mem.write_port()
        rd = mem.read_port(domain="sync")

        def unpack(raw):
            sign, exp, man = raw[15], raw[10:15], raw[0:10]
            norm = _shl(m, Cat(man, Const(1, 1)), (exp - 1).as_unsigned()[:5], XW - 1)
            mag = Mux(exp == 0, man, norm)[:XW - 1]
            return Mux(sign, -mag, mag), exp == 31

        full = Signal(2)
        wb = Signal()                     # bank being written
        beat = Signal(range(BEATS))
        acc_s = Signal(signed(self.sw))
        acc_min = Signal(signed(XW))
        acc_max = Signal(signed(XW))
        acc_bad = Signal()
        bank_s = Array(Signal(signed(self.sw), name=f"bank_s{b}") for b in range(2))
        bank_min = Array(Signal(signed(XW), name=f"bank_min{b}") for b in range(2))
        bank_max = Array(Signal(signed(XW), name=f"bank_max{b}") for b in range(2))
        ebias_ok = (self.ebias >= cfg.ebias_min) & (self.ebias <= cfg.ebias_max)

        xs, bads = zip(*(unpack(self.i_values.payload[q]) for q in range(P)), strict=True)
        # The group statistics are pipelined (unpack -> register -> P-input sum/min/max -> register
        # -> accumulate); ``full`` is set at the last beat, ``statv`` when its statistics are ready.
        hs = self.i_values.valid & self.i_values.ready
        first = beat == 0
        new_bad = Mux(first, 0, acc_bad) | Cat(*bads).any()
        d1v, d1f, d1l, d1b = Signal(), Signal(), Signal(), Signal()
        xr = [Signal(signed(XW), name=f"xin{q}") for q in range(P)]
        m.d.sync += [d1v.eq(hs), d1f.eq(first), d1b.eq(wb), d1l.eq(hs & (beat == BEATS - 1) & ~new_bad & ebias_ok)]
        with m.If(hs):
            m.d.sync += [xr[q].eq(xs[q]) for q in range(P)]

        def tree(vals, pick):
            while len(vals) > 1:
                nxt = [pick(vals[i], vals[i + 1]) for i in range(0, len(vals) - 1, 2)]
                vals = nxt + ([vals[-1]] if len(vals) % 2 else [])
            return vals[0]

        bsum = tree(list(xr), lambda a, b: a + b)
        d2v, d2f, d2l, d2b = Signal(), Signal(), Signal(), Signal()
        s2sum = Signal(signed(XW + _bl(P)))
        s2min, s2max = Signal(signed(XW)), Signal(signed(XW))
        m.d.sync += [d2v.eq(d1v), d2f.eq(d1f), d2l.eq(d1l), d2b.eq(d1b), s2sum.eq(bsum),
                     s2min.eq(tree(list(xr), lambda a, b: Mux(a < b, a, b))),
                     s2max.eq(tree(list(xr), lambda a, b: Mux(a > b, a, b)))]
        new_s = Mux(d2f, 0, acc_s) + s2sum
        new_min = Mux(d2f | (s2min < acc_min), s2min, acc_min)
        new_max = Mux(d2f | (s2max > acc_max), s2max, acc_max)
        statv = Signal(2)
        set_statv = Signal(2)
        with m.If(d2v):
            m.d.sync += [acc_s.eq(new_s), acc_min.eq(new_min), acc_max.eq(new_max)]
            with m.If(d2l):
                m.d.comb += set_statv.bit_select(d2b, 1).eq(1)
                m.d.sync += [bank_s[d2b].eq(new_s), bank_min[d2b].eq(new_min), bank_max[d2b].eq(new_max)]

        m.d.comb += [
            self.i_values.ready.eq(~full.bit_select(wb, 1)),
            wr.addr.eq(Cat(beat, wb) if BEATS > 1 else wb),
            wr.data.eq(self.i_values.payload.as_value()),
            wr.en.eq(hs),
        ]
        # ebias is sampled per group; the engine latches it when it starts that group.
        bank_ebias = Array(Signal(signed(8), name=f"bank_ebias{b}") for b in range(2))
        set_full = Signal(2)
        clr_full = Signal(2)
        with m.If(hs):
            m.d.sync += acc_bad.eq(new_bad)
            with m.If(beat == BEATS - 1):
                m.d.sync += beat.eq(0)
                with m.If(new_bad | ~ebias_ok):
                    m.d.sync += [self.error.eq(1), self.count_dropped.eq(self.count_dropped + 1)]
                with m.Else():
                    m.d.comb += set_full.bit_select(wb, 1).eq(1)
                    m.d.sync += [bank_ebias[wb].eq(self.ebias), wb.eq(~wb)]
            with m.Else():
                m.d.sync += beat.eq(beat + 1)
        m.d.sync += [full.eq((full | set_full) & ~clr_full), statv.eq((statv | set_statv) & ~clr_full)]

        # ---------------------------------------------------------------- engine registers
        rb = Signal()                      # bank being encoded
        S = Signal(signed(self.sw))
        R = Signal(unsigned(XW + 1))
        eb = Signal(signed(8))
        cbi = Signal(range(K))             # codebook of the current pass
        t = Signal(range(self.T))          # step code of the current pass
        pack = Signal()                    # current pass packs the chosen codebook
        e_t = t >> p.mbits
        f_t = t[:p.mbits] if p.mbits else Const(0, 1)
        s_t = Signal(range(self.smax + 2))
        m.d.comb += s_t.eq((e_t + eb + 24).as_unsigned())
        Dsig = Array(Const(d, 5) for d in self.D)[f_t]

        # offset of the pass: computed in PASS_SETUP (3 cycles)
        o_reg = Signal(signed(max(p.obits, 1) + 1))
        oups2 = Signal(signed(self.nw))
        oups = Signal(signed(self.rw))
        yo_abs = Signal(unsigned(self.yon))
        yo_neg = Signal()
        yo_sticky = Signal()
        qo = Signal(unsigned(self.yon + 1))
        s2 = Signal(signed(self.sw + 1))
        m.d.comb += s2.eq(S << 1)
        yo_c = _shr(m, s2, s_t)
        def thermo(w):  # bit i set iff i < s: the bits an arithmetic shift by s drops
            return Cat(*[s_t > i for i in range(w)])

        yo_st = (s2 & thermo(self.sw + 1)).any()
        yo_sat = (yo_c > self.yosat) | (yo_c < -self.yosat)

        # ---------------------------------------------------------------- quantizer pipeline
        issue = Signal()
        raddr = Signal(range(BEATS))
        m.d.comb += rd.addr.eq(Cat(raddr, rb) if BEATS > 1 else rb)
        v1 = Signal()
        m.d.sync += v1.eq(issue)
        n2w, ew = self.nw, self.ew
        mag_m = Array(Const(mm, mm.bit_length()) for mm, _ in self.mag)
        kshift = self.mag[0][1]

        # stage A: unpack
        vA = Signal()
        xA = [Signal(signed(XW), name=f"xA{q}") for q in range(P)]
        m.d.sync += vA.eq(v1)
        for q in range(P):
            m.d.sync += xA[q].eq(unpack(rd.data[16 * q:16 * q + 16])[0])
        # stage B: Y = floor(2X / 2**s), sticky, saturation
        vB = Signal()
        m.d.sync += vB.eq(vA)
        xB = [Signal(signed(XW), name=f"xB{q}") for q in range(P)]
        yB = [Signal(unsigned(self.yn), name=f"yB{q}") for q in range(P)]
        ynB = [Signal(name=f"ynB{q}") for q in range(P)]
        stB = [Signal(name=f"stB{q}") for q in range(P)]
        for q in range(P):
            x2 = Signal(signed(XW + 1), name=f"x2_{q}")
            m.d.comb += x2.eq(xA[q] << 1)
            y = _shr(m, x2, s_t)
            st = (x2 & thermo(XW + 1)).any()
            sat = (y > self.ysat) | (y < -self.ysat)
            ya = Mux(y < 0, -y, y)
            m.d.sync += [xB[q].eq(xA[q]), ynB[q].eq(y < 0), stB[q].eq(st | sat),
                         yB[q].eq(Mux(sat, self.ysat, ya))]
        # stage C: q = (|Y| * m) >> k
        vC = Signal()
        m.d.sync += vC.eq(vB)
        xC = [Signal(signed(XW), name=f"xC{q}") for q in range(P)]
        yC = [Signal(unsigned(self.yn), name=f"yC{q}") for q in range(P)]
        ynC = [Signal(name=f"ynC{q}") for q in range(P)]
        stC = [Signal(name=f"stC{q}") for q in range(P)]
        qC = [Signal(unsigned(self.yn + 1), name=f"qC{q}") for q in range(P)]
        mf = Signal(unsigned(max(mm.bit_length() for mm, _ in self.mag)))
        m.d.comb += mf.eq(mag_m[f_t])
        for q in range(P):
            m.d.sync += [xC[q].eq(xB[q]), yC[q].eq(yB[q]), ynC[q].eq(ynB[q]), stC[q].eq(stB[q]),
                         qC[q].eq((yB[q] * mf) >> kshift)]
        # stage D: floor quotient, exactness, 2v = n2 - 2*o*ups
        vD = Signal()
        m.d.sync += vD.eq(vC)
        xD = [Signal(signed(XW), name=f"xD{q}") for q in range(P)]
        nD = [Signal(signed(n2w), name=f"nD{q}") for q in range(P)]
        exD = [Signal(name=f"exD{q}") for q in range(P)]
        for q in range(P):
            r = (yC[q] - qC[q] * Dsig)[:5]
            rz = r == 0
            qs = Signal(signed(self.yn + 2), name=f"qs{q}")
            m.d.comb += qs.eq(Mux(ynC[q], -(qC[q] + ~rz), qC[q]))
            m.d.sync += [xD[q].eq(xC[q]), exD[q].eq(rz & ~stC[q]), nD[q].eq(qs - oups2)]

        # stage E: nearest centroid (j = #mids < v), rint for the escape value
        vE = Signal()
        m.d.sync += vE.eq(vD)
        cbE = Signal(range(K))
        xE = [Signal(signed(XW), name=f"xE{q}") for q in range(P)]
        nE = [Signal(signed(n2w), name=f"nE{q}") for q in range(P)]
        exE = [Signal(name=f"exE{q}") for q in range(P)]
        cE = [Signal(signed(self.cw), name=f"cE{q}") for q in range(P)]
        symE = [Signal(range(cb.s), name=f"symE{q}") for q in range(P)]
        dE = [Signal(signed(max(cb.esc_bits, 1) + 1), name=f"dE{q}") for q in range(P)]
        nm = self.nm
        midw = _bl(max(abs(v) for row in self.mids2 for v in row)) + 2
        mids = [Array(Const(self.mids2[i][j] if j < nm - 1 else 0, signed(midw)) for i in range(K))[cbi]
                for j in range(nm - 1)]
        cs_tab = Array(Const(v, signed(self.cw)) for i in range(K) for v in self.cs[i])
        ss_tab = Array(Const(v, range(cb.s)) for i in range(K) for v in self.ss[i])

        def gt(n, ex, h):
            return (n > h) | ((n == h) & ~ex)

        for q in range(P):
            j = sum(gt(nD[q], exD[q], mids[k]) for k in range(nm - 1)) if nm > 1 else Const(0, 1)
            jj = Signal(range(nm + 1), name=f"j{q}")
            m.d.comb += jj.eq(j)
            idx = cbi * nm + jj
            n = nD[q]
            half = n >> 1          # floor(2v / 2)
            odd = n[0]
            up = odd & ((~exD[q]) | ((half + 1)[0] == 0))
            rnt = Mux(up, half + 1, half)
            lim = self.esc_lim
            dcl = Mux(rnt < -lim, -lim, Mux(rnt > lim - 1, lim - 1, rnt))
            m.d.sync += [xE[q].eq(xD[q]), nE[q].eq(nD[q]), exE[q].eq(exD[q]), cE[q].eq(cs_tab[idx]),
                         symE[q].eq(ss_tab[idx]), dE[q].eq(dcl)]
        m.d.sync += cbE.eq(cbi)

        # stage F: escape decision, reconstruction position, bits, clipping
        vF = Signal()
        m.d.sync += vF.eq(vE)
        xF = [Signal(signed(XW), name=f"xF{q}") for q in range(P)]
        recF = [Signal(signed(self.rw), name=f"recF{q}") for q in range(P)]
        escF = [Signal(name=f"escF{q}") for q in range(P)]
        symF = [Signal(range(cb.s), name=f"symF{q}") for q in range(P)]
        dF = [Signal(signed(max(cb.esc_bits, 1) + 1), name=f"dF{q}") for q in range(P)]
        bitsF = [Signal(range(self.symw + 1), name=f"bitsF{q}") for q in range(P)]
        clipF = [Signal(name=f"clipF{q}") for q in range(P)]
        len_tab = Array(Const(int(cb.lengths[i, s]), range(cb.max_len + 1)) for i in range(K) for s in range(cb.s))
        hesc = Array(Const(int(h), 1) for h in self.has_esc)[cbE]
        esc_sym = cb.s - 1
        for q in range(P):
            n, ex, c, d = nE[q], exE[q], cE[q], dE[q]
            errbig = gt(n, ex, 2 * c + 2 * ups) | (n < 2 * c - 2 * ups)
            closer = Mux(d > c, gt(n, ex, c + d), Mux(d < c, n < c + d, 0))
            esc = Signal(name=f"esc{q}")
            m.d.comb += esc.eq(hesc & errbig & closer if cb.esc_bits else 0)
            rec = Mux(esc, d, c)
            clipped = gt(n, ex, 2 * rec + 2 * ups) | (n < 2 * rec - 2 * ups)
            ln = Mux(esc, len_tab[cbE * cb.s + esc_sym] + cb.esc_bits, len_tab[cbE * cb.s + symE[q]])
            m.d.sync += [xF[q].eq(xE[q]), recF[q].eq(rec), escF[q].eq(esc), symF[q].eq(symE[q]), dF[q].eq(d),
                         bitsF[q].eq(ln), clipF[q].eq(clipped)]

        # stage G: exact error E = X - (rec + o*ups) * D << s
        vG = Signal()
        m.d.sync += vG.eq(vF)
        eG = [Signal(unsigned(ew - 1), name=f"eG{q}") for q in range(P)]
        bitsG = Signal(range(P * self.symw + 1))
        clipG = Signal(range(P + 1))
        escG = Signal(range(P + 1))
        for q in range(P):
            rt = Signal(signed(self.rw + 1), name=f"rt{q}")
            m.d.comb += rt.eq(recF[q] + oups)
            rd_ = Signal(signed(self.rw + 6), name=f"rdm{q}")
            m.d.comb += rd_.eq(rt * Dsig)
            ru = Signal(signed(ew + 1), name=f"ru{q}")
            rdx = Signal(signed(ew + 1), name=f"rdx{q}")   # sign-extended before the shift
            m.d.comb += [rdx.eq(rd_), ru.eq(_shl(m, rdx.as_unsigned(), s_t, ew + 1).as_signed())]
            e = Signal(signed(ew + 1), name=f"e{q}")
            m.d.comb += e.eq(xF[q] - ru)
            m.d.sync += eG[q].eq(Mux(e < 0, -e, e))
        m.d.sync += [bitsG.eq(sum(bitsF)), clipG.eq(sum(clipF)), escG.eq(sum(escF))]

        # stage H: limb products of E^2; stage I: their sum
        nl = -(-(ew - 1) // LIMB)
        vH, vI = Signal(), Signal()
        m.d.sync += [vH.eq(vG), vI.eq(vH)]
        prods = []
        for q in range(P):
            limbs = [eG[q][LIMB * a: LIMB * (a + 1)] for a in range(nl)]
            for a in range(nl):
                for b in range(a, nl):
                    pr = Signal(unsigned(2 * LIMB), name=f"pp{q}_{a}_{b}")
                    m.d.sync += pr.eq(limbs[a] * limbs[b])
                    prods.append((q, a, b, pr))
        bitsH, clipH, escH = Signal.like(bitsG), Signal.like(clipG), Signal.like(escG)
        bitsI, clipI, escI = Signal.like(bitsG), Signal.like(clipG), Signal.like(escG)
        m.d.sync += [bitsH.eq(bitsG), clipH.eq(clipG), escH.eq(escG),
                     bitsI.eq(bitsH), clipI.eq(clipH), escI.eq(escH)]
        sqI = Signal(unsigned(2 * (ew - 1) + _bl(P)))
        terms = [(pr << (LIMB * (a + b) + (1 if a != b else 0))) for (_, a, b, pr) in prods]
        m.d.sync += sqI.eq(sum(terms))

        # stage J: accumulate the pass results
        res_bits = Signal(range(G * self.symw + self.hdr + 1))
        res_clip = Signal(range(G + 1))
        res_dist = Signal(unsigned(self.dw))
        res_esc = Signal(range(G + 1))
        clr_acc = Signal()
        with m.If(clr_acc):
            m.d.sync += [res_bits.eq(self.hdr), res_clip.eq(0), res_dist.eq(0), res_esc.eq(0)]
        with m.Elif(vI):
            m.d.sync += [res_bits.eq(res_bits + bitsI), res_clip.eq(res_clip + clipI),
                         res_dist.eq(res_dist + sqI), res_esc.eq(res_esc + escI)]

        # ---------------------------------------------------------------- lane buffers (pack pass)
        rcode_tab = Array(Const(v, unsigned(max(cb.max_len, 1))) for i in range(K) for v in self.rcode[i])
        lanebuf = [Signal(unsigned(NB), name=f"lane{i}") for i in range(L)]
        used = [Signal(range(NB + self.symw * P + 1), name=f"used{i}") for i in range(L)]
        per = P // L
        wG = [Signal(unsigned(self.symw), name=f"wG{q}") for q in range(P)]
        totG = [Signal(range(self.symw + 1), name=f"totG{q}") for q in range(P)]
        for q in range(P):
            clen = Signal(range(cb.max_len + 1), name=f"clen{q}")
            sy = Mux(escF[q], esc_sym, symF[q])
            m.d.comb += clen.eq(len_tab[cbi * cb.s + sy])
            draw = dF[q].as_unsigned()[:cb.esc_bits] if cb.esc_bits else Const(0, 1)
            w = rcode_tab[cbi * cb.s + sy] | Mux(escF[q], _shl(m, draw, clen, self.symw), 0)
            m.d.sync += [wG[q].eq(w), totG[q].eq(bitsF[q])]
        clr_lanes = Signal()
        with m.If(clr_lanes):
            m.d.sync += [b.eq(0) for b in lanebuf] + [u.eq(0) for u in used]
        with m.Elif(vG & pack):
            for lane in range(L):
                qs_ = [lane + L * a for a in range(per)]
                wc, tc = Const(0, 1), Const(0, 1)
                for q in qs_:
                    wc = wc | _shl(m, wG[q], tc, self.symw * per)
                    tc = tc + totG[q]
                wcs = Signal(unsigned(self.symw * per), name=f"wc{lane}")
                tcs = Signal(range(self.symw * per + 1), name=f"tc{lane}")
                m.d.comb += [wcs.eq(wc), tcs.eq(tc)]
                top = Signal(unsigned(NB), name=f"top{lane}")
                W0 = self.symw * per
                if W0 <= NB:
                    m.d.comb += top.eq(Cat(Const(0, NB - W0), _shl(m, wcs, (W0 - tcs).as_unsigned()[:len(tcs)], W0)))
                else:  # pragma: no cover - block smaller than a symbol group
                    m.d.comb += top.eq(_shr(m, Cat(Const(0, NB), wcs), tcs)[:NB])
                m.d.sync += [lanebuf[lane].eq(_shr(m, lanebuf[lane], tcs) | top), used[lane].eq(used[lane] + tcs)]

        # ---------------------------------------------------------------- engine FSM
        lo = Signal(range(self.T + 1))
        hi = Signal(range(self.T))
        k = Signal(range(max(self.TB + 2, 6)))
        phase = Signal(range(6))   # 0 BIN, 1 FINAL, 2 ESC, 3 FIX0, 4 FIXC, 5 PACK
        BIN, FINAL, ESCP, FIX0, FIXC, PACKP = range(6)
        best_bits = Signal.like(res_bits)
        best_dist = Signal.like(res_dist)
        best_clip = Signal.like(res_clip)
        best_t = Signal.like(t)
        best_ok = Signal()       # best holds the result of step best_t of this codebook
        ovr_dist = Signal.like(res_dist)
        ovr_inf = Signal()
        ovr_t = Signal.like(t)
        ovr_sel = Signal(range(K))
        t0 = Signal(range(self.T + 1))
        tb_bit = Signal(range(self.TB + 2))
        # step searches: #{t : unit_t * mult < rhs}; fixed-rate codebooks: mult = span, rhs = max - min;
        # entropy codebooks (coarser retry): mult = max(lim, 1), rhs = max |x|
        mults = [self.span[i] if self.fixed[i] else max(
            ((1 << (cb.esc_bits - 1)) - 1) if self.has_esc[i] else int(np.abs(cb.centroids[i]).max()), 1)
            for i in range(K)]
        mw = _bl(max(mults) * self.D[-1]) + 1
        lhs = Signal(unsigned(mw + self.smax + 2))
        span_tab = Array(Const(mults[i] * d, mw) for i in range(K) for d in self.D)
        fixed_c = Array(Const(1 if f else 0, 1) for f in self.fixed)
        AM = Signal(unsigned(XW + 1))
        rhs = Mux(fixed_c[cbi], R, AM)
        cnt = Signal(range(self.DEPTH + 8))
        fits = res_bits <= NB
        # assembly
        block = Signal(unsigned(NB))
        bnd = [Signal(range(NB + 1), name=f"bnd{i}") for i in range(max(L // 2, 1) + 1)]
        alane = Signal(range(L + 1))
        # output register
        ob = Signal(unsigned(cfg.words_per_block * cfg.bus_bits))
        ofull = Signal()
        oword = Signal(range(cfg.words_per_block))

        def sgn(v):
            return Cat(v, Const(0, 1)).as_signed()

        def clip_t(v):
            return Mux(v < 0, 0, Mux(v > self.T - 1, self.T - 1, v))

        m_idle = Signal()
        dbg_decide = Signal()
        self._debug = {"decide": dbg_decide, "cb": cbi, "t": t, "bits": res_bits, "dist": res_dist,
                       "clip": res_clip, "o": o_reg, "phase": phase}
        m.d.comb += self.busy.eq(~m_idle)
        with m.FSM(name="eng"):
            with m.State("IDLE"):
                m.d.comb += m_idle.eq(1)
                with m.If(full.bit_select(rb, 1) & statv.bit_select(rb, 1)):
                    m.d.sync += [S.eq(bank_s[rb]), R.eq((bank_max[rb] - bank_min[rb]).as_unsigned()),
                                 AM.eq(Mux(-bank_min[rb] > bank_max[rb], -bank_min[rb], bank_max[rb]).as_unsigned()),
                                 eb.eq(bank_ebias[rb]), cbi.eq(0), pack.eq(0), ovr_inf.eq(1)]
                    m.next = "CB_START"
            with m.State("CB_START"):
                m.d.sync += [best_ok.eq(0), k.eq(0)]
                with m.If(fixed_c[cbi]):
                    m.d.sync += [t0.eq(0), tb_bit.eq(self.TB)]
                    m.next = "T0_A"
                with m.Else():
                    m.d.sync += [lo.eq(0), hi.eq(self.T - 1), phase.eq(BIN), t.eq((self.T - 1) >> 1)]
                    m.next = "SETUP0"
            # t0 = #{t : unit_t * span < R} by binary search on the monotone condition
            cand = t0 + (Const(1, self.TB + 2) << tb_bit)
            tc_ = (cand - 1)[:self.TB]
            with m.State("T0_A"):
                m.d.sync += lhs.eq(_shl(m, span_tab[cbi * len(self.D) + (tc_[:p.mbits] if p.mbits else 0)],
                                       ((tc_ >> p.mbits) + eb + 24).as_unsigned()[:_bl(self.smax) + 1], len(lhs)))
                m.next = "T0_B"
            with m.State("T0_B"):
                with m.If((cand <= self.T) & (lhs < rhs)):
                    m.d.sync += t0.eq(cand)
                with m.If(tb_bit == 0):
                    m.next = "T0_DONE"
                with m.Else():
                    m.d.sync += tb_bit.eq(tb_bit - 1)
                    m.next = "T0_A"
            with m.State("T0_DONE"):
                tcl = Mux(t0 > self.T - 1, self.T - 1, t0)
                with m.If(fixed_c[cbi]):
                    m.d.sync += [t0.eq(tcl), phase.eq(FIX0), t.eq(tcl)]
                with m.Else():  # coarser retry: tc = clip(count, hi, T-1); tries tc, tc+1, tc+2
                    tcx = Mux(tcl < hi, hi, tcl)
                    m.d.sync += [t0.eq(tcx), phase.eq(ESCP), k.eq(0), t.eq(tcx)]
                m.next = "SETUP0"
            with m.State("SETUP0"):
                m.d.sync += [yo_neg.eq(yo_c < 0), yo_sticky.eq(yo_st | yo_sat),
                             yo_abs.eq(Mux(yo_sat, self.yosat, Mux(yo_c < 0, -yo_c, yo_c))),
                             self.count_passes.eq(self.count_passes + 1)]
                m.next = "SETUP1"
            with m.State("SETUP1"):
                mo = Array(Const(mm, mm.bit_length()) for mm, _ in self.mago)[f_t]
                m.d.sync += qo.eq((yo_abs * mo) >> self.kmo)
                m.next = "SETUP2"
            with m.State("SETUP2"):
                DOs = Array(Const(d, _bl(self.DO[-1])) for d in self.DO)[f_t]
                ro = yo_abs - qo * DOs
                rz = ro == 0
                n = Signal(signed(self.yon + 2))
                m.d.comb += n.eq(Mux(yo_neg, -(qo + ~rz), qo))
                ex = rz & ~yo_sticky
                half = n >> 1
                up = n[0] & (~ex | ((half + 1)[0] == 0))
                rnt = Mux(up, half + 1, half)
                if p.obits:
                    ov = Mux(rnt < -self.o_lim, -self.o_lim, Mux(rnt > self.o_lim - 1, self.o_lim - 1, rnt))
                else:
                    ov = Const(0, 1)
                m.d.sync += [o_reg.eq(ov), oups2.eq(ov * (2 * ups)), oups.eq(ov * ups), raddr.eq(0)]
                m.d.comb += clr_acc.eq(1)
                with m.If(pack):
                    m.d.comb += clr_lanes.eq(1)
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += issue.eq(1)
                m.d.sync += [raddr.eq(raddr + 1), cnt.eq(0)]
                with m.If(raddr == BEATS - 1):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(pack):
                    m.d.comb += clr_full.bit_select(rb, 1).eq(cnt == 0)
                with m.If(cnt == self.DEPTH - 2):
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.comb += dbg_decide.eq(1)
                take_res = [best_bits.eq(res_bits), best_dist.eq(res_dist), best_clip.eq(res_clip),
                            best_t.eq(t), best_ok.eq(1)]
                with m.Switch(phase):
                    with m.Case(BIN):
                        nlo = Mux(fits, lo, t + 1)
                        nhi = Mux(fits, t, hi)
                        m.d.sync += [lo.eq(nlo), hi.eq(nhi), k.eq(k + 1)]
                        with m.If(t == nhi):
                            m.d.sync += take_res
                        with m.If(k + 1 < self.TB):
                            m.d.sync += t.eq((nlo + nhi) >> 1)
                            m.next = "SETUP0"
                        with m.Elif((t == nhi) | (best_ok & (best_t == nhi))):
                            m.d.sync += phase.eq(FINAL)
                            m.next = "AFTER_FINAL"
                        with m.Else():
                            m.d.sync += [phase.eq(FINAL), t.eq(nhi)]
                            m.next = "SETUP0"
                    with m.Case(FINAL):
                        m.d.sync += take_res
                        m.next = "AFTER_FINAL"
                    with m.Case(ESCP):
                        with m.If(fits & (res_dist < best_dist)):
                            m.d.sync += take_res
                        m.d.sync += k.eq(k + 1)
                        with m.If(k == 2):
                            m.next = "CB_DONE"
                        with m.Else():
                            m.d.sync += t.eq(clip_t(sgn(t0) + k + 1))
                            m.next = "SETUP0"
                    with m.Case(FIX0):
                        m.d.sync += take_res + [phase.eq(FIXC), k.eq(0), t.eq(clip_t(sgn(t0) - 1))]
                        m.next = "SETUP0"
                    with m.Case(FIXC):
                        with m.If(res_dist < best_dist):
                            m.d.sync += take_res
                        m.d.sync += k.eq(k + 1)
                        with m.If(k == 2):
                            m.next = "CB_DONE"
                        with m.Else():
                            m.d.sync += t.eq(clip_t(sgn(t0) + Mux(k == 0, 1, 2)))
                            m.next = "SETUP0"
                    with m.Case(PACKP):
                        m.d.sync += [self.count_escapes.eq(self.count_escapes + res_esc), alane.eq(0),
                                     bnd[0].eq(self.hdr), bnd[-1].eq(NB)]
                        m.next = "BOUNDS"
            with m.State("AFTER_FINAL"):
                # best now holds the result at step hi
                with m.If(best_clip > 0):
                    m.d.sync += [t0.eq(0), tb_bit.eq(self.TB)]
                    m.next = "T0_A"
                with m.Else():
                    m.next = "CB_DONE"
            with m.State("CB_DONE"):
                ok = best_bits <= NB
                with m.If(ok & (ovr_inf | (best_dist < ovr_dist))):
                    m.d.sync += [ovr_inf.eq(0), ovr_dist.eq(best_dist), ovr_t.eq(best_t), ovr_sel.eq(cbi)]
                with m.If(cbi == 0):
                    m.d.sync += [ovr_inf.eq(~ok), ovr_dist.eq(best_dist), ovr_t.eq(best_t), ovr_sel.eq(0)]
                with m.If(cbi == K - 1):
                    m.next = "PACK_START"
                with m.Else():
                    m.d.sync += cbi.eq(cbi + 1)
                    m.next = "CB_START"
            with m.State("PACK_START"):
                m.d.sync += [cbi.eq(ovr_sel), t.eq(ovr_t), pack.eq(1), phase.eq(PACKP)]
                m.next = "SETUP0"
            with m.State("BOUNDS"):
                npairs = max(L // 2, 1)
                for pp in range(npairs - 1):
                    acc = bnd[0]
                    for qq in range(pp + 1):
                        acc = acc + used[2 * qq] + used[2 * qq + 1]
                    m.d.sync += bnd[pp + 1].eq(acc)
                # header fields LSB first: sel, e, f, o, boundaries 1..npointers
                fields = [(cbi, p.selbits(K)), (t >> p.mbits, p.ebits), (f_t, p.mbits),
                          (o_reg.as_unsigned(), p.obits)]
                hdr_v = Cat(*[v[:w] for v, w in fields if w])
                m.d.sync += block.eq(hdr_v)
                m.next = "PTRS"
            with m.State("PTRS"):
                if self.params.npointers:
                    ptrs = Cat(*[bnd[i][:p.pbits] for i in range(1, p.npointers + 1)])
                    start = p.selbits(K) + p.ebits + p.mbits + p.obits
                    m.d.sync += block.eq(block | (ptrs << start))
                m.next = "ASM"
            with m.State("ASM"):
                lane_v = Array(lanebuf)[alane[:max(1, (L - 1).bit_length())] if L > 1 else 0]
                u_v = Array(used)[alane[:max(1, (L - 1).bit_length())] if L > 1 else 0]
                pair = alane >> 1
                lo_b = Array(bnd)[pair]
                hi_b = Array(bnd)[pair + 1]
                even = Const(1, 1) if L == 1 else ~alane[0]
                amt = Mux(even, NB - u_v - lo_b, hi_b - u_v).as_unsigned()[:_bl(NB) + 1]
                lsel = Signal(unsigned(NB))
                m.d.comb += lsel.eq(lane_v)
                src = lsel[::-1]
                sh = _shl(m, src, amt, NB)
                m.d.sync += block.eq(block | Mux(even, sh[::-1], sh))
                with m.If(alane == L - 1):
                    m.next = "EMIT"
                with m.Else():
                    m.d.sync += alane.eq(alane + 1)
            with m.State("EMIT"):
                with m.If(~ofull):
                    m.d.sync += [ob.eq(block), ofull.eq(1), oword.eq(0), rb.eq(~rb), pack.eq(0),
                                 self.count_blocks.eq(self.count_blocks + 1),
                                 self.count_fallback.eq(self.count_fallback + fixed_c[cbi])]
                    m.next = "IDLE"

        # ---------------------------------------------------------------- output words
        W = cfg.bus_bits
        words = Array(ob[W * i: W * (i + 1)] for i in range(cfg.words_per_block))
        m.d.comb += [self.o_words.valid.eq(ofull), self.o_words.payload.data.eq(words[oword]),
                     self.o_words.payload.last.eq(oword == cfg.words_per_block - 1)]
        with m.If(self.o_words.valid & self.o_words.ready):
            with m.If(oword == cfg.words_per_block - 1):
                m.d.sync += ofull.eq(0)
            with m.Else():
                m.d.sync += oword.eq(oword + 1)
        return m


def build(*, group: int = 128, block_bytes: int = 63, lanes: int = 2, values_per_cycle: int = 4,
          bus_bits: int = 64, codebooks: str | None = None) -> KVCompressor:
    """Design factory (``kv-compress``): a compressor with the untrained uniform codebooks of
    :func:`sparsefab.compress.kv.uniform_codebooks`, or those of the ``.sfkc`` file ``codebooks``."""
    params = kvg.KVParams(group=group, block_bytes=block_bytes, lanes=lanes)
    if codebooks is None:
        cb = kvg.uniform_codebooks(params=params)
    else:
        from sparsefab.compress.fileio import read_bytes
        cb = kvg.Codebooks.from_bytes(read_bytes(codebooks), str(codebooks))
    return KVCompressor(codebooks=cb, params=params, values_per_cycle=values_per_cycle, bus_bits=bus_bits)


def config_dict(comp: KVCompressor) -> dict:
    """Sidecar ``config`` plus derived figures testbenches read (never hard-coded)."""
    d = dataclasses.asdict(comp.config)
    d.update(words_per_block=comp.config.words_per_block, beats_per_group=comp.config.beats_per_group,
             header_bits=comp.hdr, depth=comp.DEPTH, lengths=comp.codebooks.lengths.tolist(),
             centroids=comp.codebooks.centroids.tolist())
    return d


# ---------------------------------------------------------------------------- reference policy

def _hw_best_for_codebook(x, i, cb, params, ebias, hdr):
    """Golden :func:`sparsefab.compress.kv._best_for_codebook` without the rate-distortion fill
    (``_demote``: a 128-element sort on float cost ratios) and with the coarser-step retry decided
    per block (golden: if ANY block of the batch clipped).  Built only from golden primitives."""
    n = x.shape[0]
    T = 1 << (params.ebits + params.mbits)
    if cb.fixed_rate(i):
        syms = cb.table_symbols(i)
        span = float(cb.centroids[i, syms].max() - cb.centroids[i, syms].min())
        need = (x.max(axis=1) - x.min(axis=1)) / max(span, 1.0)
        units = kvg._units(np.arange(T), params, ebias)
        t0 = np.clip(np.searchsorted(units, need), 0, T - 1)
        best = kvg._quantize(x, t0, i, cb, params, ebias, hdr)
        for dt in (-1, 1, 2):
            cand = kvg._quantize(x, np.clip(t0 + dt, 0, T - 1), i, cb, params, ebias, hdr)
            best = kvg._take(best, cand, cand.dist < best.dist)
        return best
    lo = np.zeros(n, np.int64)
    hi = np.full(n, T - 1, np.int64)
    for _ in range(params.ebits + params.mbits):
        mid = (lo + hi) // 2
        fits = kvg._quantize(x, mid, i, cb, params, ebias, hdr).bits <= params.nbits
        hi = np.where(fits, mid, hi)
        lo = np.where(fits, lo, mid + 1)
    best = kvg._quantize(x, hi, i, cb, params, ebias, hdr)
    clipped = best.clipped > 0
    if clipped.any():
        lim = (1 << (cb.esc_bits - 1)) - 1 if cb.has_esc(i) else np.abs(cb.centroids[i]).max()
        need = np.abs(x).max(axis=1) / max(lim, 1)
        tc = np.clip(np.searchsorted(kvg._units(np.arange(T), params, ebias), need), hi, T - 1)
        for dt in (0, 1, 2):
            cand = kvg._quantize(x, np.clip(tc + dt, 0, T - 1), i, cb, params, ebias, hdr)
            better = clipped & (cand.bits <= params.nbits) & (cand.dist < best.dist)
            best = kvg._take(best, cand, better)
    return best


def reference_encode(groups: np.ndarray, cb: kvg.Codebooks, params: kvg.KVParams, ebias: int):
    """The encoder policy :class:`KVCompressor` implements, as golden-model calls.

    Same as :func:`sparsefab.compress.kv.encode_groups` (same primitives, same codebook choice
    and tie-breaks, same packing) except the rate-distortion fill of the slack, which the
    hardware does not do (docs/FORMATS_KV.md section 5: the encoder is informative; every block
    is valid and decodes with the golden decoder).  Returns ``(blocks uint8 [n, block_bytes],
    info)`` like ``encode_groups``.
    """
    x = np.asarray(groups, np.float64)
    hdr = params.header_bits(cb.k)
    best, sel = None, np.zeros(x.shape[0], np.int64)
    for i in range(cb.k):
        ch = _hw_best_for_codebook(x, i, cb, params, ebias, hdr)
        ok = ch.bits <= params.nbits
        if best is None:
            best = ch
            best.dist = np.where(ok, ch.dist, np.inf)
            continue
        take = ok & (ch.dist < best.dist)
        best = kvg._take(best, ch, take)
        sel = np.where(take, i, sel)
    blocks = kvg._pack(best, sel, cb, params)
    info = {"sel": sel, "t": best.t, "o": best.o, "bits": best.bits,
            "escapes": best.esc.sum(axis=1), "clipped": best.clipped}
    return blocks, info
