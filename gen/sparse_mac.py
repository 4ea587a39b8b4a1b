"""Sparse MAC array: bitmap decoder + activation buffer + ``lanes`` multipliers + requantization.

``SparseMacArray`` computes ``y = W x`` for a matrix ``W`` streamed in the bitmap format
(CONTRACTS C) and an int8 vector ``x`` loaded first, spending its cycles on nonzero weights
only (ideal ``ceil(nnz / lanes)`` cycles), and requantizes each row bit-exactly like
:func:`sparsefab.compress.quant.requantize` (CONTRACTS A).  The full port table is in
:mod:`sparsefab.gen.spmv_config`.

Structure (shared with the dense baseline, :mod:`sparsefab.gen.dense_mac`)::

    front end (BitmapDecoder | dense reader) --lane bundles--> MacBackend --row accs--> RequantStage
                                                   |  lanes x activation buffer copy (1 read each)
                                                   |  lanes x (b x 8) multiplier, registered
                                                   |  two adder trees (current row / next row)
                                                   +  per-row accumulator, row FIFO

Activation buffer: one copy of the ``max_cols x 8`` activations per lane (``lanes`` memories
of ``act_depth x bus_bits``, written together from ``i_act``, each read by one lane).  The
lanes read arbitrary columns every cycle, so banking would conflict (up to ``lanes`` hits in
one bank) and need a crossbar plus stall logic; replication is conflict-free, costs no logic
and maps each copy to block RAM: on iCE40 a 1024-column copy is 2 EBR (256 x 32), so 8 lanes
take 16 of the UP5K's 30 EBR; on ECP5 a 2048-column copy at bus 64 is 2 DP16KD.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.bitmap_decoder import BitmapDecoder, _gt_const, cmd_layout, lane_layout, value_layout
from sparsefab.gen.spmv_config import (
    BIAS_BITS,
    COUNTER_BITS,
    ERRORS,
    MULTIPLIER_BITS,
    OUT_BITS,
    ROWS_BITS,
    SHIFT_BITS,
    SpmvConfig,
)

__all__ = ["MacBackend", "RequantStage", "SparseMacArray", "rq_layout", "res_layout", "row_layout"]


def rq_layout() -> data.StructLayout:
    """``i_rq`` payload: ``bias`` s32, ``multiplier`` u16, ``shift`` u6, ``zero_point`` s8, ``relu`` 1."""
    return data.StructLayout({
        "bias": signed(BIAS_BITS), "multiplier": MULTIPLIER_BITS, "shift": SHIFT_BITS,
        "zero_point": signed(OUT_BITS), "relu": 1,
    })


def row_layout(config: SpmvConfig) -> data.StructLayout:
    """Row accumulator from the back end: ``acc`` (s``acc_bits``), ``last`` (1)."""
    return data.StructLayout({"acc": signed(config.acc_bits), "last": 1})


def res_layout(config: SpmvConfig) -> data.StructLayout:
    """``o_res`` payload: ``acc`` (s``acc_bits``), ``out`` (s8), ``last`` (1)."""
    return data.StructLayout({"acc": signed(config.acc_bits), "out": signed(OUT_BITS), "last": 1})


def _pairs(m: Module, terms: list, width: int, name: str) -> list:
    """Registered sums of neighbouring ``terms`` (the first level of an adder tree, one cycle)."""
    out = []
    for i in range(0, len(terms), 2):
        r = Signal(signed(width), name=f"{name}{i // 2}", reset_less=True)
        m.d.sync += r.eq(terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i])
        out.append(r)
    return out


def _tree(m: Module, terms: list, width: int, name: str):
    """Balanced adder tree (combinational) of signed ``terms``; result is ``width`` bits signed."""
    level = 0
    while len(terms) > 1:
        nxt = []
        for i in range(0, len(terms) - 1, 2):
            s = Signal(signed(width), name=f"{name}_{level}_{i // 2}", attrs={"keep": 1})
            m.d.comb += s.eq(terms[i] + terms[i + 1])
            nxt.append(s)
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
        level += 1
    return terms[0]


def _balanced_sum(terms: list):
    """Sum of ``terms`` as a balanced tree of additions (log depth, not a chain)."""
    terms = list(terms)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def _config_from(config, params, who):
    if config is None:
        try:
            return SpmvConfig(**params)
        except TypeError as exc:
            raise SparsefabError(f"{who}: {exc}") from None
    if params:
        raise SparsefabError(f"{who}: pass either config= or parameters, not both ({', '.join(params)})")
    if not isinstance(config, SpmvConfig):
        raise SparsefabError(f"{who}: config={config!r}, expected a SpmvConfig")
    return config


class RequantStage(wiring.Component):
    """Output stage: CONTRACTS A requantization, bit-exact, one row parameter set per row.

    ``t = acc + bias``; ``p = t * multiplier``; ``r = (p + 2**(shift-1)) >> shift`` (``p`` if
    ``shift == 0``, arithmetic shift: round half up); ``v = r + zero_point``; ReLU clamps at
    ``zero_point``; ``out = clip(v, -128, 127)``.

    Parameters
    ----------
    config : SpmvConfig
        Uses ``acc_bits`` and ``mul_steps`` (1: one ``t * multiplier`` product, maps to DSPs;
        S > 1: shift-and-add in logic over S cycles, 16/S multiplier bits per cycle).

    Ports
    -----
    i_acc : In(stream.Signature(row_layout))
        Row accumulator (``acc`` s``acc_bits``, ``last``).
    i_rq : In(stream.Signature(rq_layout))
        That row's parameters; joined with ``i_acc`` (both must be valid to transfer).
    o_res : Out(stream.Signature(res_layout))
        ``acc`` (passed through), ``out`` (s8) and ``last``.

    Latency: ``3 + mul_steps`` cycles from the joined transfer to ``o_res.valid``; on ECP5 with
    ``mul_steps == 1`` six (the product in MULT18X18D registers, its slices summed in a stage
    of their own, the rounding shift over two stages; see :meth:`_pipelined_ecp5`);
    throughput one row per cycle (``mul_steps == 1``: a four-stage pipeline) or per
    ``mul_steps + 2`` cycles (S > 1: one row at a time in one set of registers, the small form
    for chips whose DSPs all go to the lanes).
    """

    def __init__(self, config: SpmvConfig):
        if not isinstance(config, SpmvConfig):
            self._MustUse__silence = True
            raise SparsefabError(f"RequantStage: config={config!r}, expected a SpmvConfig")
        self._config = config
        super().__init__({
            "i_acc": In(stream.Signature(row_layout(config))),
            "i_rq": In(stream.Signature(rq_layout())),
            "o_res": Out(stream.Signature(res_layout(config))),
        })

    @property
    def config(self) -> SpmvConfig:
        return self._config

    def elaborate(self, platform):
        if self._config.mul_steps == 1:
            if getattr(platform, "family", None) == "ecp5":
                return self._pipelined_ecp5()
            return self._pipelined()
        return self._sequential()

    def _widths(self):
        cfg = self._config
        t_w = max(cfg.acc_bits, BIAS_BITS) + 1
        return t_w, t_w + MULTIPLIER_BITS + 1

    @staticmethod
    def _shift_levels(m: Module, cur, sh, levels, tag=""):
        """Steps ``levels`` (descending bit numbers of ``sh``) of the logarithmic right shifter
        of :meth:`_shift_q`, each stage only as wide as the later stages still need (12 bits of
        result plus the steps still to come): one 2:1 multiplexer level per shift bit."""
        for t in levels:
            step = 1 << t
            need = 12 + step - 1
            stage = Signal(need, name=f"rsh{tag}{t}")
            m.d.comb += stage.eq(Mux(sh[t], cur[step:step + need], cur[:need]))
            cur = stage
        return cur

    @classmethod
    def _shift_q(cls, m: Module, p, sh, thr=None, split=None):
        """``q = (2p) >> sh`` saturated to 12 bits (s12), as logic (the rounding shift before
        its final ``(q + 1) >> 1``).

        ``r = (p + 2**(sh-1)) >> sh`` is computed as ``q = (2p) >> sh``, ``r = (q + 1) >> 1`` (one shifter, no rounding constant;
        equal for every shift including 0), with ``q`` saturated to 12 bits: ``|r| > 1023`` clips
        to the same int8 whatever the zero point.  Only the low 12 bits of ``q`` are shifted (a
        trimmed shifter); "q's bits from 11 up all equal its sign" is tested with a thermometer
        mask instead of the upper half of a shifter: ``x`` marks the bits of ``2p`` that differ
        from the sign, and ``q`` overflows iff ``x`` has a set bit at a position >= 11 + sh.

        ``split`` (a callable ``(m, signals) -> registered copies``) cuts the shifter after its
        three largest steps: the partly shifted word, the overflow flag, the sign and the low
        shift bits are registered there, and the last three steps and the saturation follow in
        the next cycle.
        """
        pp = Cat(Const(0, 1), p).as_signed()
        n_sh = len(sh)
        ext = Cat(pp, pp[-1].replicate((1 << n_sh) - 1 + 12))
        sign = p[-1]
        x = Signal(len(pp))
        m.d.comb += x.eq(pp ^ sign.replicate(len(pp)))
        n_hi = len(pp) - 11
        if thr is None:                # thermometer: bit i set iff i >= sh (a shifted constant)
            thr = Signal(n_hi)
            m.d.comb += thr.eq(Const((1 << n_hi) - 1, n_hi) << sh)
        ovf = Signal()
        m.d.comb += ovf.eq((x[11:] & thr).any())
        levels = list(reversed(range(n_sh)))
        if split is None:
            cur = cls._shift_levels(m, ext, sh, levels)
        else:
            cut = min(3, n_sh)
            mid = cls._shift_levels(m, ext, sh, levels[:cut], tag="a")
            mid, ovf, sign, sh = split(m, [mid, ovf, sign, sh[:n_sh - cut]])
            cur = cls._shift_levels(m, mid, sh, levels[cut:], tag="b")
        q_lo = Signal(12)
        m.d.comb += q_lo.eq(cur[:12])
        qs = Signal(signed(12))
        m.d.comb += qs.eq(Mux(ovf, Mux(sign, -2048, 2047), q_lo.as_signed()))
        return qs

    @staticmethod
    def _zp_sat(m: Module, r, zp, relu):
        """``v = r + zp``; ReLU clamps ``v`` at ``zp``; the int8 ``clip(v, -128, 127)``.

        One carry chain (the add) and logic: ``v < zp`` is ``r < 0`` (the sign of ``r``), the
        clamp value ``zp`` is already an int8, and ``v`` fits int8 iff its bits from
        ``OUT_BITS - 1`` up all equal its sign (no comparators).
        """
        v = Signal(signed(len(r) + 1))
        m.d.comb += v.eq(r + zp)
        lo, hi = -(1 << (OUT_BITS - 1)), (1 << (OUT_BITS - 1)) - 1
        top = v[OUT_BITS - 1:]
        fits = Signal()
        m.d.comb += fits.eq((top == 0) | (top == (1 << len(top)) - 1))
        clipped = Mux(fits, v[:OUT_BITS].as_signed(), Mux(v[-1], lo, hi))
        return Mux(relu & r[-1], zp, clipped)

    def _pipelined(self):
        """mul_steps = 1: four stages, one row per cycle, the product in a DSP."""
        m = Module()
        cfg = self._config
        t_w, p_w = self._widths()

        # stage 1: t = acc + bias
        v1 = Signal()
        t1 = Signal(signed(t_w))
        m1 = Signal(MULTIPLIER_BITS)
        sh1, zp1, relu1 = Signal(SHIFT_BITS), Signal(signed(OUT_BITS)), Signal()
        acc1, last1 = Signal(signed(cfg.acc_bits)), Signal()
        # stage 2: p = t * multiplier
        v2 = Signal()
        p2 = Signal(signed(p_w))
        sh2, zp2, relu2 = Signal(SHIFT_BITS), Signal(signed(OUT_BITS)), Signal()
        acc2, last2 = Signal(signed(cfg.acc_bits)), Signal()
        # stage 3: rounding shift
        v3 = Signal()
        r3 = Signal(signed(12))
        zp3, relu3 = Signal(signed(OUT_BITS)), Signal()
        acc3, last3 = Signal(signed(cfg.acc_bits)), Signal()

        o = self.o_res
        take4 = Signal()
        m.d.comb += take4.eq(~o.valid | o.ready)
        take3 = Signal()
        m.d.comb += take3.eq(~v3 | take4)
        take2 = Signal()
        m.d.comb += take2.eq(~v2 | take3)
        take1 = Signal()
        m.d.comb += take1.eq(~v1 | take2)

        r = Signal(signed(12))
        m.d.comb += r.eq((self._shift_q(m, p2, sh2) + 1) >> 1)
        sat = self._zp_sat(m, r3, zp3, relu3)

        both = self.i_acc.valid & self.i_rq.valid
        m.d.comb += [self.i_acc.ready.eq(take1 & self.i_rq.valid),
                     self.i_rq.ready.eq(take1 & self.i_acc.valid)]
        with m.If(take1):
            a, q = self.i_acc.payload, self.i_rq.payload
            m.d.sync += [v1.eq(both), t1.eq(a.acc + q.bias), m1.eq(q.multiplier), sh1.eq(q.shift),
                         zp1.eq(q.zero_point), relu1.eq(q.relu), acc1.eq(a.acc), last1.eq(a.last)]
        with m.If(take2):
            m.d.sync += [v2.eq(v1), p2.eq(t1 * m1),
                         sh2.eq(sh1), zp2.eq(zp1), relu2.eq(relu1), acc2.eq(acc1), last2.eq(last1)]
        with m.If(take3):
            m.d.sync += [v3.eq(v2), r3.eq(r), zp3.eq(zp2), relu3.eq(relu2), acc3.eq(acc2), last3.eq(last2)]
        with m.If(take4):
            m.d.sync += [o.valid.eq(v3), o.payload.acc.eq(acc3), o.payload.out.eq(sat),
                         o.payload.last.eq(last3)]
        return m

    def _pipelined_ecp5(self):
        """mul_steps = 1 on ECP5: six stages, one row per cycle, the whole pipeline advancing
        together while the output can take a row (a MULT18X18D's registers have one enable).

        1. ``t = acc + bias`` enters the DSPs' operand registers (``t`` in 17-bit slices, one
           MULT18X18D per slice, the top slice signed);
        2. the slice products leave through the DSPs' output registers;
        3. ``p`` = the slice products summed (shifted by 17 bits each), in the fabric;
        4. the rounding shift's three largest steps and its overflow flag;
        5. its last three steps, the saturation and the rounding add;
        6. zero point, ReLU and the int8 clip into the output register.
        """
        from sparsefab.gen.ecp5_prims import mult18x18d

        m = Module()
        cfg = self._config
        t_w, p_w = self._widths()
        o = self.o_res
        adv = Signal()
        m.d.comb += adv.eq(~o.valid | o.ready)
        both = self.i_acc.valid & self.i_rq.valid
        m.d.comb += [self.i_acc.ready.eq(adv & self.i_rq.valid),
                     self.i_rq.ready.eq(adv & self.i_acc.valid)]
        a, q = self.i_acc.payload, self.i_rq.payload

        # the row's fields beside the datapath, one register per stage 1..5
        fields = [(Signal(), both), (Signal(SHIFT_BITS), q.shift), (Signal(signed(OUT_BITS)), q.zero_point),
                  (Signal(), q.relu), (Signal(signed(cfg.acc_bits)), a.acc), (Signal(), a.last)]
        stages = []
        src = [v for _, v in fields]
        for k in range(1, 6):
            regs = [Signal.like(r, name=f"{n}{k}") for (r, _), n in
                    zip(fields, ("v", "sh", "zp", "relu", "acc", "last"), strict=True)]
            with m.If(adv):
                m.d.sync += [r.eq(v) for r, v in zip(regs, src, strict=True)]
            stages.append(regs)
            src = regs

        # stages 1-2: t * multiplier in 17-bit slices of t, each through a MULT18X18D
        t = Signal(signed(t_w))
        m.d.comb += t.eq(a.acc + q.bias)
        mult = Cat(q.multiplier, Const(0, 1))            # 17 bits, as a positive signed operand
        n_sl = -(-t_w // 17)
        parts = []
        for k in range(n_sl):
            top = k == n_sl - 1
            sl = t[17 * k:] if top else Cat(t[17 * k:17 * k + 17], Const(0, 1))
            pw = min(36, len(sl) + len(mult))
            prod = mult18x18d(m, sl, mult, width=pw, name=f"rq_mul{k}", signed=True, ce=adv)
            parts.append(prod.as_signed() if top else prod)
        # stage 3: p = sum of the slice products
        p3 = Signal(signed(p_w))
        with m.If(adv):
            m.d.sync += p3.eq(sum(part << (17 * k) for k, part in enumerate(parts)))
        _, sh3, zp3, relu3, acc3, last3 = stages[2]

        # stages 4-5: the rounding shift, split after its three largest steps
        def split(m, values):
            regs = [Signal(len(v), name=f"rsh_cut{i}") for i, v in enumerate(values)]
            with m.If(adv):
                m.d.sync += [r.eq(v) for r, v in zip(regs, values, strict=True)]
            return regs

        r5 = Signal(signed(12))
        with m.If(adv):
            m.d.sync += r5.eq((self._shift_q(m, p3, sh3, split=split) + 1) >> 1)
        v5, _, zp5, relu5, acc5, last5 = stages[4]
        # stage 6: output
        sat = self._zp_sat(m, r5, zp5, relu5)
        with m.If(adv):
            m.d.sync += [o.valid.eq(v5), o.payload.acc.eq(acc5), o.payload.out.eq(sat), o.payload.last.eq(last5)]
        return m

    def _sequential(self):
        """mul_steps = S > 1: one row at a time through one set of registers (small: no
        pipeline copies of the row's fields).  Accept (``t = acc + bias``), S shift-and-add steps
        of 16/S multiplier bits (MSB first), the rounding shift, then zero point / ReLU /
        saturation into the output register; the next row is accepted in that last cycle, so a
        row takes S + 2 cycles."""
        m = Module()
        cfg = self._config
        S = cfg.mul_steps
        d = MULTIPLIER_BITS // S
        t_w, p_w = self._widths()
        o = self.o_res

        busy = Signal()
        phase = Signal(range(S + 2))     # 0..S-1 multiply, S shift, S+1 output
        acc_r = Signal(signed(cfg.acc_bits))
        t = Signal(signed(t_w))
        mr = Signal(MULTIPLIER_BITS)
        p = Signal(signed(p_w))
        qsh = Signal(signed(12))       # 2p >> shift, saturated; rounded in the output cycle
        sh, zp, relu, last = Signal(SHIFT_BITS), Signal(signed(OUT_BITS)), Signal(), Signal()
        # the overflow test's thermometer (bit i set iff i >= shift), registered with the row's
        # parameters so the shift cycle starts from it
        n_hi = p_w + 1 - 11
        thr = Signal(n_hi)

        out_free = Signal()
        m.d.comb += out_free.eq(~o.valid | o.ready)
        finishing = Signal()
        m.d.comb += finishing.eq(busy & (phase == S + 1) & out_free)
        take = Signal()
        m.d.comb += take.eq(~busy | finishing)
        m.d.comb += [self.i_acc.ready.eq(take & self.i_rq.valid),
                     self.i_rq.ready.eq(take & self.i_acc.valid)]
        with m.If(o.ready):
            m.d.sync += o.valid.eq(0)
        with m.If(finishing):
            r = Signal(signed(12))
            m.d.comb += r.eq((qsh + 1) >> 1)
            sat = self._zp_sat(m, r, zp, relu)
            m.d.sync += [o.valid.eq(1), o.payload.acc.eq(acc_r), o.payload.out.eq(sat),
                         o.payload.last.eq(last), busy.eq(0)]
        with m.If(take & self.i_acc.valid & self.i_rq.valid):
            a, q = self.i_acc.payload, self.i_rq.payload
            m.d.sync += [busy.eq(1), phase.eq(0), acc_r.eq(a.acc), t.eq(a.acc + q.bias), mr.eq(q.multiplier),
                         p.eq(0), sh.eq(q.shift), zp.eq(q.zero_point), relu.eq(q.relu), last.eq(a.last),
                         thr.eq(Cat(*[~_gt_const(q.shift, i) for i in range(n_hi)]))]
        with m.Elif(busy & (phase < S)):
            # t * digit as shifted, gated copies of t summed by a balanced tree: logic, not a multiplier
            digit = mr[MULTIPLIER_BITS - d:]
            m.d.sync += [p.eq((p << d) + _balanced_sum([Mux(digit[j], t << j, 0) for j in range(d)])),
                         mr.eq(mr << d), phase.eq(phase + 1)]
        with m.Elif(busy & (phase == S)):
            m.d.sync += [qsh.eq(self._shift_q(m, p, sh, thr)), phase.eq(S + 1)]
        return m


class MacBackend(wiring.Component):
    """Activation buffer, multipliers, adder trees, per-row accumulation and the row FIFO.

    Parameters
    ----------
    config : SpmvConfig

    Ports
    -----
    i_lanes : In(stream.Signature(lane_layout))
        Lane bundles from a front end.  ``ready`` is a credit: it is high while the row FIFO
        can take every row still in flight, so the pipeline itself never stalls.
    i_act_we : In(1)
        Write ``i_act_data`` into every activation buffer copy at ``i_act_addr``.
    i_act_addr : In(range(act_depth))
        Activation word address (word ``j`` holds columns ``j*bus_bits/8 ...``).
    i_act_data : In(bus_bits)
        ``bus_bits/8`` int8 activations, first in the low byte.
    o_row : Out(stream.Signature(row_layout))
        One accumulator per row (wrapped to ``acc_bits``), ``last`` on the matrix's final row.
    o_fired : Out(range(lanes + 1))
        Lanes carrying a nonzero in the bundle accepted this cycle (0 if none).
    i_act_bank : In(1)
        Only with ``act_banks = 2``: the bank ``i_act_we`` writes.  Reads start in bank 0 and
        switch banks after each matrix's final bundle.
    o_bank_done : Out(1)
        Only with ``act_banks = 2``: one-cycle pulse when the reads of a matrix's final bundle
        are issued; from the next cycle its bank may be rewritten.

    Latency: a bundle accepted in cycle ``t`` is registered, reads the buffers at the edge
    ending ``t+1``, multiplies in ``t+2``, sums in ``t+3``, accumulates in ``t+4``; a row result
    is on ``o_row`` from cycle ``t+6`` (``BACKEND_LATENCY + 1`` with the FIFO's output register).
    On ECP5 (``platform.family == "ecp5"``) three cycles more: each lane's buffer word is
    registered before its byte is selected (a DP16KD output without its own register, 5.8 ns
    clock-to-out, cannot feed a multiplexer and a multiplier within 10 ns); the selected byte and
    the weight enter a MULT18X18D through its own operand registers, the product leaving through
    its output register (:func:`sparsefab.gen.ecp5_prims.mult18x18d`); and the first level of the
    adder trees is registered (the route out of the DSP is long).  The credit counts all three.
    """

    def __init__(self, config: SpmvConfig):
        if not isinstance(config, SpmvConfig):
            self._MustUse__silence = True
            raise SparsefabError(f"MacBackend: config={config!r}, expected a SpmvConfig")
        self._config = config
        ports = {
            "i_lanes": In(stream.Signature(lane_layout(config))),
            "i_act_we": In(1),
            "i_act_addr": In(range(config.act_depth)),
            "i_act_data": In(config.bus_bits),
            "o_row": Out(stream.Signature(row_layout(config))),
            "o_fired": Out(range(config.lanes + 1)),
        }
        if config.act_banks == 2:
            ports.update({"i_act_bank": In(1), "o_bank_done": Out(1)})
        super().__init__(ports)

    @property
    def config(self) -> SpmvConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        L, b, W = cfg.lanes, cfg.weight_bits, cfg.bus_bits
        apw = cfg.acts_per_word
        lo_bits = (apw - 1).bit_length()
        prod_w = b + cfg.act_bits
        sum_w = prod_w + max(1, (L - 1).bit_length()) + 1

        word_reg = getattr(platform, "family", None) == "ecp5"
        # bundles that may still produce a row: stages 0..3 (and 1b, 2a, 3a on ECP5) plus the one accepted now
        inflight = 8 if word_reg else 5
        # the FIFO grows with the pipeline, so bundles flow while it holds up to 3 rows either way
        depth = SpmvConfig.ROW_FIFO_DEPTH + inflight - 5
        m.submodules.rowfifo = fifo = SyncFIFOBuffered(width=cfg.acc_bits + 1, depth=depth)
        fire = Signal()
        m.d.comb += [self.i_lanes.ready.eq(fifo.level + inflight <= depth),
                     fire.eq(self.i_lanes.valid & self.i_lanes.ready)]
        # stage 0: the bundle is registered as it arrives (the decoder's selection logic ends
        # here, not at the buffer address inputs)
        v0 = Signal()
        pl = Signal.like(self.i_lanes.payload, name="bundle0")
        m.d.sync += v0.eq(fire)
        with m.If(fire):
            m.d.sync += pl.eq(self.i_lanes.payload)
            # lanes without a nonzero multiply 0 (masked here, where the mask merges into the front
            # end's last LUT level, so the weight register of stage 1 can be the DSP's input register)
            m.d.sync += [pl.value[i].eq(Mux(self.i_lanes.payload.valid[i], self.i_lanes.payload.value[i], 0))
                         for i in range(L)]
        fired_now = Signal(range(L + 1))
        m.d.comb += fired_now.eq(_tree(m, [self.i_lanes.payload.valid[i] for i in range(L)], len(fired_now) + 1, "fired"))
        m.d.comb += self.o_fired.eq(Mux(fire, fired_now, 0))

        # stage 1: activation reads (one buffer copy per lane)
        v1, re1, last1 = Signal(), Signal(), Signal()
        nxt1 = Signal(L)
        vals1 = [Signal(signed(b), name=f"w1_{i}", reset_less=True) for i in range(L)]
        lo1 = [Signal(max(1, lo_bits), name=f"lo1_{i}") for i in range(L)]
        acts = []
        if cfg.act_banks == 2:
            # two banks: the read bank switches after a matrix's final bundle reads it
            ab = max(1, (cfg.act_depth - 1).bit_length())
            rbank = Signal()
            bank_done = Signal()
            m.d.comb += [bank_done.eq(v0 & pl.row_end & pl.last), self.o_bank_done.eq(bank_done)]
            with m.If(bank_done):
                m.d.sync += rbank.eq(~rbank)
            mem_depth = 2 << ab
            waddr = Cat(self.i_act_addr[:ab], self.i_act_bank)
            raddrs = [Cat((pl.col[i] >> lo_bits)[:ab], rbank) for i in range(L)]
        else:
            mem_depth, waddr = cfg.act_depth, self.i_act_addr
            raddrs = [pl.col[i] >> lo_bits for i in range(L)]
        for i in range(L):
            mem = Memory(shape=W, depth=mem_depth, init=[])
            m.submodules[f"act{i}"] = mem
            wp = mem.write_port()
            rp = mem.read_port()
            m.d.comb += [wp.addr.eq(waddr), wp.data.eq(self.i_act_data), wp.en.eq(self.i_act_we),
                         rp.addr.eq(raddrs[i])]
            acts.append(rp.data)
        m.d.sync += [v1.eq(v0), re1.eq(v0 & pl.row_end), last1.eq(pl.last), nxt1.eq(pl.nxt)]
        for i in range(L):
            m.d.sync += [vals1[i].eq(pl.value[i]),
                         lo1[i].eq(pl.col[i][:lo_bits] if lo_bits else 0)]

        # stage 1b, ECP5 only: each lane's buffer word registered, its byte selected in front of
        # the multiplier (elsewhere the byte is selected straight from the buffer output)
        v1b, re1b, last1b, nxt1b, vals1b, act_in = v1, re1, last1, nxt1, vals1, []
        if word_reg:
            v1b, re1b, last1b = Signal(), Signal(), Signal()
            nxt1b = Signal(L)
            vals1b = [Signal(signed(b), name=f"w1b_{i}", reset_less=True) for i in range(L)]
            m.d.sync += [v1b.eq(v1), re1b.eq(re1), last1b.eq(last1), nxt1b.eq(nxt1)]
        for i in range(L):
            a = Signal(signed(cfg.act_bits), name=f"act{i}")
            word, lo = acts[i], lo1[i]
            if word_reg:
                word = Signal(W, name=f"actw{i}", reset_less=True)
                lo = Signal(max(1, lo_bits), name=f"lo1b_{i}")
                m.d.sync += [word.eq(acts[i]), lo.eq(lo1[i]), vals1b[i].eq(vals1[i])]
            m.d.comb += a.eq(word.word_select(lo, cfg.act_bits) if lo_bits else word[:8])
            act_in.append(a)

        # stage 2: products (one a*b per lane, registered: maps to a DSP)
        v2, re2, last2 = Signal(), Signal(), Signal()
        nxt2 = Signal(L)
        # "keep": Yosys 0.70's ice40_dsp must not absorb a product register into the neighbouring
        # lane's DSP as its adder input: it then dropped that lane's multiplier (half the DSPs and
        # activation buffers vanished from the netlist; also with "keep" on every other lane only)
        prods = [Signal(signed(prod_w), name=f"prod{i}", reset_less=True, attrs={"keep": 1}) for i in range(L)]
        if word_reg:
            # ECP5: the selected byte and the weight go straight into the MULT18X18D's operand
            # registers (stage 2a) and the product into its output register (stage 2), so no
            # fabric route enters or leaves the multiplier's 3.9 ns in the same cycle
            from sparsefab.gen.ecp5_prims import mult18x18d

            v2a, re2a, last2a = Signal(), Signal(), Signal()
            nxt2a = Signal(L)
            m.d.sync += [v2a.eq(v1b), re2a.eq(re1b), last2a.eq(last1b), nxt2a.eq(nxt1b),
                         v2.eq(v2a), re2.eq(re2a), last2.eq(last2a), nxt2.eq(nxt2a)]
            for i in range(L):
                m.d.comb += prods[i].eq(mult18x18d(m, vals1b[i], act_in[i], width=prod_w, name=f"mul{i}",
                                                   signed=True).as_signed())
        else:
            m.d.sync += [v2.eq(v1b), re2.eq(re1b), last2.eq(last1b), nxt2.eq(nxt1b)]
            for i in range(L):
                m.d.sync += prods[i].eq(vals1b[i] * act_in[i])

        # stage 3: sums of the current row's and the next row's lanes (the current row's sum is
        # the total minus the next row's: one masked tree, not two)
        v3, re3, last3 = Signal(), Signal(), Signal()
        s_cur, s_nxt = Signal(signed(sum_w)), Signal(signed(sum_w))
        nxt_terms = [Mux(nxt2[i], prods[i], 0) for i in range(L)]
        if word_reg:
            # ECP5 (stage 3a): the products leave the DSPs on long routes, so the first level of
            # two masked trees (current row, next row) is registered; stage 3 adds the rest
            cur_terms = [Mux(nxt2[i], 0, prods[i]) for i in range(L)]
            v3a, re3a, last3a = Signal(), Signal(), Signal()
            m.d.sync += [v3a.eq(v2), re3a.eq(re2), last3a.eq(last2), v3.eq(v3a), re3.eq(re3a), last3.eq(last3a)]
            m.d.sync += [s_cur.eq(_tree(m, _pairs(m, cur_terms, sum_w, "pc"), sum_w, "tc")),
                         s_nxt.eq(_tree(m, _pairs(m, nxt_terms, sum_w, "pn"), sum_w, "tn"))]
        else:
            t_all = _tree(m, list(prods), sum_w, "ta")
            t_nxt = _tree(m, nxt_terms, sum_w, "tn")
            m.d.sync += [v3.eq(v2), re3.eq(re2), last3.eq(last2),
                         s_cur.eq(t_all - t_nxt), s_nxt.eq(t_nxt)]

        # stage 4: per-row accumulation (wraps at acc_bits like spmv_int)
        acc = Signal(signed(cfg.acc_bits))
        total = Signal(signed(cfg.acc_bits))
        m.d.comb += total.eq((acc + s_cur)[:cfg.acc_bits])
        with m.If(v3):
            with m.If(re3):
                m.d.sync += acc.eq(s_nxt[:cfg.acc_bits] if sum_w > cfg.acc_bits else s_nxt)
            with m.Else():
                m.d.sync += acc.eq(total)
        m.d.comb += [fifo.w_en.eq(v3 & re3), fifo.w_data.eq(Cat(total, last3))]

        m.d.comb += [self.o_row.valid.eq(fifo.r_rdy), fifo.r_en.eq(self.o_row.ready),
                     self.o_row.payload.acc.eq(fifo.r_data[:cfg.acc_bits]),
                     self.o_row.payload.last.eq(fifo.r_data[cfg.acc_bits])]
        return m


class SparseMacArray(wiring.Component):
    """The sparse MAC array top: ``y = requantize(W x)`` from bitmap-encoded ``W``.

    Parameters
    ----------
    config : SpmvConfig, optional
        The configuration; or pass its fields as keyword parameters (``lanes=8,
        weight_bits=8, acc_bits=32, block=16, bus_bits=64, max_cols=1024, mask_words=None,
        value_words=None, mul_steps=1``), validated by :class:`SpmvConfig`.
    front_end : type, optional
        Another decoder class with :class:`~sparsefab.gen.bitmap_decoder.BitmapDecoder`'s ports,
        built as ``front_end(config)`` (e.g. :class:`~sparsefab.gen.chunk_decoder.ChunkDecoder`);
        default: chosen by ``config.decoder``.

    Ports
    -----
    i_cmd : In(stream.Signature(cmd_layout))
        ``rows`` (16 bits), ``cols`` (``col_bits``); accepted when the array is idle
        (``act_banks = 2``: when an activation bank is free, i.e. while the previous matrix
        still runs).  rows = 0, cols = 0 or cols > max_cols: the command is dropped and
        ``bad_command`` is flagged.
    i_act : In(stream.Signature(bus_bits))
        ``ceil(cols / (bus_bits/8))`` activation words per command, first activation in the low
        byte; loaded before any of the matrix's mask/value beats is consumed.
    i_mask : In(stream.Signature(mask_bus))
        Mask beats (see :class:`~sparsefab.gen.bitmap_decoder.BitmapDecoder`).
    i_value : In(stream.Signature(value_layout))
        Value beats with ``last`` on each matrix's final beat.
    i_rq : In(stream.Signature(rq_layout))
        Per-row requantization parameters, in row order.
    o_res : Out(stream.Signature(res_layout))
        Per row: ``acc`` (accumulator wrapped to acc_bits, before requantization), ``out``
        (requantized int8), ``last`` (matrix's final row).
    o_busy : Out(1)
        From command accepted to the decoder finishing the matrix (results trail by ``latency``).
    o_error : Out(1)
        Sticky until reset.
    o_error_flags : Out(4)
        Sticky causes; bit numbers in :data:`sparsefab.gen.spmv_config.ERRORS`.
    o_cycles, o_stalls, o_nnz : Out(32)
        Busy cycles, busy cycles in which no lane fired, nonzeros multiplied (since reset;
        each counts one cycle after the event).

    Latency: ``config.latency`` cycles from the decoder emitting a row's last lanes to its
    ``o_res`` (no backpressure); per matrix, ``ceil(cols/(bus_bits/8))`` load cycles plus
    4 cycles of command handling, the decoder's priming cycle and output register and the
    value-stream end check, before and after the ``ceil(nnz/lanes)``-ideal stream.  With
    ``act_banks = 2`` a matrix's load overlaps its predecessor's run (back to back, only the
    first load and the front end's per-matrix cycles remain).
    """

    def __init__(self, config: SpmvConfig | None = None, *, front_end=None, **params):
        self._MustUse__silence = True      # until validated: a rejected call is not a lost design
        cfg = _config_from(config, params, "SparseMacArray")
        if cfg.dense:
            raise SparsefabError("SparseMacArray: config.dense=True; use DenseMacArray")
        self._MustUse__silence = False
        self._config = cfg
        self._front_end = front_end
        super().__init__(top_signature(cfg))

    @property
    def config(self) -> SpmvConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        if self._front_end is not None:
            m.submodules.dec = dec = self._front_end(cfg)
        elif cfg.decoder == "compact":
            from sparsefab.gen.compact_decoder import CompactDecoder
            m.submodules.dec = dec = CompactDecoder(cfg)
        else:
            m.submodules.dec = dec = BitmapDecoder(cfg)
        wiring.connect(m, wiring.flipped(self.i_mask), dec.i_mask)
        wiring.connect(m, wiring.flipped(self.i_value), dec.i_value)
        return build_top(m, self, cfg, dec.o_lanes, dec.i_cmd, dec.o_busy, dec.o_error_flags)


def top_signature(cfg: SpmvConfig) -> dict:
    """Port dictionary shared by the sparse array and the dense baseline."""
    ports = {
        "i_cmd": In(stream.Signature(cmd_layout(cfg))),
        "i_act": In(stream.Signature(cfg.bus_bits)),
    }
    if not cfg.dense:
        ports["i_mask"] = In(stream.Signature(cfg.mask_bus))
    ports.update({
        "i_value": In(stream.Signature(value_layout(cfg))),
        "i_rq": In(stream.Signature(rq_layout())),
        "o_res": Out(stream.Signature(res_layout(cfg))),
        "o_busy": Out(1),
        "o_error": Out(1),
        "o_error_flags": Out(4),
        "o_cycles": Out(COUNTER_BITS),
        "o_stalls": Out(COUNTER_BITS),
        "o_nnz": Out(COUNTER_BITS),
    })
    return ports


def build_top(m: Module, top, cfg: SpmvConfig, lanes_stream, fe_cmd, fe_busy, fe_flags) -> Module:
    """Command FSM, activation loading, back end, output stage and counters around a front end.

    ``lanes_stream`` is the front end's lane-bundle output, ``fe_cmd`` its command input
    (rows, cols), ``fe_busy`` high while it works on a matrix, ``fe_flags`` its sticky error flags.
    """
    m.submodules.backend = be = MacBackend(cfg)
    m.submodules.requant = rq = RequantStage(cfg)
    wiring.connect(m, lanes_stream, be.i_lanes)
    wiring.connect(m, be.o_row, rq.i_acc)
    wiring.connect(m, wiring.flipped(top.i_rq), rq.i_rq)
    wiring.connect(m, rq.o_res, wiring.flipped(top.o_res))

    bad_cmd = Signal()
    busy = Signal()
    if cfg.act_banks == 2:
        _double_buffered_control(m, top, cfg, be, fe_cmd, fe_busy, busy, bad_cmd)
    else:
        _control(m, top, cfg, be, fe_cmd, fe_busy, busy, bad_cmd)

    flags = Signal(4)
    m.d.comb += [flags.eq(fe_flags | (bad_cmd << ERRORS["bad_command"])),
                 top.o_error_flags.eq(flags), top.o_error.eq(flags.any()), top.o_busy.eq(busy)]
    # the counters add registered copies (one cycle late), so the handshake's fan-in does not
    # reach their carry chains
    busy_r = Signal()
    fired_r = Signal.like(be.o_fired)
    m.d.sync += [busy_r.eq(busy), fired_r.eq(be.o_fired)]
    with m.If(busy_r):
        m.d.sync += top.o_cycles.eq(top.o_cycles + 1)
        with m.If(fired_r == 0):
            m.d.sync += top.o_stalls.eq(top.o_stalls + 1)
    m.d.sync += top.o_nnz.eq(top.o_nnz + fired_r)
    return m


def _words(cfg: SpmvConfig, cols):
    """Activation words of a matrix of ``cols`` columns."""
    return (cols + (cfg.acts_per_word - 1)) >> (cfg.acts_per_word - 1).bit_length()


def _bad(cfg: SpmvConfig, c):
    """A command the array drops (and flags as ``bad_command``)."""
    return (c.rows == 0) | (c.cols == 0) | (c.cols > cfg.max_cols)


def _control(m, top, cfg, be, fe_cmd, fe_busy, busy, bad_cmd):
    """One activation bank: IDLE -> LOAD (``words`` activation words) -> START (the front end
    takes the command) -> RUN (until the front end is idle) -> IDLE."""
    rows = Signal(ROWS_BITS)
    cols = Signal(cfg.col_bits)
    words = Signal(range(cfg.act_depth + 1))
    waddr = Signal(range(cfg.act_depth + 1))
    with m.FSM(name="ctl"):
        with m.State("IDLE"):
            m.d.comb += top.i_cmd.ready.eq(~fe_busy)
            with m.If(top.i_cmd.valid & ~fe_busy):
                c = top.i_cmd.payload
                with m.If(_bad(cfg, c)):
                    m.d.sync += bad_cmd.eq(1)
                with m.Else():
                    m.d.sync += [rows.eq(c.rows), cols.eq(c.cols), waddr.eq(0),
                                 words.eq(_words(cfg, c.cols))]
                    m.next = "LOAD"
        with m.State("LOAD"):
            m.d.comb += [busy.eq(1), top.i_act.ready.eq(1)]
            with m.If(top.i_act.valid):
                m.d.sync += waddr.eq(waddr + 1)
                with m.If(waddr + 1 == words):
                    m.next = "START"
        with m.State("START"):
            m.d.comb += [busy.eq(1), fe_cmd.valid.eq(1), fe_cmd.payload.rows.eq(rows),
                         fe_cmd.payload.cols.eq(cols)]
            with m.If(fe_cmd.ready):
                m.next = "RUN"
        with m.State("RUN"):
            m.d.comb += busy.eq(1)
            with m.If(~fe_busy):
                m.next = "IDLE"
    m.d.comb += [be.i_act_we.eq(top.i_act.valid & top.i_act.ready), be.i_act_addr.eq(waddr),
                 be.i_act_data.eq(top.i_act.payload)]


def _double_buffered_control(m, top, cfg, be, fe_cmd, fe_busy, busy, bad_cmd):
    """Two activation banks (``act_banks = 2``): a loader and a launcher run side by side.

    The loader takes a command when its next bank ``wbank`` is free and loads the matrix's
    activations into it (the bank then holds a *loaded* matrix: rows, cols); the launcher hands
    the loaded matrix of bank ``cbank`` to the front end as soon as it takes a command (it is
    idle).  A bank is free again when the back end has issued the reads of the matrix's final
    bundle (``be.o_bank_done``), so the next matrix but one may load into it.  Banks are used in
    turn by all three (loader, launcher, back end), so the order of matrices is kept.
    """
    ab = be.i_act_addr.shape().width
    words = Signal(range(cfg.act_depth + 1))
    waddr = Signal(range(cfg.act_depth + 1))
    wbank, cbank, rbank = Signal(), Signal(), Signal()
    inuse = Signal(2)                       # bank loading, loaded or being read
    loaded = Signal(2)                      # bank loaded, its command not yet launched
    loading = Signal()
    rows = [Signal(ROWS_BITS, name=f"rows{k}") for k in range(2)]
    cols = [Signal(cfg.col_bits, name=f"cols{k}") for k in range(2)]

    c = top.i_cmd.payload
    m.d.comb += top.i_cmd.ready.eq(~loading & ~inuse.bit_select(wbank, 1))
    with m.If(top.i_cmd.valid & top.i_cmd.ready):
        with m.If(_bad(cfg, c)):
            m.d.sync += bad_cmd.eq(1)
        with m.Else():
            m.d.sync += [Array(rows)[wbank].eq(c.rows), Array(cols)[wbank].eq(c.cols), loading.eq(1),
                         waddr.eq(0), words.eq(_words(cfg, c.cols)), inuse.bit_select(wbank, 1).eq(1)]
    m.d.comb += top.i_act.ready.eq(loading)
    with m.If(top.i_act.valid & loading):
        m.d.sync += waddr.eq(waddr + 1)
        with m.If(waddr + 1 == words):
            m.d.sync += [loading.eq(0), loaded.bit_select(wbank, 1).eq(1), wbank.eq(~wbank)]
    m.d.comb += [be.i_act_we.eq(top.i_act.valid & loading), be.i_act_addr.eq(waddr[:ab]),
                 be.i_act_bank.eq(wbank), be.i_act_data.eq(top.i_act.payload)]

    launch = Signal()
    m.d.comb += [fe_cmd.valid.eq(loaded.bit_select(cbank, 1)), fe_cmd.payload.rows.eq(Array(rows)[cbank]),
                 fe_cmd.payload.cols.eq(Array(cols)[cbank]), launch.eq(fe_cmd.valid & fe_cmd.ready)]
    with m.If(launch):
        m.d.sync += [loaded.bit_select(cbank, 1).eq(0), cbank.eq(~cbank)]
    with m.If(be.o_bank_done):
        m.d.sync += [inuse.bit_select(rbank, 1).eq(0), rbank.eq(~rbank)]
    m.d.comb += busy.eq(loading | inuse.any() | fe_busy)

def payload_fields(shape) -> list[dict]:
    """Leaf fields of a payload shape: ``name`` (dotted), ``offset``, ``width``, ``signed``."""
    from amaranth.hdl import Shape

    out = []

    def walk(layout, prefix, base):
        if isinstance(layout, data.ArrayLayout):
            size = Shape.cast(layout.elem_shape).width
            for i in range(layout.length):
                walk(layout.elem_shape, f"{prefix}{i}.", base + i * size)
        elif isinstance(layout, data.Layout):
            for name, f in layout:
                walk(f.shape, f"{prefix}{name}.", base + f.offset)
        else:
            s = Shape.cast(layout)
            out.append({"name": prefix[:-1], "offset": base, "width": s.width, "signed": s.signed})

    walk(shape, "", 0)
    return out


def sidecar_extra(top) -> dict:
    """Sidecar keys of a SparseMacArray / DenseMacArray: latency, format, stream payload fields."""
    from sparsefab.compress import container

    cfg = top.config
    streams = {}
    for name, member in top.signature.members.items():
        if member.is_signature and "payload" in member.signature.members:
            shape = member.signature.members["payload"].shape
            streams[name] = {"dir": "in" if member.flow == In else "out", "fields": payload_fields(shape)}
    return {
        "latency": cfg.latency,
        "requant_latency": cfg.requant_latency,
        "format": "dense" if cfg.dense else "bitmap",
        "format_version": container.VERSION,
        "errors": dict(ERRORS),
        "streams": streams,
    }
