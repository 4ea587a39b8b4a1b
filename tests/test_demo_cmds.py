"""Tests of ``sparsefab demo`` (cli/demo_cmds.py): the software half and its argument checks.

The RTL half's bookkeeping is tested with a golden stand-in for ``run_spmv``; the real RTL runs
in ``test_demo_rtl_small`` (slow: ``make regress``) and in ``make sim``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparsefab.cli import main
from sparsefab.compress import bitmap, formats
from sparsefab.data import digits


def _run_json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_software_half_json(capsys):
    rep = _run_json(capsys, ["demo", "--no-rtl", "--no-table", "--json", "--samples", "60"])
    assert rep["samples"] == 60 and rep["w_bits"] == 8 and rep["a_bits"] == 8
    assert rep["prune"] == "magnitude:0.75+ft" and rep["rtl"] is None
    assert abs(rep["sparsity"] - 0.75) < 0.01
    assert [(lay["rows"], lay["cols"]) for lay in rep["layers"]] == [(128, 64), (10, 128)]
    # The golden accuracy is the QuantizedMLP's, recomputed independently here.
    q = digits.quantized_mlp()
    s = digits.load_split()
    acc = float(np.mean(q.predict_int(s.X_test_codes[:60]) == s.y_test[:60]))
    assert rep["golden_accuracy"] == acc
    # Bitmap sizes are the encoder's; storage rows sum the per-layer storage tables.
    for lay, ql in zip(rep["layers"], q.layers, strict=True):
        assert lay["nnz"] == ql.nnz
        assert lay["bitmap_bytes"] == len(bitmap.encode(ql.W_codes, bits=8, block=16, bus_bits=64, quant=ql.w_params))
    st = {r["format"]: r for r in rep["storage"]}
    per = [formats.storage_table(ql.W_codes, 8, quant=ql.w_params, formats=("csr",))[0]["bytes_total"] for ql in q.layers]
    assert st["csr"]["bytes_total"] == sum(per)
    assert st["bitmap"]["bytes_total"] == sum(lay["bitmap_bytes"] for lay in rep["layers"])
    assert st["bitmap"]["ratio_vs_dense"] < 0.6


def test_text_output_and_w4(capsys):
    assert main(["demo", "--no-rtl", "--no-table", "--bits", "4", "--prune", "nm:2:4", "--samples", "30",
                 "--finetune-epochs", "0"]) == 0
    out = capsys.readouterr().out
    assert "W4A8" in out and "nm:2:4" in out and "golden integer path" in out
    assert "nm 2:4" in out  # the N:M format applies to a 2:4-pruned matrix


def test_table_json(capsys):
    rep = _run_json(capsys, ["demo", "--table", "--json", "--finetune-epochs", "2"])
    rows = rep["accuracy_table"]
    assert [r["prune"] for r in rows] == ["dense", "magnitude:0.5", "magnitude:0.75", "magnitude:0.9", "nm:2:4"]
    assert {"float", "w8a8", "w4a8", "ft_float", "ft_w8a8", "ft_w4a8"} <= set(rows[0])
    assert rows[0]["w8a8"] > 0.97
    assert rows[3]["sparsity"] >= 0.9 - 1e-9


@pytest.mark.parametrize("argv, msg", [
    (["--samples", "0"], "--samples 0"),
    (["--samples", "451"], "--samples 451"),
    (["--prune", "magic:0.5"], "--prune"),
    (["--lanes", "0"], "--lanes 0"),
    (["--finetune-epochs", "-1"], "--finetune-epochs -1"),
])
def test_bad_arguments_one_line(capsys, argv, msg):
    assert main(["demo", "--no-rtl", "--no-table", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsefab: error:") and msg in err[0]


def test_missing_icarus_is_refused_before_work(capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["demo", "--simulator", "icarus"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "iverilog/vvp not found" in err[0]


def _fake_run_spmv(corrupt_sample=None):
    """Stand-in for sim.spmv_flow.run_spmv computed by the golden model (quant.spmv_int/requantize)."""
    from types import SimpleNamespace

    from sparsefab.compress import quant

    def run(W, X, *, requant, dense=False, **kw):
        acc = quant.spmv_int(W, X, acc_bits=kw.get("acc_bits", 32))
        out = quant.requantize(acc, multiplier=requant.multiplier, shift=requant.shift, bias=requant.bias,
                               out_zero_point=requant.out_zero_point, relu=requant.relu)
        if corrupt_sample is not None and not dense and W.shape[0] == 128:
            out = out.copy()
            out[corrupt_sample, 5] += 1
        nnz = W.size if dense else int(np.count_nonzero(W))
        cyc = len(X) * (W.size if dense else nnz) // 8 + 10
        return SimpleNamespace(y=acc, out=out, cycles=cyc, ideal_cycles=cyc - 10, wall_s=0.01, build_seconds=0.0,
                               utilization=nnz * len(X) / (8 * cyc), counters={})
    return run


def test_rtl_half_reports_and_compares(capsys, monkeypatch):
    from sparsefab.sim import spmv_flow

    monkeypatch.setattr(spmv_flow, "run_spmv", _fake_run_spmv())
    rep = _run_json(capsys, ["demo", "--no-table", "--json", "--samples", "40"])
    rtl = rep["rtl"]
    assert rtl["samples_equal"] == 40 and rtl["accuracy"] == rep["golden_accuracy"]
    assert rtl["dense_cycles"] > rtl["cycles"] and rtl["speedup"] == rtl["dense_cycles"] / rtl["cycles"]
    assert len(rtl["layers"]) == 2


def test_rtl_mismatch_names_the_sample(capsys, monkeypatch):
    from sparsefab.sim import spmv_flow

    monkeypatch.setattr(spmv_flow, "run_spmv", _fake_run_spmv(corrupt_sample=7))
    assert main(["demo", "--no-table", "--samples", "20"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test sample 7 (layer 0, row 5)" in err[0]


@pytest.mark.slow
def test_demo_rtl_small(capsys):
    # The real RTL (~30 s: elaboration of both arrays even with cached builds; `make sim` runs it all) (Verilator flow harness, compiled models cached): 4 samples, sparse + dense.
    rep = _run_json(capsys, ["demo", "--no-table", "--json", "--samples", "4", "--finetune-epochs", "0"])
    rtl = rep["rtl"]
    assert rtl["available"] and rtl["samples_equal"] == 4
    assert rtl["accuracy"] == rep["golden_accuracy"]
    assert rtl["cycles"] >= rtl["ideal_cycles"] > 0 and rtl["speedup"] > 1.5
