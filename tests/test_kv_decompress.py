"""Tests of gen/kv_decompress.py: the RTL KV decompressor against the golden decoder.

cocotb + Verilator through sim/kv_flow.py (one cached build per geometry; codebooks are
runtime tables).  Every expected value comes from sparsefab.compress.kv.
"""

import dataclasses

import numpy as np
import pytest

from sparsefab.compress import kv
from sparsefab.compress.errors import FormatError, SparsefabError
from sparsefab.gen.kv_decompress import CFG_TOT, KVDecompressConfig, KVDecompressor, config_words

SEED = 4242


def heavy(shape, seed=SEED):
    rng = np.random.default_rng(seed)
    ch = np.exp(rng.normal(0, 0.6, shape[-1]))
    return (rng.standard_t(4, size=shape) * ch + rng.normal(0, 0.3, shape[-1])).astype(np.float16)


@pytest.fixture(scope="module")
def cb():
    return kv.train(heavy((64, 384), seed=1), params=kv.KVParams(), iters=2)


def test_config_validated():
    for bad in (dict(lanes=4), dict(values_per_cycle=12), dict(bus_bits=48), dict(max_len=9),
                dict(decoder="x"), dict(group=100), dict(unit_per_step=3)):
        with pytest.raises(SparsefabError):
            KVDecompressConfig(**bad)
    with pytest.raises(SparsefabError, match="not both"):
        KVDecompressor(config=KVDecompressConfig(), lanes=2)
    c = KVDecompressConfig()
    assert (c.header_bits, c.words_per_block, c.spl, c.cycles_per_block) == (9, 8, 4, 16)
    assert (c.decoder, c.walk_chunk, c.walk_chunks, c.walk_lookahead, c.latency_last) == ("walk", 32, 16, (1, 2), 32)
    assert KVDecompressConfig(decoder="chain").latency_last == 21
    assert KVDecompressConfig(lanes=1).decoder == "chain"             # 8 symbols per lane: no walk
    with pytest.raises(SparsefabError, match="walk decoder"):
        KVDecompressConfig(lanes=1, decoder="walk")


def test_config_words_describe_canonical_codes(cb):
    """The limit/offset tables decode every code of every codebook to its symbol's centroid."""
    from sparsefab.compress import huffman
    cfg = KVDecompressConfig.from_codec(kv.KVParams(), cb)
    regs = dict(config_words(cb, cfg))
    for k in range(cb.k):
        lim = [regs[64 * k + i] for i in range(8)]
        off = [regs[64 * k + 8 + i] - (128 if regs[64 * k + 8 + i] >= 64 else 0) for i in range(8)]
        codes = huffman.canonical_codes(cb.lengths[k])
        for s in np.flatnonzero(cb.lengths[k]):
            ln = int(cb.lengths[k][s])
            w = int(codes[s]) << (8 - ln)
            got = next(i + 1 for i in range(8) if w < lim[i])
            assert got == ln
            rank = ((w >> (8 - ln)) + off[ln - 1]) % 128   # the RTL adds modulo 2**7
            if cb.esc_bits and s == cb.s - 1:
                assert regs[64 * k + 16] == ln and regs[64 * k + 17] == codes[s]
            else:
                cv = regs[64 * k + 32 + rank]
                assert cv - (65536 if cv >= 32768 else 0) == cb.centroids[k, s]
            # walk: the code-length table maps every window that begins with this code to its
            # length (+ esc_bits for the escape)
            esc = bool(cb.esc_bits) and s == cb.s - 1
            for tail in range(1 << (8 - ln)):
                assert regs[CFG_TOT + (k << 8) + w + tail] == ln + (cb.esc_bits if esc else 0), (k, s, tail)
        # windows that begin no code (an incomplete code) read 0; every entry is written once
        tab = [regs[CFG_TOT + (k << 8) + w] for w in range(256)]
        assert sum(2 ** (8 - int(n)) for n in cb.lengths[k] if n) == sum(t != 0 for t in tab)
    assert len(regs) == len(config_words(cb, cfg))
    chain = dict(config_words(cb, dataclasses.replace(cfg, decoder="chain")))
    assert not any(a >= CFG_TOT for a in chain)                 # only the walk decoder has the table


