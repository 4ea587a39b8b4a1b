"""SparseMacCluster: ``engines`` sparse MAC arrays side by side on row-interleaved bitmap shards.

One bitmap decoder with a window wide enough for 32 lanes does not close timing on an ECP5
(its take loop grows with the window; 16.7 MHz placed at 32 lanes).  The cluster keeps each
engine at the size that does (``config.lanes``, e.g. 8) and puts ``engines`` of them side by
side, so the array has ``engines * config.lanes`` multipliers:

* **Rows are interleaved.**  Row ``r`` of a matrix runs on engine ``(start + r) % engines``,
  where ``start`` is the total number of rows of all earlier matrices (mod ``engines``), so the
  row stream of the cluster is a plain round robin over the engines, across matrix boundaries.
  Each engine reads its own **shard**: the bitmap format (docs/FORMATS.md section 3) of its
  rows, i.e. ``codes[rows_of_engine_e]`` encoded on its own (:func:`shard_rows`,
  :func:`shard_images`).  Storage is the same format, cut by rows; a shard's row offsets are
  its own.  Engines whose share of a matrix is zero rows get no command for it.
* **Activations are broadcast**: ``i_act`` words are accepted once every engine that works on
  the matrix has taken its command (it is then loading and takes every word), and reach the
  engines through one register each (each engine keeps its own replicated activation buffers).
* **Requantization parameters** ``i_rq`` (row order) are dealt round robin into one small
  FIFO per engine; **results** are merged round robin into ``o_res`` (row order again) through
  a register, with ``last`` on the matrix's final row.

Throughput: every engine spends ``ceil(nnz_e / lanes)`` cycles plus its per-row overhead on its
shard; the cluster is as fast as its slowest engine, so the ideal is
``ceil(nnz / (engines * lanes))`` and the imbalance of the shards (small on real matrices, whose
rows have similar counts) is what utilization loses beyond a single engine's.

Parameters
----------
config : SpmvConfig
    Configuration of every engine (``lanes`` per engine, bits, block, bus, ...).
engines : int
    Number of engines: 1, 2, 4, 8 or 16.
front_end : type, optional
    Decoder class of every engine, built as ``front_end(config)`` with the ports of
    :class:`~sparsefab.gen.bitmap_decoder.BitmapDecoder` (default: the array's own,
    :class:`~sparsefab.gen.sparse_mac.SparseMacArray`).

Ports
-----
i_cmd : In(stream.Signature(cmd_layout))
    ``rows`` (16 bits), ``cols`` (``col_bits``), one per matrix, as for the array.  A command with
    rows = 0, cols = 0 or cols > max_cols is dropped and flags ``bad_command``.
i_act : In(stream.Signature(bus_bits))
    ``ceil(cols / (bus_bits/8))`` activation words per command (broadcast to the engines).
i_mask : In(stream.Signature(mask_bus)).array(engines)
    Engine ``e``'s mask beats of its shard of every matrix it takes part in (``i_mask__<e>``).
i_value : In(stream.Signature(value_layout)).array(engines)
    Engine ``e``'s value beats of its shard, ``last`` on each shard's final beat (``i_value__<e>``).
i_rq : In(stream.Signature(rq_layout))
    Per-row requantization parameters, in row order.
o_res : Out(stream.Signature(res_layout))
    Per row, in row order: ``acc``, ``out``, ``last`` (the matrix's final row).
o_busy : Out(1)
    A command is being dispatched or loaded, or some engine is busy.
o_error : Out(1)
    Sticky (until reset): malformed input in some engine, or a bad command.
o_error_flags : Out(4)
    OR of the engines' sticky causes and the cluster's ``bad_command``
    (:data:`sparsefab.gen.spmv_config.ERRORS`).  After an error apply ``rst``.
o_cycles : Out(32)
    Cycles with ``o_busy`` high since reset (counted one cycle late).
o_stalls : Out(32)
    Sum over engines of their stall cycles (busy engine-cycles in which none of its lanes fired).
o_nnz : Out(32)
    Nonzeros multiplied since reset (sum over engines).  Both sums come through a registered
    adder tree: ``1 + ceil(log2(engines))`` cycles behind the engines' counters.

Latency: an engine's ``config.latency`` plus two cycles through its result FIFO and one of
output merge register.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.bitmap_decoder import cmd_layout, value_layout
from sparsefab.gen.sparse_mac import SparseMacArray, res_layout, rq_layout
from sparsefab.gen.spmv_config import COUNTER_BITS, ERRORS, ROWS_BITS, SpmvConfig

__all__ = ["ENGINES", "SparseMacCluster", "shard_images", "shard_rows"]

#: Allowed engine counts (a power of two keeps the row split a shift).
ENGINES = (1, 2, 4, 8, 16)
#: Depth of each engine's requantization-parameter FIFO and of the cluster's command queue.
RQ_FIFO_DEPTH = 4
CMD_QUEUE_DEPTH = 8
#: Depth of each engine's result FIFO in front of the row-order merge.
RES_FIFO_DEPTH = 4


def shard_rows(rows: int, engines: int, start: int = 0) -> list[np.ndarray]:
    """Row indices of each engine's shard: row ``r`` goes to engine ``(start + r) % engines``."""
    r = np.arange(int(rows))
    return [r[(start + r) % engines == e] for e in range(engines)]


