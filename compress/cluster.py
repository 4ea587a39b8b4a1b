"""Neuron clustering: row and column permutations that gather nonzeros into few T x T tiles.

Three methods, measured against each other by :func:`compare` (and ``sparsefab bench``):

``spectral``
    Spectral co-clustering (Dhillon 2001) of the nonzero pattern ``A``: the bipartite matrix
    is normalised, ``An = D_r^-1/2 A D_c^-1/2``, its leading singular vectors are found by a
    randomized SVD in NumPy (range finder + power iterations, seeded), rows and columns are
    embedded (``D^-1/2 U``, ``D^-1/2 V``, first trivial vector dropped) and grouped by k-means
    (k-means++ seeding) with ``ceil(rows/T)`` row clusters and ``ceil(cols/T)`` column clusters.
    Clusters are ordered along the leading non-trivial singular vector; members are
    concatenated, so cluster boundaries need not align with tile boundaries (refinement fixes that).
``refine``
    Tile-aware iterative refinement from the current order: alternately, each row is given a
    "tile row" (capacity ``T``) that already covers the column tiles it touches, by a
    capacity-limited greedy assignment on the cost ``new column tiles opened - shared
    column tiles`` (vectorised: every round, every unassigned row proposes its cheapest open
    tile row, each tile row accepts its cheapest proposals up to its free capacity); then the same
    for columns.  A pass is kept only if it lowers the number of non-empty tiles, so the
    result is never worse than the start.
``spectral+refine`` (default)
    ``spectral``, then ``refine``.  ``auto`` is the same.

Everything is deterministic for a given ``seed``.  NumPy only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .errors import SparsefabError
from .tiling import as_matrix, check_tile, count_nonempty, grid

METHODS = ("spectral", "refine", "spectral+refine", "identity")


@dataclass(frozen=True, eq=False)
class Clustering:
    """Result of :func:`cluster`: permutations (position -> original index) and figures."""

    row_perm: np.ndarray
    col_perm: np.ndarray
    method: str
    tiles_before: int
    tiles_after: int
    seconds: float

    def summary(self) -> dict:
        return {"method": self.method, "tiles_before": self.tiles_before,
                "tiles_after": self.tiles_after, "seconds": round(self.seconds, 4)}


# ---------------------------------------------------------------------------------------------
# k-means (NumPy)
# ---------------------------------------------------------------------------------------------

def _sqdist(a: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] - 2.0 * a @ c.T + (c * c).sum(1)[None, :], 0.0)


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, iters: int = 30) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns labels ``[n]`` (deterministic)."""
    n = points.shape[0]
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    centers = np.empty((k, points.shape[1]), dtype=points.dtype)
    centers[0] = points[rng.integers(n)]
    d = _sqdist(points, centers[:1])[:, 0]
    for i in range(1, k):  # one step per centre
        tot = d.sum()
        j = rng.choice(n, p=d / tot) if tot > 0 else rng.integers(n)
        centers[i] = points[j]
        d = np.minimum(d, _sqdist(points, centers[i : i + 1])[:, 0])
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        new = np.argmin(_sqdist(points, centers), axis=1)
        if _ > 0 and (new == labels).all():
            break
        labels = new
        counts = np.bincount(labels, minlength=k).astype(points.dtype)
        sums = np.zeros_like(centers)
        np.add.at(sums, labels, points)
        nz = counts > 0
        centers[nz] = sums[nz] / counts[nz, None]
    return labels


