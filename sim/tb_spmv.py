"""Amaranth-simulator bench for the sparse MAC array and its dense baseline.

The fast unit-test path (no HDL build): async testbenches drive every input stream with
seeded random idle cycles, apply seeded random backpressure on ``o_res``, and return what
came out plus the hardware counters.  Expected values come from the golden model
(:func:`sparsefab.compress.quant.spmv_int` / :func:`~sparsefab.compress.quant.requantize`,
:func:`sparsefab.compress.bitmap.bitmap_sections`) through :func:`expected`; nothing here
re-derives them.

A *job* is one matrix-vector product: ``Job(codes, x, rq)`` with ``codes`` the weight codes
(rows, cols), ``x`` the int8 activations (cols,) and ``rq`` the per-row requantization
parameters (dict of arrays ``bias``, ``multiplier``, ``shift``, ``zero_point`` (scalar),
``relu`` (bool)).
"""

from __future__ import annotations

import gc
import random
from dataclasses import dataclass, field

import numpy as np

from sparsefab.compress.bitmap import bitmap_sections
from sparsefab.compress.quant import requantize, spmv_int
from sparsefab.gen.spmv_config import SpmvConfig

__all__ = ["Job", "BenchResult", "DecoderResult", "run_decoder", "expected", "random_rq", "run_amaranth", "stream_items"]


@dataclass
class Job:
    codes: np.ndarray
    x: np.ndarray
    rq: dict = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.codes.shape[0])

    @property
    def cols(self) -> int:
        return int(self.codes.shape[1])

    def rq_rows(self) -> list[dict]:
        """One parameter dict per row (scalars broadcast)."""
        r = self.rows
        bias = np.broadcast_to(np.asarray(self.rq.get("bias", 0), np.int64), (r,))
        mult = np.broadcast_to(np.asarray(self.rq.get("multiplier", 1 << 15), np.int64), (r,))
        shift = np.broadcast_to(np.asarray(self.rq.get("shift", 15), np.int64), (r,))
        zp = int(self.rq.get("zero_point", 0))
        relu = int(bool(self.rq.get("relu", False)))
        return [{"bias": int(bias[i]), "multiplier": int(mult[i]), "shift": int(shift[i]),
                 "zero_point": zp, "relu": relu} for i in range(r)]


@dataclass
class BenchResult:
    results: list            # (acc, out, last) per row, in order
    cycles: int              # o_cycles at the end
    stalls: int
    nnz: int
    error: int
    error_flags: int
    sim_cycles: int          # clock cycles simulated
    busy_cycles: list        # o_cycles delta per job (busy from command to decoder done)


def random_rq(rng: np.random.Generator, rows: int, *, relu: bool | None = None) -> dict:
    """Random but meaningful per-row requantization parameters."""
    return {
        "bias": rng.integers(-5000, 5000, rows),
        "multiplier": rng.integers(1 << 15, 1 << 16, rows),
        "shift": rng.integers(14, 24, rows),
        "zero_point": int(rng.integers(-20, 20)),
        "relu": bool(rng.integers(0, 2)) if relu is None else relu,
    }


def expected(cfg: SpmvConfig, job: Job) -> list[tuple[int, int, int]]:
    """Golden (acc, out, last) per row of one job."""
    acc = spmv_int(job.codes, job.x, acc_bits=cfg.acc_bits)
    p = job.rq_rows()
    out = requantize(acc, multiplier=np.array([q["multiplier"] for q in p]),
                     shift=np.array([q["shift"] for q in p]), bias=np.array([q["bias"] for q in p]),
                     out_zero_point=p[0]["zero_point"] if p else 0, relu=bool(p[0]["relu"]) if p else False)
    n = job.rows
    return [(int(acc[i]), int(out[i]), int(i == n - 1)) for i in range(n)]


def stream_items(cfg: SpmvConfig, jobs: list[Job]) -> dict:
    """Every input stream's items for ``jobs`` run back to back."""
    items = {"cmd": [], "act": [], "mask": [], "value": [], "rq": []}
    for job in jobs:
        items["cmd"].append({"rows": job.rows, "cols": job.cols})
        items["act"] += cfg.act_words(job.x)
        if cfg.dense:
            items["value"] += [{"data": d, "last": last} for d, last in cfg.dense_value_beats(job.codes)]
        else:
            img = bitmap_sections(job.codes, bits=cfg.weight_bits, block=cfg.block, bus_bits=cfg.bus_bits)
            items["mask"] += cfg.mask_beats(img)
            items["value"] += [{"data": d, "last": last} for d, last in cfg.value_beats(img)]
        items["rq"] += job.rq_rows()
    return items


