"""``sparsefab crossbar ...`` and ``sparsefab sim crossbar`` (see :mod:`sparsefab.cli`).

Examples::

    sparsefab crossbar map W.npy --tile 64 --cluster -o W.map --json
    sparsefab crossbar hopfield --png-dir out/
    sparsefab sim crossbar --weights W.npy --x X.npy --tile 32 --engines 2 --cluster --json
"""

from __future__ import annotations

import json

from sparsefab.compress.errors import SparsefabError


def _tile(v: str) -> int:
    from sparsefab.compress.tiling import TILES

    try:
        t = int(v)
    except ValueError:
        t = -1
    if t not in TILES:
        raise SparsefabError(f"--tile {v}: expected one of {', '.join(map(str, TILES))}")
    return t


def _fill(v) -> float:
    try:
        f = float(v)
    except ValueError:
        f = -1.0
    if not 0.0 <= f <= 1.0:
        raise SparsefabError(f"--fill {v}: expected a fraction in [0, 1]")
    return f


def _load_matrix(path, what):
    from sparsefab.compress.fileio import load_npy
    from sparsefab.compress.tiling import as_matrix

    a = load_npy(path, what=what)
    try:
        return as_matrix(a, f"{path}")
    except SparsefabError as exc:
        raise SparsefabError(str(exc)) from None


def _map(args) -> int:
    from sparsefab.compress import cluster, tiling
    from sparsefab.compress.fileio import atomic_write_bytes, read_bytes

    w = _load_matrix(args.weights, "weights")
    tile = _tile(args.tile)
    fill = _fill(args.fill)
    out = {"weights": str(args.weights), "shape": list(w.shape)}
    if args.use_map:
        m = tiling.TileMap.from_bytes(read_bytes(args.use_map, "MAP"))
        m.check_matrix(w)
        out.update(m.summary())
        clustered = m
    else:
        naive = tiling.build_map(w, tile=tile, fill=fill)
        out.update(naive.summary())
        clustered = naive
        if args.cluster:
            res = cluster.cluster(w, tile=tile, method=args.method, seed=args.seed)
            clustered = tiling.build_map(w, tile=tile, row_perm=res.row_perm, col_perm=res.col_perm,
                                         fill=fill, clustered=True)
            s = clustered.summary()
            out.update({"tiles_nonempty_clustered": s["tiles_nonempty"], "crossbar_tiles_clustered":
                        s["crossbar_tiles"], "nnz_in_tiles": s["nnz_in_tiles"], "leftover_nnz": s["leftover_nnz"],
                        "fill_of_crossbar_tiles_clustered": s["fill_of_crossbar_tiles"],
                        "cluster_method": res.method, "cluster_seconds": round(res.seconds, 3),
                        "clustered": True})
    if args.output:
        atomic_write_bytes(args.output, clustered.to_bytes())
        out["map_file"] = str(args.output)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32s} {v}")
    return 0


def _hopfield(args) -> int:
    from pathlib import Path

    from sparsefab.compress import hopfield

    if args.png_dir and not Path(args.png_dir).is_dir():
        raise SparsefabError(f"--png-dir {args.png_dir}: folder does not exist")
    res = hopfield.run(seed=args.seed, noise=args.noise)
    text = hopfield.report(res, png_dir=args.png_dir)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}))
    else:
        print(text)
        if args.png_dir:
            print(f"\nwrote {Path(args.png_dir) / 'hopfield_before.png'} and hopfield_after.png")
    return 0


