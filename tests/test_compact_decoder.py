"""CompactDecoder (the iCE40 front end): lanes, row tags, padding checks, malformed streams (Amaranth sim)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsefab.compress.bitmap import bitmap_sections
from sparsefab.compress.errors import SparsefabError
from sparsefab.gen.bitmap_decoder import lane_layout
from sparsefab.gen.compact_decoder import CompactDecoder
from sparsefab.gen.spmv_config import ERRORS, SpmvConfig
from sparsefab.sim.tb_spmv import run_decoder


def _codes(rng, rows, cols, density, bits):
    lo, hi = -(1 << (bits - 1)), 1 << (bits - 1)
    v = rng.integers(lo, hi, (rows, cols))
    v[v == 0] = 1
    return ((rng.random((rows, cols)) < density) * v).astype(np.int64)


def _triples(codes):
    r, c = np.nonzero(codes)
    return list(zip(r.tolist(), c.tolist(), codes[r, c].tolist(), strict=True))


def _cfg(**kw):
    p = dict(lanes=4, weight_bits=8, block=16, bus_bits=32, max_cols=64, mask_words=1, decoder="compact")
    p.update(kw)
    return SpmvConfig(**p)


def _edge_matrix(rng, cols, bits):
    """Rows: empty, fully dense, random 30 %, a single nonzero in the last column, empty, random 5 %."""
    c = _codes(rng, 6, cols, 0.3, bits)
    c[0] = 0
    c[1] = _codes(rng, 1, cols, 1.0, bits)[0]
    c[3] = 0
    c[3, cols - 1] = -1
    c[4] = 0
    c[5] = _codes(rng, 1, cols, 0.05, bits)[0]
    return c


# lanes, bits, block, bus, mask_words, cols
POINTS = [
    (8, 8, 16, 32, 2, 100),     # the iCEBreaker geometry
    (4, 8, 16, 32, 1, 45),      # cols not a multiple of B, 32-bit beats
    (1, 4, 8, 32, 1, 19),
    (8, 8, 64, 32, 2, 70),      # B > W: padding words in every row
    (3, 2, 32, 64, 1, 33),      # 64-bit bus
    (16, 8, 16, 64, 1, 64),
]


@pytest.mark.parametrize("lanes,bits,block,bus,mw,cols", POINTS)
def test_decoder_matches_matrix(lanes, bits, block, bus, mw, cols):
    seed = 200 + lanes * 7 + cols
    rng = np.random.default_rng(seed)
    cfg = _cfg(lanes=lanes, weight_bits=bits, block=block, bus_bits=bus, max_cols=128, mask_words=mw)
    codes = _edge_matrix(rng, cols, bits)
    res = run_decoder(cfg, codes, seed=seed, idle=0.25, backpressure=0.25)
    assert res.error_flags == 0, f"seed {seed}: error flags {res.error_flags:#x}"
    assert res.row_ends == codes.shape[0], f"seed {seed}"
    assert res.triples == _triples(codes), f"seed {seed}: decoded lanes differ from the matrix"
    assert max(res.lanes_fired) <= lanes


# lanes, bits, block, bus, mask_words, cols, rows, density
FUZZ = [
    (8, 8, 16, 32, 2, 150, 9, 0.1),     # iCE40 geometry, 90 % sparse
    (8, 8, 16, 32, 2, 384, 5, 0.25),
    (8, 8, 16, 32, 2, 70, 12, 0.6),
    (8, 8, 16, 32, 2, 9, 30, 0.5),      # one-word rows: many rows per beat
    (5, 8, 8, 32, 1, 37, 14, 0.3),
    (12, 8, 16, 64, 1, 100, 8, 0.95),
]


@pytest.mark.parametrize("lanes,bits,block,bus,mw,cols,rows,density", FUZZ)
def test_decoder_random_matrices(lanes, bits, block, bus, mw, cols, rows, density):
    """Random matrices (with empty rows mixed in) under random stalls: every nonzero exactly once,
    with its row and column; at most ``lanes`` per bundle; one row_end per row."""
    seed = 2000 + lanes * 31 + cols
    rng = np.random.default_rng(seed)
    cfg = _cfg(lanes=lanes, weight_bits=bits, block=block, bus_bits=bus, max_cols=512, mask_words=mw)
    codes = _codes(rng, rows, cols, density, bits)
    codes[rng.random(rows) < 0.2] = 0
    res = run_decoder(cfg, codes, seed=seed, idle=0.2, backpressure=0.2)
    assert res.error_flags == 0, f"seed {seed}: error flags {res.error_flags:#x}"
    assert res.row_ends == rows, f"seed {seed}"
    assert res.triples == _triples(codes), f"seed {seed}: decoded lanes differ from the matrix"
    assert max(res.lanes_fired, default=0) <= lanes, f"seed {seed}"


@pytest.mark.parametrize("seed", [41, 42])
def test_zero_words_under_heavy_backpressure(seed):
    """Long runs of all-zero mask words (taken without a bundle, which waits for the output
    register) and words whose set bits sit past a row end (slot 1's registered 'all taken'
    flag), with the output stalled most of the time: every nonzero exactly once."""
    rng = np.random.default_rng(seed)
    cfg = _cfg(lanes=8, mask_words=2, max_cols=512)
    codes = _codes(rng, 10, 300, 0.03, 8)
    codes[:, 40:200] = 0                 # five zero words in every row
    codes[rng.random(10) < 0.3] = 0
    codes[2, 31] = 9                     # a row whose only nonzero ends its first word
    # and two-word rows with a few nonzeros: a row ends in slot 0 short of a full bundle while
    # the next row's first word, just refilled into slot 1, still holds its bits
    short = _codes(rng, 24, 64, 0.12, 8)
    for mat in (codes, short):
        res = run_decoder(cfg, mat, seed=seed, idle=0.3, backpressure=0.7)
        assert res.error_flags == 0, f"seed {seed}: error flags {res.error_flags:#x}"
        assert res.row_ends == mat.shape[0], f"seed {seed}"
        assert res.triples == _triples(mat), f"seed {seed}: decoded lanes differ from the matrix"


def test_single_column_and_single_row():
    cfg = _cfg(block=8)
    for codes in (np.array([[5], [0], [-7]]), np.array([[0, 3, 0, 0, 9, 1, 1, 1, 1, 2]])):
        res = run_decoder(cfg, codes, seed=3)
        assert res.error_flags == 0
        assert res.triples == _triples(codes)


def test_throughput_full_lanes_within_rows():
    """Dense rows: one bundle per cycle, every bundle full except a row's last (a bundle holds
    one row): ceil(nnz_r / lanes) bundles per row."""
    lanes = 8
    cfg = _cfg(lanes=lanes, mask_words=2, max_cols=128)
    rng = np.random.default_rng(7)
    codes = _codes(rng, 6, 100, 1.0, 8)
    res = run_decoder(cfg, codes, seed=7)
    assert res.triples == _triples(codes)
    per_row = sum(-(-int(np.count_nonzero(r)) // lanes) for r in codes)
    assert len(res.lanes_fired) == per_row, (len(res.lanes_fired), per_row)
    assert res.busy_cycles <= per_row + 8, (res.busy_cycles, per_row)


def test_sparse_rows_scan_many_mask_bits_per_cycle():
    """75 % sparse long rows with 64-bit beats: about ``lanes`` nonzeros per cycle."""
    lanes = 8
    cfg = _cfg(lanes=lanes, mask_words=2, max_cols=512)
    rng = np.random.default_rng(11)
    codes = _codes(rng, 4, 384, 0.25, 8)
    res = run_decoder(cfg, codes, seed=11)
    assert res.triples == _triples(codes)
    ideal = sum(-(-int(np.count_nonzero(r)) // lanes) for r in codes)
    assert res.busy_cycles <= 1.15 * ideal + 8, (res.busy_cycles, ideal)


def test_malformed_values_short():
    cfg = _cfg()
    codes = _codes(np.random.default_rng(1), 3, 40, 0.5, 8)
    img = bitmap_sections(codes, bits=8, block=16, bus_bits=32)
    short = [(d, 0) for d, _ in cfg.value_beats(img)[:-2]]
    short[-1] = (short[-1][0], 1)
    res = run_decoder(cfg, codes, value_beats=short, max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["values_short"]
    assert res.cycles < 2000, "decoder hung on a short value stream"


def test_malformed_values_extra():
    cfg = _cfg()
    codes = _codes(np.random.default_rng(2), 3, 40, 0.5, 8)
    img = bitmap_sections(codes, bits=8, block=16, bus_bits=32)
    beats = [(d, 0) for d, _ in cfg.value_beats(img)] + [(0, 0), (0, 1)]
    res = run_decoder(cfg, codes, value_beats=beats, max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["values_extra"]
    assert res.cycles < 2000


def test_malformed_value_stream_without_values_for_empty_matrix():
    cfg = _cfg()
    codes = np.zeros((2, 10), np.int64)
    res = run_decoder(cfg, codes, value_beats=[(0, 0), (0, 1)], max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["values_extra"]
    ok = run_decoder(cfg, codes)
    assert ok.error_flags == 0 and ok.row_ends == 2 and ok.triples == []


@pytest.mark.parametrize("block,cols,row,word,bit", [
    (16, 40, 1, 1, 31),    # last word of row 1: a bit past cols
    (16, 40, 2, 1, 8),     # the first padding bit (column 40)
    (64, 20, 0, 1, 0),     # B > W: a whole padding word
    (16, 40, 2, 1, 31),    # the matrix's last row
])
@pytest.mark.parametrize("backpressure", [0.0, 0.5])
def test_malformed_mask_padding(block, cols, row, word, bit, backpressure):
    """A set bit in row padding raises mask_padding only, and the decoder goes idle."""
    cfg = _cfg(block=block)
    codes = _codes(np.random.default_rng(3), 3, cols, 0.5, 8)
    img = bitmap_sections(codes, bits=8, block=block, bus_bits=32)
    words = [int(w) for w in img.mask_words.reshape(-1)]
    words[row * img.words_per_row + word] |= 1 << bit
    res = run_decoder(cfg, codes, mask_beats=words, backpressure=backpressure, seed=3, max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["mask_padding"], f"flags {res.error_flags:#x}"
    assert res.cycles < 2000


def test_bits_in_the_last_beats_zero_padding_are_ignored():
    """The final mask beat's padding past the matrix's last word is not part of any row."""
    cfg = _cfg(mask_words=2)
    codes = _codes(np.random.default_rng(4), 3, 20, 0.5, 8)      # 3 words: the last beat has one spare
    img = bitmap_sections(codes, bits=8, block=16, bus_bits=32)
    beats = cfg.mask_beats(img)
    beats[-1] |= 0xFFFF_FFFF << 32
    res = run_decoder(cfg, codes, mask_beats=beats, seed=4)
    assert res.error_flags == 0 and res.triples == _triples(codes)


def test_ports_and_validation():
    cfg = _cfg()
    dec = CompactDecoder(cfg)
    dec._MustUse__silence = True
    assert dec.config is cfg
    assert len(dec.i_mask.payload) == cfg.mask_bus
    assert dec.o_lanes.payload.shape() == lane_layout(cfg)
    with pytest.raises(TypeError, match="config="):
        CompactDecoder({"lanes": 4})
    with pytest.raises(ValueError, match="compact"):
        CompactDecoder(cfg.replace(decoder="window"))
    with pytest.raises(SparsefabError, match="mask_words"):
        _cfg(bus_bits=64, mask_words=2)
    with pytest.raises(SparsefabError, match="lanes"):
        _cfg(lanes=17)
    with pytest.raises(SparsefabError, match="decoder="):
        _cfg(decoder="fast")


def test_matrices_back_to_back_through_the_array():
    """The array with the compact front end: matrices back to back, equal to the golden model."""
    from sparsefab.sim.tb_spmv import Job, expected, run_amaranth

    cfg = _cfg(mask_words=2, mul_steps=4)
    rng = np.random.default_rng(5)
    jobs = [Job(np.zeros((2, 5), np.int64), rng.integers(-128, 128, 5)),
            Job(_codes(rng, 2, 5, 1.0, 8), rng.integers(-128, 128, 5)),
            Job(_codes(rng, 3, 40, 0.5, 8), rng.integers(-128, 128, 40))]
    res = run_amaranth(cfg, jobs, seed=5, max_cycles=4000)
    assert res.error == 0
    assert res.results == [e for j in jobs for e in expected(cfg, j)]
