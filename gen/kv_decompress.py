"""KVDecompressor: fixed-size entropy-coded KV blocks in, FP16 values out (issue 4, section 2).

Hardware twin of :func:`sparsefab.compress.kv.decode_blocks` (format: docs/FORMATS_KV.md),
bit-exact including the final FP16 rounding.

Architecture
------------
* **Load**: a block arrives as ``ceil(block_bytes*8 / bus_bits)`` little-endian words on
  ``i_words`` into an input buffer; the next block loads while the current one decodes.
* **Decode** (``group / values_per_cycle`` cycles per block, no per-block overhead): the block
  has 1 or 2 lanes (docs section 3.3); lane 0 reads the block forward from the end of the
  header, lane 1 backward from the last bit, so both run in parallel without pointers.  Each
  lane decodes ``spl = values_per_cycle / lanes`` symbols per cycle.  Three decoders are
  generated (``decoder=``; ``"auto"``, the default, is ``"walk"`` where the geometry allows it):

  - ``"walk"`` (spl = 4, esc_bits >= max_len; the default geometry): the bit-pointer loop is
    ONE table lookup, ``p <- nxt4[p]``.  A front end ("Phase A") computes, for every bit offset
    ``o`` of each lane, ``R = walk_chunk`` offsets per cycle while the block is still waiting:
    the code length ``tot[o]`` (escape included) read from a block-RAM table indexed by
    {codebook, the next ``max_len`` bits} (``R + symbol_bits`` lookups per lane and cycle, two
    per DP16KD; the table is written through ``i_cfg``, see :func:`tot_table_words`), then by
    pointer doubling ``rel2[o] = tot[o] + tot[o + tot[o]]`` and
    ``nxt4[o] = o + rel2[o] + rel2[o + rel2[o]]`` (saturated at ``R*chunks - 1 > room``, so a
    lane running past its region stays past it).  The records of each chunk (``nxt4[o]`` and
    ``o mod R + tot[o]``, the next symbol's start within o's chunk) go into LUT RAM with two
    halves (the block being walked, the next one).  A second walker
    per lane, ``q <- nxt4[q]`` from ``q = rel2[0]``, stays two symbols ahead of ``p`` (``q =
    nxt2[p]``), so the four symbol starts of a beat are ``p``, ``p + tot[p]``, ``q`` and
    ``q + tot[q]`` and no third pointer-doubling table is needed.  The walk reads the records
    (stalling only if Phase A has not reached ``q``'s chunk yet), and a pipeline behind it cuts
    the 4 symbol windows out of the block; the code length of each symbol is the difference of
    two starts (longer than max_len = an escape), so the rank needs no comparator; the starts
    are kept relative to the chunk starts of p and q, so they come out of the record lookups
    without an adder;
  - ``"chain"``: the ``spl`` canonical decodes of a cycle are chained (each one's length
    positions the next);
  - ``"spec"``: speculative decoding: the code length (escape included) is computed at every
    bit offset of the lane's window in parallel, then the ``spl`` symbol starts are picked by
    a short chain of multiplexers, and symbols are decoded at those offsets.

  A canonical decode compares the next ``max_len`` bits (first bit = MSB) with the
  left-justified limit of every code length (``lim[l]``): the length is the smallest ``l``
  with ``window < lim[l]``, the canonical rank is ``(window >> (max_len-l)) + off[l]``; the
  escape code is recognised by its length and value.  These per-codebook tables are written
  through ``i_cfg`` (see :func:`config_words`), so one bitstream serves any trained codebooks.
* **Dequantize**: rank -> centroid (or the escape's raw bits), ``+ o * unit_per_step``,
  ``* (2**mbits + f)``, then an exact round-to-nearest-even conversion of ``p * 2**(e+ebias)`` to
  FP16 (subnormals, overflow to Inf): 4 pipeline stages for chain/spec; for walk 5 (sign and
  magnitude from the table, product, leading one and shift amount, shift with round/sticky bits,
  exponent add and Inf), plus one when ``obits > 0``.
* **Stalls (walk)**: nothing behind the walk has a stall enable.  The last stage writes an
  ``OUT_FIFO_DEPTH``-entry output FIFO (LUT RAM) whose head drives ``o_values``; the walk issues a
  beat only while the beats in flight plus those in the FIFO leave room for it (a credit
  counter), so backpressure stops the walk alone and no enable fans out to the ~10k pipeline
  flip-flops (a net spread over the whole chip).  The walk's own enable is an AND of registers
  (its half owned, its record count, the output room: each loaded from next-state logic) and the
  lanes' ``q`` compares, computed once per walker register copy; Phase A's start is likewise a
  register loaded with its next value.  chain/spec keep a global pipeline enable.

Ports
-----
i_words : In(stream.Signature(unsigned(bus_bits)))
    Block words; word ``j`` of a block carries block bits ``[j*bus_bits, (j+1)*bus_bits)``
    (bits past ``8*block_bytes`` are ignored).  Blocks back to back.
i_cfg : In(stream.Signature(StructLayout({"addr": 12, "data": 16})))
    Table writes (codebook ``k`` at ``k*64 + ...``; walk: the code-length table at
    ``CFG_TOT + (k << max_len) + window``), see :func:`config_words`.  Write while idle.
ebias : In(signed(8))
    Exponent bias of the tensor (file header).
o_values : Out(stream.Signature(StructLayout({"data": ArrayLayout(16, V), "last": 1, "error": 1})))
    ``V = values_per_cycle`` FP16 bit patterns per beat: beat ``j`` of a block carries values
    ``V*j .. V*j+V-1``; ``last`` on the block's final beat, where ``error`` = 1 marks a
    malformed block (its values are meaningless, the stream never stalls on it).
error : Out(1)
    Sticky: some block was malformed (selector >= K, a bit pattern that is no code, or lanes
    overlapping / running past the block).  Cleared by reset.
count_blocks, count_errors, count_decode_cycles, count_stall_cycles : Out(32)
    Blocks decoded, malformed blocks, cycles the decoder advanced, cycles it waited on the
    output (backpressure; walk: cycles with a block and no output credit).

Latency (``config.latency_last``, measured by tests/test_kv_decompress.py): a block's last
word is accepted at cycle 0; with the output never stalled its last beat is valid at cycle
``5 + group/values_per_cycle`` (21) for chain/spec and ``14 + a3 + group/values_per_cycle``
(a3 = ``walk_lookahead[1]``; 32 for the defaults: first beat at 17) for walk, plus one when
``obits > 0``.  Sustained
rate: ``values_per_cycle`` for all three (walk: unless a lane's first symbols are so long that the walk overtakes Phase A, which
costs a stall cycle; the rate is measured on real data by the ``kv`` bench).

ECP5-85F (default walk geometry in the board harness, yosys ``synth_ecp5``, ccd97ef): 37,571 LUT4
+ 1,552 CCU2C + 993 TRELLIS_DPR16X4, 12,213 FF, 50 DP16KD, 8 MULT18X18D (48,063 of 83,640 cells,
57 %; 92380fb: 37,301 LUT4, 11,571 FF; aa3ca38: 37,861 LUT4, 100 DP16KD).
The code-length tables take one DP16KD per two offsets: their read ports are asynchronous with a
register behind (Yosys folds it into the block RAM and shares port A with the table write).  The
walk loop's offset selection is a 32:1 tree of 2:1 multiplexers per half-table (the half chosen
after it), addressed by register copies of p and q (copy 1 stored inverted: half 0's rows are
written at inverted chunks, so no inverter sits before the LUT RAM address).

Timing: placement estimates (nextpnr-ecp5 0.11.1, seed 1, ``--no-route``, the flow's own
options), critical paths named from the placed SDF by ``scripts/sdf_paths.py``:

- aa3ca38: 64.47 MHz; q1 -> ready compare (carry chain) -> walk enable -> t / p1 (15.5 ns);
- 92380fb (008c113's register copies and 50-DP16KD tables): 53.55 MHz; occ -> output room / half
  owned -> walk enable -> q1 (18.7 ns, 15.5 ns of it nets): the copies tripled the flip-flops the
  enable reaches; next paths out_fifo level (60.27), Phase A start -> shift registers (68.52);
- ccd97ef (enable from registers, one per copy; registered Phase A start; FIFO without full
  gating; chunk-relative symbol starts; registered table selections): 63.62 MHz; q0_c1 -> chunk
  compare (CCU2C) -> walk enable -> q1_c1 (15.7 ns, 11.3 ns nets);
- 05fb053 (ready as a registered thermometer code selected by the q copies; 6 enables, one per
  copy and lane): 53.32 MHz, q1_c2 -> 16:1 ready selection (4 LUT levels) -> enable -> q1_c2 CE
  (18.8 ns): worse, reverted.  The code here is ccd97ef plus a one-hot input word slot (2c0ef46).

The walk loop alone (copy -> LUT RAM -> 32:1 tree -> half -> copy) placed at 11.7-15.1 ns (85-66
MHz) in these runs, and the enable gathers both lanes' q and reaches both lanes' registers (two
long nets).  100 MHz is not met; it needs a walk that takes two cycles per step (e.g. nxt8 records
and two interleaved walkers: one more pointer-doubling stage in Phase A) or lanes that stall
independently.  Routed: not measured.

Size by stage (2:1 multiplexer bits of the ``_mux_tree`` calls, a proxy of LUT4 = about 0.6 per
bit): Phase A stage 3 (the 37:1 selection of rel2, 64 offsets/cycle) 13,824; stage 2 (19:1 of
tot) 5,760; B1 centroid by rank 3,128; the walk loop's offset selection 2,232; D1 record
selection 620.  The coarse windows (D1) and symbol windows (D2) are shifters on top of these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sparsefab.compress import huffman
from sparsefab.compress.errors import SparsefabError

FORMAT_VERSION = 1
PIPE_STAGES = 4          # chain/spec: decode register -> centroid -> multiply -> fp16 stage 1 -> output
WALK_FRONT = 4           # walk: start, length decode, 2-symbol stage, 4-symbol stage over two cycles (+ lookahead)
WALK_BACK = 9            # walk: D0 walk state, D1 records, D2 windows, D3 rank, B1 magnitude, B2 product,
#                          B3 exponent, B4 rounding, output FIFO
OUT_FIFO_DEPTH = 16      # walk: output FIFO (LUT RAM, a power of 2); > beats in flight from the walk to the FIFO
CFG_ESC_LEN = 16
CFG_ESC_CODE = 17
CFG_LIM = 0
CFG_OFF = 8
CFG_TABLE = 32
CFG_TOT = 2048           # walk: code-length table, ``CFG_TOT + (k << max_len) + window``


@dataclass(frozen=True)
class KVDecompressConfig:
    """Frozen generator parameters (also written to the JSON sidecar).

    Geometry fields mirror :class:`sparsefab.compress.kv.KVParams` and the codebook shape;
    ``bus_bits`` (32 or 64) is the input word width; ``values_per_cycle`` (8 or 16) the
    output width; ``decoder`` "chain" or "spec".
    """

    group: int = 128
    block_bytes: int = 63
    lanes: int = 2
    ebits: int = 4
    mbits: int = 3
    obits: int = 0
    k: int = 4
    s: int = 24
    max_len: int = 8
    esc_bits: int = 10
    unit_per_step: int = 4
    bus_bits: int = 64
    values_per_cycle: int = 8
    decoder: str = "auto"

    def __post_init__(self):
        def bad(name, want):
            raise SparsefabError(f"KVDecompressor: {name}={getattr(self, name)!r}, expected {want}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name != "decoder" and (not isinstance(v, int) or isinstance(v, bool)):
                bad(f.name, "an integer")
        if self.lanes not in (1, 2):
            bad("lanes", "1 or 2 (the hardware decoder has no lane-pair pointers)")
        if self.values_per_cycle not in (8, 16) or self.values_per_cycle % self.lanes:
            bad("values_per_cycle", "8 or 16")
        if self.group % self.values_per_cycle or not 8 <= self.group <= 1024:
            bad("group", f"8..1024, a multiple of values_per_cycle={self.values_per_cycle}")
        if not 4 <= self.block_bytes <= 256:
            bad("block_bytes", "4..256")
        if self.bus_bits not in (32, 64):
            bad("bus_bits", "32 or 64")
        if not 1 <= self.ebits <= 6 or not 0 <= self.mbits <= 4 or not 0 <= self.obits <= 12:
            bad("ebits", "ebits 1..6, mbits 0..4, obits 0..12")
        if not 1 <= self.k <= 8 or not 2 <= self.s <= 64:
            bad("k", "K 1..8 and S 2..64")
        if not 1 <= self.max_len <= 8:
            bad("max_len", "1..8 (hardware window)")
        if self.esc_bits != 0 and not 2 <= self.esc_bits <= 16:
            bad("esc_bits", "0 or 2..16")
        if self.unit_per_step not in (1, 2, 4, 8, 16, 32, 64):
            bad("unit_per_step", "a power of two 1..64")
        if self.decoder not in ("auto", "walk", "chain", "spec"):
            bad("decoder", "'auto', 'walk', 'chain' or 'spec'")
        if self.header_bits >= self.nbits:
            bad("block_bytes", "room for lane data after the header")
        walk_ok = self._walk_problem() is None
        if self.decoder == "auto":
            object.__setattr__(self, "decoder", "walk" if walk_ok else "chain")
        elif self.decoder == "walk" and not walk_ok:
            bad("decoder", f"'chain' or 'spec' here: the walk decoder {self._walk_problem()}")

    def _walk_problem(self) -> str | None:
        if self.spl != 4:
            return f"decodes 4 symbols per lane per cycle (this geometry needs {self.spl})"
        if self.esc_bits and self.esc_bits < self.max_len:
            return f"needs esc_bits >= max_len (esc_bits={self.esc_bits}, max_len={self.max_len})"
        nch = self.walk_chunks
        if not 4 <= nch <= self.cycles_per_block:
            return f"needs 4..{self.cycles_per_block} table chunks per block (got {nch})"
        return None

    @property
    def walk_chunk(self) -> int:
        """Walk decoder: lane offsets whose tables are computed per cycle (a power of two)."""
        need = -(-(self.nbits - self.header_bits + 2) // self.cycles_per_block)
        return 1 << max(need - 1, 1).bit_length()

    @property
    def walk_chunks(self) -> int:
        """Walk decoder: table chunks per lane and block (positions up to ``chunk*chunks - 1``)."""
        return -(-(self.nbits - self.header_bits + 2) // self.walk_chunk)

    @property
    def walk_lookahead(self) -> tuple[int, int]:
        """Walk decoder: chunks read ahead by the 2-symbol and the 4-symbol table stages."""
        r, w = self.walk_chunk, self.symbol_bits
        return (r - 1 + w) // r, (r - 1 + 2 * w) // r

    @property
    def nbits(self) -> int:
        return 8 * self.block_bytes

    @property
    def selbits(self) -> int:
        return int(self.k - 1).bit_length()

    @property
    def header_bits(self) -> int:
        return self.selbits + self.ebits + self.mbits + self.obits

    @property
    def words_per_block(self) -> int:
        return -(-self.nbits // self.bus_bits)

    @property
    def spl(self) -> int:
        """Symbols per lane per cycle."""
        return self.values_per_cycle // self.lanes

    @property
    def cycles_per_block(self) -> int:
        return self.group // self.values_per_cycle

    @property
    def symbol_bits(self) -> int:
        return self.max_len + self.esc_bits

    @property
    def latency_last(self) -> int:
        """Cycles from a block's last input word to its last output beat (no stalls)."""
        if self.decoder == "walk":
            a3 = self.walk_lookahead[1]     # (the code-length RAM's output register replaces the a2 wait)
            return WALK_FRONT + 1 + a3 + WALK_BACK + (1 if self.obits else 0) + self.cycles_per_block
        return PIPE_STAGES + 1 + self.cycles_per_block

    @classmethod
    def from_codec(cls, params, cb, **kw) -> KVDecompressConfig:
        """Config for a :class:`~sparsefab.compress.kv.KVParams` + :class:`~sparsefab.compress.kv.Codebooks`."""
        return cls(group=params.group, block_bytes=params.block_bytes, lanes=params.lanes,
                   ebits=params.ebits, mbits=params.mbits, obits=params.obits, k=cb.k, s=cb.s,
                   max_len=cb.max_len, esc_bits=cb.esc_bits, unit_per_step=cb.unit_per_step, **kw)


