"""Safe file input/output shared by the CLI and the golden model.

Outputs are written to a temporary file in the destination folder and renamed into
place, so a failure never leaves a half-written file.  Inputs are checked before use.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import SparsefabError

# Refuse to read absurdly large inputs into memory (a forged .npy header could claim any shape).
MAX_INPUT_BYTES = 8 << 30


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename).

    The file gets the usual permissions of a new file (``0o666 & ~umask``), not the
    private 0600 of the temporary file it starts as.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise SparsefabError(f"{path}: output folder {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save ``array`` as .npy atomically."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def read_bytes(path: str | os.PathLike, what: str = "input") -> bytes:
    """Read a whole file, with one-line errors for missing or oversized files."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise SparsefabError(f"{path}: {what} file not found") from None
    except OSError as exc:
        raise SparsefabError(f"{path}: cannot read {what}: {exc.strerror}") from None
    if path.is_dir():
        raise SparsefabError(f"{path}: is a folder, expected a {what} file")
    if size > MAX_INPUT_BYTES:
        raise SparsefabError(f"{path}: {size} bytes is larger than the {MAX_INPUT_BYTES} byte limit")
    return path.read_bytes()


def load_npy(path: str | os.PathLike, *, what: str = "array") -> np.ndarray:
    """Load a .npy file without pickles; one-line errors for anything malformed."""
    data = read_bytes(path, what)
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/EOFError/OSError variously
        raise SparsefabError(f"{path}: not a valid .npy file ({exc})") from None
    if not isinstance(arr, np.ndarray):
        raise SparsefabError(f"{path}: expected a single .npy array, found {type(arr).__name__}")
    return arr


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise if a float array holds NaN or Inf, naming the first bad position."""
    if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
        bad = ~np.isfinite(array)
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            raise SparsefabError(f"{what}: non-finite value {array[pos]} at index {pos}")
