"""KVCompressor: FP16 values in, fixed-size entropy-coded KV blocks out (issue 4, section 2).

Bit-exact hardware twin of the golden one-pass encoder policy ``policy="hw"`` of
:mod:`sparsefab.compress.kv` (:func:`~sparsefab.compress.kv.encode_groups`; block format and policy:
docs/FORMATS_KV.md sections 3 and 5.2).  Every block it emits is byte-identical to
``encode_groups(groups, codebooks, params, ebias, policy="hw")``.

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
    Tensor exponent bias (file header field; :func:`sparsefab.compress.kv.choose_ebias`), sampled
    with the last beat of each group.  Any value is accepted (FP16 tensors give -44..-4).
error : Out(1)
    Sticky: a group held a NaN/Inf value (the golden model refuses them); such a group produces no
    block.  Cleared by reset.
count_blocks, count_fallback, count_escapes, count_dropped : Out(32)
    Blocks emitted, blocks coded with the fixed-rate (fallback) codebook, escape-coded values in
    emitted blocks, refused groups.
busy : Out(1)
    A group is somewhere in the compressor.

Architecture (eight group banks in one block RAM, three free-running pipelines, no stall inside)
--------------------------------------------------------------------------------------------------
1. **Input + statistics** (``group / P`` cycles per group): FP16 unpack to exact integers in units
   of 2**-24 and ``S = sum |x|`` by a registered adder tree and accumulator; for ``A = max |x|``
   only its step code matters, and the code is monotone, so the max is taken over 10-bit keys
   (leading-one position and the ``mbits`` next bits) read from the FP16 fields; the group is
   written to its bank.  A *window* pipeline then turns ``S`` and ``A`` into the first candidate
   step code ``base`` and the fallback step ``tf``.
2. **Evaluation** (``group / P`` cycles): the bank is read again; every value is quantized at the
   ``C = HW_CANDIDATES`` step codes ``base .. base+C-1`` in parallel (shared normalising shift,
   per candidate a 0..2-bit shift, a 16x14-bit multiply by the reciprocal of the step mantissa,
   ``z ~ 8 |v|``), the nearest table centroid (a uniform table with power-of-two spacing, as the
   default and trained ``uniform`` tables: one adder and a shift, and the escape decision is a
   constant compare of ``z``; other tables: one comparator per midpoint), and the code length
   under EVERY Huffman codebook: ``C x K_huffman`` bit counters.  A 5-stage decision picks the
   finest candidate that fits (ties: fewer bits, lower index), else the fallback.
3. **Packing** (``group / P`` cycles): the bank is read a third time and quantized at the chosen
   step with the chosen codebook; codes (bit-reversed canonical codes, escape raw bits) are
   concatenated per lane into one chunk per cycle, which a two-stage shifter places at its running
   bit position inside two ``LW``-bit lane words (``LW``: 64, or a larger power of two holding a
   whole chunk or an output word).  A lane keeps only its two open words, by parity (word ``w``
   in the even or odd register): a chunk ORs into both, and a chunk that opens word ``w + 1``
   clears the register of the finished word ``w - 1`` first; both registers are written every
   cycle to an even and an odd lane-word RAM (small LUT RAMs, one region per block slot).  Lane 0
   runs forward from the header; lane 1 runs from bit ``pad = NW * LW - nbits`` and the padded
   block is its bit reversal, so lane-1 word ``NW - 1 - i`` lands reversed in block word ``i``.
   No register holds a whole block: the deepest cone is a 3-input OR with a clear.
4. **Output**: per output word one read of each lane RAM (registered addresses from counters),
   then parity select, the lane ends (words past a lane's last word read as 0), the lane-1 bit
   reversal and the header OR, registered; a 6-entry output FIFO with credits takes the
   backpressure, so ``o_words.ready`` drives no pipeline enable.

The three passes run on three different groups at once, so the throughput is ``P`` values per
cycle sustained (one group every ``group / P`` cycles) as long as ``o_words`` keeps up
(``words_per_block <= group / P``).  The group banks and block slots are sized from the geometry
so that short groups keep that rate too: a bank lives about ``3 * group / P + 60`` cycles (it is
freed as soon as the packer has read it), a slot about ``group / P + 48`` (from the packer's
start to its last output word), so ``nbank`` (at least 8) and ``nslot`` (at least 4) are the
powers of two above those lifetimes in groups (default geometry: 8 banks, 4 slots; 4-beat
groups: 32 banks, 16 slots).  Bank
handoffs are decided from registered flags only.  Tables (centroids, codes, lengths) are
elaboration-time constants from a :class:`~sparsefab.compress.kv.Codebooks` object.

Measured (default geometry, P = 4): 4.000 values/cycle sustained on 48 real MiniLM groups in
cocotb/Verilator without stalls (``sparsefab.sim.tb_kv_compress.measure``; 3.670 including the
pipeline fill, first block 170 cycles after the first beat, at ff98f9f), byte-identical block by
block, also with input idles and output backpressure (tests); 4.000 also with groups of 4 and 8
beats (Amaranth simulator, tests).  ECP5-85F in the fpga harness (nextpnr router2, seed 1):

- 0b07a8c: 12,694 + 5,596 carry LUT4, 12,933 FF; 82.97 MHz after placement, 77.38 MHz routed
  (lane-word OR registers: 1.0 ns logic, 11.9 ns routing);
- b7048e4 (lane-word gearbox + LUT RAMs): 10,663 + 5,596 LUT4, 11,964 FF; 88.87 MHz placed,
  83.75 MHz routed (fabric ``y`` register -> MULT18X18D -> fabric product register: 4.45 ns
  logic, 7.49 ns routing);
- 14a27fa (DSP registers, front-end field register): 10,613 + 5,612 LUT4, 11,558 FF;
  118.57 MHz placed, 106.79 MHz routed (the decision stage's bank ebias 8:1 mux and +24 add:
  2.15 ns logic, 7.21 ns routing, +0.64 ns slack at 100 MHz);
- ff98f9f (ebias + 24 kept in the bank state; this version's default geometry is the same
  netlist), ``sparsefab fpga build --board ulx3s-85f --design kv-compress --seeds 2``:
  10,645 + 5,596 LUT4, 11,566 FF; seed 1 112.80 MHz placed, **107.18 MHz routed** (the window's
  bank commit enable to a bank register placed far away: 0.76 ns logic, 8.57 ns routing, one
  7.25 ns net); seed 2 107.24 MHz placed, 102.62 MHz routed (an evaluation lane's uniform-table
  index clamp: 3.48 ns logic, 6.26 ns routing); the flow keeps seed 1 (``fmax_mhz`` 107.18,
  ``meets_target`` true; its ``luts`` 18,605, ``carries`` 2,798, ``ffs`` 11,566, ``dsps`` 52,
  ``brams`` 4);

plus 486 LUT4 as LUT RAM (81 DPR16X4: lane words and the output FIFO), 52 MULT18X18D (with their
input and output registers since 14a27fa), 4 DP16KD.  With the lane-word registers gone, the
multiplier's fabric-to-DSP routes and then the packer's FP16 front end (93.72 MHz routed with the
DSP registers alone) were the critical paths; both are cut.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sparsefab.compress import huffman
from sparsefab.compress import kv as kvg
from sparsefab.compress.errors import SparsefabError

__all__ = ["KVCompressConfig", "KVCompressor", "build", "config_dict"]

AW = 40            # |x| * 2**24 < 2**40 for every finite FP16 x
NBANK = 8          # group banks (at least): input, window, evaluation, decision, packing overlap
NSLOT = 4          # output block slots (at least): blocks in the packer or waiting for o_words
BANK_FIXED = 60    # cycles a bank lives beyond its 3 passes of group/P beats (sim-measured, rounded up)
SLOT_FIXED = 48    # cycles a slot lives beyond its packing pass


def _bl(x: int) -> int:
    return int(abs(int(x))).bit_length()


def _uniform_index(cs, f: int, zw: int):
    """``(K1, s, width)`` if the sorted centroid table ``cs`` is uniform with a power-of-two spacing
    ``d`` (then the nearest-centroid index of ``zs`` in ``2**-f`` units, ties to the lower index, is
    ``clamp((zs - K1) >> s, 0, len(cs) - 1)`` with ``K1 = cs[0]*2**f - d*2**(f-1) + 1`` and
    ``s = log2(d) + f``), else None.  ``width``: signed width of ``zs - K1`` for ``|zs| < 2**zw``."""
    cs = [int(c) for c in cs]
    if len(cs) < 2 or f < 1:
        return None
    d = cs[1] - cs[0]
    if d <= 0 or d & (d - 1) or any(cs[i + 1] - cs[i] != d for i in range(len(cs) - 1)):
        return None
    k1 = (cs[0] << f) - (d << (f - 1)) + 1
    return k1, d.bit_length() - 1 + f, max(zw, _bl(k1)) + 2


@dataclass(frozen=True)
class KVCompressConfig:
    """Frozen configuration of a :class:`KVCompressor` (also the JSON sidecar's ``config``)."""

    group: int
    block_bytes: int
    lanes: int
    ebits: int
    mbits: int
    k: int
    s: int
    max_len: int
    esc_bits: int
    unit_per_step: int
    values_per_cycle: int
    bus_bits: int
    candidates: int
    codebooks_crc32: int
    policy: str = "hw"
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
    """Hardware KV-block compressor, byte-identical to the golden ``policy="hw"`` encoder.

    Parameters
    ----------
    codebooks : sparsefab.compress.kv.Codebooks
        The K codebooks (elaboration-time constants): at least one Huffman (variable-length) codebook
        and one fixed-rate codebook that fits the block (the fallback).
    params : sparsefab.compress.kv.KVParams
        Block geometry; ``lanes`` 1 or 2 and ``obits = 0`` (the hardware policy codes no offset);
        ``axis`` is irrelevant here (groups arrive already formed).
    values_per_cycle : int
        ``P``, values per input beat and per cycle of each pass: 1..16, a multiple of ``lanes``
        dividing ``group``.
    bus_bits : int
        Output word width ``W``: 8, 16, 32, 64 or 128.

    Ports: see the module docstring.  Throughput ``P`` values/cycle sustained; the first block of a
    stream leaves about ``3 * group / P + 75`` cycles after the group's first beat (170 by default).
    """

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
        if params.lanes not in (1, 2):
            raise SparsefabError(f"KVCompressor: lanes={params.lanes}, expected 1 or 2 (no lane-pair pointers)")
        if params.obits:
            raise SparsefabError(f"KVCompressor: obits={params.obits}, expected 0 (the hw policy codes no offset)")
        if P % params.lanes or params.group % P:
            raise SparsefabError(f"KVCompressor: values_per_cycle={P} must be a multiple of lanes="
                                 f"{params.lanes} and divide group={params.group}")
        if bus_bits not in (8, 16, 32, 64, 128):
            raise SparsefabError(f"KVCompressor: bus_bits={bus_bits!r}, expected 8, 16, 32, 64 or 128")
        cb = codebooks
        hdr = params.header_bits(cb.k)
        if hdr >= params.nbits:
            raise SparsefabError(f"KVCompressor: a {hdr}-bit block header fills {params.block_bytes}-byte blocks")
        fixed = [i for i in range(cb.k) if cb.fixed_rate(i) and hdr + params.group * cb.fixed_rate(i) <= params.nbits]
        if not fixed:
            raise SparsefabError(f"KVCompressor: no fixed-rate fallback codebook fits {params.group} values in "
                                 f"{params.block_bytes} bytes after a {hdr}-bit header")
        huff = [i for i in range(cb.k) if not cb.fixed_rate(i)]
        if not huff:
            raise SparsefabError("KVCompressor: codebooks have no Huffman (variable-length) codebook")
        self._MustUse__silence = False
        self.params, self.codebooks = params, cb
        T = 1 << (params.ebits + params.mbits)
        self.config = KVCompressConfig(
            group=params.group, block_bytes=params.block_bytes, lanes=params.lanes, ebits=params.ebits,
            mbits=params.mbits, k=cb.k, s=cb.s, max_len=cb.max_len, esc_bits=cb.esc_bits,
            unit_per_step=cb.unit_per_step, values_per_cycle=P, bus_bits=bus_bits,
            candidates=min(kvg.HW_CANDIDATES, T), codebooks_crc32=zlib.crc32(cb.to_bytes()))
        self.hdr, self.fb, self.huff, self.T = hdr, fixed[0], huff, T
        self._tables()
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
        })

    def _tables(self):
        p, cb = self.params, self.codebooks
        F = kvg.HW_F
        self.R = [int(r) for r in kvg.hw_recip(p.mbits)]
        self.rw = max(self.R).bit_length()
        self.yb = kvg.HW_YBITS + F
        C = self.config.candidates
        self.kmax = ((1 << p.mbits) - 1 + C - 1) >> p.mbits
        self.uw = self.yb + self.kmax
        self.zw = self.yb + self.rw - kvg.HW_K + 1
        # distinct centroid tables (sorted centroids and their symbols) of all codebooks
        self.tabs, self.tab_of = [], []
        for i in range(cb.k):
            syms = cb.table_symbols(i)
            cents = cb.centroids[i, syms]
            order = np.argsort(cents, kind="stable")
            key = (tuple(int(v) for v in cents[order]), tuple(int(v) for v in syms[order]))
            if key not in self.tabs:
                self.tabs.append(key)
            self.tab_of.append(self.tabs.index(key))
        self.rl = kvg.hw_range_log2(cb)
        self.big_margin = kvg.hw_big_margin(cb)
        cs = cb.centroids[self.fb, cb.table_symbols(self.fb)]
        self.rf = int(max(min(-cs.min(), cs.max()), 1)).bit_length() - 1
        self.lg = int(round((1 << p.mbits) * math.log2(p.group)))
        self.rcode = []
        for i in range(cb.k):
            codes = huffman.canonical_codes(cb.lengths[i])
            row = []
            for s in range(cb.s):
                ln = int(cb.lengths[i, s])
                row.append(sum(((int(codes[s]) >> (ln - 1 - j)) & 1) << j for j in range(ln)))
            self.rcode.append(row)
        self.iw = cb.max_len + cb.esc_bits      # widest coded symbol
        # packer back end: lane words of LW bits (a power of two holding a whole lane chunk and at least
        # one output word), NW of them per block, NSLOT blocks buffered
        cw = (self.config.values_per_cycle // p.lanes) * self.iw
        self.lw = max(64, self.config.bus_bits, 1 << (cw - 1).bit_length())
        self.nw = -(-p.nbits // self.lw)
        # enough group banks and block slots for a group every group/P cycles (a bank lives about
        # 3 * beats + BANK_FIXED cycles, a slot about beats + SLOT_FIXED): powers of two
        beats = p.group // self.config.values_per_cycle
        self.nbank = min(max(NBANK, 1 << (-(-(3 * beats + BANK_FIXED) // beats)).bit_length()), 64)
        self.nslot = min(max(NSLOT, 1 << (-(-(beats + SLOT_FIXED) // beats)).bit_length()), 64)

    def _fast_table(self, ti: int):
        """``(K1, s, width, e_pos, e_neg)`` when centroid table ``ti`` takes the comparator-free path,
        else None.

        The table must be uniform with a power-of-two spacing ``d`` (:func:`_uniform_index`), with
        ``d <= 2 * unit_per_step`` (inside the table the error to the nearest centroid is at most
        ``d/2`` units, never above the escape threshold ``unit_per_step``), and, with escapes, the
        table must straddle 0 and lie inside the escape range (``lim - 1 > max(cmax, -cmin)``).
        Then the golden escape decision ``err > ups`` and ``derr < err`` reduces to
        ``z > (cmax + ups) * 2**F`` for a positive value and ``z > (ups - cmin) * 2**F`` for a
        negative one: past the table edge by more than ``ups``, the rounded escape value (error at
        most half a unit below the clip, and nearer than the edge above it) always wins.
        """
        cache = self.__dict__.setdefault("_fast_cache", {})
        if ti in cache:
            return cache[ti]
        F, cb = kvg.HW_F, self.codebooks
        cs = self.tabs[ti][0]
        uni = _uniform_index(cs, F, self.zw)
        res = None
        if uni is not None and cs[1] - cs[0] <= 2 * cb.unit_per_step:
            cmin, cmax, ups = cs[0], cs[-1], cb.unit_per_step
            if not cb.esc_bits:
                res = (*uni, 0, 0)
            elif cmin < 0 < cmax and (1 << (cb.esc_bits - 1)) - 1 > max(cmax, -cmin):
                res = (*uni, (cmax + ups) << F, (ups - cmin) << F)
        cache[ti] = res
        return res

    # ------------------------------------------------------------------ elaboration helpers

    @staticmethod
    def _reg(m, value, shape=None, name=None):
        s = Signal(shape if shape is not None else value.shape(), name=name)
        m.d.sync += s.eq(value)
        return s

    @staticmethod
    def _shl(m, x, amt, width):
        """``(x << amt)[:width]`` as a log-depth mux barrel."""
        v = Signal(unsigned(width))
        m.d.comb += v.eq(x)
        for i in range(len(amt)):
            k = 1 << i
            nv = Signal(unsigned(width))
            m.d.comb += nv.eq(Mux(amt[i], Cat(Const(0, k), v[:width - k]) if k < width else 0, v))
            v = nv
        return v

    @staticmethod
    def _shr(m, x, amt):
        """Logical ``x >> amt`` as a log-depth mux barrel, same width as ``x``."""
        w = len(x)
        v = Signal(unsigned(w))
        m.d.comb += v.eq(x)
        for i in range(len(amt)):
            k = 1 << i
            nv = Signal(unsigned(w))
            m.d.comb += nv.eq(Mux(amt[i], v[k:] if k < w else 0, v))
            v = nv
        return v

    @staticmethod
    def _tree(vals, op):
        vals = list(vals)
        while len(vals) > 1:
            nxt = [op(vals[i], vals[i + 1]) for i in range(0, len(vals) - 1, 2)]
            vals = nxt + ([vals[-1]] if len(vals) % 2 else [])
        return vals[0]

    def _msb(self, m, v, name):
        """Two registered stages: position of the leading one of ``v`` (and ``v != 0``)."""
        n = len(v)
        nch = -(-n // 8)
        nz, pos = [], []
        for c in range(nch):
            ch = v[8 * c: min(8 * c + 8, n)]
            p = Const(0, 3)
            for b in range(len(ch)):
                p = Mux(ch[b], b, p)
            nz.append(self._reg(m, ch.any(), 1, name=f"{name}_nz{c}"))
            pos.append(self._reg(m, p, 3, name=f"{name}_pos{c}"))
        msb = Const(0, _bl(n))
        for c in range(nch):
            msb = Mux(nz[c], Cat(pos[c], Const(c, _bl(nch))), msb)
        return self._reg(m, msb, _bl(n) + 1, name=f"{name}_msb"), self._reg(m, Cat(*nz).any(), 1, name=f"{name}_any")

    @staticmethod
    def _rom(m, table, idx, width, name):
        """``table[idx]`` (constants) as registered 16-entry halves (one LUT4 level each) and a 2:1
        mux after the register; out-of-range indices read 0."""
        lo_n = min(len(idx), 4)
        halves = []
        for h in range(0, max(len(table), 1), 1 << lo_n):
            part = table[h: h + (1 << lo_n)]
            halves.append(KVCompressor._reg(m, Array(Const(v, width) for v in part)[idx[:lo_n]]
                                            if len(part) > 1 else Const(part[0], width), width,
                                            name=f"{name}_h{h >> lo_n}"))
        if len(halves) == 1:
            return halves[0]
        sel = KVCompressor._reg(m, idx[lo_n:], max(len(idx) - lo_n, 1), name=f"{name}_hs")
        return Array(halves)[sel] if len(halves) > 1 else halves[0]

    @staticmethod
    def _cand_bit(m, vec, oh, moved, name):
        """``vec[candidate]`` from registers only: ``oh`` is the candidate one-hot, ``moved`` says it
        advanced (rotated by one) at the last clock edge.  Both the current and the next candidate's
        bits are registered every cycle, so the result is at most one cycle old: safe for flags that
        only this candidate's owner clears (by moving on) and that others only set (seen a cycle later)."""
        cur = KVCompressor._reg(m, (vec & oh).any(), 1, name=f"{name}_c")
        nxt = KVCompressor._reg(m, (vec & oh.rotate_left(1)).any(), 1, name=f"{name}_n")
        return Mux(moved, nxt, cur)

    def _key(self, m, ex, man, name):
        """Window key of an FP16 magnitude (exponent field ``ex``, mantissa ``man``): ``Cat(f, msb, nz)``
        with ``msb`` the leading-one position of ``|x| * 2**24`` and ``f`` its ``mbits`` next bits (the
        floor step code up to a constant), ``nz`` = ``|x| != 0``.  Monotone in ``|x|``.  One register
        stage inside; the caller registers the result (two cycles, as the magnitudes)."""
        mb = self.params.mbits
        # subnormal: leading one of the mantissa and the bits below it, left-aligned (two stages:
        # the leading one, registered, then the alignment shift)
        lo = Const(0, 4)
        for b in range(10):
            lo = Mux(man[b], b, lo)
        lo = self._reg(m, lo, 4, name=f"{name}_lo")
        sh = (9 - lo)[:4]
        man_r = self._reg(m, man, 10, name=f"{name}_man")
        normal = self._reg(m, ex != 0, 1, name=f"{name}_nrm")
        msb_n = self._reg(m, ex + 9, 6, name=f"{name}_msbn")
        nz = self._reg(m, (ex != 0) | (man != 0), 1, name=f"{name}_nz")
        al = Signal(10, name=f"{name}_al")
        m.d.comb += al.eq(self._shl(m, man_r, sh, 10))
        msb = Mux(normal, msb_n, lo)
        f = Mux(normal, man_r[10 - mb:], al[9 - mb:9]) if mb else Const(0, 0)
        return Cat(f, msb[:6], nz)

    def _front(self, m, h, s0, tag):
        """FP16 pattern ``h`` (RAM output) and ``s0`` (both valid in the same cycle) -> sign and
        ``u = sat(floor(|x| * 2**F / 2**s0))`` (``UW`` bits; saturated to all ones), five stages."""
        F = kvg.HW_F
        h = self._reg(m, h, 16, name=f"{tag}_h")
        s0 = self._reg(m, s0, name=f"{tag}_s0")
        # the FP16 fields decoded and registered first: the RAM output register feeds only LUTs, the
        # exponent arithmetic starts next to its carry chains
        ex_ = h[10:15]
        sign = self._reg(m, h[15], 1, name=f"{tag}_sgn")
        m11 = self._reg(m, Mux(ex_ == 0, h[0:10], Cat(h[0:10], Const(1, 1))), 11, name=f"{tag}_m11")
        ex1 = self._reg(m, Cat(ex_[0] | (ex_ == 0), ex_[1:]), 5, name=f"{tag}_ex1")   # max(ex, 1): |x| = m11 * 2**(ex1 - 25)
        big = self._reg(m, ex_ == 30, 1, name=f"{tag}_big")
        bad = self._reg(m, ex_ == 31, 1, name=f"{tag}_bad0")
        s0 = self._reg(m, s0, name=f"{tag}_s0b")
        sh = Signal(signed(11), name=f"{tag}_shc")
        m.d.comb += sh.eq(ex1 + (F - 1) - s0)
        uw = self.uw
        lmax = uw - 11
        # registered: the shift as a left shift of a window 11 bits wider (u = (m << (sh + 11)) >> 11
        # covers left and right shifts) and the range flags (no carry chain before the barrel)
        r_amt = self._reg(m, (ex1 + (F - 1 + 11) - s0)[:_bl(lmax + 11)], _bl(lmax + 11), name=f"{tag}_amt")
        r_sat = self._reg(m, sh > lmax, 1, name=f"{tag}_sat")
        r_zero = self._reg(m, sh <= -11, 1, name=f"{tag}_zero")
        r_m = self._reg(m, m11, 11, name=f"{tag}_m")
        r_sg = self._reg(m, Cat(sign, big), 2, name=f"{tag}_sg")          # sign, |x| >= 2**15
        r_bad = self._reg(m, bad, 1, name=f"{tag}_bad")
        # the barrel in two registered halves (by amt[:2], then by amt[2:] in steps of 4)
        a1 = self._reg(m, self._shl(m, r_m, r_amt[:2], 14), 14, name=f"{tag}_a1")
        hi1 = self._reg(m, r_amt[2:], len(r_amt) - 2, name=f"{tag}_hi1")
        sat1 = self._reg(m, r_sat & (r_m != 0), 1, name=f"{tag}_sat1")
        zero1 = self._reg(m, r_zero | (r_sat & (r_m == 0)), 1, name=f"{tag}_zero1")
        sg1 = self._reg(m, r_sg, 2, name=f"{tag}_sg1")
        full = self._shl(m, a1, Cat(Const(0, 2), hi1), uw + 11)
        u = Mux(sat1, (1 << uw) - 1, Mux(zero1, 0, full[11:]))
        return self._reg(m, u, uw, name=f"{tag}_u"), self._reg(m, sg1, 2, name=f"{tag}_sg2"), r_bad

    def _mul2(self, m, a, b, width, name):
        """``a * b`` (unsigned, at most 18 x 18 bits) with registered operands and a registered product:
        valid two cycles after ``a`` and ``b``.  On an ECP5 the three registers are the MULT18X18D's
        own input and output registers (no fabric route into or out of the multiplier in the path)."""
        if self._ecp5 and len(a) <= 18 and len(b) <= 18 and width <= 36:
            from sparsefab.gen.ecp5_prims import mult18x18d
            return mult18x18d(m, a, b, width=width, name=name)
        ar, br = self._reg(m, a, name=f"{name}_a"), self._reg(m, b, name=f"{name}_b")
        return self._reg(m, ar * br, width, name=name)

    def _quant(self, m, u, sg, k, R, tabs, tag):
        """Stages Q3..Q8 for one value at one step: returns per table (in ``tabs``) registered
        ``(j, esc)`` at Q8 (``j`` the index in the sorted table ``self.tabs[ti]``), the raw escape field (``esc_bits``, two's complement) and the sign; ``k`` (shift 0..kmax) and ``R`` (reciprocal) must be
        valid one cycle before the multiply (at Q3)."""
        F, cb = kvg.HW_F, self.codebooks
        ups = cb.unit_per_step
        ymax = (1 << self.yb) - 1
        sh = self._shr(m, u, k) if self.kmax else u
        y = self._reg(m, Mux(sh > ymax, ymax, sh), self.yb, name=f"{tag}_y")
        rr = self._reg(m, R, self.rw, name=f"{tag}_R")
        sg3 = self._reg(m, self._reg(m, sg, 2), 2)
        prod = self._mul2(m, y, rr, self.yb + self.rw, f"{tag}_p")
        sg4 = self._reg(m, sg3, 2)
        # values of the top FP16 binade lose a margin: never rounded away from zero (no Inf)
        z0 = prod[kvg.HW_K:]
        zb = Signal(signed(self.zw + 1))
        m.d.comb += zb.eq(z0 - self.big_margin)
        z = self._reg(m, Mux(sg4[1], Mux(zb < 0, 0, zb), z0), self.zw, name=f"{tag}_z")
        sg4 = self._reg(m, sg4[0], 1)
        zs = Signal(signed(self.zw + 1), name=f"{tag}_zs")
        m.d.comb += zs.eq(Mux(sg4, -z, z))
        esc_on = bool(cb.esc_bits)
        lim = 1 << (cb.esc_bits - 1) if esc_on else 1
        # Q5: comparators, escape value and its error
        slow = [ti for ti in tabs if self._fast_table(ti) is None]
        zs5 = self._reg(m, zs, name=f"{tag}_zs5") if slow else None
        sg5 = self._reg(m, sg4, 1)
        out = {}
        if esc_on:
            # r = min(rint_half_up(z / 2**F), lim - 1); derr = |z - r * 2**F|, without a carry chain
            # in series: below the clip the error is the distance of z's low F bits to the half.
            zc = ((lim - 1) << F) + (1 << (F - 1))         # first z that rounds past lim - 1
            clip = z >= zc
            r = Mux(clip, lim - 1, (z + (1 << (F - 1))) >> F)
            lowv = (z[:F] + (1 << (F - 1)))[:F]
            dsmall = Mux(lowv >= (1 << (F - 1)), lowv - (1 << (F - 1)), (1 << (F - 1)) - lowv)
            r5 = self._reg(m, r, _bl(lim), name=f"{tag}_r5")
            derr5 = self._reg(m, Mux(clip, z - ((lim - 1) << F), dsmall), self.zw + 1, name=f"{tag}_derr5")
        therm5, fast5 = {}, {}
        for ti in tabs:
            cs, _ = self.tabs[ti]
            fast = self._fast_table(ti)
            if fast is not None:
                # uniform table, power-of-two spacing: j = clamp((zs - K1) >> s, 0, n - 1) is exactly
                # the count of midpoints below zs (one adder instead of n - 1 comparators); zs - K1 as
                # (z ^ -sign) + sign - K1, one carry chain
                k1, _, tw_, e_pos, e_neg = fast
                zx = Signal(signed(tw_), name=f"{tag}_zx{ti}")
                m.d.comb += zx.eq(z)
                t = Signal(signed(tw_), name=f"{tag}_ut{ti}")
                m.d.comb += t.eq((zx ^ sg4.replicate(tw_).as_signed()) + Mux(sg4, 1 - k1, -k1))
                therm5[ti] = self._reg(m, t, signed(tw_), name=f"{tag}_ut5_{ti}")
                # the escape decision of such a table is a constant compare of z (see _fast_table)
                if esc_on:
                    esc = Mux(sg4, z > e_neg, z > e_pos) if e_pos != e_neg else z > e_pos
                    fast5[ti] = self._reg(m, esc, 1, name=f"{tag}_fe5_{ti}")
                else:
                    fast5[ti] = Const(0, 1)
                continue
            mids = [(cs[j] + cs[j + 1]) << (F - 1) for j in range(len(cs) - 1)]
            # zs > mid with zs = +-z: z > mid for a positive value, z < -mid for a negative one
            bitsv = [Mux(sg4, (z < -mm) if mm < 0 else Const(0, 1), (z > mm) if mm >= 0 else Const(1, 1))
                     for mm in mids]
            therm5[ti] = self._reg(m, Cat(*bitsv) if mids else Const(0, 1),
                                   max(len(mids), 1), name=f"{tag}_th{ti}")
        # Q6: index = popcount of the thermometer
        zs6 = self._reg(m, zs5) if slow else None
        sg6 = self._reg(m, sg5, 1)
        if esc_on:
            # the raw escape field (two's complement, esc_bits) formed here, off the packer's item path
            r6 = self._reg(m, Mux(sg5, -r5, r5).as_unsigned()[:cb.esc_bits], cb.esc_bits, name=f"{tag}_r6")
            derr6 = self._reg(m, derr5)
        j6 = {}
        for ti in tabs:
            jw = _bl(len(self.tabs[ti][0]))
            th = therm5[ti]
            n = len(self.tabs[ti][0]) - 1
            fast = self._fast_table(ti)
            if fast is not None:
                _, sh_, _, _, _ = fast
                q = th[sh_:].as_signed()
                jv = Mux(th[-1], 0, Mux(q > n, n, q[:jw]))
                j6[ti] = self._reg(m, jv, jw, name=f"{tag}_j{ti}")
                fast5[ti] = self._reg(m, fast5[ti], 1)
                continue
            # the thermometer is monotone (sorted midpoints): j = position of its first 0
            ext = [Const(1, 1)] + [th[b] for b in range(n)] + [Const(0, 1)]
            onehot = [ext[k] & ~ext[k + 1] for k in range(n + 1)]
            jv = Cat(*[self._tree([onehot[k] for k in range(n + 1) if (k >> b) & 1] or [Const(0, 1)],
                                  lambda a, b: a | b) for b in range(jw)])
            j6[ti] = self._reg(m, jv, jw, name=f"{tag}_j{ti}")
        # Q7: centroid and symbol; Q7b: error
        sg7 = self._reg(m, sg6, 1)
        zs7 = self._reg(m, zs6) if slow else None
        if esc_on:
            r7, derr7 = self._reg(m, r6), self._reg(m, derr6)
        q7 = {}
        for ti in tabs:
            cs, ss = self.tabs[ti]
            if ti not in slow:
                q7[ti] = (self._reg(m, j6[ti], name=f"{tag}_sym{ti}"), self._reg(m, fast5[ti], 1))
                continue
            cw = max(_bl(c) for c in cs) + 2
            rec = self._reg(m, Array(Const(c << F, signed(cw + F)) for c in cs)[j6[ti]], signed(cw + F),
                            name=f"{tag}_rec{ti}")
            sym = self._reg(m, j6[ti], name=f"{tag}_sym{ti}")
            q7[ti] = (rec, sym, cw)
        sg7 = self._reg(m, sg7, 1)
        if esc_on:
            r7, derr7 = self._reg(m, r7), self._reg(m, derr7)
        for ti in tabs:
            if ti not in slow:
                sym, fe = q7[ti]
                q7[ti] = (self._reg(m, sym), self._reg(m, fe, 1))
                continue
            rec, sym, cw = q7[ti]
            e = Signal(signed(self.zw + cw + F + 2))
            m.d.comb += e.eq(zs7 - rec)
            err = self._reg(m, Mux(e < 0, -e, e), self.zw + cw + F + 1, name=f"{tag}_err{ti}")
            q7[ti] = (err, self._reg(m, sym))
        # Q8: escape decision
        sg8 = self._reg(m, sg7, 1)
        r8 = self._reg(m, r7) if esc_on else Const(0, 1)
        for ti in tabs:
            if ti not in slow:
                sym, fe = q7[ti]
                out[ti] = (self._reg(m, sym), self._reg(m, fe, 1, name=f"{tag}_esc{ti}"))
                continue
            err, sym = q7[ti]
            esc = (err > (ups << F)) & (derr7 < err) if esc_on else Const(0, 1)
            out[ti] = (self._reg(m, sym), self._reg(m, esc, 1, name=f"{tag}_esc{ti}"))
        return out, r8, sg8

    # ------------------------------------------------------------------ elaboration

    def elaborate(self, platform):  # noqa: C901 - one datapath, stage by stage
        m = Module()
        self._ecp5 = getattr(platform, "family", None) == "ecp5"
        p, cb, cfg = self.params, self.codebooks, self.config
        P, G, L, K = cfg.values_per_cycle, p.group, p.lanes, cb.k
        NBITS, BEATS, C, T = p.nbits, G // P, cfg.candidates, self.T
        mb = p.mbits
        reg = self._reg
        NBANK = self.nbank
        bbw = max(NBANK - 1, 1).bit_length()
        btw = max(BEATS - 1, 1).bit_length()

        mem = Memory(shape=unsigned(16 * P), depth=NBANK * BEATS, init=[])
        m.submodules.mem = mem
        wr = mem.write_port()
        rd_e = mem.read_port()
        rd_p = mem.read_port()

        def addr(bank, beat):
            return Cat(beat[:btw], bank[:bbw]) if BEATS > 1 else bank[:bbw]

        # ---------------------------------------------------------------- bank state
        busy = Signal(NBANK)
        ready = Signal(NBANK)
        decided = Signal(NBANK)
        drop = Signal(NBANK)
        tw = max(T - 1, 1).bit_length()
        b_base = Array(Signal(tw, name=f"b_base{b}") for b in range(NBANK))
        b_tf = Array(Signal(tw, name=f"b_tf{b}") for b in range(NBANK))
        b_eb = Array(Signal(signed(10), name=f"b_eb{b}") for b in range(NBANK))     # ebias + 24
        b_s0e = Array(Signal(signed(10), name=f"b_s0e{b}") for b in range(NBANK))
        b_sel = Array(Signal(range(K), name=f"b_sel{b}") for b in range(NBANK))
        b_t = Array(Signal(tw, name=f"b_t{b}") for b in range(NBANK))
        b_s0p = Array(Signal(signed(10), name=f"b_s0p{b}") for b in range(NBANK))
        b_R = Array(Signal(self.rw, name=f"b_R{b}") for b in range(NBANK))
        set_busy, clr_busy = Signal(NBANK), Signal(NBANK)
        set_ready, clr_ready = Signal(NBANK), Signal(NBANK)
        set_dec, clr_dec = Signal(NBANK), Signal(NBANK)
        set_drop = Signal(NBANK)
        set_dec_e, clr_busy_p = Signal(NBANK), Signal(NBANK)     # driven by the issue controls below
        clr_b = clr_busy | clr_busy_p
        m.d.sync += [busy.eq((busy | set_busy) & ~clr_b), ready.eq((ready | set_ready) & ~clr_ready),
                     decided.eq((decided | set_dec | set_dec_e) & ~clr_dec),
                     drop.eq((set_ready & set_drop) | (~set_ready & drop & ~clr_b))]
        m.d.comb += self.busy.eq(busy.any())

        # ---------------------------------------------------------------- 1. input + statistics
        wbank = Signal(bbw)
        wbank_oh = Signal(NBANK, init=1)
        wbeat = Signal(btw)
        in_grp = Signal()
        wmoved = Signal()
        wfree = self._cand_bit(m, ~busy, wbank_oh, wmoved, "wfree")
        m.d.comb += self.i_values.ready.eq(in_grp | wfree)
        hs = self.i_values.valid & self.i_values.ready
        last_in = wbeat == BEATS - 1
        m.d.comb += [wr.addr.eq(addr(wbank, wbeat)), wr.data.eq(self.i_values.payload.as_value()), wr.en.eq(hs)]
        m.d.sync += wmoved.eq(hs & last_in)
        with m.If(hs):
            with m.If(~in_grp):
                m.d.comb += set_busy.eq(wbank_oh)
            with m.If(last_in):
                m.d.sync += [wbeat.eq(0), in_grp.eq(0), wbank.eq(wbank + 1), wbank_oh.eq(wbank_oh.rotate_left(1))]
            with m.Else():
                m.d.sync += [wbeat.eq(wbeat + 1), in_grp.eq(1)]
        # S1: magnitudes
        s_v = reg(m, hs, 1, name="s1_v")
        s_f = reg(m, wbeat == 0, 1, name="s1_f")
        s_l = reg(m, last_in, 1, name="s1_l")
        s_b = reg(m, wbank, bbw, name="s1_b")
        s_eb = reg(m, self.ebias, signed(8), name="s1_eb")
        mags, bads, keys = [], [], []
        KW = 1 + 6 + mb
        for q in range(P):
            h = self.i_values.payload[q]
            ex, man = h[10:15], h[0:10]
            m11 = Mux(ex == 0, man, Cat(man, Const(1, 1)))
            ex1 = Cat(ex[0] | (ex == 0), ex[1:])          # a = (m11 << max(ex, 1)) >> 1
            # the exponent shift in two registered halves (2 + 3 mux levels)
            a0 = reg(m, self._shl(m, m11, ex1[:2], 14), 14, name=f"s0_a{q}")
            ehi = reg(m, ex1[2:], 3, name=f"s0_e{q}")
            mags.append(reg(m, self._shl(m, a0, Cat(Const(0, 2), ehi), AW + 1)[1:], AW, name=f"s1_a{q}"))
            # the window needs only code(max |x|) = max code(|x|) (the code is monotone): a 10-bit key
            # (nonzero, leading-one position, the mbits bits below it) straight from the FP16 fields
            keys.append(reg(m, self._key(m, ex, man, f"s0_k{q}"), KW, name=f"s1_k{q}"))
            bads.append(ex == 31)
        s_bad = reg(m, Cat(*bads).any(), 1, name="s1_bad")
        ctx = [reg(m, c) for c in (s_v, s_f, s_l, s_b, s_eb, s_bad)]
        sums, maxs = mags, keys
        lvl = 0
        while len(sums) > 1:
            lvl += 1
            ns, nm = [], []
            for i in range(0, len(sums) - 1, 2):
                ns.append(reg(m, sums[i] + sums[i + 1], name=f"s_sum{lvl}_{i}"))
                nm.append(reg(m, Mux(maxs[i] > maxs[i + 1], maxs[i], maxs[i + 1]), KW, name=f"s_max{lvl}_{i}"))
            if len(sums) % 2:
                ns.append(reg(m, sums[-1]))
                nm.append(reg(m, maxs[-1]))
            sums, maxs = ns, nm
            ctx = [reg(m, c) for c in ctx]
        c_v, c_f, c_l, c_b, c_eb, c_bad = ctx
        SW = AW + _bl(G)
        acc_s, acc_a, acc_bad = Signal(SW), Signal(KW), Signal()
        n_s = Mux(c_f, 0, acc_s) + sums[0]
        n_a = Mux(c_f | (maxs[0] > acc_a), maxs[0], acc_a)
        n_bad = Mux(c_f, 0, acc_bad) | c_bad
        with m.If(c_v):
            m.d.sync += [acc_s.eq(n_s), acc_a.eq(n_a), acc_bad.eq(n_bad)]
        w_v = reg(m, c_v & c_l, 1, name="w0_v")
        w_s = reg(m, n_s, SW, name="w0_s")
        w_a = reg(m, n_a, KW, name="w0_a")
        wctx = [w_v, reg(m, c_b, bbw), reg(m, c_eb), reg(m, n_bad, 1)]
        # W1-W2: leading ones
        ms, s_any = self._msb(m, w_s, "ws")
        wa2 = reg(m, reg(m, w_a))
        ma, a_any = wa2[mb:mb + 6], wa2[-1]
        ws2 = reg(m, reg(m, w_s))
        wctx = [reg(m, reg(m, c)) for c in wctx]
        # W3: the mbits bits below the leading one
        # (in two registered halves: by the leading one's byte, then by its bit in the byte)
        def nxt(v, msb, name):
            if not mb:
                return Const(0, 1)
            hi = self._shr(m, Cat(Const(0, mb), v), Cat(Const(0, 3), msb[3:]))
            lo = reg(m, hi[:mb + 7], mb + 7, name=f"{name}a")
            return self._shr(m, lo, reg(m, msb[:3], 3))[:mb]
        fs = reg(m, nxt(ws2, ms, "w3_fs"), max(mb, 1), name="w3_fs")
        fa = reg(m, reg(m, wa2[:mb]) if mb else Const(0, 1), max(mb, 1), name="w3_fa")
        ms3, ma3, s_any3, a_any3 = reg(m, ms), reg(m, ma), reg(m, s_any), reg(m, a_any)
        wctx = [reg(m, c) for c in wctx]
        _, _, w_eb, _ = wctx
        # W4: codes
        cwid = signed(16)
        ebm = reg(m, -w_eb - 24 - mb, signed(10), name="w3_ebm")
        wctx = [reg(m, c) for c in wctx]
        ms3, ma3 = reg(m, ms3), reg(m, ma3)
        s_any3, a_any3 = reg(m, s_any3), reg(m, a_any3)
        code_s = reg(m, ((ms3 + ebm) << mb) | (fs if mb else 0), cwid, name="w4_cs")
        code_a = reg(m, ((ma3 + ebm) << mb) | (fa if mb else 0), cwid, name="w4_ca")
        s_any3, a_any3 = reg(m, s_any3), reg(m, a_any3)
        wctx = [reg(m, c) for c in wctx]
        tm = reg(m, code_s - self.lg + kvg.hw_window_offset(cb, p), cwid, name="w4_tm")
        tl = reg(m, code_a - (self.rl << mb) + 1, cwid, name="w4_tl")
        tfv = reg(m, code_a - (self.rf << mb) + 1, cwid, name="w4_tfv")
        s_any4, a_any4 = reg(m, s_any3), reg(m, a_any3)
        wctx = [reg(m, c) for c in wctx]
        tf4 = reg(m, Mux(~a_any4 | (tfv < 0), 0, Mux(tfv > T - 1, T - 1, tfv)), tw, name="w4_tf")
        # clamping commutes with the max (both monotone): clamp each code and compare them in parallel
        # (range flags and the compare registered here, the three mux levels in W5)
        def clamp_flags(v, name):
            return (reg(m, v < 0, 1, name=f"{name}_neg"), reg(m, v > T - C, 1, name=f"{name}_hi"),
                    reg(m, v[:tw], tw, name=f"{name}_lo"))

        def clamp(fl):
            neg, hi, lo = fl
            return Mux(neg, 0, Mux(hi, T - C, lo))
        ftm, ftl = clamp_flags(tm, "w4_tm"), clamp_flags(tl, "w4_tl")
        tgt, s_any4 = reg(m, tm > tl, 1, name="w4_gt"), reg(m, s_any4)
        wctx = [reg(m, c) for c in wctx]
        # W5: window base
        base5 = reg(m, Mux(~s_any4, 0, Mux(tgt, clamp(ftm), clamp(ftl))), tw, name="w5_base")
        tf5 = reg(m, tf4)
        wctx = [reg(m, c) for c in wctx]
        v5, b5, eb5, bad5 = wctx
        # W6: commit to the bank
        with m.If(v5):
            m.d.comb += [set_ready.bit_select(b5, 1).eq(1), set_drop.bit_select(b5, 1).eq(bad5)]
            m.d.sync += [b_base[b5].eq(base5), b_tf[b5].eq(tf5), b_eb[b5].eq(eb5 + 24),
                         b_s0e[b5].eq((base5 >> mb) + eb5 + 24)]

        # ---------------------------------------------------------------- 2. evaluation
        # issue control from registers only: the candidate bank (binary and one-hot) and the
        # last-beat flag are kept as state, so "start the next group" is one lookup of the ready
        # vector, not an adder, a compare and a variable bit select in series
        ebank = Signal(bbw)              # bank being issued
        ebeat = Signal(btw)
        eiss = Signal()                  # issuing a group
        elast = Signal()                 # issuing its last beat
        ecand = Signal(bbw)              # next bank to issue
        ecand_oh = Signal(NBANK, init=1)
        emoved = Signal()
        e_can = (~eiss | elast) & self._cand_bit(m, ready, ecand_oh, emoved, "erdy")
        e_start = e_can & ~self._cand_bit(m, drop, ecand_oh, emoved, "edrop")
        m.d.sync += emoved.eq(e_can)
        with m.If(elast):
            m.d.sync += [eiss.eq(0), ebeat.eq(0), elast.eq(0)]
        with m.Elif(eiss):
            m.d.sync += [ebeat.eq(ebeat + 1), elast.eq(ebeat == BEATS - 2)]
        with m.If(e_can):
            m.d.comb += clr_ready.eq(ecand_oh)
            m.d.sync += [ecand.eq(ecand + 1), ecand_oh.eq(ecand_oh.rotate_left(1))]
            with m.If(e_start):
                m.d.sync += [eiss.eq(1), ebeat.eq(0), ebank.eq(ecand), elast.eq(BEATS == 1)]
            with m.Else():          # refused group: no pass, straight to the packer (which drops it)
                m.d.comb += set_dec_e.eq(ecand_oh)
        m.d.comb += rd_e.addr.eq(addr(ebank, ebeat))
        ev = [eiss, ebeat == 0, elast, ebank]           # valid, first, last, bank
        ev = [reg(m, c) for c in ev]                                  # E1: data out of the RAM
        e_bank1 = ev[3]
        fronts = [self._front(m, rd_e.data[16 * q: 16 * q + 16], b_s0e[e_bank1], f"e{q}") for q in range(P)]
        ev = [reg(m, c) for c in ev]                                  # E2
        ev = [reg(m, c) for c in ev]                                  # E3
        ev = [reg(m, c) for c in ev]                                  # E3b
        # the window's first step code of this bank, looked up one stage ahead of its use
        f0 = reg(m, b_base[ev[3]][:mb] if mb else Const(0, 1), max(mb, 1), name="e4_f0")
        ev = [reg(m, c) for c in ev]                                  # E4
        ev = [reg(m, c) for c in ev]                                  # E5: u registered
        etabs = sorted({self.tab_of[i] for i in self.huff})
        bits = {}                                                      # (c, k) -> list over values
        for c in range(C):
            fc = f0 + c
            kc = reg(m, (fc >> mb) if mb else Const(c, _bl(C)), max(_bl(self.kmax), 1), name=f"e_k{c}")
            Rc = reg(m, Array(Const(r, self.rw) for r in self.R)[fc[:mb]] if mb else Const(self.R[0], self.rw),
                     self.rw, name=f"e_R{c}")
            for q in range(P):
                u, sg, _ = fronts[q]
                res, _, _ = self._quant(m, u, sg, kc[:max(_bl(self.kmax), 1)], Rc, etabs, f"e{q}c{c}")
                for i in self.huff:
                    sym, esc = res[self.tab_of[i]]
                    ss = self.tabs[self.tab_of[i]][1]
                    ln = Array(Const(int(cb.lengths[i, v]), 4) for v in ss)[sym]
                    if cb.has_esc(i):
                        ln = Mux(esc, int(cb.lengths[i, cb.esc]) + cb.esc_bits, ln)
                    bits.setdefault((c, i), []).append(reg(m, ln, _bl(self.iw), name=f"e{q}c{c}k{i}_b"))
        for _ in range(10):                                            # E4 -> E14 (Q3..Q8, bits)
            ev = [reg(m, c) for c in ev]
        bw = _bl(G * self.iw) + 1
        sums = {key: reg(m, self._tree(v, lambda a, b: a + b), bw, name=f"e_sum{key[0]}_{key[1]}")
                for key, v in bits.items()}
        ev = [reg(m, c) for c in ev]                                   # E10: accumulate
        e_v, e_f, e_l, e_b = ev
        tot = {}
        for key, s in sums.items():
            acc = Signal(bw, name=f"e_acc{key[0]}_{key[1]}")
            nacc = Mux(e_f, 0, acc) + s
            with m.If(e_v):
                m.d.sync += acc.eq(nacc)
            tot[key] = reg(m, nacc, bw, name=f"e_tot{key[0]}_{key[1]}")
        d_v, d_b = reg(m, e_v & e_l, 1, name="d0_v"), reg(m, e_b)
        # D1: fits, and every pairwise "fewer bits" between the Huffman codebooks of a candidate
        room = NBITS - self.hdr
        fit = {key: reg(m, t <= room, 1) for key, t in tot.items()}
        lt = {(c, i, j): reg(m, tot[(c, i)] < tot[(c, j)], 1)
              for c in range(C) for i in self.huff for j in self.huff if i != j}
        d_v, d_b = reg(m, d_v), reg(m, d_b)
        # D2: per candidate, the fitting codebook with the fewest bits (ties: lower index): no carry chain
        anyc, kbc = [], []
        for c in range(C):
            best_k = Const(0, max(_bl(K - 1), 1))
            for i in self.huff:
                win = fit[(c, i)]
                for j in self.huff:
                    if j < i:
                        win = win & (~fit[(c, j)] | lt[(c, i, j)])      # strictly fewer than a lower index
                    elif j > i:
                        win = win & (~fit[(c, j)] | ~lt[(c, j, i)])     # not more than a higher index
                best_k = best_k | Mux(win, i, 0)
            anyc.append(reg(m, Cat(*[fit[(c, i)] for i in self.huff]).any(), 1, name=f"d2_any{c}"))
            kbc.append(reg(m, best_k, max(_bl(K - 1), 1), name=f"d2_k{c}"))
        d_v, d_b = reg(m, d_v), reg(m, d_b)
        # D3: first candidate in groups of 4, D4: first group
        grp = [list(range(g0, min(g0 + 4, C))) for g0 in range(0, C, 4)]
        g_any, g_c, g_k = [], [], []
        for gi, cs_ in enumerate(grp):
            a_, c_, k_ = Const(0, 1), Const(0, _bl(C)), Const(0, max(_bl(K - 1), 1))
            for c in reversed(cs_):
                a_ = Mux(anyc[c], 1, a_)
                c_ = Mux(anyc[c], c, c_)
                k_ = Mux(anyc[c], kbc[c], k_)
            g_any.append(reg(m, a_, 1, name=f"d3_a{gi}"))
            g_c.append(reg(m, c_, _bl(C), name=f"d3_c{gi}"))
            g_k.append(reg(m, k_, max(_bl(K - 1), 1), name=f"d3_k{gi}"))
        # this bank's window base, fallback step and exponent bias, read one stage ahead
        base_d, tf_d = reg(m, b_base[d_b], tw, name="d3_base"), reg(m, b_tf[d_b], tw, name="d3_tf")
        eb_d = reg(m, b_eb[d_b], signed(10), name="d3_eb")
        d_v, d_b = reg(m, d_v), reg(m, d_b)
        f_any, f_c, f_k = Const(0, 1), Const(0, _bl(C)), Const(0, max(_bl(K - 1), 1))
        for gi in reversed(range(len(grp))):
            f_any = Mux(g_any[gi], 1, f_any)
            f_c = Mux(g_any[gi], g_c[gi], f_c)
            f_k = Mux(g_any[gi], g_k[gi], f_k)
        sel4 = reg(m, Mux(f_any, f_k, self.fb), range(K), name="d4_sel")
        t4 = reg(m, Mux(f_any, base_d + f_c, tf_d), tw, name="d4_t")
        eb4 = reg(m, eb_d)
        d_v, d_b = reg(m, d_v), reg(m, d_b)
        # D5: step parameters of the packer, commit
        with m.If(d_v):
            m.d.comb += set_dec.bit_select(d_b, 1).eq(1)
            m.d.sync += [b_sel[d_b].eq(sel4), b_t[d_b].eq(t4), b_s0p[d_b].eq((t4 >> mb) + eb4),
                         b_R[d_b].eq(Array(Const(r, self.rw) for r in self.R)[t4[:mb]] if mb else self.R[0])]

        # ---------------------------------------------------------------- 3. packing
        pbank = Signal(bbw)
        pbeat = Signal(btw)
        piss = Signal()
        inflight = Signal(range(self.nslot + 1))
        ocount = Signal(range(self.nslot + 1))
        pslot = Signal(max(self.nslot - 1, 1).bit_length())          # next block's output slot
        pslot_cur = Signal(max(self.nslot - 1, 1).bit_length())
        plast = Signal()
        pcand = Signal(bbw)
        pcand_oh = Signal(NBANK, init=1)
        pmoved = Signal()
        p_dec = (~piss | plast) & self._cand_bit(m, decided, pcand_oh, pmoved, "pdec")
        p_dropc = self._cand_bit(m, drop, pcand_oh, pmoved, "pdrop")
        p_drop = p_dec & p_dropc
        fin = Signal()
        emit_done = Signal()
        credit = (ocount + inflight) < self.nslot
        p_start = p_dec & ~p_dropc & credit
        with m.If(plast):
            m.d.sync += [piss.eq(0), pbeat.eq(0), plast.eq(0)]
        with m.Elif(piss):
            m.d.sync += [pbeat.eq(pbeat + 1), plast.eq(pbeat == BEATS - 2)]
        m.d.sync += pmoved.eq(p_drop | p_start)
        with m.If(p_drop | p_start):
            m.d.comb += clr_dec.eq(pcand_oh)
            m.d.sync += [pcand.eq(pcand + 1), pcand_oh.eq(pcand_oh.rotate_left(1))]
        with m.If(p_drop):
            m.d.comb += clr_busy_p.eq(pcand_oh)
            m.d.sync += [self.error.eq(1), self.count_dropped.eq(self.count_dropped + 1)]
        with m.Elif(p_start):
            m.d.sync += [piss.eq(1), pbeat.eq(0), pbank.eq(pcand), plast.eq(BEATS == 1), pslot_cur.eq(pslot),
                         pslot.eq(Mux(pslot == self.nslot - 1, 0, pslot + 1))]
        m.d.sync += inflight.eq(inflight + (p_start & ~p_drop) - fin)
        m.d.comb += rd_p.addr.eq(addr(pbank, pbeat))
        pv = [piss, pbeat == 0, plast, pbank, pslot_cur]
        pv = [reg(m, c) for c in pv]
        pfr = [self._front(m, rd_p.data[16 * q: 16 * q + 16], b_s0p[pv[3]], f"p{q}") for q in range(P)]
        pv = [reg(m, reg(m, reg(m, reg(m, c)))) for c in pv]
        psel = reg(m, b_sel[pv[3]], range(K), name="p_sel")
        pR = reg(m, b_R[pv[3]], self.rw, name="p_R")
        pt = reg(m, b_t[pv[3]], tw, name="p_t")
        # the bank's last read (data and state) is behind: free it now, not when the block is done
        m.d.comb += clr_busy.eq(reg(m, Mux(pv[0] & pv[2], Const(1, NBANK) << pv[3], 0), NBANK, name="p_free"))
        pv = [reg(m, c) for c in pv]
        # header fields and the fallback flag travel with the block
        pv.append(Cat(psel[:p.selbits(K)] if p.selbits(K) else Const(0, 0), (pt >> mb)[:p.ebits],
                      pt[:mb] if mb else Const(0, 0)))
        pv.append(psel == self.fb)
        ptabs = sorted(set(self.tab_of))
        pres = [self._quant(m, u, sg, Const(0, 1), pR, ptabs, f"p{q}") for q, (u, sg, _) in enumerate(pfr)]
        for _ in range(9):
            pv = [reg(m, c) for c in pv]
            psel = reg(m, psel)
        # P11: code, length, escape flag and raw field of every codebook (table lookups, registered);
        # P12: the escape item and the chosen codebook's item (two mux levels)
        items, ilens, escs = [], [], []
        iwl = _bl(self.iw)
        for q in range(P):
            res, r8, _ = pres[q]
            draw = reg(m, r8[:cb.esc_bits], max(cb.esc_bits, 1), name=f"p11_raw{q}") if cb.esc_bits else None
            it_k, ln_k, es_k = [], [], []
            for i in range(K):
                sym, esc = res[self.tab_of[i]]          # index in the sorted table: compose the lookups
                ss = self.tabs[self.tab_of[i]][1]
                code = self._rom(m, [self.rcode[i][v] for v in ss], sym, max(cb.max_len, 1), f"p_code{q}_{i}")
                ln = self._rom(m, [int(cb.lengths[i, v]) for v in ss], sym, iwl, f"p_ln{q}_{i}")
                if cb.has_esc(i):
                    le = int(cb.lengths[i, cb.esc])
                    esc = reg(m, esc, 1, name=f"p_esc{q}_{i}")
                    code = Mux(esc, Const(self.rcode[i][cb.esc], max(cb.max_len, 1)) | (draw << le), code)
                    ln = Mux(esc, le + cb.esc_bits, ln)
                    es_k.append(esc)
                else:
                    es_k.append(Const(0, 1))
                it_k.append(code)
                ln_k.append(ln)
            sel_r = reg(m, psel)
            items.append(reg(m, Array(it_k)[sel_r], self.iw, name=f"p12_it{q}"))
            ilens.append(reg(m, Array(ln_k)[sel_r], iwl, name=f"p12_ln{q}"))
            escs.append(reg(m, Array(es_k)[sel_r], 1))
        pv = [reg(m, reg(m, c)) for c in pv]
        # P10..: per lane, concatenate its P/L items pairwise (one registered level per halving)
        nesc = Signal(_bl(P) + 1)
        m.d.comb += nesc.eq(self._tree([e.as_unsigned() for e in escs], lambda a, b: a + b))
        lanes = []
        for ln_i in range(L):
            parts = [(items[q], ilens[q], self.iw) for q in range(ln_i, P, L)]
            lvl = 0
            while len(parts) > 1:
                lvl += 1
                nparts = []
                for i in range(0, len(parts) - 1, 2):
                    (a, la, wa), (b, lb, wb_) = parts[i], parts[i + 1]
                    w = wa + wb_
                    cat = Signal(w)
                    m.d.comb += cat.eq(a | self._shl(m, b, la, w))
                    nparts.append((reg(m, cat, w), reg(m, la + lb, _bl(w)), w))
                if len(parts) % 2:
                    a, la, wa = parts[-1]
                    nparts.append((reg(m, a), reg(m, la), wa))
                parts = nparts
            lanes.append(parts[0])
        nlvl = max(((P // L) - 1).bit_length(), 0)
        for _ in range(nlvl):
            pv = [reg(m, c) for c in pv]
            nesc = reg(m, nesc)
        # X0..X5: per lane a two-word gearbox into lane-word RAMs (see "Packer back end" above)
        p_v, p_f, p_l, _, p_s, p_hdr, p_fb = pv
        LW, NW, NSLOT = self.lw, self.nw, self.nslot
        lwb = LW.bit_length() - 1
        HD = -(-NW // 2)                    # lane words per slot in each (even/odd) bank
        hb = max(HD - 1, 1).bit_length()
        posw = _bl(NW * LW + LW)
        sw = max(NSLOT - 1, 1).bit_length()
        iwd = _bl(NW)                       # word indices 0..NW (NW: past the block, never written)
        pad = NW * LW - NBITS               # lane 1 starts here: the padded block is its bit reversal
        ctxs = [[p_v, p_f, p_l, p_s]]
        for _ in range(6):
            ctxs.append([reg(m, c) for c in ctxs[-1]])

        def ctx_at(k):
            return ctxs[k]
        lane_out = []
        for ln_i, (chunk, clen, cw) in enumerate(lanes):
            start = self.hdr if ln_i == 0 else pad
            # X0: running bit position (the only loop: an adder and a 2:1 mux)
            pos = Signal(posw, name=f"pos{ln_i}")
            cur = Mux(p_f, start, pos)
            with m.If(p_v):
                m.d.sync += pos.eq(cur + clen)
            ch1 = reg(m, chunk, cw, name=f"x1_ch{ln_i}")
            o1 = reg(m, cur[:lwb], lwb, name=f"x1_o{ln_i}")
            w1 = reg(m, cur[lwb:], posw - lwb, name=f"x1_w{ln_i}")
            # X1: shift by the offset's low 3 bits; X2: by whole bytes (the chunk lands in 2 words)
            sa = reg(m, self._shl(m, ch1, o1[:3], cw + 7), cw + 7, name=f"x2_sa{ln_i}")
            o2, w2 = reg(m, o1[3:], lwb - 3, name=f"x2_o{ln_i}"), reg(m, w1, name=f"x2_w{ln_i}")
            sv = reg(m, self._shl(m, sa, Cat(Const(0, 3), o2), 2 * LW), 2 * LW, name=f"x3_sv{ln_i}")
            # the previous chunk's word of this lane: did the chunk open a new word?
            wprev = Signal(posw - lwb, name=f"x2_wprev{ln_i}")
            x2_v, x2_f = ctx_at(2)[0], ctx_at(2)[1]
            with m.If(x2_v):
                m.d.sync += wprev.eq(w2)
            w3 = reg(m, w2, name=f"x3_w{ln_i}")
            adv3 = reg(m, w2 != wprev, 1, name=f"x3_adv{ln_i}")
            f3 = reg(m, x2_f, 1, name=f"x3_f{ln_i}")
            # X3: the two words by parity (word w -> even or odd register), clears, word indices
            par = w3[0]
            lo, hi = sv[:LW], sv[LW:]
            pe = reg(m, Mux(par, hi, lo), LW, name=f"x4_pe{ln_i}")
            po = reg(m, Mux(par, lo, hi), LW, name=f"x4_po{ln_i}")
            ce = reg(m, f3 | (adv3 & par), 1, name=f"x4_ce{ln_i}")        # first, or the even word completed
            co = reg(m, f3 | (adv3 & ~par), 1, name=f"x4_co{ln_i}")
            wn = w3[:iwd] + 1
            ie = reg(m, Mux(par, wn, w3[:iwd]), iwd, name=f"x4_ie{ln_i}")
            io = reg(m, Mux(par, w3[:iwd], wn), iwd, name=f"x4_io{ln_i}")
            # X4: OR into the word registers (fresh word: cleared); X5: write both to the lane RAMs
            x4_v = ctx_at(4)[0]
            re_, ro_ = Signal(LW, name=f"x5_re{ln_i}"), Signal(LW, name=f"x5_ro{ln_i}")
            with m.If(x4_v):
                m.d.sync += [re_.eq(Mux(ce, 0, re_) | pe), ro_.eq(Mux(co, 0, ro_) | po)]
            ie5, io5 = reg(m, ie, name=f"x5_ie{ln_i}"), reg(m, io, name=f"x5_io{ln_i}")
            end5 = reg(m, Mux(ie > io, ie, io), iwd, name=f"x5_end{ln_i}")     # last word this chunk touched
            x5_v, _, _, x5_s = ctx_at(5)
            banks = []
            for par_i, (rr, ii) in enumerate(((re_, ie5), (ro_, io5))):
                mem_l = Memory(shape=unsigned(LW), depth=NSLOT << hb if HD > 1 else NSLOT, init=[])
                m.submodules[f"lane{ln_i}_{'eo'[par_i]}"] = mem_l
                wp = mem_l.write_port()
                m.d.comb += [wp.addr.eq(Cat(ii[1:1 + hb], x5_s[:sw]) if HD > 1 else x5_s[:sw]), wp.data.eq(rr),
                             wp.en.eq(x5_v & (ii < NW))]
                banks.append(mem_l.read_port())
            lane_out.append((banks, end5))
        esc_acc = Signal(range(G + 1))
        e1 = reg(m, nesc)
        x1_v, x1_f = ctx_at(1)[0], ctx_at(1)[1]
        n_esc = Mux(x1_f, 0, esc_acc) + e1
        with m.If(x1_v):
            m.d.sync += esc_acc.eq(n_esc)
        esc_6 = reg(m, n_esc, range(G + 1), name="x2_esc")             # the block's count, piped to X6
        for _ in range(4):
            esc_6 = reg(m, esc_6)
        hdr_5, fb_6 = p_hdr, p_fb
        for _ in range(5):
            hdr_5, fb_6 = reg(m, hdr_5), reg(m, fb_6)
        fb_6 = reg(m, fb_6)
        x5_v, _, x5_l, x5_s = ctx_at(5)
        # X6: the block is in its slot: per-slot header and lane ends, counters
        slot_hdr = Array(Signal(self.hdr, name=f"slot_hdr{i}") for i in range(NSLOT))
        slot_end = [Array(Signal(iwd, name=f"slot_end{ln_i}_{i}") for i in range(NSLOT)) for ln_i in range(L)]
        fin_v = reg(m, x5_v & x5_l, 1, name="fin_v")
        m.d.comb += fin.eq(fin_v)
        with m.If(x5_v & x5_l):
            m.d.sync += [slot_hdr[x5_s].eq(hdr_5)]
            m.d.sync += [slot_end[ln_i][x5_s].eq(end5) for ln_i, (_, end5) in enumerate(lane_out)]
        with m.If(fin_v):
            m.d.sync += [self.count_blocks.eq(self.count_blocks + 1),
                         self.count_fallback.eq(self.count_fallback + fb_6),
                         self.count_escapes.eq(self.count_escapes + esc_6)]
        m.d.sync += ocount.eq(ocount + fin_v - emit_done)

        # ---------------------------------------------------------------- 4. output words
        # O0: read address from counters (slot, lane-0 word i, lane-1 word NW-1-i); O1: RAM data;
        # O2: parity select, masks, lane-1 bit reversal, header OR; O3 (W < LW): the W-bit slice;
        # then an output FIFO with credits (no backpressure path into the pipeline)
        W = cfg.bus_bits
        NWB = cfg.words_per_block
        SUB = LW // W
        DEPTH = 6
        fifo = SyncFIFOBuffered(width=W + 1, depth=DEPTH)
        m.submodules.ofifo = fifo
        oslot = Signal(sw)
        ok = Signal(range(NWB))
        oi = Signal(max(NW - 1, 1).bit_length())                 # lane-0 word of output word ok
        oj = Signal(max(NW - 1, 1).bit_length(), init=NW - 1)    # lane-1 word (reversed order)
        osub = Signal(range(max(SUB, 2)))
        pending = Signal(range(DEPTH + 1))
        issue = Signal()
        m.d.comb += issue.eq((ocount != 0) & ((fifo.level + pending) < DEPTH))
        wr_o = Signal()
        m.d.sync += pending.eq(pending + issue - wr_o)
        with m.If(issue):
            with m.If(ok == NWB - 1):
                m.d.sync += [ok.eq(0), oi.eq(0), oj.eq(NW - 1), osub.eq(0),
                             oslot.eq(Mux(oslot == NSLOT - 1, 0, oslot + 1))]
                m.d.comb += emit_done.eq(1)
            with m.Else():
                m.d.sync += ok.eq(ok + 1)
                if SUB > 1:
                    with m.If(osub == SUB - 1):
                        m.d.sync += [osub.eq(0), oi.eq(oi + 1), oj.eq(oj - 1)]
                    with m.Else():
                        m.d.sync += osub.eq(osub + 1)
                else:
                    m.d.sync += [oi.eq(oi + 1), oj.eq(oj - 1)]
        for ln_i, (banks, _) in enumerate(lane_out):
            wi = oi if ln_i == 0 else oj
            for rp in banks:
                m.d.comb += rp.addr.eq(Cat(wi[1:1 + hb], oslot) if HD > 1 else oslot)
        o1_v = reg(m, issue, 1, name="o1_v")
        o1_l = reg(m, issue & (ok == NWB - 1), 1, name="o1_l")
        o1_h = reg(m, Mux(oi == 0, slot_hdr[oslot], 0), self.hdr, name="o1_h")
        o1_sub = reg(m, osub, name="o1_sub")
        o1_m = [reg(m, (oi, oj)[ln_i] <= slot_end[ln_i][oslot], 1, name=f"o1_m{ln_i}") for ln_i in range(L)]
        o1_p = [reg(m, (oi, oj)[ln_i][0], 1, name=f"o1_p{ln_i}") for ln_i in range(L)]
        word = Const(0, LW) | o1_h
        for ln_i, (banks, _) in enumerate(lane_out):
            lw_ = Mux(o1_m[ln_i], Mux(o1_p[ln_i], banks[1].data, banks[0].data), 0)
            word = word | (lw_ if ln_i == 0 else Cat(*[lw_[LW - 1 - k] for k in range(LW)]))
        o2_d = reg(m, word, LW, name="o2_d")
        o2_v, o2_l, o2_sub = reg(m, o1_v), reg(m, o1_l), reg(m, o1_sub)
        if SUB > 1:
            o3_d = reg(m, Array(o2_d[W * i: W * (i + 1)] for i in range(SUB))[o2_sub], W, name="o3_d")
            o3_v, o3_l = reg(m, o2_v), reg(m, o2_l)
        else:
            o3_d, o3_v, o3_l = o2_d, o2_v, o2_l
        m.d.comb += [fifo.w_data.eq(Cat(o3_d, o3_l)), fifo.w_en.eq(o3_v), wr_o.eq(o3_v),
                     self.o_words.valid.eq(fifo.r_rdy), self.o_words.payload.data.eq(fifo.r_data[:W]),
                     self.o_words.payload.last.eq(fifo.r_data[W]), fifo.r_en.eq(self.o_words.ready)]
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
             header_bits=comp.hdr, lane_word_bits=comp.lw, banks=comp.nbank, block_slots=comp.nslot,
             lengths=comp.codebooks.lengths.tolist(),
             centroids=comp.codebooks.centroids.tolist())
    return d
