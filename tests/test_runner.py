"""Smoke test of the hardware toolchain: Amaranth -> Verilog -> cocotb (+Verilator, +Icarus).

The pytest functions below call :func:`sparsefab.sim.runner.run_cocotb`; the simulator then
imports this same module and runs the ``@cocotb.test`` functions (named ``cocotb_*`` so
pytest does not collect them).
"""


import random
from pathlib import Path

import cocotb
import pytest
from amaranth import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sparsefab.sim.runner import SimulationFailed, available_simulators, build_key, run_cocotb, verilog_text
from sparsefab.sim.streams import (
    PayloadCodec,
    Scoreboard,
    StreamDriver,
    StreamMonitor,
    get_seed,
    layout_json,
    params_from_env,
    start_clock_and_reset,
)

HERE = Path(__file__).parent
N_ITEMS = 300


class InPayload(data.Struct):
    a: signed(8)
    b: unsigned(8)


class OutPayload(data.Struct):
    prod: signed(19)
    diff: signed(10)


class SmokeMac(wiring.Component):
    """Registered stream stage: ``o.prod = a * b * scale``, ``o.diff = a - b``.

    Ports: ``i_x`` (in, stream of InPayload), ``o_y`` (out, stream of OutPayload).
    Latency 1 cycle; full throughput; standard backpressure (``i_x.ready`` = output free).
    """

    def __init__(self, *, scale: int = 1):
        self.scale = scale
        super().__init__({"i_x": In(stream.Signature(InPayload)), "o_y": Out(stream.Signature(OutPayload))})

    def elaborate(self, platform):
        m = Module()
        free = ~self.o_y.valid | self.o_y.ready
        m.d.comb += self.i_x.ready.eq(free)
        with m.If(free):
            m.d.sync += [
                self.o_y.valid.eq(self.i_x.valid),
                self.o_y.payload.prod.eq(self.i_x.payload.a * self.i_x.payload.b * self.scale),
                self.o_y.payload.diff.eq(self.i_x.payload.a - self.i_x.payload.b),
            ]
        return m


def smoke_golden(a: int, b: int, scale: int) -> dict[str, int]:
    return {"prod": a * b * scale, "diff": a - b}


# ---------------------------------------------------------------------------- cocotb side

async def _run_items(dut, *, corrupt: bool = False):
    params = params_from_env()
    seed = get_seed()
    rng = random.Random(seed)
    items = [{"a": rng.randint(-128, 127), "b": rng.randint(0, 255)} for _ in range(N_ITEMS)]
    items += [{"a": -128, "b": 255}, {"a": 127, "b": 255}, {"a": 0, "b": 0}]
    expected = [smoke_golden(it["a"], it["b"], params["scale"]) for it in items]
    if corrupt:
        expected[7] = {**expected[7], "diff": expected[7]["diff"] + 1}
    await start_clock_and_reset(dut)
    board = Scoreboard(expected, name="o_y", seed=seed)
    drv = StreamDriver(dut, "i_x", codec=PayloadCodec.from_layout(InPayload), idle=0.3, seed=seed)
    # the output codec comes from the JSON description, as a generator's sidecar would carry it
    mon = StreamMonitor(dut, "o_y", codec=PayloadCodec.from_json(layout_json(OutPayload)),
                        backpressure=0.3, callback=board.add, seed=seed)
    drv.send(items)
    await drv.wait_idle(timeout_cycles=20 * len(items))
    await mon.wait_for(len(items), timeout_cycles=20 * len(items))
    board.finish()
    dut._log.info("smoke: %d items through, %d cycles, seed %d", len(items), mon.cycles, seed)


@cocotb.test()
async def cocotb_smoke(dut):
    """Random items with idle cycles and backpressure; all must match the golden function."""
    await _run_items(dut)


@cocotb.test()
async def cocotb_must_fail(dut):
    """A deliberately wrong expectation: the runner must report this test as failed."""
    await _run_items(dut, corrupt=True)


# ---------------------------------------------------------------------------- pytest side

SIMS = available_simulators()


@pytest.mark.parametrize("simulator", ["verilator", "icarus"])
def test_smoke_cocotb_and_cache(simulator):
    """The toolchain is alive; a second run of an unchanged design skips the build.

    Whichever run comes first (any xdist worker) builds under the build lock; every later
    run of the same design point must reuse the binary untouched.
    """
    if simulator not in SIMS:
        pytest.skip(f"{simulator} not installed")
    kw = dict(toplevel="smoke_mac", test_module="test_runner", parameters={"scale": 3}, simulator=simulator,
              testcase="cocotb_smoke", python_paths=[HERE], extra_env={"SPARSEFAB_SEED": 1234})
    first = run_cocotb(SmokeMac(scale=3), **kw)
    assert first.tests == {"cocotb_smoke": "pass"}, first
    assert (first.build_dir / ".sparsefab_built").is_file()
    stamp = [(p.name, p.stat().st_mtime_ns) for p in sorted(first.build_dir.iterdir()) if p.is_file()]
    second = run_cocotb(SmokeMac(scale=3), **kw)
    assert not second.built and second.build_seconds == 0.0 and second.build_dir == first.build_dir
    assert [(p.name, p.stat().st_mtime_ns) for p in sorted(first.build_dir.iterdir()) if p.is_file()] == stamp
    assert second.tests == {"cocotb_smoke": "pass"}


def test_failing_cocotb_test_raises():
    with pytest.raises(SimulationFailed) as info:
        run_cocotb(SmokeMac(scale=3), toplevel="smoke_mac", test_module="test_runner",
                   parameters={"scale": 3}, testcase="cocotb_must_fail", python_paths=[HERE],
                   extra_env={"SPARSEFAB_SEED": 99})
    msg = str(info.value)
    assert "cocotb_must_fail" in msg and "item #7" in msg and "seed 99" in msg, msg
    assert "\n" not in msg


def test_build_key_covers_design_and_options():
    v3 = verilog_text(SmokeMac(scale=3), toplevel="smoke_mac")
    v5 = verilog_text(SmokeMac(scale=5), toplevel="smoke_mac")
    k = build_key(v3, toplevel="smoke_mac", parameters={"scale": 3})
    assert k == build_key(v3, toplevel="smoke_mac", parameters={"scale": 3})
    assert k != build_key(v5, toplevel="smoke_mac", parameters={"scale": 3})
    assert k != build_key(v3, toplevel="smoke_mac", parameters={"scale": 4})
    assert k != build_key(v3, toplevel="smoke_mac", parameters={"scale": 3}, waves=True)
    assert k != build_key(v3, toplevel="smoke_mac", parameters={"scale": 3}, simulator="icarus")


def test_bad_simulator_is_one_line():
    with pytest.raises(Exception) as info:
        run_cocotb("module m; endmodule\n", toplevel="m", test_module="x", simulator="modelsim")
    assert "modelsim" in str(info.value) and "\n" not in str(info.value)


def test_big_designs_compile_their_cxx_at_O0():
    from sparsefab.sim.runner import BIG_DESIGN_LINES, _build_options

    small = _build_options("verilator", False, [], "wire a;\n" * 100)["make_args"]
    big = _build_options("verilator", False, [], "wire a;\n" * (BIG_DESIGN_LINES + 1))["make_args"]
    assert "OPT_FAST=-Os" in small and "OPT_FAST=-O0" in big and "OPT_SLOW=-O0" in big
    assert not any(a.startswith("OPT_GLOBAL") for a in small + big)   # shared runtime objects
    assert "make_args" not in _build_options("icarus", False, [], "wire a;\n" * 50_000)