def shard_images(codes, config: SpmvConfig, engines: int, start: int = 0) -> list:
    """The bitmap images (:class:`~sparsefab.compress.bitmap.BitmapImage`) of each engine's shard
    of ``codes`` (None for an engine with no rows), from the golden encoder."""
    from sparsefab.compress.bitmap import bitmap_sections

    codes = np.asarray(codes)
    out = []
    for idx in shard_rows(codes.shape[0], engines, start):
        out.append(None if idx.size == 0 else bitmap_sections(
            codes[idx], bits=config.weight_bits, block=config.block, bus_bits=config.bus_bits))
    return out


class SparseMacCluster(wiring.Component):
    __doc__ = __doc__

    def __init__(self, config: SpmvConfig | None = None, *, engines: int = 4, front_end=None, **params):
        self._MustUse__silence = True
        if config is None:
            try:
                config = SpmvConfig(**params)
            except TypeError as exc:
                raise SparsefabError(f"SparseMacCluster: {exc}") from None
        elif params:
            raise SparsefabError(f"SparseMacCluster: pass either config= or parameters, not both ({', '.join(params)})")
        if not isinstance(config, SpmvConfig) or config.dense:
            raise SparsefabError(f"SparseMacCluster: config={config!r}, expected a sparse SpmvConfig")
        if isinstance(engines, bool) or engines not in ENGINES:
            raise SparsefabError(f"SparseMacCluster: engines={engines!r}, expected one of {', '.join(map(str, ENGINES))}")
        self._MustUse__silence = False
        self._config = config
        self._engines = engines
        self._front_end = front_end
        super().__init__({
            "i_cmd": In(stream.Signature(cmd_layout(config))),
            "i_act": In(stream.Signature(config.bus_bits)),
            "i_mask": In(stream.Signature(config.mask_bus)).array(engines),
            "i_value": In(stream.Signature(value_layout(config))).array(engines),
            "i_rq": In(stream.Signature(rq_layout())),
            "o_res": Out(stream.Signature(res_layout(config))),
            "o_busy": Out(1),
            "o_error": Out(1),
            "o_error_flags": Out(4),
            "o_cycles": Out(COUNTER_BITS),
            "o_stalls": Out(COUNTER_BITS),
            "o_nnz": Out(COUNTER_BITS),
        })

    @property
    def config(self) -> SpmvConfig:
        return self._config

    @property
    def engines(self) -> int:
        return self._engines

    @property
    def front_end(self):
        """The engines' decoder class (None: the array's own)."""
        return self._front_end

    @property
    def lanes(self) -> int:
        """Multipliers of the whole cluster."""
        return self._engines * self._config.lanes

    @property
    def name(self) -> str:
        """Verilog module name."""
        return f"spmvx{self._engines}_" + self._config.name[len("spmv_"):]

    @property
    def latency(self) -> int:
        """Cycles from an engine's decoder emitting a row's last lanes to that row on ``o_res``."""
        return self._config.latency + 3

    def elaborate(self, platform):
        m = Module()
        cfg, n = self._config, self._engines
        sh = (n - 1).bit_length()
        engines = []
        for e in range(n):
            eng = SparseMacArray(cfg, front_end=self._front_end)
            m.submodules[f"engine{e}"] = eng
            engines.append(eng)
            wiring.connect(m, wiring.flipped(self.i_mask[e]), eng.i_mask)
            wiring.connect(m, wiring.flipped(self.i_value[e]), eng.i_value)

        # ---------------------------------------------------------------- commands and activations
        start = Signal(range(n))                  # engine of the next matrix's row 0
        share = [Signal(ROWS_BITS, name=f"share{e}") for e in range(n)]   # rows of engine e
        cols_e = [Signal(cfg.col_bits, name=f"cols_e{e}") for e in range(n)]   # cols, a copy per engine
        pending = Signal(n)                       # commands not yet taken by engine e
        active = Signal(n)                        # engines that load this matrix's activations
        words = Signal(range(cfg.act_depth + 1))
        waddr = Signal(range(cfg.act_depth + 1))
        bad_cmd = Signal()
        loading = Signal()
        apw_bits = (cfg.acts_per_word - 1).bit_length()

        queue = SyncFIFOBuffered(width=ROWS_BITS, depth=CMD_QUEUE_DEPTH)   # rows per matrix, for `last`
        m.submodules.queue = queue

        c = self.i_cmd.payload
        cmd_ok = (c.rows != 0) & (c.cols != 0) & (c.cols <= cfg.max_cols)
        with m.If(~loading):
            m.d.comb += self.i_cmd.ready.eq(Mux(cmd_ok, queue.w_rdy, 1))
            with m.If(self.i_cmd.valid & self.i_cmd.ready):
                with m.If(~cmd_ok):
                    m.d.sync += bad_cmd.eq(1)
                with m.Else():
                    m.d.comb += [queue.w_en.eq(1), queue.w_data.eq(c.rows)]
                    shares = []
                    for e in range(n):
                        d = (e + n - start)[:sh] if n > 1 else 0
                        s = ((c.rows + (n - 1) - d) >> sh)[:ROWS_BITS]
                        shares.append(s)
                        m.d.sync += share[e].eq(s)
                        with m.If(s != 0):     # an enable of its own: synthesis keeps the copy
                            m.d.sync += cols_e[e].eq(c.cols)
                    m.d.sync += [loading.eq(1), waddr.eq(0),
                                 words.eq((c.cols + (cfg.acts_per_word - 1)) >> apw_bits),
                                 start.eq((start + c.rows)[:max(1, sh)] if n > 1 else 0)]
                    act = [s != 0 for s in shares]
                    m.d.sync += [pending.eq(Cat(*act)), active.eq(Cat(*act))]
        # dispatch the command to each active engine as soon as it is idle
        for e, eng in enumerate(engines):
            m.d.comb += [eng.i_cmd.valid.eq(pending[e]), eng.i_cmd.payload.rows.eq(share[e]),
                         eng.i_cmd.payload.cols.eq(cols_e[e])]
            with m.If(eng.i_cmd.valid & eng.i_cmd.ready):
                m.d.sync += pending.bit_select(e, 1).eq(0)
        # broadcast activation words once every active engine has taken the command: each is then
        # in its LOAD state, ready for exactly `words` words, so the cluster reads none of their
        # ready signals (no fan-in across the chip) and one register per engine carries the word
        m.d.comb += self.i_act.ready.eq(loading & ~pending.any())
        for e, eng in enumerate(engines):
            act_valid = Signal(name=f"act_valid{e}")
            act_word = Signal(cfg.bus_bits, name=f"act_word{e}", reset_less=True)
            m.d.sync += act_valid.eq(self.i_act.valid & self.i_act.ready & active[e])
            # loaded only for an active engine: an enable of its own, so synthesis cannot merge
            # the eight copies back into one register that fans out across the chip
            with m.If(self.i_act.valid & self.i_act.ready & active[e]):
                m.d.sync += act_word.eq(self.i_act.payload)
            m.d.comb += [eng.i_act.valid.eq(act_valid), eng.i_act.payload.eq(act_word)]
        with m.If(self.i_act.valid & self.i_act.ready):
            m.d.sync += waddr.eq(waddr + 1)
            with m.If(waddr + 1 == words):
                m.d.sync += loading.eq(0)

        # ---------------------------------------------------------------- requantization parameters
        # dealt through a register per engine (loaded only for that engine), against credits kept
        # here: i_rq.ready never waits on a FIFO level across the chip.  A credit is taken when a
        # word is dealt and returned the cycle after the engine pops one, so a FIFO never overflows.
        rq_ptr = Signal(n, init=1)                # one-hot: the engine of the next row's parameters
        rq_take = Signal()
        m.d.comb += rq_take.eq(self.i_rq.valid & self.i_rq.ready)
        has_credit = []
        for e in range(n):
            f = SyncFIFOBuffered(width=len(self.i_rq.payload.as_value()), depth=RQ_FIFO_DEPTH)
            m.submodules[f"rq{e}"] = f
            credit = Signal(range(RQ_FIFO_DEPTH + 1), init=RQ_FIFO_DEPTH, name=f"rq_credit{e}")
            rq_word = Signal(len(self.i_rq.payload.as_value()), name=f"rq_word{e}", reset_less=True)
            rq_wen, popped = Signal(name=f"rq_wen{e}"), Signal(name=f"rq_popped{e}")
            deal = rq_take & rq_ptr[e]
            with m.If(deal):
                m.d.sync += rq_word.eq(self.i_rq.payload)
            m.d.sync += [rq_wen.eq(deal), popped.eq(f.r_en & f.r_rdy)]
            m.d.sync += credit.eq(credit - deal + popped)
            m.d.comb += [engines[e].i_rq.valid.eq(f.r_rdy), engines[e].i_rq.payload.eq(f.r_data),
                         f.r_en.eq(engines[e].i_rq.ready), f.w_data.eq(rq_word), f.w_en.eq(rq_wen)]
            has_credit.append(rq_ptr[e] & (credit != 0))
        m.d.comb += self.i_rq.ready.eq(Cat(*has_credit).any())
        with m.If(rq_take):
            m.d.sync += rq_ptr.eq(rq_ptr.rotate_left(1) if n > 1 else 1)

        # ---------------------------------------------------------------- result merge (row order)
        # each engine's rows go through a small FIFO first, so an engine's output stage sees a
        # ready from its own FIFO's level, never the merge's decision across the chip
        res_w = len(self.o_res.payload.as_value())
        res_fifos = []
        for e, eng in enumerate(engines):
            f = SyncFIFOBuffered(width=res_w, depth=RES_FIFO_DEPTH)
            m.submodules[f"res{e}"] = f
            res_fifos.append(f)
            m.d.comb += [f.w_en.eq(eng.o_res.valid), f.w_data.eq(eng.o_res.payload), eng.o_res.ready.eq(f.w_rdy)]
        # the merge counts the current matrix's rows down from registers (`left`, `left1` =
        # "this is its final row"); a matrix's row count is taken from the queue in a cycle of
        # its own, so no adder or compare sits between the queue and the take
        res_ptr = Signal(range(n))
        cur = Signal()                            # `left` holds the current matrix's rows to merge
        left = Signal(ROWS_BITS)
        left1 = Signal()
        out_valid = Signal()
        out = Signal.like(self.o_res.payload)
        take = Signal()
        src_valid = Signal()
        src_bits = Signal(res_w)
        src = res_layout(cfg)(src_bits)
        m.d.comb += [src_valid.eq(Array(f.r_rdy for f in res_fifos)[res_ptr]),
                     src_bits.eq(Array(f.r_data for f in res_fifos)[res_ptr]),
                     take.eq(src_valid & cur & (~out_valid | self.o_res.ready)),
                     self.o_res.valid.eq(out_valid), self.o_res.payload.eq(out),
                     queue.r_en.eq(~cur)]
        with m.If(~cur & queue.r_rdy):
            m.d.sync += [cur.eq(1), left.eq(queue.r_data), left1.eq(queue.r_data == 1)]
        for e, f in enumerate(res_fifos):
            m.d.comb += f.r_en.eq(take & (res_ptr == e))
        with m.If(self.o_res.ready):
            m.d.sync += out_valid.eq(0)
        with m.If(take):
            m.d.sync += [out_valid.eq(1), out.acc.eq(src.acc), out.out.eq(src.out),
                         out.last.eq(left1), res_ptr.eq(res_ptr + 1 if n > 1 else 0),
                         left.eq(left - 1), left1.eq(left == 2)]
            with m.If(left1):
                m.d.sync += cur.eq(0)

        # ---------------------------------------------------------------- status and counters
        err = Signal(4)
        m.d.comb += [err.eq(_or([eng.o_error_flags for eng in engines]) | (bad_cmd << ERRORS["bad_command"])),
                     self.o_error_flags.eq(err), self.o_error.eq(err.any())]
        busy, busy_r = Signal(), Signal()
        m.d.comb += [busy.eq(loading | pending.any() | Cat(*(eng.o_busy for eng in engines)).any()),
                     self.o_busy.eq(busy)]
        # the counters add registered terms (a few cycles late), so no handshake and no carry chain
        # of one engine reaches another engine's or the cluster's carry chain in the same cycle
        m.d.sync += busy_r.eq(busy)
        with m.If(busy_r):
            m.d.sync += self.o_cycles.eq(self.o_cycles + 1)
        m.d.sync += [self.o_nnz.eq(_sum(m, [eng.o_nnz for eng in engines], "nnz")),
                     self.o_stalls.eq(_sum(m, [eng.o_stalls for eng in engines], "stalls"))]
        return m


