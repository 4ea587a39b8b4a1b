"""Cocotb runs of the engine cluster (:class:`sparsefab.gen.spmv_multi.SparseMacCluster`).

The cluster has the array's ports plus one mask and one value stream per engine, so it runs
under the array's own cocotb tests (:mod:`sparsefab.sim.tb_sparse_mac`: ``spmv_scoreboard``,
``spmv_reset_midrow``, seeded idle cycles and backpressure on every stream); this module only
builds the case: commands, activations and requantization parameters as for one array
(:func:`sparsefab.sim.tb_spmv.stream_items`), each engine's beats from the golden encoder's
bitmap of its row shard (:func:`sparsefab.gen.spmv_multi.shard_images`, the row rotation
carried across matrices), expected rows from :func:`sparsefab.sim.tb_spmv.expected`.
"""

from __future__ import annotations

import json


def cluster_items(cfg, engines: int, jobs) -> dict:
    """Every input stream's items (port name -> list of payloads) for ``jobs`` back to back."""
    from sparsefab.gen.bitmap_decoder import cmd_layout, value_layout
    from sparsefab.gen.sparse_mac import rq_layout
    from sparsefab.gen.spmv_multi import shard_images
    from sparsefab.sim.streams import PayloadCodec
    from sparsefab.sim.tb_spmv import stream_items

    raw = stream_items(cfg, jobs)
    cmd, val, rq = (PayloadCodec.from_layout(x) for x in (cmd_layout(cfg), value_layout(cfg), rq_layout()))
    items = {"i_cmd": [cmd.pack(v) for v in raw["cmd"]], "i_act": [int(v) for v in raw["act"]],
             "i_rq": [rq.pack(v) for v in raw["rq"]]}
    for e in range(engines):
        items[f"i_mask__{e}"], items[f"i_value__{e}"] = [], []
    start = 0
    for job in jobs:
        for e, img in enumerate(shard_images(job.codes, cfg, engines, start)):
            if img is None:
                continue
            items[f"i_mask__{e}"] += [int(b) for b in cfg.mask_beats(img)]
            items[f"i_value__{e}"] += [val.pack({"data": d, "last": last}) for d, last in cfg.value_beats(img)]
        start = (start + job.rows) % engines
    return {k: v for k, v in items.items() if v}


def run_case(cfg, engines: int, jobs, *, seed: int = 1, idle: float = 0.2, backpressure: float = 0.2,
             simulator: str = "verilator", testcase: str = "spmv_scoreboard", max_busy: int | None = None,
             front_end=None, family: str | None = None) -> dict:
    """Build (cached) and run a :class:`SparseMacCluster` of ``engines`` x ``cfg`` on ``jobs`` back to back
    (``front_end``: the engines' decoder class, see the cluster; ``family``, e.g. ``"ecp5"``: simulate
    the netlist that FPGA family gets, :func:`sparsefab.sim.vendor_models.family_verilog`).

    Returns the cluster's counters at the end (``o_cycles``, ``o_stalls``, ``o_nnz``, ...).
    Raises :class:`sparsefab.sim.runner.SimulationFailed` (seed in the message) on a mismatch.
    """
    import tempfile
    from pathlib import Path

    import numpy as np

    from sparsefab.gen.sparse_mac import res_layout
    from sparsefab.gen.spmv_multi import SparseMacCluster
    from sparsefab.sim.runner import run_cocotb
    from sparsefab.sim.streams import layout_json
    from sparsefab.sim.tb_spmv import expected

    dut = SparseMacCluster(cfg, engines=engines, front_end=front_end)
    items = cluster_items(cfg, engines, jobs)
    exp = [list(e) for j in jobs for e in expected(cfg, j)]
    nnz = sum(int(np.count_nonzero(j.codes)) for j in jobs)
    total = sum(len(v) for v in items.values())
    case = {"items": items, "expected": exp, "nnz": nnz, "idle": idle, "backpressure": backpressure,
            "res_layout": layout_json(res_layout(cfg)), "max_busy": max_busy,
            "timeout": 5000 + 20 * (total + sum(j.rows * (j.cols + 1) for j in jobs))}
    params = dict(cfg.to_dict(), engines=engines,
                  front_end=None if front_end is None else f"{front_end.__module__}.{front_end.__qualname__}")
    design = dut
    if family is not None:
        from sparsefab.sim.vendor_models import family_verilog
        design = family_verilog(dut, name=dut.name, family=family)
        params["family"] = family
    with tempfile.TemporaryDirectory(prefix="sfspmvx-") as tmp:
        cf, of = Path(tmp) / "case.json", Path(tmp) / "out.json"
        cf.write_text(json.dumps(case))
        run_cocotb(design, toplevel=dut.name, test_module="sparsefab.sim.tb_sparse_mac", testcase=testcase,
                   parameters=params, simulator=simulator,
                   extra_env={"SPARSEFAB_SPMV_CASE": str(cf), "SPARSEFAB_SPMV_OUT": str(of),
                              "SPARSEFAB_SEED": str(seed)})
        return json.loads(of.read_text())
