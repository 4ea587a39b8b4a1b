"""Pruning: unstructured magnitude, Wanda, N:M, structured rows/columns/blocks, quantization-aware.

Every pruning function takes a float weight matrix ``w`` of shape (rows, cols) (rows =
output channels, cols = input dimension) and returns a :class:`PruneResult`: the pruned
array (zeros where pruned), the boolean keep-mask and the sparsity achieved (fraction of
zeros in the result, which counts weights that were already zero).

The target sparsity ``s`` is turned into a number of pruned elements with
``floor(s * count + 0.5)`` (round half up) over the scope it applies to (whole matrix, a
row, the rows, the columns, the blocks).  Ties between equal scores are broken by index
(stable sort), so results are deterministic.  All work is vectorised NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SparsefabError
from .quant import QuantParams, quantize

__all__ = [
    "PRUNE_METHODS",
    "PruneResult",
    "parse_prune_spec",
    "prune",
    "prune_blocks",
    "prune_cols",
    "prune_magnitude",
    "prune_nm",
    "prune_quant_aware",
    "prune_rows",
    "prune_wanda",
    "sparsity",
]

PRUNE_METHODS = ("magnitude", "wanda", "nm", "rows", "cols", "blocks", "qa")

_SPEC_HELP = (
    "expected magnitude:S[:row], wanda:S, nm:N:M, rows:S, cols:S, blocks:S:RxC or qa:S[:B] "
    "(S a sparsity in [0, 1], 1 <= N < M <= 256, R, C, B >= 1)"
)


def _spec_error(spec) -> SparsefabError:
    return SparsefabError(f"--prune {spec!r}: {_SPEC_HELP}")


def _parse_sparsity(txt: str, spec) -> float:
    try:
        s = float(txt)
    except ValueError:
        raise _spec_error(spec) from None
    if not 0.0 <= s <= 1.0:
        raise SparsefabError(f"--prune {spec!r}: sparsity {txt} outside [0, 1]")
    return s


def _parse_pos_int(txt: str, spec) -> int:
    if not txt.isdigit() or int(txt) < 1:
        raise _spec_error(spec)
    return int(txt)


def parse_prune_spec(spec: str) -> dict:
    """Parse the CLI ``--prune`` value.

    Accepted forms:

    * ``magnitude:S`` (global unstructured) or ``magnitude:S:row`` (per row)
    * ``wanda:S`` (needs calibration activations)
    * ``nm:N:M`` (N nonzeros kept in every M consecutive inputs)
    * ``rows:S``, ``cols:S`` (structured, whole rows / columns by L2 norm)
    * ``blocks:S:RxC`` (R x C blocks by L2 norm)
    * ``qa:S`` or ``qa:S:B`` (quantization-aware magnitude, optionally balanced per block of B)

    Returns
    -------
    dict
        ``method`` plus its parameters (``sparsity``, ``scope``, ``n``, ``m``, ``block``,
        ``balance_block``).
    """
    if not isinstance(spec, str) or not spec:
        raise _spec_error(spec)
    parts = spec.strip().split(":")
    method, args = parts[0], parts[1:]
    if method == "magnitude" and len(args) in (1, 2):
        if len(args) == 2 and args[1] not in ("row", "global"):
            raise _spec_error(spec)
        scope = args[1] if len(args) == 2 else "global"
        return {"method": "magnitude", "sparsity": _parse_sparsity(args[0], spec), "scope": scope}
    if method in ("wanda", "rows", "cols") and len(args) == 1:
        return {"method": method, "sparsity": _parse_sparsity(args[0], spec)}
    if method == "nm" and len(args) == 2:
        n, m = _parse_pos_int(args[0], spec), _parse_pos_int(args[1], spec)
        if not n < m <= 256:
            raise SparsefabError(f"--prune {spec!r}: N:M needs 1 <= N < M <= 256")
        return {"method": "nm", "n": n, "m": m}
    if method == "blocks" and len(args) == 2:
        dims = args[1].lower().split("x")
        if len(dims) != 2:
            raise _spec_error(spec)
        block = (_parse_pos_int(dims[0], spec), _parse_pos_int(dims[1], spec))
        return {"method": "blocks", "sparsity": _parse_sparsity(args[0], spec), "block": block}
    if method == "qa" and len(args) in (1, 2):
        bb = _parse_pos_int(args[1], spec) if len(args) == 2 else None
        return {"method": "qa", "sparsity": _parse_sparsity(args[0], spec), "balance_block": bb}
    raise _spec_error(spec)


@dataclass(frozen=True, eq=False)
class PruneResult:
    """Outcome of a pruning call.

    Attributes
    ----------
    weights : numpy.ndarray
        Pruned weights, zeros where pruned: same dtype as the input, or int8 codes for
        quantization-aware pruning.
    mask : numpy.ndarray of bool
        True where the weight is kept (``weights`` may still be 0 there if it was 0 already).
    sparsity : float
        Fraction of zeros in ``weights`` (the sparsity achieved).
    target : float or None
        Requested sparsity (None for N:M, whose target is ``1 - N/M`` on full groups).
    quant : QuantParams or None
        Quantization parameters of ``weights`` for quantization-aware pruning.
    """

    weights: np.ndarray
    mask: np.ndarray
    sparsity: float
    target: float | None = None
    quant: QuantParams | None = None


def sparsity(w) -> float:
    """Fraction of zero elements of ``w`` (0.0 for an empty array)."""
    a = np.asarray(w)
    return float(np.count_nonzero(a == 0) / a.size) if a.size else 0.0


_sparsity = sparsity  # the public name is shadowed by the ``sparsity`` parameters below


# --------------------------------------------------------------------------- helpers


def _check_w(w, name: str = "w") -> np.ndarray:
    a = np.asarray(w)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise SparsefabError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise SparsefabError(f"{name}: expected a 2-D array (rows, cols), got shape {a.shape}")
    if a.dtype.kind == "f" and a.size and not np.isfinite(a).all():
        pos = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise SparsefabError(f"{name}: non-finite value {a[pos]} at index {pos}")
    return a


def _check_sparsity(s) -> float:
    if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, float, np.integer, np.floating)):
        raise SparsefabError(f"sparsity={s!r}: expected a number in [0, 1]")
    s = float(s)
    if not 0.0 <= s <= 1.0:
        raise SparsefabError(f"sparsity={s!r}: expected a number in [0, 1]")
    return s


def _count(s: float, n):
    """Number of elements to prune out of ``n``: floor(s * n + 0.5)."""
    return np.floor(s * np.asarray(n, dtype=np.float64) + 0.5).astype(np.int64)


def _smallest_mask(scores: np.ndarray, k) -> np.ndarray:
    """Boolean mask of the ``k[r]`` smallest scores of each row (ties broken by lower index).

    O(n) per row: a partition finds the k-th value, then equal scores are taken in index order.
    """
    rows, n = scores.shape
    k = np.broadcast_to(np.asarray(k, dtype=np.int64), (rows,))
    out = np.zeros(scores.shape, dtype=bool)
    if n == 0 or rows == 0:
        return out
    kk = np.clip(k, 0, n)
    full = kk == n
    part = (kk > 0) & ~full
    out[full] = True
    if part.any():
        every = bool(part.all())
        sub, kp = (scores, kk) if every else (scores[part], kk[part])  # avoid copying the common case
        srt = np.partition(sub, np.unique(kp - 1), axis=1)
        thr = srt[np.arange(sub.shape[0]), kp - 1][:, None]
        less = sub < thr
        eq = sub == thr
        need = kp - less.sum(axis=1)
        sel = less | eq
        tie = eq.sum(axis=1) > need  # more equal scores than slots: take them in index order
        if tie.any():
            sel[tie] = less[tie] | (eq[tie] & (np.cumsum(eq[tie], axis=1) <= need[tie, None]))
        if every:
            return sel
        out[part] = sel
    return out


def _magnitude(a: np.ndarray) -> np.ndarray:
    """|a| without overflow (int8 -128) and without widening float32."""
    return np.abs(a) if a.dtype.kind == "f" else np.abs(a.astype(np.int64))


def _result(w: np.ndarray, keep: np.ndarray, target) -> PruneResult:
    pruned = np.where(keep, w, 0).astype(w.dtype, copy=False)
    return PruneResult(pruned, keep, _sparsity(pruned), target)


# --------------------------------------------------------------------------- methods


def prune_magnitude(w, sparsity: float, *, scope: str = "global") -> PruneResult:
    """Unstructured magnitude pruning: zero the ``sparsity`` fraction of smallest ``|w|``.

    Parameters
    ----------
    w : array (rows, cols)
        Finite weights (float, or integer codes).
    sparsity : float
        Fraction to prune, in [0, 1]; ``floor(sparsity * count + 0.5)`` elements.
    scope : {'global', 'row'}
        Over the whole matrix, or the same fraction in every row.

    Returns
    -------
    PruneResult
    """
    a = _check_w(w)
    s = _check_sparsity(sparsity)
    if scope not in ("global", "row"):
        raise SparsefabError(f"scope={scope!r}: expected 'global' or 'row'")
    mag = _magnitude(a)
    if scope == "global":
        drop = _smallest_mask(mag.reshape(1, -1), _count(s, a.size)).reshape(a.shape)
    else:
        drop = _smallest_mask(mag, _count(s, a.shape[1]))
    return _result(a, ~drop, s)


def prune_wanda(w, sparsity: float, X) -> PruneResult:
    """Wanda pruning (Sun et al. 2023): score ``|W[r, j]| * ||X[:, j]||_2``, pruned per output row.

    Parameters
    ----------
    w : array (rows, cols)
    sparsity : float
        Fraction pruned in every row.
    X : array (..., cols)
        Calibration activations feeding this layer (any leading shape, flattened).

    Returns
    -------
    PruneResult
    """
    a = _check_w(w)
    s = _check_sparsity(sparsity)
    if X is None:
        raise SparsefabError("wanda: calibration activations X are required (--calib X.npy)")
    x = np.asarray(X)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_ or x.ndim < 1:
        raise SparsefabError(f"calib: expected a real array (n, cols), got dtype {x.dtype} shape {x.shape}")
    if x.shape[-1] != a.shape[1]:
        raise SparsefabError(f"calib: last axis {x.shape[-1]} does not match weight cols {a.shape[1]}")
    x = x.reshape(-1, a.shape[1]).astype(np.float64)
    if x.shape[0] == 0:
        raise SparsefabError("calib: no calibration samples")
    if not np.isfinite(x).all():
        raise SparsefabError("calib: non-finite value in calibration activations")
    norms = np.sqrt(np.einsum("ij,ij->j", x, x))
    # float32 weights are scored in float32 (half the memory traffic of the per-row partition)
    ftype = np.float32 if a.dtype == np.float32 else np.float64
    scores = np.abs(a.astype(ftype)) * norms.astype(ftype)[None, :]
    return _result(a, ~_smallest_mask(scores, _count(s, a.shape[1])), s)


def _groups(scores: np.ndarray, size: int, fill: float) -> np.ndarray:
    """(rows, cols) -> (rows, ceil(cols/size), size), padding the tail with ``fill``."""
    rows, cols = scores.shape
    ng = -(-cols // size)
    pad = ng * size - cols
    if pad:
        scores = np.concatenate([scores, np.full((rows, pad), fill)], axis=1)
    return scores.reshape(rows, ng, size)


def _keep_top(scores: np.ndarray, size: int, keep_per_group) -> np.ndarray:
    """Keep the ``keep`` largest scores of each group of ``size`` along axis 1 (ties: lower index)."""
    rows, cols = scores.shape
    g = _groups(scores, size, -np.inf)
    if size <= 8:
        # rank[i] = #{j: g_j > g_i} + #{j < i: g_j == g_i}; one vectorised pass per position j
        idx = np.arange(size)
        rank = np.zeros(g.shape, dtype=np.int16)
        for j in range(size):
            gj = g[:, :, j:j + 1]
            rank += (gj > g) | ((gj == g) & (j < idx))
    else:
        order = np.argsort(-g, axis=2, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(size)[None, None, :], axis=2)
    kp = np.broadcast_to(np.asarray(keep_per_group, dtype=np.int64), (g.shape[1],))
    keep = rank < kp[None, :, None]
    return keep.reshape(rows, -1)[:, :cols]


def prune_nm(w, n: int, m: int) -> PruneResult:
    """N:M structured sparsity along the input dimension: keep the N largest ``|w|`` of every
    M consecutive elements of each row (groups start at column 0).

    When ``cols`` is not a multiple of M, the last group of each row has ``L = cols % M``
    elements and keeps ``min(N, L)`` of them, so no group ever holds more than N nonzeros.

    Parameters
    ----------
    w : array (rows, cols)
    n, m : int
        ``1 <= n < m``.

    Returns
    -------
    PruneResult
    """
    a = _check_w(w)
    for name, v in (("n", n), ("m", m)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise SparsefabError(f"{name}={v!r}: expected an integer")
    n, m = int(n), int(m)
    if not 1 <= n < m:
        raise SparsefabError(f"N:M = {n}:{m}: expected 1 <= N < M")
    if a.size == 0:
        return _result(a, np.ones(a.shape, bool), None)
    keep = _keep_top(_magnitude(a), m, n)
    return _result(a, keep, None)


def _norm_prune(norms: np.ndarray, s: float) -> np.ndarray:
    return _smallest_mask(norms.reshape(1, -1), _count(s, norms.size)).reshape(-1)


def prune_rows(w, sparsity: float) -> PruneResult:
    """Structured pruning of whole rows (output channels) with the smallest L2 norms."""
    a = _check_w(w)
    s = _check_sparsity(sparsity)
    af = a.astype(np.float64)
    drop = _norm_prune(np.sqrt(np.einsum("ij,ij->i", af, af)), s)
    return _result(a, np.broadcast_to(~drop[:, None], a.shape).copy(), s)


def prune_cols(w, sparsity: float) -> PruneResult:
    """Structured pruning of whole columns (input features) with the smallest L2 norms."""
    a = _check_w(w)
    s = _check_sparsity(sparsity)
    af = a.astype(np.float64)
    drop = _norm_prune(np.sqrt(np.einsum("ij,ij->j", af, af)), s)
    return _result(a, np.broadcast_to(~drop[None, :], a.shape).copy(), s)


def prune_blocks(w, sparsity: float, block: tuple[int, int]) -> PruneResult:
    """Structured pruning of R x C blocks with the smallest L2 norms.

    Blocks tile the matrix from (0, 0); edge blocks may be smaller.  The norm of an edge block
    is scaled by ``sqrt(R * C / elements)`` (an RMS comparison) so that it competes fairly.
    ``floor(sparsity * n_blocks + 0.5)`` blocks are pruned.

    Parameters
    ----------
    w : array (rows, cols)
    sparsity : float
        Fraction of blocks to prune.
    block : (int, int)
        Block shape (R, C), each >= 1.

    Returns
    -------
    PruneResult
    """
    a = _check_w(w)
    s = _check_sparsity(sparsity)
    try:
        br, bc = (int(v) for v in block)
        ok = all(not isinstance(v, (bool, np.bool_)) and int(v) == v for v in block)
    except (TypeError, ValueError):
        ok = False
    if not ok or br < 1 or bc < 1:
        raise SparsefabError(f"block={block!r}: expected two integers (R, C) >= 1")
    rows, cols = a.shape
    nbr, nbc = -(-rows // br), -(-cols // bc)
    sq = np.zeros((nbr * br, nbc * bc))
    sq[:rows, :cols] = a.astype(np.float64) ** 2
    cnt = np.zeros((nbr * br, nbc * bc))
    cnt[:rows, :cols] = 1.0
    ssum = sq.reshape(nbr, br, nbc, bc).sum(axis=(1, 3))
    csum = cnt.reshape(nbr, br, nbc, bc).sum(axis=(1, 3))
    norms = np.sqrt(ssum * (br * bc) / np.maximum(csum, 1.0))
    drop = _norm_prune(norms, s).reshape(nbr, nbc)
    keep = np.repeat(np.repeat(~drop, br, axis=0), bc, axis=1)[:rows, :cols]
    return _result(a, keep, s)


def prune_quant_aware(w, sparsity: float, *, bits: int = 8, granularity: str = "channel",
                      group_size: int | None = None, calib: str = "minmax",
                      balance_block: int | None = None) -> PruneResult:
    """Quantization-aware magnitude pruning: prune in the code domain.

    The weights are quantized symmetrically first; weights whose code is 0 count as pruned.
    Further weights (smallest ``|w|`` among nonzero codes) are pruned until
    ``floor(sparsity * size + 0.5)`` codes are zero; if quantization alone already zeroes more,
    the achieved sparsity is higher than the target.  Scales are not recomputed (pruning keeps
    each channel's largest weight unless the target prunes it entirely).

    With ``balance_block=B`` every block of B consecutive elements of a row (the last one may be
    shorter, length L) keeps at most ``L - floor(sparsity * L + 0.5)`` nonzero codes, chosen by
    ``|w|``, so every block of a bitmap row holds the same number of values and memory access
    is regular; blocks with fewer nonzero codes keep them all.

    Parameters
    ----------
    w : array (rows, cols)
        Float weights, or integer codes (taken as already quantized: kind 'none', must fit ``bits``).
    sparsity : float
    bits : int
    granularity, group_size, calib
        As for :func:`sparsefab.compress.quant.quantize`.
    balance_block : int, optional

    Returns
    -------
    PruneResult
        ``weights`` are int8 codes, ``quant`` their QuantParams.
    """
    a = _check_w(w)
    s = _check_sparsity(sparsity)
    if balance_block is not None and (isinstance(balance_block, (bool, np.bool_))
                                      or not isinstance(balance_block, (int, np.integer)) or balance_block < 1):
        raise SparsefabError(f"balance_block={balance_block!r}: expected an integer >= 1")
    if a.dtype.kind in "iu":
        if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 8:
            raise SparsefabError(f"bits={bits!r}: expected an integer in [2, 8]")
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        bad = (a < lo) | (a > hi)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise SparsefabError(f"w: code {int(a[pos])} at index {pos} does not fit {bits} bits [{lo}, {hi}]")
        codes, params = a.astype(np.int8), QuantParams.none(bits)
    else:
        codes, params = quantize(a, bits=bits, granularity=granularity, group_size=group_size,
                                 symmetric=True, calib=calib)
    mag = _magnitude(a).astype(np.float64)
    # Zero codes score -1: they are the first to go and never count as kept nonzeros.
    scores = np.where(codes == 0, -1.0, mag)
    if balance_block is None:
        drop = _smallest_mask(scores.reshape(1, -1), _count(s, a.size)).reshape(a.shape)
        keep = ~drop
    else:
        B = int(balance_block)
        cols = a.shape[1]
        lens = np.minimum(B, cols - np.arange(0, max(cols, 1), B))
        keep_n = lens - _count(s, lens)
        keep = _keep_top(scores, B, keep_n) if a.size else np.ones(a.shape, bool)
    keep &= codes != 0
    out = np.where(keep, codes, 0).astype(np.int8)
    return PruneResult(out, keep, _sparsity(out), s, params)


def prune(w, spec, calib=None, *, bits: int = 8, quant: dict | None = None) -> PruneResult:
    """Prune ``w`` as described by a CLI spec (see :func:`parse_prune_spec`).

    Parameters
    ----------
    w : array (rows, cols)
    spec : str or dict
        ``'magnitude:0.75'``, ``'wanda:0.5'``, ``'nm:2:4'``, ``'rows:0.25'``, ``'cols:0.25'``,
        ``'blocks:0.5:4x4'``, ``'qa:0.5[:B]'`` or the dict :func:`parse_prune_spec` returns.
    calib : array (n, cols), optional
        Calibration activations, required by Wanda.
    bits : int
        Code width for quantization-aware pruning.
    quant : dict, optional
        Quantization keyword arguments for ``qa`` (``granularity``, ``group_size``), e.g. from
        :func:`sparsefab.compress.quant.parse_quant_spec`; default per channel.

    Returns
    -------
    PruneResult
    """
    p = parse_prune_spec(spec) if isinstance(spec, str) or spec is None else dict(spec)
    method = p.get("method")
    if method == "magnitude":
        return prune_magnitude(w, p["sparsity"], scope=p.get("scope", "global"))
    if method == "wanda":
        return prune_wanda(w, p["sparsity"], calib)
    if method == "nm":
        return prune_nm(w, p["n"], p["m"])
    if method == "rows":
        return prune_rows(w, p["sparsity"])
    if method == "cols":
        return prune_cols(w, p["sparsity"])
    if method == "blocks":
        return prune_blocks(w, p["sparsity"], p["block"])
    if method == "qa":
        q = dict(quant or {"granularity": "channel"})
        if q.pop("symmetric", True) is not True:
            raise SparsefabError("qa pruning: weights are quantized symmetrically (code 0 = pruned)")
        return prune_quant_aware(w, p["sparsity"], bits=bits, balance_block=p.get("balance_block"), **q)
    raise SparsefabError(f"prune spec: unknown method {method!r}; {_SPEC_HELP}")
