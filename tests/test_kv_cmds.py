"""Tests of cli/kv_cmds.py: ``sparsefab kv train|compress|decompress|info``."""

import json

import numpy as np
import pytest

from sparsefab.cli import main
from sparsefab.compress import kv

SEED = 77


@pytest.fixture()
def kvfile(tmp_path):
    rng = np.random.default_rng(SEED)
    x = (rng.standard_t(4, (2, 40, 4, 32)) * 0.5).astype(np.float16)   # [layers, tokens, heads, dim]
    p = tmp_path / "k.npy"
    np.save(p, x)
    return p, x


def test_train_compress_decompress_json(kvfile, tmp_path, capsys):
    inp, x = kvfile
    cb = tmp_path / "cb.sfkc"
    assert main(["kv", "train", str(inp), "-o", str(cb), "--iters", "2"]) == 0
    assert kv.Codebooks.from_bytes(cb.read_bytes()).k == 4
    out = tmp_path / "k.sfk"
    capsys.readouterr()
    assert main(["kv", "compress", str(inp), "-o", str(out), "--codebooks", str(cb), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    for key in ("ratio", "sqnr_db", "max_abs_err", "blocks", "fallback_blocks"):
        assert key in st
    assert st["ratio"] == pytest.approx(x.size * 2 / out.stat().st_size)
    assert st["blocks"] == 2 * 40
    dec = tmp_path / "d.npy"
    assert main(["kv", "decompress", str(out), "-o", str(dec)]) == 0
    y = np.load(dec)
    assert y.dtype == np.float16 and y.shape == x.shape
    assert kv.sqnr_db(x, y) == pytest.approx(st["sqnr_db"])
    assert np.abs(y.astype(np.float64) - x).max() == pytest.approx(st["max_abs_err"])
    capsys.readouterr()
    assert main(["kv", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == list(x.shape) and info["header_bits"] == 9


def test_self_calibrated_and_bf16(kvfile, tmp_path, capsys):
    inp, x = kvfile
    out = tmp_path / "b.sfk"
    f32 = tmp_path / "f.npy"
    np.save(f32, x.astype(np.float32))
    assert main(["kv", "compress", str(f32), "-o", str(out), "--dtype", "bf16", "--axis", "channel",
                 "--iters", "1", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["sqnr_db"] > 15
    dec = tmp_path / "b.npy"
    assert main(["kv", "decompress", str(out), "-o", str(dec)]) == 0
    assert np.load(dec).dtype == np.uint16


@pytest.mark.parametrize("make,msg", [
    (lambda p: np.save(p, np.array([[1.0, np.nan]], np.float16)), "non-finite"),
    (lambda p: np.save(p, np.zeros((2, 3), np.int32)), "dtype"),
    (lambda p: p.write_bytes(b"not npy"), "not a valid .npy"),
])
def test_bad_input_one_line_nothing_written(tmp_path, capsys, make, msg):
    inp = tmp_path / "bad.npy"
    make(inp)
    out = tmp_path / "o.sfk"
    assert main(["kv", "compress", str(inp), "-o", str(out), "--iters", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sparsefab: error:") and msg in err and err.count("\n") == 1
    assert not out.exists() and not list(tmp_path.glob(".o.sfk*"))


def test_corrupt_file_and_bad_params(kvfile, tmp_path, capsys):
    inp, _ = kvfile
    out = tmp_path / "k.sfk"
    assert main(["kv", "compress", str(inp), "-o", str(out), "--iters", "1"]) == 0
    raw = bytearray(out.read_bytes())
    raw[-5] ^= 0xFF
    bad = tmp_path / "bad.sfk"
    bad.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["kv", "decompress", str(bad), "-o", str(tmp_path / "x.npy")]) == 1
    assert "CRC" in capsys.readouterr().err and not (tmp_path / "x.npy").exists()
    assert main(["kv", "compress", str(inp), "-o", str(out), "--group", "100", "--lanes", "8"]) == 1
    assert "group" in capsys.readouterr().err
    # codebooks trained for another geometry whose fallback no longer fits
    cb = tmp_path / "cb.sfkc"
    assert main(["kv", "train", str(inp), "-o", str(cb), "--iters", "1"]) == 0
    assert main(["kv", "compress", str(inp), "-o", str(out), "--codebooks", str(cb), "--block-bytes", "40"]) == 1
    assert "fallback" in capsys.readouterr().err


def test_decompress_rtl_identical(kvfile, tmp_path, capsys):
    inp, _ = kvfile
    out = tmp_path / "k.sfk"
    assert main(["kv", "compress", str(inp), "-o", str(out), "--iters", "1"]) == 0
    sw, hw = tmp_path / "sw.npy", tmp_path / "hw.npy"
    assert main(["kv", "decompress", str(out), "-o", str(sw)]) == 0
    capsys.readouterr()
    assert main(["kv", "decompress", str(out), "-o", str(hw), "--rtl", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rtl"]["errors"] == 0 and info["rtl"]["blocks"] == 80
    assert np.load(sw).view(np.uint16).tolist() == np.load(hw).view(np.uint16).tolist()


def test_compress_policies(kvfile, tmp_path, capsys):
    """--policy hw (the RTL compressor's, default) and search give valid files of the same size."""
    inp, x = kvfile
    res = {}
    for pol in ("hw", "search"):
        out = tmp_path / f"{pol}.sfk"
        assert main(["kv", "compress", str(inp), "-o", str(out), "--iters", "1", "--policy", pol, "--json"]) == 0
        res[pol] = json.loads(capsys.readouterr().out)
        assert res[pol]["policy"] == pol
        y, _ = kv.decompress(out.read_bytes())
        assert kv.sqnr_db(x, y) == pytest.approx(res[pol]["sqnr_db"])
    assert res["hw"]["file_bytes"] == res["search"]["file_bytes"]
    assert main(["kv", "compress", str(inp), "-o", str(tmp_path / "a.sfk"), "--iters", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["policy"] == "hw"


def test_compress_rtl_identical(kvfile, tmp_path, capsys):
    """``kv compress --rtl``: the RTL compressor writes the file's blocks (small geometry: fast build)."""
    inp, x = kvfile
    out = tmp_path / "r.sfk"
    geo = ["--group", "32", "--block-bytes", "16", "--iters", "1"]
    assert main(["kv", "compress", str(inp), "-o", str(out), *geo, "--rtl", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["rtl"]["blocks"] == st["blocks"] == x.size // 32
    assert st["rtl"]["fallback_blocks"] == st["fallback_blocks"]
    assert st["rtl"]["values_per_cycle"] > 0
    ref = tmp_path / "s.sfk"
    assert main(["kv", "compress", str(inp), "-o", str(ref), *geo]) == 0
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("extra,msg", [(["--policy", "search"], "hardware policy"),
                                       (["--offset-bits", "4"], "hardware policy"),
                                       (["--dtype", "bf16"], "FP16")])
def test_compress_rtl_refuses_what_the_rtl_cannot_do(kvfile, tmp_path, capsys, extra, msg):
    inp, _ = kvfile
    out = tmp_path / "n.sfk"
    assert main(["kv", "compress", str(inp), "-o", str(out), "--iters", "1", "--rtl", *extra]) == 1
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not out.exists()
