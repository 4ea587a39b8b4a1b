"""CrossbarTile (gen/crossbar_tile.py) in the Amaranth simulator against compress.crossbar."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from sparsefab.compress import crossbar as xb
from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.crossbar_tile import CrossbarTile, CrossbarTileConfig


def _pack(words, bits):
    out = []
    for w in words:
        v = 0
        for k, c in enumerate(w):
            v |= (int(c) & ((1 << bits) - 1)) << (k * bits)
        out.append(v)
    return out


def run_tile(dut, tiles, xs, groups, *, seed, idle=0.3, backpressure=0.3):
    """Program each tile, stream its input slice; groups = list of (first, last) per tile.

    Returns the emitted output slices (one int64 array of T per ``last`` tile) and cycles.
    """
    c = dut.config
    rng = random.Random(seed)
    words = xb.tile_words(np.asarray(tiles), c.lanes)
    outs, cyc, done = [], [0], [None]
    n_out = sum(1 for _, last in groups if last)

    async def prog(ctx):
        for k in range(len(tiles)):
            for wv in _pack(words[k], c.w_bits):
                while rng.random() < idle:
                    await ctx.tick()
                ctx.set(dut.i_prog.valid, 1)
                ctx.set(dut.i_prog.payload, wv)
                await ctx.tick().until(dut.i_prog.ready)
                ctx.set(dut.i_prog.valid, 0)

    async def feed(ctx):
        for k in range(len(tiles)):
            first, last = groups[k]
            for x in xs[k]:
                while rng.random() < idle:
                    await ctx.tick()
                ctx.set(dut.i_x.valid, 1)
                ctx.set(dut.i_x.payload, {"x": int(x), "first": first, "last": last})
                await ctx.tick().until(dut.i_x.ready)
                ctx.set(dut.i_x.valid, 0)

    async def sink(ctx):
        for _ in range(n_out):
            vals = []
            while len(vals) < c.tile:
                ready = rng.random() >= backpressure
                ctx.set(dut.o_y.ready, ready)
                valid = ctx.get(dut.o_y.valid)
                payload = [int(v) for v in ctx.get(dut.o_y.payload)]
                await ctx.tick()
                cyc[0] += 1
                if ready and valid:
                    vals.extend(payload)
            outs.append(np.array(vals, dtype=np.int64))
        ctx.set(dut.o_y.ready, 0)
        done[0] = cyc[0]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(prog)
    sim.add_testbench(feed)
    sim.add_testbench(sink)
    sim.run_until(1e-6 * (50 + 40 * len(tiles) * c.words))
    return outs, done[0]


def _golden(tiles, xs, groups, num):
    outs, acc = [], None
    for k in range(len(tiles)):
        p = xb.tile_mvm(tiles[k], xs[k], num)
        acc = p if groups[k][0] else acc + p
        if groups[k][1]:
            outs.append(xb.wrap(acc, num.acc_bits))
    return outs


@pytest.mark.parametrize("tile, lanes, adc", [
    (16, 16, None), (16, 4, None), (16, 4, 8),
    pytest.param(16, 1, None, marks=pytest.mark.slow), pytest.param(32, 8, None, marks=pytest.mark.slow),
    pytest.param(16, 16, 6, marks=pytest.mark.slow), pytest.param(64, 16, 10, marks=pytest.mark.slow)])
def test_tile_against_golden(tile, lanes, adc):
    seed = tile * 100 + lanes + (adc or 0)
    rng = np.random.default_rng(seed)
    n = 5
    tiles = rng.integers(-128, 128, (n, tile, tile)) * (rng.random((n, tile, tile)) < 0.6)
    xs = rng.integers(-128, 128, (n, tile))
    groups = [(1, 0), (0, 1), (1, 1), (1, 0), (0, 1)]
    shift = xb.full_scale_shift(tile, adc_bits=adc) - 2 if adc else 0  # some saturation too
    dut = CrossbarTile(tile=tile, lanes=lanes, adc_bits=adc, adc_shift=max(shift, 0))
    outs, _ = run_tile(dut, tiles, xs, groups, seed=seed)
    num = xb.Numerics(adc_bits=adc, adc_shift=max(shift, 0))
    ref = _golden(tiles, xs, groups, num)
    assert len(outs) == len(ref), f"seed={seed}"
    for a, b in zip(outs, ref, strict=True):
        assert (a == b).all(), f"seed={seed}: {a} != {b}"


def test_full_rate_cycles():
    """Without idles or backpressure a tile takes T*T/lanes cycles (double-buffered banks)."""
    tile, lanes, n = 16, 8, 6
    rng = np.random.default_rng(9)
    tiles = rng.integers(-128, 128, (n, tile, tile))
    xs = rng.integers(-128, 128, (n, tile))
    groups = [(1, 0)] + [(0, 0)] * (n - 2) + [(0, 1)]
    dut = CrossbarTile(tile=tile, lanes=lanes)
    outs, cycles = run_tile(dut, tiles, xs, groups, seed=9, idle=0.0, backpressure=0.0)
    assert (outs[0] == xb.wrap(sum(tiles[k] @ xs[k] for k in range(n)), 32)).all()
    words = dut.config.words
    # first tile programmed (words), n tiles computed back to back, +1 MAC stage, groups emit beats
    assert cycles == (n + 1) * words + 1 + dut.config.groups, cycles


@pytest.mark.parametrize("kw, match", [(dict(tile=20), "tile"), (dict(tile=16, lanes=3), "lanes"), (dict(tile=16, lanes=32), "lanes"),
                                       (dict(tile=16, w_bits=1), "w_bits"), (dict(acc_bits=99), "acc_bits")])
def test_bad_parameters(kw, match):
    with pytest.raises(SparsefabError, match=match):
        CrossbarTileConfig(**kw)  # what CrossbarTile(**kw) validates first
