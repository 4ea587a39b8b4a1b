"""TileController: runs a tile map on E CrossbarTile engines.

One matrix-vector product ``y = W @ x`` per run, in the original row order:

1. (once per matrix) ``i_cfg`` loads the two permutation tables: ``cols`` entries
   ``inv(col_perm)`` (permuted position of each original input) then ``rows`` entries
   ``inv(row_perm)`` (permuted position of each original output).
2. ``i_x`` streams the ``cols`` inputs in the ORIGINAL order; each goes through the input
   permutation into an input buffer (one read port per engine).
3. ``i_tile`` streams one descriptor per wave (``E`` slots: valid, tile row, tile column,
   first/last of the engine's output slice), ending with a descriptor whose ``end`` bit is set;
   ``i_w`` streams ``T*T/lanes`` beats per wave, beat ``b`` carrying word ``b`` of each slot's
   tile (``lanes`` codes per engine, engine 0 in the low bits).  Descriptors and weights come
   from :func:`sparsefab.compress.crossbar.controller_inputs` (only non-empty tiles: empty tiles
   are skipped without costing a cycle).  Programming wave k+1 overlaps the compute of wave k
   (and the first wave overlaps the input load).
4. Each engine accumulates a whole output slice and writes it to the output buffer; when the
   ``end`` descriptor has been served and every engine is idle, ``o_y`` streams the ``rows``
   outputs in the ORIGINAL order through the output permutation; in hybrid mode each output
   is added to the matching beat of ``i_sparse`` (the leftover part's ``W_sparse @ x`` from the
   SparseMacArray or the spmv flow, original row order).

Counters (valid after ``done``): ``cycles`` (first ``i_x`` beat to last ``o_y`` beat),
``tiles_run``, ``tiles_skipped`` (= grid tiles - tiles run), ``stalls`` (run-phase cycles in
which no engine issued a MAC), ``prog_beats`` (weight beats accepted).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for, ceil_log2

from sparsefab.compress.errors import SparsefabError, check_int
from sparsefab.gen.crossbar_tile import CrossbarTile, CrossbarTileConfig

__all__ = ["TileController", "TileControllerConfig"]


@dataclass(frozen=True)
class TileControllerConfig:
    """Parameters of a :class:`TileController` (validated; the JSON sidecar ``config``).

    rows, cols : matrix shape.  tile, lanes, w_bits, x_bits, acc_bits, adc_bits, adc_shift :
    as :class:`~sparsefab.gen.crossbar_tile.CrossbarTileConfig`.  engines : E tile engines.
    hybrid : add the ``i_sparse`` stream (leftover partial sums) to the outputs.
    """

    rows: int = 64
    cols: int = 64
    tile: int = 16
    engines: int = 2
    lanes: int = 16
    w_bits: int = 8
    x_bits: int = 8
    acc_bits: int = 32
    adc_bits: int | None = None
    adc_shift: int = 0
    hybrid: bool = False

    def __post_init__(self):
        _ = self.tile_config  # validates tile, lanes, widths
        check_int("rows", self.rows, 1, 1 << 16)
        check_int("cols", self.cols, 1, 1 << 16)
        check_int("engines", self.engines, 1, 16)
        if not isinstance(self.hybrid, bool):
            raise SparsefabError(f"hybrid={self.hybrid!r}: expected True or False")

    @property
    def tile_config(self) -> CrossbarTileConfig:
        return CrossbarTileConfig(tile=self.tile, lanes=self.lanes, w_bits=self.w_bits, x_bits=self.x_bits,
                                  acc_bits=self.acc_bits, adc_bits=self.adc_bits, adc_shift=self.adc_shift)

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.rows // self.tile), -(-self.cols // self.tile)

    @property
    def rows_p(self) -> int:
        return self.grid[0] * self.tile

    @property
    def cols_p(self) -> int:
        return self.grid[1] * self.tile

    @property
    def pos_bits(self) -> int:
        return max(1, ceil_log2(max(self.rows_p, self.cols_p)))

    def slot_layout(self):
        nrt, nct = self.grid
        return data.StructLayout({"valid": 1, "tr": unsigned(max(1, bits_for(nrt - 1))),
                                  "tc": unsigned(max(1, bits_for(nct - 1))), "first": 1, "last": 1})

    def desc_layout(self):
        return data.StructLayout({"end": 1, "slot": data.ArrayLayout(self.slot_layout(), self.engines)})


class TileController(wiring.Component):
    """Walks a tile map over E :class:`CrossbarTile` engines (see the module docstring).

    Ports
    -----
    i_cfg : In stream, ``unsigned(pos_bits)``: permutation tables (cols then rows entries).
    i_x : In stream, ``signed(x_bits)``: inputs, original order, ``cols`` beats per run.
    i_tile : In stream, ``desc_layout()``: wave descriptors, the last with ``end = 1``.
    i_w : In stream, ``unsigned(E * lanes * w_bits)``: ``T*T/lanes`` weight beats per wave.
    i_sparse : In stream, ``signed(acc_bits)`` (hybrid only): leftover partial sums, ``rows`` beats.
    o_y : Out stream, ``signed(acc_bits)``: ``rows`` outputs, original order.
    done : Out 1, one-cycle pulse after the last ``o_y`` beat.
    cycles, tiles_run, tiles_skipped, stalls, prog_beats : Out 32, counters of the last run.
    """

    def __init__(self, *, rows: int, cols: int, tile: int = 16, engines: int = 2, lanes: int | None = None,
                 w_bits: int = 8, x_bits: int = 8, acc_bits: int = 32, adc_bits: int | None = None,
                 adc_shift: int = 0, hybrid: bool = False):
        self._cfg = TileControllerConfig(rows=rows, cols=cols, tile=tile, engines=engines,
                                         lanes=tile if lanes is None else lanes, w_bits=w_bits,
                                         x_bits=x_bits, acc_bits=acc_bits, adc_bits=adc_bits,
                                         adc_shift=adc_shift, hybrid=hybrid)
        c = self._cfg
        ports = {
            "i_cfg": In(stream.Signature(unsigned(c.pos_bits))),
            "i_x": In(stream.Signature(signed(c.x_bits))),
            "i_tile": In(stream.Signature(c.desc_layout())),
            "i_w": In(stream.Signature(unsigned(c.engines * c.lanes * c.w_bits))),
            "o_y": Out(stream.Signature(signed(c.acc_bits))),
            "done": Out(1),
            "cycles": Out(32), "tiles_run": Out(32), "tiles_skipped": Out(32), "stalls": Out(32),
            "prog_beats": Out(32),
        }
        if c.hybrid:
            ports["i_sparse"] = In(stream.Signature(signed(c.acc_bits)))
        super().__init__(ports)

    @property
    def config(self) -> TileControllerConfig:
        return self._cfg

    def elaborate(self, platform):
        c = self._cfg
        m = Module()
        T, L, E = c.tile, c.lanes, c.engines
        tc_cfg = c.tile_config
        G, D = tc_cfg.groups, tc_cfg.words
        nrt, nct = c.grid
        PB = c.pos_bits

        engines = []
        for e in range(E):
            eng = CrossbarTile(tile=T, lanes=L, w_bits=c.w_bits, x_bits=c.x_bits, acc_bits=c.acc_bits,
                               adc_bits=c.adc_bits, adc_shift=c.adc_shift)
            m.submodules[f"engine{e}"] = eng
            engines.append(eng)

        # ---- tables and buffers ----
        m.submodules.in_tab = in_tab = Memory(shape=unsigned(PB), depth=c.cols, init=[])
        m.submodules.out_tab = out_tab = Memory(shape=unsigned(PB), depth=c.rows, init=[])
        m.submodules.xbuf = xbuf = Memory(shape=signed(c.x_bits), depth=c.cols_p, init=[])
        m.submodules.ybuf = ybuf = Memory(shape=data.ArrayLayout(signed(c.acc_bits), L),
                                          depth=c.rows_p // L, init=[])
        in_w, out_w = in_tab.write_port(), out_tab.write_port()
        in_r = in_tab.read_port(transparent_for=())
        out_r = out_tab.read_port(transparent_for=())
        x_w = xbuf.write_port()
        x_r = [xbuf.read_port(transparent_for=()) for _ in range(E)]
        y_w = ybuf.write_port()
        y_r = ybuf.read_port(transparent_for=())
        written = Signal(nrt)     # output slices written this run (others read as 0)

        # ---- top FSM ----
        cfg_cnt = Signal(range(c.cols + c.rows + 1))
        xcnt = Signal(range(c.cols + 1))
        rcnt = Signal(range(c.rows + 1))
        x_pend = Signal()
        x_hold = Signal(signed(c.x_bits))
        counting = Signal()
        cyc = Signal(32)
        tiles_run = Signal(32)
        stalls = Signal(32)
        prog_beats = Signal(32)
        ended = Signal()          # end descriptor seen
        engines_idle = Signal()
        done = Signal()
        m.d.comb += [self.cycles.eq(cyc), self.tiles_run.eq(tiles_run), self.stalls.eq(stalls),
                     self.prog_beats.eq(prog_beats), self.tiles_skipped.eq(nrt * nct - tiles_run),
                     self.done.eq(done)]
        m.d.sync += done.eq(0)
        with m.If(counting):
            m.d.sync += cyc.eq(cyc + 1)

        # input permutation: x[j] accepted at cycle t with in_tab[j] read; written at t+1
        m.d.comb += [in_r.addr.eq(xcnt), in_r.en.eq(1), x_w.addr.eq(in_r.data), x_w.data.eq(x_hold),
                     x_w.en.eq(x_pend)]
        m.d.sync += x_pend.eq(0)

        # Phase flags as flops (not state decodes): they gate wide enables on the critical path.
        prog_on = Signal()        # programming unit may run (load and run phases)
        running = Signal()        # feeders may run (run phase)
        to_drain = Signal()
        in_drain = Signal()
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.i_cfg.valid):
                    m.d.sync += cfg_cnt.eq(0)
                    m.next = "CFG"
                with m.Elif(self.i_x.valid):
                    m.d.sync += [xcnt.eq(0), cyc.eq(0), tiles_run.eq(0), stalls.eq(0), prog_beats.eq(0),
                                 counting.eq(1), written.eq(0), ended.eq(0), prog_on.eq(1)]
                    m.next = "LOAD"
            with m.State("CFG"):
                m.d.comb += self.i_cfg.ready.eq(1)
                m.d.comb += [in_w.addr.eq(cfg_cnt), in_w.data.eq(self.i_cfg.payload),
                             out_w.addr.eq(cfg_cnt - c.cols), out_w.data.eq(self.i_cfg.payload)]
                with m.If(self.i_cfg.valid):
                    m.d.comb += [in_w.en.eq(cfg_cnt < c.cols), out_w.en.eq(cfg_cnt >= c.cols)]
                    m.d.sync += cfg_cnt.eq(cfg_cnt + 1)
                    with m.If(cfg_cnt == c.cols + c.rows - 1):
                        m.next = "IDLE"
            with m.State("LOAD"):
                m.d.comb += self.i_x.ready.eq(1)
                with m.If(self.i_x.valid):
                    m.d.sync += [x_pend.eq(1), x_hold.eq(self.i_x.payload), xcnt.eq(xcnt + 1)]
                    with m.If(xcnt == c.cols - 1):
                        m.d.sync += running.eq(1)
                        m.next = "RUN"
            with m.State("RUN"):
                with m.If(ended & engines_idle):
                    m.d.comb += to_drain.eq(1)
                    m.d.sync += [prog_on.eq(0), running.eq(0)]
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += in_drain.eq(1)
                with m.If(rcnt == c.rows):
                    m.d.sync += [done.eq(1), counting.eq(0)]
                    m.next = "IDLE"

        # ---- programming unit: descriptors + weight beats ----
        job_fifos = []
        slot_l = c.slot_layout()
        for e in range(E):
            f = fifo.SyncFIFOBuffered(width=slot_l.size, depth=4)
            m.submodules[f"jobs{e}"] = f
            job_fifos.append(f)
        mask = Signal(E)
        bcnt = Signal(range(D))
        in_wave = Signal()
        # i_tile goes through a one-entry register slice: i_tile.ready is a flop, which keeps
        # the descriptor handshake off the critical path (one descriptor per T*T/lanes cycles).
        dbuf_valid = Signal()
        desc = Signal(c.desc_layout())
        m.d.comb += self.i_tile.ready.eq(~dbuf_valid)
        with m.If(self.i_tile.valid & ~dbuf_valid):
            m.d.sync += [dbuf_valid.eq(1), desc.eq(self.i_tile.payload)]
        fifo_room = Signal()
        m.d.comb += fifo_room.eq(Cat(f.w_rdy for f in job_fifos).all())
        with m.If(prog_on & ~in_wave & ~ended):
            with m.If(dbuf_valid & fifo_room):
                m.d.sync += dbuf_valid.eq(0)
                vmask = Cat(desc.slot[e].valid for e in range(E))
                for e in range(E):
                    m.d.comb += [job_fifos[e].w_data.eq(desc.slot[e].as_value()),
                                 job_fifos[e].w_en.eq(desc.slot[e].valid & ~desc.end)]
                with m.If(desc.end):
                    m.d.sync += ended.eq(1)
                with m.Elif(vmask.any()):
                    # bcnt is 0 here: it wraps to 0 at the end of every wave
                    m.d.sync += [mask.eq(vmask), in_wave.eq(1)]
                    m.d.sync += tiles_run.eq(tiles_run + sum(desc.slot[e].valid for e in range(E)))
        all_ready = Signal()
        m.d.comb += all_ready.eq(Cat(~mask[e] | engines[e].i_prog.ready for e in range(E)).all())
        for e, eng in enumerate(engines):
            m.d.comb += [eng.i_prog.payload.eq(self.i_w.payload[e * L * c.w_bits:(e + 1) * L * c.w_bits]),
                         eng.i_prog.valid.eq(in_wave & self.i_w.valid & mask[e] & all_ready)]
        m.d.comb += self.i_w.ready.eq(in_wave & all_ready)
        with m.If(self.i_w.valid & self.i_w.ready):
            m.d.sync += [bcnt.eq(Mux(bcnt == D - 1, 0, bcnt + 1)), prog_beats.eq(prog_beats + 1)]
            with m.If(bcnt == D - 1):
                m.d.sync += in_wave.eq(0)

        # ---- per-engine input feeders: xbuf -> engine.i_x ----
        feeder_idle = []
        flush_tr = []
        macs = []
        for e, eng in enumerate(engines):
            f = job_fifos[e]
            job = data.View(slot_l, f.r_data)
            active = Signal(name=f"feed_active{e}")
            fj = Signal(range(T), name=f"feed_j{e}")
            ftc = Signal(slot_l["tc"].shape, name=f"feed_tc{e}")
            ftr = Signal(slot_l["tr"].shape, name=f"feed_tr{e}")
            ff = Signal(name=f"feed_first{e}")
            fl = Signal(name=f"feed_last{e}")
            o_valid = Signal(name=f"feed_ovalid{e}")
            o_first = Signal(name=f"feed_ofirst{e}")
            o_last = Signal(name=f"feed_olast{e}")
            o_j = Signal(range(T), name=f"feed_oj{e}")
            o_tr = Signal(slot_l["tr"].shape, name=f"feed_otr{e}")
            o_pad = Signal(name=f"feed_opad{e}")
            adv = Signal(name=f"feed_adv{e}")
            m.d.comb += adv.eq(~o_valid | eng.i_x.ready)
            addr = Signal(range(c.cols_p), name=f"feed_addr{e}")
            m.d.comb += [addr.eq(Cat(fj, ftc)), x_r[e].addr.eq(addr), x_r[e].en.eq(adv)]
            load = Signal(name=f"feed_load{e}")
            m.d.comb += load.eq(running & f.r_rdy & (~active | (adv & (fj == T - 1))))
            m.d.comb += f.r_en.eq(load)
            with m.If(adv):
                m.d.sync += [o_valid.eq(active), o_first.eq(ff), o_last.eq(fl), o_j.eq(fj), o_tr.eq(ftr),
                             o_pad.eq(addr >= c.cols)]
                with m.If(active):
                    m.d.sync += fj.eq(Mux(fj == T - 1, 0, fj + 1))
                    with m.If(fj == T - 1):
                        m.d.sync += active.eq(0)
            with m.If(load):
                m.d.sync += [active.eq(1), fj.eq(0), ftc.eq(job.tc), ftr.eq(job.tr), ff.eq(job.first),
                             fl.eq(job.last)]
            m.d.comb += [eng.i_x.valid.eq(o_valid), eng.i_x.payload.x.eq(Mux(o_pad, 0, x_r[e].data)),
                         eng.i_x.payload.first.eq(o_first), eng.i_x.payload.last.eq(o_last)]
            ftr_hold = Signal(slot_l["tr"].shape, name=f"flush_tr{e}")
            with m.If(eng.i_x.valid & eng.i_x.ready & (o_j == T - 1) & o_last):
                m.d.sync += ftr_hold.eq(o_tr)
            flush_tr.append(ftr_hold)
            feeder_idle.append(~active & ~o_valid & ~f.r_rdy)
            macs.append(eng.mac)

        # ---- flush arbiter: engine outputs -> ybuf[tr*G + g] ----
        fgrp = [Signal(range(G), name=f"flush_g{e}") if G > 1 else None for e in range(E)]
        grant = Signal(range(E + 1))
        m.d.comb += grant.eq(E)
        for e in reversed(range(E)):
            with m.If(engines[e].o_y.valid):
                m.d.comb += grant.eq(e)
        for e, eng in enumerate(engines):
            with m.If(grant == e):
                m.d.comb += [eng.o_y.ready.eq(1), y_w.data.eq(eng.o_y.payload), y_w.en.eq(1)]
                if G > 1:
                    m.d.comb += y_w.addr.eq(Cat(fgrp[e], flush_tr[e]))
                    m.d.sync += fgrp[e].eq(Mux(fgrp[e] == G - 1, 0, fgrp[e] + 1))
                else:
                    m.d.comb += y_w.addr.eq(flush_tr[e])
                m.d.sync += written.bit_select(flush_tr[e], 1).eq(1)

        m.d.comb += engines_idle.eq(Cat(*feeder_idle, *(~eng.busy for eng in engines),
                                        *(~eng.o_y.valid for eng in engines), ~in_wave).all())
        with m.If(running & ~Cat(*macs).any()):
            m.d.sync += stalls.eq(stalls + 1)

        # ---- drain: o_y[r] = ybuf[pos(r)] (+ i_sparse[r]) ----
        a_valid = Signal()        # stage B: out_r.data valid (position of row)
        b_valid = Signal()        # stage C: y_r.data valid
        b_pos = Signal(PB)
        rcnt_issue = Signal(range(c.rows + 1))
        sp_ok = self.i_sparse.valid if c.hybrid else 1
        adv = Signal()
        m.d.comb += adv.eq(~b_valid | (self.o_y.ready & sp_ok))
        issue = Signal()
        m.d.comb += issue.eq(in_drain & adv & (rcnt_issue < c.rows))
        m.d.comb += [out_r.addr.eq(rcnt_issue), out_r.en.eq(adv)]
        pos = out_r.data
        m.d.comb += [y_r.addr.eq(pos[ceil_log2(L):] if L > 1 else pos), y_r.en.eq(adv)]
        with m.If(adv):
            m.d.sync += [a_valid.eq(issue), b_valid.eq(a_valid), b_pos.eq(pos)]
            with m.If(issue):
                m.d.sync += rcnt_issue.eq(rcnt_issue + 1)
        lane = b_pos[:ceil_log2(L)] if L > 1 else 0
        slice_written = written.bit_select(b_pos[ceil_log2(T):], 1)
        base = Signal(signed(c.acc_bits))
        m.d.comb += base.eq(Mux(slice_written, y_r.data[lane] if L > 1 else y_r.data[0], 0))
        if c.hybrid:
            m.d.comb += [self.o_y.payload.eq(base + self.i_sparse.payload),
                         self.o_y.valid.eq(b_valid & self.i_sparse.valid),
                         self.i_sparse.ready.eq(b_valid & self.o_y.ready)]
        else:
            m.d.comb += [self.o_y.payload.eq(base), self.o_y.valid.eq(b_valid)]
        with m.If(self.o_y.valid & self.o_y.ready):
            m.d.sync += rcnt.eq(rcnt + 1)
        with m.If(to_drain):
            m.d.sync += [rcnt.eq(0), rcnt_issue.eq(0)]
        return m


def build_crossbar(*, rows: int = 64, cols: int = 64, tile: int = 16, engines: int = 2, lanes: int = 4,
                   acc_bits: int = 24, adc_bits: int | None = None, adc_shift: int = 0,
                   hybrid: bool = False) -> TileController:
    """The ``crossbar`` design of the FPGA registry (:mod:`sparsefab.gen.designs`).

    Defaults fit the iCE40UP5K: E = 2 engines of T = 16 with 4 MACs each (8 multipliers = its
    8 SB_MAC16), 24-bit accumulators, a 64 x 64 matrix.
    """
    TileControllerConfig(rows=rows, cols=cols, tile=tile, engines=engines, lanes=lanes, acc_bits=acc_bits,
                         adc_bits=adc_bits, adc_shift=adc_shift, hybrid=hybrid)
    return TileController(rows=rows, cols=cols, tile=tile, engines=engines, lanes=lanes, acc_bits=acc_bits,
                          adc_bits=adc_bits, adc_shift=adc_shift, hybrid=hybrid)


def emit_tile_controller(out_dir, *, name: str = "tile_controller", **params):
    """Write ``name.v`` and its JSON sidecar (config, ports, payload layouts, cycle model)."""
    from sparsefab.gen.emit import emit

    dut = TileController(**params)
    c = dut.config

    def fields(layout, prefix=""):
        out = []
        for fname, f in layout:
            if isinstance(f.shape, data.Layout):
                if isinstance(f.shape, data.ArrayLayout):
                    for i in range(f.shape.length):
                        for sub in fields(f.shape.elem_shape, f"{prefix}{fname}.{i}."):
                            sub["offset"] += f.offset + i * data.Layout.cast(f.shape.elem_shape).size
                            out.append(sub)
                else:
                    for sub in fields(f.shape, f"{prefix}{fname}."):
                        sub["offset"] += f.offset
                        out.append(sub)
            else:
                shape = f.shape if not isinstance(f.shape, int) else unsigned(f.shape)
                from amaranth.hdl import Shape

                s = Shape.cast(shape)
                out.append({"name": f"{prefix}{fname}", "offset": f.offset, "width": s.width, "signed": s.signed})
        return out

    t = c.tile_config
    return emit(dut, name=name, config=c, out_dir=out_dir,
                extra={"i_tile_fields": fields(c.desc_layout()), "cycles_per_tile": t.cycles_per_tile,
                       "weight_beats_per_wave": t.words, "grid": list(c.grid),
                       "cycle_model": "load cols + waves*T*T/lanes (first wave's programming overlaps the load) "
                                      "+ flushes + drain rows"})
