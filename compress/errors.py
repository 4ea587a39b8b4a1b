"""User-facing errors.

Every public function rejects bad input by raising :class:`SparsefabError` (or a
subclass) with one line saying what is wrong, where, and what was expected.  The CLI
prints that line and exits with a non-zero status, without a traceback.
"""


class SparsefabError(ValueError):
    """Bad input or a failed operation, explained in one line for the user."""


class FormatError(SparsefabError):
    """A compressed file or stream is truncated, corrupted, forged or of another format."""
