"""Night Core's application facade: the one public Python API.

The CLI, the live console and the node agent call the product only through these functions.
Each takes a :class:`~nightcore.context.NodeContext` (from :func:`open_context`) and plain
values, raises :class:`~nightcore.errors.NightCoreError` (with a stable ``code``) on refusal,
and returns values that are plain data or have a ``to_dict()`` giving plain JSON data. Every
security decision is in the audit log before the function returns.

    from nightcore import app
    ctx = app.init_workspace(Path("ws"))
    key = app.keygen("alice", Path("keys"), passphrase=b"...")
    app.trust_add_key(ctx, key.public_path, scope="hello*")
    app.sign_tenant(Path("ws/modules/hello"), str(key.private_path))
    decisions = app.verify(ctx)
    report = app.run(ctx, ["hello"])

``docs/architecture.md`` says where the facade sits among the layers.
"""

from __future__ import annotations

from nightcore.app.run import (
    checkpoint_if_due,
    cordon,
    rebuild_index,
    run,
    runs,
    select_tenants,
    uncordon,
    verify,
)
from nightcore.app.trust import (
    import_revocations,
    resolve_key_id,
    revocations_list,
    revoke,
    trust_add_key,
    trust_list,
    trust_list_states,
    trust_remove_key,
)
from nightcore.app.workspace import (
    SignResult,
    init_workspace,
    keygen,
    open_context,
    sign_tenant,
)

__all__ = [
    "SignResult",
    "checkpoint_if_due",
    "cordon",
    "import_revocations",
    "init_workspace",
    "keygen",
    "open_context",
    "rebuild_index",
    "resolve_key_id",
    "revocations_list",
    "revoke",
    "run",
    "runs",
    "select_tenants",
    "sign_tenant",
    "trust_add_key",
    "trust_list",
    "trust_list_states",
    "trust_remove_key",
    "uncordon",
    "verify",
]
