"""BitmapDecoder: lane extraction, row straddling, value gearbox, malformed streams (Amaranth sim)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsefab.compress.bitmap import bitmap_sections
from sparsefab.gen.bitmap_decoder import BitmapDecoder, lane_layout
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


POINTS = [
    # lanes, bits, block, bus, mask_words, window_beats, cols
    (4, 8, 16, 32, 1, 3, 45),     # cols not a multiple of B
    (1, 4, 8, 32, 1, 2, 19),
    (8, 8, 64, 32, 2, 2, 70),     # B > W: two padding words per row
    (3, 2, 32, 64, 1, 4, 33),
]


@pytest.mark.parametrize("lanes,bits,block,bus,mw,wb,cols", POINTS)
def test_decoder_matches_matrix(lanes, bits, block, bus, mw, wb, cols):
    seed = 100 + lanes * 7 + cols
    rng = np.random.default_rng(seed)
    cfg = SpmvConfig(lanes=lanes, weight_bits=bits, block=block, bus_bits=bus, max_cols=128, mask_words=mw,
                     window_beats=wb)
    codes = _edge_matrix(rng, cols, bits)
    res = run_decoder(cfg, codes, seed=seed, idle=0.25, backpressure=0.25)
    assert res.error_flags == 0, f"seed {seed}: error flags {res.error_flags:#x}"
    assert res.row_ends == codes.shape[0], f"seed {seed}"
    assert res.triples == _triples(codes), f"seed {seed}: decoded lanes differ from the matrix"
    assert max(res.lanes_fired) <= lanes


def test_single_column_and_single_row():
    cfg = SpmvConfig(lanes=4, weight_bits=8, block=8, bus_bits=32, max_cols=64, mask_words=1)
    for codes in (np.array([[5], [0], [-7]]), np.array([[0, 3, 0, 0, 9, 1, 1, 1, 1, 2]])):
        res = run_decoder(cfg, codes, seed=3)
        assert res.error_flags == 0
        assert res.triples == _triples(codes)


def test_throughput_full_lanes_and_row_straddle():
    """Dense rows: every bundle but the last is full; rows straddle (no per-row bubble)."""
    lanes = 4
    cfg = SpmvConfig(lanes=lanes, weight_bits=8, block=16, bus_bits=32, max_cols=64, mask_words=1)
    rng = np.random.default_rng(7)
    codes = _codes(rng, 8, 10, 1.0, 8)          # 80 nonzeros, rows of 10: boundaries mid-bundle
    res = run_decoder(cfg, codes, seed=7)
    assert res.triples == _triples(codes)
    nnz = int(np.count_nonzero(codes))
    # one bundle per cycle: ideal ceil(nnz/lanes) = 20; a row whose bits all land in a straddling
    # bundle may cost one extra bundle (its row_end), never more than one per row
    assert len(res.lanes_fired) <= -(-nnz // lanes) + codes.shape[0], res.lanes_fired
    assert sum(1 for n in res.lanes_fired if n == lanes) >= nnz // lanes - codes.shape[0]


def test_sparse_rows_scan_many_mask_bits_per_cycle():
    """90 % sparse long rows: the decoder takes ~lanes nonzeros per cycle, not one bit per cycle."""
    lanes = 4
    cfg = SpmvConfig(lanes=lanes, weight_bits=8, block=16, bus_bits=32, max_cols=256, mask_words=2)
    rng = np.random.default_rng(11)
    codes = _codes(rng, 4, 200, 0.1, 8)
    res = run_decoder(cfg, codes, seed=11)
    assert res.triples == _triples(codes)
    nnz = int(np.count_nonzero(codes))
    assert res.busy_cycles <= -(-nnz // lanes) + 2 * codes.shape[0] + 8, (res.busy_cycles, nnz)
    assert res.busy_cycles * 32 < 4 * 200, "should scan far more than one mask bit per cycle"


def _cfg_small():
    return SpmvConfig(lanes=4, weight_bits=8, block=16, bus_bits=32, max_cols=64, mask_words=1)


def test_malformed_values_short():
    cfg = _cfg_small()
    codes = _codes(np.random.default_rng(1), 3, 40, 0.5, 8)
    img = bitmap_sections(codes, bits=8, block=16, bus_bits=32)
    beats = cfg.value_beats(img)
    short = [(d, 0) for d, _ in beats[:-2]]
    short[-1] = (short[-1][0], 1)
    res = run_decoder(cfg, codes, value_beats=short, max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["values_short"]
    assert res.cycles < 2000, "decoder hung on a short value stream"


def test_malformed_values_extra():
    cfg = _cfg_small()
    codes = _codes(np.random.default_rng(2), 3, 40, 0.5, 8)
    img = bitmap_sections(codes, bits=8, block=16, bus_bits=32)
    beats = [(d, 0) for d, _ in cfg.value_beats(img)] + [(0, 0), (0, 1)]
    res = run_decoder(cfg, codes, value_beats=beats, max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["values_extra"]
    assert res.cycles < 2000


def test_malformed_value_stream_without_values_for_empty_matrix():
    cfg = _cfg_small()
    codes = np.zeros((2, 10), np.int64)
    res = run_decoder(cfg, codes, value_beats=[(0, 0), (0, 1)], max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["values_extra"]
    ok = run_decoder(cfg, codes)
    assert ok.error_flags == 0 and ok.row_ends == 2 and ok.triples == []


@pytest.mark.parametrize("block,cols", [(16, 40), (64, 20)])
def test_malformed_mask_padding(block, cols):
    cfg = SpmvConfig(lanes=4, weight_bits=8, block=block, bus_bits=32, max_cols=64, mask_words=1)
    codes = _codes(np.random.default_rng(3), 3, cols, 0.5, 8)
    img = bitmap_sections(codes, bits=8, block=block, bus_bits=32)
    words = [int(w) for w in img.mask_words.reshape(-1)]
    wpr = img.words_per_row
    words[1 * wpr + wpr - 1] |= 1 << 31          # row 1: last bit of its stride is padding
    res = run_decoder(cfg, codes, mask_beats=words, max_cycles=2000)
    assert res.error_flags & (1 << ERRORS["mask_padding"])
    assert res.cycles < 2000


@pytest.mark.parametrize("backpressure", [0.0, 0.5])
def test_malformed_mask_padding_in_last_row(backpressure):
    """A padding bit in the matrix's last row (with a value for it): the check lands after the
    matrix's end; the flag still rises, no other flag, and the decoder goes idle."""
    cfg = SpmvConfig(lanes=4, weight_bits=8, block=16, bus_bits=32, max_cols=64, mask_words=1)
    codes = _codes(np.random.default_rng(5), 3, 40, 0.5, 8)
    img = bitmap_sections(codes, bits=8, block=16, bus_bits=32)
    words = [int(w) for w in img.mask_words.reshape(-1)]
    wpr = img.words_per_row
    words[2 * wpr + wpr - 1] |= 1 << 31          # last row: last bit of its stride is padding
    raw = img.values_bytes + bytes([7])          # the value the padding bit takes
    vb = cfg.value_bus
    total = int.from_bytes(raw, "little")
    n = -(-len(raw) * 8 // vb)
    values = [((total >> (i * vb)) & ((1 << vb) - 1), int(i == n - 1)) for i in range(n)]
    res = run_decoder(cfg, codes, mask_beats=words, value_beats=values, backpressure=backpressure,
                      seed=5, max_cycles=2000)
    assert res.error_flags == 1 << ERRORS["mask_padding"], f"seed 5: flags {res.error_flags:#x}"
    assert res.cycles < 2000


def test_ports_and_validation():
    cfg = _cfg_small()
    dec = BitmapDecoder(cfg)
    dec._MustUse__silence = True
    assert dec.config is cfg
    assert len(dec.i_mask.payload) == cfg.mask_bus
    assert dec.o_lanes.payload.shape() == lane_layout(cfg)
    with pytest.raises(TypeError, match="config="):
        BitmapDecoder({"lanes": 4})
    with pytest.raises(ValueError, match="dense"):
        BitmapDecoder(cfg.replace(dense=True))


def test_matrix_ending_on_a_beat_boundary_then_next_matrix():
    """Regression: a matrix whose masks end exactly at a beat boundary (all its beats shifted out
    before its last row finishes) must not swallow the next matrix's first beat."""
    from sparsefab.gen.spmv_config import SpmvConfig as C
    from sparsefab.sim.tb_spmv import Job, expected, run_amaranth

    cfg = C(lanes=4, weight_bits=8, block=16, bus_bits=32, max_cols=64, mask_words=2)
    rng = np.random.default_rng(5)
    jobs = [Job(np.zeros((2, 5), np.int64), rng.integers(-128, 128, 5)),
            Job(_codes(rng, 2, 5, 1.0, 8), rng.integers(-128, 128, 5)),
            Job(_codes(rng, 3, 40, 0.5, 8), rng.integers(-128, 128, 40))]
    res = run_amaranth(cfg, jobs, seed=5, max_cycles=3000)
    assert res.error == 0
    assert res.results == [e for j in jobs for e in expected(cfg, j)]


# lanes, bits, block, bus, mask_words, window_beats, cols, rows, density
FUZZ = [
    (8, 8, 16, 64, 1, 2, 150, 9, 0.1),     # the iCE40 geometry, 90 % sparse
    (8, 8, 16, 64, 1, 2, 70, 12, 0.6),
    (16, 4, 16, 64, 5, 3, 300, 6, 0.1),    # the default geometry of 16 lanes
    (5, 8, 8, 32, 3, 4, 37, 14, 0.3),
    (2, 8, 32, 32, 1, 2, 9, 20, 0.5),      # many short rows per beat
    (12, 8, 16, 32, 4, 3, 100, 8, 0.95),
]


@pytest.mark.parametrize("lanes,bits,block,bus,mw,wb,cols,rows,density", FUZZ)
def test_decoder_random_matrices(lanes, bits, block, bus, mw, wb, cols, rows, density):
    """Random matrices (with empty rows mixed in) under random stalls: every nonzero exactly once,
    in order, with its row and column; at most ``lanes`` per bundle; one row_end per row."""
    seed = 1000 + lanes * 31 + cols
    rng = np.random.default_rng(seed)
    cfg = SpmvConfig(lanes=lanes, weight_bits=bits, block=block, bus_bits=bus, max_cols=512, mask_words=mw,
                     window_beats=wb)
    codes = _codes(rng, rows, cols, density, bits)
    codes[rng.random(rows) < 0.2] = 0
    res = run_decoder(cfg, codes, seed=seed, idle=0.2, backpressure=0.2)
    assert res.error_flags == 0, f"seed {seed}: error flags {res.error_flags:#x}"
    assert res.row_ends == rows, f"seed {seed}"
    assert res.triples == _triples(codes), f"seed {seed}: decoded lanes differ from the matrix"
    assert max(res.lanes_fired, default=0) <= lanes, f"seed {seed}"
