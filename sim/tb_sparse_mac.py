"""cocotb scoreboard bench of the sparse MAC array (and its dense baseline).

Run by :func:`run_case` (pytest: tests/test_sparse_mac.py, tests/test_dense_mac.py) through
the project's runner (``sim/runner.py``: cached Verilator/Icarus builds) and stream components
(``sim/streams.py``).  The case file (``SPARSEFAB_SPMV_CASE``, JSON) holds the packed payloads
of every input stream, made by :func:`sparsefab.sim.tb_spmv.stream_items` from the golden
model's bitmap sections, and the expected results from :func:`sparsefab.sim.tb_spmv.expected`
(``spmv_int`` + ``requantize``); the bench never re-derives them.  Drivers insert seeded random
idle cycles, the monitor applies seeded random backpressure, the seed is in every failure
message, waves only with ``WAVES=1`` (the runner's switch).

Tests: ``spmv_scoreboard`` (all jobs back to back; counters ``o_nnz`` and ``o_error`` checked,
busy cycles bounded), ``spmv_reset_midrow`` (reset while the first job is mid-row, then
the whole case again must come out right) and ``requant_scoreboard`` (the output stage alone,
:func:`run_requant_case`, also as the ECP5 netlist with its DSP primitives).
"""

from __future__ import annotations

import json

from sparsefab.sim.streams import cocotb_test, read_case, write_result

STREAMS = ("i_cmd", "i_act", "i_mask", "i_value", "i_rq")


def _ports(case) -> list[str]:
    """The input streams the case feeds: the array's five, in :data:`STREAMS` order, then any
    others it names (the engine cluster's per-engine ``i_mask__<e>`` / ``i_value__<e>``)."""
    items = case["items"]
    return [p for p in STREAMS if p in items] + sorted(p for p in items if p not in STREAMS)


async def _run_all(dut, case, seed, clk):
    from sparsefab.sim.streams import PayloadCodec, Scoreboard, StreamDriver, StreamMonitor

    board = Scoreboard([tuple(e) for e in case["expected"]], name="o_res", seed=seed)
    codec = PayloadCodec.from_json(case["res_layout"])

    def item(d):
        return (d["acc"], d["out"], d["last"])

    mon = StreamMonitor(dut, "o_res", codec=codec, backpressure=case["backpressure"],
                        callback=lambda d: board.add(item(d)), seed=seed)
    drivers = []
    for port in _ports(case):
        drv = StreamDriver(dut, port, idle=case["idle"], seed=seed)
        drv.send(case["items"][port])
        drivers.append(drv)
    await mon.wait_for(len(case["expected"]), timeout_cycles=case["timeout"])
    return board, mon, drivers


@cocotb_test
async def spmv_scoreboard(dut):
    from cocotb.triggers import FallingEdge

    from sparsefab.sim.streams import get_seed, start_clock_and_reset

    case = read_case("SPARSEFAB_SPMV_CASE")
    seed = get_seed()
    clk = await start_clock_and_reset(dut)
    board, mon, _ = await _run_all(dut, case, seed, clk)
    board.finish()
    for _ in range(4):
        await FallingEdge(clk)
    got = {k: int(getattr(dut, k).value) for k in ("o_cycles", "o_stalls", "o_nnz", "o_error", "o_error_flags",
                                                   "o_busy")}
    assert got["o_error"] == 0, f"o_error raised (flags {got['o_error_flags']:#x}) on a well-formed case (seed {seed})"
    assert got["o_nnz"] == case["nnz"], f"o_nnz {got['o_nnz']} != {case['nnz']} multiplied nonzeros (seed {seed})"
    if case.get("max_busy") is not None:
        assert got["o_cycles"] <= case["max_busy"], \
            f"busy cycles {got['o_cycles']} > bound {case['max_busy']} (seed {seed})"
    write_result("SPARSEFAB_SPMV_OUT", got)


