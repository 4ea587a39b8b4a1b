"""``sparsefab`` subcommands of this area (see :mod:`sparsefab.cli`)."""

from __future__ import annotations


def register(commands) -> None:
    """Add this area's subcommands to commands (a :class:`sparsefab.cli.Commands`)."""
