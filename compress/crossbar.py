"""Crossbar tile numerics (ideal digital and an analog-style model) and the tile schedule.

Integer behaviour (bit exact, the contract for the CrossbarTile RTL)
--------------------------------------------------------------------
Weights are signed ``w_bits`` codes, inputs signed ``x_bits`` codes (two's complement).

*Ideal digital tile* (``adc_bits=None``): ``p[r] = sum_j W[r, j] * x[j]`` exactly.

*Analog model* (``dac_bits`` and/or ``adc_bits`` given): the input is applied bit-serially in
``S = ceil(x_bits / dac_bits)`` slices.  With ``u = x mod 2**x_bits``, slice ``s < S-1`` is the
unsigned digit ``d_s = (u >> s*dac_bits) & (2**dac_bits - 1)``; the top slice is the remaining
``x_bits - (S-1)*dac_bits`` bits read as a SIGNED number, so ``x = sum_s d_s * 2**(s*dac_bits)``.
Each slice gives a column sum ``c_s[r] = sum_j W[r, j] * d_s[j]`` (exact: the analog current);
the ADC converts it with round-half-up and saturation::

    q_s = clip((c_s + (1 << (adc_shift - 1))) >> adc_shift  if adc_shift > 0 else c_s,
               -2**(adc_bits-1), 2**(adc_bits-1) - 1)

and the tile output is ``p[r] = sum_s (q_s[r] << adc_shift) << (s * dac_bits)``.  ``>>`` is
arithmetic (floor).  Without ``adc_bits`` the column sums are exact, so slicing alone changes
nothing.  The ADC acts per tile: partial sums of different tiles are added digitally.

*Accumulation*: tile outputs of one output slice and the leftover sparse part are added
in ``acc_bits``-bit two's complement (wrap-around, like hardware adders); with the default
32 bits and int8 codes no overflow happens below ``2**17`` columns.

Tile schedule (the TileController's work list)
----------------------------------------------
:func:`schedule` gives every tile row (output slice) to one of ``E`` engines (longest
processing time first, ties to the lowest engine), so an engine accumulates a whole output
slice locally and writes it once.  Engine ``e`` runs its tiles in order; wave ``k`` is the
``k``-th tile of every engine (an engine with fewer tiles idles).  Weights are programmed a
wave at a time, overlapped with the compute of the previous wave.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SparsefabError, check_int
from .tiling import TileMap, permuted_padded, split, tile_weights


def wrap(v: np.ndarray, bits: int) -> np.ndarray:
    """Wrap int64 values to ``bits``-bit two's complement."""
    v = np.asarray(v, dtype=np.int64)
    if bits >= 64:
        return v
    m = np.int64(1) << np.int64(bits)
    h = np.int64(1) << np.int64(bits - 1)
    return ((v + h) & (m - 1)) - h


def check_codes(a, bits: int, what: str) -> np.ndarray:
    """Integer array whose values fit signed ``bits``-bit two's complement, as int64."""
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        raise SparsefabError(f"{what}: expected integer codes, got dtype {a.dtype}")
    a = a.astype(np.int64)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if a.size and (a.min() < lo or a.max() > hi):
        bad = np.argwhere((a < lo) | (a > hi))[0]
        raise SparsefabError(f"{what}: value {a[tuple(bad)]} at {tuple(int(i) for i in bad)} "
                             f"outside signed {bits}-bit range [{lo}, {hi}]")
    return a


