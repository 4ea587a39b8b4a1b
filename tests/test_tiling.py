"""Tiling, tile map, hybrid split and the MAP file (compress/tiling.py)."""

import numpy as np
import pytest

from sparsefab.compress import bitmap, tiling
from sparsefab.compress.errors import FormatError, SparsefabError

SEED = 1234


def _matrix(rows, cols, density, seed=SEED):
    rng = np.random.default_rng(seed)
    return ((rng.random((rows, cols)) < density) * rng.integers(-128, 128, (rows, cols))).astype(np.int8)


@pytest.mark.parametrize("tile", tiling.TILES)
def test_occupancy_matches_loop(tile):
    w = _matrix(200, 130, 0.03, seed=tile)
    rng = np.random.default_rng(tile)
    rp, cp = rng.permutation(200), rng.permutation(130)
    occ = tiling.occupancy(w, tile, rp, cp)
    wp = w[rp][:, cp]
    nrt, nct = tiling.grid(w.shape, tile)
    ref = np.array([[np.count_nonzero(wp[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile])
                     for j in range(nct)] for i in range(nrt)])
    assert (occ == ref).all(), f"seed={tile}"
    assert occ.sum() == np.count_nonzero(w)


@pytest.mark.parametrize("fill", [0.0, 0.02, 0.1, 1.0])
@pytest.mark.parametrize("tile", [16, 32])
def test_hybrid_split_reproduces_w(tile, fill):
    w = _matrix(150, 97, 0.06, seed=int(fill * 100) + tile)
    rng = np.random.default_rng(SEED)
    m = tiling.build_map(w, tile=tile, row_perm=rng.permutation(150), col_perm=rng.permutation(97), fill=fill)
    tiles, left = tiling.split(w, m)
    assert (tiling.merge(tiles, left, m) == w).all(), f"tile={tile} fill={fill}"
    assert np.count_nonzero(tiles) == m.nnz_in_tiles
    assert np.count_nonzero(left) == m.leftover_nnz == np.count_nonzero(w) - m.nnz_in_tiles
    assert (m.nnz >= m.threshold).all()
    # Leftover through the real bitmap format (formats engineer's encoder/decoder).
    tiles2, blob = tiling.hybrid_split(w, m)
    codes, _ = bitmap.decode(blob)
    assert (codes == left).all() and (tiles2 == tiles).all()
    if fill == 0.0:
        assert m.leftover_nnz == 0 and m.n_tiles == m.nonempty


def test_map_file_roundtrip_and_corruption():
    w = _matrix(100, 70, 0.1)
    rng = np.random.default_rng(SEED)
    m = tiling.build_map(w, tile=16, row_perm=rng.permutation(100), col_perm=rng.permutation(70),
                         fill=0.05, clustered=True)
    b = m.to_bytes()
    assert len(b) == 64 + 400 + 280 + 16 * m.n_tiles
    m2 = tiling.TileMap.from_bytes(b)
    assert m2.summary() == m.summary()
    assert (m2.row_perm == m.row_perm).all() and (m2.tiles == m.tiles).all()
    for cut in (0, 10, 63, len(b) - 1):
        with pytest.raises(FormatError):
            tiling.TileMap.from_bytes(b[:cut])
    for pos in (0, 5, 20, 70, len(b) - 3):
        bad = bytearray(b)
        bad[pos] ^= 0x40
        with pytest.raises(FormatError):
            tiling.TileMap.from_bytes(bytes(bad))
    # A forged header claiming a huge shape is refused before allocation.
    forged = bytearray(b)
    forged[8:12] = (1 << 30).to_bytes(4, "little")
    with pytest.raises(FormatError, match="shape"):
        tiling.TileMap.from_bytes(bytes(forged))


def test_map_checks_matrix():
    w = _matrix(64, 64, 0.1)
    m = tiling.build_map(w, tile=16)
    with pytest.raises(SparsefabError, match="shape"):
        tiling.split(w[:, :60], m)
    w2 = w.copy()
    w2[w2 == 0] = 1
    with pytest.raises(SparsefabError, match="counts"):
        tiling.split(w2, m)


@pytest.mark.parametrize("bad, match", [
    (dict(tile=24), "tile"), (dict(tile=16, fill=1.5), "fill"),
    (dict(tile=16, row_perm=np.zeros(10, int)), "row_perm"),
])
def test_bad_parameters(bad, match):
    with pytest.raises(SparsefabError, match=match):
        tiling.build_map(_matrix(10, 10, 0.5), **bad)


def test_bad_matrix():
    with pytest.raises(SparsefabError, match="2-D"):
        tiling.occupancy(np.zeros(5), 16)
    with pytest.raises(SparsefabError, match="non-finite"):
        tiling.occupancy(np.array([[1.0, np.nan]]), 16)
