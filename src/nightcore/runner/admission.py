"""The admission step of the run path: which tenants, what each package's decision is, and how
a decision is written to the audit log (in one place, for `verify` and `run` alike)."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nightcore.errors import NightCoreError

if TYPE_CHECKING:
    from nightcore.audit.log import Event
    from nightcore.context import NodeContext
    from nightcore.layout import Layout
    from nightcore.module.verify import Decision


def select_tenants(layout: Layout, tenants: list[str] | None) -> list[str]:
    """The tenants named (in order, without duplicates), or every package under ``modules/``."""
    from nightcore.module.package import discover

    found = discover(layout.modules_dir)
    if not tenants:
        return found
    missing = [t for t in tenants if t not in found]
    if missing:
        raise NightCoreError(
            f"tenant {missing[0]!r} not found under modules/", code="TENANT_NOT_FOUND"
        )
    return list(dict.fromkeys(tenants))


@dataclass(frozen=True)
class Verified:
    decision: Decision
    module: bytes  # the exact bytes whose digest was verified (empty when denied)
    envelope: bytes = b""  # the envelope those bytes were verified against


def verify_packages(
    ctx: NodeContext, tenants: list[str], *, now: dt.datetime | None = None
) -> list[Verified]:
    """Read each package once and decide; no audit (callers record the decisions)."""
    from nightcore.module.package import read_package
    from nightcore.module.verify import Decision, decide

    registry = ctx.load_registry()
    revocations = ctx.load_revocations(registry)
    now = now or dt.datetime.now(dt.UTC)
    out: list[Verified] = []
    for name in tenants:
        try:
            pkg = read_package(ctx.layout.tenant_dir(name))
        except NightCoreError as exc:
            out.append(Verified(Decision(name, exc.code, exc.message), b""))
            continue
        d = decide(pkg, registry, revocations, ctx.policy, now)
        out.append(Verified(d, pkg.module if d.ok else b"", pkg.envelope or b"" if d.ok else b""))
    return out


def decision_data(d: Decision) -> dict[str, Any]:
    """The audit data of a verification decision (also the base of admit/denial events)."""
    return {
        "code": d.code,
        "reason": d.reason,
        "key_id": d.key_id,
        "module_sha256": d.module_sha256,
        "envelope_sha256": d.envelope_sha256,
    }


def event_tenant(name: str) -> str | None:
    """The tenant field for an event about directory ``name``: None when the name is not a valid
    tenant id (it is then identified by its digest, never copied into the tenant field)."""
    from nightcore.module.package import check_tenant_dir_name

    try:
        check_tenant_dir_name(name)
    except NightCoreError:
        return None
    return name


def verify_event(d: Decision) -> Event:
    """The one ``verify`` audit event of a decision."""
    from nightcore.audit.log import Event

    tenant = event_tenant(d.tenant)
    data = decision_data(d)
    if tenant is None:
        data["dir_name_sha256"] = hashlib.sha256(d.tenant.encode()).hexdigest()
    return Event("verify", data, tenant)
