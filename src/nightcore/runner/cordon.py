"""Cordons: tenants an operator has stopped from running (``state/cordons.json``).

A cordon is an incident-response switch, not a trust statement: a cordoned tenant still
verifies, but is reported ``CORDONED`` and never executed. Both cordon and uncordon are
audit events, written before the state file changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from nightcore.canonical import canonical, parse_json
from nightcore.errors import NightCoreError, StateError
from nightcore.fsio import atomic_write, file_lock, read_regular_capped
from nightcore.module.manifest import validate_tenant_id

if TYPE_CHECKING:
    from nightcore.context import NodeContext
    from nightcore.layout import Layout

MAX_REASON = 512


MAX_CORDONS_BYTES = 8 * 1024 * 1024


def load_cordons(layout: Layout) -> dict[str, dict[str, str]]:
    """The cordoned tenants (a read-only view: the dashboard reads it too)."""
    p = layout.cordons_path
    if not p.exists():
        return {}
    try:
        data = read_regular_capped(p, MAX_CORDONS_BYTES)
        doc = parse_json(data, max_bytes=MAX_CORDONS_BYTES, what="cordons.json")
    except NightCoreError as exc:
        raise StateError(f"state/cordons.json: {exc.message}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise StateError("state/cordons.json is not a map of tenant -> cordon")
    return doc


@contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(layout.cordons_lock_path):
        yield


def cordon(ctx: NodeContext, tenant: str, reason: str, *, actor: str = "cli") -> dict[str, str]:
    """Cordon ``tenant``. ``actor`` names who asked (``cli``, ``token:<id>``) in the audit line."""
    from nightcore.audit.log import now_ts

    try:
        validate_tenant_id(tenant)
    except NightCoreError:
        raise NightCoreError("not a valid tenant id", code="TENANT_NAME_INVALID") from None
    if not reason.strip():
        raise NightCoreError("--reason must not be empty", code="USAGE")
    with _locked(ctx.layout):
        cordons = load_cordons(ctx.layout)
        if tenant in cordons:
            raise NightCoreError(f"tenant {tenant} is already cordoned", code="ALREADY_CORDONED")
        entry = {"reason": reason[:MAX_REASON], "ts": now_ts()}
        ctx.audit().append("cordon", {"reason": entry["reason"], "actor": actor}, tenant)
        cordons[tenant] = entry
        atomic_write(ctx.layout.cordons_path, canonical(cordons) + b"\n")
    # The kill switch: its runs in flight in this process (and a node's workers) stop now;
    # other processes see the file change at their next poll (nightcore.runner.killswitch).
    from nightcore.runner.trustwatch import trust_changed

    trust_changed(ctx.layout.root)
    return entry


def uncordon(ctx: NodeContext, tenant: str, reason: str = "", *, actor: str = "cli") -> None:
    with _locked(ctx.layout):
        cordons = load_cordons(ctx.layout)
        if tenant not in cordons:
            raise NightCoreError("tenant is not cordoned", code="NOT_CORDONED")
        ctx.audit().append("uncordon", {"reason": reason[:MAX_REASON], "actor": actor}, tenant)
        del cordons[tenant]
        atomic_write(ctx.layout.cordons_path, canonical(cordons) + b"\n")
