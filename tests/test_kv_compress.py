"""KVCompressor (gen/kv_compress.py): RTL blocks == golden ``policy="hw"`` blocks, byte for byte.

The expected blocks come from the golden encoder ``sparsefab.compress.kv.encode_groups(...,
policy="hw")``; the tests never re-derive them.  Fast subset: parameter validation, sidecar and
the Amaranth simulator on small geometries (random + adversarial + NaN/Inf refusal, random idles
and backpressure).  ``@pytest.mark.slow`` (``make regress``): cocotb/Verilator on real MiniLM data
(the default geometry with its sustained throughput, a small geometry with NaN/Inf, a sweep of
geometries, buses and k-means tables): each Verilator build of this design takes minutes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsefab.compress import kv
from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.kv_compress import KVCompressor, config_dict

SEED = 20260522


def _small():
    p = kv.KVParams(group=32, block_bytes=16, lanes=2)
    return p, kv.uniform_codebooks(params=p)


def _adversarial(g: int, rng: np.random.Generator) -> np.ndarray:
    """Constant groups, zeros, single spikes, subnormals, FP16 extremes, ties at half steps."""
    rows = [np.zeros(g), np.full(g, 1.0), np.full(g, -3.25), np.full(g, 65504.0)]
    spike = np.zeros(g)
    spike[g // 3] = 1000.0
    rows.append(spike)
    spike2 = rng.standard_normal(g) * 0.01
    spike2[-1] = -40.0
    rows.append(spike2)
    rows.append(np.arange(1, g + 1) * 2.0 ** -24)                         # subnormals only
    rows.append(np.where(np.arange(g) % 2, 6.0e-5, -6.1e-5))                # around the normal boundary
    rows.append(np.linspace(-65504, 65504, g))
    rows.append(np.round(rng.standard_normal(g) * 4) / 2)                  # exact half steps
    return np.array(rows, dtype=np.float16)


def _random(n: int, g: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal((n, g)) * rng.uniform(0.05, 8, (n, 1))
            + rng.uniform(-2, 2, (n, 1))).astype(np.float16)


def _heavy(n: int, g: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian groups with two outliers of each sign 15-60 sigma out: escapes past both table edges."""
    x = rng.standard_normal((n, g))
    for r in range(n):
        at = rng.choice(g, 4, replace=False)
        x[r, at] = rng.uniform(15, 60, 4) * np.array([1, 1, -1, -1])
    return (x * rng.uniform(0.05, 2, (n, 1))).astype(np.float16)


def _ebias(x, p, cb):
    v = x.astype(np.float64)
    return kv.choose_ebias(float(np.abs(v[np.isfinite(v)]).max()), p, cb)


def _assert_blocks(got, want, seed):
    """Every RTL block equals the golden block, byte for byte (seed in the message)."""
    for i, g in enumerate(got):
        assert g == bytes(want[i]), f"block {i}: got {g.hex()} expected {bytes(want[i]).hex()} (seed {seed})"


def _counters(cb, info, blocks, dropped):
    """The hardware counters the golden encoder's ``info`` implies."""
    fixed = [i for i in range(cb.k) if cb.fixed_rate(i)]
    return {"count_blocks": blocks, "count_fallback": int(np.isin(info["sel"], fixed).sum()),
            "count_escapes": int(info["escapes"].sum()), "count_dropped": dropped, "error": int(dropped > 0)}


# ---------------------------------------------------------------------------- pure checks

def test_rejects_bad_parameters():
    p, cb = _small()
    with pytest.raises(SparsefabError, match="values_per_cycle=3"):
        KVCompressor(codebooks=cb, params=p, values_per_cycle=3)
    with pytest.raises(SparsefabError, match="values_per_cycle=0"):
        KVCompressor(codebooks=cb, params=p, values_per_cycle=0)
    with pytest.raises(SparsefabError, match="bus_bits=48"):
        KVCompressor(codebooks=cb, params=p, bus_bits=48)
    with pytest.raises(SparsefabError, match="codebooks="):
        KVCompressor(codebooks="cb.sfkc", params=p)
    with pytest.raises(SparsefabError, match="lanes=4"):
        KVCompressor(codebooks=cb, params=kv.KVParams(group=32, block_bytes=16, lanes=4), values_per_cycle=4)
    with pytest.raises(SparsefabError, match="obits=4"):
        KVCompressor(codebooks=cb, params=kv.KVParams(group=32, block_bytes=16, obits=4))
    # no fixed-rate codebook fits: drop the fallback
    huff = kv.Codebooks(cb.lengths[:-1], cb.centroids[:-1], max_len=cb.max_len, esc_bits=cb.esc_bits)
    with pytest.raises(SparsefabError, match="no fixed-rate fallback"):
        KVCompressor(codebooks=huff, params=p)
    flat = kv.Codebooks(cb.lengths[-1:], cb.centroids[-1:], max_len=cb.max_len, esc_bits=cb.esc_bits)
    with pytest.raises(SparsefabError, match="no Huffman"):
        KVCompressor(codebooks=flat, params=p)


