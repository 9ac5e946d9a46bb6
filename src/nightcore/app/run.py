"""The run path of the facade: verify, run, cordon/uncordon, the run history.

Every function takes a :class:`~nightcore.context.NodeContext` and plain values and returns
values whose ``to_dict()`` (or the value itself) is plain JSON data, so a caller in another
process (the node agent's socket API) gets exactly what an in-process caller gets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from nightcore.fsio import open_regular

if TYPE_CHECKING:
    from pathlib import Path

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
    dev_limits: dict[str, int] | None = None,
) -> RunReport:
    """Verify, admit, run and record tenants; sign a checkpoint over what was logged.

    ``selected=True`` says ``tenants`` came from :func:`select_tenants` already (the CLI selects
    first to size its progress bar), so ``modules/`` is scanned once per command. A long-lived
    caller passes its own warm ``runner`` (engines and caches stay compiled between calls).
    """
    from nightcore.errors import NightCoreError
    from nightcore.runner.pipeline import Runner

    if dev_limits and not ctx.policy.development:
        # A request to run outside the signed limits is a security decision: audited.
        ctx.audit().append(
            "dev_override_refused",
            {"code": "DEV_MODE_DISABLED", "dev_limits": dict(dev_limits)},
            None,
        )
        raise NightCoreError(
            "--dev-limits needs [policy] development = true in nightcore.toml "
            "(never in production policy)",
            code="DEV_MODE_DISABLED",
        )
    names = tenants if selected and tenants is not None else select_tenants(ctx, tenants)
    own = runner is None
    r = runner if runner is not None else Runner(ctx, strongbox=strongbox)
    try:
        return r.run(
            names,
            parallel=parallel,
            progress=progress,
            checkpoint=checkpoint,
            dev_limits=dev_limits,
        )
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


# The events that record a tenant refused before it ran (a failed verification, a cordon, a
# host error while preparing the run): what `runs --denied` lists.
DENIAL_EVENTS = (b"verify", b"admission_denied")
DENIAL_CHUNK = 1 << 16


def denials(ctx: NodeContext, tenant: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The latest ``limit`` denials (of ``tenant``, if given), most recent first, read from the
    end of the audit log (the authority; the run index holds only runs that ran). A ``verify``
    event counts when its code is not OK, whether ``nightcore run`` or ``nightcore verify``
    made it. Read-only; one backwards pass at most."""
    import os

    from nightcore.audit.lines import event_of, record_of

    out: list[dict[str, Any]] = []
    try:
        fh = open_regular(ctx.layout.audit_log, follow=False)
    except FileNotFoundError:
        return out
    with fh:
        fd = fh.fileno()
        pos = os.fstat(fd).st_size
        rest = b""
        while pos > 0 and len(out) < limit:
            step = min(DENIAL_CHUNK, pos)
            pos -= step
            buf = os.pread(fd, step, pos) + rest
            lines = buf.split(b"\n")
            rest = lines[0] if pos > 0 else b""
            for line in reversed(lines[1:] if pos > 0 else lines):
                if len(out) >= limit:
                    break
                name, _at = event_of(line)
                if name not in DENIAL_EVENTS or b'"code":"OK"' in line:
                    continue
                rec = record_of(line)
                if rec is None or (tenant is not None and rec.get("tenant") != tenant):
                    continue
                d = rec["data"]
                out.append(
                    {
                        "audit_seq": rec.get("seq"),
                        "ts": rec.get("ts"),
                        "tenant": rec.get("tenant"),
                        "event": rec.get("event"),
                        "code": d.get("code"),
                        "reason": d.get("reason"),
                        "key_id": d.get("key_id") or None,
                        "module_sha256": d.get("module_sha256") or None,
                    }
                )
    return out


# What `runs show` and `logs` read of a run's files: tails come from at most TAIL_BYTES of the
# end of each stream, `logs` prints at most LOG_CAP bytes (a stream is capped by the tenant's
# output_bytes limit anyway).
TAIL_LINES = 20
TAIL_BYTES = 64 * 1024
LOG_CAP = 64 * 1024 * 1024
ATTESTATION_CAP = 1 << 20
STREAMS = ("stdout", "stderr")


