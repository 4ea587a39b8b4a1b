"""cocotb scoreboard bench of the TileController (and its CrossbarTile engines).

Driven by :func:`run_case` (pytest: tests/test_tile_controller.py) through the project's
runner (``sim/runner.py``, cached Verilator builds) and stream components (``sim/streams.py``).
The case file (``SPARSEFAB_XB_CASE``, JSON) holds the stream beats made by
:func:`sparsefab.sim.crossbar_flow.controller_beats` from the golden model and the expected
``y`` from :func:`sparsefab.compress.crossbar.crossbar_matvec`; the bench never re-derives
them.  Drivers insert seeded random idle cycles, the monitor applies seeded random
backpressure; the seed is in every failure message.
"""

from __future__ import annotations

import json

from sparsefab.sim.streams import cocotb_test, read_case, write_result


@cocotb_test
async def crossbar_scoreboard(dut):
    from cocotb.triggers import FallingEdge

    from sparsefab.sim.streams import (
        PayloadCodec,
        Scoreboard,
        StreamDriver,
        StreamMonitor,
        get_seed,
        start_clock_and_reset,
    )

    case = read_case("SPARSEFAB_XB_CASE")
    seed = get_seed()
    idle, bp = case["idle"], case["backpressure"]
    clk = await start_clock_and_reset(dut)
    # Permutation tables first (the controller leaves IDLE for whichever stream is valid).
    await StreamDriver(dut, "i_cfg", seed=seed).send_and_wait(case["cfg"], timeout_cycles=100_000)
    acc = case["acc_bits"]
    ycodec = PayloadCodec.from_json([{"name": "", "offset": 0, "width": acc, "signed": True}], acc)
    board = Scoreboard(case["expected"], name="o_y", seed=seed)
    mon = StreamMonitor(dut, "o_y", codec=ycodec, backpressure=bp, callback=board.add, seed=seed)
    mask_x = (1 << case["x_bits"]) - 1
    drivers = [StreamDriver(dut, "i_x", idle=idle, seed=seed), StreamDriver(dut, "i_tile", idle=idle, seed=seed),
               StreamDriver(dut, "i_w", idle=idle, seed=seed)]
    for run in range(case["runs"]):
        drivers[0].send([v & mask_x for v in case["x"][run]])
        drivers[1].send(case["tile"][run])
        drivers[2].send(case["w"][run])
        if case["sparse"] is not None:
            if run == 0:
                drivers.append(StreamDriver(dut, "i_sparse", idle=idle, seed=seed))
            drivers[3].send([v & ((1 << acc) - 1) for v in case["sparse"][run]])
    await mon.wait_for(len(case["expected"]), timeout_cycles=case["timeout"])
    board.finish()
    for _ in range(4):
        await FallingEdge(clk)
    got = {k: int(getattr(dut, k).value) for k in ("cycles", "tiles_run", "tiles_skipped", "stalls",
                                                   "prog_beats")}
    for k, v in case["counters"].items():
        assert got[k] == v, f"counter {k}: got {got[k]}, expected {v} (seed {seed})"
    if case.get("max_cycles") is not None:
        assert got["cycles"] <= case["max_cycles"], f"cycles {got['cycles']} > {case['max_cycles']} (seed {seed})"
    write_result("SPARSEFAB_XB_OUT", got)


def run_case(w, xs, tmap, *, engines: int, lanes: int, seed: int, idle: float = 0.2, backpressure: float = 0.2,
             max_cycles: int | None = None, simulator: str = "verilator") -> dict:
    """Build (cached) and run the bench for ``y = W x`` for each row of ``xs``; returns the counters."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from sparsefab.compress import crossbar as xb
    from sparsefab.gen.tile_controller import TileController
    from sparsefab.sim.crossbar_flow import _desc_ints, controller_beats
    from sparsefab.sim.runner import run_cocotb

    xs = np.atleast_2d(xs)
    hybrid = tmap.leftover_nnz > 0
    dut = TileController(rows=tmap.rows, cols=tmap.cols, tile=tmap.tile, engines=engines, lanes=lanes,
                         hybrid=hybrid)
    beats = [controller_beats(w, x, tmap, engines=engines, lanes=lanes, hybrid=hybrid) for x in xs]
    expected = xb.crossbar_matvec(w, xs, tmap).reshape(-1).tolist()
    case = {"cfg": beats[0].cfg, "x": [b.x for b in beats], "tile": [_desc_ints(dut, b.tile) for b in beats],
            "w": [b.w for b in beats], "sparse": [b.sparse for b in beats] if hybrid else None,
            "runs": len(beats), "expected": expected, "acc_bits": 32, "x_bits": 8, "idle": idle,
            "backpressure": backpressure, "max_cycles": max_cycles,
            "timeout": 2000 + 20 * sum(len(b.w) + len(b.x) + tmap.rows for b in beats),
            "counters": {"tiles_run": tmap.n_tiles, "tiles_skipped": tmap.tiles_total - tmap.n_tiles,
                         "prog_beats": beats[-1].n_waves * dut.config.tile_config.words}}
    with tempfile.TemporaryDirectory(prefix="sfxb-") as tmp:
        cf, of = Path(tmp) / "case.json", Path(tmp) / "out.json"
        cf.write_text(json.dumps(case))
        params = {k: v for k, v in vars(dut.config).items()}
        run_cocotb(dut, toplevel="tile_controller", test_module="sparsefab.sim.tb_crossbar",
                   testcase="crossbar_scoreboard", parameters=params, simulator=simulator,
                   extra_env={"SPARSEFAB_XB_CASE": str(cf), "SPARSEFAB_XB_OUT": str(of),
                              "SPARSEFAB_SEED": str(seed)})
        return json.loads(of.read_text())
