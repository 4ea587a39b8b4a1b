"""Crossbar flow: golden model -> TileController stream beats -> simulation -> y, cycles, counters.

:func:`controller_beats` turns a matrix, an input vector and a tile map into the exact beats
of every TileController input stream (from :func:`sparsefab.compress.crossbar.controller_inputs`,
never re-derived here).  :func:`run_amaranth` plays them through the Amaranth simulator
(small runs, tests), :func:`run_verilator` through cocotb + Verilator (the scoreboard bench
``sim/tb_crossbar_controller.py``).  :func:`simulate` is what ``sparsefab sim crossbar``
calls.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from sparsefab.compress import crossbar as xb
from sparsefab.compress.errors import SparsefabError
from sparsefab.compress.tiling import TileMap, split


def _pack_rows(codes: np.ndarray, bits: int) -> list[int]:
    """Each row of signed codes -> one int, code k at bits [k*bits, (k+1)*bits)."""
    u = (np.asarray(codes, dtype=np.int64) & ((1 << bits) - 1)).astype(np.uint64)
    width = codes.shape[1] * bits
    if width % 8 == 0 and bits == 8:
        raw = u.astype(np.uint8).tobytes()
        n = width // 8
        return [int.from_bytes(raw[i * n:(i + 1) * n], "little") for i in range(codes.shape[0])]
    shifts = [k * bits for k in range(codes.shape[1])]
    return [sum(int(v) << s for v, s in zip(row, shifts, strict=True)) for row in u]


@dataclass
class Beats:
    """Stream contents of one TileController run (Python ints / dicts, ready to drive)."""

    cfg: list[int]
    x: list[int]
    tile: list[dict]
    w: list[int]
    sparse: list[int] | None
    n_tiles: int
    n_waves: int


def controller_beats(w, x, tmap: TileMap, *, engines: int, lanes: int, w_bits: int = 8,
                     hybrid: bool = False, acc_bits: int = 32) -> Beats:
    """Beats of every TileController input for ``y = W @ x`` (one vector ``x``)."""
    ins = xb.controller_inputs(w, x, tmap, engines=engines, lanes=lanes)
    nw, words = ins["weights"].shape[:2]
    wbeats = _pack_rows(ins["weights"].reshape(nw * words, engines * lanes), w_bits)
    desc = []
    for k in range(nw):
        desc.append({"end": 0, "slot": [
            {"valid": int(ins["valid"][k, e]), "tr": int(ins["tr"][k, e]), "tc": int(ins["tc"][k, e]),
             "first": int(ins["first"][k, e]), "last": int(ins["last"][k, e])} for e in range(engines)]})
    desc.append({"end": 1, "slot": [{"valid": 0, "tr": 0, "tc": 0, "first": 0, "last": 0}] * engines})
    sparse = None
    if hybrid:
        _, left = split(w, tmap)
        sparse = xb.wrap(left.astype(np.int64) @ np.asarray(x, dtype=np.int64), acc_bits).tolist()
    return Beats(cfg=[int(v) for v in ins["cfg_in"]] + [int(v) for v in ins["cfg_out"]],
                 x=[int(v) for v in ins["x"]], tile=desc, w=wbeats, sparse=sparse,
                 n_tiles=tmap.n_tiles, n_waves=nw)


def run_amaranth(dut, beats: Beats, *, seed: int = 0, idle: float = 0.0, backpressure: float = 0.0,
                 configure: bool = True, max_cycles: int | None = None) -> dict:
    """Run one product through the Amaranth simulator; returns y and the counters."""
    from amaranth.sim import Simulator

    rng = random.Random(seed)
    c = dut.config
    out: dict = {"y": []}
    limit = max_cycles or 200 + 4 * (len(beats.w) + len(beats.x) + len(beats.cfg) + c.rows) + \
        (beats.n_waves + 2) * c.tile * c.tile // c.lanes * 2

    def driver(port, items, gate=None):
        async def proc(ctx):
            if gate is not None:
                await gate(ctx)
            for it in items:
                while idle and rng.random() < idle:
                    await ctx.tick()
                ctx.set(port.valid, 1)
                ctx.set(port.payload, it)
                await ctx.tick().until(port.ready)
                ctx.set(port.valid, 0)
        return proc

    cfg_done = [not configure]

    async def cfg_proc(ctx):
        if configure:
            await driver(dut.i_cfg, beats.cfg)(ctx)
            await ctx.tick().repeat(2)
        cfg_done[0] = True

    async def wait_cfg(ctx):
        while not cfg_done[0]:
            await ctx.tick()

    async def sink(ctx):
        n = 0
        while len(out["y"]) < c.rows:
            n += 1
            if n > limit:
                return
            ready = not backpressure or rng.random() >= backpressure
            ctx.set(dut.o_y.ready, ready)
            valid = ctx.get(dut.o_y.valid)
            val = ctx.get(dut.o_y.payload)
            await ctx.tick()
            if ready and valid:
                out["y"].append(int(val))
        ctx.set(dut.o_y.ready, 0)
        while not ctx.get(dut.done):
            n += 1
            if n > limit:
                return
            await ctx.tick()
        for k in ("cycles", "tiles_run", "tiles_skipped", "stalls", "prog_beats"):
            out[k] = int(ctx.get(getattr(dut, k)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(cfg_proc, background=True)
    sim.add_testbench(driver(dut.i_x, beats.x, wait_cfg), background=True)
    sim.add_testbench(driver(dut.i_tile, beats.tile, wait_cfg), background=True)
    sim.add_testbench(driver(dut.i_w, beats.w, wait_cfg), background=True)
    if beats.sparse is not None:
        sim.add_testbench(driver(dut.i_sparse, beats.sparse, wait_cfg), background=True)
    sim.add_testbench(sink)
    sim.run()
    if "cycles" not in out:
        raise SparsefabError(f"crossbar sim: no result after {limit} cycles "
                             f"({len(out['y'])} of {c.rows} outputs)")
    out["y"] = np.array(out["y"], dtype=np.int64)
    return out