@dataclass(frozen=True)
class Numerics:
    """Tile arithmetic parameters (validated).

    ``dac_bits=None`` means the whole input at once (``dac_bits = x_bits``); ``adc_bits=None``
    means exact column sums.
    """

    w_bits: int = 8
    x_bits: int = 8
    acc_bits: int = 32
    dac_bits: int | None = None
    adc_bits: int | None = None
    adc_shift: int = 0

    def __post_init__(self):
        check_int("w_bits", self.w_bits, 2, 16)
        check_int("x_bits", self.x_bits, 2, 16)
        check_int("acc_bits", self.acc_bits, 8, 64)
        if self.dac_bits is not None:
            check_int("dac_bits", self.dac_bits, 1, self.x_bits)
        if self.adc_bits is not None:
            check_int("adc_bits", self.adc_bits, 2, 40)
        check_int("adc_shift", self.adc_shift, 0, 47)

    @property
    def slices(self) -> int:
        d = self.dac_bits or self.x_bits
        return -(-self.x_bits // d)


def full_scale_shift(tile: int, *, w_bits: int = 8, x_bits: int = 8, dac_bits: int | None = None,
                     adc_bits: int) -> int:
    """Smallest ADC shift for which no column sum of a ``tile``-wide crossbar saturates."""
    d = dac_bits or x_bits
    top = x_bits - (-(-x_bits // d) - 1) * d
    digit = max((1 << d) - 1, 1 << (top - 1))  # largest |digit| of any slice
    max_abs = tile * (1 << (w_bits - 1)) * digit
    need = int(max_abs).bit_length() + 1  # signed bits for [-max_abs, max_abs]
    return max(0, need - adc_bits)


def slice_input(x: np.ndarray, x_bits: int, dac_bits: int) -> np.ndarray:
    """Bit-serial digits ``[S, ...]`` of signed ``x`` (top slice signed), ``x = sum d_s 2**(s*dac)``."""
    s_count = -(-x_bits // dac_bits)
    u = np.asarray(x, dtype=np.int64) & ((1 << x_bits) - 1)
    shifts = (np.arange(s_count, dtype=np.int64) * dac_bits).reshape((-1,) + (1,) * u.ndim)
    d = (u[None] >> shifts) & ((1 << dac_bits) - 1)
    top = x_bits - (s_count - 1) * dac_bits
    t = (u >> ((s_count - 1) * dac_bits)) & ((1 << top) - 1)
    d[-1] = t - ((t >> (top - 1)) << top)  # signed top slice
    return d


def adc(c: np.ndarray, *, adc_bits: int, adc_shift: int) -> np.ndarray:
    """ADC of exact column sums: round half up by ``adc_shift`` bits, saturate to ``adc_bits``."""
    c = np.asarray(c, dtype=np.int64)
    r = (c + (np.int64(1) << np.int64(adc_shift - 1))) >> np.int64(adc_shift) if adc_shift > 0 else c
    return np.clip(r, -(1 << (adc_bits - 1)), (1 << (adc_bits - 1)) - 1)


def tile_mvm(w_tiles, x_slices, num: Numerics = Numerics()) -> np.ndarray:
    """Output of crossbar tiles: ``p[..., r] = sum_j W[..., r, j] x[..., j]`` under ``num``.

    ``w_tiles`` ``[..., T, T]`` and ``x_slices`` ``[..., T]`` broadcast; int64 result, not wrapped.
    """
    w = check_codes(w_tiles, num.w_bits, "tile weights")
    x = check_codes(x_slices, num.x_bits, "input")
    if num.adc_bits is None:
        return np.einsum("...rj,...j->...r", w, x)
    digits = slice_input(x, num.x_bits, num.dac_bits or num.x_bits)
    out = np.zeros(np.broadcast_shapes(w.shape[:-1], x.shape[:-1] + (w.shape[-2],)), dtype=np.int64)
    for s in range(digits.shape[0]):  # at most x_bits slices
        c = np.einsum("...rj,...j->...r", w, digits[s])
        q = adc(c, adc_bits=num.adc_bits, adc_shift=num.adc_shift)
        out += (q << np.int64(num.adc_shift)) << np.int64(s * (num.dac_bits or num.x_bits))
    return out


def crossbar_matvec(w, x, tmap: TileMap, num: Numerics = Numerics(), *, leftover: bool = True) -> np.ndarray:
    """``y = W @ x`` computed the crossbar way (tiles + leftover), in the ORIGINAL row order.

    Parameters
    ----------
    w : int array [rows, cols]
        Weight codes (``num.w_bits``).
    x : int array [cols] or [n, cols]
        Input codes (``num.x_bits``).
    tmap : TileMap
        The mapping (permutations, crossbar tiles).
    leftover : bool
        Add the leftover sparse part (computed exactly, as the sparse MAC array does).

    Returns
    -------
    int64 array [rows] or [n, rows], wrapped to ``num.acc_bits``.
    """
    w = check_codes(tmap.check_matrix(w), num.w_bits, "W")
    x = check_codes(x, num.x_bits, "x")
    if x.shape[-1] != tmap.cols or x.ndim not in (1, 2):
        raise SparsefabError(f"x: shape {x.shape}, expected ({tmap.cols},) or (n, {tmap.cols})")
    single = x.ndim == 1
    xb = x[None] if single else x
    t = tmap.tile
    nrt, nct = tmap.grid
    tiles, rest = split(w, tmap)
    xp = np.zeros((xb.shape[0], nct * t), dtype=np.int64)
    xp[:, : tmap.cols] = xb[:, tmap.col_perm]
    xs = xp.reshape(xb.shape[0], nct, t)[:, tmap.tiles[:, 1]]          # [n, tiles, T]
    part = tile_mvm(tiles[None], xs, num)                               # [n, tiles, T]
    yp = np.zeros((xb.shape[0], nrt, t), dtype=np.int64)
    np.add.at(yp, (slice(None), tmap.tiles[:, 0]), part)
    y = np.zeros((xb.shape[0], tmap.rows), dtype=np.int64)
    y[:, tmap.row_perm] = yp.reshape(xb.shape[0], nrt * t)[:, : tmap.rows]
    if leftover:
        y += xb @ rest.T
    y = wrap(y, num.acc_bits)
    return y[0] if single else y


# ---------------------------------------------------------------------------------------------
# Schedule for the TileController
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Schedule:
    """Tiles per engine and wave.

    ``waves[k, e]`` is the map index of the tile engine ``e`` runs in wave ``k`` (-1: idle);
    ``first[k, e]`` / ``last[k, e]``: the tile is the first / last of its output slice on that
    engine (clear the accumulators before / write the slice out after).
    """

    engines: int
    waves: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @property
    def n_waves(self) -> int:
        return int(self.waves.shape[0])


def schedule(tmap: TileMap, engines: int) -> Schedule:
    """Assign whole tile rows to engines, longest first (see module docstring)."""
    engines = check_int("engines", engines, 1, 64)
    tr = tmap.tiles[:, 0]
    rows_present, counts = np.unique(tr, return_counts=True)
    order = np.lexsort((rows_present, -counts))  # longest first, then by tile row
    load = np.zeros(engines, dtype=np.int64)
    owner = np.empty(rows_present.size, dtype=np.int64)
    for i in order:  # one step per tile row (not per element)
        e = int(np.argmin(load))
        owner[i] = e
        load[e] += counts[i]
    n_waves = int(load.max()) if rows_present.size else 0
    waves = -np.ones((n_waves, engines), dtype=np.int64)
    first = np.zeros((n_waves, engines), dtype=bool)
    last = np.zeros((n_waves, engines), dtype=bool)
    eng_of_tile = owner[np.searchsorted(rows_present, tr)]
    for e in range(engines):
        idx = np.flatnonzero(eng_of_tile == e)  # map order: grouped by tile row already
        waves[: idx.size, e] = idx
        r = tr[idx]
        first[: idx.size, e] = np.r_[True, r[1:] != r[:-1]] if idx.size else []
        last[: idx.size, e] = np.r_[r[1:] != r[:-1], True] if idx.size else []
    return Schedule(engines=engines, waves=waves, first=first, last=last)


def tile_words(tiles: np.ndarray, lanes: int) -> np.ndarray:
    """Weight words of tiles as an engine reads them: ``[n, T*T/lanes, lanes]``.

    Word ``j * (T/lanes) + g`` of a tile holds ``W[g*lanes + l, j]`` for ``l < lanes``: the
    engine takes input ``x[j]`` and updates ``lanes`` rows per cycle.
    """
    n, t, _ = tiles.shape
    if lanes < 1 or t % lanes:
        raise SparsefabError(f"lanes={lanes}: expected a divisor of the tile size {t}")
    # tiles[k, r, j] -> [k, j, g, l]
    return np.ascontiguousarray(tiles.transpose(0, 2, 1).reshape(n, t * (t // lanes), lanes))


def controller_inputs(w, x, tmap: TileMap, *, engines: int, lanes: int) -> dict:
    """Everything the TileController consumes for one matrix and one input vector.

    Returns a dict with ``cfg`` (input table ``inv(col_perm)`` then output table
    ``inv(row_perm)``, padded to whole tiles), ``x`` (original order), ``waves``
    (per wave and engine: valid, tr, tc, first, last), ``weights`` (``[n_waves, words, E, lanes]``
    codes, zero for idle engines) and the schedule.
    """
    from .tiling import inverse_perm

    t = tmap.tile
    sched = schedule(tmap, engines)
    tiles = tile_weights(w, tmap)
    words = tile_words(tiles, lanes) if tiles.size else np.zeros((0, t * t // lanes, lanes), np.int64)
    wv = np.zeros((sched.n_waves, t * t // lanes, engines, lanes), dtype=np.int64)
    valid = sched.waves >= 0
    k, e = np.nonzero(valid)
    wv[k, :, e] = words[sched.waves[k, e]]
    idx = np.where(valid, sched.waves, 0)
    tr = np.where(valid, tmap.tiles[idx, 0] if tmap.n_tiles else 0, 0)
    tc = np.where(valid, tmap.tiles[idx, 1] if tmap.n_tiles else 0, 0)
    return {"cfg_in": inverse_perm(tmap.col_perm),
            "cfg_out": inverse_perm(tmap.row_perm), "x": np.asarray(x, dtype=np.int64),
            "valid": valid, "tr": tr, "tc": tc, "first": sched.first, "last": sched.last,
            "weights": wv, "schedule": sched}


def ideal_cycles(tmap: TileMap, *, engines: int, lanes: int) -> dict:
    """Ideal cycle counts of the TileController.

    ``compute = nonempty_tiles * cycles_per_tile / E`` with ``cycles_per_tile = T*T/lanes``;
    ``program`` = cycles to program the first wave (the others overlap compute);
    ``io`` = input load (cols) and output drain (rows), reported separately.
    """
    cpt = tmap.tile * tmap.tile // lanes
    return {"cycles_per_tile": cpt, "compute": tmap.n_tiles * cpt / engines,
            "waves": schedule(tmap, engines).n_waves, "program": cpt if tmap.n_tiles else 0,
            "io": tmap.cols + tmap.rows}


__all__ = ["Numerics", "Schedule", "adc", "controller_inputs", "crossbar_matvec", "full_scale_shift",
           "ideal_cycles", "permuted_padded", "schedule", "slice_input", "tile_mvm", "tile_words", "wrap"]