def _or(terms):
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out


def _sum(m, terms, name):
    """Sum of ``terms`` (COUNTER_BITS wide) by a tree of registered pairwise adds (one register
    level per tree level: ``ceil(log2(len(terms)))`` cycles late)."""
    terms, level = list(terms), 0
    while len(terms) > 1:
        nxt = []
        for i in range(0, len(terms), 2):
            r = Signal(COUNTER_BITS, name=f"{name}_l{level}_{i // 2}")
            m.d.sync += r.eq((terms[i] + terms[i + 1])[:COUNTER_BITS] if i + 1 < len(terms) else terms[i])
            nxt.append(r)
        terms, level = nxt, level + 1
    return terms[0][:COUNTER_BITS]


def sidecar_extra(top: SparseMacCluster) -> dict:
    """Sidecar keys of a cluster: the engine sidecar plus ``engines``, ``lanes_total``, ``latency``."""
    from sparsefab.gen.sparse_mac import sidecar_extra as engine_extra

    d = engine_extra(top)
    d.update(engines=top.engines, lanes_total=top.lanes, latency=top.latency, format="bitmap-row-shards")
    return d


#: ``decoder=`` names of :func:`build_cluster` -> front-end class ("module:Class"; None: the array's own)
FRONT_ENDS = {"window": None, "chunk": "sparsefab.gen.chunk_decoder:ChunkDecoder"}


