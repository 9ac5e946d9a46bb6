"""Everything the report shows, read from a workspace: :func:`collect` -> :class:`Snapshot`.

This module does the reading; :mod:`nightcore.dashboard.views` shapes what was read into the
views the templates and the JSON API show. Read-only: the audit log (one streaming pass,
:mod:`nightcore.dashboard.scan`), the SQLite run index opened ``mode=ro`` (aggregates and chart
series; the audit log stays authoritative for each tenant's latest state), ``cordons.json``,
the trust registry and revocation list, the latest signed checkpoint, and for the rows shown,
each tenant's ``manifest.toml`` description and the start of its last run's stdout. Every path
comes from the workspace's :class:`~nightcore.layout.Layout`. A section that cannot be read
shows its error; the report still renders.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import sqlite3
import tomllib
from pathlib import Path
from typing import Any, Literal

from nightcore.context import NodeContext
from nightcore.dashboard import text
from nightcore.dashboard.scan import AuditScanner, Boundary
from nightcore.dashboard.views import (
    CHART_POINTS,
    LIST_CAP,
    RECENT_RUNS,
    AufsView,
    CheckpointView,
    IndexRows,
    KeyView,
    NodeView,
    RevocationView,
    Snapshot,
    TrustView,
    VerifyView,
    _str,
    audit_view,
    chart_tenants,
    cordon_views,
    diff_view,
    event_views,
    invalid_views,
    now_ts,
    problems_first,
    quick_verify,
    run_views,
    runs_view,
    tenant_views,
    verdict_counts,
)
from nightcore.dashboard_defaults import MAX_ROWS, VERIFY_MODES
from nightcore.errors import NightCoreError, UsageError
from nightcore.fsio import open_regular, read_regular_capped

VerifyMode = Literal["auto", "full", "quick", "none"]

# ``auto`` runs the full verification (tlog.verify_log, ~20 ms/MB) up to this log size.
FULL_VERIFY_MAX_BYTES = 16 * 1024 * 1024
RUN_ID_RE = re.compile(r"[0-9]{8}T[0-9]{12}-[a-z0-9][a-z0-9._-]{0,62}-[0-9a-f]{8}")
TENANT_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
OUTPUT_PREVIEW_BYTES = 4096
MANIFEST_CAP = 64 * 1024
# The scan state is saved for the next refresh once it gets this many lines further.
STATE_SAVE_LINES = 64


# -- node, checkpoint, files -----------------------------------------------------------------


def parse_since(value: str) -> Boundary:
    """``--diff SINCE``: a checkpoint size (a non-negative integer) or an ISO 8601 time."""
    v = value.strip()
    if v.isdigit() and len(v) <= 20:
        return Boundary(label=f"since audit line {int(v):,}", seq=int(v))
    try:
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--diff wants a checkpoint size or an ISO 8601 time, not {text.clean(v, 60)!r}"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    t = t.astimezone(dt.UTC)
    stamp = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return Boundary(label=f"since {t.strftime('%Y-%m-%d %H:%M:%SZ')}", ts=stamp.encode())


def versions() -> dict[str, str]:
    from nightcore.versions import installed_version

    def v(dist: str) -> str:
        # importlib.metadata.version(), without its ~20 ms import on every report refresh.
        return installed_version(dist) or "not installed"

    return {
        "nightcore": v("nightcore"),
        "wasmtime": v("wasmtime"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def node_view(ws: NodeContext) -> NodeView:
    try:
        key_id = ws.node_key_id()
    except NightCoreError:
        key_id = ""
    return NodeView(
        name=ws.config.node_name,
        key_id=key_id,
        origin=f"nightcore/{key_id[:16]}" if key_id else "",
        fips=ws.policy.fips,
        versions=versions(),
    )


def _err(exc: BaseException) -> str:
    if isinstance(exc, NightCoreError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def latest_checkpoint(ws: NodeContext) -> tuple[CheckpointView | None, str | None]:
    """The latest signed checkpoint, its signature verified with ``node.pub.pem``.

    Uses the transparency log's public API; if that is unavailable, reads ``audit.tail``
    and shows it as unverified.
    """
    try:
        from nightcore.audit import tlog

        cp = tlog.TransparencyLog(ws.layout).latest_checkpoint()
    except (ImportError, AttributeError):
        return _tail_unverified(ws), None
    except NightCoreError as exc:
        return None, _err(exc)
    if cp is None:
        return None, None
    names = getattr(cp, "key_names", ())
    return (
        CheckpointView(
            size=int(cp.size),
            root=bytes(cp.root).hex(),
            origin=str(cp.origin),
            key_name=str(names[0]) if names else "",
            verified=True,
            note=bytes(cp.note).decode("utf-8", "replace"),
        ),
        None,
    )


def _tail_unverified(ws: NodeContext) -> CheckpointView | None:
    import base64
    import binascii

    try:
        with open_regular(ws.layout.audit_tail) as fh:
            data = fh.read(64 * 1024)
    except OSError:
        return None
    lines = data.decode("utf-8", "replace").split("\n")
    if len(lines) < 3 or not lines[1].isdigit():
        return None
    try:
        root = base64.b64decode(lines[2], validate=True).hex()
    except (ValueError, binascii.Error):
        root = ""
    return CheckpointView(int(lines[1]), root, lines[0], "", False, data.decode("utf-8", "replace"))


def _read_prefix(path: Path, cap: int) -> bytes | None:
    """At most ``cap`` bytes of a regular file, never following a symlink."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, cap)
    except OSError:
        return None
    finally:
        os.close(fd)


