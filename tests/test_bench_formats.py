"""Bench section "formats": structure and correctness of what it measures (no timing asserted)."""

from __future__ import annotations

import numpy as np

from sparsefab.compress import bench_formats, formats


def test_inputs_have_the_stated_sparsity():
    a = bench_formats.test_matrix(64)
    assert a.dtype == np.int8 and np.count_nonzero(a) == 64 * 64 // 4
    b = bench_formats.nm_matrix(a, 1, 4)
    assert formats.decode(formats.encode(b, "nm", n=1, m=4))[0].tolist() == b.tolist()
    assert np.count_nonzero(b) == 64 * 64 // 4


def test_throughput_rows_cover_every_format():
    rows = bench_formats.throughput(64, reps=1)
    assert [r["format"] for r in rows] == list(formats.NAMES)
    for r in rows:
        assert r["encode_mbs"] > 0 and r["decode_mbs"] > 0 and r["bytes"] > 64


def test_digits_tables():
    tables = bench_formats.digits_tables(bits_list=(4,))
    assert len(tables) == 4  # two layers x (magnitude 75 %, 2:4)
    for title, t in tables.items():
        by = {r["format"]: r for r in t["table"]}
        assert by["bitmap"]["applicable"] and by["dense"]["applicable"], title
        if "nm:2:4" in title:
            assert by["nm"]["applicable"] and by["nm"]["label"] == "nm 2:4"