def _sim(args) -> int:
    import numpy as np

    from sparsefab.compress import tiling
    from sparsefab.compress.fileio import load_npy, read_bytes, save_npy
    from sparsefab.sim.crossbar_flow import simulate

    w = _load_matrix(args.weights, "weights")
    x = load_npy(args.x, what="input")
    if w.dtype.kind not in "iu" or x.dtype.kind not in "iu":
        raise SparsefabError(f"--weights/--x: expected integer int8 codes, got {w.dtype} and {x.dtype}")
    if args.engines < 1 or args.engines > 16:
        raise SparsefabError(f"--engines {args.engines}: expected 1..16")
    tile = _tile(args.tile)
    tmap = None
    if args.map:
        tmap = tiling.TileMap.from_bytes(read_bytes(args.map, "MAP"))
        tmap.check_matrix(w)
        if tmap.tile != tile:
            raise SparsefabError(f"--map {args.map}: tile {tmap.tile} differs from --tile {tile}")
    r = simulate(w, x, tile=tile, engines=args.engines, lanes=args.lanes, tmap=tmap, cluster=args.cluster,
                 fill=_fill(args.fill), seed=args.seed, backend=args.backend)
    if args.output:
        save_npy(args.output, r["y"])
    if args.json:
        j = {k: v for k, v in r.items() if k != "y"}
        j["y"] = np.asarray(r["y"]).tolist()
        print(json.dumps(j, default=float))
    else:
        ideal = r["ideal_total"]
        print(f"y matches the golden model ({np.asarray(r['y']).size} int32 values, original row order)")
        print(f"cycles {r['cycles']} (ideal {ideal:.0f} = compute {r['ideal']['compute']:.0f} + programming "
              f"{r['ideal']['program']} + io {r['ideal']['io']}; measured/ideal {r['cycles'] / ideal:.3f})")
        print(f"tiles_run {r['tiles_run']}  tiles_skipped {r['tiles_skipped']}  stalls {r['stalls']}  "
              f"backend {r['backend']}")
    return 0


def register(commands) -> None:
    """Add ``crossbar map``, ``crossbar hopfield`` and ``sim crossbar``."""
    p = commands.add("map", group="crossbar", help="tile a weight matrix onto TxT crossbars (optionally clustered)")
    p.add_argument("weights", metavar="W.npy", help="weight matrix (.npy, 2-D)")
    p.add_argument("--tile", default="64", help="crossbar size T: 16, 32, 64 or 128 (default 64)")
    p.add_argument("--cluster", action="store_true", help="reorder rows/columns to gather nonzeros first")
    p.add_argument("--method", default="spectral+refine",
                   help="clustering: spectral, refine, spectral+refine (default)")
    p.add_argument("--seed", type=int, default=0, help="clustering seed (default 0)")
    p.add_argument("--fill", default="0", help="crossbar fill threshold in [0,1]; sparser tiles -> leftover")
    p.add_argument("--use-map", metavar="MAP", help="report an existing MAP file against W instead")
    p.add_argument("-o", "--output", metavar="MAP", help="write the MAP file (docs/FORMATS_CROSSBAR.md)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=_map)

    p = commands.add("hopfield", group="crossbar",
                     help="the 500-neuron Hopfield benchmark on 64x64 crossbars (table, pictures)")
    p.add_argument("--png-dir", metavar="DIR", help="write hopfield_before.png / hopfield_after.png here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.1, help="fraction of active bits moved in probes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_hopfield)

    p = commands.add("crossbar", group="sim", help="run y = W x on the TileController RTL, checked against the golden model")
    p.add_argument("--weights", required=True, metavar="W.npy", help="int8 weight codes [rows, cols]")
    p.add_argument("--x", required=True, metavar="X.npy", help="int8 input codes [cols] or [n, cols]")
    p.add_argument("--tile", default="32", help="T (default 32)")
    p.add_argument("--engines", type=int, default=2, help="tile engines E (default 2)")
    p.add_argument("--lanes", type=int, default=None, help="MACs per engine per cycle (default T)")
    p.add_argument("--cluster", action="store_true", help="cluster rows/columns first")
    p.add_argument("--fill", default="0", help="hybrid: tiles below this fill go to the sparse part")
    p.add_argument("--map", metavar="MAP", help="use this MAP file (from `crossbar map -o`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="auto", choices=("auto", "verilator", "amaranth"),
                   help="auto: compiled Verilator harness if available, else the Amaranth simulator")
    p.add_argument("-o", "--output", metavar="Y.npy", help="also save y (int32)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=_sim)
