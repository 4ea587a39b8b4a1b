"""Smoke test of the quant bench section (slow: runs quantization on real weights)."""

import pytest

from sparsefab.compress import quant_bench


@pytest.mark.slow
def test_quant_bench_quick_runs():
    res = quant_bench.run(quick=True)
    rows = res["calibration"]["rows"]
    assert {r["calib"] for r in rows} == {"minmax", "percentile:99.9", "mse"}
    # MSE clipping never loses to min-max (ratio 1.0 is a candidate)
    assert all(r["vs_minmax"] <= 1.0 + 1e-3 for r in rows if r["calib"] == "mse")
    assert all(abs(r["sparsity"] - r["target"]) < 1e-9 for r in res["throughput"]["rows"] if r.get("target"))