def manifest_description(ws: NodeContext, tenant: str) -> str:
    if not TENANT_ID_RE.fullmatch(tenant):
        return ""
    data = _read_prefix(ws.layout.tenant_dir(tenant) / "manifest.toml", MANIFEST_CAP + 1)
    if not data or len(data) > MANIFEST_CAP:
        return ""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    return text.clean(doc.get("description", ""), 160)


def output_preview(ws: NodeContext, run_id: str) -> str:
    """The start of a run's stdout, for display (run ids from the log are validated first:
    they become a path)."""
    if not RUN_ID_RE.fullmatch(run_id):
        return ""
    data = _read_prefix(ws.layout.run_dir(run_id) / "stdout", OUTPUT_PREVIEW_BYTES)
    if not data:
        return ""
    return text.clean_block(data.decode("utf-8", "replace"), 160).rstrip()


# -- the run index (read-only) ---------------------------------------------------------------


def _index_connect(ws: NodeContext) -> sqlite3.Connection | None:
    path = ws.layout.index_db
    if not path.is_file():
        return None
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2)
    conn.execute("PRAGMA query_only = 1")
    return conn


def query_runs_ro(ws: NodeContext, tenant: str | None, limit: int) -> list[dict[str, Any]] | None:
    """Most recent runs from the index, read-only (None without an index)."""
    from nightcore.store.index import recent_runs

    conn = _index_connect(ws)
    if conn is None:
        return None
    try:
        return recent_runs(conn, tenant, limit)
    finally:
        conn.close()


def index_rows(
    ws: NodeContext, names: list[str], points: int, boundary: int | None
) -> tuple[IndexRows | None, str | None]:
    """Run counts, chart rows of ``names`` and (with a ``--diff`` boundary) counts since it,
    from the run index; ``(None, why)`` if it cannot be read, ``(None, None)`` if absent."""
    try:
        conn = _index_connect(ws)
    except sqlite3.Error as exc:
        return None, f"run index unreadable ({exc})"
    if conn is None:
        return None, None
    try:
        total = int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
        counts = conn.execute(
            "SELECT code, COUNT(*) FROM runs GROUP BY code ORDER BY 2 DESC, 1"
        ).fetchall()
        series = {}
        for name in names:
            rows = conn.execute(
                "SELECT ts, wall_ms, fuel_used, code FROM runs WHERE tenant = ? "
                "ORDER BY audit_seq DESC LIMIT ?",
                (name, points),
            ).fetchall()
            series[name] = list(reversed(rows))
        since = None
        if boundary is not None:
            since = conn.execute(
                "SELECT code, COUNT(*) FROM runs WHERE audit_seq >= ? "
                "GROUP BY code ORDER BY 2 DESC, 1",
                (boundary,),
            ).fetchall()
    except sqlite3.Error as exc:
        return None, f"run index unreadable ({exc})"
    finally:
        conn.close()
    return IndexRows(total, counts, series, since), None


