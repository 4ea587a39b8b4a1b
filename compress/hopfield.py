"""The Hopfield benchmark of the neuron-clustering work, reproduced on sparsefab's crossbar model.

The source reports a Hopfield associative memory of 500 neurons storing 30 patterns, made
about 94 % sparse and clustered onto 64 x 64 crossbars, with over 90 % recognition at
94.39 % sparsity.  Its pattern set is not available, so this module states its own,
deterministic setup (all parameters are arguments):

* **Patterns.** 500 binary (0/1) neurons in ``modules`` hidden groups (neuron indices
  shuffled, so the groups are invisible in the natural order).  Pattern ``mu`` belongs to
  module ``mu mod modules``; it activates a random ``active`` fraction of that module plus
  ``outliers`` random neurons anywhere (irregular, cross-module co-activations).
* **Learning.** Covariance rule ``W = sum_mu (xi_mu - a)(xi_mu - a)^T``, zero diagonal
  (``a`` = mean activity).
* **Pruning.** Keep the largest weights (by value: co-activations) down to the target
  sparsity (default 94.39 %), quantize symmetrically to int8 codes.
* **Clustering and mapping.** :func:`sparsefab.compress.cluster.cluster` on the pruned codes,
  tile map at T = 64 (crossbar tiles = tiles with at least ``fill`` of their cells used; the
  rest is the hybrid leftover).
* **Recall.** A probe is a stored pattern with ``noise`` of its active neurons switched off
  and as many random inactive neurons switched on.  Synchronous updates with integer
  arithmetic through the crossbar model (:func:`sparsefab.compress.crossbar.crossbar_matvec`,
  tiles + leftover): neuron ``i`` is on next iff ``256 * h_i >= round(256 * theta) * n_on * wbar``
  where ``h = W_codes @ s``, ``n_on`` the number of active neurons and ``wbar`` the rounded mean
  positive weight code (a global inhibition proportional to activity); until a fixed point (at
  most ``steps`` steps).  A probe is **recognised** when the stored pattern nearest (Hamming)
  to the final state is the probed one, strictly nearer than any other; **exact** recall
  (all 500 bits) is reported beside it.

:func:`run` returns the figures; :func:`report` prints the table and writes the occupancy
pictures (matplotlib, Agg backend) when asked.
"""

from __future__ import annotations

import numpy as np

from . import cluster as _cluster
from . import crossbar as xb
from . import tiling
from .errors import SparsefabError


def patterns(n: int = 500, p: int = 30, *, modules: int = 5, active: float = 0.23, outliers: int = 1,
             seed: int = 0) -> np.ndarray:
    """Binary patterns ``[p, n]`` (uint8), modular as described in the module docstring."""
    if not (1 <= modules <= n and 0 < active <= 1 and outliers >= 0 and p >= 1):
        raise SparsefabError(f"patterns: bad parameters n={n} p={p} modules={modules} "
                             f"active={active} outliers={outliers}")
    rng = np.random.default_rng(seed)
    module_of = rng.permutation(np.arange(n) % modules)           # hidden, shuffled
    own = module_of[None, :] == (np.arange(p) % modules)[:, None]
    xi = own & (rng.random((p, n)) < active)
    out = rng.random((p, n)).argsort(axis=1)[:, :outliers]        # random extra neurons
    xi[np.arange(p)[:, None], out] = True
    return xi.astype(np.uint8)


def learn(xi: np.ndarray) -> np.ndarray:
    """Covariance rule with zero diagonal, float64 ``[n, n]``."""
    a = xi.mean()
    d = xi.astype(np.float64) - a
    w = d.T @ d
    np.fill_diagonal(w, 0.0)
    return w