def config_words(cb, cfg: KVDecompressConfig) -> list[tuple[int, int]]:
    """The ``(addr, data)`` writes that load codebooks ``cb`` into the decompressor.

    Codebook ``k`` at ``base = 64*k``: ``base + l - 1`` (l = 1..max_len) = left-justified limit
    ``lim[l]`` (9 bits); ``base + 8 + l - 1`` = rank offset ``off[l]`` (7-bit two's complement);
    ``base + 16`` = escape code length (0: none); ``base + 17`` = escape code value;
    ``base + 32 + r`` = centroid of the symbol of canonical rank ``r`` (16-bit two's complement).
    """
    if cb.k != cfg.k or cb.s != cfg.s or cb.max_len > cfg.max_len or cb.esc_bits != cfg.esc_bits:
        raise SparsefabError(f"codebooks K={cb.k} S={cb.s} max_len={cb.max_len} esc_bits={cb.esc_bits} "
                             f"do not match the decompressor ({cfg.k}, {cfg.s}, {cfg.max_len}, {cfg.esc_bits})")
    L = cfg.max_len
    out = []
    for k in range(cb.k):
        ln = cb.lengths[k]
        codes = huffman.canonical_codes(ln)
        order = [int(s) for s in sorted(range(cb.s), key=lambda s: (ln[s], s)) if ln[s] > 0]
        rank = {s: r for r, s in enumerate(order)}
        lim = 0
        for length in range(1, L + 1):
            syms = [s for s in order if ln[s] == length]
            if syms:
                first = int(codes[syms[0]])
                lim = (first + len(syms)) << (L - length)
                off = rank[syms[0]] - first
            else:
                off = 0
            out.append((64 * k + CFG_LIM + length - 1, lim))
            out.append((64 * k + CFG_OFF + length - 1, off & 0x7F))
        esc = cb.s - 1
        if cb.esc_bits and ln[esc] > 0:
            out.append((64 * k + CFG_ESC_LEN, int(ln[esc])))
            out.append((64 * k + CFG_ESC_CODE, int(codes[esc])))
        else:
            out.append((64 * k + CFG_ESC_LEN, 0))
            out.append((64 * k + CFG_ESC_CODE, 0))
        for r, s in enumerate(order):
            out.append((64 * k + CFG_TABLE + r, int(cb.centroids[k, s]) & 0xFFFF))
    if cfg.decoder == "walk":
        out += tot_table_words(cb, cfg)
    return out


def tot_table_words(cb, cfg: KVDecompressConfig) -> list[tuple[int, int]]:
    """The walk decoder's code-length table: ``(CFG_TOT + (k << max_len) + w, tot)`` for every
    codebook ``k`` and window ``w`` of ``max_len`` lane bits (first bit = MSB of ``w``): ``tot``
    is the length of the code ``w`` begins with, plus ``esc_bits`` for the escape code, 0 when
    ``w`` begins no code."""
    L = cfg.max_len
    w = np.arange(1 << L)
    out = []
    for k in range(cb.k):
        ln = np.asarray(cb.lengths[k], dtype=np.int64)
        codes = huffman.canonical_codes(ln)
        tot = np.zeros(1 << L, dtype=np.int64)
        for s in np.flatnonzero(ln):
            n = int(ln[s])
            hit = (w >> (L - n)) == int(codes[s])
            tot[hit] = n + (cfg.esc_bits if cfg.esc_bits and s == cb.s - 1 else 0)
        out += [(CFG_TOT + (k << L) + int(i), int(v)) for i, v in enumerate(tot)]
    return out


def _mux_tree(items, idx):
    """``items[idx]`` as a binary tree of 2:1 multiplexers on the bits of ``idx`` (0 past the
    end).  A one-hot ``Array`` selection decodes every index value separately (an equality
    comparator per item, then an AND-OR); the tree needs about ``len(items)`` 2:1 multiplexers
    per bit, which LUT4 + PFUMX cells pack well."""
    level = [Value.cast(v) for v in items]
    width = max(len(v) for v in level)
    nb = max((len(level) - 1).bit_length(), 1)
    level += [Const(0, width)] * ((1 << nb) - len(level))
    for b in range(nb):
        level = [Mux(idx[b], level[i + 1], level[i]) for i in range(0, len(level), 2)]
    return Mux(idx[nb:].any(), 0, level[0]) if len(idx) > nb else level[0]


def _fp16(m, p, k, pbits):
    """Combinational exact RNE conversion of ``p * 2**k`` (p signed, k signed) to FP16 bits."""
    sign = Signal(name="fp_sign")
    mag = Signal(pbits, name="fp_mag")
    m.d.comb += [sign.eq(p < 0), mag.eq(Mux(p < 0, -p, p))]
    msb = Signal(range(pbits + 1), name="fp_msb")
    for i in range(pbits):          # priority encoder: the last assignment wins
        with m.If(mag[i]):
            m.d.comb += msb.eq(i)
    return sign, mag, msb


def _fp16_finish(m, sign, mag, msb, k, pbits):
    ebiased = Signal(signed(12), name="fp_e")
    m.d.comb += ebiased.eq(msb + k + 15)
    normal = ebiased >= 1
    # right shift amount (negative = left shift)
    sh = Signal(signed(12), name="fp_sh")
    m.d.comb += sh.eq(Mux(normal, msb - 10, -(k + 24)))
    wide = pbits + 16
    q = Signal(wide, name="fp_q")
    with m.If(sh <= 0):
        m.d.comb += q.eq(mag << (-sh)[:5])
    with m.Elif(sh > pbits + 1):
        m.d.comb += q.eq(0)
    with m.Else():
        s5 = sh[:6]
        q0 = Signal(wide, name="fp_q0")
        rem = Signal(pbits, name="fp_rem")
        half = Signal(pbits + 1, name="fp_half")
        m.d.comb += [q0.eq(mag >> s5), rem.eq(mag & ((Const(1, pbits + 2) << s5) - 1)),
                     half.eq(Const(1, pbits + 1) << (s5 - 1).as_unsigned()[:6])]
        up = (rem > half) | ((rem == half) & q0[0])
        m.d.comb += q.eq(q0 + up)
    bits = Signal(wide + 12, name="fp_bits")
    m.d.comb += bits.eq(Mux(normal, ((ebiased - 1).as_unsigned() << 10)[:wide + 12] + q, q))
    out = Signal(16, name="fp_out")
    with m.If(mag == 0):
        m.d.comb += out.eq(0)
    with m.Elif(normal & (ebiased >= 31)):
        m.d.comb += out.eq(Cat(Const(0x7C00, 15), sign))
    with m.Elif(bits >= 0x7C00):
        m.d.comb += out.eq(Cat(Const(0x7C00, 15), sign))
    with m.Else():
        m.d.comb += out.eq(Cat(bits[:15], sign))
    return out


