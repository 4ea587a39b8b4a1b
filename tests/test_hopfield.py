"""The Hopfield benchmark (compress/hopfield.py): recall, sparsity, tiles, pictures."""

import numpy as np
import pytest

from sparsefab.compress import hopfield, tiling
from sparsefab.compress.errors import SparsefabError


@pytest.fixture(scope="module")
def result():
    return hopfield.run()


def test_reproduces_source_claim(result):
    assert result["neurons"] == 500 and result["patterns"] == 30
    assert abs(result["sparsity"] - 0.9439) < 1e-4
    assert result["recall"] > 0.9, result["recall"]
    assert result["final_bit_errors"] < result["probe_bit_errors"]


def test_clustering_reduces_tiles(result):
    assert result["tiles_nonempty_clustered"] < result["tiles_nonempty_naive"]
    assert result["crossbars_clustered"] < result["crossbars_naive"]
    assert result["leftover_nnz_clustered"] < result["leftover_nnz_naive"]
    # The crossbar model is exact: the mapping does not change recall.
    assert result["recall"] == result["recall_naive_map"]


@pytest.mark.slow
def test_recall_through_crossbar_equals_plain_matmul(result):
    codes, m = result["_codes"], result["_map"]
    xi = hopfield.patterns()
    ident = tiling.build_map(codes, tile=64)
    a = hopfield.recall(codes, xi, m)
    b = hopfield.recall(codes, xi, ident)
    assert a == b


def test_patterns_and_learning():
    xi = hopfield.patterns(100, 8, modules=4, active=0.5, outliers=0, seed=3)
    assert xi.shape == (8, 100) and set(np.unique(xi)) <= {0, 1}
    w = hopfield.learn(xi)
    assert np.allclose(w, w.T) and (np.diag(w) == 0).all()
    codes = hopfield.prune_quantize(w, 0.9)
    assert np.count_nonzero(codes) == 1000 and codes.max() == 127


def test_report_and_pictures(result, tmp_path):
    text = hopfield.report(result, png_dir=tmp_path)
    assert "94.39 %" in text and "| figure | value |" in text
    for name in ("hopfield_before.png", "hopfield_after.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_bad_parameters():
    with pytest.raises(SparsefabError, match="sparsity"):
        hopfield.prune_quantize(np.eye(4), 1.5)
    with pytest.raises(SparsefabError, match="patterns"):
        hopfield.patterns(10, 2, modules=0)