# -- trust and updates -----------------------------------------------------------------------


def _trust(ws: NodeContext) -> TrustView:
    keys: list[KeyView] = []
    keys_error = None
    registry: Any = None
    try:
        import datetime as dt

        from nightcore.trustops import KEY_AGE_WARN_DAYS

        now = dt.datetime.now(dt.UTC)
        registry = ws.load_registry()
        for k in registry.keys:
            age = max((now - k.added).days, 0)
            keys.append(
                KeyView(
                    key_id=k.key_id,
                    name=k.name,
                    role=k.role,
                    scope=k.scope,
                    scheme=str(k.key.scheme),
                    expires=k.expires.strftime("%Y-%m-%d %H:%M:%SZ") if k.expires else "",
                    age_days=age,
                    age_warn=age > KEY_AGE_WARN_DAYS,
                )
            )
    except NightCoreError as exc:
        keys_error = _err(exc)
    view = TrustView(keys[:LIST_CAP], keys_error, 0, "", "", [], 0, None)
    if registry is None:
        view.revocations_error = "not checked: the key registry could not be read"
        return view
    try:
        rl = ws.load_revocations(registry)
    except NightCoreError as exc:
        view.revocations_error = _err(exc)
        return view
    view.revocations_version = int(rl.version)
    view.revocations_issued = str(rl.issued)
    view.revocations_signer = str(rl.signer)
    revoked = [RevocationView("key", r.subject, r.reason, r.revoked_at) for r in rl.keys] + [
        RevocationView("module", r.subject, r.reason, r.revoked_at) for r in rl.modules
    ]
    view.revoked_total = len(revoked)
    view.revoked = revoked[:LIST_CAP]
    return view


# -- updates (AUFS) --------------------------------------------------------------------------


def _version_of(entry: object) -> str:
    if isinstance(entry, dict):
        return _str(entry.get("version"), 64)
    return ""


def aufs_view(ws: NodeContext) -> AufsView:
    """TUF metadata versions and installed versions, if this node uses AUFS (read-only)."""
    if not ws.layout.aufs_trusted_root.exists():
        # is_initialized(NodePaths(ws).metadata), without importing the AUFS layer on every
        # report refresh of a node that does not use it.
        return AufsView("not configured")
    try:
        from nightcore.aufs.state import NodePaths, is_initialized, load_state, trusted_versions
    except ImportError:
        return AufsView("not configured")
    try:
        paths = NodePaths(ws)
        if not is_initialized(paths.metadata):
            return AufsView("not configured")
        versions = {str(k): int(v) for k, v in trusted_versions(paths.metadata).items()}
        state = load_state(paths)
    except NightCoreError as exc:
        return AufsView("error", error=_err(exc))
    except (AttributeError, OSError, TypeError, ValueError) as exc:
        return AufsView("error", error=f"{type(exc).__name__}: {exc}")
    view = AufsView("configured", metadata_versions=versions)
    view.runtime = _version_of(state.get("runtime"))
    trust = state.get("trust")
    if isinstance(trust, dict):
        view.trust = {str(k): _version_of(v) for k, v in trust.items()}
    tenants = state.get("tenants")
    if isinstance(tenants, dict):
        view.tenants_total = len(tenants)
        view.tenants = sorted((str(t), _version_of(v)) for t, v in tenants.items())[:LIST_CAP]
    return view


# -- verification and the scanner -------------------------------------------------------------


