"""TileController (gen/tile_controller.py) in the Amaranth simulator against compress.crossbar.

Random, planted-cluster and real pruned (digits MLP) weights; random idle cycles on every
input and random backpressure on the output; cycle counts against the ideal.  The cocotb +
Verilator scoreboard is sim/tb_crossbar_controller.py (tests/test_crossbar_cmds.py runs it).
"""

import numpy as np
import pytest

from sparsefab.compress import cluster, tiling
from sparsefab.compress import crossbar as xb
from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.tile_controller import TileController, TileControllerConfig
from sparsefab.sim.crossbar_flow import controller_beats, run_amaranth


def digits_codes(sparsity=0.8):
    from sparsefab.compress.prune import prune_magnitude
    from sparsefab.data import digits

    w = digits.load_mlp()[0].W                      # 128 x 64, trained on load_digits
    p = prune_magnitude(w, sparsity).weights
    return np.round(p / np.abs(p).max() * 127).astype(np.int64)


def _random(rows, cols, density, seed):
    rng = np.random.default_rng(seed)
    return ((rng.random((rows, cols)) < density) * rng.integers(-128, 128, (rows, cols))).astype(np.int64)


def _check(w, tmap, *, engines, lanes, seed, idle=0.25, backpressure=0.25, hybrid=False, x=None):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, w.shape[1]) if x is None else x
    beats = controller_beats(w, x, tmap, engines=engines, lanes=lanes, hybrid=hybrid)
    dut = TileController(rows=w.shape[0], cols=w.shape[1], tile=tmap.tile, engines=engines, lanes=lanes,
                         hybrid=hybrid)
    r = run_amaranth(dut, beats, seed=seed, idle=idle, backpressure=backpressure)
    ref = xb.crossbar_matvec(w, x, tmap, leftover=hybrid)
    assert (r["y"] == ref).all(), f"seed={seed}: y differs at {np.flatnonzero(r['y'] != ref)[:8]}"
    if hybrid:
        assert (r["y"] == w @ x).all(), f"seed={seed}"
    assert r["tiles_run"] == tmap.n_tiles and r["tiles_skipped"] == tmap.tiles_total - tmap.n_tiles
    return r


@pytest.mark.parametrize("tile, engines, lanes", [
    (16, 1, 16), (16, 2, 4),
    pytest.param(16, 3, 8, marks=pytest.mark.slow), pytest.param(32, 2, 32, marks=pytest.mark.slow)])
def test_random_weights(tile, engines, lanes):
    seed = tile + 10 * engines + lanes
    w = _random(45, 70, 0.08, seed)
    rng = np.random.default_rng(seed)
    m = tiling.build_map(w, tile=tile, row_perm=rng.permutation(45), col_perm=rng.permutation(70))
    _check(w, m, engines=engines, lanes=lanes, seed=seed)


@pytest.mark.parametrize("fill", [0.02, 0.2])
def test_hybrid_planted_clustered(fill):
    w, _ = cluster.planted(96, 80, tile=16, block_density=0.2, fill=0.5, seed=4)
    w = w.astype(np.int64)
    w[np.random.default_rng(4).random(w.shape) < 0.01] = 5   # irregular leftovers
    cl = cluster.cluster(w, tile=16, seed=4)
    m = tiling.build_map(w, tile=16, row_perm=cl.row_perm, col_perm=cl.col_perm, fill=fill, clustered=True)
    assert m.leftover_nnz > 0
    _check(w, m, engines=2, lanes=8, seed=int(fill * 100), hybrid=True)


def test_digits_pruned_layer():
    w = digits_codes(0.85)
    cl = cluster.cluster(w, tile=16, seed=0)
    m = tiling.build_map(w, tile=16, row_perm=cl.row_perm, col_perm=cl.col_perm)
    from sparsefab.data import digits

    x = digits.load_split().X_test_codes[0].astype(np.int64)
    _check(w, m, engines=2, lanes=16, seed=0, x=x, idle=0.1, backpressure=0.1)


def test_empty_matrix_and_reconfigure():
    w = np.zeros((20, 30), dtype=np.int64)
    m = tiling.build_map(w, tile=16)
    r = _check(w, m, engines=2, lanes=16, seed=1, idle=0, backpressure=0)
    assert r["tiles_run"] == 0 and (r["y"] == 0).all()


