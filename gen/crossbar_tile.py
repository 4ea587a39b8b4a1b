"""CrossbarTile: a dense T x T matrix-vector engine with programmable (double-buffered) weights.

The digital stand-in for one memristor crossbar: weights are "programmed" (the crossbar
write) into one of two banks while the other bank computes, inputs arrive one element per
``T/lanes`` cycles, ``lanes`` MACs update ``lanes`` output rows per cycle, and output slices are
accumulated across consecutive tiles of the same tile row before being emitted.  Bit exact
with :func:`sparsefab.compress.crossbar.tile_mvm` (ideal tiles, or the ADC model with
``dac_bits = x_bits``: one slice, the ADC applied to each tile's column sums).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from sparsefab.compress.errors import SparsefabError, check_int
from sparsefab.compress.tiling import TILES

__all__ = ["CrossbarTile", "CrossbarTileConfig"]


@dataclass(frozen=True)
class CrossbarTileConfig:
    """Parameters of a :class:`CrossbarTile` (validated; also the JSON sidecar ``config``).

    tile : T in 16, 32, 64, 128.   lanes : MACs per cycle, a power of two dividing T (T = a
    full column per cycle).   w_bits / x_bits : signed weight / input code widths.
    acc_bits : accumulator width (wraps).   adc_bits : None (exact) or ADC width applied to
    each tile's column sums after rounding by ``adc_shift`` bits (round half up, saturate).
    """

    tile: int = 16
    lanes: int = 16
    w_bits: int = 8
    x_bits: int = 8
    acc_bits: int = 32
    adc_bits: int | None = None
    adc_shift: int = 0

    def __post_init__(self):
        if self.tile not in TILES:
            raise SparsefabError(f"tile={self.tile!r}: expected one of {TILES}")
        check_int("lanes", self.lanes, 1, self.tile)
        if self.tile % self.lanes or self.lanes & (self.lanes - 1):
            raise SparsefabError(f"lanes={self.lanes}: expected a power of two dividing tile={self.tile}")
        check_int("w_bits", self.w_bits, 2, 16)
        check_int("x_bits", self.x_bits, 2, 16)
        check_int("acc_bits", self.acc_bits, 8, 48)
        if self.adc_bits is not None:
            check_int("adc_bits", self.adc_bits, 2, 32)
        check_int("adc_shift", self.adc_shift, 0, 40)

    @property
    def groups(self) -> int:
        """Row groups: T / lanes cycles per input element."""
        return self.tile // self.lanes

    @property
    def words(self) -> int:
        """Weight words per tile (``lanes`` codes each): T * T / lanes."""
        return self.tile * self.groups

    @property
    def cycles_per_tile(self) -> int:
        return self.words

    @property
    def part_bits(self) -> int:
        """Width of an exact column sum: w_bits + x_bits + log2(T)."""
        return self.w_bits + self.x_bits + ceil_log2(self.tile)

    def x_layout(self):
        return data.StructLayout({"x": signed(self.x_bits), "first": 1, "last": 1})

    def y_layout(self):
        return data.ArrayLayout(signed(self.acc_bits), self.lanes)


class CrossbarTile(wiring.Component):
    """Dense T x T MVM engine.

    Ports
    -----
    i_prog : In stream, payload ``unsigned(lanes * w_bits)``
        Weight words of one tile, ``T*T/lanes`` beats (word ``j*(T/lanes) + g`` holds
        ``W[g*lanes + l, j]`` in bits ``[l*w_bits, (l+1)*w_bits)``: ``crossbar.tile_words``).
        Written into the free bank; not ready while both banks hold a tile.
    i_x : In stream, payload ``{x: signed(x_bits), first: 1, last: 1}``
        The T inputs of the tile slice, ``x[0]`` first; ``first``/``last`` (constant over the T
        beats) = first / last tile of an output slice: clear the accumulators before / emit
        them after.  Accepted only when a programmed bank is ready; one beat per ``T/lanes``
        cycles.
    o_y : Out stream, payload ``signed(acc_bits)[lanes]``
        After a ``last`` tile: ``T/lanes`` beats, beat g = outputs ``g*lanes .. g*lanes+lanes-1``.
    busy : Out 1
        A tile is being computed or outputs are pending.
    mac : Out 1
        A MAC issue happened this cycle (for utilisation counters).

    Latency: a tile takes ``T*T/lanes`` cycles of issue; its last product is accumulated one
    cycle later; with the ADC, ``T/lanes`` more cycles fold the column sums into the
    accumulators; emission starts on the next cycle.
    """

    def __init__(self, *, tile: int = 16, lanes: int | None = None, w_bits: int = 8, x_bits: int = 8,
                 acc_bits: int = 32, adc_bits: int | None = None, adc_shift: int = 0):
        self._cfg = CrossbarTileConfig(tile=tile, lanes=tile if lanes is None else lanes, w_bits=w_bits,
                                       x_bits=x_bits, acc_bits=acc_bits, adc_bits=adc_bits,
                                       adc_shift=adc_shift)
        c = self._cfg
        super().__init__({
            "i_prog": In(stream.Signature(unsigned(c.lanes * c.w_bits))),
            "i_x": In(stream.Signature(c.x_layout())),
            "o_y": Out(stream.Signature(c.y_layout())),
            "busy": Out(1),
            "mac": Out(1),
        })

    @property
    def config(self) -> CrossbarTileConfig:
        return self._cfg

    def elaborate(self, platform):
        c = self._cfg
        m = Module()
        T, L, G, D = c.tile, c.lanes, c.groups, c.words
        m.submodules.wmem = wmem = Memory(shape=unsigned(L * c.w_bits), depth=2 * D, init=[])
        wr = wmem.write_port()
        rd = wmem.read_port(transparent_for=())

        loaded = Signal(2)
        pbank = Signal()          # bank being programmed
        cbank = Signal()          # bank being computed
        wcnt = Signal(range(D))
        # --- programming (the crossbar write) ---
        m.d.comb += self.i_prog.ready.eq(~loaded.bit_select(pbank, 1))
        m.d.comb += [wr.addr.eq(Cat(wcnt, pbank)), wr.data.eq(self.i_prog.payload),
                     wr.en.eq(self.i_prog.valid & self.i_prog.ready)]
        set_loaded = Signal(2)
        clr_loaded = Signal(2)
        with m.If(self.i_prog.valid & self.i_prog.ready):
            m.d.sync += wcnt.eq(Mux(wcnt == D - 1, 0, wcnt + 1))
            with m.If(wcnt == D - 1):
                m.d.comb += set_loaded.eq(1 << pbank)
                m.d.sync += pbank.eq(~pbank)
        m.d.sync += loaded.eq((loaded | set_loaded) & ~clr_loaded)

        # --- issue stage ---
        j = Signal(range(T))
        g = Signal(range(G)) if G > 1 else Const(0, 1)
        hold = Signal()           # waiting to fold (ADC) / emit: no new issue
        run = Signal()
        m.d.comb += run.eq(loaded.bit_select(cbank, 1) & self.i_x.valid & ~hold)
        last_g = (g == G - 1) if G > 1 else Const(1)
        m.d.comb += [self.i_x.ready.eq(run & last_g), self.mac.eq(run),
                     rd.addr.eq(Cat(g, j, cbank) if G > 1 else Cat(j, cbank)), rd.en.eq(1)]
        s1_valid = Signal()
        s1_x = Signal(signed(c.x_bits))
        s1_g = Signal(range(G)) if G > 1 else Const(0, 1)
        s1_clear = Signal()
        s1_end = Signal()         # last issue of the tile
        s1_first = Signal()
        s1_last = Signal()
        m.d.sync += s1_valid.eq(run)
        with m.If(run):
            m.d.sync += [s1_x.eq(self.i_x.payload.x), s1_clear.eq(j == 0),
                         s1_end.eq((j == T - 1) & last_g), s1_first.eq(self.i_x.payload.first),
                         s1_last.eq(self.i_x.payload.last)]
            if G > 1:
                m.d.sync += [s1_g.eq(g), g.eq(Mux(last_g, 0, g + 1))]
            with m.If(last_g):
                m.d.sync += j.eq(Mux(j == T - 1, 0, j + 1))
                with m.If(j == T - 1):
                    m.d.comb += clr_loaded.eq(1 << cbank)
                    m.d.sync += cbank.eq(~cbank)
                    adc = c.adc_bits is not None
                    with m.If(self.i_x.payload.last | adc):
                        m.d.sync += hold.eq(1)

        # --- MAC stage ---
        acc = [Signal(signed(c.acc_bits), name=f"acc{i}") for i in range(T)]
        adc = c.adc_bits is not None
        target = [Signal(signed(c.part_bits), name=f"part{i}") for i in range(T)] if adc else acc
        wl = [rd.data[ln * c.w_bits:(ln + 1) * c.w_bits].as_signed() for ln in range(L)]
        with m.If(s1_valid):
            with m.Switch(s1_g):
                for gg in range(G):
                    with m.Case(gg):
                        for ln in range(L):
                            t = target[gg * L + ln]
                            base = Mux(s1_clear & (s1_first | adc), 0, t)
                            m.d.sync += t.eq(base + wl[ln] * s1_x)

        # --- tile end: ADC fold (optional), then emit ---
        emit = Signal()
        egrp = Signal(range(G)) if G > 1 else Const(0, 1)
        tile_first = Signal()
        tile_last = Signal()
        with m.If(s1_valid & s1_end):
            m.d.sync += [tile_first.eq(s1_first), tile_last.eq(s1_last)]
        folding = Signal()
        fgrp = Signal(range(G)) if G > 1 else Const(0, 1)
        if adc:
            with m.If(s1_valid & s1_end):
                m.d.sync += folding.eq(1)
            lo, hi = -(1 << (c.adc_bits - 1)), (1 << (c.adc_bits - 1)) - 1
            with m.If(folding):
                with m.Switch(fgrp):
                    for gg in range(G):
                        with m.Case(gg):
                            for ln in range(L):
                                p = target[gg * L + ln]
                                if c.adc_shift:
                                    r = (p + (1 << (c.adc_shift - 1))) >> c.adc_shift
                                else:
                                    r = p
                                q = Mux(r > hi, hi, Mux(r < lo, lo, r))
                                a = acc[gg * L + ln]
                                m.d.sync += a.eq(Mux(tile_first, 0, a) + (q << c.adc_shift))
                last_f = (fgrp == G - 1) if G > 1 else Const(1)
                if G > 1:
                    m.d.sync += fgrp.eq(Mux(last_f, 0, fgrp + 1))
                with m.If(last_f):
                    m.d.sync += folding.eq(0)
                    with m.If(tile_last):
                        m.d.sync += emit.eq(1)
                    with m.Else():
                        m.d.sync += hold.eq(0)
        else:
            with m.If(s1_valid & s1_end & s1_last):
                m.d.sync += emit.eq(1)

        with m.Switch(egrp):
            for gg in range(G):
                with m.Case(gg):
                    m.d.comb += [self.o_y.payload[ln].eq(acc[gg * L + ln]) for ln in range(L)]
        m.d.comb += self.o_y.valid.eq(emit)
        with m.If(self.o_y.valid & self.o_y.ready):
            last_e = (egrp == G - 1) if G > 1 else Const(1)
            if G > 1:
                m.d.sync += egrp.eq(Mux(last_e, 0, egrp + 1))
            with m.If(last_e):
                m.d.sync += [emit.eq(0), hold.eq(0)]
        m.d.comb += self.busy.eq(hold | s1_valid | loaded.bit_select(cbank, 1) & (j != 0))
        return m


def emit_crossbar_tile(out_dir, *, name: str = "crossbar_tile", **params):
    """Write ``name.v`` and its JSON sidecar (config, ports, latency) for a CrossbarTile."""
    from sparsefab.gen.emit import emit

    dut = CrossbarTile(**params)
    c = dut.config
    return emit(dut, name=name, config=c, out_dir=out_dir,
                extra={"cycles_per_tile": c.cycles_per_tile, "weight_words_per_tile": c.words,
                       "emit_beats": c.groups, "latency": {"mac_stage": 1, "adc_fold": c.groups if c.adc_bits else 0},
                       "weight_layout": "word j*(T/lanes)+g holds W[g*lanes+l, j] at bits [l*w_bits, (l+1)*w_bits)"})
