"""Design registry (sparsefab.gen.designs) and the MacSmoke smoke design, in Amaranth simulation."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.lib import wiring
from amaranth.sim import Simulator

from sparsefab.compress.errors import SparsefabError
from sparsefab.gen import designs


def test_registry_names_and_errors():
    assert "mac" in designs.names() and "spmv" in designs.names()
    assert designs.available("mac")
    assert designs.parameters("mac") == ["lanes", "bits", "acc_bits"]
    with pytest.raises(SparsefabError, match="unknown design 'nope'"):
        designs.build("nope")
    with pytest.raises(SparsefabError, match="has no parameter 'width'"):
        designs.build("mac", width=3)
    with pytest.raises(SparsefabError, match="lanes=0"):
        designs.build("mac", lanes=0)
    with pytest.raises(SparsefabError, match="acc_bits=8"):
        designs.build("mac", bits=8, acc_bits=8)
    assert isinstance(designs.build("mac", lanes=2), wiring.Component)


def test_registry_missing_module(monkeypatch):
    monkeypatch.setitem(designs.DESIGNS, "ghost", "sparsefab.gen.no_such_module:build")
    assert not designs.available("ghost")
    with pytest.raises(SparsefabError, match="design 'ghost': cannot load"):
        designs.build("ghost")


def test_every_available_design_builds_with_defaults():
    for name in designs.names():
        if designs.available(name):
            assert isinstance(designs.build(name), wiring.Component), name


@pytest.mark.parametrize("lanes,bits,acc_bits", [(1, 8, 32), (3, 8, 20), (2, 4, 8)])
def test_mac_smoke_matches_numpy(lanes, bits, acc_bits):
    seed = 1000 + lanes * 10 + bits
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    lengths = [1, 5, 2, 7, 1]
    beats = [(rng.integers(lo, hi + 1, (n, lanes)), rng.integers(lo, hi + 1, (n, lanes))) for n in lengths]
    expect = []
    for a, b in beats:
        v = int((a.astype(np.int64) * b).sum()) & ((1 << acc_bits) - 1)
        expect.append(v - (1 << acc_bits) if v >> (acc_bits - 1) else v)

    dut = designs.MacSmoke(lanes=lanes, bits=bits, acc_bits=acc_bits)
    got = []

    async def drive(ctx):
        for a, b in beats:
            for i in range(len(a)):
                while rng.random() < 0.3:  # random idle cycles
                    ctx.set(dut.i_data.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i_data.valid, 1)
                for j in range(lanes):
                    ctx.set(dut.i_data.payload.a[j], int(a[i, j]))
                    ctx.set(dut.i_data.payload.b[j], int(b[i, j]))
                ctx.set(dut.i_data.payload.last, int(i == len(a) - 1))
                await ctx.tick().until(dut.i_data.ready)
        ctx.set(dut.i_data.valid, 0)

    async def collect(ctx):
        for _ in range(400):
            ready = int(rng.random() < 0.6)  # random backpressure
            ctx.set(dut.o_acc.ready, ready)
            await ctx.delay(1e-9)
            if ready and ctx.get(dut.o_acc.valid):
                got.append(ctx.get(dut.o_acc.payload))
            await ctx.tick()
            if len(got) == len(expect):
                return

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(collect)
    sim.run()
    assert got == expect, f"seed {seed}"