def _run(data, **kw):
    from sparsefab.sim import kv_flow
    return kv_flow.run_case(data, seed=SEED, **kw)


def test_rtl_bit_exact_with_stalls_and_throughput(cb):
    """Random heavy-tailed blocks, random idles and backpressure: every beat equals golden."""
    from sparsefab.sim import kv_flow
    x = heavy((24, 384), seed=SEED)
    data, _ = kv.compress(x, codebooks=cb)
    _run(data, idle=0.3, backpressure=0.3)          # scoreboard inside the bench
    res = _run(data)                                  # no stalls: measured rate and latency
    fig = kv_flow.measure(res)
    assert fig["values_per_cycle"] == pytest.approx(8.0), fig
    assert fig["latency_cycles"] == res["config"].latency_last <= 32, fig


def test_rtl_adversarial_blocks(cb):
    """Constant groups, single spikes (escapes), subnormals, fallback blocks, +-max values."""
    g = 128
    rng = np.random.default_rng(SEED)
    big = [np.zeros(g), np.full(g, 3.25), np.r_[np.zeros(g - 1), 900.0], np.linspace(-60000, 60000, g),
           rng.standard_t(2, g) * 50, np.r_[np.full(g - 1, -0.01), 30000.0]]
    small = [np.full(g, 6e-6), np.where(np.arange(g) % 2, 1e-7, -1e-7), rng.standard_t(3, g) * 1e-5,
             np.r_[np.zeros(g - 1), 6e-8]]                    # FP16 subnormals
    for rows in (big, small):
        x = np.stack(rows + [r[::-1] for r in rows]).astype(np.float16)
        data, _ = kv.compress(x, codebooks=cb)
        _run(data, idle=0.2, backpressure=0.2)
    flat = kv.uniform_codebooks(params=kv.KVParams())
    x = ((rng.integers(0, 8, (6, g)) - 4) * 0.125).astype(np.float16)
    data, st = kv.compress(x, codebooks=flat, policy="search")   # the search policy takes the fallback here
    assert st["fallback_blocks"] > 0
    _run(data)


@pytest.mark.slow          # its K = 3 decompressor is a second 110k-line Verilator build (about 5 minutes
def test_rtl_flags_exactly_the_malformed_blocks(cb):     # of both cores): make regress runs it
    """Corrupted blocks: the RTL error flag matches the golden decoder's verdict, block by block,
    good blocks still decode bit-exactly, and nothing hangs."""
    from sparsefab.sim import kv_flow
    p = kv.KVParams()
    cb3 = kv.uniform_codebooks(params=p, n_huffman=2)      # K = 3: selector value 3 is invalid
    data, _ = kv.compress(heavy((8, 384), seed=3), codebooks=cb3, params=p)
    hdr, _ = kv.read_header(data)
    blocks = kv.file_blocks(data, hdr).copy()
    rng = np.random.default_rng(SEED)
    blocks[1, 0] |= 0b11                                     # selector out of range
    blocks[4] = rng.integers(0, 256, 63, dtype=np.uint8)     # random garbage
    blocks[7, 20:43] = 0xFF                                  # long codes everywhere: lanes overrun
    verdict = []
    for b in range(len(blocks)):
        try:
            kv.decode_blocks(blocks[b:b + 1], cb3, p, hdr.ebias)
            verdict.append(False)
        except FormatError:
            verdict.append(True)
    assert sum(verdict) >= 2, verdict
    res = _run(data, blocks=blocks, check=False, dump=True, expect_errors=sum(verdict))
    beats = np.array(res["beats"])
    bpb = 16
    flags = beats[bpb - 1::bpb, -1].astype(bool)
    assert list(flags) == verdict
    exp = kv_flow.golden_beats(blocks[~np.array(verdict)], cb3, p, hdr.ebias, 8)
    got = beats.reshape(len(blocks), bpb, -1)[~np.array(verdict)].reshape(-1, beats.shape[1])
    assert [tuple(b) for b in got.tolist()] == exp


