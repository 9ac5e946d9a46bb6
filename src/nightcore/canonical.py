"""Canonical JSON (RFC 8785) out, strict JSON in.

Everything Night Core signs or hashes is serialised with RFC 8785 (the ``rfc8785`` package),
so the same value always has the same bytes. Everything it reads from disk or the network is
parsed strictly: size-capped, UTF-8, no duplicate keys, no NaN/Infinity.
"""

from __future__ import annotations

import json
from typing import Any

from nightcore.errors import NightCoreError


def canonical(value: Any) -> bytes:
    import rfc8785

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
