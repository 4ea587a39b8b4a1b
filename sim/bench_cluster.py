"""Bench section ``cluster``: the engine cluster (the ECP5 32-lane form) on real transformer matrices.

:class:`sparsefab.gen.spmv_multi.SparseMacCluster` as the ULX3S builds it (``spmv-cluster`` with
``LANES`` lanes and the board defaults: engines and their front end) runs the linear layers of all-MiniLM-L6-v2,
magnitude-pruned to 50, 75 and 90 % and quantized to INT8 per output channel (the same matrices
and activations as the ``spmv`` section), all matrices of a sparsity back to back in one cocotb
run (Verilator, no idle cycles, no backpressure), every row checked against the golden model by
the scoreboard.  Printed per sparsity:

- busy cycles (``o_cycles``: from each command to the last engine's decoder finishing, activation
  loading included),
- ideal cycles ``sum ceil(nnz / (engines * lanes))`` and ideal/measured (target >= 0.90),
- the overhead per engine row ``(busy - ideal) / (rows / engines)``, with and without the
  exposed activation loading (``ceil(cols / 8)`` cycles per matrix; with ``act_banks = 2``, the
  ULX3S default, only the first matrix's: the others load while their predecessor runs), and
  the share of the loss that is shard imbalance: ``sum max_e ceil(nnz_e / lanes)`` vs the ideal.
"""

from __future__ import annotations

import numpy as np

SPARSITIES = (0.5, 0.75, 0.9)
LANES = 32
SEED = 2026


def run(quick: bool = False) -> dict:
    """Run the section; print the table; return the figures."""
    from sparsefab.gen.designs import board_defaults
    from sparsefab.gen.spmv_multi import build_cluster, shard_rows
    from sparsefab.sim.bench_spmv import BITS, BLOCK, _codes, _matrices
    from sparsefab.sim.tb_spmv import Job, random_rq
    from sparsefab.sim.tb_spmv_multi import run_case

    mats = _matrices(quick)
    max_cols = 1 << (max(w.shape[1] for w in mats.values()) - 1).bit_length()
    params = board_defaults("spmv-cluster", "ulx3s-85f")
    cluster = build_cluster(lanes=LANES, bits=BITS, block=BLOCK, max_cols=max_cols, **params)
    cluster._MustUse__silence = True      # only its configuration is used; run_case builds its own
    cfg, engines, lanes = cluster.config, cluster.engines, cluster.lanes
    per = cfg.lanes
    rng = np.random.default_rng(SEED)
    xs = {cols: rng.integers(-128, 128, cols).astype(np.int64) for cols in {w.shape[1] for w in mats.values()}}
    print(f"cluster: {engines} engines x {per} lanes = {lanes} lanes, ULX3S defaults {params}; "
          f"MiniLM-L6: {len(mats)} matrices ({'quick subset' if quick else 'all'}), max_cols {max_cols}")
    hdr = (f"{'sparsity':>8} {'busy cyc':>10} {'ideal':>10} {'ideal/meas':>10} {'balanced':>10} "
           f"{'ovh/eng row':>11} {'excl load':>9} {'golden':>6} {'ok':>3}")
    print(hdr)
    print("-" * len(hdr))
    out = []
    for sparsity in SPARSITIES:
        jobs, ideal, balanced, rows, load = [], 0, 0, 0, 0
        start = 0
        for w in mats.values():
            c = _codes(w, sparsity).astype(np.int64)
            jobs.append(Job(c, xs[c.shape[1]], random_rq(rng, c.shape[0])))
            nnz = int(np.count_nonzero(c))
            ideal += -(-nnz // lanes)
            balanced += max(-(-int(np.count_nonzero(c[idx])) // per)
                            for idx in shard_rows(c.shape[0], engines, start))
            rows += c.shape[0]
            # with two activation banks only the first matrix's load is exposed (the others load
            # while their predecessor runs)
            if cfg.act_banks == 1 or not load:
                load += -(-c.shape[1] // cfg.acts_per_word)
            start = (start + c.shape[0]) % engines
        got = run_case(cfg, engines, jobs, seed=SEED, idle=0.0, backpressure=0.0,   # raises on a mismatch
                       front_end=cluster.front_end)
        busy = got["o_cycles"]
        r = {"sparsity": sparsity, "engines": engines, "lanes": lanes, "busy_cycles": busy, "ideal_cycles": ideal,
             "utilization": ideal / busy, "shard_max_cycles": balanced, "balance": ideal / balanced,
             "overhead_per_engine_row": (busy - ideal) / (rows / engines),
             "overhead_per_engine_row_excl_load": (busy - ideal - load) / (rows / engines), "nnz": got["o_nnz"], "golden": True}
        r["meets_targets"] = bool(r["utilization"] >= 0.9)
        out.append(r)
        print(f"{sparsity:>8.2f} {busy:>10} {ideal:>10} {r['utilization']:>10.4f} {r['balance']:>10.4f} "
              f"{r['overhead_per_engine_row']:>11.3f} {r['overhead_per_engine_row_excl_load']:>9.3f} {'yes':>6} {'yes' if r['meets_targets'] else 'NO':>3}")
    print("balanced = ideal / sum over matrices of the slowest engine's ceil(nnz_e / lanes): the part of the "
          "loss due to uneven shards; target ideal/measured >= 0.90")
    return {"rows": out, "config": cfg.to_dict(), "engines": engines, "params": params}
