"""Heartbeats: a signed checkpoint when the log has been quiet for a while.

A log that stopped silently (a dead node, a wiped disk) and a log that is merely quiet look
the same from outside. A node that signs a ``heartbeat`` checkpoint after every idle period
makes the difference visible: a verifier who sees no checkpoint newer than the period knows
the node stopped, or its log was cut.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from nightcore.fsio import open_regular

if TYPE_CHECKING:
    from nightcore.audit.tlog import SignedCheckpoint, TransparencyLog


def last_activity(path: Path) -> dt.datetime | None:
    """The timestamp of the last line of the audit log at ``path`` (None for an empty log)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open_regular(path) as fh:
        fh.seek(max(0, path.stat().st_size - 65536), os.SEEK_SET)
        tail = fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        ts = json.loads(tail)["ts"]
        return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return None


def heartbeat(
    log: TransparencyLog, idle_seconds: int, *, now: dt.datetime | None = None
) -> SignedCheckpoint | None:
    """Append a heartbeat and sign a checkpoint over it if idle long enough; else None.

    ``log`` is the workspace's transparency log (with its signer and audit log).
    """
    now = now or dt.datetime.now(dt.UTC)
    last = last_activity(log.tree.log_path)
    if last is not None and (now - last).total_seconds() < idle_seconds:
        return None
    idle_for = None if last is None else round((now - last).total_seconds())
    log.audit_log().append("heartbeat", {"idle_seconds": idle_for, "threshold": idle_seconds})
    return log.checkpoint("heartbeat")
