"""Exceptions as the one-line messages users read."""

from __future__ import annotations


class RunFailed(RuntimeError):
    """The run cannot finish for a reason the user must see (and retrying won't fix)."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type's name."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
