"""The run path of the facade: verify, run, cordon/uncordon, the run history.

Every function takes a :class:`~nightcore.context.NodeContext` and plain values and returns
values whose ``to_dict()`` (or the value itself) is plain JSON data, so a caller in another
process (the node agent's socket API) gets exactly what an in-process caller gets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nightcore.context import NodeContext
    from nightcore.module.verify import Decision
    from nightcore.runner.pipeline import Runner, RunReport, TenantRun


def select_tenants(ctx: NodeContext, tenants: list[str] | None = None) -> list[str]:
    """The tenants a command is about: the names given (each must exist) or every package."""
    from nightcore.runner.admission import select_tenants as select

    return select(ctx.layout, tenants)


def verify(ctx: NodeContext, tenants: list[str] | None = None) -> list[Decision]:
    """Verify tenants and append one audit line per decision (then a checkpoint if due)."""
    from nightcore.runner.admission import verify_event, verify_packages

    names = select_tenants(ctx, tenants)
    decisions = [v.decision for v in verify_packages(ctx, names)]
    ctx.audit().append_many([verify_event(d) for d in decisions])
    checkpoint_if_due(ctx)
    return decisions


def run(
    ctx: NodeContext,
    tenants: list[str] | None = None,
    *,
    selected: bool = False,
    parallel: int | None = None,
    strongbox: bool = False,
    progress: Callable[[TenantRun], None] | None = None,
    checkpoint: bool = True,
    runner: Runner | None = None,
) -> RunReport:
    """Verify, admit, run and record tenants; sign a checkpoint over what was logged.

    ``selected=True`` says ``tenants`` came from :func:`select_tenants` already (the CLI selects
    first to size its progress bar), so ``modules/`` is scanned once per command. A long-lived
    caller passes its own warm ``runner`` (engines and caches stay compiled between calls).
    """
    from nightcore.runner.pipeline import Runner

    names = tenants if selected and tenants is not None else select_tenants(ctx, tenants)
    own = runner is None
    r = runner if runner is not None else Runner(ctx, strongbox=strongbox)
    try:
        return r.run(names, parallel=parallel, progress=progress, checkpoint=checkpoint)
    finally:
        if own:
            r.close()


def cordon(ctx: NodeContext, tenant: str, reason: str, *, actor: str = "cli") -> dict[str, Any]:
    """Stop ``tenant`` from running (audited before the cordon list changes)."""
    from nightcore.runner.cordon import cordon as do_cordon

    entry = do_cordon(ctx, tenant, reason, actor=actor)
    return {"tenant": tenant, "cordoned": True, **entry}


def uncordon(
    ctx: NodeContext, tenant: str, reason: str = "", *, actor: str = "cli"
) -> dict[str, Any]:
    from nightcore.runner.cordon import uncordon as do_uncordon

    do_uncordon(ctx, tenant, reason, actor=actor)
    return {"tenant": tenant, "cordoned": False}


def runs(ctx: NodeContext, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent runs (newest first) from the run index."""
    from nightcore.runner.pipeline import query_runs

    return query_runs(ctx, tenant, limit)


def rebuild_index(ctx: NodeContext) -> int:
    """Rebuild the run index from the audit log (after verifying the chain)."""
    from nightcore.runner.pipeline import rebuild_index as rebuild

    return rebuild(ctx)


def checkpoint_if_due(ctx: NodeContext) -> None:
    """Sign a checkpoint when ``[audit] checkpoint_every`` lines went by without one.

    Cheap when nothing is due (it counts new lines). A node whose key cannot sign C2SP notes
    (ECDSA in FIPS mode) keeps its hash chain and Merkle tree and skips this; any other
    failure (a tampered log) is raised.
    """
    from nightcore.errors import NightCoreError

    try:
        ctx.transparency_log().maybe_checkpoint(ctx.config.checkpoint_every)
    except NightCoreError as exc:
        if exc.code != "CHECKPOINT_UNSUPPORTED_KEY":
            raise
