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


# ---------------------------------------------------------------------------------------------
# Compiled Verilator harness (sim/flow.py): Python never steps a cycle
# ---------------------------------------------------------------------------------------------

def _mask(values, bits: int) -> list[int]:
    m = (1 << bits) - 1
    return [int(v) & m for v in values]


def _desc_ints(dut, desc: list[dict]) -> list[int]:
    layout = dut.config.desc_layout()
    return [int(layout.const(d).as_value().value) for d in desc]


def run_verilator(dut, runs: list[Beats], *, seed: int = 1, idle: float = 0.0, backpressure: float = 0.0,
                  configure: bool = True, harness=None) -> dict:
    """Play one or more products back to back through the compiled flow harness.

    The permutation tables are loaded once, then each run's ``x``, descriptors and weights follow.
    Returns ``y`` (``[len(runs), rows]``), the counters of the LAST run, the harness cycle count
    of all runs together and the wall time.
    """
    from sparsefab.sim.flow import FlowHarness

    c = dut.config
    h = harness or FlowHarness(dut, toplevel="tile_controller")
    inputs = {
        "i_cfg": runs[0].cfg if configure else [],
        "i_x": [v for b in runs for v in _mask(b.x, c.x_bits)],
        "i_tile": [v for b in runs for v in _desc_ints(dut, b.tile)],
        "i_w": [v for b in runs for v in b.w],
    }
    if c.hybrid:
        inputs["i_sparse"] = [v for b in runs for v in _mask(b.sparse, c.acc_bits)]
    # The configuration must come first: the controller leaves IDLE for CFG when i_cfg is
    # valid (priority over i_x), so i_cfg is offered from cycle 0 without idle cycles.
    budget = 1000 + sum(8 * (len(b.w) + len(b.x) + c.rows + len(b.cfg)) for b in runs)
    res = h.run(inputs, expect={"o_y": c.rows * len(runs)}, max_cycles=budget, drain=4,
                stall_in={**{k: idle for k in inputs}, "i_cfg": 0.0}, stall_out=backpressure,
                seed=seed)
    if not res.done:
        raise SparsefabError(f"crossbar sim: no result within {budget} cycles "
                             f"({len(res.outputs['o_y'])} of {c.rows * len(runs)} outputs)")
    y = res.field("o_y", 0, c.acc_bits, signed=True)[: c.rows * len(runs)].reshape(len(runs), c.rows)
    out = {"y": y, "harness_cycles": int(res.cycles), "wall_s": float(res.wall_s),
           "built": bool(h.built), "build_s": float(h.build_seconds)}
    for k in ("cycles", "tiles_run", "tiles_skipped", "stalls", "prog_beats"):
        out[k] = int(res.counters[k])
    return out


