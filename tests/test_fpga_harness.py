"""The generic board top (sparsefab.fpga.harness): every core port is driven / folded."""

from __future__ import annotations

import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from sparsefab.compress.errors import SparsefabError
from sparsefab.fpga.harness import Harness, core_ports, harness_cost
from sparsefab.gen.designs import MacSmoke


def test_ports_and_cost():
    core = MacSmoke(lanes=2, bits=8, acc_bits=32)
    ins, outs = core_ports(core)
    # i_data: valid + payload (2*2*8 + 1); o_acc.ready
    assert sum(len(v) for _, v in ins) == 1 + 33 + 1
    # i_data.ready, o_acc.valid, o_acc.payload
    assert sum(len(v) for _, v in outs) == 1 + 1 + 32
    cost = harness_cost(core, n_out_pins=2)
    # 34 output bits -> 9 -> 3 -> 1 fold registers, 1 LED toggle register
    assert (cost.in_bits, cost.out_bits) == (35, 34)
    assert cost.ffs == 35 + 32 + (9 + 3 + 1) + 1
    with pytest.raises(SparsefabError, match="wiring.Component"):
        core_ports(object())
    with pytest.raises(SparsefabError, match="out_pins"):
        Harness(core, out_pins=())


def test_harness_elaborates_and_toggles():
    core = MacSmoke(lanes=1, bits=8, acc_bits=16)
    top = Harness(core, in_pins=(), out_pins=(("led", 0), ("led", 1)))
    rtlil.convert(top, ports=[top.pin_in, top.pin_out])  # no platform: pins are plain signals
    seen = set()

    async def bench(ctx):
        for _ in range(300):
            await ctx.tick()
            seen.add(ctx.get(top2.pin_out))

    top2 = Harness(MacSmoke(lanes=1, bits=8, acc_bits=16), out_pins=(("led", 0), ("led", 1)))
    sim = Simulator(top2)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    # the LFSR stimulus makes the core produce results, so the folded LEDs change
    assert len(seen) > 1, seen
