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
  lane decodes ``spl = values_per_cycle / lanes`` symbols per cycle.  Two decoders are
  generated (``decoder=``):

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
  FP16 (subnormals, overflow to Inf), in 4 pipeline stages.

Ports
-----
i_words : In(stream.Signature(unsigned(bus_bits)))
    Block words; word ``j`` of a block carries block bits ``[j*bus_bits, (j+1)*bus_bits)``
    (bits past ``8*block_bytes`` are ignored).  Blocks back to back.
i_cfg : In(stream.Signature(StructLayout({"addr": 10, "data": 16})))
    Table writes (codebook ``k`` at ``k*64 + ...``), see :func:`config_words`.  Write while idle.
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
    output (backpressure).

Latency: a block's last word is accepted at cycle 0; its first beat is valid at cycle
``LATENCY_FIRST = 6``, its last beat at ``5 + group/values_per_cycle`` (21 for the defaults),
when the output is never stalled.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sparsefab.compress import huffman
from sparsefab.compress.errors import SparsefabError

FORMAT_VERSION = 1
PIPE_STAGES = 4          # decode register -> centroid -> multiply -> fp16 stage 1 -> output
CFG_ESC_LEN = 16
CFG_ESC_CODE = 17
CFG_LIM = 0
CFG_OFF = 8
CFG_TABLE = 32


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
    decoder: str = "chain"

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
        if self.decoder not in ("chain", "spec"):
            bad("decoder", "'chain' or 'spec'")
        if self.header_bits >= self.nbits:
            bad("block_bytes", "room for lane data after the header")

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
    return out


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
    return data.StructLayout({"addr": 10, "data": 16})


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
        m.d.comb += self.i_cfg.ready.eq(1)
        with m.If(self.i_cfg.valid):
            a, d = self.i_cfg.payload.addr, self.i_cfg.payload.data
            for k in range(K):
                for li in range(L):
                    with m.If(a == 64 * k + CFG_LIM + li):
                        m.d.sync += lim[k][li].eq(d)
                    with m.If(a == 64 * k + CFG_OFF + li):
                        m.d.sync += off[k][li].eq(d[:7])
                with m.If(a == 64 * k + CFG_ESC_LEN):
                    m.d.sync += esc_len[k].eq(d)
                with m.If(a == 64 * k + CFG_ESC_CODE):
                    m.d.sync += esc_code[k].eq(d)
                for r in range(S):
                    with m.If(a == 64 * k + CFG_TABLE + r):
                        m.d.sync += cent[k][r].eq(d)

        # ---- load stage: words -> input buffer
        wpb = c.words_per_block
        inbuf = Signal(wpb * c.bus_bits)
        wcount = Signal(range(wpb + 1))
        full = Signal()
        m.d.comb += self.i_words.ready.eq(~full)
        with m.If(self.i_words.valid & ~full):
            for j in range(wpb):
                with m.If(wcount == j):
                    m.d.sync += inbuf[j * c.bus_bits:(j + 1) * c.bus_bits].eq(self.i_words.payload)
            with m.If(wcount == wpb - 1):
                m.d.sync += [wcount.eq(0), full.eq(1)]
            with m.Else():
                m.d.sync += wcount.eq(wcount + 1)

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


def build(**params) -> KVDecompressor:
    """Design-registry factory (``sparsefab fpga build --design kv-decompress``)."""
    return KVDecompressor(**params)


def sidecar_extra(cfg: KVDecompressConfig) -> dict:
    return {"format_version": FORMAT_VERSION, "latency_last_word_to_last_beat": cfg.latency_last,
            "cycles_per_block": cfg.cycles_per_block, "values_per_cycle": cfg.values_per_cycle,
            "words_per_block": cfg.words_per_block, "pipe_stages": PIPE_STAGES}