def full_verify(ws: NodeContext) -> VerifyView:
    """``nightcore audit verify`` without writing anything (``tlog.verify_log``)."""
    import time

    start = time.perf_counter()
    audit_dir = ws.layout.audit_dir
    try:
        pem: bytes | None = read_regular_capped(ws.layout.node_pub_path, 64 * 1024)
    except OSError:
        pem = None
    try:
        from nightcore.audit.verify import verify_log
    except ImportError:  # pragma: no cover - the transparency log is being reworked
        return _chain_only(ws, start)
    report = verify_log(audit_dir, pem)
    checks = [
        f"hash chain and canonical form of {report.entries:,} lines",
        f"Merkle tree and {report.checkpoints} signed checkpoint(s)",
    ]
    return VerifyView(
        mode="full",
        ok=bool(report.ok),
        entries=int(report.entries),
        code=report.code,
        message=report.message,
        seq=report.seq,
        checks=checks,
        warnings=[str(w) for w in report.warnings],
        at=now_ts(),
        seconds=time.perf_counter() - start,
    )


def _chain_only(ws: NodeContext, start: float) -> VerifyView:  # pragma: no cover - fallback
    import time

    from nightcore.audit.log import verify_chain
    from nightcore.errors import AuditError

    try:
        rep = verify_chain(ws.audit().iter_lines())
    except AuditError as exc:
        return VerifyView("full", False, 0, exc.code, exc.message, at=now_ts())
    return VerifyView(
        "full",
        True,
        rep.entries,
        checks=[f"hash chain of {rep.entries:,} lines"],
        at=now_ts(),
        seconds=time.perf_counter() - start,
    )


def _keep_state(ws: NodeContext, scanner: AuditScanner) -> None:
    """Save the scan's snapshot for the next refresh (see :mod:`nightcore.dashboard.scancache`)
    once it is :data:`STATE_SAVE_LINES` further than the one it started from: until then,
    re-reading those few lines costs less than writing the state after every run."""
    snap = scanner.snapshot
    if snap is None:
        return
    if scanner.resumed_at is not None:
        hashed, was_hashed = snap["hashed"] is not None, scanner.resumed_hashed
        if was_hashed and not hashed:
            return  # a `none`/`full` refresh would leave the next quick check a whole log
        if hashed == was_hashed and snap["count"] - scanner.resumed_at < STATE_SAVE_LINES:
            return
    from nightcore.dashboard import scancache

    scancache.save(ws, snap)


def new_scanner(
    ws: NodeContext,
    mode: str,
    cp: CheckpointView | None,
    since: Boundary | None = None,
    recent_runs: int = RECENT_RUNS,
) -> AuditScanner:
    quick = mode == "quick"
    start = cp.size if cp is not None and cp.verified else 0
    return AuditScanner(
        ws.layout.audit_log,
        chain=quick,
        merkle=quick,
        chain_from=start,
        merkle_sizes=[start] if start else [],
        since=since,
        recent_runs=max(recent_runs, 1),
        snapshot_at=start if start and since is None else None,
    )


def resolve_mode(ws: NodeContext, verify: str) -> str:
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify mode must be one of {', '.join(VERIFY_MODES)}")
    if verify != "auto":
        return verify
    try:
        size = ws.layout.audit_log.stat().st_size
    except OSError:
        size = 0
    return "full" if size <= FULL_VERIFY_MAX_BYTES else "quick"


def _read_log(
    ws: NodeContext,
    scanner: AuditScanner | None,
    mode: str,
    cp: CheckpointView | None,
    since: Boundary | None,
    recent_runs: int,
    warnings: list[str],
) -> AuditScanner:
    """Bring ``scanner`` up to date with the log; with None, a new one (resumed from the scan
    cache when it can be). Checks a ``--diff`` boundary against the lines read."""
    if scanner is None:
        scanner = new_scanner(ws, mode, cp, since, recent_runs)
        if scanner.snapshot_at is not None:
            from nightcore.dashboard import scancache

            state = scancache.load(ws)
            if state is not None:
                scanner.resume(state)
    scanner.update()
    if since is not None:
        if since.seq is not None and since.seq > scanner.count:
            raise UsageError(
                f"--diff {since.seq}: the audit log has only {scanner.count:,} lines",
            )
        scanner.finish()
    if scanner.resets:
        warnings.append(
            "the audit log changed under the console (replaced, truncated or a torn tail "
            "recovered) and was re-read"
        )
    return scanner


