"""Parse what Yosys and nextpnr report: Fmax of the core clock and the resources used.

Sources, in order of authority:

* nextpnr's JSON report (``--report FILE``): ``utilization`` (used/available per BEL type)
  and ``fmax`` (achieved and constraint per clock net);
* nextpnr's log (``--log FILE``): the LAST "Max frequency for clock" lines (nextpnr prints
  an estimate after placement and the final figure after routing), the device utilisation
  table, the critical path report and ``ERROR:`` lines;
* Yosys's log (``-l FILE``): the cell counts of the final ``stat``, which give LUT4 and FF
  counts before packing (nextpnr's iCE40 logic cell count packs one LUT4 with one FF).

The summary keys (:func:`summarize`) are the same for both families: ``fmax_mhz``,
``luts`` (LUT4s: ``SB_LUT4`` on iCE40, ``TRELLIS_COMB`` on ECP5), ``lcs`` (iCE40 logic
cells ``ICESTORM_LC``; on ECP5 the same as ``luts``), ``ffs``, ``dsps`` (``SB_MAC16`` /
``MULT18X18D``), ``brams`` (``SB_RAM40_4K`` / ``DP16KD``), ``spram`` (``SB_SPRAM256KA``),
``carries`` (``SB_CARRY`` / ``CCU2C`` from Yosys).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sparsefab.compress.errors import SparsefabError

# nextpnr BEL type -> summary key, per family
BEL_KEYS = {
    "ice40": {"ICESTORM_LC": "lcs", "ICESTORM_DSP": "dsps", "ICESTORM_RAM": "brams",
              "ICESTORM_SPRAM": "spram", "SB_IO": "ios", "SB_GB": "globals", "ICESTORM_PLL": "plls"},
    "ecp5": {"TRELLIS_COMB": "luts", "TRELLIS_FF": "ffs", "MULT18X18D": "dsps", "ALU54B": "alus",
             "DP16KD": "brams", "TRELLIS_RAMW": "lutram_w", "TRELLIS_IO": "ios", "DCCA": "globals",
             "EHXPLLL": "plls"},
}

_MAX_FREQ = re.compile(r"Max frequency for clock\s+'([^']+)':\s*([0-9.]+)\s*MHz\s*\((PASS|FAIL)\s+at\s+([0-9.]+)\s*MHz\)")
_UTIL = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)/\s*(\d+)\s+(\d+)%", re.M)
_ERROR = re.compile(r"^ERROR:\s*(.*)$", re.M)


def parse_nextpnr_log(text: str) -> dict:
    """Fmax per clock (last report wins), utilisation, critical path and errors from a nextpnr log.

    Returns
    -------
    dict with ``fmax`` {clock: {"achieved": MHz, "constraint": MHz, "pass": bool}},
    ``utilization`` {bel: {"used": n, "available": n}} (the last table in the log),
    ``critical_path`` (list of str: the last critical-path report's lines),
    ``errors`` (list of str).
    """
    fmax = {}
    for clk, ach, verdict, target in _MAX_FREQ.findall(text):
        fmax[clk] = {"achieved": float(ach), "constraint": float(target), "pass": verdict == "PASS"}
    util = {}
    tables = text.split("Device utilisation:")
    if len(tables) > 1:
        block = tables[-1].split("\n\n", 1)[0]
        for bel, used, avail, _ in _UTIL.findall(block):
            util[bel] = {"used": int(used), "available": int(avail)}
    crit = []
    idx = text.rfind("Critical path report for clock")
    if idx >= 0:
        for line in text[idx:].splitlines()[:200]:
            if crit and (line.startswith("Info: Max frequency") or line.startswith("Info: Critical path report for cross")
                         or line.strip() in ("", "Info:")) and len(crit) > 3:
                break
            crit.append(line.removeprefix("Info: ").rstrip())
    return {"fmax": fmax, "utilization": util, "critical_path": crit, "errors": _ERROR.findall(text)}


def parse_nextpnr_report(path: str | Path) -> dict:
    """The ``fmax`` and ``utilization`` of nextpnr's ``--report`` JSON, in the shapes of :func:`parse_nextpnr_log`."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SparsefabError(f"nextpnr report {path}: cannot read ({exc})") from None
    fmax = {clk: {"achieved": float(v["achieved"]), "constraint": float(v["constraint"]),
                  "pass": float(v["achieved"]) >= float(v["constraint"])}
            for clk, v in obj.get("fmax", {}).items()}
    util = {bel: {"used": int(v["used"]), "available": int(v["available"])}
            for bel, v in obj.get("utilization", {}).items()}
    return {"fmax": fmax, "utilization": util}


def parse_yosys_stat(text: str) -> dict[str, int]:
    """Cell counts by type from the LAST ``stat`` printed in a Yosys log (whole design).

    Handles Yosys >= 0.50's format (``      119   SB_LUT4``: count, at least two spaces,
    cell type; scalar lines such as ``220 wires`` have one space) and the older one
    (``     SB_LUT4    119`` under ``Number of cells``).
    """
    idx = max(text.rfind("=== design hierarchy ==="), text.rfind("Number of cells"))
    if idx < 0:
        idx = text.rfind("=== ")
    if idx < 0:
        return {}
    cells: dict[str, int] = {}
    for line in text[idx:].splitlines()[1:]:
        if re.match(r"^\d+\.\d*\s|^End of script", line):  # next pass header: stat is over
            break
        m_new = re.fullmatch(r"\s+(\d+)\s{2,}([A-Za-z_$][\w$\\.]*)\s*", line)
        m_old = re.fullmatch(r"\s+([A-Za-z_$][\w$\\.]*)\s+(\d+)\s*", line)
        if m_new:
            cells[m_new.group(2)] = int(m_new.group(1))
        elif m_old and m_old.group(1) not in ("Number",):
            cells[m_old.group(1)] = int(m_old.group(2))
    return cells


def _sum_prefix(cells: dict[str, int], prefixes: tuple[str, ...]) -> int:
    return sum(n for c, n in cells.items() if c.startswith(prefixes))


def summarize(family: str, *, pnr: dict, yosys_cells: dict[str, int], clock: str | None = None) -> dict:
    """The flow's figures from parsed nextpnr (report or log) and Yosys results.

    Parameters
    ----------
    family : "ice40" or "ecp5"
    pnr : dict
        ``fmax`` and ``utilization`` as returned by :func:`parse_nextpnr_report`.
    yosys_cells : dict
        :func:`parse_yosys_stat` of the synthesis log.
    clock : str, optional
        Clock net whose Fmax is the core's; default: the slowest clock reported.

    Returns
    -------
    dict with ``fmax_mhz``, ``constraint_mhz``, ``clock``, ``luts``, ``lcs``, ``ffs``, ``dsps``,
    ``brams``, ``spram``, ``carries``, ``utilization`` (raw), ``capacity`` {key: available}.
    """
    if family not in BEL_KEYS:
        raise SparsefabError(f"unknown FPGA family {family!r}; expected ice40 or ecp5")
    fmax = pnr.get("fmax", {})
    if not fmax:
        raise SparsefabError("nextpnr reported no clock: the design has no clocked logic or timing analysis failed")
    if clock is None:
        clock = min(fmax, key=lambda c: fmax[c]["achieved"])
    elif clock not in fmax:
        raise SparsefabError(f"clock {clock!r} not in nextpnr's report (has {', '.join(fmax)})")
    util = pnr.get("utilization", {})
    out: dict = {"fmax_mhz": fmax[clock]["achieved"], "constraint_mhz": fmax[clock]["constraint"],
                 "clock": clock}
    capacity = {}
    for bel, key in BEL_KEYS[family].items():
        if bel in util:
            out[key] = util[bel]["used"]
            capacity[key] = util[bel]["available"]
    if family == "ice40":
        out["luts"] = yosys_cells.get("SB_LUT4", 0)
        out["ffs"] = _sum_prefix(yosys_cells, ("SB_DFF",))
        out["carries"] = yosys_cells.get("SB_CARRY", 0)
        capacity.setdefault("luts", capacity.get("lcs", 0))
        capacity.setdefault("ffs", capacity.get("lcs", 0))
        for key in ("lcs", "dsps", "brams", "spram"):
            out.setdefault(key, 0)
    else:
        out["lcs"] = out.get("luts", 0)
        out["carries"] = yosys_cells.get("CCU2C", 0)
        for key in ("luts", "ffs", "dsps", "brams"):
            out.setdefault(key, 0)
        out["spram"] = 0
    out["utilization"] = util
    out["capacity"] = capacity
    return out


def overflow_message(device: str, util: dict) -> str | None:
    """One line naming every over-used resource in a nextpnr utilisation table, or None."""
    over = [f"{bel} {u['used']}/{u['available']}" for bel, u in util.items() if u["used"] > u["available"]]
    if not over:
        return None
    return f"design does not fit {device}: needs " + ", ".join(over) + " (used/available)"