def front_end_class(name: str):
    """The engine front-end class called ``name`` in :data:`FRONT_ENDS` (None for the array's own)."""
    import importlib

    if name not in FRONT_ENDS:
        raise SparsefabError(f"spmv-cluster: decoder={name!r}, expected one of {', '.join(FRONT_ENDS)}")
    target = FRONT_ENDS[name]
    if target is None:
        return None
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise SparsefabError(f"spmv-cluster: decoder={name!r} is not available ({exc})") from None


def build_cluster(*, lanes: int = 32, engines: int = 4, bits: int = 8, block: int = 16, acc_bits: int = 32,
                  bus_bits: int = 64, max_cols: int = 1024, mask_words: int | None = None,
                  value_words: int | None = None, mul_steps: int = 1, window_beats: int = 2,
                  decoder: str = "window", act_banks: int = 1) -> SparseMacCluster:
    """The ``spmv-cluster`` design: ``lanes`` multipliers in total as ``engines`` engines of
    ``lanes // engines`` lanes (the other parameters are each engine's, see :class:`SpmvConfig`);
    ``decoder`` picks the engines' front end (:data:`FRONT_ENDS`); ``act_banks=2`` double-buffers
    the activations (the next matrix loads while this one runs)."""
    front_end = front_end_class(decoder)
    if decoder == "chunk":      # one 64-bit mask word and one value word per beat (ChunkDecoder's form)
        mask_words = 1 if mask_words is None else mask_words
        value_words = 1 if value_words is None else value_words
    if isinstance(engines, bool) or engines not in ENGINES:
        raise SparsefabError(f"spmv-cluster: engines={engines!r}, expected one of {', '.join(map(str, ENGINES))}")
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < engines or lanes % engines:
        raise SparsefabError(f"spmv-cluster: lanes={lanes!r}, expected a multiple of engines={engines}")
    cfg = SpmvConfig(lanes=lanes // engines, weight_bits=bits, block=block, acc_bits=acc_bits, bus_bits=bus_bits,
                     max_cols=max_cols, mask_words=mask_words, value_words=value_words, mul_steps=mul_steps,
                     window_beats=window_beats, act_banks=act_banks)
    if decoder == "chunk":
        from sparsefab.gen.chunk_decoder import check_config
        check_config(cfg)
    return SparseMacCluster(cfg, engines=engines, front_end=front_end)


build_cluster.requires = "sparsefab.gen.sparse_mac"
#: ULX3S (ECP5-85F): 8 engines of 4 lanes with the chunk front end, the form built for 100 MHz,
#: and double-buffered activations (free there: a bank of 1,024 activations fills half a DP16KD)
build_cluster.board_defaults = {"ulx3s-85f": {"engines": 8, "decoder": "chunk", "act_banks": 2}}
