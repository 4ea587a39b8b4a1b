"""sparsefab.sim.spmv_flow: the sparse MAC array (and dense baseline) in the compiled flow harness,
compared with the golden model (spmv_int, requantize) on random, edge-case and real matrices.

One array configuration (lanes 8, INT8, block 16: the CLI default, shared with
tests/test_sim_cmds.py) and its dense baseline are built once and cached; other points
are in the slow set.
"""

import numpy as np
import pytest

from sparsefab.compress.errors import SparsefabError
from sparsefab.compress.quant import requantize, spmv_int
from sparsefab.sim.spmv_flow import Requant, run_mlp, run_spmv

SEED = 1122


def _sparse(rng, rows, cols, density, bits=8):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    W = rng.integers(lo, hi + 1, (rows, cols))
    W[rng.random((rows, cols)) >= density] = 0
    return W


def _x(rng, n, cols):
    return rng.integers(-128, 128, (n, cols)) if n else rng.integers(-128, 128, cols)


@pytest.mark.parametrize("rows,cols,density,n", [(24, 40, 0.3, 3), (9, 200, 0.1, 2), (33, 64, 0.6, 1),
                                                  (5, 17, 0.9, 0)])
def test_random_matrices_match_golden(rows, cols, density, n):
    rng = np.random.default_rng([SEED, rows, cols])
    W, X = _sparse(rng, rows, cols, density), _x(rng, n, cols)
    r = run_spmv(W, X, lanes=8)
    gold = spmv_int(W, X)
    assert r.y.shape == gold.shape
    assert np.array_equal(r.y, gold), f"seed {SEED}: first diff at {np.argwhere(r.y != gold)[:1]}"
    assert r.nnz == int(np.count_nonzero(W)) and r.ideal_cycles == max(n, 1) * -(-r.nnz // 8)
    assert r.cycles >= r.ideal_cycles and r.counters["o_nnz"] == max(n, 1) * r.nnz
    assert 0 < r.utilization <= 1 and r.sim_cycles_per_s > 0


def test_edge_matrices_match_golden():
    rng = np.random.default_rng(SEED)
    cases = {
        "empty rows": np.where(np.arange(12)[:, None] % 3 == 0, 0, _sparse(rng, 12, 48, 0.5)),
        "all zero": np.zeros((6, 30), np.int64),
        "fully dense": rng.integers(-128, 128, (7, 45)),
        "single column": _sparse(rng, 20, 1, 0.5),
        "one row, long": _sparse(rng, 1, 700, 0.8),
        "cols not multiple of B": _sparse(rng, 10, 33, 0.7),
        "extreme values": np.full((4, 300), -128),
    }
    for name, W in cases.items():
        X = rng.integers(-128, 128, (2, W.shape[1]))
        if name == "extreme values":
            X[:] = -128
        r = run_spmv(W, X, lanes=8)
        assert np.array_equal(r.y, spmv_int(W, X)), f"{name}, seed {SEED}"


def test_accumulator_wraps_like_golden():
    # 2**14 * 2**14 * 1100 columns overflows int32: hardware and golden both wrap
    W = np.full((2, 1000), -128)
    X = np.full((1, 1000), -128)
    r = run_spmv(W, X, lanes=8)
    assert np.array_equal(r.y, spmv_int(W, X, acc_bits=32))


def test_requant_per_row_with_relu_matches_golden():
    rng = np.random.default_rng(SEED + 1)
    W, X = _sparse(rng, 16, 50, 0.4), _x(rng, 4, 50)
    rq = {"multiplier": rng.integers(2**15, 2**16, 16), "shift": rng.integers(8, 20, 16),
          "bias": rng.integers(-5000, 5000, 16), "out_zero_point": -3, "relu": True}
    r = run_spmv(W, X, lanes=8, requant=Requant(**rq))
    gold_acc = spmv_int(W, X)
    assert np.array_equal(r.y, gold_acc)
    assert np.array_equal(r.out, requantize(gold_acc, **rq)), f"seed {SEED + 1}"


def test_stalls_change_cycles_not_results():
    rng = np.random.default_rng(SEED + 2)
    W, X = _sparse(rng, 20, 80, 0.5), _x(rng, 3, 80)
    calm = run_spmv(W, X, lanes=8)
    busy = run_spmv(W, X, lanes=8, stalls=0.3, seed=9)
    assert np.array_equal(calm.y, busy.y) and np.array_equal(busy.y, spmv_int(W, X))
    assert busy.cycles > calm.cycles


def test_dense_baseline_matches_golden():
    rng = np.random.default_rng(SEED + 3)
    W, X = _sparse(rng, 12, 37, 0.5), _x(rng, 2, 37)
    d = run_spmv(W, X, lanes=8, dense=True)
    assert np.array_equal(d.y, spmv_int(W, X))
    assert d.nnz == W.size and d.ideal_cycles == 2 * 12 * -(-37 // 8) and d.cycles >= d.ideal_cycles
    s = run_spmv(W, X, lanes=8)
    assert s.cycles < d.cycles


def test_mlp_two_layers_in_hardware():
    from sparsefab.data.digits import load_split, quantized_mlp

    q = quantized_mlp(prune="magnitude:0.75", finetune_epochs=0)
    X = load_split().X_test_codes[:40]
    res = run_mlp(q.layers, X, lanes=8)
    logits, trace = q.forward_int(X, trace=True)
    assert len(res) == len(q.layers) == len(trace)
    for k, (r, t) in enumerate(zip(res, trace, strict=True)):
        assert np.array_equal(r.y, t["acc"]), f"layer {k}"
        if q.layers[k].relu:
            assert np.array_equal(r.out, t["y"]), f"layer {k} requantized outputs"
    assert np.array_equal(res[-1].y + q.layers[-1].qlayer.bias, logits)


@pytest.mark.parametrize("bad,msg", [
    (dict(W_codes=np.zeros((2, 3, 4), np.int8)), "W_codes: expected a 2-D array"),
    (dict(W_codes=np.zeros((2, 3), np.float32)), "expected integer codes"),
    (dict(X_codes=np.zeros((2, 2, 3), np.int8)), "X_codes: expected a 1-D or 2-D array"),
    (dict(X_codes=np.zeros((2, 5), np.int8)), "does not match W_codes cols 3"),
    (dict(W_codes=np.array([[0, 200, 0], [0, 0, 0]])), r"code 200 at \(0, 1\) is outside the 8-bit"),
    (dict(W_codes=np.array([[0, 9, 0], [0, 0, 0]]), bits=4), "code 9 at"),
    (dict(X_codes=np.array([1, 2, 300])), "code 300 at .* outside int8"),
    (dict(lanes=0), "lanes=0"),
    (dict(requant={"shift": 60}), "requant shift"),
    (dict(requant={"multiplier": np.ones(5, np.int64)}), "one per row"),
    (dict(simulator="modelsim"), "simulator='modelsim'"),
])
def test_bad_input_one_line(bad, msg):
    kw = dict(W_codes=np.zeros((2, 3), np.int8), X_codes=np.zeros(3, np.int8))
    kw.update(bad)
    with pytest.raises(SparsefabError, match=msg) as info:
        run_spmv(kw.pop("W_codes"), kw.pop("X_codes"), **kw)
    assert "\n" not in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("lanes,bits,block", [(4, 4, 8), (16, 8, 32), (1, 8, 16)])
def test_other_points_match_golden(lanes, bits, block):
    rng = np.random.default_rng([SEED, lanes, bits, block])
    W, X = _sparse(rng, 30, 90, 0.35, bits=bits), _x(rng, 2, 90)
    for dense in (False, True):
        r = run_spmv(W, X, lanes=lanes, bits=bits, block=block, dense=dense, stalls=0.2)
        assert np.array_equal(r.y, spmv_int(W, X)), f"lanes {lanes} bits {bits} block {block} dense {dense}"


@pytest.mark.slow
def test_cocotb_engine_equals_flow():
    rng = np.random.default_rng(SEED + 4)
    W, X = _sparse(rng, 10, 40, 0.5), _x(rng, 2, 40)
    flow = run_spmv(W, X, lanes=8)
    coco = run_spmv(W, X, lanes=8, engine="cocotb")
    assert np.array_equal(coco.y, spmv_int(W, X)) and np.array_equal(coco.out, flow.out)
    assert coco.cycles == flow.cycles
