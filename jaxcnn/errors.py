"""One-line renderings of exceptions, for the `error: ...` lines and warnings that must stay one line."""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of `e`'s message (at most `limit` characters), or its type's name when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else type(e).__name__


def typed_first_line(e: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, or just `Type` when it has none."""
    return f"{type(e).__name__}: {first_line(e, limit)}" if str(e).strip() else type(e).__name__
