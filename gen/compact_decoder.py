"""Compact bitmap decoder: the small-FPGA form of the front end (``SpmvConfig(decoder="compact")``).

Same ports and lane bundles as :class:`sparsefab.gen.bitmap_decoder.BitmapDecoder`, with much
less logic and a shorter take loop; made for the iCE40UP5K.  What makes it small:

* **Words, not beats.**  A row's mask stride is a multiple of the bus word (CONTRACTS C), so
  every 32-bit mask word belongs to ONE row.  Each word is tagged as it enters (its index in
  its row, "last word of its row"), so a lane's column is ``32 * index + 16 * group + bit``
  (no subtraction of a row start) and row padding is checked on the word as it arrives,
  against a mask computed once per command (no per-lane compare).  Words past the matrix's
  last row (the zero padding of the final beat) are dropped there.
* **Two word slots** (64 bits, ``SLOTS``) hold the words being taken; a two-word input buffer
  (one 64-bit beat, registered with its per-group prefix counts and row tags) refills them.
  ``D[j]`` = set bits in groups ``0..j`` (16 bits each) of the slots minus the set bits already
  taken (registers, signed).  Lane ``i`` takes the first group with ``D[j] > i`` (a compare
  with the constant ``i``), then the set bit of rank ``i - D[j-1]`` in that group (the low 4
  bits of ``D[j-1]``: a table), found from the group's nibble counts.
* **One row per bundle, and the take never subtracts a variable from the whole state.**
  ``avail`` = set bits in reach: through the current row's end if it is in slot 0, else
  through slot 1.  If ``avail >= lanes`` the take is ``lanes`` and every count drops by the
  constant ``lanes``; otherwise everything in reach is taken (counts 0) and slot 1, if past
  the row's end, loses ``avail`` (a register).  The next counts are picked late by ``advance``.
  Lanes never mix rows (``nxt`` is always 0), so the back end's second adder tree is optimised
  away; a row costs ``ceil(nnz_row / lanes)`` bundles (one if empty).
* Slots whose set bits are all taken leave in the same cycle, and up to two words enter; a
  word that ends a row not yet finished stays (its row finishes in the next bundle).

Values: a gearbox of two value beats hands out ``k`` values from any offset (as in
BitmapDecoder).  Lane bundles are registered (``o_lanes.valid`` is a register); the in-group
rank select follows on ``o_lanes`` combinationally.

Throughput: ``min(lanes, set bits in reach)`` nonzeros per cycle; at most ``mask_bus`` (64) mask
bits enter per cycle, so at density ``d`` at most ``64 d`` nonzeros per cycle.  Measured on
MiniLM matrices (8 lanes, ``sparsefab bench --only spmv``): utilization 0.98 / 0.93 / 0.64 at
50 / 75 / 90 % sparsity.  Per matrix one cycle to take the command and one to check the value
stream's end.

Timing structure (the take loop kept short for the iCE40):

* ``advance`` comes from registers only: running, no error, "at least ``lanes`` values held"
  (``vge_r``, registered with the value count) or the value stream's last beat is in, and the
  output register free.  It no longer waits for the take's size or a compare of the value
  count with ``avail`` (that compare now only raises ``values_short``, on the side).  A take of
  nothing (zero words skipped) also waits for the output register: a cycle lost only under
  backpressure.
* The refill plan (each slot's source: an older slot, a buffered word or empty; the words
  leaving the buffer; ``i_mask.ready``) is a boolean table of (valid slots, buffered words,
  refill allowed, ``advance``, droppable slots), not small-count arithmetic: the counts
  ``d -> nv -> free -> nfill -> left`` were carry chains the LUT mapper cannot flatten.
* Constant compares of the counts are plain logic; the drop test of slot 1 reads a flag,
  ``s1_empty`` (``dlast[1] <= dlast[0]``), registered with the slots, not a compare.
* In-group select on ``o_lanes``: the rank-r' set bit of every nibble is found in parallel and
  picked by the nibble last.

Measured on the iCE40UP5K (iCEBreaker defaults, generic harness, nextpnr-ice40 seed 1; the
window form alone needs about 4,450 LCs, and the array with it does not fit):

* whole 8-lane array (``sparsefab fpga build --board icebreaker --design spmv --lanes 8``):
  **23.98 MHz** routed, 5,236 / 5,280 LCs (4,359 LUT4, 1,873 FF, 658 carries; the harness
  adds 342 FF and 57 LUT), 8 SB_MAC16, 19 EBR; at 94a0884, same flow: 19.58 MHz, 5,009 LCs.
  Critical path: the input accept, the counts' constant compares -> drop -> refill table ->
  ``i_mask.ready`` -> the input buffer's enable (about 100 flip-flops), 13.9 ns logic + 27.8 ns
  routing over 13 cells.
* this decoder alone (``--design bitmap-decoder``), before the ``s1_empty`` flag: 24.95 MHz
  (3,209 LCs, measured with an in-group select from registered nibble prefixes, about 490 LCs
  larger and not kept); at 94a0884: 20.47 MHz, 2,881 LCs.

Still short of 40 MHz: on this chip a LUT level costs about 2.6 ns with routing, so a path
must stay within about 8 LUTs.  Next: ``dlast <= L`` and ``dlast >= L`` as flags registered
with the counts like ``s1_empty`` (the drop test then starts from registers), and a registered
``i_mask.ready`` (a second beat register, about 100-160 LCs, which the array has no room for
until the back end or the requantizer shrinks).

Malformed input sets the sticky error flags (``ERRORS``) and abandons the matrix: a set
mask bit in row padding as its word arrives; a value stream too short (a take needs values
after the stream's ``last``; that take's bundle is not emitted) or too long (checked after the
last row).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sparsefab.gen.bitmap_decoder import (
    _balanced,
    _gt_const,
    _or,
    _popcount,
    _rank_select,
    cmd_layout,
    lane_layout,
    value_layout,
)
from sparsefab.gen.spmv_config import ERRORS, ROWS_BITS, SpmvConfig

__all__ = ["CompactDecoder", "WORD", "SLOTS"]

#: internal mask word (bits); every row stride is a multiple of it
WORD = 32
#: word slots (the lanes take from the first VIS of them; more would be look-ahead)
SLOTS = 2
VIS = 2
#: bits per group of the rank selection (a lane picks a group by its count, then a bit in it)
GROUP = 16
_BYTES = WORD // GROUP           # groups per word
_CB = (GROUP - 1).bit_length()   # bits of a position inside a group
_NIBS = GROUP // 4               # nibbles per group
_PW = (GROUP - 4).bit_length()   # in-group nibble prefix count width
_SW = WORD                       # a word as held in the buffer and the slots


class CompactDecoder(wiring.Component):
    """Bitmap mask/value streams to lane bundles, the small form (see the module docstring).

    Parameters
    ----------
    config : SpmvConfig
        A sparse configuration with ``decoder="compact"`` (``mask_bus`` 32 or 64, ``lanes``
        up to 16).  Uses ``lanes``, ``weight_bits``, ``block``, ``bus_bits``, ``max_cols``,
        ``mask_words`` and ``value_words``.

    Ports
    -----
    i_cmd : In(stream.Signature(cmd_layout))
        ``rows`` (16 bits, >= 1), ``cols`` (``col_bits``, 1..max_cols); accepted when idle.
    i_mask : In(stream.Signature(mask_bus))
        Mask beats, first word in the low bits; ``ceil(rows * stride_bits / mask_bus)`` beats
        per matrix, the last zero padded.
    i_value : In(stream.Signature(value_layout))
        Value beats, ``last`` on the matrix's final beat (one zero beat if nnz = 0).
    o_lanes : Out(stream.Signature(lane_layout))
        Lane bundles (see :func:`~sparsefab.gen.bitmap_decoder.lane_layout`); every row gives
        exactly one bundle with ``row_end``, in row order.
    o_busy : Out(1)
        A matrix is in progress (until its last bundle has left).
    o_error : Out(1)
        Sticky until reset.
    o_error_flags : Out(4)
        Sticky causes (``values_short``, ``values_extra``, ``mask_padding``).

    Latency: a mask beat is registered with its per-word counts and row tags (input buffer),
    enters the slots the next cycle at the earliest, and a take's bundle is registered
    (``o_lanes.valid``) the cycle after its decision.
    """

    def __init__(self, config: SpmvConfig):
        if not isinstance(config, SpmvConfig) or config.dense or config.decoder != "compact":
            self._MustUse__silence = True
            if not isinstance(config, SpmvConfig):
                raise TypeError(f"CompactDecoder: config={config!r}, expected a SpmvConfig")
            raise ValueError("CompactDecoder: expected a sparse configuration with decoder='compact'")
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
        NB = cfg.mask_bus // WORD            # words per mask beat (1 or 2)
        V = cfg.value_bus
        VPB = V // b
        gran = max(cfg.block, cfg.bus_bits)
        max_sw = -(-cfg.max_cols // gran) * gran // WORD      # words per row stride, at most
        q_w = max(1, (max_sw - 1).bit_length())             # word index in its row
        col_w = len(self.o_lanes.payload.col[0])
        NBY = SLOTS * _BYTES                                 # bytes the lanes see
        dw = 8                                               # D: signed, -64..96 fits
        lp_w = 6                                             # in-word prefix counts 0..32
        kw = max(1, L.bit_length())

        # ------------------------------------------------------------ state
        running, endv = Signal(), Signal()
        err_flags = Signal(4)
        m.d.comb += [self.o_error_flags.eq(err_flags), self.o_error.eq(err_flags.any())]
        pad_r = Signal()                 # a set bit in row padding arrived (acts next cycle)
        short_err = Signal()
        any_err = Signal()
        m.d.comb += any_err.eq(pad_r | short_err)

        # command geometry
        swm1 = Signal(q_w)               # words per row - 1
        qlast = Signal(q_w + 1)          # index of the last word holding columns < cols
        pm_last = Signal(WORD)           # padding bits of that word
        rows_in = Signal(ROWS_BITS)      # rows whose words are still to arrive
        q_in = Signal(q_w)               # index in its row of the next arriving word
        rows_left = Signal(ROWS_BITS)
        last_row = Signal()              # rows_left == 1

        # input buffer: NB words (E0 oldest)
        eb = [Signal(_SW, name=f"e{t}_bits") for t in range(NB)]
        elp = [[Signal(lp_w, name=f"e{t}_lp{j}") for j in range(_BYTES)] for t in range(NB)]
        epp = [Signal(lp_w + 1, name=f"e1_pp{j}") for j in range(_BYTES)]   # E0 total + E1 prefix
        ere = [Signal(name=f"e{t}_re") for t in range(NB)]
        eq = [Signal(q_w, name=f"e{t}_q") for t in range(NB)]
        ev = [Signal(name=f"e{t}_v") for t in range(NB)]

        # slots
        sb = [Signal(_SW, name=f"s{s}_bits") for s in range(SLOTS)]
        sv = [Signal(name=f"s{s}_v") for s in range(SLOTS)]
        sre = [Signal(name=f"s{s}_re") for s in range(SLOTS)]
        sq = [Signal(q_w, name=f"s{s}_q") for s in range(SLOTS)]
        D = [Signal(signed(dw), name=f"D{j}") for j in range(NBY)]
        Dm1 = Signal(signed(dw))

        # ------------------------------------------------------------ the take (from registers)
        # the current row's end slot e: the first slot ending a row (a bundle holds one row)
        dlast = [D[s * _BYTES + _BYTES - 1] for s in range(SLOTS)]
        first_re = [sre[s] & ~_or(sre[:s]) if s else sre[0] for s in range(SLOTS)]
        # the take stops at the current row's end or at the last visible slot (VIS = 2)
        beyond = [Const(0, 1), sre[0]] + [Const(1, 1)] * (SLOTS - VIS)   # slot s is past the reach
        avail = Signal(signed(dw))       # set bits in reach
        m.d.comb += avail.eq(Mux(sre[0], dlast[0], dlast[1]))
        # full = avail >= L, evaluated on each candidate and then picked
        full = Signal()
        m.d.comb += full.eq(Mux(sre[0], ~dlast[0][-1] & _gt_const(dlast[0][:-1], L - 1),
                                ~dlast[1][-1] & _gt_const(dlast[1][:-1], L - 1)))
        k = Signal(range(L + 1))
        m.d.comb += k.eq(Mux(full, L, Mux(avail[-1], 0, avail[:kw])))
        fin_s = [sv[s] & sre[s] & (dlast[s] <= L) for s in range(SLOTS)]
        finish = Signal()
        m.d.comb += finish.eq(_or([fin_s[s] & first_re[s] for s in range(VIS)]))

        # values: VA, VB (two value beats), vpos (offset in VA), vavail (values held)
        VA, VB = Signal(V), Signal(V)
        va_v, vb_v, va_l, vb_l = Signal(), Signal(), Signal(), Signal()
        vpos = Signal(range(VPB))
        vavail = Signal(range(2 * VPB + 1))
        vlast_loaded, prev_last, any_val = Signal(), Signal(), Signal()
        vals_ok = Signal()
        # the take waits only while fewer than L values are held and the stream goes on; once its
        # last beat is in, every remaining value is held (a shorter stream is malformed: that take
        # raises values_short, its bundle is not emitted, and the matrix is abandoned).  Both
        # terms are registers: the decision to advance does not wait for a compare with avail.
        vge_r = Signal()                 # vavail >= L
        vals_exact = Signal()            # vavail >= min(L, max(avail, 0)), checked on the side
        m.d.comb += vals_exact.eq(vge_r | Mux(sre[0], vavail >= dlast[0], vavail >= dlast[1]))
        m.d.comb += vals_ok.eq(vge_r | vlast_loaded)

        # outputs (stage A registers)
        ov = Signal()
        rdy_a = Signal()
        m.d.comb += rdy_a.eq(~ov | self.o_lanes.ready)
        short_now = Signal()
        can_go = Signal()
        m.d.comb += can_go.eq(running & vals_ok & ~any_err)
        emit = Signal()
        m.d.comb += emit.eq(can_go & ((k != 0) | finish) & ~short_now)
        advance = Signal()
        # advance waits for the output register even when nothing is emitted (a take of zero
        # words): a cycle lost only under backpressure, and advance is a few registers deep
        # instead of waiting for the take's size
        m.d.comb += advance.eq(can_go & rdy_a)
        mat_end = Signal()
        m.d.comb += mat_end.eq(advance & finish & last_row)
        m.d.comb += short_now.eq(running & ~vals_exact & vlast_loaded)
        m.d.sync += short_err.eq(short_now & ~any_err)

        # ------------------------------------------------------------ lanes (stage A)
        window = Cat(*sb)
        pl = self.o_lanes.payload
        byw = max(1, (_BYTES - 1).bit_length())
        a_grp = [Signal(GROUP, name=f"a_grp{i}") for i in range(L)]
        a_by = [Signal(byw, name=f"a_by{i}") for i in range(L)]
        a_q = [Signal(q_w, name=f"a_q{i}") for i in range(L)]
        a_lr = [Signal(_CB, name=f"a_lr{i}") for i in range(L)]
        a_valid = Signal(L)
        a_val = Signal(L * b)
        a_row_end, a_last = Signal(), Signal()
        NV = VIS * _BYTES                # groups the lanes see
        lows = [Dm1[:_CB]] + [D[j][:_CB] for j in range(NV - 1)]
        for i in range(L):
            gt = [Signal(name=f"gt{i}_{j}") for j in range(NV)]
            for j in range(NV):
                m.d.comb += gt[j].eq(~D[j][-1] & _gt_const(D[j][:-1], i))
            first = [gt[0]] + [gt[j] & ~gt[j - 1] for j in range(1, NV)]
            grp, by, dlow = Signal(GROUP, name=f"grp{i}"), Signal(byw, name=f"by{i}"), Signal(_CB, name=f"dlow{i}")
            qsel = Signal(q_w, name=f"qsel{i}")
            in_s = [_or([first[s * _BYTES + t] for t in range(_BYTES)]) for s in range(VIS)]
            m.d.comb += [
                grp.eq(_or([Mux(first[j], window[j * GROUP:(j + 1) * GROUP], 0) for j in range(NV)], GROUP)),
                by.eq(_or([Mux(first[j], j % _BYTES, 0) for j in range(NV)], byw)),
                dlow.eq(_or([Mux(first[j], lows[j], 0) for j in range(NV)], _CB)),
                qsel.eq(_or([Mux(in_s[s], sq[s], 0) for s in range(VIS)], q_w)),
            ]
            with m.If(rdy_a):
                lr_tab = Array([Const((i - v) % GROUP, _CB) for v in range(GROUP)])
                m.d.sync += [a_grp[i].eq(grp), a_by[i].eq(by), a_q[i].eq(qsel), a_lr[i].eq(lr_tab[dlow]),
                             a_valid[i].eq(k > i)]
        for i in range(L):
            # the set bit of rank r in the group: its nibble from the nibble prefix counts (a
            # lookup per nibble, small adds and compares), then the rank in that nibble (a table)
            r = a_lr[i]
            ncnt = [_popcount(a_grp[i][4 * u:4 * u + 4]) for u in range(_NIBS - 1)]
            pfx = []
            for u in range(_NIBS - 1):
                pv = Signal(_PW, name=f"np{i}_{u}")
                m.d.comb += pv.eq(ncnt[u] if u == 0 else pfx[-1] + ncnt[u])
                pfx.append(pv)
            therm = [r >= p_ for p_ in pfx]
            nib = Signal(max(1, (_NIBS - 1).bit_length()), name=f"nib{i}")
            m.d.comb += nib.eq(_balanced([x for x in therm], lambda x, y: x + y) if therm else 0)
            # the rank-r' set bit of every nibble in parallel (r' = r minus the set bits before
            # that nibble, a 2-bit subtract and a table each), picked by the nibble last: the
            # nibble choice and the rank select no longer follow each other
            cands = []
            for u in range(_NIBS):
                lr2 = Signal(2, name=f"lr2_{i}_{u}")
                m.d.comb += lr2.eq(r if u == 0 else r - pfx[u - 1])
                cands.append(_rank_select(m, a_grp[i][4 * u:4 * u + 4], lr2, f"ws{i}_{u}"))
            within = Cat(Array(cands)[nib], nib)
            col = Signal(_CB + byw + q_w, name=f"col{i}")
            m.d.comb += col.eq(Cat(within, a_by[i], a_q[i]))
            m.d.comb += [pl.valid[i].eq(a_valid[i]), pl.nxt[i].eq(0),
                         pl.col[i].eq(col[:col_w]), pl.value[i].eq(a_val[i * b:(i + 1) * b])]

        # value gearbox: L values from offset vpos of VA:VB (log shifter, widest step first)
        vshift = Cat(VA, VB)
        for t in reversed(range(len(vpos))):
            step = b << t
            need = L * b + b * ((1 << t) - 1)
            stage = Signal(need, name=f"vsh{t}")
            m.d.comb += stage.eq(Mux(vpos[t], vshift[step:step + need], vshift[:need]))
            vshift = stage
        with m.If(rdy_a):
            m.d.sync += [ov.eq(emit), a_row_end.eq(finish), a_last.eq(finish & last_row),
                         a_val.eq(vshift[:L * b])]
        with m.If(any_err):
            m.d.sync += ov.eq(0)
        m.d.comb += [pl.row_end.eq(a_row_end), pl.last.eq(a_last), self.o_lanes.valid.eq(ov)]

        # ------------------------------------------------------------ next slot state
        # counts after the take (as if advancing): full -> D - L; else everything through the
        # row's end is taken (0) and the slots past it lose the row's remaining bits (avail)
        Dt = [Signal(signed(dw), name=f"Dt{j}") for j in range(NBY)]
        for j in range(NBY):
            s = j // _BYTES
            # (slot 1 is past the reach only if slot 0 ends the row: then avail = dlast[0])
            alt = Mux(beyond[s], D[j] - dlast[0], 0) if s else Const(0, dw)
            m.d.comb += Dt[j].eq(Mux(full, D[j] - L, alt))
        Dtm1 = Signal(signed(dw))
        m.d.comb += Dtm1.eq(Mux(full, Dm1 - L, 0))
        total_t = Dt[-1]                 # window total after the take (invalid slots hold it)
        # slots whose set bits are all taken by this take, and which may leave: not a row end,
        # or the current row's end (which finishes now)
        # (written out per slot: slot 0 is never past the reach; slot 1 is past it iff slot 0
        # ends the row, then avail = dlast[0]; constant compares as logic)
        def le_c(x, c):      # x <= c for a signed x and a constant c >= 0
            return x[-1] | ~_gt_const(x[:-1], c)

        # slot 1's set bits all taken (dlast[1] <= dlast[0]): a flag registered with the slots
        # (its word's popcount is 0 when it enters; a take never changes it while the word stays
        # in slot 1: the counts of both slots drop together), not a compare in the loop
        s1_empty = Signal(init=1)
        ex = [Mux(full, le_c(dlast[0], L), 1), Mux(full, le_c(dlast[1], L), ~sre[0] | s1_empty)]
        # (a row end past the reach never leaves before its row finishes)
        drop = [sv[s] & ex[s] & (~sre[s] | (first_re[s] if s < VIS else 0)) for s in range(SLOTS)]
        # The refill plan (which source each slot takes, how many buffered words leave, whether a
        # beat may enter) as boolean tables of (valid slots, buffered words, refill allowed,
        # advance, droppable slots): small counts as arithmetic became carry chains (d -> nv ->
        # free -> nfill -> left -> i_mask.ready), which the LUT mapper cannot flatten.
        gate = Signal()
        m.d.comb += gate.eq(running & ~any_err)
        ev_bits = [ev[t] for t in range(NB)]
        tab_in = Cat(*sv, *ev_bits, gate, advance, *drop)
        n_in = len(tab_in)
        srcs = [("old", s) for s in range(SLOTS)] + [("e", t) for t in range(NB)] + [("empty", 0)]
        outs = {("sel", t, src): [] for t in range(SLOTS) for src in srcs}
        outs.update({("nf", f): [] for f in range(1, NB + 1)})
        outs.update({("tail", t, f): [] for t in range(SLOTS) for f in range(NB + 1)})
        outs.update({("dm1", dv): [] for dv in range(SLOTS + 1)})
        outs[("ready",)] = []
        for v in range(1 << n_in):
            bit = [(v >> i) & 1 for i in range(n_in)]
            svv, evv = bit[:SLOTS], bit[SLOTS:SLOTS + NB]
            g, adv, drp = bit[SLOTS + NB], bit[SLOTS + NB + 1], bit[SLOTS + NB + 2:]
            if any(svv[s] and not svv[s - 1] for s in range(1, SLOTS)) or \
               any(evv[t] and not evv[t - 1] for t in range(1, NB)):
                continue                 # not contiguous: never happens
            dv = 0
            while dv < SLOTS and drp[dv] and svv[dv]:
                dv += 1
            dv = dv if adv else 0
            nv_ = sum(svv) - dv
            nb_ = sum(evv)
            nf = min(SLOTS - nv_, nb_) if g else 0
            for t in range(SLOTS):
                if t < nv_:
                    src = ("old", t + dv)
                elif t - nv_ < nf:
                    src = ("e", t - nv_)
                else:
                    src = ("empty", 0)
                outs[("sel", t, src)].append(v)
            if nf:
                outs[("nf", nf)].append(v)
            for t in range(SLOTS):
                if t >= nv_ + nf:
                    outs[("tail", t, nf)].append(v)
            outs[("dm1", dv)].append(v)
            if g and nb_ == nf:
                outs[("ready",)].append(v)
        tab = {}
        for key, vals in outs.items():
            sig = Signal(name="tab_" + "_".join(str(x) if not isinstance(x, tuple) else f"{x[0]}{x[1]}"
                                               for x in key))
            truth = set(vals)
            m.d.comb += sig.eq(Array([Const(int(x in truth), 1) for x in range(1 << n_in)])[tab_in])
            tab[key] = sig
        nfill = Signal(range(NB + 1))
        m.d.comb += nfill.eq(_or([Mux(tab[("nf", f)], f, 0) for f in range(1, NB + 1)], len(nfill)))
        # counts before refill: the take applied if advancing
        Da = [Signal(signed(dw), name=f"Da{j}") for j in range(NBY)]
        Dam1 = Signal(signed(dw))
        m.d.comb += [Da[j].eq(Mux(advance, Dt[j], D[j])) for j in range(NBY)]
        m.d.comb += Dam1.eq(Mux(advance, Dtm1, Dm1))
        base = Signal(signed(dw))
        m.d.comb += base.eq(Mux(advance, total_t, D[-1]))
        add0 = [Signal(signed(dw), name=f"add0_{j}") for j in range(_BYTES)]
        m.d.comb += [add0[j].eq(base + elp[0][j]) for j in range(_BYTES)]
        add = [add0]
        if NB > 1:
            add1 = [Signal(signed(dw), name=f"add1_{j}") for j in range(_BYTES)]
            m.d.comb += [add1[j].eq(base + epp[j]) for j in range(_BYTES)]
            add.append(add1)

        e_zero = [Signal(name=f"e{u}_zero") for u in range(NB)]     # a buffered word without set bits
        m.d.comb += [e_zero[u].eq(elp[u][-1] == 0) for u in range(NB)]
        s1_src = {("old", 1): s1_empty, ("empty", 0): Const(1, 1)}
        s1_src.update({("e", u): e_zero[u] for u in range(NB)})
        with m.If(~gate):
            m.d.sync += [x.eq(0) for x in sv] + [x.eq(0) for x in sre] + [x.eq(0) for x in D] + [Dm1.eq(0)]
            m.d.sync += s1_empty.eq(1)
        with m.Else():
            # Dm1 of the new slot 0: the count at the end of the last dropped slot
            dm1_src = [Dam1] + [Da[dv * _BYTES - 1] for dv in range(1, SLOTS + 1)]
            m.d.sync += Dm1.eq(_or([Mux(tab[("dm1", dv)], dm1_src[dv], 0) for dv in range(SLOTS + 1)], dw))
            for t in range(SLOTS):
                # one-hot sources: old slot s, buffered word u, or empty (holds the total)
                bits_v, re_v, q_v = [], [], []
                d_v = [[] for _ in range(_BYTES)]
                for kind, s in srcs:
                    h = tab[("sel", t, (kind, s))]
                    if kind == "old":
                        bits_v.append(Mux(h, sb[s], 0))
                        re_v.append(h & sre[s])
                        q_v.append(Mux(h, sq[s], 0))
                        for j in range(_BYTES):
                            d_v[j].append(Mux(h, Da[s * _BYTES + j], 0))
                    elif kind == "e":
                        bits_v.append(Mux(h, eb[s], 0))
                        re_v.append(h & ere[s])
                        q_v.append(Mux(h, eq[s], 0))
                        for j in range(_BYTES):
                            d_v[j].append(Mux(h, add[s][j], 0))
                    else:
                        # empty: the new window total, by the number of words filled
                        tvals = [base] + [add[u][-1] for u in range(NB)]
                        for f in range(NB + 1):
                            for j in range(_BYTES):
                                d_v[j].append(Mux(tab[("tail", t, f)], tvals[f], 0))
                if t == 1:
                    m.d.sync += s1_empty.eq(_or([tab[("sel", 1, src)] & val for src, val in s1_src.items()
                                                 if ("sel", 1, src) in tab]))
                m.d.sync += [sb[t].eq(_or(bits_v, _SW)), sre[t].eq(_or(re_v)), sq[t].eq(_or(q_v, q_w)),
                             sv[t].eq(~tab[("sel", t, ("empty", 0))])]
                m.d.sync += [D[t * _BYTES + j].eq(_or(d_v[j], dw)) for j in range(_BYTES)]

        # ------------------------------------------------------------ input buffer
        # a beat is taken when every buffered word leaves this cycle (from the table)
        accept = Signal()
        m.d.comb += [self.i_mask.ready.eq(tab[("ready",)] & (rows_in != 0)),
                     accept.eq(self.i_mask.valid & self.i_mask.ready)]
        if NB > 1:
            with m.If(nfill == 1):     # E1 moves up
                m.d.sync += [eb[0].eq(eb[1]), ere[0].eq(ere[1]), eq[0].eq(eq[1]), ev[0].eq(ev[1]), ev[1].eq(0)]
                m.d.sync += [elp[0][j].eq(elp[1][j]) for j in range(_BYTES)]
            with m.Elif(nfill == 2):
                m.d.sync += [ev[0].eq(0), ev[1].eq(0)]
        else:
            with m.If(nfill == 1):
                m.d.sync += ev[0].eq(0)
        # the arriving beat: per word its in-word prefixes, row tag, index and padding check
        rows_c, q_c = rows_in, q_in
        pad_hits = []
        pres = []
        for t in range(NB):
            cnts = [_popcount(self.i_mask.payload[t * WORD + j * GROUP:t * WORD + (j + 1) * GROUP])
                    for j in range(_BYTES)]
            pre = []
            acc = None
            for j in range(_BYTES):
                acc = cnts[j] if acc is None else acc + cnts[j]
                p = Signal(lp_w, name=f"in{t}_lp{j}")
                m.d.comb += p.eq(acc)
                pre.append(p)
            pres.append(pre)
        for t in range(NB):
            bits = self.i_mask.payload[t * WORD:(t + 1) * WORD]
            pre = pres[t]
            v_t = Signal(name=f"in{t}_v")
            re_t = Signal(name=f"in{t}_re")
            m.d.comb += [v_t.eq(rows_c != 0), re_t.eq(q_c == swm1)]
            pad_hits.append(v_t & (((q_c == qlast) & (bits & pm_last).any()) | ((q_c > qlast) & bits.any())))
            with m.If(accept):
                m.d.sync += [eb[t].eq(bits), ev[t].eq(v_t), ere[t].eq(re_t), eq[t].eq(q_c)]
                m.d.sync += [elp[t][j].eq(pre[j]) for j in range(_BYTES)]
                if t == 1:
                    m.d.sync += [epp[j].eq(pres[0][-1] + pre[j]) for j in range(_BYTES)]
            rn = Signal(ROWS_BITS, name=f"in{t}_rows")
            qn = Signal(q_w, name=f"in{t}_qn")
            m.d.comb += [rn.eq(rows_c - (v_t & re_t)), qn.eq(Mux(re_t, 0, q_c + 1))]
            rows_c, q_c = rn, qn
        with m.If(accept):
            m.d.sync += [rows_in.eq(rows_c), q_in.eq(q_c)]
        pad_now = Signal()
        m.d.comb += pad_now.eq(accept & _balanced(pad_hits, lambda x, y: x | y))
        m.d.sync += pad_r.eq(pad_now & ~any_err)

        # ------------------------------------------------------------ next value state
        VA1, VB1 = Signal(V), Signal(V)
        va1, vb1, val1, vbl1 = Signal(), Signal(), Signal(), Signal()
        m.d.comb += [VA1.eq(VA), VB1.eq(VB), va1.eq(va_v), vb1.eq(vb_v), val1.eq(va_l), vbl1.eq(vb_l)]
        vpos_n = Signal(range(VPB + L + 1))
        m.d.comb += vpos_n.eq(vpos + k)
        allow_load = Signal()
        m.d.comb += allow_load.eq(~vlast_loaded)
        cross = Signal()
        m.d.comb += cross.eq(vpos_n >= VPB)
        end_ok, end_bad = Signal(), Signal()
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
        v_next = Signal(range(2 * VPB + 1))
        m.d.comb += v_next.eq(Mux(v_load, v_left + VPB, v_left))
        m.d.sync += [vavail.eq(v_next), vge_r.eq(v_next >= L)]
        with m.If(v_clear):
            m.d.comb += [va1.eq(0), vb1.eq(0), allow_load.eq(0)]
            m.d.sync += [vpos.eq(0), vlast_loaded.eq(0), prev_last.eq(0), any_val.eq(0)]
        with m.Elif(advance & (k != 0)):
            m.d.sync += any_val.eq(1)
            with m.If(cross):
                m.d.comb += [VA1.eq(VB), va1.eq(vb_v), val1.eq(vb_l), vb1.eq(0)]
                m.d.sync += [vpos.eq(vpos_n - VPB), prev_last.eq(va_l)]
            with m.Else():
                m.d.sync += vpos.eq(vpos_n)
        m.d.comb += self.i_value.ready.eq(allow_load & ~(va1 & vb1))
        m.d.sync += [VA.eq(VA1), VB.eq(VB1), va_v.eq(va1), vb_v.eq(vb1), va_l.eq(val1), vb_l.eq(vbl1)]
        with m.If(self.i_value.valid & allow_load):
            d_in, l_in = self.i_value.payload.data, self.i_value.payload.last
            with m.If(~va1):
                m.d.sync += [VA.eq(d_in), va_l.eq(l_in), va_v.eq(1)]
            with m.Elif(~vb1):
                m.d.sync += [VB.eq(d_in), vb_l.eq(l_in), vb_v.eq(1)]
            with m.If(~(va1 & vb1)):
                m.d.sync += vlast_loaded.eq(l_in)

        # ------------------------------------------------------------ control
        m.d.comb += [self.i_cmd.ready.eq(~running & ~endv & ~ov),
                     self.o_busy.eq(running | endv | ov)]
        with m.If(self.i_cmd.valid & self.i_cmd.ready):
            cols = self.i_cmd.payload.cols
            rows = self.i_cmd.payload.rows
            stride = Signal(len(cols) + 1)
            m.d.comb += stride.eq((cols + (gran - 1)) & ~Const(gran - 1, len(cols) + 1))
            cw = Signal(len(cols) + 1)           # words holding columns: ceil(cols / 32)
            m.d.comb += cw.eq((cols + (WORD - 1)) >> 5)
            rem = cols[:5]
            # padding bits of the last column word: bits >= cols mod 32 (none if a multiple)
            pm_tab = Array([Const(0 if r == 0 else ((1 << WORD) - 1) & ~((1 << r) - 1), WORD) for r in range(WORD)])
            m.d.sync += [running.eq(1), rows_in.eq(rows), rows_left.eq(rows), last_row.eq(rows == 1),
                         q_in.eq(0), swm1.eq((stride >> 5) - 1), qlast.eq(cw - 1), pm_last.eq(pm_tab[rem])]
        with m.If(advance & finish):
            m.d.sync += [rows_left.eq(rows_left - 1), last_row.eq(rows_left == 2)]
        with m.If(mat_end):
            m.d.sync += [running.eq(0), endv.eq(1)]
        with m.If(endv & (end_ok | end_bad)):
            m.d.sync += endv.eq(0)
        with m.If(any_err):
            m.d.sync += [running.eq(0), endv.eq(0), rows_in.eq(0)]
            m.d.sync += [x.eq(0) for x in ev]
        flags = Signal(4)
        m.d.comb += [
            flags[ERRORS["values_short"]].eq(short_err),
            flags[ERRORS["mask_padding"]].eq(pad_r),
            flags[ERRORS["values_extra"]].eq(endv & end_bad & ~any_err),
        ]
        m.d.sync += err_flags.eq(err_flags | flags)
        return m