def prune_quantize(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Keep the largest weights (zeros elsewhere) to ``sparsity``; int8 codes, max -> 127."""
    if not 0 <= sparsity < 1:
        raise SparsefabError(f"sparsity={sparsity!r}: expected a fraction in [0, 1)")
    keep = int(round((1 - sparsity) * w.size))
    flat = w.reshape(-1)
    idx = np.argpartition(-flat, keep - 1)[:keep] if keep else np.zeros(0, np.int64)
    codes = np.zeros(w.size, dtype=np.int64)
    scale = 127.0 / max(float(flat[idx].max()) if keep else 1.0, 1e-12)
    codes[idx] = np.clip(np.round(flat[idx] * scale), -128, 127)
    return codes.reshape(w.shape)


def recall(codes: np.ndarray, xi: np.ndarray, tmap: tiling.TileMap, *, noise: float = 0.1,
           theta: float = 0.7, steps: int = 20, seed: int = 1) -> dict:
    """Recognition rate from noisy probes, computed through the crossbar model."""
    rng = np.random.default_rng(seed)
    p, n = xi.shape
    s = xi.astype(np.int64).copy()
    for mu in range(p):  # one probe per pattern (corrupting needs the pattern's own support)
        on = np.flatnonzero(xi[mu])
        off = np.flatnonzero(xi[mu] == 0)
        k = int(round(noise * on.size))
        s[mu, rng.choice(on, k, replace=False)] = 0
        s[mu, rng.choice(off, k, replace=False)] = 1
    probe_err = int((s != xi).sum())
    pos = codes[codes > 0]
    wbar = int(round(pos.mean())) if pos.size else 1                # integer, fixed per network
    t_num = int(round(theta * 256))
    for _ in range(steps):
        h = xb.crossbar_matvec(codes, s, tmap)                   # [p, n], tiles + leftover
        nxt = (256 * h >= t_num * s.sum(1, keepdims=True) * wbar).astype(np.int64)
        if (nxt == s).all():
            break
        s = nxt
    exact = (s == xi).all(1)
    dist = (s[:, None, :] != xi[None, :, :]).sum(2)               # [probe, stored] Hamming
    own = dist[np.arange(p), np.arange(p)]
    others = np.where(np.eye(p, dtype=bool), n + 1, dist).min(1)
    ok = own < others                                             # nearest stored pattern is the right one
    return {"recognised": int(ok.sum()), "patterns": p, "recall": float(ok.mean()),
            "exact": int(exact.sum()), "exact_recall": float(exact.mean()),
            "probe_bit_errors": probe_err, "final_bit_errors": int((s != xi).sum())}


def run(*, n: int = 500, p: int = 30, sparsity: float = 0.9439, tile: int = 64, fill: float = 0.05,
        noise: float = 0.1, modules: int = 5, active: float = 0.23, outliers: int = 1, theta: float = 0.7,
        seed: int = 0, method: str = "spectral+refine") -> dict:
    """The whole benchmark; returns figures and the matrices for pictures."""
    xi = patterns(n, p, modules=modules, active=active, outliers=outliers, seed=seed)
    codes = prune_quantize(learn(xi), sparsity)
    naive = tiling.build_map(codes, tile=tile, fill=fill)
    cl = _cluster.cluster(codes, tile=tile, method=method, seed=seed)
    clustered = tiling.build_map(codes, tile=tile, row_perm=cl.row_perm, col_perm=cl.col_perm,
                                 fill=fill, clustered=True)
    rec_naive = recall(codes, xi, naive, noise=noise, theta=theta, seed=seed + 1)
    rec = recall(codes, xi, clustered, noise=noise, theta=theta, seed=seed + 1)
    dense_codes = prune_quantize(learn(xi), 0.0)
    dense = recall(dense_codes, xi, tiling.build_map(dense_codes, tile=tile), noise=noise, theta=theta,
                   seed=seed + 1)
    return {
        "neurons": n, "patterns": p, "tile": tile, "fill_threshold": fill, "noise": noise,
        "sparsity": float(1 - np.count_nonzero(codes) / codes.size), "nnz": int(np.count_nonzero(codes)),
        "theta": theta, "modules": modules, "active": active, "outliers": outliers,
        "recall": rec["recall"], "recognised": rec["recognised"], "exact_recall": rec["exact_recall"],
        "recall_naive_map": rec_naive["recall"], "probe_bit_errors": rec["probe_bit_errors"],
        "final_bit_errors": rec["final_bit_errors"],
        "recall_dense_unpruned": dense["recall"],
        "tiles_total": naive.tiles_total,
        "tiles_nonempty_naive": naive.nonempty, "tiles_nonempty_clustered": clustered.nonempty,
        "crossbars_naive": naive.n_tiles, "crossbars_clustered": clustered.n_tiles,
        "leftover_nnz_naive": naive.leftover_nnz, "leftover_nnz_clustered": clustered.leftover_nnz,
        "fill_clustered": clustered.summary()["fill_of_crossbar_tiles"],
        "fill_naive": naive.summary()["fill_of_crossbar_tiles"],
        "cluster_seconds": round(cl.seconds, 3),
        "_codes": codes, "_map": clustered,
    }


def occupancy_png(codes: np.ndarray, tmap: tiling.TileMap, path, *, title: str = "") -> None:
    """Picture of the nonzero pattern (permuted by ``tmap``) with the tile grid and crossbar tiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    t = tmap.tile
    wp = codes[tmap.row_perm][:, tmap.col_perm] != 0
    fig, ax = plt.subplots(figsize=(5, 5), dpi=110)
    ax.imshow(wp, cmap="Greys", interpolation="nearest")
    for k in range(1, max(tmap.grid)):
        ax.axhline(k * t - 0.5, color="tab:blue", lw=0.4)
        ax.axvline(k * t - 0.5, color="tab:blue", lw=0.4)
    for tr, tc in tmap.tiles:
        ax.add_patch(Rectangle((tc * t - 0.5, tr * t - 0.5), t, t, fill=False, ec="tab:red", lw=1.2))
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    from io import BytesIO

    from .fileio import atomic_write_bytes

    buf = BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def report(res: dict, *, png_dir=None) -> str:
    """Markdown table of :func:`run`'s figures; writes before/after PNGs into ``png_dir``."""
    rows = [
        ("neurons / patterns", f"{res['neurons']} / {res['patterns']}"),
        ("sparsity", f"{100 * res['sparsity']:.2f} % ({res['nnz']} weights)"),
        (f"recognition ({100 * res['noise']:.0f} % noisy probes, crossbar model)",
         f"{100 * res['recall']:.1f} % ({res['recognised']}/{res['patterns']})"),
        ("exact recall (all bits)", f"{100 * res['exact_recall']:.1f} %"),
        ("bit errors, probes -> final states", f"{res['probe_bit_errors']} -> {res['final_bit_errors']}"),
        ("recognition, unpruned network (same rule, not tuned for it)", f"{100 * res['recall_dense_unpruned']:.1f} %"),
        (f"non-empty {res['tile']}x{res['tile']} tiles, naive / clustered",
         f"{res['tiles_nonempty_naive']} / {res['tiles_nonempty_clustered']} of {res['tiles_total']}"),
        (f"crossbars (fill >= {res['fill_threshold']}), naive / clustered",
         f"{res['crossbars_naive']} / {res['crossbars_clustered']}"),
        ("leftover nonzeros (sparse part), naive / clustered",
         f"{res['leftover_nnz_naive']} / {res['leftover_nnz_clustered']}"),
        ("fill of crossbar tiles, naive / clustered", f"{res['fill_naive']:.3f} / {res['fill_clustered']:.3f}"),
        ("clustering time", f"{res['cluster_seconds']} s"),
    ]
    text = "| figure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    if png_dir is not None:
        from pathlib import Path

        d = Path(png_dir)
        codes, cm = res["_codes"], res["_map"]
        naive = tiling.build_map(codes, tile=res["tile"], fill=res["fill_threshold"])
        occupancy_png(codes, naive, d / "hopfield_before.png",
                      title=f"before: {naive.nonempty} non-empty tiles, {naive.n_tiles} crossbars")
        occupancy_png(codes, cm, d / "hopfield_after.png",
                      title=f"after clustering: {cm.nonempty} non-empty tiles, {cm.n_tiles} crossbars")
    return text
