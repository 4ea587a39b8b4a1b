"""CLI contract of compress / decompress / info / compare (issue 2, section 3)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from sparsefab.cli import main
from sparsefab.compress import formats
from sparsefab.compress.quant import dequantize


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(11)
    p = {}
    p["w"] = tmp_path / "w.npy"
    np.save(p["w"], rng.standard_normal((24, 70)).astype(np.float32))
    p["codes"] = tmp_path / "codes.npy"
    codes = rng.integers(-8, 8, size=(10, 33)).astype(np.int16)
    codes[rng.random(codes.shape) < 0.6] = 0
    np.save(p["codes"], codes)
    p["x"] = tmp_path / "x.npy"
    np.save(p["x"], rng.standard_normal((40, 70)).astype(np.float32))
    return tmp_path, p, codes


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("fmt", ["bitmap", "csr", "rle", "nm", "dense", "coo"])
def test_integer_codes_roundtrip_every_format(files, capsys, fmt):
    tmp, p, codes = files
    out = tmp / f"c.{fmt}"
    extra = ["--prune", "nm:2:4"] if fmt == "nm" else []
    rc, _, err = _run(capsys, "compress", p["codes"], "-o", out, "--format", fmt, "--bits", 4, *extra)
    assert rc == 0, err
    rc, _, err = _run(capsys, "decompress", out, "-o", tmp / "back.npy", "--codes")
    assert rc == 0, err
    back = np.load(tmp / "back.npy")
    assert back.dtype == np.int8
    if fmt == "nm":  # pruned 2:4 first: a subset of the input, at most 2 per group of 4
        assert np.all((back == 0) | (back == codes))
        assert formats.decode((out).read_bytes())[0].tolist() == back.tolist()
    else:
        np.testing.assert_array_equal(back, codes)
    rc, js, _ = _run(capsys, "info", out, "--json")
    d = json.loads(js)
    assert d["bytes_total"] == os.path.getsize(out)
    for k in ("format", "shape", "bits", "nnz", "bytes_index", "bytes_values", "bytes_meta"):
        assert k in d
    assert d["format"] == fmt and d["shape"] == [10, 33] and d["bits"] == 4


def test_float_pipeline_prune_quantize_dequantize(files, capsys):
    tmp, p, _ = files
    out = tmp / "w.sfw"
    rc, _, err = _run(capsys, "compress", p["w"], "-o", out, "--format", "bitmap", "--bits", 8,
                      "--prune", "magnitude:0.75", "--quant", "per-channel", "--block", 32, "--bus", 32)
    assert rc == 0, err
    codes, q = formats.decode(out.read_bytes())
    assert q.granularity == "channel" and q.bits == 8
    assert np.count_nonzero(codes) <= round(0.25 * codes.size)
    info = formats.info(out.read_bytes())
    assert info["params"]["block"] == 32 and info["params"]["bus_bits"] == 32
    rc, _, err = _run(capsys, "decompress", out, "-o", tmp / "deq.npy")
    assert rc == 0, err
    deq = np.load(tmp / "deq.npy")
    assert deq.dtype == np.float32
    np.testing.assert_array_equal(deq, dequantize(codes, q))
    w = np.load(p["w"])
    kept = codes != 0
    assert np.abs(deq[kept] - w[kept]).max() <= q.scale.max() / 2 + 1e-6
    rc, _, err = _run(capsys, "compress", p["w"], "-o", tmp / "g.sfw", "--format", "csr", "--bits", 4,
                      "--prune", "wanda:0.5", "--calib", p["x"], "--quant", "group:16")
    assert rc == 0, err
    _, q = formats.decode((tmp / "g.sfw").read_bytes())
    assert q.granularity == "group" and q.group_size == 16


def test_info_text(files, capsys):
    tmp, p, _ = files
    _run(capsys, "compress", p["codes"], "-o", tmp / "c.sfw", "--format", "rle", "--bits", 4)
    rc, out, _ = _run(capsys, "info", tmp / "c.sfw")
    assert rc == 0 and "format rle" in out and "run_bits=4" in out
    assert f"total {os.path.getsize(tmp / 'c.sfw')}" in out


def _one_line_error(rc, out, err, *needles):
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsefab: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_bad_input(files, capsys):
    tmp, p, _ = files
    bad = tmp / "bad.npy"
    np.save(bad, np.array([[1, 2], [3, 9]], np.int16))
    out = tmp / "o.sfw"
    _one_line_error(*_run(capsys, "compress", bad, "-o", out, "--format", "csr", "--bits", 4),
                    "value 9 at index (1, 1)", "4-bit")
    np.save(bad, np.zeros((2, 2, 2), np.float32))
    _one_line_error(*_run(capsys, "compress", bad, "-o", out, "--format", "csr"), "2-D")
    np.save(bad, np.array([[1.0, np.inf]], np.float32))
    _one_line_error(*_run(capsys, "compress", bad, "-o", out, "--format", "csr"), "non-finite")
    np.save(bad, np.array([["a"]]))
    _one_line_error(*_run(capsys, "compress", bad, "-o", out, "--format", "csr"), "dtype")
    _one_line_error(*_run(capsys, "compress", p["w"], "-o", out, "--format", "csr", "--bits", 3), "--bits 3")
    _one_line_error(*_run(capsys, "compress", p["w"], "-o", out, "--format", "csr", "--prune", "magic:0.5"),
                    "magic:0.5")
    _one_line_error(*_run(capsys, "compress", p["w"], "-o", out, "--format", "csr", "--quant", "per-row"),
                    "per-row")
    _one_line_error(*_run(capsys, "compress", p["w"], "-o", out, "--format", "bitmap", "--block", 12), "block=12")
    _one_line_error(*_run(capsys, "compress", p["w"], "-o", out, "--format", "nm"), "not 2:4 sparse")
    _one_line_error(*_run(capsys, "compress", p["w"], "-o", out, "--format", "csr", "--prune", "wanda:0.5"),
                    "--calib")
    _one_line_error(*_run(capsys, "compress", tmp / "missing.npy", "-o", out, "--format", "csr"), "not found")
    (tmp / "junk.npy").write_bytes(b"not numpy")
    _one_line_error(*_run(capsys, "compress", tmp / "junk.npy", "-o", out, "--format", "csr"), "not a valid .npy")
    assert not out.exists()
    assert not [f for f in os.listdir(tmp) if f.endswith(".tmp")]
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(p["w"]), "-o", str(out), "--format", "zip"])
    assert exc.value.code == 2


def test_corrupted_files_refused(files, capsys):
    tmp, p, _ = files
    good = tmp / "g.sfw"
    _run(capsys, "compress", p["codes"], "-o", good, "--format", "bitmap")
    data = good.read_bytes()
    cases = {
        "flip": data[:70] + bytes([data[70] ^ 1]) + data[71:],
        "trunc": data[:-8],
        "magic": b"XXXX" + data[4:],
        "huge": data[:8] + struct.pack("<II", 2**31, 2**31) + data[16:],
        "empty": b"",
    }
    for name, blob in cases.items():
        f = tmp / f"{name}.sfw"
        f.write_bytes(blob)
        for cmd in (["info", f], ["decompress", f, "-o", tmp / f"{name}.npy"]):
            _one_line_error(*_run(capsys, *cmd))
        assert not (tmp / f"{name}.npy").exists()


def test_compare_reproduces_index_share_effect(tmp_path, capsys):
    """From 8 to 4 bits the index share grows for CSR and RLE; bitmap's stays smallest."""
    rng = np.random.default_rng(2024)
    w = rng.standard_normal((96, 400)).astype(np.float32)
    f = tmp_path / "w.npy"
    np.save(f, w)
    for sparsity in ("0.5", "0.7"):
        share = {}
        for bits in (8, 4):
            rc, out, err = _run(capsys, "compare", f, "--bits", bits, "--prune", f"magnitude:{sparsity}", "--json")
            assert rc == 0, err
            d = json.loads(out)
            assert d["bits"] == bits and d["shape"] == [96, 400]
            share[bits] = {r["format"]: r["index_share"] for r in d["formats"] if r["applicable"]}
            assert share[bits]["bitmap"] < min(share[bits][k] for k in ("csr", "rle", "coo")), (sparsity, share)
        assert share[4]["csr"] > share[8]["csr"] and share[4]["rle"] > share[8]["rle"], (sparsity, share)
    rc, out, _ = _run(capsys, "compare", f, "--bits", 4, "--prune", "nm:2:4")
    assert rc == 0 and "nm 2:4" in out and "bitmap B=16 W=64" in out


def test_subprocess_entry_point(files):
    tmp, p, _ = files
    out = tmp / "s.sfw"
    r = subprocess.run([sys.executable, "-m", "sparsefab", "compress", str(p["codes"]), "-o", str(out),
                        "--format", "bitmap", "--bits", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "sparsefab", "info", str(out) + "x", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.startswith("sparsefab: error: ") and "Traceback" not in r.stderr
