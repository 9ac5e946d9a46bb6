"""The node's local API: newline-delimited JSON over a Unix socket in the workspace.

A client sends one request line and reads reply lines until the last one::

    -> {"v": 1, "op": "run", "args": {"tenants": ["hello"], ...}}
    <- {"event": "progress", "data": {...}}          (zero or more, for long operations)
    <- {"ok": true, "result": ...}                   (or)
    <- {"ok": false, "error": {"code": "...", "message": "..."}}

This module is deliberately small and imports nothing heavy: the CLI's client path uses it
and must not pay for wasmtime or cryptography (docs/node.md, "The thin client").
"""

from __future__ import annotations

import json
import os
from typing import Any

PROTOCOL_VERSION = 1
MAX_REQUEST_BYTES = 1024 * 1024
MAX_REPLY_LINE_BYTES = 64 * 1024 * 1024
SOCKET_NAME = "node.sock"

# Operations the node serves; each maps to one facade function (node/server.py).
OPS = (
    "ping",
    "status",
    "verify",
    "run",
    "runs",
    "cordon",
    "uncordon",
    "audit_verify",
    "audit_checkpoint",
)


def socket_path(workspace: str | None) -> str:
    """``<root>/state/node.sock`` of the workspace ``-w``, ``NIGHTCORE_HOME`` or the current
    directory names (as :func:`nightcore.layout.find_root` resolves it), without pathlib: this
    is the thin client's cold path."""
    root = os.path.realpath(workspace or os.environ.get("NIGHTCORE_HOME") or ".")
    return os.path.join(root, "state", SOCKET_NAME)


class ProtocolError(ValueError):
    """A line that is not a valid request or reply (the caller maps it to a code)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ProtocolError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(value: str) -> Any:
    raise ProtocolError(f"{value} is not JSON")


def loads(line: bytes) -> dict[str, Any]:
    """Strict JSON object from one line (no duplicate keys, no NaN/Infinity)."""
    try:
        obj = json.loads(
            line.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(op, args) of a request line, or ProtocolError saying what is wrong."""
    if len(line) > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request larger than {MAX_REQUEST_BYTES} bytes")
    obj = loads(line)
    if set(obj) - {"v", "op", "args"}:
        raise ProtocolError(f"unknown field {sorted(set(obj) - {'v', 'op', 'args'})[0]!r}")
    if obj.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version must be {PROTOCOL_VERSION}")
    op = obj.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError(f"unknown operation {str(op)[:40]!r}")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("args must be an object")
    return op, args


def request(op: str, args: dict[str, Any]) -> bytes:
    return dumps({"v": PROTOCOL_VERSION, "op": op, "args": args})
