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

__all__ = [
    "PRUNE_METHODS",
    "PruneResult",
    "parse_prune_spec",
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
        Pruned weights (float, or int8 codes for quantization-aware pruning), zeros where pruned.
    mask : numpy.ndarray of bool
        True where the weight is kept (``weights`` may still be 0 there if it was 0 already).
    sparsity : float
        Fraction of zeros in ``weights``.
    """

    weights: np.ndarray
    mask: np.ndarray
    sparsity: float


def sparsity(w) -> float:
    """Fraction of zero elements of ``w`` (0.0 for an empty array)."""
    a = np.asarray(w)
    return float(np.count_nonzero(a == 0) / a.size) if a.size else 0.0