def _set_struct(ctx, port, item):
    if isinstance(item, dict):
        for k, v in item.items():
            ctx.set(getattr(port.payload, k), v)
    else:
        ctx.set(port.payload, item)


def run_amaranth(cfg: SpmvConfig, jobs: list[Job], *, seed: int = 1, idle: float = 0.0,
                 backpressure: float = 0.0, max_cycles: int = 200_000, reset_after: int | None = None,
                 items: dict | None = None, expect_rows: int | None = None) -> BenchResult:
    """Run ``jobs`` through a fresh array in the Amaranth simulator.

    ``idle``/``backpressure``: probability of an idle cycle before each input item / of
    ``o_res.ready`` low in a cycle.  ``reset_after``: pulse ``rst`` after that many cycles, then
    (after the reset) run ``jobs`` again from the start: the results are those after the reset.
    ``items`` overrides the stream contents (malformed-stream tests); ``expect_rows`` the number
    of results to wait for.  Stops at ``max_cycles`` or once the expected rows are out and the
    array is idle.
    """
    from amaranth.hdl import ResetInserter, Signal
    from amaranth.sim import Simulator

    from sparsefab.gen.dense_mac import DenseMacArray
    from sparsefab.gen.sparse_mac import SparseMacArray

    dut = DenseMacArray(cfg) if cfg.dense else SparseMacArray(cfg)
    items = items if items is not None else stream_items(cfg, jobs)
    want = expect_rows if expect_rows is not None else sum(j.rows for j in jobs)
    rng = random.Random(seed)
    ports = {"cmd": dut.i_cmd, "act": dut.i_act, "value": dut.i_value, "rq": dut.i_rq}
    if not cfg.dense:
        ports["mask"] = dut.i_mask
    state = {"results": [], "done": False, "cycle": 0, "epoch": 0, "busy": [], "resetting": False}
    rst = Signal()
    sim = Simulator(ResetInserter({"sync": rst})(dut))
    sim.add_clock(1e-8)

    def driver(name, port, stream_rng):
        async def proc(ctx):
            epoch = -1
            while not state["done"]:
                if state["resetting"]:
                    ctx.set(port.valid, 0)
                    await ctx.tick()
                    continue
                if epoch != state["epoch"]:
                    epoch, idx = state["epoch"], 0
                seq = items[name]
                if idx >= len(seq):
                    ctx.set(port.valid, 0)
                    await ctx.tick()
                    continue
                if idle and stream_rng.random() < idle:
                    ctx.set(port.valid, 0)
                    await ctx.tick()
                    continue
                _set_struct(ctx, port, seq[idx])
                ctx.set(port.valid, 1)
                _, _, ready = await ctx.tick().sample(port.ready)
                if ready and epoch == state["epoch"]:
                    idx += 1
            ctx.set(port.valid, 0)
        return proc

    for name, port in ports.items():
        sim.add_testbench(driver(name, port, random.Random(rng.random())))

    async def monitor(ctx):
        mon_rng = random.Random(rng.random())
        busy_prev, was_busy = 0, False
        while state["cycle"] < max_cycles:
            if reset_after is not None and state["cycle"] == reset_after and state["epoch"] == 0:
                ctx.set(dut.o_res.ready, 0)
                state["resetting"] = True
                state["epoch"] = 1
                await ctx.tick()          # drivers see the flag and drop valid
                ctx.set(rst, 1)
                await ctx.tick()
                ctx.set(rst, 0)
                state["resetting"] = False
                state["results"].clear()
                state["busy"].clear()
                busy_prev, was_busy = 0, False
                state["cycle"] += 2
                continue
            rdy = int(not (backpressure and mon_rng.random() < backpressure))
            ctx.set(dut.o_res.ready, rdy)
            _, _, valid, payload, busy, cyc = await ctx.tick().sample(
                dut.o_res.valid, dut.o_res.payload, dut.o_busy, dut.o_cycles)
            state["cycle"] += 1
            if valid and rdy:
                state["results"].append((int(payload.acc), int(payload.out), int(payload.last)))
            if was_busy and not busy:
                state["busy"].append(int(cyc) - busy_prev)
                busy_prev = int(cyc)
            was_busy = bool(busy)
            if len(state["results"]) >= want and not busy and state["cycle"] > 4:
                if reset_after is None or state["epoch"] == 1:
                    break
            if ctx.get(dut.o_error) and not busy and len(state["results"]) >= want:
                break
        state["done"] = True
        for _ in range(2):
            await ctx.tick()

    sim.add_testbench(monitor)
    final = {}

    async def sampler(ctx):
        while not state["done"]:
            await ctx.tick()
        for key, sig in (("cycles", dut.o_cycles), ("stalls", dut.o_stalls), ("nnz", dut.o_nnz),
                         ("error", dut.o_error), ("flags", dut.o_error_flags)):
            final[key] = int(ctx.get(sig))

    sim.add_testbench(sampler)
    sim.run()
    return BenchResult(state["results"], final["cycles"], final["stalls"], final["nnz"], final["error"],
                       final["flags"], state["cycle"], list(state["busy"]))


