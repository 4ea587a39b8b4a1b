"""cocotb scoreboard bench of the KVCompressor (``gen/kv_compress.py``).

Driven by :func:`run_case` (pytest: tests/test_kv_compress.py; bench figures) through the
project's runner (``sim/runner.py``, cached Verilator builds) and stream components
(``sim/streams.py``).  The case file (``SPARSEFAB_KVC_CASE``, JSON) holds the FP16 input beats,
the tensor's ``ebias`` and the expected blocks computed by the golden encoder
``sparsefab.compress.kv.encode_groups(..., policy="hw")``; the bench never re-derives them.  The driver inserts seeded
random idle cycles, the monitor applies seeded random backpressure; the seed is in every
failure message.  Groups holding NaN/Inf are expected to be refused (no block, ``error`` set,
``count_dropped`` incremented), as the golden model refuses them.

The bench writes the hardware counters and the measured cycle counts to ``SPARSEFAB_KVC_OUT``:
``cycles`` from the first accepted input beat to the last output word, from which
:func:`run_case` reports ``values_per_cycle``.
"""

from __future__ import annotations

import json

from sparsefab.sim.streams import cocotb_test, read_case, write_result

COUNTERS = ("count_blocks", "count_fallback", "count_escapes", "count_dropped", "error")


@cocotb_test
async def kv_compress_scoreboard(dut):
    from cocotb.triggers import FallingEdge

    from sparsefab.sim.streams import (
        PayloadCodec,
        Scoreboard,
        StreamDriver,
        StreamMonitor,
        get_seed,
        start_clock_and_reset,
    )

    case = read_case("SPARSEFAB_KVC_CASE")
    seed = get_seed()
    clk = await start_clock_and_reset(dut)
    dut.ebias.value = case["ebias"]
    W, nbytes = case["bus_bits"], case["block_bytes"]
    codec = PayloadCodec.from_json(case["o_layout"])
    board = Scoreboard(case["expected"], name="o_words blocks", seed=seed)
    words: list[int] = []
    ends: list[int] = []

    def on_word(item):
        words.append(int(item["data"]))
        if item["last"]:
            ends.append(mon.cycles)
            v = sum(w << (W * i) for i, w in enumerate(words))
            board.add(v.to_bytes(len(words) * W // 8, "little")[:nbytes].hex())
            words.clear()

    mon = StreamMonitor(dut, "o_words", codec=codec, backpressure=case["backpressure"], callback=on_word, seed=seed)
    drv = StreamDriver(dut, "i_values", idle=case["idle"], seed=seed)
    # first accepted beat: the driver starts at once; count from here
    start = mon.cycles
    drv.send(case["beats"])
    nwords = len(case["expected"]) * case["words_per_block"]
    await mon.wait_for(nwords, timeout_cycles=case["timeout"])
    end = mon.cycles
    await drv.wait_idle(timeout_cycles=case["timeout"])
    board.finish()
    for _ in range(4):
        await FallingEdge(clk)
    got = {k: int(getattr(dut, k).value) for k in COUNTERS}
    for k, v in case["counters"].items():
        assert got[k] == v, f"counter {k}: got {got[k]}, expected {v} (seed {seed})"
    got["cycles"] = end - start
    got["block_end_cycles"] = ends
    got["last_word_cycle"] = mon.cycles_at[-1] if mon.cycles_at else 0
    write_result("SPARSEFAB_KVC_OUT", got)


def run_case(fp16, *, codebooks, params, ebias: int, values_per_cycle: int = 4, bus_bits: int = 64,
             seed: int = 1, idle: float = 0.2, backpressure: float = 0.2, simulator: str = "verilator",
             family: str | None = None) -> dict:
    """Build (cached) and run the bench on groups ``fp16`` (float16 [n, group]).

    ``family`` (e.g. ``"ecp5"``) elaborates the netlist that FPGA family gets (vendor primitives
    instantiated by the generator) and simulates it with the models of
    :mod:`sparsefab.sim.vendor_models`.

    Returns the counters, ``cycles``, ``values`` (values of the accepted groups) and
    ``values_per_cycle`` measured in the simulation.
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    from sparsefab.compress import kv as kvg
    from sparsefab.gen.kv_compress import KVCompressor, config_dict
    from sparsefab.sim.runner import run_cocotb
    from sparsefab.sim.streams import layout_json

    x = np.asarray(fp16, np.float16)
    g = params.group
    if x.ndim != 2 or x.shape[1] != g:
        raise ValueError(f"fp16 groups of shape {x.shape}, expected [n, {g}]")
    dut = KVCompressor(codebooks=codebooks, params=params, values_per_cycle=values_per_cycle, bus_bits=bus_bits)
    cfg = dut.config
    finite = np.isfinite(x.astype(np.float64)).all(axis=1)
    keep = finite
    expected = []
    fallback = escapes = 0
    if keep.any():
        blocks, info = kvg.encode_groups(x[keep].astype(np.float64), codebooks, params, ebias, policy="hw")
        expected = [bytes(b).hex() for b in blocks]
        fixed = [i for i in range(codebooks.k) if codebooks.fixed_rate(i)]
        fallback = int(np.isin(info["sel"], fixed).sum())
        escapes = int(info["escapes"].sum())
    P = values_per_cycle
    raw = x.view(np.uint16).reshape(-1, P).astype(np.int64)
    beats = [sum(int(v) << (16 * i) for i, v in enumerate(row)) for row in raw]  # one per beat
    case = {"beats": [int(b) for b in beats], "ebias": int(ebias), "expected": expected,
            "bus_bits": bus_bits, "block_bytes": params.block_bytes, "words_per_block": cfg.words_per_block,
            "o_layout": layout_json(dut.o_words.payload.shape()), "idle": idle, "backpressure": backpressure,
            "timeout": 20_000 + 6000 * x.shape[0] * max(1, g // 32),
            "counters": {"count_blocks": len(expected), "count_fallback": fallback, "count_escapes": escapes,
                         "count_dropped": int((~keep).sum()), "error": int((~keep).any())}}
    with tempfile.TemporaryDirectory(prefix="sfkvc-") as tmp:
        cf, of = Path(tmp) / "case.json", Path(tmp) / "out.json"
        cf.write_text(json.dumps(case))
        params_key = config_dict(dut)
        design = dut
        if family is not None:
            from sparsefab.sim.vendor_models import family_verilog

            design = family_verilog(dut, name="kv_compress", family=family)
            params_key = {**params_key, "family": family}
        run_cocotb(design, toplevel="kv_compress", test_module="sparsefab.sim.tb_kv_compress",
                   testcase="kv_compress_scoreboard", parameters=params_key, simulator=simulator,
                   extra_env={"SPARSEFAB_KVC_CASE": str(cf), "SPARSEFAB_KVC_OUT": str(of),
                              "SPARSEFAB_SEED": str(seed)})
        out = json.loads(of.read_text())
    out["values"] = int(keep.sum()) * g
    out["blocks_expected"] = len(expected)
    out["values_per_cycle"] = out["values"] / out["cycles"] if out["cycles"] else 0.0
    # sustained: blocks 2..n after the pipeline has filled (first block end -> last block end)
    ends = out.pop("block_end_cycles")
    span = ends[-1] - ends[0] if len(ends) > 1 else 0
    out["sustained_values_per_cycle"] = (len(ends) - 1) * g / span if span else 0.0
    out["latency_first_block"] = ends[0] if ends else 0
    return out


def measure(*, n_groups: int = 16, values_per_cycle: int = 4, lanes: int = 2, seed: int = 1) -> dict:
    """Throughput of the default-geometry compressor on real MiniLM keys/values, no stalls.

    Codebooks are trained (:func:`sparsefab.compress.kv.train`) on MiniLM activations of one text
    and the measured groups come from another.  Returns the counters plus ``values_per_cycle``
    (measured), ``ideal_values_per_cycle`` (= ``values_per_cycle`` of the input bus),
    ``sustained_values_per_cycle`` (block ends 2..n, pipeline filled) and ``cycles_per_block``.
    """
    import numpy as np

    from sparsefab.compress import kv
    from sparsefab.data.minilm import kv_activations

    p = kv.KVParams(lanes=lanes)
    kc, vc = kv_activations(["Calibration text: the quick brown fox jumps over the lazy dog near the river bank."],
                            max_len=32)
    cb = kv.train(np.concatenate([kc.reshape(-1), vc.reshape(-1)]).astype(np.float32), params=p, iters=2)
    km, vm = kv_activations(["Measured text: memory bandwidth bounds inference of language models on small devices."],
                            max_len=32)
    flat = np.concatenate([km.reshape(-1), vm.reshape(-1)]).astype(np.float16)
    groups = flat[: (flat.size // p.group) * p.group].reshape(-1, p.group)
    x = groups[:: max(1, groups.shape[0] // n_groups)][:n_groups]
    eb = kv.choose_ebias(float(np.abs(x.astype(np.float64)).max()), p, cb)
    out = run_case(x, codebooks=cb, params=p, ebias=eb, values_per_cycle=values_per_cycle, seed=seed,
                   idle=0.0, backpressure=0.0)
    out["ideal_values_per_cycle"] = values_per_cycle
    out["cycles_per_block"] = out["cycles"] / max(out["count_blocks"], 1)
    return out
