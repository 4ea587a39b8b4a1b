"""``sparsefab bench``: every benchmark section in one run, measured against its ideal.

Each section is a function ``run(quick: bool) -> dict`` that prints its own tables
(measured, ideal, measured/ideal, speedups as ratios from the same run) and returns the
figures for ``--json``.  Sections live beside the code they measure.
"""

from __future__ import annotations

import importlib
import json
import sys
import time

from sparsefab.compress.errors import SparsefabError
from sparsefab.compress.fileio import atomic_write_bytes

# name -> "module:function"
SECTIONS: dict[str, str] = {
    "fpga": "sparsefab.fpga.bench:run",
    "formats": "sparsefab.compress.bench_formats:run",
    "quant": "sparsefab.compress.quant_bench:run",
    "crossbar": "sparsefab.sim.bench_crossbar:run",
    "spmv": "sparsefab.sim.bench_spmv:run",
    "cluster": "sparsefab.sim.bench_cluster:run",
    "kv": "sparsefab.sim.bench_kv:run",
}


def _run(args) -> int:
    names = [s.strip() for s in (args.only or "").split(",") if s.strip()] or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SparsefabError(f"--only: unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    results = {}
    for name in names:
        module, func = SECTIONS[name].split(":")
        print(f"\n=== bench: {name} ===", flush=True)
        t0 = time.perf_counter()
        results[name] = getattr(importlib.import_module(module), func)(quick=args.quick)
        print(f"(section {name}: {time.perf_counter() - t0:.1f} s wall)", flush=True)
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(results, indent=2, default=float) + "\n").encode())
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def register(commands) -> None:
    p = commands.add("bench", help="run the benchmarks: measured vs ideal, speedups, FPGA Fmax and resources")
    p.add_argument("--only", metavar="A,B", help=f"comma-separated sections (default: all of {', '.join(SECTIONS) or 'none'})")
    p.add_argument("--quick", action="store_true", help="smaller problem sizes, for a fast look")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    p.set_defaults(func=_run)
