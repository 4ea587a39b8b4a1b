"""Tests of sim/bench_kv.py (the ``kv`` bench section)."""

import pytest

from sparsefab.sim import bench_kv


def test_plot_writes_png(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_kv, "PNG", tmp_path / "rd.png")
    rd = {kind: {n: [(3.0, 20.0, 1), (4.0, 21.5, 2)] for n in ("keys", "values")}
          for kind in ("codec", "minmax", "kivi")}
    path = bench_kv._plot(rd)
    assert path == str(tmp_path / "rd.png")
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.minilm
def test_quick_run_meets_targets(tmp_path, monkeypatch):
    from sparsefab.data import minilm
    if not minilm.available():
        pytest.skip(minilm.INSTALL_HINT)
    monkeypatch.setattr(bench_kv, "PNG", tmp_path / "rd.png")
    res = bench_kv.run(quick=True)
    for name in ("keys", "values"):
        assert res["codec"][name]["ratio"] >= 4.0 and res["codec"][name]["sqnr_db"] >= 21.0, res["codec"][name]
    assert res["rtl"]["identical"] and res["rtl"]["values_per_cycle"] == pytest.approx(8.0)