def resolve_run_id(ctx: NodeContext, prefix: str, *, in_progress: bool = False) -> str:
    """The run id that ``prefix`` starts (a whole id, or a unique prefix of one), among the
    runs whose files are under ``state/runs/`` (and, ``in_progress``, the runs whose output
    is being written under ``state/live/``). ``RUN_NOT_FOUND`` when none starts with it,
    ``ID_AMBIGUOUS`` (naming them) when several do; ``USAGE`` for what cannot start a run id
    (a path, an empty string). Read-only."""
    import os
    import re

    from nightcore.errors import UsageError
    from nightcore.ids import resolve_prefix

    if not re.fullmatch(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}", prefix):
        raise UsageError("not a run id (nor the start of one)")
    runs_dir = ctx.layout.runs_dir
    names: list[str] = []
    if prefix and runs_dir.is_dir():
        with os.scandir(runs_dir) as it:
            names = [e.name for e in it if e.name.startswith(prefix) and e.is_dir()]
    live_dir = ctx.layout.live_dir
    if in_progress and prefix and live_dir.is_dir():
        with os.scandir(live_dir) as it:
            live = {e.name.rsplit(".", 1)[0] for e in it if e.name.startswith(prefix)}
        names = sorted(set(names) | live)
    return resolve_prefix(prefix, names, "run", code="RUN_NOT_FOUND")


def _tail(path: Path, lines: int) -> tuple[list[str], int]:
    """The last ``lines`` lines of a stream file, each cleaned of control characters, and the
    file's size (0, [] when the run wrote nothing to it)."""
    from nightcore.untrusted import clean

    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read(TAIL_BYTES)
    except FileNotFoundError:
        return [], 0
    text = data.decode("utf-8", errors="replace")
    parts = text.split("\n")
    if parts and parts[-1] == "":
        parts.pop()
    if size > TAIL_BYTES and len(parts) > 1:
        parts = parts[1:]  # the first line read is cut
    return [clean(line.rstrip("\r"), 400) for line in parts[-lines:]], size


def run_details(ctx: NodeContext, run: str, *, tail_lines: int = TAIL_LINES) -> dict[str, Any]:
    """What ``nightcore runs show`` prints of one run (``run``: its id or a unique prefix):
    outcome, exit code, limits against usage, the tenant's grants, stream tails (cleaned),
    the attestation file's sha256 and whether it verifies with the node key, the audit seq.

    Read-only: the run's files under ``state/runs/<run-id>/`` and its run index row. Limits,
    grants and the outcome detail come from the signed attestation; a run whose attestation
    does not verify shows the index row and says why under ``attestation.error``.
    """
    import hashlib

    from nightcore.errors import NightCoreError
    from nightcore.evidence.attestation import ATTESTATION_FILE, open_attestation
    from nightcore.store.index import RunIndex
    from nightcore.trust.pubkey import PublicKey

    run_id = resolve_run_id(ctx, run)
    run_dir = ctx.layout.run_dir(run_id)
    row: dict[str, Any] | None = None
    index_error: str | None = None
    index = RunIndex(ctx.layout.index_db)
    try:
        row = index.get(run_id)
    except NightCoreError as exc:
        index_error = f"{exc.code}: {exc}"
    finally:
        index.close()
    pred: dict[str, Any] = {}
    att: dict[str, Any] = {"path": str(run_dir / ATTESTATION_FILE), "sha256": None}
    try:
        from nightcore.module.package import read_capped

        data = read_capped(run_dir / ATTESTATION_FILE, ATTESTATION_CAP, "attestation")
        att["sha256"] = hashlib.sha256(data).hexdigest()
        node_key = PublicKey.from_pem(ctx.node_public_pem())
        pred = open_attestation(data, node_key)["predicate"]
        if pred.get("run_id") != run_id:
            raise NightCoreError("the attestation names another run", code="ATTESTATION_INVALID")
        att["verified"], att["error"] = True, None
    except (NightCoreError, OSError) as exc:
        pred = {}
        code = getattr(exc, "code", "IO_ERROR")
        att["verified"], att["error"] = False, f"{code}: {exc}"
    r = row or {}
    outcome: dict[str, Any] = _dict(pred.get("outcome"))
    limits: dict[str, Any] = _dict(pred.get("limits"))
    wall_us = pred.get("wall_us")
    streams = {}
    for name in STREAMS:
        lines, size = _tail(run_dir / name, tail_lines)
        streams[name] = {"bytes": size, "tail": lines}
    return {
        "run_id": run_id,
        "tenant": r.get("tenant", pred.get("tenant")),
        "code": r.get("code", outcome.get("code")),
        "detail": outcome.get("detail"),
        "exit_code": r.get("exit_code", outcome.get("exit_code")),
        "ts": r.get("ts"),
        "audit_seq": r.get("audit_seq", pred.get("audit_seq")),
        "key_id": r.get("key_id", pred.get("signer_key_id")),
        "module_sha256": r.get("module_sha256"),
        "limits": {k: limits.get(k) for k in ("fuel", "wall_ms", "memory_bytes", "output_bytes")},
        "usage": {
            "fuel": r.get("fuel_used", pred.get("fuel_used")),
            "wall_ms": r.get(
                "wall_ms", wall_us / 1000 if isinstance(wall_us, int | float) else None
            ),
            "memory_bytes": r.get("memory_bytes", pred.get("memory_bytes")),
            "output_bytes": r.get("output_bytes", pred.get("output_bytes")),
        },
        "grants": pred.get("capabilities"),
        # None for a run attested before the isolation was recorded (or unverified).
        "isolation": _dict(pred.get("isolation")) or None,
        "streams": streams,
        "attestation": att,
        "indexed": row is not None,
        "index_error": index_error,
    }