@cocotb_test
async def spmv_reset_midrow(dut):
    from cocotb.triggers import FallingEdge

    from sparsefab.sim.streams import StreamDriver, get_seed, start_clock_and_reset

    case = read_case("SPARSEFAB_SPMV_CASE")
    seed = get_seed()
    clk = await start_clock_and_reset(dut)
    # Start the case without a monitor draining results; reset once the array is busy mid-matrix.
    drivers = []
    for port in _ports(case):
        drv = StreamDriver(dut, port, seed=seed)
        drv.send(case["items"][port])
        drivers.append(drv)
    dut.o_res__ready.value = 1
    n = 0
    while int(dut.o_nnz.value) < max(1, case["nnz"] // 3) and n < case["timeout"]:
        await FallingEdge(clk)
        n += 1
    assert int(dut.o_busy.value) == 1 or case["nnz"] == 0, f"array not busy when resetting (seed {seed})"
    for drv in drivers:   # abandon the drivers mid-stream (streams.py has no public stop yet)
        drv._queue.clear()
        drv._task.cancel()
    # The drivers are abandoned mid-stream; a fresh reset and a fresh set of drivers start over.
    for port in _ports(case):
        getattr(dut, f"{port}__valid").value = 0
    dut.rst.value = 1
    for _ in range(2):
        await FallingEdge(clk)
    dut.rst.value = 0
    board, mon, _ = await _run_all(dut, case, seed + 1, clk)
    board.finish()
    for _ in range(4):
        await FallingEdge(clk)
    assert int(dut.o_error.value) == 0, f"o_error after reset (seed {seed})"
    assert int(dut.o_nnz.value) == case["nnz"], f"o_nnz {int(dut.o_nnz.value)} != {case['nnz']} (seed {seed})"
    write_result("SPARSEFAB_SPMV_OUT", {"o_cycles": int(dut.o_cycles.value)})


@cocotb_test
async def requant_scoreboard(dut):
    """The output stage alone (:class:`sparsefab.gen.sparse_mac.RequantStage`): ``i_acc`` and
    ``i_rq`` driven with their own idle cycles, ``o_res`` against the golden requantization."""
    from sparsefab.sim.streams import get_seed, start_clock_and_reset

    case = read_case("SPARSEFAB_SPMV_CASE")
    seed = get_seed()
    clk = await start_clock_and_reset(dut)
    board, _, _ = await _run_all(dut, case, seed, clk)
    board.finish()


def run_requant_case(cfg, rows, *, seed: int = 1, idle: float = 0.2, backpressure: float = 0.3,
                     simulator: str = "verilator", family: str | None = None) -> None:
    """Build (cached) and run :func:`requant_scoreboard` on ``rows``: ``(acc, bias, multiplier,
    shift, zero_point, relu)`` tuples, the last row marked ``last``.

    ``family`` (e.g. ``"ecp5"``) simulates the netlist that FPGA family gets, its MULT18X18D
    primitives with the models of :mod:`sparsefab.sim.vendor_models`.  Expected outputs come
    from :func:`sparsefab.compress.quant.requantize`.  Raises
    :class:`sparsefab.sim.runner.SimulationFailed` (seed in the message) on a mismatch.
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    from sparsefab.compress.quant import requantize
    from sparsefab.gen.sparse_mac import RequantStage, res_layout, row_layout, rq_layout
    from sparsefab.sim.runner import run_cocotb
    from sparsefab.sim.streams import PayloadCodec, layout_json

    dut = RequantStage(cfg)
    acc_c, rq_c = PayloadCodec.from_layout(row_layout(cfg)), PayloadCodec.from_layout(rq_layout())
    n = len(rows)
    items = {"i_acc": [acc_c.pack({"acc": int(r[0]), "last": int(i == n - 1)}) for i, r in enumerate(rows)],
             "i_rq": [rq_c.pack(dict(zip(("bias", "multiplier", "shift", "zero_point", "relu"),
                                         (int(v) for v in r[1:]), strict=True))) for r in rows]}
    exp = [[int(r[0]), int(requantize(np.array([r[0]]), multiplier=int(r[2]), shift=int(r[3]), bias=int(r[1]),
                                      out_zero_point=int(r[4]), relu=bool(r[5]))[0]), int(i == n - 1)]
           for i, r in enumerate(rows)]
    case = {"items": items, "expected": exp, "idle": idle, "backpressure": backpressure,
            "res_layout": layout_json(res_layout(cfg)), "timeout": 1000 + 20 * n}
    design, params = dut, {**cfg.to_dict(), "block": "requant"}
    if family is not None:
        from sparsefab.sim.vendor_models import family_verilog

        design = family_verilog(dut, name="requant", family=family)
        params["family"] = family
    with tempfile.TemporaryDirectory(prefix="sfrq-") as tmp:
        cf = Path(tmp) / "case.json"
        cf.write_text(json.dumps(case))
        run_cocotb(design, toplevel="requant", test_module="sparsefab.sim.tb_sparse_mac",
                   testcase="requant_scoreboard", parameters=params, simulator=simulator,
                   extra_env={"SPARSEFAB_SPMV_CASE": str(cf), "SPARSEFAB_SEED": str(seed)})


def run_case(cfg, jobs, *, seed: int = 1, idle: float = 0.2, backpressure: float = 0.2,
             simulator: str = "verilator", testcase: str = "spmv_scoreboard",
             max_busy: int | None = None) -> dict:
    """Build (cached) and run the bench on ``jobs`` (:class:`sparsefab.sim.tb_spmv.Job`) back to back.

    Returns the array's counters at the end (``o_cycles``, ``o_stalls``, ``o_nnz``, ...).
    Raises :class:`sparsefab.sim.runner.SimulationFailed` (seed in the message) on a mismatch.
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    from sparsefab.gen.bitmap_decoder import cmd_layout, value_layout
    from sparsefab.gen.sparse_mac import res_layout, rq_layout
    from sparsefab.sim.runner import run_cocotb
    from sparsefab.sim.streams import PayloadCodec, layout_json
    from sparsefab.sim.tb_spmv import expected, stream_items

    if cfg.dense:
        from sparsefab.gen.dense_mac import DenseMacArray as Top
    else:
        from sparsefab.gen.sparse_mac import SparseMacArray as Top
    dut = Top(cfg)
    raw = stream_items(cfg, jobs)
    codecs = {"cmd": PayloadCodec.from_layout(cmd_layout(cfg)), "value": PayloadCodec.from_layout(value_layout(cfg)),
              "rq": PayloadCodec.from_layout(rq_layout())}
    items = {}
    for key, seq in raw.items():
        if cfg.dense and key == "mask":
            continue
        c = codecs.get(key)
        items[f"i_{key}"] = [c.pack(v) if c is not None else int(v) for v in seq]
    exp = [list(e) for j in jobs for e in expected(cfg, j)]
    nnz = sum(int(np.count_nonzero(j.codes)) for j in jobs)
    if cfg.dense:
        nnz = sum(j.rows * j.cols for j in jobs)
    total = sum(len(v) for v in items.values())
    case = {"items": items, "expected": exp, "nnz": nnz, "idle": idle, "backpressure": backpressure,
            "res_layout": layout_json(res_layout(cfg)), "max_busy": max_busy,
            "timeout": 5000 + 20 * (total + sum(j.rows * (j.cols + 1) for j in jobs))}
    with tempfile.TemporaryDirectory(prefix="sfspmv-") as tmp:
        cf, of = Path(tmp) / "case.json", Path(tmp) / "out.json"
        cf.write_text(json.dumps(case))
        run_cocotb(dut, toplevel=cfg.name, test_module="sparsefab.sim.tb_sparse_mac", testcase=testcase,
                   parameters=cfg.to_dict(), simulator=simulator,
                   extra_env={"SPARSEFAB_SPMV_CASE": str(cf), "SPARSEFAB_SPMV_OUT": str(of),
                              "SPARSEFAB_SEED": str(seed)})
        return json.loads(of.read_text())
