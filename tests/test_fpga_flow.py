"""The FPGA build driver (sparsefab.fpga.flow) and `sparsefab fpga build`, with real YoWASP runs.

One small iCE40 build runs in `make test` (plus a quick failing one: the design does not fit);
the ECP5 build is slow-marked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsefab.cli import main
from sparsefab.cli.fpga_cmds import collect_params, format_table
from sparsefab.compress.errors import SparsefabError
from sparsefab.fpga import boards, flow


def _check_result(r: dict, *, board: str, dsps: int):
    assert r["board"] == board and r["design"] == "mac"
    b = boards.get_board(board)
    assert r["freq_mhz"] == b.default_freq_mhz
    assert 10.0 < r["fmax_mhz"] < 400.0, r["fmax_mhz"]
    assert r["meets_target"] == (r["fmax_mhz"] >= r["freq_mhz"])
    assert r["dsps"] == dsps, r
    # the harness alone adds this many FFs; the core adds products, sum, accumulator, output
    assert r["ffs"] > r["harness"]["ffs"] + 60, r
    assert 0 < r["luts"] < 2000 and 0 < r["lcs"] < 2000, r
    assert r["brams"] == 0
    bit = Path(r["bitstream"])
    assert bit.exists() and bit.stat().st_size > 1000
    assert r["seeds_tried"] == [{"seed": 1, "fmax_mhz": r["fmax_mhz"]}]
    assert r["critical_path"] and "Critical path" in r["critical_path"][0]


@pytest.mark.fpga
def test_ice40_build_and_overflow(tmp_path, capsys):
    out = tmp_path / "mac1"
    assert main(["fpga", "build", "--board", "icebreaker", "--design", "mac", "--lanes", "1",
                 "--json", "-q", "-o", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    _check_result(r, board="icebreaker", dsps=1)
    assert r["params"] == {"lanes": 1} and Path(r["bitstream"]).parent == out
    # iCE40UP5K bitstreams have a fixed size
    assert Path(r["bitstream"]).stat().st_size == 104090
    table = format_table(r)
    assert "Fmax" in table and "logic cells" in table and "/ 8" in table

    # 9 multipliers on a chip with 8 SB_MAC16: one clear line, exit 1, no traceback
    rc = main(["fpga", "build", "--board", "icebreaker", "--design", "mac", "--lanes", "9",
               "-q", "-o", str(tmp_path / "mac9")])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("sparsefab: error: design does not fit iCE40UP5K-SG48: needs ICESTORM_DSP 9/8"), err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.fpga
@pytest.mark.slow
def test_ecp5_build_two_seeds(tmp_path):
    r = flow.build("mac", board="ulx3s-85f", params={"lanes": 4}, seeds=2, build_dir=tmp_path / "e")
    assert [t["seed"] for t in r["seeds_tried"]] == [1, 2]
    assert r["fmax_mhz"] == max(t["fmax_mhz"] for t in r["seeds_tried"])
    assert r["seed"] in (1, 2)
    assert 10.0 < r["fmax_mhz"] < 400.0 and r["dsps"] == 4 and r["luts"] == r["lcs"] > 0
    assert Path(r["bitstream"]).suffix == ".bit" and Path(r["bitstream"]).stat().st_size > 1000
    # the board's nextpnr options reach the tool: the ECP5 routes with router2
    plan = json.loads((tmp_path / "e" / "build_top.json").read_text())["commands"]
    pnr = next(c for c in plan if c[0] == "nextpnr-ecp5")
    assert pnr[pnr.index("--router") + 1] == "router2"


def test_bad_inputs_fail_before_tools(tmp_path):
    with pytest.raises(SparsefabError, match="unknown board 'de0'"):
        flow.build("mac", board="de0")
    with pytest.raises(SparsefabError, match="unknown design"):
        flow.build("nope", build_dir=tmp_path)
    with pytest.raises(SparsefabError, match="--freq"):
        flow.build("mac", freq_mhz=-5, build_dir=tmp_path)
    with pytest.raises(SparsefabError, match="--seeds"):
        flow.build("mac", seeds=0, build_dir=tmp_path)
    with pytest.raises(SparsefabError, match="lanes=0"):
        flow.build("mac", params={"lanes": 0}, build_dir=tmp_path)


def test_cli_params_and_defaults(capsys):
    class A:
        lanes, bits, block = 8, None, 16
        param = ["acc_bits=24", "relu=true", "name=x"]
    assert collect_params(A) == {"lanes": 8, "block": 16, "acc_bits": 24, "relu": True, "name": "x"}
    A.param = ["=3"]
    with pytest.raises(SparsefabError, match="NAME=VALUE"):
        collect_params(A)
    assert flow.default_build_dir("icebreaker", "spmv", {"lanes": 8}, 40.0) == \
        Path("build/fpga/icebreaker/spmv-lanes8-40MHz")
    assert main(["fpga", "designs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"design": "mac", "available": True, "parameters": ["lanes", "bits", "acc_bits"]} in rows


def test_platform_clock_constraint():
    p = boards.make_platform("icebreaker", freq_mhz=48)
    clk = [r for r in p.resources.values() if r.name == "clk12"][0]
    assert clk.clock.frequency == 48e6
    assert boards.make_platform("ulx3s-85f").device == "LFE5U-85F"
    env = flow.tool_env(boards.get_board("ulx3s-85f"))
    assert env["OPENFPGALOADER"] and "nextpnr-ecp5" in env["NEXTPNR_ECP5"]
