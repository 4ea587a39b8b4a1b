"""``sparsefab sim spmv``: JSON contract, golden-equal results, one-line errors.

Uses the CLI's default array (lanes 8, INT8, block 16), the same compiled binaries as
tests/test_spmv_flow.py.
"""

import json
import shutil

import numpy as np
import pytest

from sparsefab.cli import main
from sparsefab.compress.quant import spmv_int

SEED = 77


def _files(tmp_path, W, X):
    w, x = tmp_path / "W.npy", tmp_path / "X.npy"
    np.save(w, W)
    np.save(x, X)
    return str(w), str(x)


def _matrix(rng, rows=13, cols=45, density=0.4):
    W = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
    W[rng.random(W.shape) >= density] = 0
    return W


@pytest.mark.parametrize("batch", [True, False])
def test_json_contract(tmp_path, capsys, batch):
    rng = np.random.default_rng(SEED)
    W = _matrix(rng)
    X = rng.integers(-128, 128, (3, 45) if batch else 45).astype(np.int8)
    w, x = _files(tmp_path, W, X)
    assert main(["sim", "spmv", "--weights", w, "--x", x, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.array_equal(np.array(out["y"]), spmv_int(W, X)), f"seed {SEED}"
    assert np.array(out["y"]).shape == spmv_int(W, X).shape
    nnz = int(np.count_nonzero(W))
    n = 3 if batch else 1
    assert out["nnz"] == nnz and out["lanes"] == 8 and out["n"] == n
    assert out["ideal_cycles"] == n * -(-nnz // 8)
    assert out["utilization"] == pytest.approx(n * nnz / (8 * out["cycles"]))
    assert out["dense_cycles"] >= n * 13 * -(-45 // 8) and out["dense_cycles"] > out["cycles"]
    assert out["speedup"] == pytest.approx(out["dense_cycles"] / out["cycles"])
    assert out["sim_cycles_per_s"] > 0 and out["counters"]["o_error"] == 0


def test_text_output_and_y_file(tmp_path, capsys):
    rng = np.random.default_rng(SEED + 1)
    W = _matrix(rng, 7, 30)
    X = rng.integers(-128, 128, (2, 30)).astype(np.int8)
    w, x = _files(tmp_path, W, X)
    y = tmp_path / "y.npy"
    assert main(["sim", "spmv", "--weights", w, "--x", x, "-o", str(y), "--stalls", "0.2", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "utilization" in text and "speedup over dense" in text
    got = np.load(y)
    assert got.dtype == np.int32 and np.array_equal(got, spmv_int(W, X))


@pytest.mark.parametrize("W,X,msg", [
    (np.zeros((2, 3, 4), np.int8), np.zeros(4, np.int8), "expected a 2-D matrix"),
    (np.zeros((2, 3), np.int8), np.zeros((2, 2, 3), np.int8), r"expected shape \(cols,\) or \(n, cols\)"),
    (np.zeros((2, 3), np.int8), np.zeros((2, 4), np.int8), "4 columns, but .* has cols=3"),
    (np.zeros((2, 3), np.float32), np.zeros(3, np.int8), "must hold integer codes"),
    (np.array([[0, 300, 0]], np.int16), np.zeros(3, np.int8), r"code 300 at \(0, 1\) is outside the 8-bit"),
    (np.zeros((1, 3), np.int8), np.array([0, 1, -129], np.int16), "code -129 at .* outside int8"),
])
def test_bad_input_one_line(tmp_path, capsys, W, X, msg):
    import re

    w, x = _files(tmp_path, W, X)
    assert main(["sim", "spmv", "--weights", w, "--x", x, "--json"]) == 1
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert cap.out == "" and err.startswith("sparsefab: error:") and "\n" not in err, err
    assert re.search(msg, err), err


def test_missing_file_and_bad_option(tmp_path, capsys):
    assert main(["sim", "spmv", "--weights", str(tmp_path / "nope.npy"), "--x", str(tmp_path / "x.npy")]) == 1
    assert capsys.readouterr().err.startswith("sparsefab: error:")
    w, x = _files(tmp_path, np.zeros((1, 3), np.int8), np.zeros(3, np.int8))
    assert main(["sim", "spmv", "--weights", w, "--x", x, "--stalls", "1.5"]) == 1
    assert "--stalls" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("iverilog") is not None, reason="icarus installed: the path is exercised")
def test_icarus_missing_is_one_line(tmp_path, capsys):
    w, x = _files(tmp_path, np.ones((1, 3), np.int8), np.ones(3, np.int8))
    assert main(["sim", "spmv", "--weights", w, "--x", x, "--simulator", "icarus"]) == 1
    err = capsys.readouterr().err.strip()
    assert "icarus" in err and "\n" not in err


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog (iverilog/vvp) not installed")
def test_icarus_equals_golden_and_verilator(tmp_path, capsys):
    rng = np.random.default_rng(SEED + 1)
    W = _matrix(rng, rows=9, cols=37)
    W[3] = 0                                  # an empty row
    X = rng.integers(-128, 128, (2, 37)).astype(np.int8)
    w, x = _files(tmp_path, W, X)
    runs = {}
    for sim in ("icarus", "verilator"):
        assert main(["sim", "spmv", "--weights", w, "--x", x, "--simulator", sim, "--json"]) == 0
        runs[sim] = json.loads(capsys.readouterr().out)
    assert np.array_equal(np.array(runs["icarus"]["y"]), spmv_int(W, X)), f"seed {SEED + 1}"
    assert runs["icarus"]["y"] == runs["verilator"]["y"]
    assert runs["icarus"]["nnz"] == runs["verilator"]["nnz"] == int(np.count_nonzero(W))
