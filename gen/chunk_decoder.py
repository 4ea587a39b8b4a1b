"""Chunk decoder: a bitmap front end built for the ECP5's clock (count-only take loop).

Same ports as :class:`~sparsefab.gen.bitmap_decoder.BitmapDecoder` (so it drops into
:class:`~sparsefab.gen.spmv_multi.SparseMacCluster` as ``front_end=ChunkDecoder``), restricted to
the form the ECP5 cluster uses: 64-bit bus (``bus_bits = 64``), one mask word and one value word
per beat (``mask_words = value_words = 1``), ``lanes * weight_bits <= 64`` (1..8 lanes at 8 bits).

Since ``stride_bits`` is a multiple of 64, every mask beat belongs to one row: it is a **chunk**
(columns ``64 j .. 64 j + 63`` of a row, ``j`` = beat index in the row).  The design splits what
BitmapDecoder does in one loop into a short loop on counts and feed-forward pipelines:

* **Ingest** (feed-forward, three stages): a beat is registered with its byte popcounts, its
  row tags (row last, matrix last, ``j``) and its padding check (set bits at columns ``>= cols``,
  from a mask set at the command), then its byte prefix counts (two stages of adders) and
  popcount ``n``.  The wide part (bits, prefixes, ``j``) is written to a 16-slot store in LUT
  RAM; the counts, row tags and slot number enter a small chunk FIFO.  The take loop never
  moves chunk data: its decisions fan out to a few dozen count registers only.
* **Take loop** (the only feedback path): a window of two chunk registers ``lo`` (being taken,
  ``r`` set bits left, ``t`` taken) and ``hi`` (the next one, untouched).  Each cycle takes
  ``min(L, r)`` from ``lo``; lanes left over take from ``hi`` when ``lo`` is exhausted (the next
  row's lanes, ``nxt``, if ``lo`` is its row's last chunk; then at most ``n_hi - 1`` when ``hi`` is
  also row-last, so one row end per bundle).  At most one chunk retires per cycle.  Every
  quantity the loop compares is a register computed when a chunk enters ``hi`` (thermometers
  ``n_hi >= s``, differences ``n_hi - s``, ``n_hi - s <= L`` for each possible spare-lane count
  ``s``), so the loop is a few small muxes: registers -> spare-indexed mux -> state mux.
* **Lane positions** (feed-forward, three stages): per lane, the rank of its set bit in ``lo``
  or ``hi`` -> the byte holding it (a thermometer over the chunk's registered byte prefix
  counts) and the rank inside that byte -> the bit (an 8-bit select).  Columns need no adder:
  ``col = 64 j + 8 byte + bit``.
* **Values**: a buffer of ``value_depth`` beats; the loop issues only when a registered flag says
  at least ``2 L`` values are promised-free (so the lag of one cycle is safe) or the value
  stream's ``last`` beat is in; the value pipeline reads the two beats at the bundle's value
  position and hands lane ``i`` the value ``position + i`` (values are continuous across rows).
* **Backpressure**: ``o_lanes`` comes from an output FIFO (LUT RAM); the loop issues only while
  a registered credit says the FIFO can take every bundle in flight, so no enable fans out to
  the pipeline and ``o_lanes.ready`` only returns a credit.

Malformed streams set sticky flags (``o_error_flags``, bit positions of
:data:`sparsefab.gen.spmv_config.ERRORS`), flush every stage and return to idle; nothing waits
for input a malformed stream will not deliver: ``mask_padding`` (a set bit at a column
``>= cols``), ``values_short`` (the masks need a value beyond the beat marked ``last``),
``values_extra`` (the beat holding the matrix's final value is not marked ``last``).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.bitmap_decoder import _gt_const, cmd_layout, lane_layout, value_layout
from sparsefab.gen.spmv_config import ERRORS, ROWS_BITS, SpmvConfig

__all__ = ["ChunkDecoder", "build_decoder", "check_config", "value_depth"]

#: Depth of the chunk FIFO between the ingest stages and the take loop.
CHUNK_FIFO_DEPTH = 8
#: Depth of the output (lane bundle) FIFO.
OUT_FIFO_DEPTH = 8
#: Slots of the chunk data store (LUT RAM).
STORE_SLOTS = 16
#: Cycles from a bundle's issue by the take loop to its write into the output FIFO.
PIPE_STAGES = 3


def check_config(config) -> SpmvConfig:
    """Raise :class:`SparsefabError` (one line) unless ``config`` is a form ChunkDecoder builds."""
    if not isinstance(config, SpmvConfig) or config.dense:
        raise SparsefabError(f"ChunkDecoder: config={config!r}, expected a sparse SpmvConfig")
    if config.bus_bits != 64:
        raise SparsefabError(f"ChunkDecoder: bus_bits={config.bus_bits}, expected 64")
    if config.mask_words != 1:
        raise SparsefabError(f"ChunkDecoder: mask_words={config.mask_words}, expected 1 (one 64-bit chunk per beat)")
    if config.value_words != 1:
        raise SparsefabError(f"ChunkDecoder: value_words={config.value_words}, expected 1")
    if config.weight_bits not in (4, 8):
        raise SparsefabError(f"ChunkDecoder: weight_bits={config.weight_bits}, expected 4 or 8")
    if not 1 <= config.lanes <= 8:
        raise SparsefabError(f"ChunkDecoder: lanes={config.lanes}, expected 1..8")
    return config


def value_depth(config: SpmvConfig) -> int:
    """Value beats buffered: a power of two >= 4 holding ``4 L + VPB - 1`` values (the issue
    rule keeps ``2 L`` values promised-free; up to ``2 L`` more are promised but not read)."""
    vpb = 64 // config.weight_bits
    need = -(-(4 * config.lanes + vpb - 1) // vpb)
    d = 4
    while d < need:
        d *= 2
    return d


class ChunkDecoder(wiring.Component):
    """Bitmap mask/value streams to lane bundles, ``lanes`` nonzeros per cycle, for the ECP5.

    Parameters
    ----------
    config : SpmvConfig
        Uses ``lanes`` (1..8), ``weight_bits`` (4 or 8), ``block``, ``max_cols``; requires
        ``bus_bits = 64``, ``mask_words = 1``, ``value_words = 1`` (see :func:`check_config`).

    Ports
    -----
    i_cmd : In(stream.Signature(cmd_layout))
        ``rows`` (16 bits, >= 1), ``cols`` (``col_bits``, 1..max_cols) of the next matrix;
        accepted when idle (``o_busy`` low).  The caller checks the ranges.
    i_mask : In(stream.Signature(64))
        Mask beats: ``rows * ceil(cols / 64)`` per matrix (one 64-bit chunk of one row each).
    i_value : In(stream.Signature(value_layout))
        Value beats (64 bits) with ``last`` on the final beat of the matrix;
        ``max(1, ceil(nnz * b / 64))`` beats (one zero beat if nnz = 0).
    o_lanes : Out(stream.Signature(lane_layout))
        Lane bundles (:func:`~sparsefab.gen.bitmap_decoder.lane_layout`): every row produces
        exactly one bundle with ``row_end`` (empty rows included), in row order; a bundle may
        carry the next row's first lanes (``nxt``).
    o_busy : Out(1)
        High from the cycle after a command is accepted until its last bundle has left.
    o_error : Out(1)
        Sticky until reset: a malformed stream was seen (the matrix was abandoned).
    o_error_flags : Out(4)
        Sticky causes (``values_short``, ``values_extra``, ``mask_padding`` bits of ERRORS).

    Latency: a mask beat accepted in cycle ``t`` is in the chunk FIFO after ``t+3`` and can be
    taken from ``t+5``; a bundle issued by the take loop in cycle ``u`` is written to the output
    FIFO in ``u+3`` and is on ``o_lanes`` from ``u+5`` (``SyncFIFOBuffered``).  Throughput:
    ``lanes`` nonzeros per cycle while the two chunks in the window hold them; at most one chunk
    per cycle (a row costs at least ``ceil(cols/64)`` cycles); no per-row bubble when a row ends
    mid-bundle (the next row's lanes fill it).

    Measured (``build_decoder(lanes=4)``, ECP5-85F, nextpnr seed 1): at 2f3091c 86.58 MHz routed
    (104.28 MHz placed), 3,498 LUTs, 2,419 FFs; its routed critical path was the take loop's
    load enables of the window data registers (1.23 ns logic, 10.32 ns routing), which the chunk
    store (f2dc63c) removes: Yosys ``synth_ecp5`` then counts 2,253 LUT4 + 81 DPR16X4 and 1,695 FF
    (was 2,352 + 51 and 2,217); not yet routed.  Decoder alone (``run_decoder``, no stalls) on 24
    rows of MiniLM layer0.q, 4 lanes: ideal/busy 0.9905, 0.9800, 0.9300 at 50, 75, 90 % sparsity.
    """

    def __init__(self, config: SpmvConfig):
        try:
            check_config(config)
        except SparsefabError:
            self._MustUse__silence = True
            raise
        self._config = config
        super().__init__({
            "i_cmd": In(stream.Signature(cmd_layout(config))),
            "i_mask": In(stream.Signature(config.mask_bus)),
            "i_value": In(stream.Signature(value_layout(config))),
            "o_lanes": Out(stream.Signature(lane_layout(config))),
            "o_busy": Out(1),
            "o_error": Out(1),
            "o_error_flags": Out(4),
        })

    @property
    def config(self) -> SpmvConfig:
        return self._config

    def elaborate(self, platform):  # noqa: C901 - one datapath, kept together on purpose
        m = Module()
        cfg = self._config
        L, b = cfg.lanes, cfg.weight_bits
        VPB = 64 // b                               # values per value beat
        lv = (VPB - 1).bit_length()
        D = value_depth(cfg)
        db = (D - 1).bit_length()
        lb = L.bit_length()                         # bits holding 0..L
        col_w = len(self.o_lanes.payload.col[0])
        jb = max(1, ((cfg.max_cols + 63) // 64 - 1).bit_length())   # beat index in a row
        sw = ((cfg.max_cols + 63) // 64).bit_length()               # beats per row
        need_w = ROWS_BITS + (cfg.max_cols.bit_length()) + 1          # values a matrix may need
        beats_w = need_w - lv + 1

        running = Signal()
        err = Signal(4)
        flush = Signal()                            # one-cycle pulse: abandon the matrix
        m.d.comb += [self.o_error_flags.eq(err), self.o_error.eq(err.any()), self.o_busy.eq(running)]
        new_err = Signal(4)
        m.d.comb += flush.eq(new_err.any() & running)
        m.d.sync += err.eq(err | new_err)

        # ---------------------------------------------------------------- command
        cmd = self.i_cmd.payload
        start = Signal()
        m.d.comb += [self.i_cmd.ready.eq(~running), start.eq(self.i_cmd.valid & ~running)]
        spr = Signal(sw)                           # beats per row
        padmask = Signal(64)                       # set bits here in a row's last chunk are padding
        with m.If(start):
            rem = cmd.cols[:6]
            # bit i is padding iff rem <= i (rem != 0): a thermometer of 6-input functions, no
            # carry chain (a 64-bit ``(1 << rem) - 1`` was the ECP5 engine's routed critical path)
            m.d.sync += [running.eq(1), spr.eq((cmd.cols + 63) >> 6),
                         padmask.eq(Cat(*[(rem != 0) & ~_gt_const(rem, i) for i in range(64)]))]

        # ---------------------------------------------------------------- ingest stage 0
        jidx = Signal(jb)                          # beat index in the row of the next mask beat
        jlast = Signal()                           # next beat is its row's last
        rows_left = Signal(ROWS_BITS)              # rows whose beats are still to come
        row1 = Signal()                            # rows_left == 1
        mdone = Signal()                           # the matrix's final mask beat was accepted
        i0_v, i0_rl, i0_ml, i0_pad = Signal(), Signal(), Signal(), Signal()
        i0_bits = Signal(64)
        i0_j = Signal(jb)
        i0_bc = [Signal(4, name=f"i0_bc{k}") for k in range(8)]
        i1_v = Signal()
        cfifo_rdy_cnt = Signal()
        mask_take = Signal()
        m.d.comb += [self.i_mask.ready.eq(running & ~mdone & cfifo_rdy_cnt),
                     mask_take.eq(self.i_mask.valid & self.i_mask.ready)]
        beat = self.i_mask.payload
        m.d.sync += i0_v.eq(mask_take & ~flush)
        with m.If(mask_take):
            m.d.sync += [i0_bits.eq(beat), i0_j.eq(jidx), i0_rl.eq(jlast), i0_ml.eq(jlast & row1),
                         i0_pad.eq(jlast & (beat & padmask).any())]
            m.d.sync += [i0_bc[k].eq(_pop8(beat[8 * k:8 * k + 8])) for k in range(8)]
            with m.If(jlast):
                m.d.sync += [jidx.eq(0), jlast.eq(spr == 1), rows_left.eq(rows_left - 1),
                             row1.eq(rows_left == 2), mdone.eq(row1)]
            with m.Else():
                m.d.sync += [jidx.eq(jidx + 1), jlast.eq(jidx + 2 == spr)]
        with m.If(start):
            m.d.sync += [jidx.eq(0), jlast.eq(((cmd.cols + 63) >> 6) == 1), rows_left.eq(cmd.rows),
                         row1.eq(cmd.rows == 1), mdone.eq(0)]
        m.d.comb += new_err[ERRORS["mask_padding"]].eq(i0_v & i0_pad)

        # ---------------------------------------------------------------- ingest stage 1 -> chunk FIFO
        # chunk record: bits 64 | P1..P7 (6 bits each: set bits in bytes below byte k) | n (7) | rl | ml | j
        # The wide part of a chunk (bits, byte prefixes P1..P7, j) goes to a store of STORE_SLOTS
        # slots in LUT RAM; the chunk FIFO and the take loop carry only its counts, row tags and
        # slot number, so the loop's decisions fan out to a few registers (routing of the load
        # enables of 2 x 110 data registers was 8 of the 11.5 ns of the 86.6 MHz routed path).
        # A slot is rewritten STORE_SLOTS chunks later; at most CHUNK_FIFO_DEPTH (FIFO + ingest)
        # + 2 (window) + 1 (read by stage A) chunks are alive.
        sb = (STORE_SLOTS - 1).bit_length()
        store = Memory(shape=64 + 42 + jb, depth=STORE_SLOTS, init=[])
        m.submodules.store = store
        st_w = store.write_port()
        st_lo = store.read_port(domain="comb")
        st_hi = store.read_port(domain="comb")
        wslot = Signal(sb)
        rec = {"n": 7, "rl": 1, "ml": 1, "slot": sb}
        rec_w = sum(rec.values())
        cfifo = SyncFIFOBuffered(width=rec_w, depth=CHUNK_FIFO_DEPTH)
        cf_rst = Signal()
        m.d.comb += cf_rst.eq(flush | start)
        m.submodules.cfifo = ResetInserter(cf_rst)(cfifo)
        # stage 1: prefix counts inside each half beat (two adder levels); stage 2: across halves
        i1_bits = Signal(64)
        i1_rl, i1_ml = Signal(), Signal()
        i1_j = Signal(jb)
        i1_pa = [Signal(6, name=f"i1_pa{k}") for k in range(8)]   # set bits in bytes 4h..k of half h
        m.d.sync += i1_v.eq(i0_v & ~flush)
        with m.If(i0_v):
            m.d.sync += [i1_bits.eq(i0_bits), i1_rl.eq(i0_rl), i1_ml.eq(i0_ml), i1_j.eq(i0_j)]
            for h in (0, 4):
                bc = i0_bc[h:h + 4]
                m.d.sync += [i1_pa[h].eq(bc[0]), i1_pa[h + 1].eq(bc[0] + bc[1]),
                             i1_pa[h + 2].eq((bc[0] + bc[1]) + bc[2]), i1_pa[h + 3].eq((bc[0] + bc[1]) + (bc[2] + bc[3]))]
        i1 = Signal(rec_w)                         # stage 2 (the chunk record)
        i2_v = Signal()
        m.d.sync += i2_v.eq(i1_v & ~flush)
        pre = [i1_pa[k] if k < 4 else i1_pa[3] + i1_pa[k] for k in range(8)]   # set bits in bytes 0..k
        i2_wide = Signal(64 + 42 + jb)
        with m.If(i1_v):
            m.d.sync += [i1.eq(Cat(pre[7][:7], i1_rl, i1_ml, wslot)),
                         i2_wide.eq(Cat(i1_bits, *[p[:6] for p in pre[:7]], i1_j)),
                         wslot.eq(wslot + 1)]
        m.d.comb += [cfifo.w_en.eq(i2_v), cfifo.w_data.eq(i1),
                     st_w.en.eq(i2_v), st_w.addr.eq(i1[-sb:]), st_w.data.eq(i2_wide)]
        # room for a beat accepted now: FIFO entries + ingest stages in flight < depth
        m.d.comb += cfifo_rdy_cnt.eq(cfifo.level + i0_v + i1_v + i2_v < CHUNK_FIFO_DEPTH)

        # value need (feed-forward): set bits of the masks ingested so far
        vneed = Signal(need_w)
        mcount_done = Signal()                     # the final chunk's count is in vneed
        with m.If(i2_v):
            m.d.sync += vneed.eq(vneed + i1[0:7])
            m.d.sync += mcount_done.eq(i1[8])
        with m.If(start):
            m.d.sync += [vneed.eq(0), mcount_done.eq(0), wslot.eq(0)]

        def field(sig, name):
            off = 0
            for k, w in rec.items():
                if k == name:
                    return sig[off:off + w]
                off += w
            raise KeyError(name)

        head = cfifo.r_data
        head_rdy = cfifo.r_rdy
        h_n = field(head, "n")

        # ---------------------------------------------------------------- take loop
        lo_v, hi_v = Signal(), Signal()
        lo_slot, hi_slot = Signal(sb), Signal(sb)
        lo_rl, lo_ml, hi_rl, hi_ml = Signal(), Signal(), Signal(), Signal()
        r_lo = Signal(7)                           # set bits of lo not yet taken
        t_lo = Signal(7)                           # set bits of lo taken (ranks below are gone)
        lo_le = Signal()                           # r_lo <= L: lo is exhausted by this bundle
        # hi, precomputed when it is loaded (index s = lanes left over for hi, 0..L)
        hi_nz = Signal()
        ge_nc = Signal(L + 1)                      # n_hi >= s
        ge_c = Signal(L + 1)                       # n_hi - 1 >= s (hi row-last behind a row end)
        nm = [Signal(7, name=f"hi_nm{s}") for s in range(L + 1)]     # n_hi - s
        lem = Signal(L + 1)                        # n_hi - s <= L
        n_low = Signal(lb)                         # n_hi (when < L)
        nm1_low = Signal(lb)                       # max(n_hi - 1, 0) (when < L + 1)

        okc = Signal()                             # output FIFO credit (registered)
        vok = Signal()                             # values guaranteed (registered)
        go = Signal()
        m.d.comb += go.eq(lo_v & okc & vok & running)

        retire = Signal()
        m.d.comb += retire.eq(go & lo_le)
        cap = Signal()
        m.d.comb += cap.eq(lo_rl & hi_rl)
        # lanes left over for hi: s = L - r_lo (r_lo <= L when retiring): index the tables by r_lo
        ridx = r_lo[:lb]
        size = 1 << lb

        def by_r(vals, width):
            table = [vals[L - r] if r <= L else Const(0, width) for r in range(size)]
            return Array(table)[ridx]

        ge_sel = Signal()
        m.d.comb += ge_sel.eq(Mux(cap, by_r([ge_c[s] for s in range(L + 1)], 1),
                                  by_r([ge_nc[s] for s in range(L + 1)], 1)))
        spare = Signal(lb)
        m.d.comb += spare.eq(by_r([Const(s, lb) for s in range(L + 1)], lb))
        take_hi = Signal(lb)
        with m.If(hi_v & lo_le):
            m.d.comb += take_hi.eq(Mux(ge_sel, spare, Mux(cap, nm1_low, n_low)))
        r_new = Signal(7)
        le_new = Signal()
        m.d.comb += [r_new.eq(Mux(ge_sel, by_r(nm, 7), cap & hi_nz)),
                     le_new.eq(Mux(ge_sel, by_r([lem[s] for s in range(L + 1)], 1), 1))]
        take_lo = Signal(lb)
        m.d.comb += take_lo.eq(Mux(lo_le, r_lo[:lb], L))

        lo_from_hi = Signal()
        lo_from_head = Signal()
        hi_load = Signal()
        m.d.comb += [lo_from_hi.eq(retire & hi_v),
                     lo_from_head.eq((~lo_v | (retire & ~hi_v)) & head_rdy),
                     hi_load.eq(head_rdy & ((lo_v & ~hi_v & ~retire) | (retire & hi_v))),
                     cfifo.r_en.eq(lo_from_head | hi_load)]

        with m.If(go & ~lo_le):
            m.d.sync += [r_lo.eq(r_lo - L), t_lo.eq(t_lo + L), lo_le.eq(r_lo <= 2 * L)]
        with m.If(lo_from_hi):
            m.d.sync += [lo_slot.eq(hi_slot), lo_rl.eq(hi_rl), lo_ml.eq(hi_ml),
                         r_lo.eq(r_new), t_lo.eq(take_hi), lo_le.eq(le_new)]
        with m.If(lo_from_head):
            m.d.sync += [lo_slot.eq(field(head, "slot")), lo_rl.eq(field(head, "rl")), lo_ml.eq(field(head, "ml")),
                         r_lo.eq(h_n), t_lo.eq(0), lo_le.eq(h_n <= L)]
        m.d.sync += [lo_v.eq(lo_from_hi | lo_from_head | (lo_v & ~retire)),
                     hi_v.eq(hi_load | (hi_v & ~retire))]
        with m.If(hi_load):
            m.d.sync += [hi_slot.eq(field(head, "slot")), hi_rl.eq(field(head, "rl")), hi_ml.eq(field(head, "ml")), hi_nz.eq(h_n != 0),
                         n_low.eq(h_n[:lb]), nm1_low.eq(Mux(h_n == 0, 0, h_n - 1)[:lb])]
            for s in range(L + 1):
                m.d.sync += [ge_nc[s].eq(h_n >= s), ge_c[s].eq(h_n >= s + 1), nm[s].eq(h_n - s),
                             lem[s].eq(h_n <= L + s)]
        with m.If(flush | start):
            m.d.sync += [lo_v.eq(0), hi_v.eq(0)]

        # ---------------------------------------------------------------- stage A (no enables)
        a_v = Signal()
        a_lo_slot, a_hi_slot = Signal(sb), Signal(sb)
        a_t = Signal(7)
        a_tlo, a_thi = Signal(lb), Signal(lb)
        a_re, a_last = Signal(), Signal()
        m.d.sync += [a_v.eq(go & ~flush), a_lo_slot.eq(lo_slot), a_hi_slot.eq(hi_slot), a_t.eq(t_lo), a_tlo.eq(take_lo),
                     a_thi.eq(take_hi), a_re.eq(lo_le & lo_rl), a_last.eq(lo_le & lo_ml)]
        m.d.comb += [st_lo.addr.eq(a_lo_slot), st_hi.addr.eq(a_hi_slot)]
        a_lo_bits, a_lo_P, a_lo_j = st_lo.data[:64], st_lo.data[64:106], st_lo.data[106:]
        a_hi_bits, a_hi_P, a_hi_j = st_hi.data[:64], st_hi.data[64:106], st_hi.data[106:]
        a_k = Signal(lb + 1)
        m.d.comb += a_k.eq(a_tlo + a_thi)

        # stage B: per lane chunk and rank
        b_v, b_re, b_last = Signal(), Signal(), Signal()
        b_bits = [Signal(64, name=f"b_bits{i}") for i in range(L)]
        b_P = [Signal(42, name=f"b_P{i}") for i in range(L)]
        b_j = [Signal(jb, name=f"b_j{i}") for i in range(L)]
        b_rank = [Signal(6, name=f"b_rank{i}") for i in range(L)]
        b_valid, b_nxt = Signal(L), Signal(L)
        m.d.sync += [b_v.eq(a_v & ~flush), b_re.eq(a_re), b_last.eq(a_last)]
        for i in range(L):
            from_hi = Signal(name=f"a_fromhi{i}")
            m.d.comb += from_hi.eq(a_tlo <= i)
            m.d.sync += [b_bits[i].eq(Mux(from_hi, a_hi_bits, a_lo_bits)), b_P[i].eq(Mux(from_hi, a_hi_P, a_lo_P)),
                         b_j[i].eq(Mux(from_hi, a_hi_j, a_lo_j)),
                         b_rank[i].eq(Mux(from_hi, i - a_tlo, a_t + i)[:6]),
                         b_valid[i].eq(a_k > i), b_nxt[i].eq(from_hi & a_re)]

        # stage C: per lane byte and rank in the byte
        c_v, c_re, c_last = Signal(), Signal(), Signal()
        c_byte = [Signal(3, name=f"c_byte{i}") for i in range(L)]
        c_bb = [Signal(8, name=f"c_bb{i}") for i in range(L)]
        c_lr = [Signal(3, name=f"c_lr{i}") for i in range(L)]
        c_j = [Signal(jb, name=f"c_j{i}") for i in range(L)]
        c_valid, c_nxt = Signal(L), Signal(L)
        m.d.sync += [c_v.eq(b_v & ~flush), c_re.eq(b_re), c_last.eq(b_last), c_valid.eq(b_valid),
                     c_nxt.eq(b_nxt)]
        for i in range(L):
            P = [Const(0, 6)] + [b_P[i][6 * k:6 * k + 6] for k in range(7)]
            g = [b_rank[i] >= P[k] for k in range(1, 8)]      # thermometer: byte > k - 1
            onehot = [(~g[0]) if k == 0 else (g[k - 1] & ~g[k]) if k < 7 else g[6] for k in range(8)]
            byte = Signal(3, name=f"b_byte{i}")
            bb = Signal(8, name=f"b_bb{i}")
            lr = Signal(3, name=f"b_lr{i}")
            # the rank inside each candidate byte is computed beside the compares, then selected
            lrs = []
            for k in range(8):
                d = Signal(3, name=f"b_lr{i}_{k}")
                m.d.comb += d.eq(b_rank[i][:3] - P[k][:3])
                lrs.append(d)
            m.d.comb += [byte.eq(_or_const(onehot)),
                         bb.eq(_or_sel(onehot, [b_bits[i][8 * k:8 * k + 8] for k in range(8)], 8)),
                         lr.eq(_or_sel(onehot, lrs, 3))]
            m.d.sync += [c_byte[i].eq(byte), c_bb[i].eq(bb), c_lr[i].eq(lr), c_j[i].eq(b_j[i])]

        # ---------------------------------------------------------------- values
        vbuf = [Signal(64, name=f"vbuf{k}") for k in range(D)]
        wb = Signal(db)
        used = Signal(db + 1)
        vlast_in, vlast_d = Signal(), Signal()
        vbeats = Signal(beats_w)
        credit = Signal(signed(lv + db + 3))      # values accepted minus values promised (stage A's lags)
        vtake = Signal()
        free_b = Signal()
        m.d.comb += [self.i_value.ready.eq(running & ~vlast_in & (used < D)),
                     vtake.eq(self.i_value.valid & self.i_value.ready)]
        with m.If(vtake):
            m.d.sync += [Array(vbuf)[wb].eq(self.i_value.payload.data), wb.eq(wb + 1),
                         vbeats.eq(vbeats + 1), vlast_in.eq(self.i_value.payload.last)]
        m.d.sync += used.eq(used + vtake - free_b)
        m.d.sync += vlast_d.eq(vlast_in)
        a_kk = Mux(a_v, a_k, 0)
        m.d.sync += credit.eq(credit + Mux(vtake, VPB, 0) - a_kk)
        m.d.sync += vok.eq((credit - a_kk >= 2 * L) | vlast_in)
        # value position (beat * VPB + offset in the circular buffer), advanced in stage A
        vpos = Signal(db + lv)
        b_off = Signal(lv)
        b_rb = Signal(db)
        b_cross = Signal()
        with m.If(a_v):
            m.d.sync += vpos.eq(vpos + a_k)
        nxtpos = Signal(lv + 1)
        m.d.comb += nxtpos.eq(vpos[:lv] + a_k)
        m.d.sync += [b_off.eq(vpos[:lv]), b_rb.eq(vpos[lv:]), b_cross.eq(a_v & nxtpos[lv])]
        m.d.comb += free_b.eq(b_v & b_cross)
        c_win = Signal(128)
        c_idx = [Signal(lv + 1, name=f"c_vidx{i}") for i in range(L)]     # lane i's value in c_win
        m.d.sync += [c_win.eq(Cat(Array(vbuf)[b_rb], Array(vbuf)[(b_rb + 1)[:db]]))]
        m.d.sync += [c_idx[i].eq(b_off + i) for i in range(L)]
        with m.If(start | flush):
            m.d.sync += [wb.eq(0), used.eq(0), vlast_in.eq(0), vbeats.eq(0), credit.eq(0), vok.eq(0),
                         vpos.eq(0), vlast_d.eq(0)]

        # value stream checks (feed-forward, registered compares)
        supply = Signal(need_w + 1)
        m.d.comb += supply.eq(vbeats << lv)
        short_r, extra_r = Signal(), Signal()
        before_last = Signal(need_w + 1)           # values in the beats before the last one
        m.d.comb += before_last.eq((vbeats - 1) << lv)
        need1 = Mux(vneed == 0, 1, vneed)          # nnz = 0 still takes one beat
        # extra: every value is in, but no last yet (never wait for it), or beats before the last
        m.d.sync += [short_r.eq(running & vlast_in & (vneed > supply)),
                     extra_r.eq(running & mcount_done & Mux(vlast_in, before_last >= need1, supply >= need1))]
        with m.If(start | flush):
            m.d.sync += [short_r.eq(0), extra_r.eq(0)]
        m.d.comb += [new_err[ERRORS["values_short"]].eq(short_r), new_err[ERRORS["values_extra"]].eq(extra_r)]

        # ---------------------------------------------------------------- output FIFO
        payload = Signal.like(self.o_lanes.payload)
        ofifo = SyncFIFOBuffered(width=len(payload.as_value()), depth=OUT_FIFO_DEPTH)
        m.submodules.ofifo = ResetInserter(flush)(ofifo)
        for i in range(L):
            pos = Signal(3, name=f"c_pos{i}")
            m.d.comb += pos.eq(_select8(m, c_bb[i], c_lr[i], f"c_sel{i}"))
            m.d.comb += [payload.col[i].eq(Cat(pos, c_byte[i], c_j[i])[:col_w]),
                         payload.value[i].eq(c_win.word_select(c_idx[i], b))]
        m.d.comb += [payload.valid.eq(c_valid), payload.nxt.eq(c_nxt), payload.row_end.eq(c_re),
                     payload.last.eq(c_last & c_re),
                     ofifo.w_en.eq(c_v & ~flush), ofifo.w_data.eq(payload.as_value()),
                     self.o_lanes.valid.eq(ofifo.r_rdy), self.o_lanes.payload.eq(ofifo.r_data),
                     ofifo.r_en.eq(self.o_lanes.ready)]
        # credit: bundles the output FIFO can still take, minus the ones in flight
        cr = Signal(range(OUT_FIFO_DEPTH + 1), init=OUT_FIFO_DEPTH)
        rd = Signal()
        m.d.comb += rd.eq(self.o_lanes.valid & self.o_lanes.ready)
        m.d.sync += [cr.eq(cr - go + rd), okc.eq(cr + rd >= 2)]
        with m.If(flush):
            m.d.sync += [cr.eq(OUT_FIFO_DEPTH), okc.eq(0)]

        # ---------------------------------------------------------------- done
        idle_pipe = Signal()
        m.d.comb += idle_pipe.eq(mdone & ~i0_v & ~i1_v & ~i2_v & ~head_rdy & ~lo_v & ~a_v & ~b_v & ~c_v
                                 & ~ofifo.r_rdy & (ofifo.level == 0) & vlast_d & (cfifo.level == 0))
        with m.If(running & (idle_pipe | flush)):
            m.d.sync += running.eq(0)
        return m


def _or_const(onehot):
    """Index (3 bits) of the set bit of an 8-entry one-hot list."""
    return Cat(onehot[1] | onehot[3] | onehot[5] | onehot[7],
               onehot[2] | onehot[3] | onehot[6] | onehot[7],
               onehot[4] | onehot[5] | onehot[6] | onehot[7])


def _or_sel(onehot, values, width):
    """AND-OR multiplexer: the entry of ``values`` whose ``onehot`` bit is set."""
    out = Const(0, width)
    for s, v in zip(onehot, values, strict=True):
        out = out | (s.replicate(width) & v)
    return out


def _pop8(byte):
    """Set bits of an 8-bit value (4 bits)."""
    return Array([Const(bin(v).count("1"), 3) for v in range(16)])[byte[:4]] + \
        Array([Const(bin(v).count("1"), 3) for v in range(16)])[byte[4:]]


def _select4(m, bits, r, name):
    """Position (2 bits) of the set bit of rank ``r`` (2 bits) in the 4-bit ``bits``: one table."""
    out = Signal(2, name=name)
    with m.Switch(Cat(bits, r)):
        for v in range(16):
            ones = [t for t in range(4) if v >> t & 1]
            for k, t in enumerate(ones):
                if t:
                    with m.Case(v | k << 4):
                        m.d.comb += out.eq(t)
    return out


def _select8(m, bits, r, name):
    """Position (3 bits) of the set bit of rank ``r`` (3 bits) in the 8-bit ``bits`` (undefined if
    there is none): the low nibble's popcount decides the half, a 4-bit table picks the bit."""
    lo, hi = bits[:4], bits[4:]
    c_lo = Signal(3, name=f"{name}_c")
    m.d.comb += c_lo.eq(Array([Const(bin(v).count("1"), 3) for v in range(16)])[lo])
    r_hi = Signal(2, name=f"{name}_rh")
    m.d.comb += r_hi.eq(r - c_lo)
    p_lo = _select4(m, lo, r[:2], f"{name}_l")
    p_hi = _select4(m, hi, r_hi, f"{name}_h")
    return Mux(r < c_lo, Cat(p_lo, Const(0, 1)), Cat(p_hi, Const(1, 1)))


def build_decoder(*, lanes: int = 4, bits: int = 8, block: int = 16, bus_bits: int = 64,
                  max_cols: int = 1024) -> ChunkDecoder:
    """The ``chunk-decoder`` design: a :class:`ChunkDecoder` alone (mask_words = value_words = 1)."""
    for name, v in (("lanes", lanes), ("bits", bits), ("block", block), ("bus_bits", bus_bits),
                    ("max_cols", max_cols)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise SparsefabError(f"chunk-decoder: {name}={v!r}, expected an integer")
    cfg = SpmvConfig(lanes=lanes, weight_bits=bits, block=block, bus_bits=bus_bits, max_cols=max_cols,
                     mask_words=1, value_words=1)
    return ChunkDecoder(cfg)