def simulate(w, x, *, tile: int, engines: int = 2, lanes: int | None = None, tmap: TileMap | None = None,
             cluster: bool = False, fill: float = 0.0, seed: int = 0, backend: str = "auto",
             idle: float = 0.0, backpressure: float = 0.0, sparse_lanes: int = 8) -> dict:
    """``sparsefab sim crossbar``: map (optionally cluster), run the RTL, check against the golden model.

    Parameters
    ----------
    w : int array [rows, cols] of int8 codes
    x : int array [cols] or [n, cols] of int8 codes
    tile, engines, lanes : TileController parameters (``lanes`` default ``tile``).
    tmap : TileMap, optional
        Use this mapping instead of building one (``cluster``/``fill`` then ignored).
    cluster : bool
        Cluster rows/columns first (spectral + refine, ``seed``).
    fill : float
        Hybrid fill threshold: tiles below it go to the sparse part (added via ``i_sparse``).
    backend : "verilator", "amaranth" or "auto"
        ``auto`` = the compiled Verilator harness when ``verilator`` is on PATH, else the
        Amaranth simulator (small sizes only: Python steps every cycle).
    sparse_lanes : int
        Hybrid mode with the Verilator backend: the leftover ``W_sparse @ x`` is computed by the
        SparseMacArray RTL (:func:`sparsefab.sim.spmv_flow.run_spmv`, ``sparse_lanes`` lanes,
        bitmap format), checked, and its accumulators are streamed into the controller's
        ``i_sparse`` port, which adds them to the crossbar outputs.  (The two engines run as
        separate simulations: ``sparse_cycles`` is reported beside ``cycles``; on a chip they
        run concurrently.)  With the Amaranth backend the leftover comes from the golden model.

    Returns
    -------
    dict with ``y`` (int32 ``[rows]`` or ``[n, rows]``, original row order), ``cycles``,
    ``tiles_run``, ``tiles_skipped``, ``stalls``, ``prog_beats``, the ideal cycle figures and the
    mapping summary.  Raises if the RTL disagrees with the golden model.
    """
    import shutil

    from sparsefab.compress import cluster as cl
    from sparsefab.compress import tiling
    from sparsefab.gen.tile_controller import TileController, TileControllerConfig

    w = xb.check_codes(tiling.as_matrix(w, "weights"), 8, "weights")
    x = xb.check_codes(np.asarray(x), 8, "x")
    if x.ndim not in (1, 2) or x.shape[-1] != w.shape[1]:
        raise SparsefabError(f"x: shape {x.shape}, expected ({w.shape[1]},) or (n, {w.shape[1]}) "
                             f"for weights of shape {w.shape}")
    if backend not in ("auto", "verilator", "amaranth"):
        raise SparsefabError(f"backend={backend!r}: expected auto, verilator or amaranth")
    lanes = tile if lanes is None else lanes
    info = {}
    if tmap is None:
        rp = cp = None
        if cluster:
            res = cl.cluster(w, tile=tile, seed=seed)
            rp, cp = res.row_perm, res.col_perm
            info["cluster"] = res.summary()
        tmap = tiling.build_map(w, tile=tile, row_perm=rp, col_perm=cp, fill=fill, clustered=cluster)
    xs = x[None] if x.ndim == 1 else x
    hybrid = tmap.leftover_nnz > 0
    kw = dict(rows=w.shape[0], cols=w.shape[1], tile=tmap.tile, engines=engines, lanes=lanes, hybrid=hybrid)
    TileControllerConfig(**kw)  # validate before elaborating anything
    dut = TileController(**kw)
    runs = [controller_beats(w, v, tmap, engines=engines, lanes=lanes, hybrid=hybrid) for v in xs]
    if backend == "auto":
        backend = "verilator" if shutil.which("verilator") else "amaranth"
    if hybrid and backend == "verilator":
        from sparsefab.sim.spmv_flow import run_spmv

        _, left = tiling.split(w, tmap)
        sp = run_spmv(left, xs, lanes=sparse_lanes, seed=seed + 2)
        ys = np.asarray(sp.y).reshape(len(xs), -1)
        gold = xb.wrap(xs @ left.T, 32)
        if not (ys == gold).all():
            raise SparsefabError("crossbar sim: SparseMacArray leftover result differs from the golden model")
        for b, v in zip(runs, ys, strict=True):
            b.sparse = [int(t) for t in v]
        info["sparse"] = {"engine": "SparseMacArray RTL", "lanes": sparse_lanes, "nnz": int(np.count_nonzero(left)),
                          "sparse_cycles": int(sp.cycles), "sparse_ideal_cycles": int(sp.ideal_cycles)}
    elif hybrid:
        info["sparse"] = {"engine": "golden model (Amaranth backend)", "nnz": int(tmap.leftover_nnz)}
    if backend == "verilator":
        r = run_verilator(dut, runs, seed=seed + 1, idle=idle, backpressure=backpressure)
        y = r.pop("y")
    else:
        ys = []
        for k, b in enumerate(runs):
            r = run_amaranth(dut, b, seed=seed + k, idle=idle, backpressure=backpressure)
            ys.append(r.pop("y"))
        y = np.stack(ys)
    ref = xb.crossbar_matvec(w, xs, tmap)
    if not (y == ref).all():
        bad = np.argwhere(y != ref)[0]
        raise SparsefabError(f"crossbar sim: RTL y[{tuple(int(i) for i in bad)}] = {int(y[tuple(bad)])}, "
                             f"golden {int(ref[tuple(bad)])}")
    ideal = xb.ideal_cycles(tmap, engines=engines, lanes=lanes)
    out = {"y": (y[0] if x.ndim == 1 else y).astype(np.int32), "backend": backend, **r,
           "ideal": ideal, "map": tmap.summary(), **info}
    out["ideal_total"] = ideal["compute"] + ideal["program"] + ideal["io"]
    return out
