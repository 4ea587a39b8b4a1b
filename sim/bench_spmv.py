"""Bench section ``spmv``: the sparse MAC array on real transformer matrices, measured vs ideal.

The linear layers of all-MiniLM-L6-v2 (:func:`sparsefab.data.minilm.weight_matrices`; real
weights only, there is no random fallback) are magnitude-pruned to 50, 75 and 90 % and
quantized to INT8 per output channel; each matrix runs once through the RTL (the compiled
flow harness of :mod:`sparsefab.sim.flow`) with lanes 8 and 16, and through the dense
baseline with the same lanes.  Printed per (sparsity, lanes), summed over the matrices:

- measured cycles (reset release to the last row result, activation loading included),
- ideal cycles ``sum ceil(nnz / lanes)``, and ideal/measured (the utilization target is >= 0.90),
- the worst per-row overhead ``(measured - ideal) / rows`` over the matrices (target <= 1), and
  the same without the activation loading (``ceil(cols / 8)`` cycles per matrix, not a row cost),
- dense-baseline cycles, the measured speedup dense/sparse and the target ``0.9 / density``,
- the flow simulation speed (simulated cycles per second of the C++ loop).

Every RTL result is also compared with the golden model (:func:`sparsefab.compress.quant.spmv_int`).
"""

from __future__ import annotations

import time

import numpy as np

from sparsefab.compress.errors import SparsefabError

SPARSITIES = (0.5, 0.75, 0.9)
LANES = (8, 16)
BLOCK = 16
BITS = 8
SEED = 2026
QUICK_MATRICES = ("layer0.q", "layer0.ffn_up", "layer0.ffn_down")


def _matrices(quick: bool) -> dict[str, np.ndarray]:
    from sparsefab.data import minilm

    if not minilm.available():
        raise SparsefabError(f"bench spmv needs the real MiniLM weights: {minilm.INSTALL_HINT}")
    mats = minilm.weight_matrices()
    if quick:
        mats = {k: mats[k] for k in QUICK_MATRICES}
    return mats


def _codes(w: np.ndarray, sparsity: float) -> np.ndarray:
    from sparsefab.compress.prune import prune_magnitude
    from sparsefab.compress.quant import quantize

    pruned = prune_magnitude(w, sparsity).weights
    codes, _ = quantize(pruned, bits=BITS, granularity="channel")
    return np.asarray(codes, dtype=np.int8)


def _ice40_rows(mats: dict, xs: dict, max_cols: int) -> list[dict]:
    """The iCEBreaker form of the array (8 lanes, ``designs.build_spmv.board_defaults``: 64-bit
    mask beats, 2-beat window, 32-bit bus, requantization in logic) on the same matrices: its
    utilization, printed and returned (it trades utilization at high sparsity for area)."""
    from sparsefab.compress.quant import spmv_int
    from sparsefab.gen.designs import board_defaults
    from sparsefab.sim.spmv_flow import run_spmv

    p = board_defaults("spmv", "icebreaker")
    lanes = 8
    out = []
    print(f"iCEBreaker form: lanes {lanes}, {p}")
    print(f"{'sparsity':>8} {'cycles':>10} {'ideal':>10} {'ideal/meas':>10} {'golden':>6}")
    for sparsity in SPARSITIES:
        cyc = ideal = 0
        same = True
        for w in mats.values():
            c = _codes(w, sparsity)
            x = xs[c.shape[1]]
            r = run_spmv(c, x, lanes=lanes, bits=BITS, block=BLOCK, max_cols=max_cols, **p)
            same &= bool(np.array_equal(r.y, spmv_int(c, x)))
            cyc += r.cycles
            ideal += r.ideal_cycles
        out.append({"sparsity": sparsity, "lanes": lanes, "cycles": cyc, "ideal_cycles": ideal,
                    "utilization": ideal / cyc, "golden": same, "params": p})
        print(f"{sparsity:>8.2f} {cyc:>10} {ideal:>10} {ideal / cyc:>10.4f} {'yes' if same else 'NO':>6}")
    return out


