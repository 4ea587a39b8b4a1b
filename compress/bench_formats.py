"""Bench section "formats": encoder/decoder throughput and the storage table of the digits MLP.

Run with ``sparsefab bench --only formats`` (``--quick`` for smaller sizes).

Throughput is measured on an INT8 code matrix (4096 x 4096, 1024 x 1024 with quick) at
75 % unstructured sparsity (the nm format gets a 1:4 pattern of the same sparsity) and
given in MB/s of dense input (rows * cols bytes) for the full file encode and decode,
CRC and validation included.  The "ideal" column is a plain memory copy of the dense
matrix measured in the same run; measured/ideal is the fraction of copy speed reached.
"""

from __future__ import annotations

import time

import numpy as np

from . import formats
from .errors import SparsefabError

TARGET_MBS = 100.0


def _best(fn, reps: int) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) time of ``reps`` calls, in seconds.

    On a shared machine the CPU time shows what the code costs when it is not preempted.
    """
    wall = cpu = float("inf")
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return wall, max(cpu, 1e-9)


def test_matrix(n: int, sparsity: float = 0.75, seed: int = 0) -> np.ndarray:
    """INT8 codes with exactly ``round(sparsity * n * n)`` zeros at random places (others nonzero)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 128, size=(n, n), dtype=np.int16) * rng.choice(np.array([-1, 1], np.int16), size=(n, n))
    a.reshape(-1)[rng.permutation(a.size)[: round(sparsity * a.size)]] = 0
    return a.astype(np.int8)


def nm_matrix(a: np.ndarray, n: int, m: int, seed: int = 1) -> np.ndarray:
    """Keep ``n`` random positions of every group of ``m`` (nonzero codes of ``a`` or 1)."""
    rng = np.random.default_rng(seed)
    rows, cols = a.shape
    keep = np.argsort(rng.random((rows, cols // m, m)), axis=2) < n
    vals = np.where(a == 0, np.int8(1), a).reshape(rows, cols // m, m)
    return (vals * keep).reshape(rows, cols).astype(np.int8)


def throughput(n: int, *, reps: int = 3) -> list[dict]:
    """Encode/decode MB/s of every format on an n x n INT8 matrix at 75 % sparsity."""
    a = test_matrix(n)
    a_nm = nm_matrix(a, 1, 4)
    mb = a.nbytes / 1e6
    dst = np.empty_like(a)
    copy_s, _ = _best(lambda: np.copyto(dst, a), reps)
    rows = []
    for name in formats.NAMES:
        src = a_nm if name == "nm" else a
        params = {"n": 1, "m": 4} if name == "nm" else {}
        data = formats.encode(src, name, bits=8, **params)
        back, _ = formats.decode(data)
        if not np.array_equal(back, src):  # a benchmark of a wrong decoder is worthless
            raise SparsefabError(f"bench: {name} round trip differs")
        enc, enc_cpu = _best(lambda s=src, nm=name, p=params: formats.encode(s, nm, bits=8, **p), reps)
        dec, dec_cpu = _best(lambda d=data: formats.decode(d), reps)
        rows.append({"format": name, "shape": [n, n], "sparsity": 1 - np.count_nonzero(src) / src.size,
                     "bytes": len(data), "encode_mbs": mb / enc, "decode_mbs": mb / dec,
                     "encode_cpu_mbs": mb / enc_cpu, "decode_cpu_mbs": mb / dec_cpu,
                     "copy_mbs": mb / copy_s, "encode_s": enc, "decode_s": dec})
    return rows


def digits_tables(bits_list=(8, 4)) -> dict:
    """Storage table of each digits MLP layer: pruned 75 % (magnitude) and 2:4, per-channel."""
    from sparsefab.data import digits

    from .prune import prune
    from .quant import quantize

    out = {}
    for li, layer in enumerate(digits.load_mlp(), start=1):
        for spec in ("magnitude:0.75", "nm:2:4"):
            pr = prune(layer.W, spec)
            for bits in bits_list:
                codes, q = quantize(pr.weights, bits=bits, granularity="channel")
                nm = (2, 4) if spec == "nm:2:4" else None
                out[f"W{li} {layer.W.shape[0]}x{layer.W.shape[1]} {spec} int{bits}"] = {
                    "nnz": int(np.count_nonzero(codes)),
                    "table": formats.storage_table(codes, bits, quant=q, nm=nm),
                }
    return out


def run(quick: bool = False) -> dict:
    """Print the throughput table and the digits storage tables; return every figure."""
    n = 1024 if quick else 4096
    rows = throughput(n, reps=2 if quick else 3)
    print(f"encode/decode throughput, {n}x{n} INT8 codes, 75 % sparsity (nm: 1:4), MB/s of dense input;")
    print(f"ideal = memory copy of the dense matrix in this run ({rows[0]['copy_mbs']:.0f} MB/s); "
          f"target >= {TARGET_MBS:.0f} MB/s each way")
    print("MB/s from the best wall-clock time (target judged on it) and, in brackets, from the best CPU time")
    head = (f"{'format':<8}{'file B':>11}{'encode MB/s':>20}{'enc/ideal':>11}{'decode MB/s':>20}"
            f"{'dec/ideal':>11}  target")
    print(head)
    print("-" * len(head))
    for r in rows:
        ok = "met" if min(r["encode_mbs"], r["decode_mbs"]) >= TARGET_MBS else "missed"
        enc = f"{r['encode_mbs']:.1f} [{r['encode_cpu_mbs']:.1f}]"
        dec = f"{r['decode_mbs']:.1f} [{r['decode_cpu_mbs']:.1f}]"
        print(f"{r['format']:<8}{r['bytes']:>11}{enc:>20}{r['encode_mbs'] / r['copy_mbs']:>11.4f}"
              f"{dec:>20}{r['decode_mbs'] / r['copy_mbs']:>11.4f}  {ok}")
    result = {"throughput": rows}
    try:
        tables = digits_tables()
    except (SparsefabError, ImportError) as exc:
        print(f"\ndigits MLP format table skipped: {exc}")
        return result
    for title, t in tables.items():
        print(f"\ndigits MLP {title}: nnz {t['nnz']}")
        print(formats.format_table(t["table"]))
    result["digits"] = tables
    return result
