"""Tiling of a matrix onto T x T crossbars, the tile map, the hybrid split and the MAP file.

A weight matrix ``W[rows, cols]`` (``y = W @ x``) is optionally reordered by a row
permutation ``row_perm`` and a column permutation ``col_perm`` (``Wp = W[row_perm][:, col_perm]``:
position ``i`` of the permuted order holds original row ``row_perm[i]``), zero-padded to
multiples of ``T`` and cut into ``T x T`` tiles.  Tile ``(tr, tc)`` covers permuted rows
``[tr*T, (tr+1)*T)`` and permuted columns ``[tc*T, (tc+1)*T)``.

The **tile map** keeps the tiles that go to crossbars: every tile whose nonzero count is at
least ``threshold_nnz`` (``max(1, ceil(fill * T * T))``); with ``fill = 0`` that is every
non-empty tile.  The nonzeros of the other tiles are the **leftover**: they go to the bitmap
sparse format (:mod:`sparsefab.compress.bitmap`).  Crossbar tiles plus leftover reproduce
``W`` exactly (:func:`merge`).

Tiles in a map are listed in row-major order of ``(tr, tc)``; ``weight_addr`` of tile ``k``
is ``k * T * T``: the offset of its codes in the tile weight image (:func:`tile_weights`,
tile ``k`` row-major).  The byte layout of the MAP file is in docs/FORMATS_CROSSBAR.md.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from .errors import FormatError, SparsefabError

TILES = (16, 32, 64, 128)
MAP_MAGIC = b"SFXB"
MAP_VERSION = 1
MAP_HEADER = struct.Struct("<4sHHIIIIIHHIQQIII")  # see docs/FORMATS_CROSSBAR.md
MAP_HEADER_SIZE = 64
assert MAP_HEADER.size == MAP_HEADER_SIZE
FLAG_CLUSTERED = 1
#: Largest matrix side a MAP file may describe (refused before allocation above this).
MAX_SIDE = 1 << 20
_TILE_ENTRY = np.dtype([("tr", "<u4"), ("tc", "<u4"), ("nnz", "<u4"), ("weight_addr", "<u4")])


def _pad8(n: int) -> int:
    return (int(n) + 7) // 8 * 8


def check_tile(tile) -> int:
    """Validate a tile size: one of 16, 32, 64, 128."""
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or int(tile) not in TILES:
        raise SparsefabError(f"tile={tile!r}: expected one of {', '.join(map(str, TILES))}")
    return int(tile)


def as_matrix(w, what: str = "W") -> np.ndarray:
    """Check ``w`` is a finite 2-D numeric array with at least one element."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise SparsefabError(f"{what}: expected a 2-D matrix, got shape {w.shape}")
    if w.size == 0:
        raise SparsefabError(f"{what}: empty matrix of shape {w.shape}")
    if w.dtype.kind not in "biuf":
        raise SparsefabError(f"{what}: expected a numeric array, got dtype {w.dtype}")
    if w.dtype.kind == "f" and not np.isfinite(w).all():
        pos = tuple(int(i) for i in np.argwhere(~np.isfinite(w))[0])
        raise SparsefabError(f"{what}: non-finite value at index {pos}")
    if max(w.shape) > MAX_SIDE:
        raise SparsefabError(f"{what}: shape {w.shape} exceeds the {MAX_SIDE} limit per side")
    return w


def check_perm(perm, n: int, what: str) -> np.ndarray:
    """Check ``perm`` is a permutation of ``range(n)``; return it as int64."""
    p = np.asarray(perm)
    if p.shape != (n,) or p.dtype.kind not in "iu":
        raise SparsefabError(f"{what}: expected an integer permutation of length {n}, got "
                             f"shape {p.shape} dtype {p.dtype}")
    p = p.astype(np.int64)
    if n and (p.min() < 0 or p.max() >= n or np.bincount(p, minlength=n).max() != 1):
        raise SparsefabError(f"{what}: not a permutation of 0..{n - 1}")
    return p


