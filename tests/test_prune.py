"""Tests for sparsefab.compress.prune."""

import numpy as np
import pytest

from sparsefab.compress.errors import SparsefabError
from sparsefab.compress.prune import parse_prune_spec, sparsity

SEED = 20261122


def test_parse_prune_spec():
    assert parse_prune_spec("magnitude:0.75") == {"method": "magnitude", "sparsity": 0.75, "scope": "global"}
    assert parse_prune_spec("magnitude:0.5:row")["scope"] == "row"
    assert parse_prune_spec("wanda:0.5") == {"method": "wanda", "sparsity": 0.5}
    assert parse_prune_spec("nm:2:4") == {"method": "nm", "n": 2, "m": 4}
    assert parse_prune_spec("nm:1:8")["m"] == 8
    assert parse_prune_spec("rows:0.25") == {"method": "rows", "sparsity": 0.25}
    assert parse_prune_spec("cols:0.25")["method"] == "cols"
    assert parse_prune_spec("blocks:0.5:4x4") == {"method": "blocks", "sparsity": 0.5, "block": (4, 4)}
    assert parse_prune_spec("blocks:0.5:1x8")["block"] == (1, 8)
    assert parse_prune_spec("qa:0.5") == {"method": "qa", "sparsity": 0.5, "balance_block": None}
    assert parse_prune_spec("qa:0.5:16")["balance_block"] == 16


@pytest.mark.parametrize(
    "spec",
    ["", "magnitude", "magnitude:", "magnitude:x", "magnitude:1.5", "magnitude:-0.1", "magnitude:0.5:col",
     "wanda:0.5:1", "nm:4:2", "nm:2:2", "nm:0:4", "nm:2", "nm:2:4:8", "nm:a:b", "rows:", "blocks:0.5",
     "blocks:0.5:4", "blocks:0.5:0x4", "blocks:0.5:4x4x4", "qa:0.5:0", "random:0.5", "nm:1:512", None],
)
def test_parse_prune_spec_bad(spec):
    with pytest.raises(SparsefabError, match="--prune"):
        parse_prune_spec(spec)


def test_sparsity():
    assert sparsity(np.array([[0, 1], [0, 0]])) == 0.75
    assert sparsity(np.zeros((0, 3))) == 0.0
