"""Bitmap decoder: mask and value bitstreams in, up to ``lanes`` (column, value) pairs per cycle out.

The decoder reads the bitmap sections of CONTRACTS C as bus beats and, every cycle, takes
the first ``lanes`` set mask bits of a window of ``window_beats`` mask beats (starting at
any bit of the oldest beat) by prefix popcounts over groups of 4 bits -- never a serial scan.  One
cycle may hold the tail of row ``r`` and the head of row ``r + 1`` (lanes are tagged with
the row they belong to), so short rows do not waste the lanes; a row whose bits are all
taken in such a straddling cycle finishes in the next one (at most one row boundary per
cycle).  A value gearbox of two value beats hands out the next ``k <= lanes`` values
starting at any value offset (values are continuous across rows).

Malformed input sets the sticky ``o_error`` (with its cause in ``o_error_flags``, bit
positions in :data:`sparsefab.gen.spmv_config.ERRORS`), abandons the matrix and returns
to idle; the decoder never waits for input that a malformed stream will not deliver.
"""

from __future__ import annotations

from functools import reduce

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from sparsefab.gen.spmv_config import ERRORS, ROWS_BITS, SpmvConfig

__all__ = ["BitmapDecoder", "cmd_layout", "lane_layout", "value_layout"]

_GROUP = 4  # mask bits per popcount group


def cmd_layout(config: SpmvConfig) -> data.StructLayout:
    """``i_cmd`` payload: ``rows`` (16 bits), ``cols`` (``col_bits``)."""
    return data.StructLayout({"rows": ROWS_BITS, "cols": config.col_bits})


def value_layout(config: SpmvConfig) -> data.StructLayout:
    """``i_value`` payload: ``data`` (``value_bus`` bits), ``last`` (1)."""
    return data.StructLayout({"data": config.value_bus, "last": 1})


def lane_layout(config: SpmvConfig) -> data.StructLayout:
    """Lane bundle from a front end (decoder or dense reader) to the MAC back end.

    ``col[i]`` column of lane ``i``; ``value[i]`` its weight code; ``valid`` bit ``i`` set if
    lane ``i`` carries a nonzero; ``nxt`` bit ``i`` set if lane ``i`` belongs to the row after
    the current one (only in a bundle with ``row_end``); ``row_end``: the current row ends with
    this bundle; ``last``: that row is the matrix's final row.
    """
    col_w = max(1, (config.max_cols - 1).bit_length())
    return data.StructLayout({
        "col": data.ArrayLayout(col_w, config.lanes),
        "value": data.ArrayLayout(signed(config.weight_bits), config.lanes),
        "valid": config.lanes,
        "nxt": config.lanes,
        "row_end": 1,
        "last": 1,
    })


def _or(values, width=None):
    values = list(values)
    if not values:
        return Const(0, width or 1)
    return reduce(lambda a, b: a | b, values)


