"""Dense baseline of the sparse MAC array: same lanes, same back end, same output stage.

``DenseMacArray`` multiplies every weight, zero or not: row ``r`` arrives as
``ceil(cols / lanes)`` beats of ``lanes`` codes and takes that many cycles, so speedups of
:class:`~sparsefab.gen.sparse_mac.SparseMacArray` are measured against real hardware with
the same multipliers, activation buffer, adder trees and requantization (the modules are
shared, not copied).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.bitmap_decoder import cmd_layout, lane_layout, value_layout
from sparsefab.gen.sparse_mac import _config_from, build_top, top_signature
from sparsefab.gen.spmv_config import ERRORS, ROWS_BITS, SpmvConfig

__all__ = ["DenseMacArray", "DenseReader"]


class DenseReader(wiring.Component):
    """Front end of the dense baseline: one beat of ``lanes`` codes -> one lane bundle.

    Parameters
    ----------
    config : SpmvConfig
        A dense configuration (``dense=True``).

    Ports
    -----
    i_cmd : In(stream.Signature(cmd_layout))
        ``rows``, ``cols`` of the next matrix; accepted when idle.
    i_value : In(stream.Signature(value_layout))
        ``data``: ``lanes * weight_bits`` bits, lane ``i`` in bits ``[i*b, (i+1)*b)``; row ``r``
        is ``ceil(cols/lanes)`` beats (column ``j*lanes + i`` in lane ``i`` of beat ``j``);
        ``last`` on the matrix's final beat only.
    o_lanes : Out(stream.Signature(lane_layout))
        One bundle per beat; lanes at columns >= cols are not valid.
    o_busy : Out(1)
        A matrix is in progress.
    o_error_flags : Out(4)
        Sticky: ``values_short`` (``last`` before the final beat), ``values_extra`` (no
        ``last`` on the final beat); the matrix is abandoned.

    Latency: combinational (a beat and its bundle transfer in the same cycle).
    """

    def __init__(self, config: SpmvConfig):
        if not isinstance(config, SpmvConfig) or not config.dense:
            self._MustUse__silence = True
            raise SparsefabError(f"DenseReader: config={config!r}, expected a dense SpmvConfig")
        self._config = config
        super().__init__({
            "i_cmd": In(stream.Signature(cmd_layout(config))),
            "i_value": In(stream.Signature(value_layout(config))),
            "o_lanes": Out(stream.Signature(lane_layout(config))),
            "o_busy": Out(1),
            "o_error_flags": Out(4),
        })

    @property
    def config(self) -> SpmvConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        L, b = cfg.lanes, cfg.weight_bits
        running = Signal()
        rows_left = Signal(ROWS_BITS)
        cols = Signal(cfg.col_bits)
        base = Signal(cfg.col_bits + 1)    # column of lane 0 in the current beat
        flags = Signal(4)
        m.d.comb += [self.o_busy.eq(running), self.o_error_flags.eq(flags),
                     self.i_cmd.ready.eq(~running)]
        with m.If(self.i_cmd.valid & ~running):
            m.d.sync += [running.eq(1), rows_left.eq(self.i_cmd.payload.rows),
                         cols.eq(self.i_cmd.payload.cols), base.eq(0)]

        row_end = Signal()
        last_row = Signal()
        m.d.comb += [row_end.eq(base + L >= cols), last_row.eq(rows_left == 1)]
        pl = self.o_lanes.payload
        d = self.i_value.payload.data
        for i in range(L):
            m.d.comb += [pl.col[i].eq(base + i), pl.value[i].eq(d[i * b:(i + 1) * b]),
                         pl.valid[i].eq(base + i < cols)]
        final = row_end & last_row
        bad = Signal()
        m.d.comb += bad.eq(self.i_value.payload.last != final)
        m.d.comb += [pl.nxt.eq(0), pl.row_end.eq(row_end), pl.last.eq(final),
                     self.o_lanes.valid.eq(running & self.i_value.valid & ~bad),
                     self.i_value.ready.eq(running & (self.o_lanes.ready | bad))]
        with m.If(running & self.i_value.valid & bad):
            m.d.sync += [running.eq(0),
                         flags[ERRORS["values_short"]].eq(flags[ERRORS["values_short"]] | ~final),
                         flags[ERRORS["values_extra"]].eq(flags[ERRORS["values_extra"]] | final)]
        with m.Elif(self.o_lanes.valid & self.o_lanes.ready):
            with m.If(row_end):
                m.d.sync += [base.eq(0), rows_left.eq(rows_left - 1)]
                with m.If(last_row):
                    m.d.sync += running.eq(0)
            with m.Else():
                m.d.sync += base.eq(base + L)
        return m


class DenseMacArray(wiring.Component):
    """Dense baseline top: the ports of :class:`~sparsefab.gen.sparse_mac.SparseMacArray`
    without ``i_mask``; ``i_value`` carries dense rows (see :class:`DenseReader`).

    Parameters
    ----------
    config : SpmvConfig, optional
        A configuration (``dense`` is forced to True); or its fields as keyword parameters.

    Ports
    -----
    i_cmd, i_act, i_rq, o_res, o_busy, o_error, o_error_flags, o_cycles, o_stalls, o_nnz
        As in :class:`~sparsefab.gen.sparse_mac.SparseMacArray` (``o_nnz`` counts the
        multiplications done, zeros included).
    i_value : In(stream.Signature(value_layout))
        Dense rows: ``ceil(cols/lanes)`` beats of ``lanes * weight_bits`` bits per row,
        ``last`` on the matrix's final beat.

    Latency: as the sparse array; ideal ``rows * ceil(cols/lanes)`` cycles per matrix plus
    the activation load and 2 cycles of command handling.
    """

    def __init__(self, config: SpmvConfig | None = None, **params):
        self._MustUse__silence = True      # until validated
        cfg = _config_from(config, params, "DenseMacArray")
        self._MustUse__silence = False
        if not cfg.dense:
            cfg = cfg.replace(dense=True)
        self._config = cfg
        super().__init__(top_signature(cfg))

    @property
    def config(self) -> SpmvConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.reader = rd = DenseReader(cfg)
        wiring.connect(m, wiring.flipped(self.i_value), rd.i_value)
        return build_top(m, self, cfg, rd.o_lanes, rd.i_cmd, rd.o_busy, rd.o_error_flags)
