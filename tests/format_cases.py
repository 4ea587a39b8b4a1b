"""Hypothesis strategies shared by the format tests (not a test module)."""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None)


@st.composite
def code_matrices(draw, max_rows=9, max_cols=140, bits_choices=(2, 4, 8)):
    """``(codes int64 (rows, cols), bits)``: random, all-zero, all-dense, extreme and
    empty-row matrices, 1x1 upwards, widths not a multiple of any block."""
    bits = draw(st.sampled_from(bits_choices))
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    kind = draw(st.sampled_from(["random", "zero", "dense", "extreme", "empty_rows", "long_gaps"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = rng.integers(lo, hi + 1, size=(rows, cols))
    if kind == "random":
        a = a * (rng.random((rows, cols)) < rng.random())
    elif kind == "zero":
        a[:] = 0
    elif kind == "dense":
        a[a == 0] = hi
    elif kind == "extreme":
        a = rng.choice(np.array([lo, hi, 0]), size=(rows, cols))
    elif kind == "empty_rows":
        a[rng.random(rows) < 0.5] = 0
    else:  # very sparse: zero runs longer than 15, 16, 31, 32 ...
        a = a * (rng.random((rows, cols)) < 0.03)
    return a.astype(np.int64), bits