def test_sidecar(tmp_path):
    from sparsefab.gen.emit import emit

    p, cb = _small()
    dut = KVCompressor(codebooks=cb, params=p, values_per_cycle=2, bus_bits=32)
    v, j = emit(dut, name="kv_compress", config=config_dict(dut), out_dir=tmp_path)
    side = json.loads(j.read_text())
    assert side["config"]["group"] == 32 and side["config"]["words_per_block"] == 4
    assert side["config"]["lengths"] == cb.lengths.tolist()
    # 16 beats per group: a bank lives ~3*16+60 cycles (7 groups: 8 banks), a slot ~16+48 (4 groups: 8 slots)
    assert (side["config"]["banks"], side["config"]["block_slots"], side["config"]["lane_word_bits"]) == (8, 8, 64)
    assert "module kv_compress" in v.read_text()


@pytest.mark.parametrize("cs", [
    list(range(-44, 45, 4)), list(range(-16, 13, 4)), [3, 5], list(range(-7, 9)), list(range(-64, 65, 8)),
    list(range(-30, 31, 3)), [-9, -2, 0, 1, 7], [5]])
def test_uniform_index_equals_midpoint_count(cs):
    """The uniform-table shortcut (one adder and a shift) gives exactly the golden rule's index, the
    count of table midpoints below ``zs``, for every ``zs`` from far below to far above the table;
    tables that are not uniform with a power-of-two spacing are refused (comparators instead)."""
    from sparsefab.gen.kv_compress import _uniform_index

    F = kv.HW_F
    uni = _uniform_index(cs, F, 15)
    d = cs[1] - cs[0] if len(cs) > 1 else 0
    if len(cs) < 2 or d & (d - 1) or np.any(np.diff(cs) != d):
        assert uni is None, cs
        return
    k1, s, w = uni
    mids = (np.array(cs[1:]) + np.array(cs[:-1])) << (F - 1)
    zs = np.concatenate([np.arange(-4096, 4097), [-(1 << 15) + 1, (1 << 15) - 1]])
    want = (zs[:, None] > mids).sum(axis=1)
    t = zs - k1
    assert np.all(np.abs(t) < (1 << (w - 1))), (cs, w)
    got = np.clip(t >> s, 0, len(cs) - 1)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"table {cs}: zs={zs[bad[:5]]} got {got[bad[:5]]} want {want[bad[:5]]}"


# ---------------------------------------------------------------------------- Amaranth simulator

