"""Audit lines, fast: strict parsing (:func:`parse_line_fast`) and classification by byte
search (:func:`event_of`, :func:`tenant_of`, :func:`prev_of`, :func:`ts_of`).

Parsing: the accepted set, the error codes and the messages are those of
:func:`nightcore.audit.log.parse_line` (the reference parser); only the speed differs.

Classifying without parsing: a line is RFC 8785 canonical JSON, so its keys are sorted
(``data`` < ``event`` < ``node`` < ``prev`` < ``seq`` < ``tenant`` < ``ts`` < ``v``) and every
top-level key but ``data`` comes *after* ``data``; a string value cannot contain an unescaped
``"``. So the *last* occurrence of ``"event":"`` is the top-level event, and likewise for
``prev``, ``ts`` and a ``tenant`` found after the event. These functions trust that shape
(they are for scanners that report, like the console's); a verifier parses every line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, Final

from nightcore.audit.log import _FIELDS, _REQUIRED, MAX_LINE_BYTES, parse_line
from nightcore.errors import AuditError, NightCoreError

__all__ = [
    "event_of",
    "is_checkpoint",
    "parse_line_fast",
    "prev_chain",
    "prev_of",
    "record_of",
    "tenant_of",
    "ts_of",
]


class _Slow(Exception):
    """Raised inside the fast decoder when a value needs the reference parser."""


def _refuse_float(_text: str) -> Any:
    raise _Slow


def _small_int(text: str) -> int:
    # 15 characters (sign included) is always inside RFC 8785's +-(2^53 - 1); longer ones take
    # the reference path, which applies the exact bound.
    if len(text) > 15:
        raise _Slow
    return int(text)


_FAST_LOADS: Final = json.JSONDecoder(
    parse_float=_refuse_float, parse_int=_small_int, parse_constant=_refuse_float
).decode
_FAST_DUMPS: Final = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode
# A 4-byte UTF-8 sequence: a non-BMP character, where Python's key order (code points) and
# RFC 8785's (UTF-16 code units) can differ.
_NON_BMP: Final = re.compile(rb"[\xf0-\xff]")


def parse_line_fast(line: bytes, *, seq_hint: int) -> dict[str, Any]:
    """:func:`nightcore.audit.log.parse_line`, about 3x faster on ordinary lines.

    Fast path: the C JSON decoder and encoder; a line is accepted only if re-encoding its value
    with sorted keys, no whitespace and no ASCII escaping reproduces the line byte for byte. On
    the values that path admits (no floats, integers of at most 15 characters, no non-BMP
    characters, no lone surrogates) that encoding *is* RFC 8785, and a duplicate key cannot
    round-trip. Anything else, and every refusal, goes through ``parse_line`` itself, so the
    accepted set and the error codes and messages are the same; the one difference is that a
    value outside RFC 8785's domain (an integer beyond 2^53), which ``parse_line`` lets escape
    as a ``JSON_INVALID`` NightCoreError, is refused here as ``AUDIT_NOT_CANONICAL``.
    """
    if len(line) <= MAX_LINE_BYTES and (line.isascii() or _NON_BMP.search(line) is None):
        try:
            text = line.decode("utf-8")
            rec = _FAST_LOADS(text)
            if (
                type(rec) is dict
                and _REQUIRED <= rec.keys() <= _FIELDS
                and type(rec["seq"]) is int
                and type(rec["prev"]) is str
                and type(rec["event"]) is str
                and type(rec["data"]) is dict
                and _FAST_DUMPS(rec) == text  # same text, so same UTF-8 bytes
            ):
                return rec
        except (_Slow, ValueError, RecursionError):  # UnicodeError is a ValueError
            pass
    try:
        return parse_line(line, seq_hint=seq_hint)
    except AuditError:
        raise
    except NightCoreError as exc:  # canonical() refusing a value outside RFC 8785's domain
        raise AuditError(
            f"audit line {seq_hint}: not RFC 8785 canonical JSON ({exc.message})",
            code="AUDIT_NOT_CANONICAL",
        ) from None


def record_of(line: bytes) -> dict[str, Any] | None:
    """A line's record for *display* (a report showing a line it already classified): a JSON
    object, its ``data`` a dict (``{}`` if it is not), or None. Not a verification: canonical
    form and fields are not checked (:func:`parse_line_fast` does that, about 1.6x slower;
    the console parses every tenant's latest lines, so it uses this)."""
    try:
        rec = json.loads(line)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(rec, dict):
        return None
    if not isinstance(rec.get("data"), dict):
        rec["data"] = {}
    return rec


# --------------------------------------------------------------------------------------------
# Classifying canonical lines by byte search (see the module docstring)

EVENT_KEY: Final = b'"event":"'
TENANT_KEY: Final = b'"tenant":"'
PREV_KEY: Final = b'"prev":"'
TS_KEY: Final = b'"ts":"'
_CHECKPOINT: Final = b'checkpoint"'


def event_of(line: bytes) -> tuple[bytes, int]:
    """(top-level event name, offset of its key), or ``(b"?", -1)`` if the line has none."""
    i = line.rfind(EVENT_KEY)
    if i < 0:
        return b"?", -1
    return line[i + 9 : line.find(b'"', i + 9)], i


def is_checkpoint(line: bytes) -> bool:
    """Whether the top-level event is ``checkpoint``."""
    i = line.rfind(EVENT_KEY)
    return i >= 0 and line.startswith(_CHECKPOINT, i + 9)


def tenant_of(line: bytes, event_at: int) -> bytes | None:
    """The top-level tenant's bytes as written (JSON escapes not decoded; a ``\\`` in them
    means the caller must parse), or None. ``event_at`` is :func:`event_of`'s offset: a
    ``tenant`` key before it sits inside ``data``."""
    i = line.rfind(TENANT_KEY)
    if i <= event_at:
        return None
    return line[i + 10 : line.find(b'"', i + 10)]


def prev_of(line: bytes) -> bytes | None:
    """The 64 hex digits of the top-level ``prev`` (as bytes), or None."""
    i = line.rfind(PREV_KEY)
    return line[i + 8 : i + 72] if i >= 0 else None


def ts_of(line: bytes) -> bytes | None:
    """The top-level ``ts`` (as bytes, so that values compare like times), or None."""
    i = line.rfind(TS_KEY)
    return line[i + 6 : line.find(b'"', i + 6)] if i >= 0 else None


def prev_chain(
    lines: Sequence[bytes], first: int, head: bytes, check_from: int = 0
) -> tuple[bytes, int | None]:
    """The quick chain check over consecutive lines ``first, first + 1, ...``: each line's
    top-level ``prev`` (from line ``check_from`` on) against the SHA-256 hex of the line before
    (``head`` for the first), without parsing. Returns (the new head, the first line whose
    ``prev`` does not match, or None)."""
    sha = hashlib.sha256
    bad: int | None = None
    n = first
    for line in lines:
        if bad is None and n >= check_from:
            i = line.rfind(PREV_KEY)
            if i < 0 or line[i + 8 : i + 72] != head:
                bad = n
        head = sha(line).hexdigest().encode()
        n += 1
    return head, bad