def run(quick: bool = False) -> dict:
    """Run the section; print the table; return the figures."""
    from sparsefab.compress.quant import spmv_int
    from sparsefab.sim.spmv_flow import run_spmv, spmv_config

    mats = _matrices(quick)
    max_cols = max(1024, max(w.shape[1] for w in mats.values()))
    max_cols = 1 << (max_cols - 1).bit_length()
    acts_per_word = spmv_config(lanes=LANES[0], bits=BITS, block=BLOCK, cols=max_cols).acts_per_word
    rng = np.random.default_rng(SEED)
    xs = {cols: rng.integers(-128, 128, cols).astype(np.int8) for cols in {w.shape[1] for w in mats.values()}}
    print(f"MiniLM-L6 linear layers: {len(mats)} matrices ({'quick subset' if quick else 'all'}), "
          f"magnitude-pruned, INT8 per-channel, block {BLOCK}; one vector per matrix; max_cols {max_cols}")
    rows_out = []
    sim_cycles = 0
    sim_wall = 0.0
    sim_cpu = 0.0
    mismatches = 0
    t_start = time.perf_counter()
    for sparsity in SPARSITIES:
        codes = {name: _codes(w, sparsity) for name, w in mats.items()}
        for lanes in LANES:
            agg = {"cycles": 0, "ideal": 0, "dense_cycles": 0, "dense_ideal": 0, "nnz": 0, "elems": 0}
            worst_row_overhead = -np.inf
            worst_row_overhead_nl = -np.inf
            for c in codes.values():
                x = xs[c.shape[1]]
                sp = run_spmv(c, x, lanes=lanes, bits=BITS, block=BLOCK, max_cols=max_cols)
                de = run_spmv(c, x, lanes=lanes, bits=BITS, block=BLOCK, max_cols=max_cols, dense=True)
                gold = spmv_int(c, x)
                if not (np.array_equal(sp.y, gold) and np.array_equal(de.y, gold)):
                    mismatches += 1
                agg["cycles"] += sp.cycles
                agg["ideal"] += sp.ideal_cycles
                agg["dense_cycles"] += de.cycles
                agg["dense_ideal"] += de.ideal_cycles
                agg["nnz"] += sp.nnz
                agg["elems"] += c.size
                worst_row_overhead = max(worst_row_overhead, (sp.cycles - sp.ideal_cycles) / c.shape[0])
                load = -(-c.shape[1] // acts_per_word)
                worst_row_overhead_nl = max(worst_row_overhead_nl,
                                            (sp.cycles - sp.ideal_cycles - load) / c.shape[0])
                for r in (sp, de):
                    sim_cycles += r.cycles
                    sim_wall += r.wall_s
                    sim_cpu += r.cpu_s
            density = agg["nnz"] / agg["elems"]
            rows_out.append({
                "sparsity": sparsity, "lanes": lanes, "density": density, "nnz": agg["nnz"],
                "cycles": agg["cycles"], "ideal_cycles": agg["ideal"],
                "utilization": agg["ideal"] / agg["cycles"],
                "max_row_overhead": float(worst_row_overhead),
                "max_row_overhead_excl_load": float(worst_row_overhead_nl),
                "dense_cycles": agg["dense_cycles"], "dense_ideal_cycles": agg["dense_ideal"],
                "speedup": agg["dense_cycles"] / agg["cycles"], "speedup_target": 0.9 / density,
            })
    speed = sim_cycles / sim_wall if sim_wall > 0 else float("inf")
    cpu_speed = sim_cycles / sim_cpu if sim_cpu > 0 else float("inf")
    hdr = (f"{'sparsity':>8} {'lanes':>5} {'density':>8} {'cycles':>10} {'ideal':>10} {'ideal/meas':>10} "
           f"{'row ovh':>8} {'excl ld':>8} {'dense cyc':>10} {'speedup':>8} {'target':>7} {'ok':>3}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows_out:
        ok = r["utilization"] >= 0.9 and r["max_row_overhead"] <= 1.0 and r["speedup"] >= r["speedup_target"]
        r["meets_targets"] = bool(ok)
        print(f"{r['sparsity']:>8.2f} {r['lanes']:>5} {r['density']:>8.4f} {r['cycles']:>10} {r['ideal_cycles']:>10} "
              f"{r['utilization']:>10.4f} {r['max_row_overhead']:>8.3f} "
              f"{r['max_row_overhead_excl_load']:>8.3f} {r['dense_cycles']:>10} "
              f"{r['speedup']:>8.3f} {r['speedup_target']:>7.3f} {'yes' if ok else 'NO':>3}")
    print("targets: ideal/measured >= 0.90, per-row overhead <= 1 cycle, speedup >= 0.9/density")
    print(f"RTL == golden model (spmv_int) on every matrix, sparse and dense: "
          f"{'yes' if mismatches == 0 else f'NO ({mismatches} mismatching runs)'}")
    print(f"flow simulation speed: {speed:,.0f} simulated cycles/s of wall time, {cpu_speed:,.0f} per CPU second "
          f"({sim_cycles} cycles, C++ loop {sim_wall:.3f} s wall / {sim_cpu:.3f} s CPU; target >= 200,000); "
          f"section wall {time.perf_counter() - t_start:.1f} s")
    ice40 = _ice40_rows(mats, xs, max_cols)
    return {"rows": rows_out, "ice40_rows": ice40, "sim_cycles_per_s": speed, "sim_cycles_per_cpu_s": cpu_speed, "sim_cycles": sim_cycles, "golden_mismatches": mismatches,
            "matrices": list(mats), "block": BLOCK, "bits": BITS}