def _amaranth_run(dut, x16, ebias, seed, idle=0.25, bp=0.3, nblocks=None, ends=None, counters=None):
    import random

    from amaranth.sim import Simulator

    cfg = dut.config
    P, W, nw = cfg.values_per_cycle, cfg.bus_bits, cfg.words_per_block
    raw = x16.view(np.uint16).reshape(-1, P)
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def drive(ctx):
        ctx.set(dut.ebias, ebias)
        r = random.Random(seed)
        for row in raw:
            while r.random() < idle:
                await ctx.tick()
            ctx.set(dut.i_values.valid, 1)
            ctx.set(dut.i_values.payload, [int(v) for v in row])
            await ctx.tick().until(dut.i_values.ready)
            ctx.set(dut.i_values.valid, 0)

    async def monitor(ctx):
        r = random.Random(seed + 1)
        words = []
        n = 0
        while len(got) < (x16.shape[0] if nblocks is None else nblocks):
            rdy = r.random() >= bp
            ctx.set(dut.o_words.ready, rdy)
            _, _, valid, payload = await ctx.tick().sample(dut.o_words.valid, dut.o_words.payload)
            n += 1
            assert n < 20000 * x16.shape[0], f"timeout (seed {seed})"
            if valid and rdy:
                words.append(int(payload.data))
                if payload.last:
                    v = sum(w << (W * i) for i, w in enumerate(words))
                    got.append(v.to_bytes(nw * W // 8, "little")[:cfg.block_bytes])
                    words = []
                    if ends is not None:
                        ends.append(n)
        if counters is not None:        # a block's counters are updated before its first word leaves
            for k in ("count_blocks", "count_fallback", "count_escapes", "count_dropped", "error"):
                counters[k] = ctx.get(getattr(dut, k))

    sim.add_testbench(drive, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return got


@pytest.mark.parametrize("lanes", [1, 2])
def test_amaranth_sim_bit_exact(lanes):
    """Amaranth simulator: random + adversarial groups and (2 lanes) a NaN and an Inf group, which are
    refused; random idles and backpressure."""
    p = kv.KVParams(group=16, block_bytes=10, lanes=lanes)
    cb = kv.uniform_codebooks(params=p)
    rng = np.random.default_rng(SEED + lanes)
    x = np.concatenate([_random(3, 16, rng) * np.float16(0.01), _adversarial(16, rng)[[0, 1, 3, 4, 6, 8, 9]],
                        _heavy(4, 16, rng)])
    if lanes == 2:
        bad = _random(2, 16, rng)
        bad[0, 3], bad[1, -1] = np.nan, -np.inf
        x = np.concatenate([x[:2], bad[:1], x[2:], bad[1:]])
    keep = np.isfinite(x.astype(np.float64)).all(axis=1)
    eb = _ebias(x, p, cb)
    want, info = kv.encode_groups(x[keep].astype(np.float64), cb, p, eb, policy="hw")
    assert info["escapes"].sum() >= 4, info["escapes"]          # the escape decision is exercised
    dut = KVCompressor(codebooks=cb, params=p, values_per_cycle=2, bus_bits=32)
    cnt = {}
    got = _amaranth_run(dut, x, eb, SEED, nblocks=int(keep.sum()), counters=cnt)
    assert len(got) == keep.sum()
    assert cnt == _counters(cb, info, int(keep.sum()), int((~keep).sum())), (cnt, SEED)
    _assert_blocks(got, want, SEED)


def test_amaranth_sim_one_beat_groups():
    """A whole group per beat (P = group): bank handoffs on consecutive cycles, still byte-exact."""
    p = kv.KVParams(group=8, block_bytes=6, lanes=2)
    cb = kv.uniform_codebooks(params=p)
    rng = np.random.default_rng(SEED + 8)
    x = np.concatenate([_random(10, 8, rng), _heavy(4, 8, rng)])
    eb = _ebias(x, p, cb)
    want, info = kv.encode_groups(x.astype(np.float64), cb, p, eb, policy="hw")
    dut = KVCompressor(codebooks=cb, params=p, values_per_cycle=8, bus_bits=64)
    ends, cnt = [], {}
    got = _amaranth_run(dut, x, eb, SEED + 8, idle=0.0, bp=0.0, ends=ends, counters=cnt)
    assert cnt == _counters(cb, info, x.shape[0], 0), (cnt, SEED + 8)
    _assert_blocks(got, want, SEED + 8)
    # the packer keeps at most 2 blocks in flight or buffered (output credit): 2 blocks per packer depth
    assert len(ends) == x.shape[0] and min(np.diff(ends)) == 1, ends


def test_amaranth_sim_odd_lane_words():
    """A 40-byte block is 5 lane words (3 per even/odd bank and slot): every one of the 8 block slots
    is used and reused, byte-exact (regression: the lane RAMs were sized slots x 3, not slots x 4)."""
    p = kv.KVParams(group=32, block_bytes=40, lanes=2)
    cb = kv.uniform_codebooks(params=p)
    rng = np.random.default_rng(SEED + 40)
    x = np.concatenate([_random(10, 32, rng), _heavy(2, 32, rng)])
    eb = _ebias(x, p, cb)
    want, _ = kv.encode_groups(x.astype(np.float64), cb, p, eb, policy="hw")
    dut = KVCompressor(codebooks=cb, params=p, values_per_cycle=4, bus_bits=32)
    assert dut.nw == 5 and dut.nslot == 8, (dut.nw, dut.nslot)
    got = _amaranth_run(dut, x, eb, SEED + 40, idle=0.05, bp=0.1)
    _assert_blocks(got, want, SEED + 40)


@pytest.mark.parametrize("group,P", [(16, 4), (32, 4)])
def test_amaranth_sim_short_groups_full_rate(group, P):
    """Groups of 4 and 8 beats: enough banks and block slots (sized from the geometry) for one group
    every group/P cycles, byte-exact and without a gap between blocks once the pipeline is full."""
    p = kv.KVParams(group=group, block_bytes=group // 2, lanes=2)
    cb = kv.uniform_codebooks(params=p)
    rng = np.random.default_rng(SEED + group)
    x = np.concatenate([_random(14, group, rng), _heavy(2, group, rng)])
    eb = _ebias(x, p, cb)
    want, _ = kv.encode_groups(x.astype(np.float64), cb, p, eb, policy="hw")
    dut = KVCompressor(codebooks=cb, params=p, values_per_cycle=P, bus_bits=64)
    ends = []
    got = _amaranth_run(dut, x, eb, SEED + group, idle=0.0, bp=0.0, ends=ends)
    _assert_blocks(got, want, SEED + group)
    beats = group // P
    assert set(np.diff(ends).tolist()) == {beats}, (ends, dut.nbank, dut.nslot)


def test_amaranth_sim_bit_exact_nonuniform_table():
    """Non-uniform (k-means-like) centroid tables take the comparator path: still byte-exact."""
    p = kv.KVParams(group=16, block_bytes=10, lanes=2)
    cb0 = kv.uniform_codebooks(params=p)
    ce = cb0.centroids.copy()
    nt = cb0.s - 1
    warp = np.round(np.sign(ce[0, :nt]) * np.abs(ce[0, :nt]) ** 1.25 / 2).astype(np.int64)
    ce[0, :nt] = warp                       # codebook 0: a wider, non-uniform table
    ce[1, :nt] = ce[1, :nt] + (np.arange(nt) % 3 == 0)   # codebook 1: uniform but perturbed
    cb = kv.Codebooks(cb0.lengths, ce, max_len=cb0.max_len, esc_bits=cb0.esc_bits,
                      unit_per_step=cb0.unit_per_step)
    rng = np.random.default_rng(SEED + 7)
    x = np.concatenate([_random(4, 16, rng) * np.float16(0.01), _adversarial(16, rng)[[1, 4, 5, 9]],
                        _heavy(4, 16, rng)])
    eb = _ebias(x, p, cb)
    want, info = kv.encode_groups(x.astype(np.float64), cb, p, eb, policy="hw")
    assert info["escapes"].sum() >= 4 and set(info["sel"].tolist()) >= {0, 1}, info
    dut = KVCompressor(codebooks=cb, params=p, values_per_cycle=2, bus_bits=32)
    assert len(dut.tabs) == 4, dut.tabs                  # three Huffman tables + the fallback's
    got = _amaranth_run(dut, x, eb, SEED + 7, idle=0.1, bp=0.2)
    _assert_blocks(got, want, SEED + 7)


# ---------------------------------------------------------------------------- cocotb + Verilator

def _real_groups(g: int, n: int) -> np.ndarray:
    from sparsefab.data.minilm import kv_activations

    keys, values = kv_activations(["The cache compressor packs keys and values of a real transformer."],
                                  max_len=32)
    flat = np.concatenate([keys.reshape(-1), values.reshape(-1)]).astype(np.float16)
    return flat[: (flat.size // g) * g].reshape(-1, g)[:: max(1, flat.size // g // n)][:n]


@pytest.mark.slow
def test_cocotb_bit_exact_small():
    """Random, adversarial, NaN/Inf (refused) and real MiniLM groups, idles and backpressure."""
    from sparsefab.sim.tb_kv_compress import run_case

    p, cb = _small()
    rng = np.random.default_rng(SEED)
    x = np.concatenate([_random(6, p.group, rng), _adversarial(p.group, rng)])
    bad = _random(2, p.group, rng)
    bad[0, 3], bad[1, -1] = np.nan, -np.inf
    x = np.concatenate([x[:3], bad[:1], x[3:], bad[1:]])
    eb = _ebias(x, p, cb)
    out = run_case(x, codebooks=cb, params=p, ebias=eb, values_per_cycle=2, bus_bits=32, seed=SEED,
                   idle=0.2, backpressure=0.3)
    assert out["count_dropped"] == 2 and out["error"] == 1
    assert out["count_blocks"] == x.shape[0] - 2
    # real data (keys and values of MiniLM), its own ebias
    xr = _real_groups(p.group, 8)
    out = run_case(xr, codebooks=cb, params=p, ebias=_ebias(xr, p, cb), values_per_cycle=2, bus_bits=32,
                   seed=SEED + 1, idle=0.1, backpressure=0.1)
    assert out["count_blocks"] == 8 and out["error"] == 0
    # an extreme ebias (every step far too coarse): still byte-exact, no hang
    out = run_case(xr[:3], codebooks=cb, params=p, ebias=100, values_per_cycle=2, bus_bits=32,
                   seed=SEED + 2, idle=0.0, backpressure=0.0)
    assert out["count_blocks"] == 3 and out["error"] == 0


@pytest.mark.slow
def test_cocotb_default_geometry_minilm_throughput():
    """128 FP16 values -> 63 bytes, P = 4, trained codebooks, 48 real MiniLM groups: byte-exact with
    stalls and backpressure, and >= 4 values/cycle sustained without them."""
    from sparsefab.sim.tb_kv_compress import run_case

    p = kv.KVParams()
    xr = _real_groups(p.group, 48)
    cb = kv.train(xr.astype(np.float32), params=p, iters=2)
    rng = np.random.default_rng(SEED)
    x = np.concatenate([xr[:16], _adversarial(p.group, rng), xr[16:]])
    eb = _ebias(x, p, cb)
    out = run_case(x, codebooks=cb, params=p, ebias=eb, seed=SEED, idle=0.2, backpressure=0.3)
    assert out["count_blocks"] == x.shape[0]
    out = run_case(xr, codebooks=cb, params=p, ebias=_ebias(xr, p, cb), seed=SEED, idle=0.0, backpressure=0.0)
    assert out["sustained_values_per_cycle"] >= 4.0, out


@pytest.mark.slow
@pytest.mark.parametrize("group,block_bytes,lanes,P,bus,centroids", [
    (128, 63, 2, 4, 64, "kmeans"), (128, 63, 2, 8, 128, "uniform"), (64, 40, 1, 2, 32, "uniform"),
    (128, 48, 2, 2, 16, "uniform")])
def test_cocotb_sweep(group, block_bytes, lanes, P, bus, centroids):
    """Other geometries, non-uniform (k-means) centroid tables, narrow and wide buses."""
    from sparsefab.sim.tb_kv_compress import run_case

    p = kv.KVParams(group=group, block_bytes=block_bytes, lanes=lanes)
    rng = np.random.default_rng(SEED + group + lanes + P)
    xr = _real_groups(group, 12)
    cb = kv.train(xr.astype(np.float32), params=p, iters=2, centroids=centroids)
    x = np.concatenate([xr, _random(6, group, rng), _adversarial(group, rng)])
    out = run_case(x, codebooks=cb, params=p, ebias=_ebias(x, p, cb), values_per_cycle=P, bus_bits=bus,
                   seed=SEED, idle=0.15, backpressure=0.25)
    assert out["count_blocks"] == x.shape[0]


def test_cocotb_ecp5_netlist_with_dsp_primitives():
    """The netlist the ECP5 gets (operand and product registers inside MULT18X18D primitives),
    simulated with the behavioural model of sim/vendor_models.py: byte-exact with stalls."""
    from sparsefab.sim.tb_kv_compress import run_case
    from sparsefab.sim.vendor_models import family_verilog

    p, cb = _small()
    text = family_verilog(KVCompressor(codebooks=cb, params=p, values_per_cycle=2, bus_bits=32),
                          name="kv_compress", family="ecp5")
    assert "MULT18X18D" in text and "module MULT18X18D" in text
    rng = np.random.default_rng(SEED + 7)
    x = np.concatenate([_random(4, p.group, rng), _adversarial(p.group, rng), _heavy(3, p.group, rng)])
    out = run_case(x, codebooks=cb, params=p, ebias=_ebias(x, p, cb), values_per_cycle=2, bus_bits=32,
                   seed=SEED + 7, idle=0.2, backpressure=0.3, family="ecp5")
    assert out["count_blocks"] == x.shape[0] and out["error"] == 0
