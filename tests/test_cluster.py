"""Neuron clustering (compress/cluster.py): planted structure recovery, determinism, bad input."""

import numpy as np
import pytest

from sparsefab.compress import cluster, tiling
from sparsefab.compress.errors import SparsefabError


def _recovery(res, ideal):
    return (res.tiles_before - res.tiles_after) / max(1, res.tiles_before - ideal)


@pytest.mark.parametrize("rows, cols, tile, seed", [(256, 256, 16, 0), (320, 256, 32, 1), (512, 384, 32, 2)])
def test_planted_recovery(rows, cols, tile, seed):
    w, ideal = cluster.planted(rows, cols, tile=tile, block_density=0.12, fill=0.5, seed=seed)
    res = cluster.cluster(w, tile=tile, seed=seed)
    assert res.tiles_before > ideal
    assert _recovery(res, ideal) >= 0.9, f"seed={seed}: {res.summary()} ideal={ideal}"
    # The permutations are real permutations and the reported count is true.
    assert tiling.count_nonempty(w, tile, res.row_perm, res.col_perm) == res.tiles_after
    assert sorted(res.row_perm.tolist()) == list(range(rows))
    assert sorted(res.col_perm.tolist()) == list(range(cols))


def test_methods_compared_and_never_worse():
    w, ideal = cluster.planted(256, 256, tile=16, block_density=0.1, fill=0.4, seed=7)
    rows = {r["method"]: r for r in cluster.compare(w, tile=16, seed=7)}
    assert set(rows) == {"spectral", "refine", "spectral+refine"}
    assert rows["spectral+refine"]["tiles_after"] <= rows["refine"]["tiles_after"]
    assert rows["refine"]["tiles_after"] <= rows["refine"]["tiles_before"]
    # Refinement starting from a good order never makes it worse.
    r = cluster.cluster(w, tile=16, method="identity")
    assert r.tiles_after == r.tiles_before


def test_unstructured_matrix_not_worse():
    rng = np.random.default_rng(3)
    w = (rng.random((200, 200)) < 0.002).astype(np.int8)
    res = cluster.cluster(w, tile=32, seed=3)
    assert res.tiles_after <= res.tiles_before


def test_deterministic():
    w, _ = cluster.planted(192, 160, tile=16, seed=11)
    a = cluster.cluster(w, tile=16, seed=5)
    b = cluster.cluster(w, tile=16, seed=5)
    assert (a.row_perm == b.row_perm).all() and (a.col_perm == b.col_perm).all()


def test_kmeans_separates_blobs():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(c, 0.1, (50, 2)) for c in ((0, 0), (5, 5), (0, 5))])
    lab = cluster.kmeans(pts, 3, seed=0)
    assert all(np.unique(lab[i * 50:(i + 1) * 50]).size == 1 for i in range(3))
    assert np.unique(lab).size == 3


@pytest.mark.parametrize("kw, match", [(dict(method="magic"), "method"), (dict(seed=-1), "seed"),
                                       (dict(tile=20), "tile"), (dict(passes=-2), "passes")])
def test_bad_parameters(kw, match):
    args = dict(tile=16) | kw
    with pytest.raises(SparsefabError, match=match):
        cluster.cluster(np.eye(40), **args)


@pytest.mark.slow
def test_planted_4096():
    w, ideal = cluster.planted(4096, 4096, tile=64, block_density=0.065, fill=0.5, seed=4096)
    assert np.count_nonzero(w) / w.size <= 0.05
    res = cluster.cluster(w, tile=64, seed=3)
    assert _recovery(res, ideal) >= 0.9, res.summary()
