"""Bench section ``fpga``: Fmax and resources of the project's designs on both boards.

Targets (issues 3, 4, 5): spmv with 8 INT8 lanes on the iCEBreaker (iCE40UP5K) at >= 40 MHz
within the chip's 8 DSPs; 32 lanes on the ULX3S-85F (ECP5) at >= 100 MHz, built as
``spmv-cluster`` (engines of a few lanes on row shards, :mod:`sparsefab.gen.spmv_multi`);
kv-decompress and kv-compress at >= 100 MHz on the ECP5; crossbar (E = 2, T = 16) fitting the
UP5K, reported on both boards.  Every figure comes from nextpnr's own report of a full build
(:func:`sparsefab.fpga.flow.build`); per-lane costs are given both as totals / lanes and as the
slope between two lane counts built in the same run (which cancels the harness and the fixed
control logic).  A design missing from the registry is skipped with a note.
"""

from __future__ import annotations

import sys

from sparsefab.compress.errors import SparsefabError

# (design, board, params, note); params may use the aliases of _ALIASES
_FULL = [
    ("spmv", "icebreaker", {"lanes": 4, "bits": 8}, "slope base"),
    ("spmv", "icebreaker", {"lanes": 8, "bits": 8}, "target: >= 40 MHz, <= 8 DSPs"),
    ("spmv-cluster", "ulx3s-85f", {"lanes": 16, "bits": 8, "engines": 4}, "slope base (4 lanes per engine)"),
    ("spmv-cluster", "ulx3s-85f", {"lanes": 32, "bits": 8}, "target: >= 100 MHz (8 engines x 4 lanes)"),
    ("kv-decompress", "ulx3s-85f", {}, "target: >= 100 MHz"),
    ("kv-compress", "ulx3s-85f", {}, "target: >= 100 MHz"),
    ("crossbar", "icebreaker", {"engines": 2, "tile": 16}, "must fit the UP5K"),
    ("crossbar", "ulx3s-85f", {"engines": 2, "tile": 16}, ""),
]
_QUICK = [
    ("spmv", "icebreaker", {"lanes": 8, "bits": 8}, "target: >= 40 MHz, <= 8 DSPs"),
    ("spmv-cluster", "ulx3s-85f", {"lanes": 8, "bits": 8, "engines": 2}, "quick: 2 engines instead of 8"),
    ("kv-decompress", "ulx3s-85f", {}, "target: >= 100 MHz"),
    ("kv-compress", "ulx3s-85f", {}, "target: >= 100 MHz"),
    ("crossbar", "icebreaker", {"engines": 2, "tile": 16}, "must fit the UP5K"),
]

# generic parameter name -> names a factory may use for it
_ALIASES = {
    "engines": ("engines", "E", "n_engines", "num_engines"),
    "tile": ("tile", "T", "tile_size"),
}


def _resolve(design: str, params: dict) -> dict:
    """Map generic parameter names onto the factory's own names (see :data:`_ALIASES`)."""
    from sparsefab.gen import designs

    accepted = designs.parameters(design)
    if not accepted:  # **kwargs: pass as given
        return dict(params)
    out = {}
    for key, val in params.items():
        for name in _ALIASES.get(key, (key,)):
            if name in accepted:
                out[name] = val
                break
        else:
            raise SparsefabError(f"design {design!r} has no parameter for {key!r} (takes {', '.join(accepted)})")
    return out


def _fmt_params(p: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in p.items()) or "-"


def run(quick: bool) -> dict:
    """Build every design of the section, print the table, return the figures."""
    from sparsefab.fpga import flow
    from sparsefab.gen import designs

    jobs = _QUICK if quick else _FULL
    results = []
    for design, board, params, note in jobs:
        entry = {"design": design, "board": board, "note": note}
        if not designs.available(design):
            why = "not in the registry" if design not in designs.DESIGNS else "its module does not import yet"
            print(f"  skip {design} on {board}: {why}", flush=True)
            entry["skipped"] = why
            results.append(entry)
            continue
        try:
            p = _resolve(design, params)
            print(f"  building {design} ({_fmt_params(p)}) on {board} ...", flush=True)
            r = flow.build(design, board=board, params=p,
                           progress=lambda s: print("    " + s, file=sys.stderr, flush=True))
        except SparsefabError as exc:
            print(f"  FAILED {design} ({_fmt_params(params)}) on {board}: {exc}", flush=True)
            entry["error"] = str(exc)
            results.append(entry)
            continue
        entry.update({k: r[k] for k in ("params", "freq_mhz", "fmax_mhz", "meets_target", "luts", "lcs", "ffs",
                                        "dsps", "brams", "spram", "harness", "capacity", "seed", "bitstream")})
        entry["critical_path"] = r["critical_path"]
        results.append(entry)

    # per-lane figures: totals / lanes, and the slope between two lane counts on one board
    built = [e for e in results if "fmax_mhz" in e]
    for e in built:
        lanes = e["params"].get("lanes")
        if lanes:
            e["luts_per_lane"] = e["luts"] / lanes
            e["lcs_per_lane"] = e["lcs"] / lanes
            base = [b for b in built if b is not e and b["design"] == e["design"] and b["board"] == e["board"]
                    and b["params"].get("lanes") and b["params"]["lanes"] < lanes]
            if base:
                b = max(base, key=lambda x: x["params"]["lanes"])
                d = lanes - b["params"]["lanes"]
                e["luts_per_lane_slope"] = (e["luts"] - b["luts"]) / d
                e["lcs_per_lane_slope"] = (e["lcs"] - b["lcs"]) / d
                e["ffs_per_lane_slope"] = (e["ffs"] - b["ffs"]) / d

    head = (f"{'design':<14} {'board':<10} {'params':<22} {'target':>6} {'Fmax':>7} {'Fmax/tgt':>8} "
            f"{'LUT4':>6} {'LC':>6} {'FF':>6} {'DSP':>7} {'BRAM':>7} {'LC/lane':>8} {'slope':>6}")
    print()
    print(head)
    print("-" * len(head))
    for e in results:
        if "fmax_mhz" not in e:
            status = e.get("skipped") or ("FAILED: " + e.get("error", ""))
            print(f"{e['design']:<14} {e['board']:<10} {status}")
            continue
        cap = e["capacity"]
        per = f"{e['lcs_per_lane']:.1f}" if "lcs_per_lane" in e else "-"
        slope = f"{e['lcs_per_lane_slope']:.1f}" if "lcs_per_lane_slope" in e else "-"
        print(f"{e['design']:<14} {e['board']:<10} {_fmt_params(e['params']):<22} {e['freq_mhz']:>6g} "
              f"{e['fmax_mhz']:>7.2f} {e['fmax_mhz'] / e['freq_mhz']:>8.3f} {e['luts']:>6} {e['lcs']:>6} "
              f"{e['ffs']:>6} {e['dsps']:>3}/{cap.get('dsps', 0):<3} {e['brams']:>3}/{cap.get('brams', 0):<3} "
              f"{per:>8} {slope:>6}")
    print("(target = clock constraint in MHz, ideal Fmax/tgt >= 1; LC = iCE40 logic cells, = LUT4 on ECP5; "
          "LC/lane = total/lanes; slope = extra LCs per extra lane between the two lane counts built)")
    missed = [e for e in built if not e["meets_target"]]
    for e in missed:
        print(f"\n{e['design']} on {e['board']} misses {e['freq_mhz']:g} MHz ({e['fmax_mhz']:.2f} MHz); "
              "critical path (nextpnr):")
        print("\n".join("  " + ln for ln in e["critical_path"][:40]))
    return {"builds": results}