@pytest.mark.minilm
def test_rtl_on_real_minilm_keys():
    from sparsefab.data import minilm
    if not minilm.available():
        pytest.skip(minilm.INSTALL_HINT)
    k, _ = minilm.kv_activations(minilm.load_texts()[:1])
    x = k[:1].astype(np.float16)
    p = kv.KVParams()
    cbk = kv.train(x, params=p, iters=2)
    data, _ = kv.compress(x[:, :24], codebooks=cbk, params=p)
    _run(data, idle=0.1, backpressure=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("decoder,bus_bits", [("spec", 64), ("chain", 32), ("walk", 32)])
def test_rtl_variants(cb, decoder, bus_bits):
    x = heavy((8, 384), seed=SEED + 1)
    data, _ = kv.compress(x, codebooks=cb)
    _run(data, decoder=decoder, bus_bits=bus_bits, idle=0.2, backpressure=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("geometry", [dict(group=64, block_bytes=36, lanes=1, obits=4),   # chain
                                      dict(obits=4)])                                    # walk + offsets
def test_rtl_other_geometry(geometry):
    p = kv.KVParams(axis="channel", **geometry)
    x = heavy((64, 96 if p.group == 64 else 256), seed=9)
    cbk = kv.train(x, params=p, iters=1)
    data, _ = kv.compress(x, codebooks=cbk, params=p)
    res = _run(data, idle=0.2, backpressure=0.2)
    assert res["config"].decoder == ("chain" if p.lanes == 1 else "walk")


def amaranth_sim_beats(data, decoder):
    """Run the decompressor in Amaranth's own simulator (no Verilator build) on a small file."""
    from amaranth.sim import Simulator

    from sparsefab.gen.kv_decompress import KVDecompressConfig, KVDecompressor, config_words
    from sparsefab.sim import kv_flow
    hdr, cbf = kv.read_header(data)
    blocks = kv.file_blocks(data, hdr)
    cfg = KVDecompressConfig.from_codec(hdr.params, cbf, decoder=decoder)
    words = kv_flow.block_words(blocks, 64)
    dut = KVDecompressor(config=cfg)
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    got = []

    async def tb(ctx):
        ctx.set(dut.ebias, hdr.ebias)
        for a, d in config_words(cbf, cfg):
            ctx.set(dut.i_cfg.valid, 1)
            ctx.set(dut.i_cfg.payload.addr, a)
            ctx.set(dut.i_cfg.payload.data, d)
            await ctx.tick()
        ctx.set(dut.i_cfg.valid, 0)
        ctx.set(dut.o_values.ready, 1)
        wi = 0
        for _ in range(cfg.cycles_per_block * len(blocks) + 60):
            ctx.set(dut.i_words.valid, int(wi < len(words)))
            if wi < len(words):
                ctx.set(dut.i_words.payload, words[wi])
            rdy = ctx.get(dut.i_words.ready)
            if ctx.get(dut.o_values.valid):
                pl = dut.o_values.payload
                got.append((*[ctx.get(pl.data[i]) for i in range(8)], ctx.get(pl.last), ctx.get(pl.error)))
            await ctx.tick()
            wi += int(wi < len(words) and rdy)

    sim.add_testbench(tb)
    sim.run()
    return got, kv_flow.golden_beats(blocks, cbf, hdr.params, hdr.ebias, 8)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", ["chain", "spec", "walk"])
def test_amaranth_sim_both_decoders(decoder):
    """The three decoders (chained, speculative, table walk) equal golden; no Verilator."""
    rng = np.random.default_rng(SEED)
    x = (rng.standard_t(3, (2, 256)) * 0.7).astype(np.float16)
    x[0, 5] = 900.0                                            # an escape
    cbk = kv.train(x, params=kv.KVParams(), iters=1)
    data, _ = kv.compress(x, codebooks=cbk)
    got, exp = amaranth_sim_beats(data, decoder)
    assert got == exp, f"decoder {decoder}, seed {SEED}"


def _forge_block(cb, params, sel, e, f, lanes_syms):
    """A block written bit by bit from the spec (docs/FORMATS_KV.md 3.1-3.3): header, lane 0
    forward from the header, lane 1 backward from the last bit; ``lanes_syms[l]`` is a list of
    ``(symbol, raw)`` (raw: escape payload).  Validity is then checked by the golden decoder."""
    from sparsefab.compress import huffman
    n, h = params.nbits, params.header_bits(cb.k)
    bits = np.zeros(n, np.uint8)
    sb = int(cb.k - 1).bit_length()
    for at, w, val in ((0, sb, sel), (sb, params.ebits, e), (sb + params.ebits, params.mbits, f)):
        bits[at:at + w] = [(val >> i) & 1 for i in range(w)]
    codes = huffman.canonical_codes(cb.lengths[sel])
    for lane, syms in enumerate(lanes_syms):
        seq = []
        for s, raw in syms:
            ln = int(cb.lengths[sel][s])
            seq += [(int(codes[s]) >> (ln - 1 - i)) & 1 for i in range(ln)]
            if s == cb.s - 1:
                seq += [(raw >> i) & 1 for i in range(cb.esc_bits)]
        idx = h + np.arange(len(seq)) if lane == 0 else n - 1 - np.arange(len(seq))
        bits[idx] = seq
    return np.packbits(bits, bitorder="little")


@pytest.mark.slow          # make test stays under 15 minutes; make regress runs it
def test_rtl_walk_overtakes_its_tables():
    """Lanes that open with 19 escapes (18 bits each): on the first block the walk runs ahead of
    its tables and waits for them (a longer latency); later blocks find their tables computed a
    block ahead (8 values/cycle); values bit-exact."""
    from sparsefab.sim import kv_flow
    p = kv.KVParams()
    base = kv.uniform_codebooks(params=p)
    ln = base.lengths.copy()
    ln[0] = 0
    ln[0, 11], ln[0, 10], ln[0, 12] = 1, 2, 3           # '0', '10', '110'
    ln[0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]] = 8
    cbx = kv.Codebooks(ln, base.centroids, max_len=8, esc_bits=10, unit_per_step=4)
    rng = np.random.default_rng(SEED)
    data, _ = kv.compress(heavy((2, 128), seed=5), codebooks=cbx)
    hdr, _ = kv.read_header(data)
    esc = [(23, int(r)) for r in rng.integers(-512, 512, 19)]
    rest = [(int(s), 0) for s in rng.choice([10, 11, 12], 45, p=[0.2, 0.7, 0.1])]
    quiet = [(11, 0)] * 64
    blocks = np.stack([_forge_block(cbx, p, 0, 9, 3, lanes) for lanes in
                       ((esc + rest, quiet), (quiet, esc + rest), (esc + rest, quiet), (rest[:19] + esc + rest[19:26], quiet))])
    vals, _ = kv.decode_blocks(blocks, cbx, p, hdr.ebias)      # the golden decoder accepts them
    assert np.abs(vals).max() > 0
    res = _run(data, blocks=blocks)                              # bit-exact (scoreboard in the bench)
    fig = kv_flow.measure(res)
    assert fig["errors"] == 0 and fig["latency_cycles"] > res["config"].latency_last, fig
    assert fig["values_per_cycle"] == pytest.approx(8.0), fig
    _run(data, blocks=blocks, idle=0.3, backpressure=0.3)