def test_cycles_near_ideal():
    """Without idles: cycles within 10 % of compute + first programming + input/output."""
    w, _ = cluster.planted(96, 96, tile=16, block_density=0.25, fill=0.5, seed=8, shuffle=False)
    m = tiling.build_map(w.astype(np.int64), tile=16)
    for engines, lanes in ((1, 16), (2, 8)):
        r = _check(w.astype(np.int64), m, engines=engines, lanes=lanes, seed=8, idle=0, backpressure=0)
        ic = xb.ideal_cycles(m, engines=engines, lanes=lanes)
        ideal = ic["compute"] + ic["program"] + ic["io"]
        assert r["cycles"] <= 1.1 * ideal, (engines, lanes, r, ic)
        assert r["prog_beats"] == ic["waves"] * ic["cycles_per_tile"]


@pytest.mark.parametrize("kw, match", [(dict(rows=0), "rows"), (dict(engines=0), "engines"),
                                       (dict(lanes=5), "lanes"), (dict(hybrid=1), "hybrid"),
                                       (dict(tile=8), "tile")])
def test_bad_parameters(kw, match):
    args = dict(rows=32, cols=32) | kw
    with pytest.raises(SparsefabError, match=match):
        TileControllerConfig(**args)  # what TileController(**args) validates first


# ---- cocotb + Verilator scoreboard (sim/tb_crossbar.py) ------------------------------------
needs_verilator = pytest.mark.skipif(__import__("shutil").which("verilator") is None,
                                     reason="verilator not on PATH")


def _cocotb_point(kind, tile, engines, lanes, fill, seed, simulator="verilator"):
    from sparsefab.sim.tb_crossbar import run_case

    rng = np.random.default_rng(seed)
    if kind == "random":
        w = _random(70, 50, 0.1, seed)
    elif kind == "planted":
        w, _ = cluster.planted(96, 64, tile=tile, block_density=0.2, fill=0.5, seed=seed)
        w = w.astype(np.int64)
        w[rng.random(w.shape) < 0.005] = -3
    else:
        w = digits_codes(0.8)
    cl = cluster.cluster(w, tile=tile, seed=seed) if kind != "random" else None
    m = tiling.build_map(w, tile=tile, row_perm=None if cl is None else cl.row_perm,
                         col_perm=None if cl is None else cl.col_perm, fill=fill)
    if kind == "digits":
        from sparsefab.data import digits

        xs = digits.load_split().X_test_codes[:2].astype(np.int64)
    else:
        xs = rng.integers(-128, 128, (2, w.shape[1]))
    return run_case(w, xs, m, engines=engines, lanes=lanes, seed=seed, simulator=simulator)


@needs_verilator
def test_cocotb_scoreboard_default():
    c = _cocotb_point("planted", 16, 2, 8, 0.1, seed=21)
    assert c["tiles_run"] > 0


@pytest.mark.skipif(__import__("shutil").which("iverilog") is None, reason="Icarus Verilog not installed")
def test_cocotb_scoreboard_icarus():
    c = _cocotb_point("planted", 16, 2, 8, 0.1, seed=22, simulator="icarus")
    assert c["tiles_run"] > 0


@needs_verilator
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["random", "planted", "digits"])
@pytest.mark.parametrize("tile, engines, lanes", [(16, 1, 16), (16, 3, 4), (32, 2, 32), (32, 2, 8)])
@pytest.mark.parametrize("fill", [0.0, 0.15])
def test_cocotb_scoreboard_sweep(kind, tile, engines, lanes, fill):
    seed = __import__("zlib").crc32(repr((kind, tile, engines, lanes, fill)).encode()) % 10_000
    _cocotb_point(kind, tile, engines, lanes, fill, seed)


def test_emit_sidecars(tmp_path):
    import json

    from sparsefab.gen.crossbar_tile import emit_crossbar_tile
    from sparsefab.gen.tile_controller import emit_tile_controller

    v, j = emit_tile_controller(tmp_path, rows=40, cols=50, tile=16, engines=2, lanes=4, hybrid=True,
                                acc_bits=24)
    side = json.loads(j.read_text())
    assert side["config"]["engines"] == 2 and side["cycles_per_tile"] == 64 and side["grid"] == [3, 4]
    ports = {p["name"]: p["width"] for p in side["ports"]}
    assert ports["i_w__payload"] == 2 * 4 * 8 and ports["o_y__payload"] == 24 and "i_sparse__payload" in ports
    assert ports["i_tile__payload"] == 1 + 2 * (1 + 2 + 2 + 1 + 1)
    assert "module tile_controller" in v.read_text()
    v, j = emit_crossbar_tile(tmp_path, tile=16, lanes=4, adc_bits=8)
    assert json.loads(j.read_text())["latency"]["adc_fold"] == 4
