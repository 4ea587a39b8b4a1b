"""DenseMacArray (dense baseline): golden scoreboard, ideal cycle count, shared output stage, errors."""

from __future__ import annotations

import numpy as np
import pytest

from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.dense_mac import DenseMacArray, DenseReader
from sparsefab.gen.sparse_mac import RequantStage
from sparsefab.gen.spmv_config import ERRORS, SpmvConfig
from sparsefab.sim.tb_spmv import Job, expected, random_rq, run_amaranth, stream_items

SMALL = dict(lanes=4, weight_bits=8, block=16, bus_bits=32, max_cols=64, dense=True)


def _jobs(rng, bits=8):
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    jobs = []
    for rows, cols, d in ((5, 13, 0.5), (3, 8, 1.0), (2, 1, 1.0), (4, 30, 0.0)):
        w = ((rng.random((rows, cols)) < d) * rng.integers(lo, hi, (rows, cols))).astype(np.int64)
        jobs.append(Job(w, rng.integers(-128, 128, cols), random_rq(rng, rows)))
    return jobs


@pytest.mark.parametrize("bits,lanes", [(8, 4), (4, 3)])
def test_dense_back_to_back_with_stalls(bits, lanes):
    seed = 50 + bits + lanes
    cfg = SpmvConfig(**dict(SMALL, weight_bits=bits, lanes=lanes))
    jobs = _jobs(np.random.default_rng(seed), bits)
    res = run_amaranth(cfg, jobs, seed=seed, idle=0.2, backpressure=0.2)
    assert res.error == 0, f"seed {seed}"
    assert res.results == [e for j in jobs for e in expected(cfg, j)], f"seed {seed}"
    assert res.nnz == sum(j.rows * j.cols for j in jobs)     # dense multiplies every weight


def test_dense_cycles_are_the_ideal():
    cfg = SpmvConfig(**SMALL)
    jobs = _jobs(np.random.default_rng(3))
    res = run_amaranth(cfg, jobs, seed=3)
    assert res.results == [e for j in jobs for e in expected(cfg, j)]
    for job, busy in zip(jobs, res.busy_cycles, strict=True):
        load = -(-job.cols // cfg.acts_per_word)
        ideal = job.rows * -(-job.cols // cfg.lanes)
        assert load + ideal <= busy <= load + ideal + 3, (busy, load, ideal)


def test_dense_missing_last_is_flagged_not_hung():
    cfg = SpmvConfig(**SMALL)
    rng = np.random.default_rng(4)
    job = Job(rng.integers(-5, 5, (3, 9)), rng.integers(-128, 128, 9), random_rq(rng, 3))
    items = stream_items(cfg, [job])
    items["value"][-1] = dict(items["value"][-1], last=0)
    res = run_amaranth(cfg, [job], items=items, expect_rows=2, max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["values_extra"]
    assert res.sim_cycles < 2000


def test_dense_shares_backend_and_output_stage():
    from amaranth.hdl import Fragment

    top = DenseMacArray(**{k: v for k, v in SMALL.items() if k != "dense"})
    assert top.config.dense and not hasattr(top, "i_mask")
    frag = Fragment.get(top, None)
    names = {type(sub).__name__ for sub, _, _ in frag.subfragments}
    assert "MacBackend" in names or any("backend" == n for _, n, _ in frag.subfragments)
    assert RequantStage.__module__ == "sparsefab.gen.sparse_mac"
    with pytest.raises(SparsefabError, match="dense"):
        DenseReader(SpmvConfig(lanes=2))
    with pytest.raises(SparsefabError, match="lanes=0"):
        DenseMacArray(lanes=0)


@pytest.mark.slow
def test_dense_cocotb_point():
    from sparsefab.sim.tb_sparse_mac import run_case

    cfg = SpmvConfig(lanes=4, weight_bits=8, block=16, bus_bits=32, max_cols=128, dense=True)
    jobs = _jobs(np.random.default_rng(60))
    got = run_case(cfg, jobs, seed=60, idle=0.2, backpressure=0.2)
    assert got["o_error"] == 0
