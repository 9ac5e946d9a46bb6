"""Cordons: tenants an operator has stopped from running (``state/cordons.json``).

A cordon is an incident-response switch, not a trust statement: a cordoned tenant still
verifies, but is reported ``CORDONED`` and never executed. Both cordon and uncordon are
audit events, written before the state file changes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError, StateError
from nightcore.fsio import atomic_write
from nightcore.module.manifest import validate_tenant_id
from nightcore.workspace import Workspace

MAX_REASON = 512


def _path(ws: Workspace) -> Path:
    return ws.state_dir / "cordons.json"


def load_cordons(ws: Workspace) -> dict[str, dict[str, str]]:
    p = _path(ws)
    if not p.exists():
        return {}
    try:
        doc = parse_json(p.read_bytes(), max_bytes=8 * 1024 * 1024, what="cordons.json")
    except NightCoreError as exc:
        raise StateError(f"state/cordons.json: {exc.message}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise StateError("state/cordons.json is not a map of tenant -> cordon")
    return doc


@contextmanager
def _locked(ws: Workspace) -> Iterator[None]:
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(ws.state_dir / "cordons.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def cordon(ws: Workspace, tenant: str, reason: str, *, actor: str = "cli") -> dict[str, str]:
    """Cordon ``tenant``. ``actor`` names who asked (``cli``, ``token:<id>``) in the audit line."""
    from nightcore.audit.log import now_ts

    try:
        validate_tenant_id(tenant)
    except NightCoreError:
        raise NightCoreError("not a valid tenant id", code="TENANT_NAME_INVALID") from None
    if not reason.strip():
        raise NightCoreError("--reason must not be empty", code="USAGE")
    with _locked(ws):
        cordons = load_cordons(ws)
        if tenant in cordons:
            raise NightCoreError(f"tenant {tenant} is already cordoned", code="ALREADY_CORDONED")
        entry = {"reason": reason[:MAX_REASON], "ts": now_ts()}
        ws.audit().append("cordon", {"reason": entry["reason"], "actor": actor}, tenant)
        cordons[tenant] = entry
        atomic_write(_path(ws), canonical(cordons) + b"\n")
    return entry


def uncordon(ws: Workspace, tenant: str, reason: str = "", *, actor: str = "cli") -> None:
    with _locked(ws):
        cordons = load_cordons(ws)
        if tenant not in cordons:
            raise NightCoreError("tenant is not cordoned", code="NOT_CORDONED")
        ws.audit().append("uncordon", {"reason": reason[:MAX_REASON], "actor": actor}, tenant)
        del cordons[tenant]
        atomic_write(_path(ws), canonical(cordons) + b"\n")
