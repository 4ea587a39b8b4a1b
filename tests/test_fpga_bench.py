"""Bench section ``fpga`` (sparsefab.fpga.bench): skips, failures and per-lane slopes.

The builds themselves are tested in test_fpga_flow.py; here flow.build is replaced by a
model of it so the section's bookkeeping is checked in milliseconds.
"""

from __future__ import annotations

import pytest

from sparsefab.compress.errors import SparsefabError
from sparsefab.fpga import bench, flow
from sparsefab.gen import designs


def _fake_build(design, *, board, params, progress=None, **kw):
    if design == "crossbar" and board == "icebreaker":
        raise SparsefabError("design does not fit iCE40UP5K-SG48: needs ICESTORM_LC 6000/5280 (used/available)")
    lanes = params.get("lanes", 1)
    freq = 40.0 if board == "icebreaker" else 100.0
    return {"params": params, "freq_mhz": freq, "fmax_mhz": freq * 1.1 if lanes < 32 else freq * 0.8,
            "meets_target": lanes < 32, "luts": 100 + 50 * lanes, "lcs": 120 + 60 * lanes,
            "ffs": 80 + 40 * lanes, "dsps": lanes, "brams": 2 * lanes, "spram": 0,
            "harness": {"ffs": 10, "luts": 5, "in_bits": 3, "out_bits": 4},
            "capacity": {"dsps": 8, "brams": 30}, "seed": 1, "bitstream": "x.bin",
            "critical_path": ["Critical path report for clock 'clk'", "  logic 1.0"]}


def test_bench_full_with_fake_builds(monkeypatch, capsys):
    monkeypatch.setattr(flow, "build", _fake_build)
    monkeypatch.delitem(designs.DESIGNS, "kv-compress", raising=False)
    monkeypatch.setitem(designs.DESIGNS, "kv-decompress", "sparsefab.gen.no_such_module:build")
    out = bench.run(quick=False)["builds"]
    text = capsys.readouterr().out
    by = {(e["design"], e["board"], e.get("params", {}).get("lanes")): e for e in out}
    assert "skip kv-compress on ulx3s-85f: not in the registry" in text
    assert "skip kv-decompress on ulx3s-85f: its module does not import yet" in text
    e8 = by[("spmv", "icebreaker", 8)]
    assert e8["lcs_per_lane"] == (120 + 60 * 8) / 8
    assert e8["lcs_per_lane_slope"] == 60.0 and e8["luts_per_lane_slope"] == 50.0
    assert "lcs_per_lane_slope" not in by[("spmv", "icebreaker", 4)]
    assert by[("spmv-cluster", "ulx3s-85f", 32)]["ffs_per_lane_slope"] == 40.0
    if designs.available("crossbar"):
        failed = [e for e in out if e["design"] == "crossbar" and e["board"] == "icebreaker"]
        assert "does not fit" in failed[0]["error"]
        assert "FAILED crossbar" in text
    # a missed target prints nextpnr's critical path
    assert "spmv-cluster on ulx3s-85f misses 100 MHz (80.00 MHz)" in text
    assert "Critical path report" in text


def test_resolve_aliases(monkeypatch):
    def fake(*, rows=64, T=16, E=2):
        raise AssertionError
    monkeypatch.setattr(designs, "factory", lambda name: fake)
    assert bench._resolve("x", {"tile": 16, "engines": 2}) == {"T": 16, "E": 2}
    with pytest.raises(SparsefabError, match="no parameter for 'lanes'"):
        bench._resolve("x", {"lanes": 3})
