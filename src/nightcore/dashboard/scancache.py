"""The audit scanner's state between report refreshes: ``private/dashboard-scan.state``.

Without it every ``nightcore run`` re-reads and re-hashes the node's whole history for its
report (~5 us a line: 20 ms at 1,000 runs, seconds at 10^5). The scan keeps a snapshot of its
state after the lines covered by the latest *signed* checkpoint (:attr:`AuditScanner.snapshot`:
per-tenant latest lines, counters, recent lines, the Merkle tree's compact stack) together with
the SHA-256 of exactly those bytes; the next refresh hashes that prefix of the file again (one
C call per MiB) and goes on from the snapshot only if it is byte-for-byte the same, so what the
report shows, and its quick check, are what a scan from line 0 would give.

The file holds marshalled data, so it lives in the node's ``private/`` directory (0700; whoever
can write there holds the node key and can sign any log) and carries an HMAC-SHA256 keyed from
``private/cache.secret``: anything else (a torn write, another version, a copy from another
node) is ignored and the log is scanned from line 0.
"""

from __future__ import annotations

import hashlib
import hmac
import marshal
from typing import Any

from nightcore.context import NodeContext
from nightcore.fsio import atomic_write, open_regular, read_regular_capped

STATE_NAME = "dashboard-scan.state"
MAGIC = b"nightcore dashboard scan state 1\n"
MAX_STATE_BYTES = 256 * 1024 * 1024
_CONTEXT = b"nightcore dashboard scan state"


def _key(ws: NodeContext) -> bytes | None:
    try:
        secret = read_regular_capped(ws.layout.cache_secret_path, 4096)
    except OSError:
        return None
    if len(secret) < 16:
        return None
    return hmac.new(secret, _CONTEXT, hashlib.sha256).digest()


def load(ws: NodeContext) -> dict[str, Any] | None:
    """The state saved by an earlier refresh, if it is intact and this node's."""
    key = _key(ws)
    if key is None:
        return None
    path = ws.layout.private_dir / STATE_NAME
    try:
        with open_regular(path, follow=False) as fh:  # a FIFO planted there is not waited on
            data = fh.read(MAX_STATE_BYTES + 1)
    except OSError:
        return None
    head = len(MAGIC) + 32
    if len(data) > MAX_STATE_BYTES or len(data) < head or not data.startswith(MAGIC):
        return None
    payload = memoryview(data)[head:]
    mac = hmac.new(key, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, data[len(MAGIC) : head]):
        return None
    try:
        state = marshal.loads(payload)  # noqa: S302 - authenticated above, from private/
    except (EOFError, ValueError, TypeError):
        return None
    return state if isinstance(state, dict) else None


def save(ws: NodeContext, state: dict[str, Any]) -> None:
    """Atomically replace the saved state (best effort: a report never fails over its cache)."""
    key = _key(ws)
    if key is None:
        return
    payload = marshal.dumps(state)
    data = MAGIC + hmac.new(key, payload, hashlib.sha256).digest() + payload
    if not ws.layout.private_dir.is_dir():
        return  # no private dir (a foreign workspace): the next refresh scans from line 0
    try:
        atomic_write(ws.layout.private_dir / STATE_NAME, data, 0o600, durable=False)
    except OSError:
        return  # not ours to write: the next refresh scans from line 0