@dataclass
class DecoderResult:
    triples: list            # (row, col, value) of every lane that fired, in order
    row_ends: int            # bundles with row_end
    cycles: int              # cycles simulated until the decoder went idle (or the limit)
    busy_cycles: int         # cycles with o_busy high
    error_flags: int
    lanes_fired: list        # lanes per accepted bundle


def run_decoder(cfg: SpmvConfig, codes, *, seed: int = 1, idle: float = 0.0, backpressure: float = 0.0,
                mask_beats: list | None = None, value_beats: list | None = None,
                max_cycles: int = 20_000, front_end=None) -> DecoderResult:
    """Run one matrix through a :class:`~sparsefab.gen.bitmap_decoder.BitmapDecoder` alone.

    The streams come from :func:`sparsefab.compress.bitmap.bitmap_sections` unless
    ``mask_beats``/``value_beats`` (lists of ints / of ``(data, last)``) override them (malformed
    stream tests).  Stops when the decoder is idle again after the command, or at ``max_cycles``.
    ``front_end``: another decoder class with the same ports (built as ``front_end(cfg)``).
    """
    from amaranth.sim import Simulator

    from sparsefab.gen.bitmap_decoder import BitmapDecoder

    codes = np.asarray(codes)
    rows, cols = codes.shape
    img = bitmap_sections(codes, bits=cfg.weight_bits, block=cfg.block, bus_bits=cfg.bus_bits)
    masks = cfg.mask_beats(img) if mask_beats is None else mask_beats
    vals = cfg.value_beats(img) if value_beats is None else value_beats
    if cfg.decoder == "compact":
        from sparsefab.gen.compact_decoder import CompactDecoder as BitmapDecoder  # same ports
    dut = (front_end or BitmapDecoder)(cfg)
    rng = random.Random(seed)
    out = {"triples": [], "row_ends": 0, "cycles": 0, "busy": 0, "fired": [], "done": False}
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    def driver(port, seq, srng, fields):
        async def proc(ctx):
            for item in seq:
                while idle and srng.random() < idle:
                    await ctx.tick()
                if fields:
                    ctx.set(port.payload.data, item[0])
                    ctx.set(port.payload.last, item[1])
                else:
                    ctx.set(port.payload, item)
                ctx.set(port.valid, 1)
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
        return proc

    async def cmd(ctx):
        ctx.set(dut.i_cmd.payload.rows, rows)
        ctx.set(dut.i_cmd.payload.cols, cols)
        ctx.set(dut.i_cmd.valid, 1)
        await ctx.tick().until(dut.i_cmd.ready)
        ctx.set(dut.i_cmd.valid, 0)

    async def monitor(ctx):
        mrng = random.Random(rng.random())
        row, started = 0, False
        while out["cycles"] < max_cycles:
            rdy = int(not (backpressure and mrng.random() < backpressure))
            ctx.set(dut.o_lanes.ready, rdy)
            _, _, valid, p, busy = await ctx.tick().sample(dut.o_lanes.valid, dut.o_lanes.payload, dut.o_busy)
            out["cycles"] += 1
            out["busy"] += int(busy)
            if valid and rdy:
                n = 0
                for i in range(cfg.lanes):
                    if p.valid >> i & 1:
                        out["triples"].append((row + (p.nxt >> i & 1), int(p.col[i]), int(p.value[i])))
                        n += 1
                out["fired"].append(n)
                if p.row_end:
                    row += 1
                    out["row_ends"] += 1
            started |= bool(busy)
            if started and not busy:
                break
        out["flags"] = int(ctx.get(dut.o_error_flags))

    srng = random.Random(rng.random())
    sim.add_testbench(cmd)
    sim.add_testbench(driver(dut.i_mask, masks, random.Random(srng.random()), False), background=True)
    sim.add_testbench(driver(dut.i_value, vals, random.Random(srng.random()), True), background=True)
    sim.add_testbench(monitor)
    sim.run()
    # The background drivers may still wait on a port (a malformed stream leaves beats unconsumed);
    # their coroutines are collected here, at a known point, not during some later unrelated code.
    del sim
    gc.collect()
    return DecoderResult(out["triples"], out["row_ends"], out["cycles"], out["busy"], out["flags"], out["fired"])
