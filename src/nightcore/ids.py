"""Unique-prefix matching of identifiers (run ids today): what a person types is often the
first few characters of an id they saw in a table; it names the one id it starts, or is
refused with the candidates in the message.

Pure: strings in, a string out, :class:`~nightcore.errors.NightCoreError` otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable

from nightcore.errors import NightCoreError

__all__ = ["MAX_LISTED", "resolve_prefix"]

# At most this many matches are named in an ID_AMBIGUOUS message.
MAX_LISTED = 10


def resolve_prefix(
    prefix: str,
    candidates: Iterable[str],
    what: str,
    *,
    code: str = "ID_NOT_FOUND",
) -> str:
    """The one candidate equal to ``prefix``, or else the one that starts with it.

    An exact match wins even when it is also the prefix of a longer id. ``what`` names the
    kind of id in messages ("run"). No match raises ``code`` (the not-found code:
    ``ID_NOT_FOUND``, or a domain's own such as ``RUN_NOT_FOUND``); several raise
    ``ID_AMBIGUOUS`` naming up to
    :data:`MAX_LISTED` of them, sorted. An empty prefix matches nothing.
    """
    shown = prefix[:80]
    if not prefix:
        raise NightCoreError(f"an empty {what} id names no {what}", code=code)
    matches: set[str] = set()
    for c in candidates:
        if c == prefix:
            return c
        if c.startswith(prefix):
            matches.add(c)
    if not matches:
        raise NightCoreError(f"no {what} id starts with {shown!r}", code=code)
    if len(matches) > 1:
        listed = sorted(matches)
        more = len(listed) - MAX_LISTED
        names = ", ".join(listed[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")
        raise NightCoreError(
            f"{shown!r} is the start of {len(listed)} {what} ids: {names}", code="ID_AMBIGUOUS"
        )
    return matches.pop()
