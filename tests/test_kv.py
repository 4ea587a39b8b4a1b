"""Tests of compress/kv.py: the KV-cache codec golden model, its files and its spec."""

import struct
import zlib

import numpy as np
import pytest

from sparsefab.compress import huffman, kv
from sparsefab.compress.errors import FormatError, SparsefabError

SEED = 1234


def heavy(shape, seed=SEED):
    """Synthetic heavy-tailed KV-like data: per-channel scales, Student-t values, a few spikes."""
    rng = np.random.default_rng(seed)
    ch = np.exp(rng.normal(0, 0.6, shape[-1]))
    x = rng.standard_t(4, size=shape) * ch + rng.normal(0, 0.3, shape[-1])
    return x.astype(np.float16)


@pytest.fixture(scope="module")
def cb():
    return kv.train(heavy((256, 384), seed=7), params=kv.KVParams(), iters=2, max_blocks=2000)


# ------------------------------------------------------------------ independent reference decoder

def ref_decode_block(block: bytes, cb: kv.Codebooks, p: kv.KVParams, ebias: int, used: bool = False):
    """Bit-serial decoder written from docs/FORMATS_KV.md only (one block, Python ints); with
    ``used``, also the number of lane bits it read (codes + escape raw bits)."""
    bits = [(block[i // 8] >> (i % 8)) & 1 for i in range(8 * len(block))]

    def field(at, w, signed=False):
        v = sum(bits[at + j] << j for j in range(w))
        return v - (1 << w) if signed and w and v >= 1 << (w - 1) else v

    widths = [p.selbits(cb.k), p.ebits, p.mbits, p.obits] + [p.pbits] * p.npointers
    starts = np.cumsum([0] + widths)
    sel, e, f = (field(int(starts[j]), widths[j]) for j in range(3))
    o = field(int(starts[3]), p.obits, True)
    npairs = max(p.lanes // 2, 1)
    bnd = [p.header_bits(cb.k)] + [field(int(starts[4 + q]), p.pbits) for q in range(p.npointers)] + [0]
    bnd[npairs] = 8 * len(block)
    codes = huffman.canonical_codes(cb.lengths[sel])
    table = {(int(cb.lengths[sel][s]), int(codes[s])): s for s in range(cb.s) if cb.lengths[sel][s]}
    out = [0] * p.group
    nread = 0
    for lane in range(p.lanes):
        pair = lane // 2
        fwd = lane % 2 == 0 or p.lanes == 1
        order = iter(range(bnd[pair], bnd[pair + 1]) if fwd else range(bnd[pair + 1] - 1, bnd[pair] - 1, -1))

        def nxt(order=order):
            nonlocal nread
            nread += 1
            return bits[next(order)]
        for slot in range(p.group // p.lanes):
            code, n = 0, 0
            while (n, code) not in table:
                code = code << 1 | nxt()
                n += 1
                assert n <= cb.max_len
            s = table[(n, code)]
            if cb.esc_bits and s == cb.s - 1:
                d = sum(nxt() << j for j in range(cb.esc_bits))
                d = d - (1 << cb.esc_bits) if d >= 1 << (cb.esc_bits - 1) else d
                r = d + o * cb.unit_per_step
            else:
                r = int(cb.centroids[sel][s]) + o * cb.unit_per_step
            out[slot * p.lanes + lane] = r * ((1 << p.mbits) + f) * 2.0 ** (e + ebias)
    return (np.array(out), nread) if used else np.array(out)


@pytest.mark.parametrize("lanes,obits,axis", [(2, 0, "token"), (1, 0, "token"), (4, 6, "channel"),
                                              (8, 0, "token")])
def test_golden_matches_reference_decoder(lanes, obits, axis):
    p = kv.KVParams(lanes=lanes, obits=obits, axis=axis, block_bytes=72 if lanes == 8 else 63)
    cbk = kv.train(heavy((128, 256), seed=3), params=p, iters=1, max_blocks=500)
    x = heavy((64, 256), seed=SEED + lanes)
    data, stats = kv.compress(x, codebooks=cbk, params=p)
    hdr, cb2 = kv.read_header(data)
    blocks = kv.file_blocks(data, hdr)
    vals, _ = kv.decode_blocks(blocks, cb2, p, hdr.ebias)
    for b in range(0, hdr.nblocks, max(1, hdr.nblocks // 12)):
        np.testing.assert_array_equal(vals[b], ref_decode_block(blocks[b].tobytes(), cb2, p, hdr.ebias),
                                      err_msg=f"block {b} seed {SEED + lanes}")
    out, _ = kv.decompress(data)
    assert out.dtype == np.float16 and out.shape == x.shape
    assert kv.sqnr_db(x, out) == pytest.approx(stats["sqnr_db"])


def test_roundtrip_stats_and_sizes(cb):
    x = heavy((96, 384), seed=SEED)
    p = kv.KVParams()
    data, st = kv.compress(x, codebooks=cb, params=p)
    nb = 96 * 3
    assert st["blocks"] == nb
    cbl = len(cb.to_bytes())
    assert cbl == 16 + 3 * cb.k * cb.s
    assert len(data) == 64 + ((cbl + 7) & ~7) + nb * 63 == st["file_bytes"]
    assert st["ratio"] == pytest.approx(x.size * 2 / len(data))
    out, info = kv.decompress(data)
    err = out.astype(np.float64) - x.astype(np.float64)
    assert st["max_abs_err"] == pytest.approx(np.abs(err).max())
    assert sum(st["per_codebook"]) == nb
    assert st["sqnr_db"] > 15, st
    # entropy bound: the coded bits cannot beat the zeroth-order entropy of the same symbols
    ent = kv.codec_entropy(data)
    assert ent["bits_per_value_bound"] <= (st["mean_used_bits"]) / 128 + 1e-9


def test_header_fields_at_documented_offsets(cb):
    x = heavy((4, 8, 2, 64), seed=2)
    p = kv.KVParams(axis="channel", group=64, block_bytes=40, lanes=4, obits=5)
    cbk = kv.train(x, params=p, iters=1)
    data, _ = kv.compress(x, codebooks=cbk, params=p)
    assert data[:4] == b"SFKV"
    ver, dt, nd = struct.unpack_from("<HBB", data, 4)
    assert (ver, dt, nd) == (1, 1, 4)
    assert struct.unpack_from("<4I", data, 8) == (4, 8, 2, 64)
    assert struct.unpack_from("<BBHHBBBB", data, 24) == (1, 4, 64, 40, 4, 3, 5, 0)
    nblocks, cbl = struct.unpack_from("<II", data, 36)
    assert nblocks == 4 * 128 * 1 and data[44:60] == bytes(16)
    assert struct.unpack_from("<I", data, 60)[0] == zlib.crc32(data[64:], zlib.crc32(data[:60]))
    assert data[64:68] == b"SFKC" and kv.Codebooks.from_bytes(data[64:64 + cbl]).k == cbk.k
    # block header: sel(3 bits for K=4? no: bit_length(3)=2), e 4, f 3, o 5, B_1 (pbits)
    assert p.header_bits(cbk.k) == 2 + 4 + 3 + 5 + (320).bit_length()


def test_bf16_and_float32_inputs(cb):
    x = heavy((32, 256), seed=5).astype(np.float32)
    bf = kv.float_to_bf16(x)
    data, st = kv.compress(bf, codebooks=cb)
    out, info = kv.decompress(data)
    assert out.dtype == np.uint16 and info["dtype"] == "bf16"
    assert kv.sqnr_db(kv.bf16_to_float(bf), kv.bf16_to_float(out)) == pytest.approx(st["sqnr_db"])
    data2, _ = kv.compress(x, codebooks=cb)         # float32 rounded to FP16
    assert kv.decompress(data2)[0].dtype == np.float16


def test_bf16_rounding_is_nearest_even():
    vals = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -9, -2.5])
    assert list(kv.float_to_bf16(vals)) == [0x3F80, 0x3F82, 0x3F80, 0xC020]


@pytest.mark.parametrize("scale", [1.0, 1e-5])
def test_adversarial_groups(cb, scale):
    # One tensor per magnitude range: the 4-bit step exponent covers 2**16 below the largest
    # step of a tensor, so tiny groups next to 60000 would be coded with that tensor's finest step.
    g = 128
    rows = [np.zeros(g), np.full(g, 3.25), np.full(g, -0.01), np.r_[np.zeros(g - 1), 1000.0],
            np.r_[np.full(g - 1, 0.01), -6000.0], np.full(g, 0.006),
            np.linspace(-1, 1, g), np.where(np.arange(g) % 2, 4000.0, -4000.0)]
    x = (np.stack(rows) * scale).astype(np.float16)       # scale 1e-5: FP16 subnormals
    data, st = kv.compress(x, codebooks=cb)
    out, _ = kv.decompress(data)
    assert np.isfinite(out.astype(np.float64)).all()
    assert (out[0] == 0).all(), "a zero group must decode to zeros"
    xr = x.astype(np.float64)
    err = np.abs(out.astype(np.float64) - xr)
    hdr, cbf = kv.read_header(data)
    # Documented floor: the 4-bit step exponent spans 2**16 below the coarsest step, so the
    # finest step of a tensor is ~max|x| * 2**-15; errors never exceed it or 26% of the group.
    finest = cbf.unit_per_step * (1 << hdr.params.mbits) * 2.0 ** hdr.ebias
    assert finest <= np.abs(xr).max() * 2.0 ** -14
    for i, r in enumerate(xr):
        assert err[i].max() <= 0.26 * np.abs(r).max() + finest, (i, scale, err[i].max())
    assert abs(float(out[3, -1]) - 1000.0 * scale) < 80 * scale, "single spike kept (escape or coarse step)"
    sub = np.stack([np.full(g, 6e-8), np.linspace(-3e-6, 3e-6, g)]).astype(np.float16)  # all subnormal
    outs = kv.decompress(kv.compress(sub, codebooks=cb)[0])[0]
    assert (outs[0] == sub[0]).all() and kv.sqnr_db(sub, outs) > 20


def test_nan_inf_refused(cb):
    x = heavy((4, 128))
    x[2, 5] = np.nan
    with pytest.raises(SparsefabError, match=r"non-finite .* index \(2, 5\)"):
        kv.compress(x, codebooks=cb)
    y = np.full((2, 128), 1e6, np.float32)
    with pytest.raises(SparsefabError, match="overflow"):
        kv.compress(y, codebooks=cb)
    with pytest.raises(SparsefabError, match="dtype"):
        kv.compress(np.zeros((2, 128), np.int32), codebooks=cb)


def test_params_validated():
    for bad in (dict(group=7), dict(lanes=3), dict(block_bytes=3), dict(axis="x"), dict(group=130, lanes=4),
                dict(obits=13), dict(ebits=0)):
        with pytest.raises(SparsefabError):
            kv.KVParams(**bad)


def test_codebook_file_checks(cb):
    raw = cb.to_bytes()
    assert kv.Codebooks.from_bytes(raw).to_bytes() == raw
    with pytest.raises(FormatError, match="magic"):
        kv.Codebooks.from_bytes(b"XXXX" + raw[4:])
    with pytest.raises(FormatError, match="CRC"):
        kv.Codebooks.from_bytes(raw[:20] + bytes([raw[20] ^ 1]) + raw[21:])
    with pytest.raises(FormatError, match="bytes"):
        kv.Codebooks.from_bytes(raw[:-1])
    forged = bytearray(raw)
    forged[6] = 200  # K
    with pytest.raises(FormatError, match="K="):
        kv.Codebooks.from_bytes(bytes(forged))
    # a non-prefix code with a valid CRC is refused
    bad = bytearray(raw)
    bad[12] = bad[13] = bad[14] = 1
    body = bytes(bad[:-4])
    with pytest.raises(FormatError, match="Kraft"):
        kv.Codebooks.from_bytes(body + struct.pack("<I", zlib.crc32(body)))


def _recrc(d: bytearray) -> bytes:
    struct.pack_into("<I", d, 60, zlib.crc32(bytes(d[64:]), zlib.crc32(bytes(d[:60]))))
    return bytes(d)


def test_file_checks_before_allocation(cb):
    data, _ = kv.compress(heavy((8, 128)), codebooks=cb)
    with pytest.raises(FormatError, match="too short"):
        kv.decompress(data[:10])
    with pytest.raises(FormatError, match="bytes, header implies"):
        kv.decompress(data[:-1])
    d = bytearray(data)
    d[100] ^= 0x10
    with pytest.raises(FormatError, match="CRC"):
        kv.decompress(bytes(d))
    huge = bytearray(data)
    struct.pack_into("<4I", huge, 8, 1 << 31, 1 << 31, 0, 0)
    struct.pack_into("<I", huge, 36, 0xFFFFFFFF)
    with pytest.raises(FormatError, match="blocks"):
        kv.decompress(_recrc(huge))
    bad = bytearray(data)
    bad[0] = ord("X")
    with pytest.raises(FormatError, match="magic"):
        kv.decompress(bytes(bad))


def test_malformed_blocks_are_flagged(cb):
    p = kv.KVParams(lanes=4, block_bytes=63)
    cbk = kv.train(heavy((64, 128), seed=9), params=p, iters=1)
    data, _ = kv.compress(heavy((8, 128)), codebooks=cbk, params=p)
    hdr, _ = kv.read_header(data)
    off = hdr.blocks_offset + 3 * 63
    # boundary pointer B_1 (bits 9..17) beyond the block
    d = bytearray(data)
    v = int.from_bytes(d[off:off + 4], "little") | (0x1FF << 9)
    d[off:off + 4] = v.to_bytes(4, "little")
    with pytest.raises(FormatError, match="kv block 3: lane boundary"):
        kv.decompress(_recrc(d))
    # B_1 pulled down to the header end: the two lanes of pair 0 overlap
    d = bytearray(data)
    v = (int.from_bytes(d[off:off + 4], "little") & ~(0x1FF << 9)) | (p.header_bits(cbk.k) << 9)
    d[off:off + 4] = v.to_bytes(4, "little")
    with pytest.raises(FormatError, match="kv block 3"):
        kv.decompress(_recrc(d))


def test_selector_out_of_range_flagged():
    p = kv.KVParams()
    cb3 = kv.uniform_codebooks(params=p, n_huffman=2)   # K = 3, selector 2 bits: value 3 is invalid
    data, _ = kv.compress(heavy((4, 128)), codebooks=cb3, params=p)
    hdr, _ = kv.read_header(data)
    d = bytearray(data)
    d[hdr.blocks_offset + 63] |= 0b11
    with pytest.raises(FormatError, match="kv block 1: codebook selector"):
        kv.decompress(_recrc(d))


def test_fallback_codebook_fits_and_is_used_for_flat_data_search_policy():
    p = kv.KVParams()
    cbk = kv.uniform_codebooks(params=p)
    fr = [cbk.fixed_rate(i) for i in range(cbk.k)]
    assert fr[-1] == 3 and p.header_bits(cbk.k) + 128 * 3 <= p.nbits
    rng = np.random.default_rng(SEED)
    # 8 equiprobable levels on the fallback's own grid: it is exact, the Laplacian codes are not
    x = ((rng.integers(0, 8, (64, 128)) - 4) * 0.125).astype(np.float16)
    x[:, 0], x[:, 1] = -0.5, 0.375                         # every block spans the full grid
    data, st = kv.compress(x, codebooks=cbk, params=p, policy="search")
    assert st["fallback_blocks"] == 64 and st["sqnr_db"] == float("inf"), st
    np.testing.assert_array_equal(kv.decompress(data)[0], x)


def test_minmax_baseline_matches_definition():
    x = heavy((8, 256))
    r = kv.minmax_baseline(x, bits=4)
    assert r["ratio"] == pytest.approx(256 / (64 + 4))
    assert 0 < r["entropy"] <= 4 and r["entropy_ratio"] >= r["ratio"]
    g = x.astype(np.float64).reshape(-1, 128)
    mn = g.min(1, keepdims=True).astype(np.float16).astype(np.float64)
    sc = ((g.max(1, keepdims=True) - mn) / 15).astype(np.float16).astype(np.float64)
    rec = (np.clip(np.rint((g - mn) / sc), 0, 15) * sc + mn).astype(np.float16)
    np.testing.assert_array_equal(r["recon"].reshape(-1, 128), rec.astype(np.float64))


def test_kivi_residual_tokens_stay_fp16():
    x = heavy((1, 300, 2, 64))                                  # 300 tokens: 2 groups + 44 residual
    r = kv.minmax_baseline(x, bits=4, axis="channel", residual_fp16=True)
    rec = r["recon"].reshape(300, 128)
    np.testing.assert_array_equal(rec[256:], x.reshape(300, 128)[256:].astype(np.float64))
    qbytes = 128 * 2 * (64 + 4)                                # 128 channels x 2 groups
    assert r["ratio"] == pytest.approx(300 * 128 * 2 / (qbytes + 44 * 128 * 2))


# ------------------------------------------------------------------ one-pass hardware policy

def _hw_cases(g: int) -> np.ndarray:
    """Heavy-tailed groups plus adversarial ones: constant, zero, single spikes, subnormals only,
    FP16 extremes, exact half steps."""
    rng = np.random.default_rng(SEED + 5)
    x = heavy((24, g), seed=SEED + 5).astype(np.float64)
    rows = [np.zeros(g), np.full(g, 1.0), np.full(g, -3.25), np.full(g, 65504.0), np.linspace(-65504, 65504, g),
            np.arange(1, g + 1) * 2.0 ** -24, np.where(np.arange(g) % 2, 6.0e-5, -6.1e-5),
            np.round(rng.standard_normal(g) * 4) / 2]
    spike = rng.standard_normal(g) * 0.01
    spike[g // 3] = 900.0
    rows.append(spike)
    return np.concatenate([x, np.array(rows)]).astype(np.float16).astype(np.float64)


def test_hw_policy_independent_checks(cb):
    """policy="hw": every block decodes (golden and the bit-serial reference decoder agree), the
    used bits are the sum of the codebook lengths the reference decoder read, the quantizer stays
    within half a step (+1/4 unit of truncation) of every value, and no finer candidate of the
    window fits under any Huffman codebook."""
    p = kv.KVParams()
    x = _hw_cases(p.group)
    eb = kv.choose_ebias(float(np.abs(x).max()), p, cb)
    blocks, info = kv.encode_groups(x, cb, p, eb, policy="hw")
    vals, dinfo = kv.decode_blocks(blocks, cb, p, eb)
    assert np.array_equal(dinfo["sel"], info["sel"])
    hdr = p.header_bits(cb.k)
    for b in range(x.shape[0]):
        ref, nread = ref_decode_block(blocks[b].tobytes(), cb, p, eb, used=True)
        np.testing.assert_array_equal(vals[b], ref, err_msg=f"block {b} (seed {SEED + 5})")
        assert info["bits"][b] == hdr + nread <= p.nbits, f"block {b}"
    unit = kv._units(info["t"], p, eb)[:, None]
    v = x / unit
    huffb = ~np.isin(info["sel"], [i for i in range(cb.k) if cb.fixed_rate(i)])[:, None]
    big = np.abs(x) >= 2.0 ** 15
    inside = (np.abs(v) <= 44 + 2) & huffb & ~big   # inside the uniform table (centroids +-44 units)
    err = np.abs(v - vals / unit)
    assert (err[inside] <= cb.unit_per_step / 2 + 0.25).all(), float(err[inside].max())
    # the top FP16 binade is never rounded away from zero (no reconstruction overflows to Inf)
    assert big.any() and (np.abs(vals[big]) <= np.abs(x[big])).all()
    assert np.isfinite(kv.round_to(vals, "fp16").astype(np.float64)).all()
    # the policy's choice: the finest window candidate that fits under any Huffman codebook
    base, _ = kv.hw_window(x, cb, p, eb)
    huff = [i for i in range(cb.k) if not cb.fixed_rate(i)]
    for c in range(kv.HW_CANDIDATES):
        t = base + c
        finer = t < info["t"]
        for i in huff:
            bits = kv._hw_quantize(x, t, i, cb, p, eb, hdr).bits
            assert not (finer & (bits <= p.nbits)).any(), f"candidate {c} codebook {i} fits"
    ent = kv.codec_entropy(kv.compress(x.astype(np.float16), codebooks=cb, params=p, policy="hw")[0])
    assert ent["bits_per_value_bound"] <= info["bits"].mean() / p.group + 1e-9


def test_hw_policy_fallback_and_policy_names():
    """A very peaked Huffman code (1 bit for 0, 6 for the rest) cannot carry uniform noise at any window step: those
    blocks take the fixed-rate fallback, per block (the sparse blocks beside them do not); unknown
    policies are refused."""
    p = kv.KVParams()
    base = kv.uniform_codebooks(params=p, n_huffman=1)
    lengths = base.lengths.copy()
    lengths[0] = 6
    lengths[0, 11] = 1                                # centroid 0: 1 bit, every other symbol 6 bits
    cbk = kv.Codebooks(lengths, base.centroids)
    rng = np.random.default_rng(SEED)
    x = np.zeros((8, 128))
    x[:4] = rng.uniform(-1, 1, (4, 128))
    for r in range(4, 8):
        x[r, rng.choice(128, 6, replace=False)] = rng.uniform(-1, 1, 6)
    x = x.astype(np.float16)
    data, st = kv.compress(x, codebooks=cbk, params=p, policy="hw")
    _, info = kv.encode_groups(x.astype(np.float64), cbk, p, kv.choose_ebias(1.0, p, cbk), policy="hw")
    assert st["policy"] == "hw" and st["fallback_blocks"] == 4, st
    assert (info["sel"][:4] == cbk.k - 1).all() and (info["sel"][4:] < cbk.k - 1).all(), info["sel"]
    out, _ = kv.decompress(data)
    assert np.isfinite(out.astype(np.float64)).all()
    with pytest.raises(SparsefabError, match="policy='fast'"):
        kv.compress(x, codebooks=cbk, params=p, policy="fast")
    with pytest.raises(SparsefabError, match="obits=4"):
        kv.encode_groups(x.astype(np.float64), cbk, kv.KVParams(obits=4), -10, policy="hw")
    assert kv.compress(x, codebooks=cbk, params=kv.KVParams(obits=4))[1]["policy"] == "search"


def test_hw_policy_bf16_and_nan():
    p = kv.KVParams()
    cbk = kv.uniform_codebooks(params=p)
    x = heavy((4, 256)).astype(np.float32)
    data, st = kv.compress(x, codebooks=cbk, params=p, dtype="bf16", policy="hw")
    assert st["policy"] == "hw" and st["sqnr_db"] > 15
    x[1, 7] = np.nan
    with pytest.raises(SparsefabError, match=r"non-finite value nan at index \(1, 7\)"):
        kv.compress(x, codebooks=cbk, params=p, policy="hw")
