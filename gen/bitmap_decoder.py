"""Bitmap decoder: mask and value bitstreams in, up to ``lanes`` (column, value) pairs per cycle out.

The decoder reads the bitmap sections of CONTRACTS C as bus beats and, every cycle, takes
the next ``lanes`` set mask bits of a window of ``window_beats`` mask beats -- never a serial
scan.  Bits are taken in order, so what is taken is a count, not a bit position.  The state
is ``D[j]`` = set bits in coarse groups ``0..j`` of the window (``C`` = 8 or 16 bits each)
minus the set bits already taken, kept in REGISTERS and updated by subtracting the cycle's
take ``k`` (a beat leaving the window shifts them by a beat's groups; a beat entering counts
on from the one before it).  So the feedback loop is: ``D`` at the row ends (registers, a
small mux) -> ``k = min(lanes, set bits left in the rows in reach)`` -> advance -> ``D - k``;
and the lanes start from registers too: lane ``i`` takes the first group with ``D[j] > i``
(``D`` saturated to ``0..lanes``: a compare with the CONSTANT ``i`` on a few bits, no carry
chain and no per-lane comparator against a variable), then the set bit of local rank
``i - D[j-1]`` inside that group (a popcount halving select).  Earlier versions kept a rank
``rbase`` and subtracted it in front of both the loop and the lanes, and before that
compared ``base + i`` with every prefix of the window in every lane (quadratic).

One cycle may hold the tail of row ``r`` and the head of row ``r + 1`` (lanes are tagged
with the row they belong to), so short rows do not waste the lanes (at most one row boundary
per cycle).  A value gearbox of two value beats hands out the next ``k <= lanes`` values
starting at any value offset (values are continuous across rows).

Malformed input sets the sticky ``o_error`` (with its cause in ``o_error_flags``, bit
positions in :data:`sparsefab.gen.spmv_config.ERRORS`), abandons the matrix and returns
to idle; the decoder never waits for input that a malformed stream will not deliver.  A set
mask bit in row padding is caught when a lane takes it (every set bit of a row is taken);
the flag rises three cycles after that bundle leaves.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sparsefab.gen.spmv_config import ERRORS, ROWS_BITS, SpmvConfig

__all__ = ["BitmapDecoder", "cmd_layout", "lane_layout", "value_layout"]



def _group_bits(config: SpmvConfig) -> int:
    """Bits per coarse group of the rank selection (a lane picks a group, then a bit in it):
    8 for windows under 128 bits, else 16 (half the groups to compare and mux per lane, for a
    slightly deeper select inside the group; at the iCEBreaker's 128-bit window 16 saves about
    300 LUT4 at 8 lanes)."""
    return 8 if config.window_beats * config.mask_bus < 128 else 16


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


def _balanced(values: list, op):
    """``op`` over ``values`` as a balanced tree (log depth; a Python reduce would be a chain)."""
    values = list(values)
    while len(values) > 1:
        values = [op(values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def _or(values, width=None):
    values = list(values)
    if not values:
        return Const(0, width or 1)
    return _balanced(values, lambda a, b: a | b)


_NIBBLE_COUNTS = [Const(bin(v).count("1"), 3) for v in range(16)]


def _popcount(bits):
    """Set bits of ``bits`` (a Value or a list of 1-bit values): a lookup per 4 bits (one LUT4
    level per count bit), then a balanced adder tree of those counts."""
    bits = [bits[t] for t in range(len(bits))]
    parts = []
    for t in range(0, len(bits), 4):
        nib = bits[t:t + 4]
        if len(nib) == 1:
            parts.append(nib[0])
        else:
            parts.append(Array(_NIBBLE_COUNTS[:1 << len(nib)])[Cat(*nib)])
    return _balanced(parts, lambda a, b: a + b)


def _prefix(m: Module, counts: list, width: int, name: str) -> list[Signal]:
    """Inclusive prefix sums of ``counts`` (Sklansky: ceil(log2(n)) adder levels)."""
    n = len(counts)
    cur = []
    for j, c in enumerate(counts):
        s = Signal(width, name=f"{name}_in{j}")
        m.d.comb += s.eq(c)
        cur.append(s)
    d, level = 1, 0
    while d < n:
        nxt = list(cur)
        for j in range(n):
            if (j // d) % 2 == 1:          # upper half of a 2d block: add the lower half's last
                s = Signal(width, name=f"{name}_{level}_{j}")
                m.d.comb += s.eq(cur[j] + cur[(j // d) * d - 1])
                nxt[j] = s
        cur, d, level = nxt, 2 * d, level + 1
    return cur


def _gt_const(x, c: int):
    """``x > c`` for an unsigned ``x`` and a constant ``c``, as plain logic (no carry chain)."""
    n = len(x)
    if c < 0:
        return Const(1, 1)
    if c >= (1 << n) - 1:
        return Const(0, 1)
    terms = []
    for k in range(n):
        if not c >> k & 1:
            hi = [x[t] if c >> t & 1 else ~x[t] for t in range(k + 1, n)]
            terms.append(_balanced(hi + [x[k]], lambda a, b: a & b))
    return _balanced(terms, lambda a, b: a | b)


class _Port:
    """A stream sink read like a FIFO output: ``r_data``, ``r_rdy`` (= valid)."""

    def __init__(self, port, data):
        self.r_data, self.r_rdy = data, port.valid


def _rank_select(m: Module, bits, r, name: str):
    """Position (``log2(len(bits))`` bits) of the set bit of rank ``r`` (0-based) in ``bits``.

    ``len(bits)`` is a power of two >= 4; the result is undefined if fewer than ``r + 1`` bits
    are set.  Halves recursively: a popcount of the low half decides the side.
    """
    n = len(bits)
    if n == 4:
        out = Signal(2, name=name)
        with m.Switch(Cat(bits, r[:2])):
            for gv in range(16):
                ones = [t for t in range(4) if gv >> t & 1]
                for rv, t in enumerate(ones):
                    if t:
                        with m.Case(gv | rv << 4):
                            m.d.comb += out.eq(t)
        return out
    h = n // 2
    hb = (h - 1).bit_length()
    lo, hi = bits[:h], bits[h:]
    c_lo = Signal(hb + 1, name=f"{name}_c")
    m.d.comb += c_lo.eq(_popcount(lo))
    in_lo = Signal(name=f"{name}_lo")
    m.d.comb += in_lo.eq(r < c_lo)
    r_hi = Signal(hb, name=f"{name}_rh")
    m.d.comb += r_hi.eq(r - c_lo)
    p_lo = _rank_select(m, lo, r[:hb], f"{name}l")
    p_hi = _rank_select(m, hi, r_hi, f"{name}h")
    out = Signal(hb + 1, name=name)
    m.d.comb += out.eq(Mux(in_lo, p_lo, Cat(p_hi, Const(1, 1))))
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

    Latency: a mask beat and the popcounts of its groups are registered in a one-beat input
    buffer, then enter the window; value beats go straight into the value registers (``ready``
    is high when a slot is free after the current cycle).  Each cycle's decision (from
    registers only: the rebased prefix counts, and the counts at the current and next row ends
    with the row flags, all kept in step with the state) is registered with each lane's group
    and rank in it (stage A, which is ``o_lanes.valid``); the in-group bit select and the
    column subtraction follow combinationally on ``o_lanes``.  A command's first cycle only
    lets the row-end counts settle.  Throughput: ``lanes`` nonzeros per cycle while the
    window holds at least ``lanes`` set bits of at most two rows; at most one mask beat enters
    per cycle (``mask_bus`` bits: at density ``d`` at most ``d * mask_bus`` nonzeros per cycle);
    at most one row boundary per cycle; per matrix one cycle to start and one extra cycle to
    check the value stream's end.  A padding bit raises ``o_error`` three cycles after its
    bundle leaves (lane flags, their OR, the flush); no command is taken before that check.
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
        MW = cfg.mask_words              # words per beat
        N = K * M                        # window bits
        NW = N // W                      # window words
        V = cfg.value_bus
        VPB = V // b                     # values per value beat
        gran = max(cfg.block, W)         # stride = roundup(cols, gran)
        max_stride = -(-cfg.max_cols // gran) * gran
        sw_bits = (max_stride // W).bit_length() + 1
        pos_bits = N.bit_length()
        cnt_w = N.bit_length()           # set-bit counts in the window: 0..N
        col_w = len(self.o_lanes.payload.col[0])
        C = _group_bits(cfg)             # coarse group
        GS = M // C                      # groups per beat
        G = K * GS                       # groups in the window
        cb = (C - 1).bit_length()        # bits of a position inside a group

        # ---------------------------------------------------------------- input FIFOs
        # No input FIFOs: beats go straight into the window / value registers (``ready`` says a
        # slot is free after this cycle's consumption), which buffer enough on their own.
        vfifo = _Port(self.i_value, Cat(self.i_value.payload.data, self.i_value.payload.last))

        # ---------------------------------------------------------------- state
        running = Signal()
        endv = Signal()                  # matrix's masks done; checking the value stream's end
        rows_left = Signal(ROWS_BITS)
        cols_r = Signal(cfg.col_bits)
        stride_w = Signal(sw_bits)       # row stride in W-bit words
        slots = [Signal(M + (M // C) * M.bit_length(), name=f"mbeat{i}") for i in range(K)]  # oldest first
        sv = [Signal(name=f"mbeat{i}_v") for i in range(K)]           # valid (a prefix of slots)
        a_v = sv[0]
        # Rebased prefix counts: R[j] = set bits in groups 0..j of the window minus the set bits
        # already taken (taking is in order, so those are the first ones), Rm1 = minus the set
        # bits taken.  They are REGISTERS, updated by subtracting the cycle's take k, so neither
        # the k -> advance loop nor the lanes start with a subtraction: k is read from R at the
        # row ends, each lane compares R (saturated) with its constant lane number.  Invalid
        # slots hold the window total (they count nothing).
        rw = cnt_w + 1
        R = [Signal(signed(rw), name=f"R{j}") for j in range(G)]
        Rm1 = Signal(signed(rw))
        # current row start in words relative to slot 0: in [1 - max stride, NW] (a beat leaves
        # only when the current row ends beyond it, so the row end stays >= 1)
        rs_w = Signal(signed(max(max_stride // W, NW).bit_length() + 2))
        VA, VB = Signal(V), Signal(V)
        va_v, vb_v, va_l, vb_l = Signal(), Signal(), Signal(), Signal()
        vpos = Signal(range(VPB))        # value offset in VA (< VPB: VA is dropped when it is used up)
        vlast_loaded = Signal()
        prev_last = Signal()             # ``last`` of the value beat most recently shifted out
        any_val = Signal()               # this matrix consumed at least one value
        pad_r = Signal()                 # a lane of the last bundle fell in row padding
        err_flags = Signal(4)
        m.d.comb += [self.o_error_flags.eq(err_flags),
                     self.o_error.eq(err_flags.any())]

        # ---------------------------------------------------------------- window geometry
        # row ends (current, next) are registers updated with rs_w, not adders after it: they
        # start the decoder's longest loop (row end -> counts there -> k -> advance -> state)
        es_w = Signal(signed(len(rs_w) + 1))
        es2_w = Signal(signed(len(rs_w) + 2))
        es3_w = Signal(signed(len(rs_w) + 3))      # registers, kept in step
        prime = Signal()                 # first cycle of a matrix: the row-end counts settle
        m.d.sync += prime.eq(0)
        # Row flags, REGISTERS (their next values are computed below for both outcomes of this
        # cycle's row finish and selected by it, so the k -> advance loop starts at registers):
        # row_complete = the current row's last word is inside the window (slots never drop past
        # a row end that is not finished, so es_w >= 1); has_next = a row follows; last_row =
        # this is the matrix's last row.
        row_complete = Signal()
        has_next = Signal()
        last_row = Signal()
        next_ok = Signal()
        m.d.comb += next_ok.eq(row_complete & has_next)

        # ---------------------------------------------------------------- set-bit counts
        # Per beat: popcounts of its C-bit groups and their prefix sums, computed ONCE as the beat
        # enters (from the input port) and kept beside its bits in the slot register, so no
        # popcount or prefix adder sits between the window registers and the lanes.  Invalid
        # slots hold zeros, so they count nothing.
        lq_w = M.bit_length()
        SW = M + GS * lq_w               # slot register: bits, then GS local prefix counts
        in_cnts = []
        for g in range(GS):
            c = Signal(cb + 1, name=f"in_c{g}")
            m.d.comb += c.eq(_popcount(self.i_mask.payload[g * C:(g + 1) * C]))
            in_cnts.append(c)
        in_lq_now = _prefix(m, in_cnts, lq_w, "in_lq")
        # The beat and its counts are registered in a one-beat input buffer before they reach the
        # window (the popcount and prefix adders end at a register, not in the count update).
        mbuf = Signal(SW)
        mbuf_v = Signal()
        in_lq = [mbuf[M + g * lq_w:M + (g + 1) * lq_w] for g in range(GS)]

        def r_at(src, src_m1, words, name):
            """Rebased count ``src`` at word boundary ``words`` (clamped to 0..NW): the set bits
            before it minus those taken."""
            out = Signal(signed(rw), name=name)
            at_w = [src_m1] + [src[x * W // C - 1] for x in range(1, NW + 1)]
            with m.If(words <= 0):
                m.d.comb += out.eq(src_m1)
            with m.Elif(words >= NW):
                m.d.comb += out.eq(src[-1])
            with m.Else():
                m.d.comb += out.eq(Array(at_w)[words[:max(1, (NW - 1).bit_length())]])
            return out

        def r_at_sh(src, src_m1, words, name):
            """``r_at(src, src_m1, words - dsh)``: the clamp and the word index are decoded from
            ``words`` and ``words - MW`` (a constant away) and picked by ``sh``, so the select
            does not wait on ``sh``."""
            out = Signal(signed(rw), name=name)
            at_w = [src_m1] + [src[x * W // C - 1] for x in range(1, NW + 1)]
            sel = Signal(NW + 1, name=f"{name}_sel")
            for shv, pos in ((0, words), (1, words - MW)):
                one = [pos <= 0] + [pos == x for x in range(1, NW)] + [pos >= NW]
                with m.If(sh == shv):
                    m.d.comb += sel.eq(Cat(*one))
            m.d.comb += out.eq(_or([Mux(sel[x], at_w[x], 0) for x in range(NW + 1)], rw))
            return out

        dw = rw
        # REGISTERS: r_at(R, es_w) and r_at(R, es2_w), kept like the row flags
        k_cur_full = Signal(signed(dw))  # set bits left in the current row (if complete)
        k_nxt_full = Signal(signed(dw))  # ... through the next row's end
        k = Signal(range(L + 1))

        def pick(f):
            """``f(lim_full)``, lim_full = the set bits this cycle may take (through the next
            row's end if the current row is complete and a row follows, else through the current
            row's end if complete, else the whole window), evaluated on each candidate register
            and then selected: the compares start at registers, the row flags pick results."""
            return Mux(next_ok, f(k_nxt_full), Mux(row_complete, f(k_cur_full), f(R[-1])))

        def sat(x):
            return Mux(x[-1], 0, Mux(x >= L, L, x[:len(k)]))
        m.d.comb += k.eq(pick(sat))
        k_cur = Signal(range(L + 1))
        m.d.comb += k_cur.eq(Mux(k_cur_full[-1], 0, Mux(k_cur_full >= L, L, k_cur_full[:len(k_cur)])))
        finish = Signal()
        m.d.comb += finish.eq(row_complete & (k_cur_full <= L))

        # ---------------------------------------------------------------- rank selection
        # D[j] = R[j].  Lane i takes the first group whose D exceeds i -- a compare of the
        # register with the CONSTANT i (plain logic, no carry chain) -- then the (i - D[j-1])-th
        # set bit inside that C-bit group.
        low = [R[j][:cb] if cb else Const(0, 1) for j in range(G)]
        low_m1 = Signal(max(1, cb), name="low_m1")
        m.d.comb += low_m1.eq(Rm1[:cb] if cb else 0)
        gbits = max(1, (G - 1).bit_length())

        es_bits = Signal(signed(len(es_w) + W.bit_length()))
        m.d.comb += es_bits.eq(es_w * W)
        window = Cat(*[x[:M] for x in slots])
        rel_w = max(col_w, (max_stride - 1).bit_length())
        wlb = W.bit_length() - 1
        pl = self.o_lanes.payload
        # Two stages.  Stage A (this cycle's decision, from the decoder's registers): each lane
        # picks its C-bit group and its rank inside it; both are REGISTERED with the bundle's
        # values and row flags.  Stage B (from those registers, feeding ``o_lanes``): the
        # in-group rank select and the column subtraction.  ``ov`` = stage A holds a bundle.
        ov = Signal()
        rdy_a = Signal()
        m.d.comb += rdy_a.eq(~ov | self.o_lanes.ready)
        a_grp = [Signal(C, name=f"a_grp{i}") for i in range(L)]
        a_gsel = [Signal(gbits, name=f"a_gsel{i}") for i in range(L)]
        a_lr = [Signal(max(1, cb), name=f"a_lr{i}") for i in range(L)]
        a_valid, a_nxt = Signal(L), Signal(L)
        a_rs, a_es = Signal(rel_w - wlb), Signal(rel_w - wlb)
        a_val = Signal(L * b)
        a_row_end, a_last = Signal(), Signal()
        for i in range(L):
            gt = [Signal(name=f"gt{i}_{j}") for j in range(G)]
            for j in range(G):
                m.d.comb += gt[j].eq(~R[j][-1] & _gt_const(R[j][:-1], i))
            first = [gt[0]] + [gt[j] & ~gt[j - 1] for j in range(1, G)]
            gsel = Signal(gbits, name=f"gsel{i}")
            grp = Signal(C, name=f"grp{i}")
            dlow = Signal(max(1, cb), name=f"dlow{i}")
            m.d.comb += [
                gsel.eq(_or([Mux(first[j], j, 0) for j in range(1, G)], gbits)),
                grp.eq(_or([Mux(first[j], window[j * C:(j + 1) * C], 0) for j in range(G)], C)),
                dlow.eq(_or([Mux(first[0], low_m1, 0)] + [Mux(first[j], low[j - 1], 0) for j in range(1, G)],
                            max(1, cb))),
            ]
            with m.If(rdy_a):
                # the rank in the group, i - dlow, is one LUT level (i is a constant)
                lr_tab = Array([Const((i - v) % (1 << max(1, cb)), max(1, cb)) for v in range(1 << max(1, cb))])
                m.d.sync += [a_grp[i].eq(grp), a_gsel[i].eq(gsel), a_lr[i].eq(lr_tab[dlow]),
                             a_valid[i].eq(k > i), a_nxt[i].eq(finish & (k_cur <= i))]
        with m.If(rdy_a):
            m.d.sync += [a_rs.eq(rs_w[:rel_w - wlb]), a_es.eq(es_w[:rel_w - wlb])]
        pad_lane = []
        for i in range(L):
            within = _rank_select(m, a_grp[i], a_lr[i], f"ws{i}")
            p = Signal(pos_bits, name=f"selpos{i}")
            m.d.comb += p.eq(Cat(within, a_gsel[i]) if cb else a_gsel[i])
            # column = position - row start; a valid lane is within its row's stride, so
            # rel_w bits (modular) hold it exactly
            # row starts are word aligned: the low log2(W) bits need no subtraction
            rel = Signal(rel_w, name=f"rel{i}")
            m.d.comb += rel.eq(Cat(p[:wlb], p[wlb:] - Mux(a_nxt[i], a_es, a_rs)))
            pad_lane.append(a_valid[i] & (rel >= cols_r))
            m.d.comb += [
                pl.valid[i].eq(a_valid[i]),
                pl.nxt[i].eq(a_nxt[i]),
                pl.col[i].eq(rel[:col_w]),
                pl.value[i].eq(a_val[i * b:(i + 1) * b]),
            ]

        # ---------------------------------------------------------------- values gearbox
        # values held (VPB - vpos in VA, VPB in VB): a REGISTER kept in step with the value state
        # (minus the take, plus a loaded beat), so vals_ok starts from registers
        vavail = Signal(range(2 * VPB + 1))
        vals_ok = Signal()
        # k <= vavail as a lookup: the thermometer "vavail >= t" (t = 0..L, from the register)
        # indexed by k, not a compare chain behind k
        vge = Signal(L + 1)
        m.d.comb += vge.eq(Cat(*[vavail >= t for t in range(L + 1)]))
        m.d.comb += vals_ok.eq(vge.bit_select(k, 1))
        vwin = Cat(VA, VB)
        # logarithmic byte shifter, largest step first so every stage is only as wide as what the
        # next stages still need (the L lanes' L*b bits at the end)
        vshift = vwin
        for t in reversed(range(len(vpos))):
            step = b << t
            need = L * b + b * ((1 << t) - 1)
            stage = Signal(need, name=f"vsh{t}")
            m.d.comb += stage.eq(Mux(vpos[t], vshift[step:step + need], vshift[:need]))
            vshift = stage

        # ---------------------------------------------------------------- lanes out
        # Errors act one cycle after detection (registered): nothing advances in the cycle that
        # finds them (a short value stream has vals_ok low; a padding bit left in a bundle), and
        # the flush then starts from registers, off the k -> advance path.
        short_now = Signal()
        m.d.comb += short_now.eq(running & ~vals_ok & vlast_loaded)
        short_err = Signal()
        any_err = Signal()
        m.d.comb += any_err.eq(pad_r | short_err)
        m.d.sync += short_err.eq(short_now & ~any_err)
        can_go = Signal()
        m.d.comb += can_go.eq(running & ~prime & (a_v | row_complete) & vals_ok & ~any_err)
        emit = Signal()                  # this cycle's decision is a bundle (into stage A)
        m.d.comb += emit.eq(can_go & ((k != 0) | finish))
        m.d.comb += [pl.row_end.eq(a_row_end), pl.last.eq(a_last), self.o_lanes.valid.eq(ov)]
        advance = Signal()
        m.d.comb += advance.eq(can_go & (~emit | rdy_a))
        with m.If(rdy_a):
            m.d.sync += [ov.eq(emit), a_row_end.eq(finish), a_last.eq(finish & last_row),
                         a_val.eq(vshift[:L * b])]
        with m.If(any_err):
            m.d.sync += ov.eq(0)
        # padding bits are caught when a lane takes them (every set bit of a row is taken): the
        # lanes' flags are registered as the bundle goes out, their OR a cycle later, and the
        # matrix is abandoned the cycle after that
        pad_l = Signal(L)
        pad_wait = Signal()
        m.d.sync += [pad_l.eq(Mux(self.o_lanes.valid & self.o_lanes.ready, Cat(*pad_lane), 0)),
                     pad_r.eq(pad_l.any())]
        m.d.comb += pad_wait.eq(ov | pad_l.any() | pad_r)

        # ---------------------------------------------------------------- next mask state
        mat_end = Signal()
        m.d.comb += mat_end.eq(advance & finish & last_row)

        # window slots after this cycle's consumption, before refill
        s1 = [Signal(SW, name=f"mbeat{i}_n") for i in range(K)]
        v1 = [Signal(name=f"mbeat{i}_nv") for i in range(K)]
        m.d.comb += [x.eq(y) for x, y in zip(s1, slots, strict=True)]
        m.d.comb += [x.eq(y) for x, y in zip(v1, sv, strict=True)]

        def drop(m_, d):
            """Drop the ``d`` oldest beats of the window (vacated slots read as zeros)."""
            for i in range(K):
                if i + d < K:
                    m_.d.comb += [s1[i].eq(slots[i + d]), v1[i].eq(sv[i + d])]
                else:
                    m_.d.comb += [s1[i].eq(0), v1[i].eq(0)]

        # rebased counts after this cycle's drops, before this cycle's take (mirrors s1)
        Rs = [Signal(signed(rw), name=f"Rs{j}") for j in range(G)]
        Rsm1 = Signal(signed(rw))
        m.d.comb += [x.eq(y) for x, y in zip(Rs, R, strict=True)] + [Rsm1.eq(Rm1)]
        # beats of a finished matrix still in the window, dropped the cycle after its last row
        # (the decoder is then idle: registered, off the advance path)
        flush_d = Signal(range(K + 1))
        # sh: the oldest beat leaves (see below); sh_r = "its bits are all taken and the current
        # row ends beyond it", a register computed with the next state
        sh, sh_r = Signal(), Signal()
        fin = Signal()
        m.d.comb += fin.eq(advance & finish)
        # next row ends if this cycle finishes no row (_n0) / the current row (_n1 = es2 - dsh)
        dsh = Signal(range(MW + 1))
        m.d.comb += dsh.eq(Mux(sh, MW, 0))
        es_n0, es2_n0 = Signal.like(es_w), Signal.like(es2_w)
        m.d.comb += [es_n0.eq(es_w - dsh), es2_n0.eq(es2_w - dsh)]
        with m.If(any_err):
            m.d.comb += [x.eq(0) for x in v1] + [x.eq(0) for x in s1]
            m.d.comb += [x.eq(0) for x in Rs] + [Rsm1.eq(0)]
            m.d.sync += flush_d.eq(0)
        with m.Elif(flush_d != 0):
            with m.Switch(flush_d):
                for d in range(1, K + 1):
                    with m.Case(d):
                        drop(m, d)
            m.d.sync += flush_d.eq(0)
            # a fresh start (nothing taken): absolute prefix counts of the beats left, from their
            # local counts (off the k loop: nothing advances in a flush cycle)
            m.d.comb += Rsm1.eq(0)
            base = Const(0, rw)
            for s_ in range(K):
                loc = [s1[s_][M + g * lq_w:M + (g + 1) * lq_w] for g in range(GS)]
                for g in range(GS):
                    m.d.comb += Rs[s_ * GS + g].eq(base + loc[g])
                if s_ + 1 < K:
                    nb = Signal(rw, name=f"fresh{s_}")
                    m.d.comb += nb.eq(base + loc[-1])
                    base = nb
        with m.Else():
            # The oldest beat leaves once its set bits are all taken and the current row ends
            # beyond it (decided from the registers at the START of the cycle, also in the
            # matrix's last cycle: which slots change never depends on this cycle's advance).
            m.d.comb += sh.eq(running & ~prime & sh_r)
            with m.If(sh):
                drop(m, 1)
            with m.If(mat_end):
                # the beats of this matrix still in the window: ceil(es / M) of them, one fewer
                # if the oldest leaves now (then es > M)
                for d in range(1, K + 1):
                    with m.If((es_bits > (d - 1) * M) & (es_bits <= d * M)):
                        m.d.sync += flush_d.eq(d - sh)
        # The running/idle branch, kept apart from the error and flush cycles (which set the
        # counts from registers and take no beat), so the refill and the row-end lookups below
        # never wait on those decisions: Rn = counts after this cycle's drop (sh), v_d = slots
        # still valid.
        special = Signal()
        m.d.comb += special.eq(any_err | (flush_d != 0))
        Rn = [Signal(signed(rw), name=f"Rn{j}") for j in range(G)]
        Rnm1 = Signal(signed(rw))
        m.d.comb += [Rn[j].eq(Mux(sh, R[j + GS] if j + GS < G else R[-1], R[j])) for j in range(G)]
        m.d.comb += Rnm1.eq(Mux(sh, R[GS - 1], Rm1))
        v_d = [(Mux(sh, sv[i + 1], sv[i]) if i + 1 < K else sv[i] & ~sh) for i in range(K)]
        # refill from the input buffer into the first empty slot
        take_buf = Signal()
        m.d.comb += [take_buf.eq(mbuf_v & ~special & ~v_d[K - 1]),
                     self.i_mask.ready.eq(~mbuf_v | (~special & ~v_d[K - 1]))]
        with m.If(self.i_mask.valid & self.i_mask.ready):
            m.d.sync += [mbuf.eq(Cat(self.i_mask.payload, *in_lq_now)), mbuf_v.eq(1)]
        with m.Elif(take_buf):
            m.d.sync += mbuf_v.eq(0)
        m.d.sync += [x.eq(y) for x, y in zip(slots, s1, strict=True)]
        m.d.sync += [x.eq(y) for x, y in zip(sv, v1, strict=True)]
        # the beat entering slot i counts from the end of slot i-1; the slots after it (empty)
        # hold its total.  The add is off the k loop; the take "- k" follows it, "advance" last.
        Rf = [Signal(signed(rw), name=f"Rf{j}") for j in range(G)]
        m.d.comb += [x.eq(y) for x, y in zip(Rf, Rn, strict=True)]
        with m.If(take_buf):
            for i in range(K):
                with m.If(~v_d[i] & (v_d[i - 1] if i else 1)):
                    m.d.sync += [slots[i].eq(mbuf), sv[i].eq(1)]
                    start = Rn[i * GS - 1] if i else Rnm1
                    for j in range(i * GS, G):
                        m.d.comb += Rf[j].eq(start + (in_lq[j - i * GS] if j < (i + 1) * GS else in_lq[-1]))
        with m.If(special):
            m.d.sync += [R[j].eq(Rs[j]) for j in range(G)] + [Rm1.eq(Rsm1)]
        with m.Else():
            # "advance" picks between the counts with and without this cycle's take (both
            # computed before it is known), rather than feeding a subtraction
            m.d.sync += [R[j].eq(Mux(advance, Rf[j] - k, Rf[j])) for j in range(G)]
            m.d.sync += Rm1.eq(Mux(advance, Rnm1 - k, Rnm1))

        # ---------------------------------------------------------------- next value state
        VA1, VB1 = Signal(V), Signal(V)
        va1, vb1, val1, vbl1 = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [VA1.eq(VA), VB1.eq(VB), va1.eq(va_v), vb1.eq(vb_v), val1.eq(va_l), vbl1.eq(vb_l)]
        vpos_n = Signal(range(VPB + L + 1))
        m.d.comb += vpos_n.eq(vpos + k)
        allow_load = Signal()
        m.d.comb += allow_load.eq(~vlast_loaded)
        # "this cycle's take uses up VA" (vpos + k >= VPB) and "takes any value" (k != 0), decided
        # from the candidates of lim_full and vpos, beside k's saturation rather than after it
        need = Signal(range(VPB + 1))
        m.d.comb += need.eq(VPB - vpos)
        cross, takes = Signal(), Signal()
        m.d.comb += [cross.eq((need <= L) & pick(lambda x: x >= need)), takes.eq(pick(lambda x: x > 0))]

        end_ok = Signal()
        end_bad = Signal()
        # value-stream end check, one cycle after the matrix's last row
        untouched = (va_v & (vpos == 0)) | vb_v
        final_last = Mux(vpos != 0, va_l, prev_last)
        with m.If(any_val):
            m.d.comb += [end_ok.eq(~untouched & final_last), end_bad.eq(~(~untouched & final_last))]
        with m.Else():
            m.d.comb += [end_ok.eq(va_v & va_l & ~vb_v), end_bad.eq(va_v & ~(va_l & ~vb_v))]

        v_clear = Signal()
        m.d.comb += v_clear.eq(any_err | (endv & (end_ok | end_bad)))
        v_load = Signal()
        m.d.comb += v_load.eq(self.i_value.valid & self.i_value.ready)
        v_left = Signal(range(2 * VPB + 1))
        m.d.comb += v_left.eq(Mux(v_clear, 0, Mux(advance, vavail - k, vavail)))
        m.d.sync += vavail.eq(Mux(v_load, v_left + VPB, v_left))
        with m.If(v_clear):
            m.d.comb += [va1.eq(0), vb1.eq(0), allow_load.eq(0)]
            m.d.sync += [vpos.eq(0), vlast_loaded.eq(0), prev_last.eq(0), any_val.eq(0)]
        with m.Elif(advance & takes):
            m.d.sync += any_val.eq(1)
            with m.If(cross):
                m.d.comb += [VA1.eq(VB), va1.eq(vb_v), val1.eq(vb_l), vb1.eq(0)]
                m.d.sync += [vpos.eq(vpos_n - VPB), prev_last.eq(va_l)]
            with m.Else():
                m.d.sync += vpos.eq(vpos_n)
        m.d.comb += self.i_value.ready.eq(allow_load & ~(va1 & vb1))
        m.d.sync += [VA.eq(VA1), VB.eq(VB1), va_v.eq(va1), vb_v.eq(vb1), va_l.eq(val1), vb_l.eq(vbl1)]
        with m.If(vfifo.r_rdy & allow_load):
            with m.If(~va1):
                m.d.sync += [VA.eq(vfifo.r_data[:V]), va_l.eq(vfifo.r_data[V]), va_v.eq(1)]
            with m.Elif(~vb1):
                m.d.sync += [VB.eq(vfifo.r_data[:V]), vb_l.eq(vfifo.r_data[V]), vb_v.eq(1)]
            with m.If(~(va1 & vb1)):
                m.d.sync += vlast_loaded.eq(vfifo.r_data[V])

        # ---------------------------------------------------------------- control
        hn_n, lr_n = Signal(), Signal()
        m.d.comb += [hn_n.eq(Mux(fin, rows_left > 2, rows_left > 1)),
                     lr_n.eq(Mux(fin, rows_left == 2, rows_left == 1))]
        # a bundle still in stage A, or its padding check, belongs to the matrix before
        m.d.comb += [self.i_cmd.ready.eq(~running & ~endv & ~pad_wait),
                     self.o_busy.eq(running | endv | pad_wait)]
        with m.If(self.i_cmd.valid & self.i_cmd.ready):
            cols = self.i_cmd.payload.cols
            stride = Signal(len(cols) + 1)
            m.d.comb += stride.eq((cols + (gran - 1)) & ~Const(gran - 1, len(cols) + 1))
            sw_new = stride >> (W.bit_length() - 1)
            m.d.sync += [running.eq(1), rows_left.eq(self.i_cmd.payload.rows), cols_r.eq(cols),
                         stride_w.eq(sw_new)]
            # the geometry is set now (below); the counts at the row ends follow it one cycle
            # later (``prime``: nothing advances in that cycle)
            m.d.sync += prime.eq(1)
            m.d.comb += [hn_n.eq(self.i_cmd.payload.rows > 1), lr_n.eq(self.i_cmd.payload.rows == 1)]
        with m.If(advance & finish):
            m.d.sync += rows_left.eq(rows_left - 1)
        with m.If(mat_end):
            m.d.sync += [running.eq(0), endv.eq(1)]
        with m.If(endv & (end_ok | end_bad)):
            m.d.sync += endv.eq(0)
        with m.If(any_err):
            m.d.sync += [running.eq(0), endv.eq(0)]
        # the row geometry and the registered flags and counts that follow it (next values for
        # both outcomes of this cycle's row finish and advance, selected by them)
        # (the geometry also moves at the matrix's end, so it never waits on that decision; the
        # next command sets it, an error resets it)
        with m.If(self.i_cmd.valid & self.i_cmd.ready):
            m.d.sync += [rs_w.eq(0), es_w.eq(sw_new), es2_w.eq(sw_new << 1), es3_w.eq(sw_new + (sw_new << 1))]
        with m.Elif(any_err):
            m.d.sync += [rs_w.eq(0), es_w.eq(stride_w), es2_w.eq(stride_w << 1),
                         es3_w.eq(stride_w + (stride_w << 1))]
        with m.Else():
            # both outcomes computed from registers, the late row finish picks one
            m.d.sync += [rs_w.eq(Mux(fin, es_n0, rs_w - dsh)), es_w.eq(Mux(fin, es2_n0, es_n0)),
                         es2_w.eq(Mux(fin, es3_w - dsh, es2_n0)),
                         es3_w.eq(Mux(fin, es3_w + stride_w - dsh, es3_w - dsh))]
        m.d.sync += [has_next.eq(hn_n), last_row.eq(lr_n)]
        # slot valid bits of the next cycle, as the running branch leaves them (after an error
        # or in a flush cycle the registers below are not used before the next priming cycle)
        v_n = [Signal(name=f"mbeat{i}_vn") for i in range(K)]
        m.d.comb += [v_n[i].eq(v_d[i] | (mbuf_v & (v_d[i - 1] if i else 1))) for i in range(K)]
        av_n = Signal(range(NW + 1))
        m.d.comb += av_n.eq(_popcount(v_n) * MW)
        # counts at the next row ends (es - dsh, es2 - dsh, es3 - dsh): the window positions are
        # decoded from the registers for both values of sh, then picked by it
        c_a = r_at_sh(Rf, Rnm1, es_w, "r_a")
        c_b = r_at_sh(Rf, Rnm1, es2_w, "r_b")
        c_c = r_at_sh(Rf, Rnm1, es3_w, "r_c")
        m.d.sync += [k_cur_full.eq(Mux(advance, Mux(finish, c_b, c_a) - k, c_a)),
                     k_nxt_full.eq(Mux(advance, Mux(finish, c_c, c_b) - k, c_b)),
                     row_complete.eq(Mux(fin, es2_n0 <= av_n, es_n0 <= av_n)),
                     sh_r.eq(v_n[0] & Mux(advance, (Rf[GS - 1] <= k) & Mux(finish, es2_n0 > MW, es_n0 > MW),
                                          (Rf[GS - 1] <= 0) & (es_n0 > MW)))]
        flags = Signal(4)
        m.d.comb += [
            flags[ERRORS["values_short"]].eq(short_err),
            flags[ERRORS["mask_padding"]].eq(pad_r),
            flags[ERRORS["values_extra"]].eq(endv & end_bad & ~any_err),
        ]
        m.d.sync += err_flags.eq(err_flags | flags)
        return m
