"""Canonical JSON (RFC 8785) out, strict JSON in.

Everything Night Core signs or hashes is serialised with RFC 8785 (the ``rfc8785`` package),
so the same value always has the same bytes. Everything it reads from disk or the network is
parsed strictly: size-capped, UTF-8, no duplicate keys, no NaN/Infinity.
"""

from __future__ import annotations

import json

from nightcore.errors import NightCoreError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (cold CLI)
if TYPE_CHECKING:
    from typing import Any

_SAFE_INT = 2**53


def _plain(value: Any) -> bool:
    """True when json.dumps(sort_keys, compact, UTF-8) already *is* the RFC 8785 form.

    That holds without floats (RFC 8785 prints numbers the ECMAScript way) and with keys
    whose code-point order equals their UTF-16 order (no characters above U+D7FF), and with
    integers inside the IEEE-754 exact range. Anything else (subclasses of the JSON types
    included) takes the rfc8785 package. Iterative with exact type checks: this runs on every
    audit line, and the recursive form cost ~30 us a line.
    """
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        v = pop()
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if not -_SAFE_INT < v < _SAFE_INT:
                return False
        elif t is dict:
            for k, x in v.items():
                if type(k) is not str or not (k.isascii() or max(k) < "\ud800"):
                    return False
                push(x)
        elif t is list or t is tuple:
            extend(v)
        else:
            return False
    return True


def canonical(value: Any) -> bytes:
    import rfc8785

    if _plain(value):
        try:
            return json.dumps(
                value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            ).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: let rfc8785 refuse it with its own reason
    try:
        return bytes(rfc8785.dumps(value))
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise NightCoreError(f"value cannot be canonicalised: {exc}", code="JSON_INVALID") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def parse_json(data: bytes, *, max_bytes: int, what: str, code: str = "JSON_INVALID") -> Any:
    """Parse untrusted JSON bytes or raise ``NightCoreError(code)`` with a one-line reason."""
    if len(data) > max_bytes:
        raise NightCoreError(f"{what} is larger than {max_bytes} bytes", code=code)
    try:
        text = data.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise NightCoreError(f"{what} is not UTF-8", code=code) from None
    except (ValueError, RecursionError) as exc:
        raise NightCoreError(f"{what} is not valid JSON: {exc}", code=code) from None