def stream_tail(ctx: NodeContext, run_id: str, stream: str = "stderr", lines: int = 1) -> list[str]:
    """The last ``lines`` lines a run wrote to ``stream``, each cleaned of control characters
    (``[]`` when it wrote nothing). Read-only."""
    from nightcore.errors import UsageError

    if stream not in STREAMS:
        raise UsageError(f"no stream {stream!r}: stdout or stderr")
    return _tail(ctx.layout.run_dir(resolve_run_id(ctx, run_id)) / stream, lines)[0]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def run_log(
    ctx: NodeContext, run: str, stream: str = "stdout", *, cap: int = LOG_CAP
) -> tuple[str, bytes, int]:
    """``(run_id, bytes, size)``: the raw bytes a run wrote to ``stream`` (``stdout`` or
    ``stderr``; at most ``cap`` of them: the first ``cap`` bytes when ``size`` is larger).
    Empty when the run wrote nothing to it. Read-only; the bytes are the tenant's, uncleaned."""
    from nightcore.errors import UsageError

    if stream not in STREAMS:
        raise UsageError(f"no stream {stream!r}: stdout or stderr")
    run_id = resolve_run_id(ctx, run)
    path = ctx.layout.run_dir(run_id) / stream
    try:
        with open_regular(path) as f:
            return run_id, f.read(cap), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return run_id, b"", 0


def follow_run_log(
    ctx: NodeContext, run: str, stream: str = "stdout", *, poll_s: float = 0.1
) -> Iterator[bytes]:
    """``nightcore logs --follow``: the bytes a run writes to ``stream``, as they come.

    A run in progress in this workspace (in process or on a node's worker) has its output
    copied to ``state/live/<run_id>.<stream>``; that file is read until the run's own output
    files are written and the live file is removed, which ends the stream (everything was
    written to it before it was closed). A run that already ended is read from its files.
    A strongbox run's output is seen only when it ends (its worker cannot reach ``state/``).
    """
    import os
    import time

    from nightcore.errors import UsageError

    if stream not in STREAMS:
        raise UsageError(f"no stream {stream!r}: stdout or stderr")
    run_id = resolve_run_id(ctx, run, in_progress=True)
    live = ctx.layout.live_output(run_id, stream)
    try:
        fh = open_regular(live, follow=False)  # a FIFO planted there: refused, not waited on
    except FileNotFoundError:
        yield run_log(ctx, run_id, stream)[1]  # ended already (or never had a live view)
        return
    with fh:
        fd = fh.fileno()
        while True:
            # Checked before reading: no byte comes after either (the sandbox closed the live
            # file before the run's own files were written and the live file removed).
            ended = not live.exists() or (ctx.layout.run_dir(run_id) / "stdout").exists()
            while chunk := os.read(fd, 1 << 16):
                yield chunk
            if ended:
                return
            time.sleep(poll_s)  # a person's tail -f: polls the file, as tail does


def rebuild_index(ctx: NodeContext) -> int:
    """Rebuild the run index from the audit log (after verifying the chain)."""
    from nightcore.runner.pipeline import rebuild_index as rebuild

    return rebuild(ctx)


def checkpoint_if_due(ctx: NodeContext) -> None:
    """Sign a checkpoint when ``[audit] checkpoint_every`` lines went by without one.

    Cheap when nothing is due (it counts new lines). A node whose key cannot sign C2SP notes
    (only Ed25519 and ECDSA P-256 can: a P-384 key) keeps its hash chain and Merkle tree and
    skips this; any other failure (a tampered log) is raised.
    """
    from nightcore.errors import NightCoreError

    try:
        ctx.transparency_log().maybe_checkpoint(ctx.config.checkpoint_every)
    except NightCoreError as exc:
        if exc.code != "CHECKPOINT_UNSUPPORTED_KEY":
            raise
