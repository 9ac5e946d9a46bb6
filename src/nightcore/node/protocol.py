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

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (cold CLI)
if TYPE_CHECKING:
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
    """``<root>/state/node.sock`` of the workspace ``-w`` or ``NIGHTCORE_HOME`` names, or else
    of the nearest of the current directory and its parents holding ``nightcore.toml`` (as
    :func:`nightcore.layout.find_root` resolves it), without pathlib: this is the thin client's
    cold path."""
    named = workspace or os.environ.get("NIGHTCORE_HOME")
    if named:
        root = os.path.realpath(named)
    else:
        root = start = os.path.realpath(os.getcwd())
        d = start
        while True:
            if os.path.isfile(os.path.join(d, "nightcore.toml")):
                root = d
                break
            parent = os.path.dirname(d)
            if parent == d:
                break
            d = parent
    return os.path.join(root, "state", SOCKET_NAME)


class ProtocolError(ValueError):
    """A line that is not a valid request or reply (the caller maps it to a code)."""


def loads(line: bytes, *, max_bytes: int = MAX_REPLY_LINE_BYTES) -> dict[str, Any]:
    """Strict JSON object from one line (no duplicate keys, no NaN/Infinity): the same parser
    as every other untrusted JSON Night Core reads (:func:`nightcore.canonical.parse_json`)."""
    from nightcore.canonical import parse_json
    from nightcore.errors import NightCoreError

    try:
        obj = parse_json(line, max_bytes=max_bytes, what="the line")
    except NightCoreError as exc:
        raise ProtocolError(exc.message) from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def parse_request(line: bytes) -> tuple[str, dict[str, Any]]:
    """(op, args) of a request line, or ProtocolError saying what is wrong."""
    obj = loads(line, max_bytes=MAX_REQUEST_BYTES)
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
