"""``sparsefab gen spmv`` and ``sparsefab gen reference``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsefab.cli import gen_cmds, main

ROOT = Path(__file__).resolve().parents[1]


def test_gen_spmv_writes_verilog_and_sidecar(tmp_path, capsys):
    rc = main(["gen", "spmv", "--lanes", "2", "--bits", "4", "--block", "8", "--bus", "32", "--max-cols", "40",
               "-o", str(tmp_path), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    v, j = Path(out["verilog"]), Path(out["sidecar"])
    assert v.name == "spmv_l2_w4_b8_bus32_c40.v" and v.exists()
    text = v.read_text()
    assert "module spmv_l2_w4_b8_bus32_c40" in text
    side = json.loads(j.read_text())
    cfg = side["config"]
    assert (cfg["lanes"], cfg["weight_bits"], cfg["block"], cfg["bus_bits"], cfg["max_cols"]) == (2, 4, 8, 32, 40)
    assert side["format"] == "bitmap" and side["format_version"] == 1
    assert side["latency"] == cfg["latency"] > 0
    ports = {p["name"]: p for p in side["ports"]}
    assert ports["i_mask__payload"]["width"] == cfg["mask_bus"]
    assert ports["i_value__payload"]["width"] == cfg["value_bus"] + 1
    assert ports["o_res__payload"]["width"] == 32 + 8 + 1
    for name in ("o_cycles", "o_stalls", "o_nnz", "o_error", "o_error_flags", "o_busy"):
        assert name in ports and ports[name]["dir"] == "out"
    fields = {f["name"]: f for f in side["streams"]["i_rq"]["fields"]}
    assert fields["multiplier"] == {"name": "multiplier", "offset": 32, "width": 16, "signed": False}
    lanes = {f["name"] for f in side["streams"]["i_cmd"]["fields"]}
    assert lanes == {"rows", "cols"}
    for p in side["ports"]:
        assert p["name"] in text


def test_gen_spmv_dense_and_name(tmp_path, capsys):
    assert main(["gen", "spmv", "--lanes", "2", "--bus", "32", "--max-cols", "16", "--dense", "--name", "my_dense",
                 "-o", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    side = json.loads((tmp_path / "my_dense.json").read_text())
    assert side["format"] == "dense" and side["config"]["dense"] is True
    assert not any(p["name"].startswith("i_mask") for p in side["ports"])


@pytest.mark.parametrize("args,word", [
    (["--lanes", "0"], "lanes=0"),
    (["--bus", "16"], "bus_bits=16"),
    (["--bits", "3"], "weight_bits=3"),
    (["--block", "12"], "block=12"),
    (["--mul-steps", "3"], "mul_steps=3"),
    (["--name", "9bad"], "--name"),
])
def test_gen_spmv_rejects_bad_parameters(tmp_path, capsys, args, word):
    rc = main(["gen", "spmv", "-o", str(tmp_path)] + args)
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("sparsefab: error:") and word in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_gen_reference_writes_and_checks(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen_cmds, "REFERENCE", {"tiny": dict(lanes=1, weight_bits=4, block=8, bus_bits=32,
                                                              max_cols=8)})
    assert main(["gen", "reference", "-o", str(tmp_path / "rtl"), "--check"]) == 1
    assert "stale" in capsys.readouterr().err
    assert main(["gen", "reference", "-o", str(tmp_path / "rtl")]) == 0
    assert sorted(p.name for p in (tmp_path / "rtl").iterdir()) == ["tiny.json", "tiny.v"]
    capsys.readouterr()
    assert main(["gen", "reference", "-o", str(tmp_path / "rtl"), "--check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stale"] == []
    (tmp_path / "rtl" / "tiny.v").write_text("// edited\n")
    assert main(["gen", "reference", "-o", str(tmp_path / "rtl"), "--check"]) == 1


@pytest.mark.slow
def test_committed_rtl_is_fresh():
    """rtl/ holds exactly what ``sparsefab gen reference`` generates now."""
    assert main(["gen", "reference", "-o", str(ROOT / "rtl"), "--check"]) == 0


def test_gen_design_kv_compress_sidecar(tmp_path, capsys):
    """``gen design`` emits any registry design; the sidecar carries the generator's own config."""
    out = tmp_path / "kvc"
    assert main(["gen", "design", "kv-compress", "--param", "group=32", "--param", "block_bytes=16",
                 "--param", "values_per_cycle=2", "-o", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    side = json.loads(Path(res["sidecar"]).read_text())
    assert side["design"] == "kv-compress" and side["params"]["group"] == 32
    assert side["config"]["group"] == 32 and side["config"]["words_per_block"] == 2
    assert side["format_version"] == 1
    assert "module kv_compress" in (out / "kv_compress.v").read_text()
    assert main(["gen", "design", "mac", "--param", "lanes=2", "-o", str(out), "--name", "m2"]) == 0
    assert json.loads((out / "m2.json").read_text())["config"] == {"lanes": 2, "bits": 8, "acc_bits": 32}


@pytest.mark.parametrize("argv,msg", [(["nope"], "expected one of"), (["mac", "--param", "foo=1"], "no parameter"),
                                      (["mac", "--name", "9x"], "Verilog identifier")])
def test_gen_design_bad_input(tmp_path, capsys, argv, msg):
    assert main(["gen", "design", *argv, "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