def _verify(
    ws: NodeContext, mode: str, scanner: AuditScanner, cp: CheckpointView | None
) -> VerifyView:
    """The audit check ``mode`` asks for: ``full``, ``quick`` (from the scan) or ``none``."""
    if mode == "full":
        return full_verify(ws)
    if mode == "quick":
        return quick_verify(scanner, cp)
    return VerifyView(mode="none", ok=None, entries=scanner.count, at=now_ts())


def collect(
    ws: NodeContext,
    *,
    diff_since: str | None = None,
    verify: str = "auto",
    max_rows: int = MAX_ROWS,
    scanner: AuditScanner | None = None,
    verify_view: VerifyView | None = None,
    checkpoint: tuple[CheckpointView | None, str | None] | None = None,
    recent_runs: int = RECENT_RUNS,
) -> Snapshot:
    """Read the workspace. With ``scanner`` (the live console's, kept between calls) only
    what was appended since is read; otherwise the log is scanned once here."""
    warnings: list[str] = []
    node = node_view(ws)
    cp, cp_error = checkpoint if checkpoint is not None else latest_checkpoint(ws)
    since = parse_since(diff_since) if diff_since is not None else None
    mode = resolve_mode(ws, verify) if scanner is None else "quick"
    one_shot = scanner is None
    scanner = _read_log(ws, scanner, mode, cp, since, recent_runs, warnings)

    # Verification.
    if verify_view is None:
        verify_view = _verify(ws, mode, scanner, cp)
    if cp is not None:
        cp.behind = max(0, scanner.count - cp.size)
    if one_shot and verify_view.ok is not False:
        _keep_state(ws, scanner)

    # Tenants: every package directory with a valid name, and every tenant in the log.
    from nightcore.module.package import discover

    try:
        dirs = discover(ws.layout.modules_dir)
    except OSError as exc:
        dirs = []
        warnings.append(f"modules/ could not be listed: {exc.strerror}")
    modules = {d for d in dirs if TENANT_ID_RE.fullmatch(d)}
    by_name = tenant_views(scanner, modules)
    cordons_error = None
    try:
        from nightcore.runner.cordon import load_cordons

        cordons = cordon_views(load_cordons(ws.layout), by_name)
    except NightCoreError as exc:
        cordons, cordons_error = [], _err(exc)
    tenants = sorted(by_name.values(), key=lambda t: t.name)
    ordered = problems_first(tenants)
    shown = ordered[: max(0, max_rows)]
    for t in shown:
        if t.present:
            t.description = manifest_description(ws, t.name)
        if t.last_run is not None:
            t.output_preview = output_preview(ws, t.last_run.run_id)

    # Runs: the recent ones from the log, counts and chart series from the index.
    recent = run_views(list(scanner.runs)[-recent_runs:])
    names = chart_tenants(recent)
    index, index_error = index_rows(ws, names, CHART_POINTS, scanner.boundary_count)
    runs, since_counts = runs_view(recent, scanner.run_outcomes, names, index, index_error)

    diff = None
    if since is not None:
        diff = diff_view(scanner, by_name, modules, since.label, since_counts)
        if since.seq is not None and cp is not None and since.seq == cp.size:
            diff.label = f"since signed checkpoint {since.seq:,}"

    return Snapshot(
        generated=now_ts(),
        node=node,
        tenants=tenants,
        shown=shown,
        hidden=len(tenants) - len(shown),
        hidden_attention=sum(1 for t in ordered[len(shown) :] if t.attention),
        verdict_counts=verdict_counts(tenants),
        runs=runs,
        audit=audit_view(scanner, cp, cp_error, verify_view),
        trust=_trust(ws),
        cordons=cordons,
        cordons_error=cordons_error,
        cordon_events=event_views(reversed(scanner.cordon_events)),
        invalid=invalid_views([d for d in dirs if d not in modules], reversed(scanner.invalid)),
        diff=diff,
        warnings=warnings,
        aufs=aufs_view(ws),
    )