def cfg_layout() -> data.StructLayout:
    """Payload of ``i_cfg``."""
    return data.StructLayout({"addr": 12, "data": 16})


def out_layout(values_per_cycle: int) -> data.StructLayout:
    """Payload of ``o_values``."""
    return data.StructLayout({"data": data.ArrayLayout(unsigned(16), values_per_cycle), "last": 1, "error": 1})


class KVDecompressor(wiring.Component):
    """Entropy-coded KV blocks in, FP16 values out (see the module docstring for ports)."""

    def __init__(self, *, config: KVDecompressConfig | None = None, **kwargs):
        if config is None:
            config = KVDecompressConfig(**kwargs)
        elif kwargs:
            raise SparsefabError(f"KVDecompressor: give config= or keywords, not both ({sorted(kwargs)})")
        self._cfg = config
        V = config.values_per_cycle
        super().__init__({
            "i_words": In(stream.Signature(unsigned(config.bus_bits))),
            "i_cfg": In(stream.Signature(cfg_layout())),
            "ebias": In(signed(8)),
            "o_values": Out(stream.Signature(out_layout(V))),
            "error": Out(1),
            "count_blocks": Out(32),
            "count_errors": Out(32),
            "count_decode_cycles": Out(32),
            "count_stall_cycles": Out(32),
        })

    @property
    def config(self) -> KVDecompressConfig:
        return self._cfg

    def elaborate(self, platform):
        c = self._cfg
        m = Module()
        V, L, S, K = c.values_per_cycle, c.max_len, c.s, c.k
        N, H = c.nbits, c.header_bits
        room = N - H
        spl = c.spl
        symw = c.symbol_bits
        win = spl * symw + L                    # lane window: enough bits for spl symbols

        # ---- codebook tables (written through i_cfg)
        lim = [[Signal(L + 1, name=f"lim{k}_{li}") for li in range(L)] for k in range(K)]
        off = [[Signal(signed(7), name=f"off{k}_{li}") for li in range(L)] for k in range(K)]
        esc_len = [Signal(4, name=f"esclen{k}") for k in range(K)]
        esc_code = [Signal(L, name=f"esccode{k}") for k in range(K)]
        cent = [[Signal(signed(16), name=f"cent{k}_{r}") for r in range(S)] for k in range(K)]
        cmag = [[Signal(16, name=f"cmag{k}_{r}") for r in range(S)] for k in range(K)]
        csgn = [[Signal(name=f"csgn{k}_{r}") for r in range(S)] for k in range(K)]
        m.d.comb += self.i_cfg.ready.eq(1)
        # table writes land two cycles after their beat (registered address/data, then the
        # centroid magnitude precomputed), so the write decode is not behind the input port
        cfg_v1, cfg_a1, cfg_d1 = Signal(), Signal(12), Signal(16)
        m.d.sync += [cfg_v1.eq(self.i_cfg.valid), cfg_a1.eq(self.i_cfg.payload.addr), cfg_d1.eq(self.i_cfg.payload.data)]
        # the data (and centroid magnitude) once more per codebook: each copy drives one codebook's
        # ~800 table flip-flops instead of one net reaching all of them; copy k is stored inverted
        # when k is odd and has an all-ones reset value when k & 2 (not merged by synthesis; the
        # values only matter when a write lands)
        cfg_dk, cfg_mk = [], []
        for k in range(K):
            inv, init = (0xFFFF if k & 1 else 0), (0xFFFF if k & 2 else 0)
            dk, mk = Signal(16, init=init, name=f"cfg_d{k}"), Signal(16, init=init, name=f"cfg_mag{k}")
            m.d.sync += [dk.eq(cfg_d1 ^ inv), mk.eq(Mux(cfg_d1[15], -cfg_d1.as_signed(), cfg_d1) ^ inv)]
            cfg_dk.append(dk ^ inv)
            cfg_mk.append(mk ^ inv)
        # the address is decoded a cycle early into one registered write enable per table entry, so
        # each entry's clock enable comes straight from a flip-flop (the decode of a 12-bit address
        # in front of ~4,000 enables was a long path)
        def we(addr, tag):
            e = Signal(name=f"cfg_we_{tag}")
            m.d.sync += e.eq(cfg_v1 & (cfg_a1 == addr))
            return e
        for k in range(K):
            d = cfg_dk[k]
            for li in range(L):
                with m.If(we(64 * k + CFG_LIM + li, f"lim{k}_{li}")):
                    m.d.sync += lim[k][li].eq(d)
                with m.If(we(64 * k + CFG_OFF + li, f"off{k}_{li}")):
                    m.d.sync += off[k][li].eq(d[:7])
            with m.If(we(64 * k + CFG_ESC_LEN, f"esclen{k}")):
                m.d.sync += esc_len[k].eq(d)
            with m.If(we(64 * k + CFG_ESC_CODE, f"esccode{k}")):
                m.d.sync += esc_code[k].eq(d)
            for r in range(S):
                with m.If(we(64 * k + CFG_TABLE + r, f"cent{k}_{r}")):
                    m.d.sync += [cent[k][r].eq(d), csgn[k][r].eq(d[15]), cmag[k][r].eq(cfg_mk[k])]

        # ---- load stage: words -> input buffer
        wpb = c.words_per_block
        inbuf = Signal(wpb * c.bus_bits)
        # the word slot as a one-hot register (each slot's 64-bit enable is one AND of registers)
        wslot = Signal(wpb, init=1)
        full = Signal()
        m.d.comb += self.i_words.ready.eq(~full)
        with m.If(self.i_words.valid & ~full):
            for j in range(wpb):
                with m.If(wslot[j]):
                    m.d.sync += inbuf[j * c.bus_bits:(j + 1) * c.bus_bits].eq(self.i_words.payload)
            m.d.sync += wslot.eq(wslot.rotate_left(1))
            with m.If(wslot[wpb - 1]):
                m.d.sync += full.eq(1)

        if c.decoder == "walk":
            self._walk(m, tabs=(lim, off, esc_len, esc_code, cent, cmag, csgn), inbuf=inbuf, full=full,
                       ld_last_slot=wslot[wpb - 1],
                       cfgw=(cfg_v1, cfg_a1, cfg_d1))
            return m

        # ---- pipeline enable: the output register is free or being taken
        en = Signal()
        o_valid = Signal()
        m.d.comb += [en.eq(~o_valid | self.o_values.ready), self.o_values.valid.eq(o_valid)]

        # ---- decode stage
        busy = Signal()
        slot = Signal(range(c.cycles_per_block + 1))
        blk = Signal(N)
        used = [Signal(range(room + spl * symw + 1), name=f"used{ln}") for ln in range(c.lanes)]
        berr = Signal()
        sel = blk[:c.selbits] if c.selbits else Const(0, 1)
        e_f = blk[c.selbits:c.selbits + c.ebits]
        f_f = blk[c.selbits + c.ebits:c.selbits + c.ebits + c.mbits] if c.mbits else Const(0, 1)
        o_f = blk[c.selbits + c.ebits + c.mbits:H] if c.obits else Const(0, 1)
        # lane streams: lane 0 forward from H, lane 1 backward from N-1; zero beyond the block
        pad = Const(0, win)
        streams = [Cat(blk[H:], pad)]
        if c.lanes == 2:
            streams.append(Cat(*[blk[N - 1 - j] for j in range(room)], pad))

        last_slot = slot == c.cycles_per_block - 1
        start = Signal()
        m.d.comb += start.eq(full & (~busy | (en & last_slot)))
        with m.If(start):
            m.d.sync += [blk.eq(inbuf[:N]), full.eq(0), busy.eq(1), slot.eq(0), berr.eq(0)]
            m.d.sync += [u.eq(0) for u in used]
        with m.Elif(busy & en & last_slot):
            m.d.sync += busy.eq(0)
        with m.If(busy & en & ~last_slot):
            m.d.sync += slot.eq(slot + 1)

        # per-codebook table views for the selected codebook
        lim_s = [Signal(L + 1, name=f"lims{li}") for li in range(L)]
        off_s = [Signal(signed(7), name=f"offs{li}") for li in range(L)]
        esc_len_s = Signal(4)
        esc_code_s = Signal(L)
        for k in range(K):
            with m.If(sel == k):
                m.d.comb += [lim_s[li].eq(lim[k][li]) for li in range(L)]
                m.d.comb += [off_s[li].eq(off[k][li]) for li in range(L)]
                m.d.comb += [esc_len_s.eq(esc_len[k]), esc_code_s.eq(esc_code[k])]
        sel_bad = Signal()
        m.d.comb += sel_bad.eq(sel >= K)

        def canon(w, tag):
            """Decode one symbol from window ``w`` (first bit = w[0]): (length incl. escape,
            rank, is_escape, raw, valid)."""
            msbw = Signal(L, name=f"msbw{tag}")
            m.d.comb += msbw.eq(Cat(*[w[L - 1 - j] for j in range(L)]))
            ln = Signal(range(L + 1), name=f"ln{tag}")
            rank = Signal(7, name=f"rank{tag}")
            for li in reversed(range(L)):
                with m.If(msbw < lim_s[li]):
                    m.d.comb += [ln.eq(li + 1), rank.eq((msbw >> (L - 1 - li)) + off_s[li])]
            isesc = Signal(name=f"isesc{tag}")
            if c.esc_bits:
                m.d.comb += isesc.eq((esc_len_s != 0) & (ln == esc_len_s)
                                     & ((msbw >> (L - ln).as_unsigned()[:4]) == esc_code_s))
            tot = Signal(range(symw + 1), name=f"tot{tag}")
            m.d.comb += tot.eq(ln + Mux(isesc, c.esc_bits, 0))
            raw = Signal(signed(max(c.esc_bits, 1)), name=f"raw{tag}")
            if c.esc_bits:
                m.d.comb += raw.eq((w >> ln)[:c.esc_bits])
            return tot, rank, isesc, raw, ln != 0

        # decoded symbols of this cycle, value order: lane ln slot j -> value j*lanes + ln
        sym_rank = [None] * V
        sym_esc = [None] * V
        sym_raw = [None] * V
        bad_code = []
        new_used = []
        for ln in range(c.lanes):
            stream_bits = streams[ln]
            w_all = Signal(win, name=f"win{ln}")
            m.d.comb += w_all.eq(stream_bits.bit_select(used[ln], win))
            pos = Const(0, range(spl * symw + 1))
            pw = range(spl * symw + 1)
            if c.decoder == "spec":
                # Code length (escape included) at every offset of the window in parallel;
                # nxt[o] = o + length is the start of the symbol after one starting at o.
                maxoff = (spl - 1) * symw + 1
                nxt = []
                for o in range(maxoff):
                    tot, _, _, _, _ = canon(w_all[o:o + symw], f"_s{ln}_{o}")
                    n_o = Signal(pw, name=f"nxt{ln}_{o}")
                    m.d.comb += n_o.eq(o + tot)
                    nxt.append(n_o)
                nxt_a = Array(nxt)
                if spl == 4:
                    # pointer doubling: j2[o] = nxt[nxt[o]] in parallel, so the 4th start is
                    # two multiplexer levels from the window, not four
                    j2 = []
                    for o in range(2 * symw + 1):
                        s_o = Signal(pw, name=f"j2_{ln}_{o}")
                        m.d.comb += s_o.eq(Array(nxt[o + 1:o + symw + 1])[nxt[o] - (o + 1)])
                        j2.append(s_o)
                    starts = [Const(0, pw), nxt[0], j2[0]]
                    s3 = Signal(pw, name=f"s3_{ln}")
                    end = Signal(pw, name=f"end{ln}")
                    m.d.comb += [s3.eq(nxt_a[j2[0]]), end.eq(Array(j2)[j2[0]])]
                    starts.append(s3)
                else:
                    starts = [Const(0, pw)]
                    for j in range(1, spl + 1):
                        sj = Signal(pw, name=f"start{ln}_{j}")
                        m.d.comb += sj.eq(nxt_a[starts[-1]])
                        starts.append(sj)
                    end = starts.pop()
            for j in range(spl):
                if c.decoder == "spec":
                    pos = starts[j]
                w = Signal(symw, name=f"w{ln}_{j}")
                m.d.comb += w.eq(w_all.bit_select(pos, symw))
                tot, rank, isesc, raw, ok = canon(w, f"{ln}_{j}")
                v = j * c.lanes + ln
                sym_rank[v], sym_esc[v], sym_raw[v] = rank, isesc, raw
                bad_code.append(~ok)
                if c.decoder == "chain":
                    p_next = Signal(pw, name=f"pos{ln}_{j}")
                    m.d.comb += p_next.eq(pos + tot)
                    pos = p_next
            if c.decoder == "spec":
                pos = end
            nu = Signal(range(room + spl * symw + 1), name=f"newused{ln}")
            m.d.comb += nu.eq(used[ln] + pos)
            new_used.append(nu)
        overrun = Signal()
        m.d.comb += overrun.eq(sum(new_used) > room)
        cyc_err = Signal()
        m.d.comb += cyc_err.eq(sel_bad | Cat(*bad_code).any() | (last_slot & overrun))
        step = busy & en
        with m.If(step & ~start):
            m.d.sync += [u.eq(nu) for u, nu in zip(used, new_used, strict=True)]
            m.d.sync += berr.eq(berr | cyc_err)

        # ---- stage 1 register: ranks / escapes + block context
        s1_valid = Signal()
        s1_rank = [Signal(7, name=f"s1rank{v}") for v in range(V)]
        s1_esc = [Signal(name=f"s1esc{v}") for v in range(V)]
        s1_raw = [Signal(signed(max(c.esc_bits, 1)), name=f"s1raw{v}") for v in range(V)]
        s1_sel = Signal(range(max(K, 2)))
        s1_e = Signal(c.ebits)
        s1_f = Signal(max(c.mbits, 1))
        s1_o = Signal(signed(max(c.obits, 1)))
        s1_last = Signal()
        s1_err = Signal()
        with m.If(en):
            m.d.sync += s1_valid.eq(busy)
            m.d.sync += [s1_rank[v].eq(sym_rank[v]) for v in range(V)]
            m.d.sync += [s1_esc[v].eq(sym_esc[v]) for v in range(V)]
            m.d.sync += [s1_raw[v].eq(sym_raw[v]) for v in range(V)]
            m.d.sync += [s1_sel.eq(sel), s1_e.eq(e_f), s1_f.eq(f_f), s1_o.eq(o_f),
                         s1_last.eq(last_slot), s1_err.eq(berr | cyc_err)]

        # ---- stage 2: reconstruction integer r
        ups_shift = c.unit_per_step.bit_length() - 1
        rbits = max(17, c.esc_bits + 1, c.obits + ups_shift + 2) + 1
        s2_valid = Signal()
        s2_r = [Signal(signed(rbits), name=f"s2r{v}") for v in range(V)]
        s2_e, s2_f = Signal(c.ebits), Signal(max(c.mbits, 1))
        s2_last, s2_err = Signal(), Signal()
        # the selected codebook's centroid table (by canonical rank)
        tab_sig = [Signal(signed(16), name=f"tab{r}") for r in range(S)]
        for k in range(K):
            with m.If(s1_sel == k):
                m.d.comb += [tab_sig[r].eq(cent[k][r]) for r in range(S)]
        tab = Array(tab_sig + [Const(0, signed(16))] * (128 - S))
        obase = Signal(signed(rbits))
        m.d.comb += obase.eq(s1_o << ups_shift if c.obits else 0)
        with m.If(en):
            m.d.sync += [s2_valid.eq(s1_valid), s2_e.eq(s1_e), s2_f.eq(s1_f),
                         s2_last.eq(s1_last), s2_err.eq(s1_err)]
            for v in range(V):
                m.d.sync += s2_r[v].eq(Mux(s1_esc[v], s1_raw[v], tab[s1_rank[v]]) + obase)

        # ---- stage 3: p = r * (2**mbits + f), k = e + ebias
        pbits = rbits + c.mbits + 2
        s3_valid = Signal()
        s3_p = [Signal(signed(pbits), name=f"s3p{v}") for v in range(V)]
        s3_k = Signal(signed(10))
        s3_last, s3_err = Signal(), Signal()
        mant = Signal(c.mbits + 2)
        m.d.comb += mant.eq((1 << c.mbits) + (s2_f if c.mbits else 0))
        with m.If(en):
            m.d.sync += [s3_valid.eq(s2_valid), s3_k.eq(s2_e + self.ebias),
                         s3_last.eq(s2_last), s3_err.eq(s2_err)]
            m.d.sync += [s3_p[v].eq(s2_r[v] * mant) for v in range(V)]

        # ---- stage 4: fp16 part 1 (sign, magnitude, leading one)
        s4_valid = Signal()
        s4_sign = [Signal(name=f"s4sign{v}") for v in range(V)]
        s4_mag = [Signal(pbits, name=f"s4mag{v}") for v in range(V)]
        s4_msb = [Signal(range(pbits + 1), name=f"s4msb{v}") for v in range(V)]
        s4_k = Signal(signed(10))
        s4_last, s4_err = Signal(), Signal()
        with m.If(en):
            m.d.sync += [s4_valid.eq(s3_valid), s4_k.eq(s3_k), s4_last.eq(s3_last), s4_err.eq(s3_err)]
        for v in range(V):
            sg, mg, mb = _fp16(m, s3_p[v], s3_k, pbits)
            with m.If(en):
                m.d.sync += [s4_sign[v].eq(sg), s4_mag[v].eq(mg), s4_msb[v].eq(mb)]

        # ---- output register: fp16 part 2 (shift, round, assemble)
        with m.If(en):
            m.d.sync += o_valid.eq(s4_valid)
            m.d.sync += [self.o_values.payload.last.eq(s4_last), self.o_values.payload.error.eq(s4_err)]
            for v in range(V):
                m.d.sync += self.o_values.payload.data[v].eq(
                    _fp16_finish(m, s4_sign[v], s4_mag[v], s4_msb[v], s4_k, pbits))

        # ---- counters and flags
        with m.If(busy & en):
            m.d.sync += self.count_decode_cycles.eq(self.count_decode_cycles + 1)
        with m.If(busy & ~en):
            m.d.sync += self.count_stall_cycles.eq(self.count_stall_cycles + 1)
        with m.If(busy & en & last_slot):
            m.d.sync += self.count_blocks.eq(self.count_blocks + 1)
            with m.If(berr | cyc_err):
                m.d.sync += [self.count_errors.eq(self.count_errors + 1), self.error.eq(1)]
        return m

    # ------------------------------------------------------------------ walk decoder
    def _walk(self, m, *, tabs, inbuf, full, ld_last_slot, cfgw):
        """The ``walk`` decoder (module docstring): Phase A tables, the one-lookup walk,
        symbol extraction and the FP16 back end."""
        c = self._cfg
        V, L, S, K = c.values_per_cycle, c.max_len, c.s, c.k
        N, H = c.nbits, c.header_bits
        room, symw, C, R, NCH = N - H, c.symbol_bits, c.cycles_per_block, c.walk_chunk, c.walk_chunks
        lR = R.bit_length() - 1
        A3 = c.walk_lookahead[1]
        lanes, spl = c.lanes, c.spl
        PW = 9 if R * NCH <= 512 else (R * NCH - 1).bit_length()      # position width
        SAT = R * NCH - 1                                               # saturated position (> room)
        lim, off, esc_len, esc_code, cent, cmag, csgn = tabs
        chw = (NCH - 1).bit_length()                                    # chunk index width (NCH >= 4)

        def lane_stream(blk, ln, extra):
            """Lane ``ln`` of block bits ``blk`` as a bit vector (position o = lane bit o), zero padded."""
            bits = [blk[H + o] for o in range(room)] if ln == 0 else [blk[N - 1 - o] for o in range(room)]
            return Cat(*bits, Const(0, extra))

        def hdr_fields(h):
            sel = h[:c.selbits] if c.selbits else Const(0, 1)
            e = h[c.selbits:c.selbits + c.ebits]
            f = h[c.selbits + c.ebits:c.selbits + c.ebits + c.mbits] if c.mbits else Const(0, 1)
            o = h[c.selbits + c.ebits + c.mbits:H] if c.obits else Const(0, 1)
            return sel, e, f, o

        # ---------------- block ownership: two halves (tables + block copy), Phase A fills, the walk reads
        owned = [Signal(name=f"owned{h}") for h in range(2)]
        hA = Signal()
        hW = Signal()
        activeA = Signal()
        kA = Signal(range(NCH + 1))
        blkbuf = [Signal(N, name=f"blkbuf{h}") for h in range(2)]
        hdr = [Signal(H, name=f"hdr{h}") for h in range(2)]
        wc = [Signal(range(NCH + 1), name=f"wc{h}") for h in range(2)]
        startA = Signal()
        # startA is a register loaded with its next-cycle value (computed below from the next state of
        # full, activeA, kA, hA and owned; same behaviour): it fans out to the shift registers' load
        # multiplexers (about 1,000 bits), so that net starts at a flip-flop.  One more copy per lane
        # beyond the first, stored inverted (not merged), drives that lane's shift register.
        startA_n = Signal()
        startSR = [Signal(init=ln & 1, name=f"startSR{ln}") for ln in range(c.lanes)]   # startA ^ (ln & 1)
        m.d.sync += [startA.eq(startA_n)] + [st.eq(startA_n ^ (ln & 1)) for ln, st in enumerate(startSR)]

        # the block's codebook selector, registered per block (addresses the code-length table)
        in_sel = inbuf[:c.selbits] if c.selbits else Const(0, 1)
        SB = max(c.selbits, 1)
        selA = Signal(SB)

        streams_in = [lane_stream(inbuf[:N], ln, L + R) for ln in range(lanes)]
        SRW = R * NCH + L
        SR = [Signal(SRW, name=f"SR{ln}") for ln in range(lanes)]
        # The block copy is taken one cycle after the start (the walk needs it only once Phase A has
        # written a chunk; the input buffer's first word is rewritten at the earliest on that same
        # edge), so the start signal itself drives only the shift registers and a few flags.
        start_q, hA_q = Signal(), Signal()
        m.d.sync += [start_q.eq(startA), hA_q.eq(hA)]
        for h in range(2):
            with m.If(start_q & (hA_q == h)):
                m.d.sync += [blkbuf[h].eq(inbuf[:N]), hdr[h].eq(inbuf[:H])]
        for ln in range(lanes):
            with m.If(startSR[ln] ^ (ln & 1)):
                m.d.sync += SR[ln].eq(streams_in[ln][:SRW])
            with m.Else():      # shifting past the block is harmless (Tv marks the valid chunks)
                m.d.sync += SR[ln].eq(SR[ln] >> R)
        with m.If(startA):
            m.d.sync += [activeA.eq(1), kA.eq(0), full.eq(0), hA.eq(~hA)]     # owned, wc: below
            m.d.sync += selA.eq(in_sel)
        with m.Elif(activeA):
            with m.If(kA == NCH - 1):
                m.d.sync += activeA.eq(0)
            with m.Else():
                m.d.sync += kA.eq(kA + 1)

        # ---------------- Phase A stage T: total code length (escape included, 0 = no code) at
        # TN = R + symw offsets per cycle (the chunk and the lookahead stage 2 needs), looked up in
        # block RAM: table[sel][window of L bits, first bit = MSB], written through i_cfg at
        # CFG_TOT (config_words).  Two lookups per RAM; port A also takes the table writes (while
        # idle), so one DP16KD serves two offsets.  The RAM output is registered once more (Tq).
        TW = (symw).bit_length()
        XW = (R - 1 + symw).bit_length()           # o mod R + tot[o] (tot records of the walk)
        QW = (R - 1 + 2 * symw).bit_length()       # q - P0 (two symbols from p's chunk start)
        R2W = (2 * symw).bit_length()
        TN = R + symw
        # The write enable and address are registers of their own (one enable copy per lane, the
        # second stored inverted so synthesis keeps both): they fan out to every table's address.
        cfg_v1, cfg_a1, cfg_d1 = cfgw
        tw_en = [Signal(name=f"tw_en{ln}") for ln in range(lanes)]
        tw_addr = Signal(L + SB)
        tw_data = Signal(TW)
        m.d.sync += [tw_addr.eq(cfg_a1[:L + SB]), tw_data.eq(cfg_d1[:TW])]
        m.d.sync += [tw_en[ln].eq((cfg_v1 & cfg_a1[11]) ^ (ln & 1)) for ln in range(lanes)]
        Tb = [[None] * TN for ln in range(lanes)]
        for ln in range(lanes):
            twe = tw_en[ln] ^ (ln & 1)
            for i in range(0, TN, 2):
                tm = Memory(shape=unsigned(TW), depth=1 << (L + SB), init=[], attrs={"no_rw_check": 1})
                m.submodules[f"tot_tab{ln}_{i}"] = tm
                wp = tm.write_port()
                aaddr = Signal(L + SB, name=f"ttaddr{ln}_{i}")
                m.d.comb += [aaddr.eq(Mux(twe, tw_addr, Cat(*[SR[ln][i + L - 1 - j] for j in range(L)], selA))),
                             wp.addr.eq(aaddr), wp.data.eq(tw_data), wp.en.eq(twe)]
                for o in (i, i + 1):
                    if o >= TN:
                        continue
                    # an asynchronous read port followed by a register: Yosys folds the register
                    # into the block RAM and, unlike a synchronous port (whose read-during-write
                    # behaviour it then emulates), shares port A between this read and the
                    # write, so one DP16KD serves two offsets
                    rp = tm.read_port(domain="comb")
                    if o == i:
                        m.d.comb += rp.addr.eq(aaddr)
                    else:
                        m.d.comb += rp.addr.eq(Cat(*[SR[ln][o + L - 1 - j] for j in range(L)], selA))
                    tb = Signal(TW, name=f"Tb{ln}_{o}")
                    m.d.sync += tb.eq(rp.data)
                    Tb[ln][o] = tb
        Tq = [[Signal(TW, name=f"Tq{ln}_{o}") for o in range(TN)] for ln in range(lanes)]
        for ln in range(lanes):
            m.d.sync += [Tq[ln][o].eq(Tb[ln][o]) for o in range(TN)]
        Tv = [Signal(name=f"Tv{i}") for i in range(2)]
        Tj = [Signal(chw, name=f"Tj{i}") for i in range(2)]
        Th = [Signal(name=f"Th{i}") for i in range(2)]
        m.d.sync += [Tv[0].eq(activeA), Tj[0].eq(kA), Th[0].eq(~hA)]     # hA already toggled at start
        m.d.sync += [Tv[1].eq(Tv[0]), Tj[1].eq(Tj[0]), Th[1].eq(Th[0])]

        # ---------------- stage 2: rel2[o] = tot[o] + tot[o + tot[o]] (chunk and lookahead in Tq)
        Rt = [[[Signal(TW, name=f"Rt{ln}_{i}_{o}") for o in range(R)] for i in range(A3 + 1)] for ln in range(lanes)]
        R2 = [[[Signal(R2W, name=f"R2{ln}_{i}_{o}") for o in range(R)] for i in range(A3 + 1)] for ln in range(lanes)]
        Rv = [Signal(name=f"Rv{i}") for i in range(A3 + 1)]
        Rj = [Signal(chw, name=f"Rj{i}") for i in range(A3 + 1)]
        Rh = [Signal(name=f"Rh{i}") for i in range(A3 + 1)]
        for ln in range(lanes):
            flat = Tq[ln]
            for o in range(R):
                cand = _mux_tree(flat[o:o + symw + 1], flat[o])
                m.d.sync += [Rt[ln][0][o].eq(flat[o]), R2[ln][0][o].eq(flat[o] + cand)]
            for i in range(1, A3 + 1):
                m.d.sync += [Rt[ln][i][o].eq(Rt[ln][i - 1][o]) for o in range(R)]
                m.d.sync += [R2[ln][i][o].eq(R2[ln][i - 1][o]) for o in range(R)]
        m.d.sync += [Rv[0].eq(Tv[1]), Rj[0].eq(Tj[1]), Rh[0].eq(Th[1])]
        for i in range(1, A3 + 1):
            m.d.sync += [Rv[i].eq(Rv[i - 1]), Rj[i].eq(Rj[i - 1]), Rh[i].eq(Rh[i - 1])]

        # ---------------- stage 3: nxt4 (absolute, saturated) -> the chunk's records in LUT RAM, over
        # two cycles: 3a registers the pointer-doubling lookup (a multiplexer indexed by rel2), 3b adds,
        # saturates and writes.  The records are nxt4 and tot; the positions of symbols 2 and 3 come
        # from a second walker (``q``, two symbols ahead of ``p``), so no rel3 is computed here.
        depth = 2 << chw                      # two halves: the block being walked, the next one
        mem_n, mem_t = [], []
        wq_en, wq_addr = Signal(), Signal(chw + 1)
        m.d.sync += [wq_en.eq(Rv[A3]), wq_addr.eq(Cat(Rj[A3], Rh[A3]))]
        # nxt4 records: one LUT RAM per lane, walker (p, q) and half (the block being walked, the
        # next one), each ``NCH`` deep with a single read port: each walker register copy addresses
        # its own cells, and the half is chosen after the offset selection (9 multiplexers, not 288)
        for ln in range(lanes):
            mns = [[Memory(shape=unsigned(PW * R), depth=1 << chw, init=[]) for _ in range(2)] for _ in range(2)]
            mt = Memory(shape=unsigned(XW * R), depth=depth, init=[])
            for w in range(2):
                for hh in range(2):
                    m.submodules[f"nxt_mem{ln}_{'pq'[w]}{hh}"] = mns[w][hh]
            m.submodules[f"tot_mem{ln}"] = mt
            mem_n.append(mns)
            mem_t.append(mt)
            wns = [[mns[w][hh].write_port() for hh in range(2)] for w in range(2)]
            wt = mt.write_port()
            flat_2 = [t for i in reversed(range(A3 + 1)) for t in R2[ln][i]]
            nrec, trec = [], []
            for o in range(R):
                r2 = flat_2[o]
                # the 37:1 selection indexed by rel2: its low result bits take their select lines
                # from a copy of the index register (stored inverted, so it is not merged), which
                # halves the fan-out of each index bit
                r2c = Signal(R2W, name=f"R2c{ln}_{o}")
                m.d.sync += r2c.eq(~R2[ln][A3 - 1][o])
                items = flat_2[o:o + 2 * symw + 1]
                lo = R2W // 2
                cand_2 = Cat(_mux_tree([it[:lo] for it in items], ~r2c),
                             _mux_tree([it[lo:] for it in items], r2))
                # 3a
                s_t = Signal(XW, name=f"s3t_{ln}_{o}")      # o mod R + tot[o]: the next start in the chunk
                s_c2 = Signal(R2W, name=f"s3c2_{ln}_{o}")
                s_n2 = Signal(PW + 1, name=f"s3n2_{ln}_{o}")
                m.d.sync += [s_t.eq(Rt[ln][A3][o] + o), s_c2.eq(cand_2),
                             s_n2.eq(Cat(Const(o, lR), Rj[A3]) + r2)]
                # 3b
                n4 = Signal(PW + 2, name=f"n4_{ln}_{o}")
                m.d.comb += n4.eq(s_n2 + s_c2)
                nsat = Signal(PW, name=f"n4s_{ln}_{o}")
                over = n4[PW:].any() if SAT == (1 << PW) - 1 else (n4 > SAT)    # a bit test, not a compare
                m.d.comb += nsat.eq(Mux(over, SAT, n4[:PW]))
                nrec.append(nsat)
                trec.append(s_t)
            for w in range(2):
                for hh in range(2):
                    wn = wns[w][hh]
                    # half 0's tables are read by the walker copy stored inverted: its rows are
                    # written at the inverted chunk (and read in reverse word order), so that copy
                    # addresses the LUT RAM directly, without an inverter in the walk loop
                    waddr = ~wq_addr[:chw] if hh == 0 else wq_addr[:chw]
                    m.d.comb += [wn.addr.eq(waddr), wn.data.eq(Cat(*nrec)),
                                 wn.en.eq(wq_en & (wq_addr[chw] == hh))]
            m.d.comb += [wt.addr.eq(wq_addr), wt.data.eq(Cat(*trec)), wt.en.eq(wq_en)]
        # record counts: 0 when Phase A starts a block in the half, + 1 per chunk of records written
        # (the increment wins, as an assignment after the reset would); next values, so the walk
        # can keep a registered copy of its half's count
        wc_n = [Signal(range(NCH + 1), name=f"wc_n{h}") for h in range(2)]
        for h in range(2):
            m.d.comb += wc_n[h].eq(Mux(wq_en & (wq_addr[-1] == h), wc[h] + 1,
                                       Mux(startA & (hA == h), 0, wc[h])))
            m.d.sync += wc[h].eq(wc_n[h])
        # q0[h][ln] = rel2 at lane offset 0 of the block in half h (the second walker's start); it is
        # written by stage 2 at least A3 + 2 cycles before the half's first chunk of records, so it
        # is valid whenever the walk sees a record count above 0.
        q0 = [[Signal(PW, name=f"q0_{h}_{ln}") for ln in range(lanes)] for h in range(2)]
        for h in range(2):
            with m.If(Rv[0] & (Rj[0] == 0) & (Rh[0] == h)):
                m.d.sync += [q0[h][ln].eq(R2[ln][0][0]) for ln in range(lanes)]

        # ---------------- the walk: p <- nxt4[p] and q <- nxt4[q] for each lane, one lookup each per cycle
        # (q = nxt2[p]: the start of the beat's third symbol, so q_{t+1} = nxt6[p_t] = nxt4[q_t])
        p = [Signal(PW, name=f"p{ln}") for ln in range(lanes)]
        q = [Signal(PW, name=f"q{ln}") for ln in range(lanes)]
        t = Signal(range(C))
        last_t = t == C - 1
        act = Signal()
        adv = Signal()
        # Output credits: the pipeline behind the walk never stalls; a beat is issued only when the
        # output FIFO has room for it and for every beat already in flight (``occ`` counts them).
        occ = Signal(range(OUT_FIFO_DEPTH + 1))
        room_out = Signal(init=1)
        pop = Signal()
        # ``adv`` is the walk's enable: it reaches every walker register, so it is one AND of
        # registers and the lanes' ``ready`` compares.  The half's ownership (act = owned[hW]), its
        # record count (wcW = wc[hW]) and the output room (occ != depth) are registers holding
        # exactly those values, loaded from the next-state logic (no change in behaviour).
        hW_n = Signal()
        owned_n = [Signal(name=f"owned_n{h}") for h in range(2)]
        wcW = Signal(range(NCH + 1))
        occ_n = Signal(range(OUT_FIFO_DEPTH + 1))
        m.d.comb += hW_n.eq(hW ^ (adv & last_t))
        for h in range(2):
            m.d.comb += owned_n[h].eq((owned[h] | (startA & (hA == h))) & ~(adv & last_t & (hW == h)))
        m.d.comb += occ_n.eq(occ + adv - pop)
        m.d.sync += [hW.eq(hW_n), act.eq(Array(owned_n)[hW_n]), wcW.eq(Array(wc_n)[hW_n]),
                     occ.eq(occ_n), room_out.eq(occ_n != OUT_FIFO_DEPTH)]
        m.d.sync += [owned[h].eq(owned_n[h]) for h in range(2)]
        # startA's next value (see its definition): full (set by the load stage's last word, cleared
        # by the start), activeA, kA and hA as their assignments above leave them
        full_n, actA_n, kA_n, hA_n = Signal(), Signal(), Signal(range(NCH + 1)), Signal()
        ld_last = Signal()
        m.d.comb += [ld_last.eq(self.i_words.valid & self.i_words.ready & ld_last_slot),
                     full_n.eq((full & ~startA) | ld_last),
                     actA_n.eq(startA | (activeA & (kA != NCH - 1))),
                     kA_n.eq(Mux(startA, 0, Mux(activeA & (kA != NCH - 1), kA + 1, kA))),
                     hA_n.eq(hA ^ startA),
                     startA_n.eq(full_n & (~actA_n | (kA_n == NCH - 1)) & ~Array(owned_n)[hA_n])]
        # The loop reads only the nxt4 table; everything else the walk feeds (the tot records, the
        # block window) is read from registered copies of p and q one stage later (D0), so p and q
        # drive nothing but these lookups and the `ready` compare.  Each walker register has two
        # more copies, one per half's table (its address and offset selection): copy 1 stored
        # inverted, copy 2 with all-ones reset value, so synthesis does not merge them (their reset
        # values do not matter: while ``t == 0`` and the walk waits, p and q are reloaded).
        ONES = (1 << PW) - 1
        copies = {}
        for ln in range(lanes):
            for w, main in enumerate((p[ln], q[ln])):
                c1 = Signal(PW, name=f"{'pq'[w]}{ln}_c1")
                c2 = Signal(PW, init=ONES, name=f"{'pq'[w]}{ln}_c2")
                copies[ln, w] = ((main, 0), (c1, ONES), (c2, 0))
        # The enable once per copy: copy r of every walker register advances on ``advs[r]``, computed
        # from copy r of the q registers (q >= p, so the records of q's chunk being written implies
        # those of p's chunk), so each enable net reaches a third of the walker flip-flops (the
        # copies sit by their own tables) and synthesis cannot merge the three (different inputs).
        advs = []
        for r in range(3):
            rdy = []
            for ln in range(lanes):
                reg, inv = copies[ln, 1][r]
                rdy.append(((reg >> lR) ^ (inv >> lR)) < wcW)
            a = Signal(name=f"adv{r}")
            m.d.comb += a.eq(act & room_out & Cat(*rdy).all())
            advs.append(a)
        m.d.comb += adv.eq(advs[0])
        nsel, qsel = [], []
        for ln in range(lanes):
            for w, lst in ((0, nsel), (1, qsel)):
                per_half = []
                for hh in range(2):
                    # the register as stored (copy 1 inverted: rows at inverted chunks, words reversed)
                    reg, inv = copies[ln, w][1 + hh]
                    rn = mem_n[ln][w][hh].read_port(domain="comb")
                    m.d.comb += rn.addr.eq((reg >> lR)[:chw])
                    words = [rn.data[j * PW:(j + 1) * PW] for j in range(R)]
                    if inv:
                        words = words[::-1]
                    per_half.append(_mux_tree(words, reg[:lR]))
                ns = Signal(PW, name=f"{'ns'[w]}sel{ln}")
                m.d.comb += ns.eq(Mux(hW, per_half[1], per_half[0]))
                lst.append(ns)
        q0_a = [Array([q0[h][ln] for h in range(2)]) for ln in range(lanes)]

        def set_ptr(r, ln, w, value):
            reg, inv = copies[ln, w][r]
            return [reg.eq(value ^ inv)]

        with m.If(adv):
            with m.If(last_t):
                m.d.sync += t.eq(0)                  # hW, owned: next-state logic above
            with m.Else():
                m.d.sync += t.eq(t + 1)
        for r in range(3):
            with m.If(advs[r]):
                with m.If(last_t):
                    for ln in range(lanes):
                        m.d.sync += set_ptr(r, ln, 0, 0)
                        # the next half's q0 (valid if its first records are; otherwise reloaded below)
                        m.d.sync += set_ptr(r, ln, 1, q0_a[ln][~hW])
                with m.Else():
                    for ln in range(lanes):
                        m.d.sync += set_ptr(r, ln, 0, nsel[ln]) + set_ptr(r, ln, 1, qsel[ln])
            with m.Elif(t == 0):
                for ln in range(lanes):
                    m.d.sync += set_ptr(r, ln, 0, 0) + set_ptr(r, ln, 1, q0_a[ln][hW])

        # ---------------- D0: the walk state registered (p, q, nxt4[p], q - P0, the half)
        d0_valid, d0_first, d0_last, d0_h = Signal(), Signal(), Signal(), Signal()
        d0_p = [Signal(PW, name=f"d0p{ln}") for ln in range(lanes)]
        d0_q = [Signal(PW, name=f"d0q{ln}") for ln in range(lanes)]
        d0_qp = [Signal(PW + 1, name=f"d0qp{ln}") for ln in range(lanes)]
        d0_n = [Signal(PW, name=f"d0n{ln}") for ln in range(lanes)]
        m.d.sync += [d0_valid.eq(adv), d0_first.eq(t == 0), d0_last.eq(last_t), d0_h.eq(hW)]
        m.d.sync += [d0_p[ln].eq(p[ln]) for ln in range(lanes)]
        m.d.sync += [d0_q[ln].eq(q[ln]) for ln in range(lanes)]
        m.d.sync += [d0_qp[ln].eq(q[ln] - Cat(Const(0, lR), p[ln][lR:])) for ln in range(lanes)]   # q - P0
        m.d.sync += [d0_n[ln].eq(nsel[ln]) for ln in range(lanes)]
        # the chunks of p and q again (stored inverted: not merged with d0_p/d0_q), for the coarse
        # windows' 16:1 selections alone
        d0_pc = [Signal(PW - lR, name=f"d0pc{ln}") for ln in range(lanes)]
        d0_qc = [Signal(PW - lR, name=f"d0qc{ln}") for ln in range(lanes)]
        m.d.sync += [d0_pc[ln].eq(~(p[ln] >> lR)) for ln in range(lanes)]
        m.d.sync += [d0_qc[ln].eq(~(q[ln] >> lR)) for ln in range(lanes)]

        # ---------------- D1: records at p and q, coarse window of the lane stream at the chunk of p.
        # The half read here is not refilled before this stage reads it: Phase A starts on a
        # half at the earliest one cycle after the walk left it and writes its tables later.
        CWW = R - 1 + 2 * symw              # two symbols from any offset of a chunk
        hdrW = Mux(d0_h, hdr[1], hdr[0])
        # The walked block's bits, copied from its half on every cycle the walk spends at t == 0
        # (from the edge that issues a block's last beat until the one that issues the next block's
        # first beat), so D1 reads a register, not a 2:1 selection by d0_h of two 504-bit buffers.
        # The half and the ``t == 0`` flag driving the copy are registers of their own (two copies
        # each, one stored inverted), so these nets do not fan out from the walk loop.
        blkW = Signal(N)
        NB = 2
        hWc = [Signal(init=k & 1, name=f"hWc{k}") for k in range(NB)]      # hW ^ (k & 1)
        w0c = [Signal(init=1 ^ (k & 1), name=f"w0c{k}") for k in range(NB)]   # (t == 0) ^ (k & 1)
        with m.If(adv):
            m.d.sync += [w0.eq(last_t ^ (k & 1)) for k, w0 in enumerate(w0c)]
            with m.If(last_t):
                m.d.sync += [h.eq(~h) for h in hWc]
        bounds = [N * k // NB for k in range(NB + 1)]
        for k in range(NB):
            lo, hi = bounds[k], bounds[k + 1]
            hk, wk = hWc[k] ^ (k & 1), w0c[k] ^ (k & 1)
            with m.If(wk):
                m.d.sync += blkW[lo:hi].eq(Mux(hk, blkbuf[1][lo:hi], blkbuf[0][lo:hi]))
        d1_valid, d1_first, d1_last = Signal(), Signal(), Signal()
        d1_hdr = Signal(H)
        d1_p = [Signal(PW, name=f"d1p{ln}") for ln in range(lanes)]
        # Symbol starts relative to the chunk starts P0 of p and Q0 of q, all registers: the tot
        # records hold ``o mod R + tot[o]`` (the next start within o's chunk), so the start of symbol
        # 1 (e_p) and of symbol 3 (e_q) come out of the lookups without an adder, and D2's window
        # shifters and length subtractions start from registers
        d1_r1 = [Signal(XW, name=f"d1ep{ln}") for ln in range(lanes)]     # e_p = p - P0 + tot[p]
        d1_r2 = [Signal(QW, name=f"d1qP{ln}") for ln in range(lanes)]     # q - P0 (saturated)
        # coarse windows at the chunks of p (symbols 0, 1) and of q (symbols 2, 3)
        d1_cw = [Signal(CWW, name=f"d1cw{ln}") for ln in range(lanes)]
        d1_cwq = [Signal(CWW, name=f"d1cwq{ln}") for ln in range(lanes)]
        d1_q = [Signal(lR, name=f"d1q{ln}") for ln in range(lanes)]
        d1_tq = [Signal(XW, name=f"d1eq{ln}") for ln in range(lanes)]     # e_q = q - Q0 + tot[q]
        d1_nq = [Signal(signed(PW + 1), name=f"d1nQ{ln}") for ln in range(lanes)]   # nxt4[p] - Q0
        m.d.sync += [d1_valid.eq(d0_valid), d1_first.eq(d0_first), d1_last.eq(d0_last), d1_hdr.eq(hdrW)]
        m.d.sync += [d1_nq[ln].eq(d0_n[ln] - Cat(Const(0, lR), d0_q[ln][lR:])) for ln in range(lanes)]
        d1_over = Signal()              # the lanes' ends overlap (checked on the block's last beat)
        m.d.sync += d1_over.eq(sum(d0_n) > room)
        for ln in range(lanes):
            # q - P0 saturated to 2**QW - 1 (> 2*symw + R - 1, so the second symbol's length check
            # fails): only a malformed block (saturated walk) gets there
            qp = Signal(QW, name=f"d1qp{ln}")
            m.d.comb += qp.eq(Mux(d0_qp[ln][QW:].any(), (1 << QW) - 1, d0_qp[ln][:QW]))
            rt = []
            for ptr in (d0_p[ln], d0_q[ln]):
                rr = mem_t[ln].read_port(domain="comb")
                m.d.comb += rr.addr.eq(Cat((ptr >> lR)[:chw], d0_h))
                rt.append(_mux_tree([rr.data[j * XW:(j + 1) * XW] for j in range(R)], ptr[:lR]))
            st = lane_stream(blkW, ln, R * NCH + CWW)
            m.d.sync += [d1_p[ln].eq(d0_p[ln]), d1_r1[ln].eq(rt[0]), d1_r2[ln].eq(qp),
                         d1_cw[ln].eq(st.bit_select(Cat(Const(0, lR), ~d0_pc[ln]), CWW)),
                         d1_cwq[ln].eq(st.bit_select(Cat(Const(0, lR), ~d0_qc[ln]), CWW)),
                         d1_q[ln].eq(d0_q[ln][:lR]), d1_tq[ln].eq(rt[1])]

        # ---------------- D2: the spl symbol windows; code length, escape flag, validity from the records
        d2_valid, d2_first, d2_last, d2_err = Signal(), Signal(), Signal(), Signal()
        d2_hdr = Signal(H)
        d2_sub = [Signal(symw, name=f"d2sub{v}") for v in range(V)]
        d2_ln = [Signal(range(L + 1), name=f"d2ln{v}") for v in range(V)]
        d2_esc = [Signal(name=f"d2esc{v}") for v in range(V)]
        oks = []
        for ln in range(lanes):
            # code lengths: the differences of consecutive starts (p, e_p, q, e_q, nxt4[p]; relative
            # to P0 or Q0); a saturated q - P0 (malformed block) fails symbol 1's check
            r0 = d1_p[ln][:lR]
            lens = [d1_r1[ln] - r0, d1_r2[ln] - d1_r1[ln], d1_tq[ln] - d1_q[ln], d1_nq[ln] - d1_tq[ln]]
            for j in range(spl):
                v = j * lanes + ln
                tot = Signal(range(-(1 << (PW + 1)), 1 << (PW + 1)), name=f"d2tot{v}")
                m.d.comb += tot.eq(lens[j])
                isesc = (tot > L) if c.esc_bits else Const(0, 1)
                ok = Signal(name=f"ok{v}")
                m.d.comb += ok.eq((tot != 0) & (tot <= symw))
                oks.append(ok)
                # symbol starts within the coarse windows: p, p + tot[p] | q, q + tot[q]
                cw, at = ((d1_cw[ln], r0), (d1_cw[ln], d1_r1[ln]), (d1_cwq[ln], d1_q[ln]), (d1_cwq[ln], d1_tq[ln]))[j]
                m.d.sync += [d2_sub[v].eq(cw.bit_select(at, symw)),
                             d2_esc[v].eq(isesc),
                             d2_ln[v].eq(Mux(isesc, tot - c.esc_bits, tot)[:(L).bit_length()])]
        sel1 = hdr_fields(d1_hdr)[0]
        # the checks are registered unreduced; D3 reduces them into the block's error
        d2_oks = Signal(V)
        d2_bad = Signal()
        m.d.sync += [d2_valid.eq(d1_valid), d2_first.eq(d1_first), d2_last.eq(d1_last), d2_hdr.eq(d1_hdr),
                     d2_oks.eq(Cat(*oks)), d2_bad.eq((d1_last & d1_over) | (sel1 >= K))]
        m.d.comb += d2_err.eq(~d2_oks.all() | d2_bad)

        # ---------------- D3: canonical rank, escape raw bits; block error accumulated over the block
        d3_valid, d3_last, d3_err = Signal(), Signal(), Signal()
        d3_hdr = Signal(H)
        d3_rank = [Signal(7, name=f"d3rank{v}") for v in range(V)]
        d3_esc = [Signal(name=f"d3esc{v}") for v in range(V)]
        EB = max(c.esc_bits, 1)
        d3_raw = [Signal(signed(EB), name=f"d3raw{v}") for v in range(V)]
        d3_rmag = [Signal(EB, name=f"d3rmag{v}") for v in range(V)]
        # the block's rank offsets, selected by codebook one stage early (from D1's header) and
        # registered, so D3 starts its rank adders from registers
        off_s = [Signal(signed(7), name=f"offw{li}") for li in range(L)]
        m.d.sync += [o.eq(0) for o in off_s]            # selector >= K: 0, as before (malformed)
        for k in range(K):
            with m.If(hdr_fields(d1_hdr)[0] == k):
                m.d.sync += [off_s[li].eq(off[k][li]) for li in range(L)]
        off_l = [Const(0, 7)] + [o.as_unsigned() for o in off_s]     # by code length (7-bit wrap-around add)
        for v in range(V):
            sub, ln = d2_sub[v], d2_ln[v]
            msbw = Cat(*[sub[L - 1 - j] for j in range(L)])
            raw = Signal(signed(EB), name=f"raw{v}")
            if c.esc_bits:
                m.d.comb += raw.eq(sub.bit_select(ln, c.esc_bits))
            else:
                m.d.comb += raw.eq(0)
            m.d.sync += [d3_rank[v].eq((msbw >> (L - ln).as_unsigned()[:4]) + _mux_tree(off_l, ln)),
                         d3_esc[v].eq(d2_esc[v]), d3_raw[v].eq(raw),
                         d3_rmag[v].eq(Mux(raw < 0, -raw, raw))]
        acc = Signal()
        blk_err = Signal()
        m.d.comb += blk_err.eq((acc & ~d2_first) | d2_err)
        m.d.sync += [d3_valid.eq(d2_valid), d3_last.eq(d2_last), d3_hdr.eq(d2_hdr), d3_err.eq(blk_err)]
        with m.If(d2_valid):
            m.d.sync += acc.eq(blk_err)
        with m.If(adv):
            m.d.sync += self.count_decode_cycles.eq(self.count_decode_cycles + 1)
        with m.If(act & ~room_out):
            m.d.sync += self.count_stall_cycles.eq(self.count_stall_cycles + 1)
        with m.If(d2_valid & d2_last):
            m.d.sync += self.count_blocks.eq(self.count_blocks + 1)
            with m.If(blk_err):
                m.d.sync += [self.count_errors.eq(self.count_errors + 1), self.error.eq(1)]

        # ---------------- B1: reconstruction integer as sign + magnitude
        _, e3, f3, o3 = hdr_fields(d3_hdr)
        sel2c = hdr_fields(d2_hdr)[0]
        ups_shift = c.unit_per_step.bit_length() - 1
        rbits = max(17, c.esc_bits + 1, c.obits + ups_shift + 2) + 1
        MW = rbits                                  # magnitude width (|r| < 2**(rbits-1) + 1)
        b1_valid, b1_last, b1_err = Signal(), Signal(), Signal()
        b1_e, b1_f = Signal(c.ebits), Signal(max(c.mbits, 1))
        b1_k = Signal(signed(10))                   # k = e + ebias: the value is p * 2**k
        b1_sgn = [Signal(name=f"b1sgn{v}") for v in range(V)]
        b1_mag = [Signal(MW, name=f"b1mag{v}") for v in range(V)]
        m.d.sync += [b1_valid.eq(d3_valid), b1_last.eq(d3_last), b1_err.eq(d3_err), b1_e.eq(e3), b1_f.eq(f3),
                     b1_k.eq(e3 + self.ebias)]
        if not c.obits:
            # the block's centroid table, selected by codebook a stage early (from D2's header) and
            # registered, so B1's selection by rank starts from registers (0 for a selector >= K)
            cm = [Signal(16, name=f"cmw{r}") for r in range(S)]
            cs = [Signal(name=f"csw{r}") for r in range(S)]
            m.d.sync += [x.eq(0) for x in cm + cs]
            for k in range(K):
                with m.If(sel2c == k):
                    m.d.sync += [cm[r].eq(cmag[k][r]) for r in range(S)]
                    m.d.sync += [cs[r].eq(csgn[k][r]) for r in range(S)]
            # by rank: a 2:1 multiplexer tree over the S entries (an Array indexed by the 7-bit rank
            # became a 128-way case decode)
            for v in range(V):
                ent = _mux_tree([Cat(cm[r], cs[r]) for r in range(S)], d3_rank[v])
                m.d.sync += [b1_sgn[v].eq(Mux(d3_esc[v], d3_raw[v] < 0, ent[16])),
                             b1_mag[v].eq(Mux(d3_esc[v], d3_rmag[v], ent[:16]))]
        else:
            # with a block offset: signed sum first, then sign/magnitude (one more stage)
            cv = [Signal(signed(16), name=f"cvw{r}") for r in range(S)]
            m.d.sync += [x.eq(0) for x in cv]
            for k in range(K):
                with m.If(sel2c == k):
                    m.d.sync += [cv[r].eq(cent[k][r]) for r in range(S)]
            rr = [Signal(signed(rbits), name=f"b0r{v}") for v in range(V)]
            b0_valid, b0_last, b0_err = Signal(), Signal(), Signal()
            b0_e, b0_f = Signal(c.ebits), Signal(max(c.mbits, 1))
            b0_k = Signal(signed(10))
            obase = Signal(signed(rbits))
            m.d.comb += obase.eq(o3.as_signed() << ups_shift)
            m.d.sync += [b0_valid.eq(d3_valid), b0_last.eq(d3_last), b0_err.eq(d3_err), b0_e.eq(e3), b0_f.eq(f3),
                         b0_k.eq(e3 + self.ebias)]
            m.d.sync += [rr[v].eq(Mux(d3_esc[v], d3_raw[v], _mux_tree(cv, d3_rank[v]).as_signed()) + obase)
                         for v in range(V)]
            m.d.sync += [b1_valid.eq(b0_valid), b1_last.eq(b0_last), b1_err.eq(b0_err), b1_e.eq(b0_e), b1_f.eq(b0_f),
                         b1_k.eq(b0_k)]
            for v in range(V):
                m.d.sync += [b1_sgn[v].eq(rr[v] < 0), b1_mag[v].eq(Mux(rr[v] < 0, -rr[v], rr[v]))]

        # ---------------- B2: magnitude of p = r * (2**mbits + f); per-beat exponent constants from k
        # (each later compare is then against a register: no adder in front of a comparator)
        pbits = MW + c.mbits + 1
        RMAX = pbits + 2                # a right shift this long drops every bit (round bit 0)
        b2_valid, b2_last, b2_err = Signal(), Signal(), Signal()
        b2_sgn = [Signal(name=f"b2sgn{v}") for v in range(V)]
        b2_mag = [Signal(pbits, name=f"b2mag{v}") for v in range(V)]
        b2_kk10 = Signal(signed(11))    # -(k + 14): the value is normal iff msb >= this
        b2_ksat = Signal(signed(11))    # min(-(k + 24), RMAX): shift of a subnormal (negative = left)
        b2_nks = Signal(signed(11))     # -b2_ksat
        b2_kle0 = Signal()              # b2_ksat <= 0
        b2_k14 = Signal(signed(11))     # k + 14: biased exponent - 1 of bit 0
        b2_t30 = Signal(signed(11))     # 16 - k: a normal value is Inf iff msb >= this
        mant = Signal(c.mbits + 1)
        m.d.comb += mant.eq((1 << c.mbits) + (b1_f if c.mbits else 0))
        far = b1_k < -(RMAX + 24)       # -(k + 24) > RMAX
        m.d.sync += [b2_valid.eq(b1_valid), b2_last.eq(b1_last), b2_err.eq(b1_err),
                     b2_kk10.eq(-(b1_k + 14)), b2_k14.eq(b1_k + 14), b2_t30.eq(16 - b1_k),
                     b2_ksat.eq(Mux(far, RMAX, -(b1_k + 24))), b2_nks.eq(Mux(far, -RMAX, b1_k + 24)),
                     b2_kle0.eq(~far & (b1_k >= -24))]
        m.d.sync += [b2_sgn[v].eq(b1_sgn[v]) for v in range(V)]
        m.d.sync += [b2_mag[v].eq(b1_mag[v] * mant) for v in range(V)]

        # ---------------- B3: leading one (a balanced tree), shift direction and amounts, exponent
        def lead_one(vec, tag):
            """(index of the highest set bit (0 if none), any bit set) of ``vec`` as a balanced tree."""
            level = [(vec[i], Const(0, 0)) for i in range(len(vec))]     # (any bit set, index in group)
            while len(level) > 1:
                if len(level) % 2:
                    level.append((Const(0, 1), Const(0, len(level[0][1]))))
                nxt = []
                for a in range(0, len(level), 2):
                    (alo, ilo), (ahi, ihi) = level[a], level[a + 1]
                    idx = Signal(len(ilo) + 1, name=f"lo{tag}_{len(level)}_{a}")
                    m.d.comb += idx.eq(Mux(ahi, Cat(ihi, Const(1, 1)), Cat(ilo, Const(0, 1))))
                    nxt.append((alo | ahi, idx))
                level = nxt
            return level[0][1], level[0][0]

        RW = RMAX.bit_length()
        b3_valid, b3_last, b3_err = Signal(), Signal(), Signal()
        b3_sgn = [Signal(name=f"b3sgn{v}") for v in range(V)]
        b3_mag = [Signal(pbits, name=f"b3mag{v}") for v in range(V)]
        b3_left = [Signal(name=f"b3left{v}") for v in range(V)]          # shift left (or not at all)
        b3_lamt = [Signal(4, name=f"b3lamt{v}") for v in range(V)]       # left shift (<= 10)
        b3_ramt = [Signal(RW, name=f"b3ramt{v}") for v in range(V)]      # right shift (1..RMAX)
        b3_em1 = [Signal(5, name=f"b3em1{v}") for v in range(V)]         # biased exponent - 1 (normal)
        b3_norm = [Signal(name=f"b3norm{v}") for v in range(V)]
        b3_big = [Signal(name=f"b3big{v}") for v in range(V)]            # normal with exponent >= 31
        b3_nz = [Signal(name=f"b3nz{v}") for v in range(V)]
        m.d.sync += [b3_valid.eq(b2_valid), b3_last.eq(b2_last), b3_err.eq(b2_err)]
        for v in range(V):
            mag = b2_mag[v]
            msb_t, nz = lead_one(mag, v)
            msb = Signal(range(1 << (pbits - 1).bit_length()), name=f"msb{v}")
            m.d.comb += msb.eq(msb_t)
            norm = Signal(name=f"norm{v}")
            m.d.comb += norm.eq(msb >= b2_kk10)
            m.d.sync += [b3_sgn[v].eq(b2_sgn[v]), b3_mag[v].eq(mag), b3_norm[v].eq(norm), b3_nz[v].eq(nz),
                         b3_left[v].eq(Mux(norm, msb <= 10, b2_kle0)),
                         b3_lamt[v].eq(Mux(norm, 10 - msb, b2_nks)[:4]),
                         b3_ramt[v].eq(Mux(norm, msb - 10, b2_ksat)[:RW]),
                         b3_em1[v].eq((msb + b2_k14)[:5]),
                         b3_big[v].eq(norm & (msb >= b2_t30))]

        # ---------------- B4: shift with round-to-nearest-even bits (sticky from prefix ORs)
        b4_valid, b4_last, b4_err = Signal(), Signal(), Signal()
        b4_sgn = [Signal(name=f"b4sgn{v}") for v in range(V)]
        b4_q = [Signal(12, name=f"b4q{v}") for v in range(V)]
        b4_up = [Signal(name=f"b4up{v}") for v in range(V)]
        b4_em1 = [Signal(5, name=f"b4em1{v}") for v in range(V)]
        b4_norm = [Signal(name=f"b4norm{v}") for v in range(V)]
        b4_big = [Signal(name=f"b4big{v}") for v in range(V)]
        b4_zero = [Signal(name=f"b4zero{v}") for v in range(V)]
        m.d.sync += [b4_valid.eq(b3_valid), b4_last.eq(b3_last), b4_err.eq(b3_err)]
        for v in range(V):
            mag, ramt = b3_mag[v], b3_ramt[v]
            wide = Cat(Const(0, 1), mag)             # one guard bit below bit 0
            shifted = Signal(pbits + 1, name=f"shifted{v}")
            m.d.comb += shifted.eq(wide >> ramt)     # bit 0 = round bit, bits 1.. = q
            # stk[s]: some bit a right shift by s drops below its round bit is set (bits 0..s-2)
            stk = [Const(0, 1), Const(0, 1)] + [mag[:min(i - 1, pbits)].any() for i in range(2, 1 << RW)]
            qr = Signal(12, name=f"qr{v}")
            ql = Signal(12, name=f"ql{v}")
            m.d.comb += [qr.eq(shifted[1:]), ql.eq(mag << b3_lamt[v])]
            q = Signal(12, name=f"q{v}")
            m.d.comb += q.eq(Mux(b3_left[v], ql, qr))
            up = ~b3_left[v] & shifted[0] & (_mux_tree(stk, ramt) | q[0])
            m.d.sync += [b4_sgn[v].eq(b3_sgn[v]), b4_q[v].eq(q), b4_up[v].eq(up), b4_em1[v].eq(b3_em1[v]),
                         b4_norm[v].eq(b3_norm[v]), b4_big[v].eq(b3_big[v]), b4_zero[v].eq(~b3_nz[v])]

        # ---------------- output FIFO entry: exponent + rounded significand, overflow to Inf
        ow = len(self.o_values.payload.as_value())
        # A first-word-fall-through FIFO in LUT RAM (as SyncFIFO) that writes on every valid beat:
        # the walk's credits guarantee room, so no full flag gates the write enable of the ~33 RAM
        # cells (SyncFIFO's level -> full -> write enable -> level was a long path); ``nonempty`` is
        # a register holding ``level != 0``.
        o_ent = Signal(out_layout(V))
        fmem = Memory(shape=unsigned(ow), depth=OUT_FIFO_DEPTH, init=[])
        m.submodules.out_fifo = fmem
        fwp, frp = fmem.write_port(), fmem.read_port(domain="comb")
        FA = (OUT_FIFO_DEPTH - 1).bit_length()
        f_wa, f_ra = Signal(FA), Signal(FA)
        f_lvl = Signal(range(OUT_FIFO_DEPTH + 1))
        f_lvl_n = Signal(range(OUT_FIFO_DEPTH + 1))
        nonempty = Signal()
        m.d.comb += [fwp.addr.eq(f_wa), fwp.data.eq(o_ent), fwp.en.eq(b4_valid), frp.addr.eq(f_ra),
                     o_ent.last.eq(b4_last), o_ent.error.eq(b4_err & b4_last),
                     self.o_values.valid.eq(nonempty), self.o_values.payload.eq(frp.data),
                     pop.eq(nonempty & self.o_values.ready),
                     f_lvl_n.eq(f_lvl + b4_valid - pop)]
        m.d.sync += [f_lvl.eq(f_lvl_n), nonempty.eq(f_lvl_n != 0)]
        with m.If(b4_valid):
            m.d.sync += f_wa.eq(f_wa + 1)
        with m.If(pop):
            m.d.sync += f_ra.eq(f_ra + 1)
        for v in range(V):
            bits = Signal(17, name=f"fbits{v}")
            ebf = Signal(5, name=f"ebf{v}")
            m.d.comb += ebf.eq(Mux(b4_norm[v], b4_em1[v], 0))
            m.d.comb += bits.eq(Cat(b4_q[v][:10], ebf + b4_q[v][10:]) + b4_up[v])
            inf = b4_big[v] | (bits >= 0x7C00)
            out = Mux(b4_zero[v], 0, Mux(inf, Cat(Const(0x7C00, 15), b4_sgn[v]), Cat(bits[:15], b4_sgn[v])))
            m.d.comb += o_ent.data[v].eq(out)


def build(**params) -> KVDecompressor:
    """Design-registry factory (``sparsefab fpga build --design kv-decompress``)."""
    return KVDecompressor(**params)


def sidecar_extra(cfg: KVDecompressConfig) -> dict:
    return {"format_version": FORMAT_VERSION, "latency_last_word_to_last_beat": cfg.latency_last,
            "cycles_per_block": cfg.cycles_per_block, "values_per_cycle": cfg.values_per_cycle,
            "words_per_block": cfg.words_per_block, "pipe_stages": PIPE_STAGES}
