"""``sparsefab bench --only crossbar``: clustering, Hopfield, ADC precision and TileController cycles.

Tables (each printed, each returned):

1. clustering on planted block structure hidden by random permutations: non-empty tiles
   before / after / ideal, share of the ideal reduction recovered, seconds, per method;
2. the Hopfield benchmark (compress/hopfield.py);
3. ADC precision of the analog tile model against the exact product (golden model);
4. TileController RTL on the compiled Verilator harness: cycles against
   ``nonempty_tiles * T*T/lanes / E`` (+ first-wave programming + input/output, shown
   separately), E = 2 vs E = 1 and clustered vs unclustered speedups measured in the same run.
"""

from __future__ import annotations

import time

import numpy as np


def _table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}")
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w[i]) for i, h in enumerate(header)))
    for r in rows:
        print("  ".join(str(v).rjust(w[i]) for i, v in enumerate(r)))


def _clustering(quick: bool) -> list[dict]:
    from sparsefab.compress import cluster

    cases = [(512, 32, 0.12, 0.5), (1024, 64, 0.1, 0.5)]
    if not quick:
        cases.append((4096, 64, 0.065, 0.5))
    out = []
    for n, t, bd, fill in cases:
        w, ideal = cluster.planted(n, n, tile=t, block_density=bd, fill=fill, seed=n)
        methods = ("spectral", "refine", "spectral+refine") if n <= 1024 else ("spectral+refine",)
        for meth in methods:
            r = cluster.cluster(w, tile=t, method=meth, seed=0)
            rec = (r.tiles_before - r.tiles_after) / max(1, r.tiles_before - ideal)
            out.append({"n": n, "tile": t, "sparsity": round(1 - np.count_nonzero(w) / w.size, 4),
                        "method": meth, "tiles_before": r.tiles_before, "tiles_after": r.tiles_after,
                        "ideal": ideal, "recovered": round(rec, 4), "seconds": round(r.seconds, 2)})
    if not quick:  # an unstructured 4096 x 4096 matrix at 95 % sparsity: time only, little to gain
        rng = np.random.default_rng(4096)
        w = (rng.random((4096, 4096)) < 0.05).astype(np.int8)
        r = cluster.cluster(w, tile=64, seed=0)
        out.append({"n": 4096, "tile": 64, "sparsity": round(1 - np.count_nonzero(w) / w.size, 4),
                    "method": "spectral+refine (random)", "tiles_before": r.tiles_before,
                    "tiles_after": r.tiles_after, "ideal": None, "recovered": None, "seconds": round(r.seconds, 2)})
    _table("clustering: planted blocks hidden by random permutations (target: recovered >= 0.90; "
           "4096x4096 < 60 s)",
           ["n", "T", "sparsity", "method", "before", "after", "ideal", "recovered", "s"],
           [[o["n"], o["tile"], o["sparsity"], o["method"], o["tiles_before"], o["tiles_after"], o["ideal"],
             o["recovered"], o["seconds"]] for o in out])
    return out


def _hopfield() -> dict:
    from sparsefab.compress import hopfield

    res = hopfield.run()
    print("\nHopfield associative memory on 64x64 crossbars (source: > 90 % recognition at 94.39 %)")
    print(hopfield.report(res))
    return {k: v for k, v in res.items() if not k.startswith("_")}


def _adc() -> list[dict]:
    from sparsefab.compress import cluster, tiling
    from sparsefab.compress import crossbar as xb

    w, _ = cluster.planted(256, 256, tile=64, block_density=0.2, fill=0.5, seed=1)
    w = w.astype(np.int64)
    x = np.random.default_rng(1).integers(-128, 128, (16, 256))
    m = tiling.build_map(w, tile=64)
    ref = x @ w.T
    scale = float(np.abs(ref).max())
    out = []
    for dac in (8, 4, 1):
        for bits in (6, 8, 10, 12):
            num = xb.Numerics(dac_bits=dac, adc_bits=bits,
                              adc_shift=xb.full_scale_shift(64, dac_bits=dac, adc_bits=bits))
            err = np.abs(xb.crossbar_matvec(w, x, m, num) - ref)
            out.append({"dac_bits": dac, "adc_bits": bits, "adc_shift": num.adc_shift,
                        "max_err_rel": round(float(err.max()) / scale, 5),
                        "mean_err_rel": round(float(err.mean()) / scale, 6)})
    _table("analog tile model: error vs ADC bits (full-scale ADC, T=64, relative to max |y|)",
           ["dac_bits", "adc_bits", "shift", "max err", "mean err"],
           [[o["dac_bits"], o["adc_bits"], o["adc_shift"], o["max_err_rel"], o["mean_err_rel"]] for o in out])
    return out


def _rtl(quick: bool) -> list[dict]:
    import shutil

    if shutil.which("verilator") is None:
        print("\nTileController RTL: skipped (verilator not on PATH)")
        return []
    from sparsefab.compress import cluster
    from sparsefab.sim.crossbar_flow import simulate

    n = 256 if quick else 512
    w, _ = cluster.planted(n, n, tile=32, block_density=0.12, fill=0.5, seed=7)
    x = np.random.default_rng(7).integers(-128, 128, n)
    out = []
    points = [(32, 1, 32, True), (32, 2, 32, True), (32, 2, 8, True), (32, 2, 32, False)]
    for t, e, lanes, clus in points:
        r = simulate(w, x, tile=t, engines=e, lanes=lanes, cluster=clus, backend="verilator")
        ideal = r["ideal"]
        out.append({"n": n, "tile": t, "engines": e, "lanes": lanes, "clustered": clus,
                    "tiles_run": r["tiles_run"], "tiles_skipped": r["tiles_skipped"], "cycles": r["cycles"],
                    "compute_ideal": ideal["compute"], "program": ideal["program"], "io": ideal["io"],
                    "ratio": round(r["cycles"] / r["ideal_total"], 4), "stalls": r["stalls"],
                    "wall_s": round(r["wall_s"], 4)})
    _table("TileController (Verilator harness): measured vs ideal = compute (tiles*T*T/lanes/E) + "
           "first-wave programming + io (cols in + rows out)",
           ["n", "T", "E", "lanes", "clustered", "tiles run", "skipped", "cycles", "compute", "program", "io",
            "measured/ideal", "stalls"],
           [[o["n"], o["tile"], o["engines"], o["lanes"], o["clustered"], o["tiles_run"], o["tiles_skipped"],
             o["cycles"], o["compute_ideal"], o["program"], o["io"], o["ratio"], o["stalls"]] for o in out])
    sp_e = out[0]["cycles"] / out[1]["cycles"]
    sp_c = out[3]["cycles"] / out[1]["cycles"]
    print(f"speedup E=2 vs E=1 (same map): {sp_e:.3f}x; clustered vs unclustered (E=2): {sp_c:.3f}x")
    out.append({"speedup_engines_2_vs_1": round(sp_e, 4), "speedup_clustered": round(sp_c, 4)})
    return out


def run(quick: bool = False) -> dict:
    """The crossbar bench section (see the module docstring)."""
    t0 = time.perf_counter()
    res = {"clustering": _clustering(quick), "hopfield": _hopfield(), "adc": _adc(), "rtl": _rtl(quick)}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res
