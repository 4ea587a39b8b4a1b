"""CLI: sparsefab crossbar map / hopfield, sparsefab sim crossbar (compiled Verilator harness)."""

import json
import shutil

import numpy as np
import pytest

from sparsefab.cli import main
from sparsefab.compress import cluster, tiling

needs_verilator = pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator not on PATH")


@pytest.fixture()
def files(tmp_path):
    w, ideal = cluster.planted(192, 160, tile=32, block_density=0.15, seed=5)
    x = np.random.default_rng(5).integers(-128, 128, (2, 160)).astype(np.int8)
    np.save(tmp_path / "W.npy", w)
    np.save(tmp_path / "X.npy", x)
    return tmp_path, w, x, ideal


def test_map_json_and_file(files, capsys):
    d, w, _, ideal = files
    assert main(["crossbar", "map", str(d / "W.npy"), "--tile", "32", "--cluster", "-o", str(d / "W.map"),
                 "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    for k in ("tiles_total", "tiles_nonempty", "tiles_nonempty_clustered", "nnz_in_tiles", "leftover_nnz"):
        assert k in j
    assert j["tiles_total"] == 30 and j["tiles_nonempty_clustered"] == ideal < j["tiles_nonempty"]
    assert j["nnz_in_tiles"] + j["leftover_nnz"] == np.count_nonzero(w)
    m = tiling.TileMap.from_bytes((d / "W.map").read_bytes())
    assert m.clustered and m.nonempty == ideal
    assert main(["crossbar", "map", str(d / "W.npy"), "--tile", "32", "--use-map", str(d / "W.map"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tiles_nonempty"] == ideal


def test_map_hybrid_fill(files, capsys):
    d, w, _, _ = files
    assert main(["crossbar", "map", str(d / "W.npy"), "--tile", "16", "--fill", "0.6", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["leftover_nnz"] > 0 and j["crossbar_tiles"] < j["tiles_nonempty"]


def test_sim_crossbar_amaranth_backend(tmp_path, capsys):
    """Default subset: the CLI end to end on the Amaranth simulator (no Verilator build)."""
    rng = np.random.default_rng(12)
    w = ((rng.random((40, 36)) < 0.15) * rng.integers(-128, 128, (40, 36))).astype(np.int8)
    x = rng.integers(-128, 128, 36).astype(np.int8)
    np.save(tmp_path / "W.npy", w)
    np.save(tmp_path / "X.npy", x)
    assert main(["sim", "crossbar", "--weights", str(tmp_path / "W.npy"), "--x", str(tmp_path / "X.npy"),
                 "--tile", "16", "--engines", "2", "--fill", "0.1", "--backend", "amaranth", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["y"] == (w.astype(np.int64) @ x.astype(np.int64)).tolist()
    assert j["map"]["leftover_nnz"] > 0 and j["tiles_run"] + j["tiles_skipped"] == 9


@needs_verilator
@pytest.mark.slow
@pytest.mark.parametrize("fill", ["0", "0.5"])
def test_sim_crossbar(files, capsys, fill):
    """Flow level on the compiled harness (a Verilator build); fill 0.5 = hybrid with the SparseMacArray RTL."""
    d, w, x, _ = files
    assert main(["sim", "crossbar", "--weights", str(d / "W.npy"), "--x", str(d / "X.npy"), "--tile", "32",
                 "--engines", "2", "--cluster", "--fill", fill, "--json", "-o", str(d / "y.npy")]) == 0
    j = json.loads(capsys.readouterr().out)
    y = np.array(j["y"])
    assert (y == x.astype(np.int64) @ w.T.astype(np.int64)).all()
    assert (np.load(d / "y.npy") == y).all() and np.load(d / "y.npy").dtype == np.int32
    assert j["tiles_run"] + j["tiles_skipped"] == 30
    assert j["cycles"] <= 1.1 * j["ideal_total"]
    if fill != "0":
        assert j["map"]["leftover_nnz"] > 0 and j["sparse"]["engine"] == "SparseMacArray RTL"


def test_hopfield_cmd(tmp_path, capsys):
    assert main(["crossbar", "hopfield", "--png-dir", str(tmp_path), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["recall"] > 0.9 and abs(j["sparsity"] - 0.9439) < 1e-4
    assert (tmp_path / "hopfield_after.png").is_file()


@pytest.mark.parametrize("argv, msg", [
    (["crossbar", "map", "{d}/nope.npy"], "not found"),
    (["crossbar", "map", "{d}/W.npy", "--tile", "24"], "--tile"),
    (["crossbar", "map", "{d}/W.npy", "--fill", "2"], "--fill"),
    (["crossbar", "map", "{d}/W.npy", "--cluster", "--method", "x"], "method"),
    (["crossbar", "map", "{d}/bad.npy"], "non-finite"),
    (["crossbar", "map", "{d}/W.npy", "--use-map", "{d}/trunc.map"], "MAP"),
    (["sim", "crossbar", "--weights", "{d}/W.npy", "--x", "{d}/Xbad.npy"], "x"),
    (["sim", "crossbar", "--weights", "{d}/Wf.npy", "--x", "{d}/X.npy"], "integer"),
    (["sim", "crossbar", "--weights", "{d}/W.npy", "--x", "{d}/X.npy", "--lanes", "3"], "lanes"),
])
def test_bad_input_one_line(files, capsys, argv, msg):
    d, w, x, _ = files
    np.save(d / "bad.npy", np.array([[1.0, np.inf]]))
    np.save(d / "Xbad.npy", np.zeros(7, np.int8))
    np.save(d / "Wf.npy", w.astype(np.float32))
    (d / "trunc.map").write_bytes(tiling.build_map(w, tile=32).to_bytes()[:70])
    assert main([a.format(d=d) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsefab: error:") and err.count("\n") == 1 and msg in err, err
