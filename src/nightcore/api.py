"""Old name of the facade, kept while callers move: use :mod:`nightcore.app`."""

from __future__ import annotations

from pathlib import Path

from nightcore.app import (
    SignResult,
    import_revocations,
    keygen,
    revoke,
    select_tenants,
    sign_tenant,
    trust_add_key,
    trust_list,
    trust_remove_key,
)
from nightcore.app import init_workspace as _init_workspace
from nightcore.app import verify as verify_tenants
from nightcore.workspace import Workspace

__all__ = [
    "SignResult",
    "Workspace",
    "import_revocations",
    "init_workspace",
    "keygen",
    "revoke",
    "select_tenants",
    "sign_tenant",
    "trust_add_key",
    "trust_list",
    "trust_remove_key",
    "verify_tenants",
]


def init_workspace(root: Path, *, name: str = "node", fips: bool = False) -> Workspace:
    ctx = _init_workspace(root, name=name, fips=fips)
    return Workspace(ctx.root)
