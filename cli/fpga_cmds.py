"""``sparsefab fpga ...``: synthesis, place and route and bitstreams with the YoWASP tools.

``sparsefab fpga build --board icebreaker --design spmv --lanes 8 --json`` builds a registered
design (``sparsefab fpga designs`` lists them) inside the generic harness and prints Fmax and
resources from nextpnr's own report.
"""

from __future__ import annotations

import json
import sys

from sparsefab.compress.errors import SparsefabError


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, val = text.partition("=")
    if not sep or not key.isidentifier():
        raise SparsefabError(f"--param {text!r}: expected NAME=VALUE (e.g. --param acc_bits=24)")
    low = val.strip().lower()
    if low in ("true", "false"):
        return key, low == "true"
    try:
        return key, int(val, 0)
    except ValueError:
        pass
    try:
        return key, float(val)
    except ValueError:
        return key, val


def collect_params(args) -> dict:
    """Design parameters from the CLI: the named options that were given, then every --param."""
    params: dict = {}
    for opt in ("lanes", "bits", "block"):
        val = getattr(args, opt, None)
        if val is not None:
            params[opt] = val
    for text in args.param or []:
        key, val = _parse_param(text)
        params[key] = val
    return params


def format_table(r: dict) -> str:
    """Human table of one build result (as returned by :func:`sparsefab.fpga.flow.build`)."""
    cap = r.get("capacity", {})

    def frac(key):
        n = r.get(key, 0)
        c = cap.get(key)
        return f"{n} / {c} ({100.0 * n / c:.1f} %)" if c else f"{n}"

    params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"
    verdict = "meets" if r["meets_target"] else "MISSES"
    rows = [
        ("design", f"{r['design']} ({params})"),
        ("board", f"{r['board']} ({r['device']})"),
        ("Fmax", f"{r['fmax_mhz']:.2f} MHz ({verdict} the {r['freq_mhz']:g} MHz constraint; clock {r['clock']})"),
        ("seed", f"{r['seed']}" + (f" (best of {len(r['seeds_tried'])}: "
                                   + ", ".join(f"{t['seed']}->{t['fmax_mhz']:.1f}" for t in r["seeds_tried"]) + ")"
                                   if len(r["seeds_tried"]) > 1 else "")),
        ("LUT4s", frac("luts")),
    ]
    if r["board"] == "icebreaker" or r.get("lcs") != r.get("luts"):
        rows.append(("logic cells", frac("lcs")))
    rows += [
        ("FFs", frac("ffs")),
        ("DSPs", frac("dsps")),
        ("block RAMs", frac("brams")),
    ]
    if cap.get("spram"):
        rows.append(("SPRAM", frac("spram")))
    h = r["harness"]
    rows += [
        ("harness share", f"{h['ffs']} FFs, ~{h['luts']} LUTs ({h['in_bits']} input bits, {h['out_bits']} output bits)"),
        ("bitstream", r["bitstream"]),
        ("time", ", ".join(f"{k} {v:.1f} s" for k, v in r["times_s"].items())),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _build(args) -> int:
    from sparsefab.fpga import flow

    params = collect_params(args)
    # progress goes to stderr, so it never mixes with --json on stdout
    progress = None if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    result = flow.build(args.design, board=args.board, params=params, freq_mhz=args.freq,
                        seed=args.seed, seeds=args.seeds, build_dir=args.output, progress=progress,
                        timeout=args.timeout)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
        if not result["meets_target"] and result["critical_path"]:
            print("\ncritical path (nextpnr):")
            print("\n".join("  " + ln for ln in result["critical_path"][:60]))
    return 0


def _designs(args) -> int:
    from sparsefab.gen import designs

    rows = []
    for name in designs.names():
        ok = designs.available(name)
        rows.append({"design": name, "available": ok,
                     "parameters": designs.parameters(name) if ok else []})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            status = ", ".join(r["parameters"]) if r["available"] else "(not available: module missing)"
            print(f"{r['design']:<16} {status}")
    return 0


def register(commands) -> None:
    """Add this area's subcommands to commands (a :class:`sparsefab.cli.Commands`)."""
    from sparsefab.fpga.boards import BOARDS

    p = commands.add(
        "build", group="fpga",
        help="synthesize, place and route a design in the generic harness and write its bitstream",
        epilog="examples:\n"
               "  sparsefab fpga build --board icebreaker --design spmv --lanes 8\n"
               "  sparsefab fpga build --board ulx3s-85f --design spmv-cluster --lanes 32 --seeds 3 --json\n"
               "  sparsefab fpga build --design mac --param acc_bits=24 -o build/fpga/mac\n"
               "defaults: icebreaker at 40 MHz, ulx3s-85f at 100 MHz; builds go under build/fpga/.",
    )
    p.add_argument("--board", default="icebreaker", choices=sorted(BOARDS), help="target board (default icebreaker)")
    p.add_argument("--design", default="spmv", help="design name (see `sparsefab fpga designs`; default spmv)")
    p.add_argument("--lanes", type=int, help="design parameter lanes")
    p.add_argument("--bits", type=int, help="design parameter bits (weight bits)")
    p.add_argument("--block", type=int, help="design parameter block (bitmap block B)")
    p.add_argument("--param", action="append", metavar="NAME=VALUE", help="any other design parameter (repeatable)")
    p.add_argument("--freq", type=float, metavar="MHZ", help="clock constraint nextpnr optimises for (default: the board's target)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr seed (default 1)")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="try N seeds from --seed and keep the best Fmax")
    p.add_argument("-o", "--output", metavar="BUILD_DIR", help="build directory (default build/fpga/BOARD/DESIGN-PARAMS-FREQ)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds allowed per tool run")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_build)

    d = commands.add("designs", group="fpga", help="list the designs the FPGA flow can build")
    d.add_argument("--json", action="store_true", help="print JSON")
    d.set_defaults(func=_designs)