def _orth(y: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the columns of ``y`` (tall), by CholeskyQR2 through a small eigh.

    LAPACK QR of a 4096 x 73 block was the slowest step on busy machines; this needs only
    two ``k x k`` eigen-decompositions and two tall matrix products.
    """
    for _ in range(2):
        g = (y.T @ y).astype(np.float64)
        lam, vec = np.linalg.eigh(g)
        keep = lam > lam.max() * 1e-10 if lam.size else lam > 0
        y = y @ (vec[:, keep] / np.sqrt(lam[keep])).astype(y.dtype)
    return y


def _randomized_svd(a: np.ndarray, k: int, *, seed: int, power: int = 3):
    rng = np.random.default_rng(seed)
    q = _orth(a @ rng.standard_normal((a.shape[1], k)).astype(a.dtype))
    for _ in range(power):
        q = _orth(a.T @ q)
        q = _orth(a @ q)
    b = (q.T @ a).astype(np.float64)                  # k x cols
    lam, u_small = np.linalg.eigh(b @ b.T)           # small: k x k
    order = np.argsort(lam)[::-1]
    lam, u_small = np.maximum(lam[order], 0.0), u_small[:, order]
    s = np.sqrt(lam)
    v = (b.T @ u_small) / np.maximum(s, 1e-12)
    return (q.astype(np.float64) @ u_small), s, v


def spectral_perms(mask: np.ndarray, tile: int, *, seed: int = 0, components: int | None = None):
    """Row and column permutations by spectral co-clustering (see module docstring)."""
    a = mask.astype(np.float32)
    rows, cols = a.shape
    nrt, nct = grid(a.shape, tile)
    dr = a.sum(1)
    dc = a.sum(0)
    ir = 1.0 / np.sqrt(np.maximum(dr, 1.0))
    ic = 1.0 / np.sqrt(np.maximum(dc, 1.0))
    an = (a * ir[:, None]) * ic[None, :]
    k = components or max(2, min(max(nrt, nct) + 1, min(rows, cols) - 1, 129))
    k = max(1, min(k, min(rows, cols)))
    u, s, v = _randomized_svd(an, min(k + 8, min(rows, cols)), seed=seed)
    u, v = u[:, 1:k], v[:, 1:k]
    zr = (u * ir[:, None]).astype(np.float64)
    zc = (v * ic[:, None]).astype(np.float64)
    # Empty rows/columns get a zero embedding: they gather in one cluster (free filler).
    zr[dr == 0] = 0
    zc[dc == 0] = 0

    def order(z, k_clusters, sd):
        if z.shape[1] == 0 or k_clusters <= 1:
            return np.argsort(z[:, 0] if z.shape[1] else np.zeros(z.shape[0]), kind="stable")
        labels = kmeans(z, k_clusters, seed=sd)
        key = np.zeros(k_clusters)
        cnt = np.bincount(labels, minlength=k_clusters)
        np.add.at(key, labels, z[:, 0])
        key = key / np.maximum(cnt, 1)
        rank = np.argsort(np.argsort(key, kind="stable"), kind="stable")
        return np.lexsort((z[:, 0], rank[labels]))

    return order(zr, nrt, seed), order(zc, nct, seed + 1)


# ---------------------------------------------------------------------------------------------
# Tile-aware refinement
# ---------------------------------------------------------------------------------------------

def _assign(profile: np.ndarray, groups: int, cap: int, occ: np.ndarray) -> np.ndarray:
    """Capacity-limited greedy assignment of items (rows of ``profile``) to ``groups``.

    ``profile[i, c]`` > 0 when item i touches column tile c; ``occ[g, c]`` nonzeros of group g
    in column tile c.  Cost of (i, g): column tiles i opens in g minus column tiles shared.
    """
    n = profile.shape[0]
    p = (profile > 0).astype(np.float32)
    covered = (occ > 0).astype(np.float32)
    # opened = sum_c p[i,c] * (1 - covered[g,c]); shared = sum_c p[i,c] * covered[g,c]
    shared = p @ covered.T
    cost = p.sum(1, keepdims=True) - 2.0 * shared
    # Tie-break towards the current group weight (nonzeros shared), scaled to stay below 1.
    cost -= 1e-3 * (profile.astype(np.float32) @ np.minimum(occ, 1e3).astype(np.float32).T) / (
        1.0 + profile.sum(1, keepdims=True))
    label = -np.ones(n, dtype=np.int64)
    free = np.full(groups, cap, dtype=np.int64)
    order_cost = cost.copy()
    for _ in range(groups + 1):  # rounds, each fully vectorised
        todo = np.flatnonzero(label < 0)
        if todo.size == 0:
            break
        c = order_cost[todo]
        c[:, free == 0] = np.inf
        best = np.argmin(c, axis=1)
        bcost = c[np.arange(todo.size), best]
        srt = np.lexsort((bcost, best))
        b_sorted = best[srt]
        start = np.searchsorted(b_sorted, b_sorted, side="left")
        rank = np.arange(srt.size) - start
        ok = rank < free[b_sorted]
        chosen = todo[srt[ok]]
        label[chosen] = b_sorted[ok]
        free -= np.bincount(b_sorted[ok], minlength=groups)
    return label


def _groups_to_perm(label: np.ndarray, groups: int, cap: int, key: np.ndarray) -> np.ndarray:
    """Permutation placing group g at positions [g*cap, ...), members ordered by ``key``."""
    return np.lexsort((key, label))


class _Coords:
    """Nonzero coordinates of a mask, for O(nnz) tile counts under any permutation."""

    def __init__(self, mask: np.ndarray, tile: int):
        self.ri, self.cj = np.nonzero(mask)
        self.tile = tile
        self.nrt, self.nct = grid(mask.shape, tile)
        self.rows, self.cols = mask.shape

    def nonempty(self, row_perm: np.ndarray, col_perm: np.ndarray) -> int:
        pr = np.empty(self.rows, np.int64)
        pr[row_perm] = np.arange(self.rows) // self.tile
        pc = np.empty(self.cols, np.int64)
        pc[col_perm] = np.arange(self.cols) // self.tile
        key = pr[self.ri] * self.nct + pc[self.cj]
        return int(np.count_nonzero(np.bincount(key, minlength=self.nrt * self.nct)))


def refine_perms(mask: np.ndarray, tile: int, row_perm: np.ndarray, col_perm: np.ndarray,
                 *, passes: int = 8, coords: _Coords | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Tile-aware refinement (see module docstring); never increases the non-empty tile count."""
    m8 = mask.astype(np.float32)
    rows, cols = mask.shape
    nrt, nct = grid(mask.shape, tile)
    coords = coords or _Coords(mask, tile)
    best = coords.nonempty(row_perm, col_perm)
    rp, cp = row_perm.copy(), col_perm.copy()
    for _ in range(passes):
        improved = False
        for axis in (0, 1):
            if axis == 0:
                pos_c = np.empty(cols, np.int64)
                pos_c[cp] = np.arange(cols) // tile
                onehot = np.zeros((cols, nct), np.float32)
                onehot[np.arange(cols), pos_c] = 1
                prof = m8 @ onehot                                   # rows x nct
                pos_r = np.empty(rows, np.int64)
                pos_r[rp] = np.arange(rows) // tile
                occ = np.zeros((nrt, nct), np.float32)
                np.add.at(occ, pos_r, prof)
                label = _assign(prof, nrt, tile, occ)
                new_rp = np.lexsort((pos_r, label))
                new_cp = cp
            else:
                pos_r = np.empty(rows, np.int64)
                pos_r[rp] = np.arange(rows) // tile
                onehot = np.zeros((rows, nrt), np.float32)
                onehot[np.arange(rows), pos_r] = 1
                prof = m8.T @ onehot                                 # cols x nrt
                pos_c = np.empty(cols, np.int64)
                pos_c[cp] = np.arange(cols) // tile
                occ = np.zeros((nct, nrt), np.float32)
                np.add.at(occ, pos_c, prof)
                label = _assign(prof, nct, tile, occ)
                new_cp = np.lexsort((pos_c, label))
                new_rp = rp
            n = coords.nonempty(new_rp, new_cp)
            if n < best:
                best, rp, cp, improved = n, new_rp, new_cp, True
        if not improved:
            break
    return rp, cp


def cluster(w, *, tile: int, method: str = "spectral+refine", seed: int = 0,
            passes: int = 8) -> Clustering:
    """Row and column permutations that gather the nonzeros of ``w`` into few tiles.

    Parameters
    ----------
    w : 2-D array
        Matrix (only the nonzero pattern is used).
    tile : int
        T in 16, 32, 64, 128.
    method : str
        ``spectral``, ``refine``, ``spectral+refine`` (default; ``auto`` is an alias) or ``identity``.
    seed : int
        Seed of the randomized SVD and k-means.
    passes : int
        Maximum refinement passes (each: rows then columns).

    Returns
    -------
    Clustering
        ``row_perm``/``col_perm`` (position -> original index), non-empty tiles before
        (identity order) and after, seconds taken.
    """
    w = as_matrix(w)
    tile = check_tile(tile)
    if method == "auto":
        method = "spectral+refine"
    if method not in METHODS:
        raise SparsefabError(f"method={method!r}: expected one of {', '.join(METHODS)} or auto")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SparsefabError(f"seed={seed!r}: expected a non-negative integer")
    if isinstance(passes, bool) or not isinstance(passes, (int, np.integer)) or passes < 0:
        raise SparsefabError(f"passes={passes!r}: expected a non-negative integer")
    t0 = time.perf_counter()
    mask = w != 0
    rows, cols = mask.shape
    rp, cp = np.arange(rows), np.arange(cols)
    coords = _Coords(mask, tile)
    before = coords.nonempty(rp, cp)
    if method in ("spectral", "spectral+refine") and min(rows, cols) >= 2:
        srp, scp = spectral_perms(mask, tile, seed=int(seed))
        # Keep spectral only where it helps (it can lose on matrices without structure).
        if coords.nonempty(srp, scp) <= before or method == "spectral":
            rp, cp = srp, scp
    if method in ("refine", "spectral+refine"):
        rp, cp = refine_perms(mask, tile, rp, cp, passes=int(passes), coords=coords)
    after = coords.nonempty(rp, cp)
    return Clustering(row_perm=rp.astype(np.int64), col_perm=cp.astype(np.int64), method=method,
                      tiles_before=before, tiles_after=after, seconds=time.perf_counter() - t0)


def planted(rows: int, cols: int, *, tile: int, block_density: float = 0.15, fill: float = 0.5,
            seed: int = 0, shuffle: bool = True):
    """A matrix with planted tile structure hidden by random permutations.

    A random ``block_density`` fraction of the ``tile`` x ``tile`` tiles (at least one per tile
    row and tile column) are filled at ``fill`` with random int8 codes (nonzero), the rest are
    empty; then rows and columns are shuffled (when ``shuffle``).

    Returns ``(W int8, ideal_nonempty_tiles)``.
    """
    tile = check_tile(tile)
    rng = np.random.default_rng(seed)
    nrt, nct = grid((rows, cols), tile)
    blocks = rng.random((nrt, nct)) < block_density
    blocks[np.arange(nrt), rng.integers(0, nct, nrt)] = True
    blocks[rng.integers(0, nrt, nct), np.arange(nct)] = True
    full = np.repeat(np.repeat(blocks, tile, 0), tile, 1)[:rows, :cols]
    vals = rng.integers(1, 128, (rows, cols)) * rng.choice(np.array([-1, 1]), (rows, cols))
    w = np.where(full & (rng.random((rows, cols)) < fill), vals, 0).astype(np.int8)
    ideal = count_nonempty(w, tile)
    if shuffle:
        w = w[rng.permutation(rows)][:, rng.permutation(cols)]
    return w, ideal


def compare(w, *, tile: int, seed: int = 0, methods=("spectral", "refine", "spectral+refine")) -> list[dict]:
    """Run several methods on the same matrix; one summary dict per method."""
    return [cluster(w, tile=tile, method=m, seed=seed).summary() for m in methods]
