"""User-facing errors.

Every public function rejects bad input by raising :class:`SparsefabError` (or a
subclass) with one line saying what is wrong, where, and what was expected.  The CLI
prints that line and exits with a non-zero status, without a traceback.
"""


class SparsefabError(ValueError):
    """Bad input or a failed operation, explained in one line for the user."""


class FormatError(SparsefabError):
    """A compressed file or stream is truncated, corrupted, forged or of another format."""


def check_int(name: str, value, lo: int, hi: int, *, owner: str = "") -> int:
    """Return ``value`` as an int if it is an integer (not a bool) in ``[lo, hi]``.

    Otherwise raise :class:`SparsefabError` naming the parameter, the bad value and the
    range; ``owner`` (e.g. ``"SpmvConfig"``) prefixes the message.  Accepts Python and
    NumPy integers (anything with ``__index__``).
    """
    if isinstance(value, bool) or not hasattr(type(value), "__index__") or not lo <= int(value) <= hi:
        where = f"{owner}: " if owner else ""
        sep = ", " if owner else ": "
        raise SparsefabError(f"{where}{name}={value!r}{sep}expected an integer in [{lo}, {hi}]")
    return int(value)