def inverse_perm(perm: np.ndarray) -> np.ndarray:
    """``inv`` with ``inv[perm[i]] = i``: the permuted position of each original index."""
    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size, dtype=perm.dtype)
    return inv


def grid(shape: tuple[int, int], tile: int) -> tuple[int, int]:
    """Number of tile rows and tile columns: ``(ceil(rows / T), ceil(cols / T))``."""
    tile = check_tile(tile)
    return -(-int(shape[0]) // tile), -(-int(shape[1]) // tile)


def occupancy(w, tile: int, row_perm=None, col_perm=None) -> np.ndarray:
    """Nonzeros per tile, int64 ``[ceil(rows/T), ceil(cols/T)]``, after the optional permutations.

    Vectorised and O(rows*cols + nnz): the nonzero coordinates are mapped to their permuted
    positions (never gathering the matrix itself) and counted per tile with ``bincount``.
    """
    w = as_matrix(w)
    tile = check_tile(tile)
    ri, cj = np.nonzero(w)
    if row_perm is not None:
        ri = inverse_perm(check_perm(row_perm, w.shape[0], "row_perm"))[ri]
    if col_perm is not None:
        cj = inverse_perm(check_perm(col_perm, w.shape[1], "col_perm"))[cj]
    nrt, nct = grid(w.shape, tile)
    key = (ri // tile) * nct + cj // tile
    return np.bincount(key, minlength=nrt * nct).astype(np.int64).reshape(nrt, nct)


def count_nonempty(w, tile: int, row_perm=None, col_perm=None) -> int:
    """Number of tiles holding at least one nonzero."""
    return int((occupancy(w, tile, row_perm, col_perm) > 0).sum())


def threshold_nnz(fill: float, tile: int) -> int:
    """Smallest nonzero count of a crossbar tile for a fill threshold in [0, 1]."""
    if isinstance(fill, bool) or not isinstance(fill, (int, float, np.floating)) or not 0 <= fill <= 1:
        raise SparsefabError(f"fill={fill!r}: expected a fraction in [0, 1]")
    return max(1, math.ceil(float(fill) * tile * tile - 1e-9))


@dataclass(frozen=True, eq=False)
class TileMap:
    """Which tiles of a (permuted) matrix go to crossbars.

    Attributes
    ----------
    tile : int
        T (16, 32, 64 or 128).
    rows, cols : int
        Shape of the original matrix.
    row_perm, col_perm : ndarray of int64
        Position ``i`` of the permuted order holds original row ``row_perm[i]`` (column
        ``col_perm[i]``).
    tiles : ndarray of int64, shape (n, 2)
        ``(tr, tc)`` of each crossbar tile, row-major order.
    nnz : ndarray of int64, shape (n,)
        Nonzeros of each crossbar tile.
    threshold : int
        Minimum nonzeros of a crossbar tile (1 = every non-empty tile).
    nnz_total : int
        Nonzeros of W.
    clustered : bool
        Whether the permutations come from clustering.
    """

    tile: int
    rows: int
    cols: int
    row_perm: np.ndarray
    col_perm: np.ndarray
    tiles: np.ndarray
    nnz: np.ndarray
    threshold: int
    nnz_total: int
    clustered: bool = False
    nonempty: int = field(default=0)

    @property
    def grid(self) -> tuple[int, int]:
        return grid((self.rows, self.cols), self.tile)

    @property
    def tiles_total(self) -> int:
        nrt, nct = self.grid
        return nrt * nct

    @property
    def n_tiles(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def nnz_in_tiles(self) -> int:
        return int(self.nnz.sum())

    @property
    def leftover_nnz(self) -> int:
        return int(self.nnz_total - self.nnz_in_tiles)

    @property
    def weight_addr(self) -> np.ndarray:
        return np.arange(self.n_tiles, dtype=np.int64) * self.tile * self.tile

    def summary(self) -> dict:
        """Figures for reports and ``--json``."""
        fill = float(self.nnz.sum()) / max(1, self.n_tiles * self.tile ** 2)
        return {
            "tile": self.tile, "rows": self.rows, "cols": self.cols,
            "tiles_total": self.tiles_total, "tiles_nonempty": int(self.nonempty),
            "crossbar_tiles": self.n_tiles, "threshold_nnz": self.threshold,
            "nnz_total": int(self.nnz_total), "nnz_in_tiles": self.nnz_in_tiles,
            "leftover_nnz": self.leftover_nnz, "fill_of_crossbar_tiles": round(fill, 6),
            "clustered": bool(self.clustered),
        }

    # -- MAP file ---------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The MAP file (docs/FORMATS_CROSSBAR.md)."""
        nrt, nct = self.grid
        body = bytearray()
        for arr, dt in ((self.row_perm, "<u4"), (self.col_perm, "<u4")):
            b = np.ascontiguousarray(arr, dtype=dt).tobytes()
            body += b + bytes(_pad8(len(b)) - len(b))
        ent = np.zeros(self.n_tiles, dtype=_TILE_ENTRY)
        ent["tr"], ent["tc"] = self.tiles[:, 0], self.tiles[:, 1]
        ent["nnz"], ent["weight_addr"] = self.nnz, self.weight_addr
        body += ent.tobytes()
        flags = FLAG_CLUSTERED if self.clustered else 0
        head = MAP_HEADER.pack(MAP_MAGIC, MAP_VERSION, self.tile, self.rows, self.cols, nrt, nct,
                               self.n_tiles, flags, 0, self.threshold, self.nnz_total,
                               self.nonempty, 0, 0, 0)
        crc = zlib.crc32(bytes(body), zlib.crc32(head[:60]))
        return head[:60] + struct.pack("<I", crc) + bytes(body)

    @classmethod
    def from_bytes(cls, data) -> TileMap:
        """Parse and validate a MAP file; every failure is one :class:`FormatError` line."""
        data = bytes(data)
        if len(data) < MAP_HEADER_SIZE:
            raise FormatError(f"MAP: {len(data)} bytes, shorter than the {MAP_HEADER_SIZE}-byte header")
        (magic, version, tile, rows, cols, nrt, nct, n, flags, res0, thr, nnz_total, nonempty,
         res1, res2, crc) = MAP_HEADER.unpack_from(data)
        if magic != MAP_MAGIC:
            raise FormatError(f"MAP: bad magic {magic!r}, expected {MAP_MAGIC!r}")
        if version != MAP_VERSION:
            raise FormatError(f"MAP: version {version}, this reader knows {MAP_VERSION}")
        if tile not in TILES:
            raise FormatError(f"MAP: tile {tile} not one of {TILES}")
        if not (1 <= rows <= MAX_SIDE and 1 <= cols <= MAX_SIDE):
            raise FormatError(f"MAP: shape {rows}x{cols} outside 1..{MAX_SIDE}")
        if (nrt, nct) != grid((rows, cols), tile):
            raise FormatError(f"MAP: grid {nrt}x{nct} does not match shape {rows}x{cols} and tile {tile}")
        if n > nrt * nct:
            raise FormatError(f"MAP: {n} tiles listed, the grid has {nrt * nct}")
        if flags & ~FLAG_CLUSTERED or res0 or res1 or res2:
            raise FormatError("MAP: unknown flags or nonzero reserved fields")
        expected = MAP_HEADER_SIZE + _pad8(4 * rows) + _pad8(4 * cols) + 16 * n
        if len(data) != expected:
            raise FormatError(f"MAP: {len(data)} bytes, header implies {expected}")
        if zlib.crc32(data[MAP_HEADER_SIZE:], zlib.crc32(data[:60])) != crc:
            raise FormatError("MAP: CRC-32 mismatch (file corrupted)")
        off = MAP_HEADER_SIZE
        row_perm = np.frombuffer(data, "<u4", rows, off).astype(np.int64)
        off += _pad8(4 * rows)
        col_perm = np.frombuffer(data, "<u4", cols, off).astype(np.int64)
        off += _pad8(4 * cols)
        ent = np.frombuffer(data, _TILE_ENTRY, n, off)
        try:
            check_perm(row_perm, rows, "MAP row permutation")
            check_perm(col_perm, cols, "MAP column permutation")
        except SparsefabError as exc:
            raise FormatError(str(exc)) from None
        tiles = np.stack([ent["tr"], ent["tc"]], axis=1).astype(np.int64)
        nnz = ent["nnz"].astype(np.int64)
        if n and (tiles[:, 0].max() >= nrt or tiles[:, 1].max() >= nct):
            raise FormatError("MAP: tile coordinate outside the grid")
        key = tiles[:, 0] * nct + tiles[:, 1]
        if n > 1 and not (np.diff(key) > 0).all():
            raise FormatError("MAP: tiles not in strictly increasing row-major order")
        if not (ent["weight_addr"].astype(np.int64) == np.arange(n) * tile * tile).all():
            raise FormatError("MAP: weight addresses are not k * T * T")
        if n and (nnz.min() < max(thr, 1) or nnz.max() > tile * tile):
            raise FormatError(f"MAP: tile nonzero count outside [{max(thr, 1)}, {tile * tile}]")
        if nnz.sum() > nnz_total or nonempty < n or nonempty > nrt * nct:
            raise FormatError("MAP: nonzero totals inconsistent")
        return cls(tile=tile, rows=rows, cols=cols, row_perm=row_perm, col_perm=col_perm,
                   tiles=tiles, nnz=nnz, threshold=thr, nnz_total=nnz_total,
                   clustered=bool(flags & FLAG_CLUSTERED), nonempty=nonempty)

    def check_matrix(self, w) -> np.ndarray:
        """Check that ``w`` is the matrix this map was built for (shape and tile counts)."""
        w = as_matrix(w)
        if w.shape != (self.rows, self.cols):
            raise SparsefabError(f"W: shape {w.shape} does not match the map's {self.rows}x{self.cols}")
        occ = occupancy(w, self.tile, self.row_perm, self.col_perm)
        if self.n_tiles and not (occ[self.tiles[:, 0], self.tiles[:, 1]] == self.nnz).all():
            raise SparsefabError("W: tile nonzero counts differ from the map (another matrix?)")
        return w


def build_map(w, *, tile: int, row_perm=None, col_perm=None, fill: float = 0.0,
              clustered: bool = False) -> TileMap:
    """The tile map of ``w`` under the given permutations (identity when omitted).

    Parameters
    ----------
    w : 2-D array
        The weight matrix (codes or floats; only nonzero positions matter).
    tile : int
        T in 16, 32, 64, 128.
    row_perm, col_perm : 1-D int arrays, optional
        Permutations (position -> original index).
    fill : float
        Fill threshold in [0, 1]: tiles with ``nnz >= max(1, ceil(fill*T*T))`` go to crossbars.
    clustered : bool
        Recorded in the map (the permutations come from :mod:`sparsefab.compress.cluster`).
    """
    w = as_matrix(w)
    tile = check_tile(tile)
    rp = np.arange(w.shape[0]) if row_perm is None else check_perm(row_perm, w.shape[0], "row_perm")
    cp = np.arange(w.shape[1]) if col_perm is None else check_perm(col_perm, w.shape[1], "col_perm")
    occ = occupancy(w, tile, rp, cp)
    thr = threshold_nnz(fill, tile)
    tiles = np.argwhere(occ >= thr).astype(np.int64)  # row-major order
    return TileMap(tile=tile, rows=w.shape[0], cols=w.shape[1], row_perm=rp, col_perm=cp,
                   tiles=tiles.reshape(-1, 2), nnz=occ[tiles[:, 0], tiles[:, 1]].astype(np.int64),
                   threshold=thr, nnz_total=int(np.count_nonzero(w)), clustered=bool(clustered),
                   nonempty=int((occ > 0).sum()))


def permuted_padded(w, tmap: TileMap) -> np.ndarray:
    """``W[row_perm][:, col_perm]`` zero-padded to whole tiles."""
    nrt, nct = tmap.grid
    t = tmap.tile
    out = np.zeros((nrt * t, nct * t), dtype=w.dtype)
    out[: tmap.rows, : tmap.cols] = w[tmap.row_perm][:, tmap.col_perm]
    return out


def tile_weights(w, tmap: TileMap) -> np.ndarray:
    """Codes of the crossbar tiles, ``[n, T, T]`` (tile ``k`` = map entry ``k``, row-major)."""
    w = tmap.check_matrix(w)
    t = tmap.tile
    nrt, nct = tmap.grid
    blocks = permuted_padded(w, tmap).reshape(nrt, t, nct, t).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(blocks[tmap.tiles[:, 0], tmap.tiles[:, 1]])


def split(w, tmap: TileMap) -> tuple[np.ndarray, np.ndarray]:
    """Hybrid split: ``(tile_weights [n, T, T], leftover [rows, cols])``.

    ``leftover`` is ``W`` in its ORIGINAL order with the crossbar tiles' entries zeroed; it
    holds exactly the nonzeros of the tiles below the threshold.  :func:`merge` inverts it.
    """
    w = tmap.check_matrix(w)
    t = tmap.tile
    nrt, nct = tmap.grid
    inmap = np.zeros((nrt, nct), dtype=bool)
    inmap[tmap.tiles[:, 0], tmap.tiles[:, 1]] = True
    # Element (i, j) of the original matrix sits in tile (pos_r[i] // T, pos_c[j] // T).
    pos_r = inverse_perm(tmap.row_perm) // t
    pos_c = inverse_perm(tmap.col_perm) // t
    keep = ~inmap[pos_r[:, None], pos_c[None, :]]
    return tile_weights(w, tmap), np.where(keep, w, np.zeros((), w.dtype))


def merge(tiles: np.ndarray, leftover: np.ndarray, tmap: TileMap) -> np.ndarray:
    """Rebuild ``W`` from crossbar tiles and leftover (inverse of :func:`split`)."""
    t = tmap.tile
    nrt, nct = tmap.grid
    if tiles.shape != (tmap.n_tiles, t, t) or leftover.shape != (tmap.rows, tmap.cols):
        raise SparsefabError(f"merge: got tiles {tiles.shape} and leftover {leftover.shape}, expected "
                             f"({tmap.n_tiles}, {t}, {t}) and ({tmap.rows}, {tmap.cols})")
    blocks = np.zeros((nrt, nct, t, t), dtype=np.result_type(tiles, leftover))
    blocks[tmap.tiles[:, 0], tmap.tiles[:, 1]] = tiles
    wp = blocks.transpose(0, 2, 1, 3).reshape(nrt * t, nct * t)[: tmap.rows, : tmap.cols]
    out = np.zeros((tmap.rows, tmap.cols), dtype=wp.dtype)
    out[np.ix_(tmap.row_perm, tmap.col_perm)] = wp
    return out + leftover


def hybrid_split(w, tmap: TileMap, *, bits: int = 8, block: int = 16, bus_bits: int = 64):
    """Crossbar tiles plus the leftover encoded in the bitmap format.

    Returns ``(tile_weights [n, T, T], bitmap_file_bytes)``; decode the second with
    :func:`sparsefab.compress.bitmap.decode` to get the leftover matrix back.
    ``w`` must hold integer codes of ``bits`` bits.
    """
    from . import bitmap

    tiles, leftover = split(w, tmap)
    return tiles, bitmap.encode(leftover, bits=bits, block=block, bus_bits=bus_bits)
