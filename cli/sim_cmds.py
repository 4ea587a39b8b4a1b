"""``sparsefab sim spmv``: a sparse matrix-vector product through the RTL.

::

    sparsefab sim spmv --weights W.npy --x X.npy [--lanes 8] [--block 16] [--bits 8]
                       [--simulator verilator|icarus] [--stalls P] [--seed S] [-o Y.npy] [--json]

W: integer codes [rows, cols] in the ``--bits`` range; X: int8 codes [cols] or [n, cols].
The sparse MAC array runs every vector (Verilator: the compiled flow harness, millions of
cycles per second; Icarus: the cocotb runner, slower), then the dense baseline with the
same lanes.  ``--json`` prints one object: ``y`` (int32 accumulators before
requantization, nested like X), ``cycles``, ``nnz`` (per matrix), ``lanes``,
``utilization`` = n*nnz / (lanes*cycles), ``ideal_cycles`` = n*ceil(nnz/lanes),
``dense_cycles``, ``speedup`` = dense_cycles / cycles, ``sim_cycles_per_s`` and the
array's counters.  The result is NOT compared here: ``make test`` compares it with the
golden model (``sparsefab.compress.quant.spmv_int``).
"""

from __future__ import annotations

import json
import sys


def _load(path: str, what: str):
    import numpy as np

    from sparsefab.compress.errors import SparsefabError
    from sparsefab.compress.fileio import load_npy

    a = load_npy(path, what=what)
    if a.dtype == np.bool_ or a.dtype.kind not in "iu":
        raise SparsefabError(f"{path}: {what} must hold integer codes, got dtype {a.dtype}")
    return a


def _spmv(args) -> int:
    import numpy as np

    from sparsefab.compress.errors import SparsefabError
    from sparsefab.compress.fileio import save_npy
    from sparsefab.sim.spmv_flow import run_spmv

    W = _load(args.weights, "weight matrix")
    X = _load(args.x, "activations")
    if W.ndim != 2:
        raise SparsefabError(f"{args.weights}: expected a 2-D matrix (rows, cols), got shape {W.shape}")
    if X.ndim not in (1, 2):
        raise SparsefabError(f"{args.x}: expected shape (cols,) or (n, cols), got {X.shape}")
    if X.shape[-1] != W.shape[1]:
        raise SparsefabError(f"{args.x}: {X.shape[-1]} columns, but {args.weights} has cols={W.shape[1]}")
    if not 0.0 <= args.stalls < 1.0:
        raise SparsefabError(f"--stalls {args.stalls}: expected a probability in [0, 1)")
    show = sys.stderr.isatty() and not args.json
    kw = dict(lanes=args.lanes, bits=args.bits, block=args.block, stalls=args.stalls, seed=args.seed,
              simulator=args.simulator)
    if show:
        print(f"sparse array: {W.shape[0]}x{W.shape[1]}, {X.shape[0] if X.ndim == 2 else 1} vector(s), "
              f"lanes {args.lanes} ...", file=sys.stderr, flush=True)
    sparse = run_spmv(W, X, **kw)
    if show:
        print("dense baseline ...", file=sys.stderr, flush=True)
    dense = run_spmv(W, X, dense=True, **kw)
    y = sparse.y.astype(np.int32)
    if args.output:
        save_npy(args.output, y)
    report = {
        "y": y.tolist(),
        "rows": sparse.rows, "cols": sparse.cols, "n": sparse.n,
        "lanes": args.lanes, "bits": args.bits, "block": args.block, "simulator": args.simulator,
        "nnz": sparse.nnz, "density": sparse.nnz / (sparse.rows * sparse.cols),
        "cycles": sparse.cycles, "ideal_cycles": sparse.ideal_cycles,
        "utilization": sparse.utilization,
        "dense_cycles": dense.cycles, "dense_ideal_cycles": dense.ideal_cycles,
        "speedup": dense.cycles / sparse.cycles,
        "sim_cycles_per_s": sparse.sim_cycles_per_s,
        "sim_cycles_per_cpu_s": sparse.cycles / sparse.cpu_s if sparse.cpu_s > 0 else None,
        "counters": {k: v for k, v in sparse.counters.items()},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"matrix {sparse.rows}x{sparse.cols}, nnz {sparse.nnz} (density {report['density']:.4f}), "
          f"{sparse.n} vector(s), lanes {args.lanes}, bits {args.bits}, block {args.block} [{args.simulator}]")
    print(f"{'':10}{'cycles':>10}{'ideal':>10}{'ideal/measured':>16}")
    print(f"{'sparse':10}{sparse.cycles:>10}{sparse.ideal_cycles:>10}{sparse.ideal_cycles / sparse.cycles:>16.4f}")
    print(f"{'dense':10}{dense.cycles:>10}{dense.ideal_cycles:>10}{dense.ideal_cycles / dense.cycles:>16.4f}")
    print(f"utilization nnz/(lanes*cycles) = {sparse.utilization:.4f}; speedup over dense = "
          f"{report['speedup']:.3f}x; simulation {sparse.sim_cycles_per_s:,.0f} cycles/s")
    if args.output:
        print(f"wrote {args.output} (y, int32, shape {list(y.shape)})")
    else:
        print(f"y = {np.array2string(y, threshold=16)}")
    return 0


def register(commands) -> None:
    """Add this area's subcommands to commands (a :class:`sparsefab.cli.Commands`)."""
    p = commands.add("spmv", group="sim", help="sparse matrix-vector product through the sparse MAC array RTL "
                                               "(and its dense baseline): results, cycles, utilization")
    p.add_argument("--weights", required=True, metavar="W.npy", help="integer weight codes [rows, cols]")
    p.add_argument("--x", required=True, metavar="X.npy", help="int8 activation codes [cols] or [n, cols]")
    p.add_argument("--lanes", type=int, default=8, help="multipliers (nonzeros per cycle), default 8")
    p.add_argument("--block", type=int, default=16, choices=(8, 16, 32, 64), help="bitmap block B, default 16")
    p.add_argument("--bits", type=int, default=8, choices=(2, 4, 8), help="weight code bits, default 8")
    p.add_argument("--simulator", default="verilator", choices=("verilator", "icarus"),
                   help="verilator: compiled flow harness (default); icarus: cocotb runner (needs iverilog)")
    p.add_argument("--stalls", type=float, default=0.0, metavar="P",
                   help="random input idle cycles and output backpressure with probability P (default 0)")
    p.add_argument("--seed", type=int, default=1, help="seed of the stalls (default 1)")
    p.add_argument("-o", "--output", metavar="Y.npy", help="also write y (int32) to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_spmv)
