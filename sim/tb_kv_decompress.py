"""cocotb bench of the KV decompressor (:class:`sparsefab.gen.kv_decompress.KVDecompressor`).

Driven by :func:`sparsefab.sim.kv_flow.run_case` (pytest: tests/test_kv_decompress.py; the CLI
``sparsefab kv decompress --rtl``; the bench).  The case file (``SPARSEFAB_KV_CASE``, JSON)
holds the codebook table writes, the block words (from a golden ``.sfk`` file) and, for a
checking run, the expected output beats computed by the golden model
(:func:`sparsefab.compress.kv.decode_blocks` + FP16 rounding); the bench never re-derives them.
Drivers insert seeded random idle cycles, the monitor applies seeded random backpressure, the
seed is in every failure message.  Results (received beats, per-block input/output cycles,
counters) are written to ``case["result"]`` for the flow to read.
"""

from __future__ import annotations

import json

from sparsefab.sim.streams import cocotb_test, read_case


@cocotb_test
async def kv_decompress_case(dut):
    import cocotb
    from cocotb.triggers import FallingEdge, ReadOnly

    from sparsefab.sim.streams import (
        PayloadCodec,
        Scoreboard,
        StreamDriver,
        StreamMonitor,
        get_seed,
        start_clock_and_reset,
    )

    case = read_case("SPARSEFAB_KV_CASE")
    seed = get_seed()
    clk = await start_clock_and_reset(dut)
    dut.ebias.value = case["ebias"]
    # codebook tables first (the decompressor is idle)
    cfg = StreamDriver(dut, "i_cfg", codec=PayloadCodec.from_json(case["cfg_layout"]), seed=seed)
    await cfg.send_and_wait([{"addr": a, "data": d} for a, d in case["cfg"]], timeout_cycles=10 * len(case["cfg"]) + 10)
    codec = PayloadCodec.from_json(case["out_layout"])
    expected = case.get("expected")
    board = Scoreboard([tuple(e) for e in expected], name="o_values", seed=seed) if expected is not None else None

    def item(d):
        return (*d["data"], d["last"], d["error"])

    mon = StreamMonitor(dut, "o_values", codec=codec, backpressure=case["backpressure"],
                        callback=(lambda d: board.add(item(d))) if board else None, seed=seed)
    drv = StreamDriver(dut, "i_words", idle=case["idle"], seed=seed)
    # watch input handshakes, counting cycles like the monitor (from its start)
    in_cycles: list[int] = []

    async def watch():
        n = 0
        while True:
            await ReadOnly()
            if dut.i_words__valid.value and dut.i_words__ready.value:
                in_cycles.append(n)
            await FallingEdge(clk)
            n += 1

    cocotb.start_soon(watch())
    drv.send(case["words"])
    nbeats = case["blocks"] * case["beats_per_block"]
    await mon.wait_for(nbeats, timeout_cycles=case["timeout"])
    if board is not None:
        board.finish()
    for _ in range(3):
        await FallingEdge(clk)
    wpb = case["words_per_block"]
    counters = {name: int(getattr(dut, name).value) for name in
                ("count_blocks", "count_errors", "count_decode_cycles", "count_stall_cycles", "error")}
    result = {
        "beats": [list(item(d)) for d in mon.items] if case.get("dump") else None,
        "last_word_cycle": in_cycles[wpb - 1::wpb],
        "first_word_cycle": in_cycles[0::wpb],
        "last_beat_cycle": mon.cycles_at[case["beats_per_block"] - 1::case["beats_per_block"]],
        "first_beat_cycle": mon.cycles_at[0::case["beats_per_block"]],
        "counters": counters,
        "seed": seed,
    }
    with open(case["result"], "w") as f:
        json.dump(result, f)
    if board is not None:
        assert len(mon.items) == len(expected), f"got {len(mon.items)} beats, expected {len(expected)} (seed {seed})"
    assert counters["count_blocks"] == case["blocks"], f"{counters} (seed {seed})"
    if case.get("expect_errors") is not None:
        assert counters["count_errors"] == case["expect_errors"], f"{counters} (seed {seed})"