def _prefix(m: Module, counts: list, width: int, name: str) -> list[Signal]:
    """Inclusive prefix sums of ``counts`` in about 2*sqrt(n) adder levels (blocks of ~sqrt(n))."""
    n = len(counts)
    blk = max(1, int(round(n ** 0.5)))
    local = []
    totals = []
    for b0 in range(0, n, blk):
        run = None
        for j in range(b0, min(n, b0 + blk)):
            s = Signal(width, name=f"{name}_l{j}")
            m.d.comb += s.eq(counts[j] if run is None else run + counts[j])
            local.append(s)
            run = s
        totals.append(run)
    offs = [Const(0, width)]
    for t in totals[:-1]:
        s = Signal(width, name=f"{name}_o{len(offs)}")
        m.d.comb += s.eq(offs[-1] + t)
        offs.append(s)
    out = []
    for j in range(n):
        s = Signal(width, name=f"{name}_{j}")
        m.d.comb += s.eq(local[j] + offs[j // blk])
        out.append(s)
    return out


class BitmapDecoder(wiring.Component):
    """Bitmap mask/value streams to lane bundles (``lanes`` nonzeros per cycle).

    Parameters
    ----------
    config : SpmvConfig
        Uses ``lanes``, ``weight_bits``, ``block``, ``bus_bits``, ``max_cols``,
        ``mask_words``, ``window_beats`` and ``value_words``.

    Ports
    -----
    i_cmd : In(stream.Signature(cmd_layout))
        ``rows`` (16 bits, >= 1) and ``cols`` (``col_bits``, 1..max_cols) of the next matrix;
        accepted when idle.  The caller checks the ranges (``SparseMacArray`` does).
    i_mask : In(stream.Signature(mask_bus))
        Mask beats: ``mask_words`` W-bit words of the index section, first word in the low bits;
        ``ceil(rows * stride_bits / mask_bus)`` beats per matrix, the last zero padded.
    i_value : In(stream.Signature(value_layout))
        Value beats (``value_bus`` bits of the values section) with ``last`` on the final beat
        of the matrix; ``max(1, ceil(nnz * b / value_bus))`` beats (one zero beat if nnz = 0).
    o_lanes : Out(stream.Signature(lane_layout))
        Lane bundles, see :func:`lane_layout`.  Every row produces exactly one bundle with
        ``row_end`` (empty rows included), in row order.
    o_busy : Out(1)
        A matrix is in progress.
    o_error : Out(1)
        Sticky until reset: a malformed stream was seen (the matrix was abandoned).
    o_error_flags : Out(4)
        Sticky causes (``values_short``, ``values_extra``, ``mask_padding`` bits of ERRORS).

    Latency: ``i_mask``/``i_value`` beats pass a 4-deep input FIFO (2 cycles to the window);
    a bundle is combinational from the window registers.  Throughput: ``lanes`` nonzeros per
    cycle while the window holds at least ``lanes`` set bits of at most two rows; at most one
    row boundary per cycle; one extra cycle per matrix to check the value stream's end.
    """

    def __init__(self, config: SpmvConfig):
        if not isinstance(config, SpmvConfig) or config.dense:
            self._MustUse__silence = True   # not a design: no "never elaborated" warning
            if not isinstance(config, SpmvConfig):
                raise TypeError(f"BitmapDecoder: config={config!r}, expected a SpmvConfig")
            raise ValueError("BitmapDecoder: config.dense=True, expected a sparse configuration")
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
        L, b, W = cfg.lanes, cfg.weight_bits, cfg.bus_bits
        M = cfg.mask_bus
        K = cfg.window_beats
        N = K * M                        # window bits
        NW = N // W                      # window words
        V = cfg.value_bus
        VPB = V // b                     # values per value beat
        gran = max(cfg.block, W)         # stride = roundup(cols, gran)
        NP = gran // W                   # words that can hold row padding
        max_stride = -(-cfg.max_cols // gran) * gran
        sw_bits = (max_stride // W).bit_length() + 1
        pos_bits = N.bit_length()
        col_w = len(self.o_lanes.payload.col[0])

        # ---------------------------------------------------------------- input FIFOs
        m.submodules.mfifo = mfifo = SyncFIFOBuffered(width=M, depth=4)
        m.submodules.vfifo = vfifo = SyncFIFOBuffered(width=V + 1, depth=4)
        m.d.comb += [
            mfifo.w_data.eq(self.i_mask.payload), mfifo.w_en.eq(self.i_mask.valid),
            self.i_mask.ready.eq(mfifo.w_rdy),
            vfifo.w_data.eq(Cat(self.i_value.payload.data, self.i_value.payload.last)),
            vfifo.w_en.eq(self.i_value.valid), self.i_value.ready.eq(vfifo.w_rdy),
        ]

        # ---------------------------------------------------------------- state
        running = Signal()
        endv = Signal()                  # matrix's masks done; checking the value stream's end
        rows_left = Signal(ROWS_BITS)
        stride_w = Signal(sw_bits)       # row stride in W-bit words
        padw = [Signal(W, name=f"padw{k}") for k in range(NP)]  # padding of the k-th last word
        slots = [Signal(M, name=f"mbeat{i}") for i in range(K)]      # the window, oldest first
        sv = [Signal(name=f"mbeat{i}_v") for i in range(K)]           # valid (a prefix of slots)
        a_v = sv[0]
        pos = Signal(pos_bits)           # next mask bit to look at, relative to A's bit 0
        rs_w = Signal(signed(sw_bits + pos_bits + 1))   # current row start, words rel. to A
        VA, VB = Signal(V), Signal(V)
        va_v, vb_v, va_l, vb_l = Signal(), Signal(), Signal(), Signal()
        vpos = Signal(range(VPB + 1))
        vlast_loaded = Signal()
        prev_last = Signal()             # ``last`` of the value beat most recently shifted out
        any_val = Signal()               # this matrix consumed at least one value
        err_flags = Signal(4)
        m.d.comb += [self.o_busy.eq(running | endv), self.o_error_flags.eq(err_flags),
                     self.o_error.eq(err_flags.any())]

        # ---------------------------------------------------------------- window geometry
        es_w = Signal(signed(len(rs_w) + 1))
        es2_w = Signal(signed(len(rs_w) + 2))
        m.d.comb += [es_w.eq(rs_w + stride_w), es2_w.eq(es_w + stride_w)]
        avail_words = Signal(range(NW + 1))
        m.d.comb += avail_words.eq(sum(sv) * cfg.mask_words)
        avail_end = Signal(pos_bits + 1)
        m.d.comb += avail_end.eq(avail_words * W)
        row_complete = Signal()
        # complete: the row's last word is inside the window (or already behind it, when a
        # row ends exactly on a beat boundary and its beats were shifted out)
        m.d.comb += row_complete.eq(es_w <= avail_words)
        has_next = Signal()
        m.d.comb += has_next.eq(rows_left > 1)
        next_ok = Signal()
        m.d.comb += next_ok.eq(row_complete & has_next)

        window = Cat(*slots)
        word_en = Signal(NW)
        pad_bits = []
        for s in range(NW):
            avail_s = sv[s // cfg.mask_words]
            in_cur = Const(s, signed(pos_bits + 1)) < es_w
            in_next = (Const(s, signed(pos_bits + 1)) >= es_w) & (Const(s, signed(pos_bits + 1)) < es2_w)
            m.d.comb += word_en[s].eq(avail_s & (in_cur | (next_ok & in_next)))
            pad_s = Signal(W, name=f"pad_s{s}")
            terms = []
            for k in range(NP):
                terms.append(Mux(es_w == s + 1 + k, padw[k], 0))
                terms.append(Mux(has_next & (es2_w == s + 1 + k), padw[k], 0))
            m.d.comb += pad_s.eq(Mux(avail_s, _or(terms), 0))
            pad_bits.append(window[s * W:(s + 1) * W] & pad_s)
        pad_err = Signal()
        m.d.comb += pad_err.eq(running & Cat(*pad_bits).any())

        # Set bits of the rows in reach, NOT masked by ``pos``: their prefix counts depend on
        # registers only, and ``pos`` enters as one offset (``base``) -- a short loop.
        vbits = Signal(N)
        m.d.comb += vbits.eq(window & Cat(*[word_en[p // W] for p in range(N)]))

        # ---------------------------------------------------------------- rank selection
        G = N // _GROUP
        cnt_w = N.bit_length()
        counts = []
        for j in range(G):
            c = Signal(3, name=f"cnt{j}")
            g = vbits[j * _GROUP:(j + 1) * _GROUP]
            m.d.comb += c.eq(g[0] + g[1] + g[2] + g[3])
            counts.append(c)
        Q = _prefix(m, counts, cnt_w, "q")      # Q[j] = set bits in groups 0..j
        gbits = (G - 1).bit_length() if G > 1 else 1
        # base = set bits before pos (already taken or before the current row)
        gpos = pos >> 2
        lowp = pos[:2]
        q_before = Array([Const(0, cnt_w)] + Q)[gpos]
        grp_at = Array([vbits[j * _GROUP:(j + 1) * _GROUP] for j in range(G)] + [Const(0, _GROUP)])[gpos]
        low_mask = Array([Const(0b0000, 4), Const(0b0001, 4), Const(0b0011, 4), Const(0b0111, 4)])[lowp]
        low = grp_at & low_mask
        base = Signal(cnt_w)
        m.d.comb += base.eq(q_before + low[0] + low[1] + low[2])
        total = Signal(cnt_w)
        m.d.comb += total.eq(Q[-1] - base)

        def select(i):
            """Position (and found flag) of the set bit of rank ``i`` (0-based) at or after pos."""
            ti = Signal(cnt_w + 1, name=f"t{i}")
            m.d.comb += ti.eq(base + i)
            le = [Signal(name=f"le{i}_{j}") for j in range(G)]
            for j in range(G):
                m.d.comb += le[j].eq(Q[j] <= ti)
            first = [~le[0]] + [le[j - 1] & ~le[j] for j in range(1, G)]
            found = Signal(name=f"found{i}")
            m.d.comb += found.eq(~le[G - 1])
            gsel = Signal(gbits, name=f"gsel{i}")
            grp = Signal(_GROUP, name=f"grp{i}")
            before = Signal(cnt_w, name=f"before{i}")
            m.d.comb += [
                gsel.eq(_or([Mux(first[j], j, 0) for j in range(G)], gbits)),
                grp.eq(_or([Mux(first[j], vbits[j * _GROUP:(j + 1) * _GROUP], 0) for j in range(G)])),
                before.eq(_or([Mux(first[j], Q[j - 1], 0) for j in range(1, G)], cnt_w)),
            ]
            r = Signal(2, name=f"r{i}")
            m.d.comb += r.eq(ti - before)
            within = Signal(2, name=f"within{i}")
            with m.Switch(Cat(grp, r)):
                for gv in range(16):
                    ones = [t for t in range(4) if gv >> t & 1]
                    for rv, t in enumerate(ones):
                        with m.Case(gv | rv << 4):
                            m.d.comb += within.eq(t)
            p = Signal(pos_bits, name=f"selpos{i}")
            m.d.comb += p.eq(Cat(within, gsel))
            return found, p

        sel = [select(i) for i in range(L + 1)]
        found_L, pos_L = sel[L]

        k = Signal(range(L + 1))
        m.d.comb += k.eq(Mux(total >= L, L, total))
        es_bits = Signal(signed(len(es_w) + W.bit_length()))
        rs_bits = Signal(signed(len(rs_w) + W.bit_length()))
        es2_bits = Signal(signed(len(es2_w) + W.bit_length()))
        m.d.comb += [es_bits.eq(es_w * W), rs_bits.eq(rs_w * W), es2_bits.eq(es2_w * W)]

        # ---------------------------------------------------------------- values gearbox
        vavail = Signal(range(2 * VPB + 1))
        m.d.comb += vavail.eq(Mux(va_v, VPB - vpos, 0) + Mux(vb_v, VPB, 0))
        vals_ok = Signal()
        m.d.comb += vals_ok.eq(k <= vavail)
        vwin = Cat(VA, VB)
        bsh = (b - 1).bit_length()
        vshift = Signal(len(vwin))
        m.d.comb += vshift.eq(vwin >> Cat(Const(0, bsh), vpos))

        # ---------------------------------------------------------------- lanes out
        finish = Signal()
        m.d.comb += finish.eq(row_complete & ~(found_L & (pos_L < es_bits)))
        last_row = Signal()
        m.d.comb += last_row.eq(rows_left == 1)
        short_err = Signal()
        m.d.comb += short_err.eq(running & ~vals_ok & vlast_loaded)
        any_err = Signal()
        m.d.comb += any_err.eq(pad_err | short_err)
        can_go = Signal()
        m.d.comb += can_go.eq(running & (a_v | row_complete) & vals_ok & ~any_err)
        pl = self.o_lanes.payload
        for i in range(L):
            found_i, pos_i = sel[i]
            nxt_i = found_i & (pos_i >= es_bits)
            base = Mux(nxt_i, es_bits, rs_bits)
            m.d.comb += [
                pl.valid[i].eq(found_i),
                pl.nxt[i].eq(nxt_i),
                pl.col[i].eq((pos_i - base)[:col_w]),
                pl.value[i].eq(vshift[i * b:(i + 1) * b]),
            ]
        m.d.comb += [pl.row_end.eq(finish), pl.last.eq(finish & last_row),
                     self.o_lanes.valid.eq(can_go & ((k != 0) | finish))]
        advance = Signal()
        m.d.comb += advance.eq(can_go & (~self.o_lanes.valid | self.o_lanes.ready))

        # ---------------------------------------------------------------- next mask state
        pos_n = Signal(pos_bits + 1)
        es2_clip = Mux(es2_bits < avail_end, es2_bits, avail_end)
        with m.If(found_L):
            m.d.comb += pos_n.eq(pos_L)
        with m.Elif(next_ok):
            m.d.comb += pos_n.eq(es2_clip)
        with m.Elif(finish):
            m.d.comb += pos_n.eq(es_bits)
        with m.Else():
            m.d.comb += pos_n.eq(avail_end)
        mat_end = Signal()
        m.d.comb += mat_end.eq(advance & finish & last_row)

        # window slots after this cycle's consumption, before refill
        s1 = [Signal(M, name=f"mbeat{i}_n") for i in range(K)]
        v1 = [Signal(name=f"mbeat{i}_nv") for i in range(K)]
        m.d.comb += [x.eq(y) for x, y in zip(s1, slots, strict=True)]
        m.d.comb += [x.eq(y) for x, y in zip(v1, sv, strict=True)]

        def drop(m_, d):
            """Drop the ``d`` oldest beats of the window."""
            for i in range(K):
                if i + d < K:
                    m_.d.comb += [s1[i].eq(slots[i + d]), v1[i].eq(sv[i + d])]
                else:
                    m_.d.comb += v1[i].eq(0)

        with m.If(any_err):
            m.d.comb += [x.eq(0) for x in v1]
            m.d.sync += pos.eq(0)
        with m.Elif(mat_end):
            # drop the beats of this matrix still in the window: ceil(es / M) of them
            for d in range(1, K + 1):
                with m.If((es_bits > (d - 1) * M) & (es_bits <= d * M)):
                    drop(m, d)
            m.d.sync += [pos.eq(0), rs_w.eq(0)]
        with m.Else():
            # The oldest beat leaves once pos is past it at the START of a cycle (a registered
            # decision, off the selection's critical path).
            sh = pos >= M
            p_next = Mux(advance, pos_n, pos)
            r_next = Mux(advance & finish, es_w, rs_w)
            with m.If(sh):
                drop(m, 1)
                m.d.sync += [pos.eq(p_next - M), rs_w.eq(r_next - M // W)]
            with m.Else():
                m.d.sync += [pos.eq(p_next), rs_w.eq(r_next)]
        # refill from the mask FIFO into the first empty slot
        m.d.comb += mfifo.r_en.eq(~v1[K - 1])
        m.d.sync += [x.eq(y) for x, y in zip(slots, s1, strict=True)]
        m.d.sync += [x.eq(y) for x, y in zip(sv, v1, strict=True)]
        with m.If(mfifo.r_rdy):
            for i in range(K):
                with m.If(~v1[i] & (v1[i - 1] if i else 1)):
                    m.d.sync += [slots[i].eq(mfifo.r_data), sv[i].eq(1)]

        # ---------------------------------------------------------------- next value state
        VA1, VB1 = Signal(V), Signal(V)
        va1, vb1, val1, vbl1 = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [VA1.eq(VA), VB1.eq(VB), va1.eq(va_v), vb1.eq(vb_v), val1.eq(va_l), vbl1.eq(vb_l)]
        vpos_n = Signal(range(VPB + L + 1))
        m.d.comb += vpos_n.eq(vpos + k)
        allow_load = Signal()
        m.d.comb += allow_load.eq(~vlast_loaded)

        end_ok = Signal()
        end_bad = Signal()
        # value-stream end check, one cycle after the matrix's last row
        untouched = (va_v & (vpos == 0)) | vb_v
        final_last = Mux(vpos != 0, va_l, prev_last)
        with m.If(any_val):
            m.d.comb += [end_ok.eq(~untouched & final_last), end_bad.eq(~(~untouched & final_last))]
        with m.Else():
            m.d.comb += [end_ok.eq(va_v & va_l & ~vb_v), end_bad.eq(va_v & ~(va_l & ~vb_v))]

        with m.If(any_err | (endv & (end_ok | end_bad))):
            m.d.comb += [va1.eq(0), vb1.eq(0), allow_load.eq(0)]
            m.d.sync += [vpos.eq(0), vlast_loaded.eq(0), prev_last.eq(0), any_val.eq(0)]
        with m.Elif(advance & (k != 0)):
            m.d.sync += any_val.eq(1)
            with m.If(vpos_n >= VPB):
                m.d.comb += [VA1.eq(VB), va1.eq(vb_v), val1.eq(vb_l), vb1.eq(0)]
                m.d.sync += [vpos.eq(vpos_n - VPB), prev_last.eq(va_l)]
            with m.Else():
                m.d.sync += vpos.eq(vpos_n)
        m.d.comb += vfifo.r_en.eq(allow_load & ~(va1 & vb1))
        m.d.sync += [VA.eq(VA1), VB.eq(VB1), va_v.eq(va1), vb_v.eq(vb1), va_l.eq(val1), vb_l.eq(vbl1)]
        with m.If(vfifo.r_rdy & allow_load):
            with m.If(~va1):
                m.d.sync += [VA.eq(vfifo.r_data[:V]), va_l.eq(vfifo.r_data[V]), va_v.eq(1)]
            with m.Elif(~vb1):
                m.d.sync += [VB.eq(vfifo.r_data[:V]), vb_l.eq(vfifo.r_data[V]), vb_v.eq(1)]
            with m.If(~(va1 & vb1)):
                m.d.sync += vlast_loaded.eq(vfifo.r_data[V])

        # ---------------------------------------------------------------- control
        m.d.comb += self.i_cmd.ready.eq(~running & ~endv)
        with m.If(self.i_cmd.valid & self.i_cmd.ready):
            cols = self.i_cmd.payload.cols
            stride = Signal(len(cols) + 1)
            m.d.comb += stride.eq((cols + (gran - 1)) & ~Const(gran - 1, len(cols) + 1))
            m.d.sync += [running.eq(1), rows_left.eq(self.i_cmd.payload.rows),
                         stride_w.eq(stride >> (W.bit_length() - 1)), rs_w.eq(0)]
            for kk in range(NP):
                first_bit = stride - (kk + 1) * W      # row-relative bit of this word's bit 0
                m.d.sync += padw[kk].eq(Cat(*[(first_bit + t) >= cols for t in range(W)]))
        with m.If(advance & finish):
            m.d.sync += rows_left.eq(rows_left - 1)
        with m.If(mat_end):
            m.d.sync += [running.eq(0), endv.eq(1)]
        with m.If(endv & (end_ok | end_bad)):
            m.d.sync += endv.eq(0)
        with m.If(any_err):
            m.d.sync += running.eq(0)
        flags = Signal(4)
        m.d.comb += [
            flags[ERRORS["values_short"]].eq(short_err),
            flags[ERRORS["mask_padding"]].eq(pad_err),
            flags[ERRORS["values_extra"]].eq(endv & end_bad),
        ]
        m.d.sync += err_flags.eq(err_flags | flags)
        return m
