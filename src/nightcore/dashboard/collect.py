"""Everything the report shows, read from a workspace: :func:`collect` -> :class:`Snapshot`.

Read-only: the audit log (one streaming pass, :mod:`nightcore.dashboard.scan`), the SQLite run
index opened ``mode=ro`` (aggregates and chart series; the audit log stays authoritative for
each tenant's latest state), ``state/cordons.json``, the trust registry and revocation list,
the latest signed checkpoint, and for the rows shown, each tenant's ``manifest.toml``
description and the start of its last run's stdout. A section that cannot be read shows its
error; the report still renders.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import sqlite3
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nightcore.dashboard import text
from nightcore.dashboard.scan import (
    DECISION,
    FIRST_TS,
    OUTCOME,
    RUNS,
    AuditScanner,
    Boundary,
    loads,
)
from nightcore.dashboard_defaults import MAX_ROWS, VERIFY_MODES
from nightcore.errors import NightCoreError, UsageError
from nightcore.workspace import Workspace

VerifyMode = Literal["auto", "full", "quick", "none"]

# ``auto`` runs the full verification (tlog.verify_log, ~20 ms/MB) up to this log size.
FULL_VERIFY_MAX_BYTES = 16 * 1024 * 1024
RECENT_RUNS = 100
CHART_TENANTS = 6
CHART_POINTS = 60
LIST_CAP = 200
LIMIT_KEYS = ("fuel", "wall_ms", "memory_bytes", "output_bytes")
RUN_ID_RE = re.compile(r"[0-9]{8}T[0-9]{12}-[a-z0-9][a-z0-9._-]{0,62}-[0-9a-f]{8}")
TENANT_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
OUTPUT_PREVIEW_BYTES = 4096
MANIFEST_CAP = 64 * 1024
# The scan state is saved for the next refresh once it gets this many lines further.
STATE_SAVE_LINES = 64


def _int(v: object) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: object, limit: int = 500) -> str:
    return v[:limit] if isinstance(v, str) else ""


def code_class(code: str) -> str:
    """CSS class of a verdict/outcome code: ok, warn (cordoned), muted (nothing yet), bad."""
    if code == "OK":
        return "ok"
    if code == "CORDONED":
        return "warn"
    if code in ("", "NOT_VERIFIED", "NO_RUNS"):
        return "muted"
    return "bad"


# -- views -----------------------------------------------------------------------------------


@dataclass
class RunView:
    run_id: str
    tenant: str
    code: str
    exit_code: int | None
    fuel_used: int | None
    wall_ms: float | None
    memory_bytes: int | None
    output_bytes: int | None
    output_truncated: bool
    detail: str
    ts: str
    seq: int | None
    key_id: str
    module_sha256: str
    limits: dict[str, int]

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> RunView:
        d = rec["data"]
        wall_us = _int(d.get("wall_us"))
        wall_ms = d.get("wall_ms")  # logs written before wall_us existed
        if wall_us is None and isinstance(wall_ms, int | float) and not isinstance(wall_ms, bool):
            wall_us = round(wall_ms * 1000)
        limits = d.get("limits") if isinstance(d.get("limits"), dict) else {}
        assert isinstance(limits, dict)
        return cls(
            run_id=_str(d.get("run_id"), 200),
            tenant=_str(rec.get("tenant"), 200),
            code=_str(d.get("code"), 64) or "?",
            exit_code=_int(d.get("exit_code")),
            fuel_used=_int(d.get("fuel_used")),
            wall_ms=wall_us / 1000 if wall_us is not None else None,
            memory_bytes=_int(d.get("memory_bytes")),
            output_bytes=_int(d.get("output_bytes")),
            output_truncated=d.get("output_truncated") is True,
            detail=_str(d.get("detail")),
            ts=_str(rec.get("ts"), 40),
            seq=_int(rec.get("seq")),
            key_id=_str(d.get("key_id"), 64),
            module_sha256=_str(d.get("module_sha256"), 64),
            limits={k: v for k, v in limits.items() if isinstance(k, str) and _int(v) is not None},
        )

    def usage(self) -> list[tuple[str, str, float | None, str]]:
        """(label, "used / limit" text, fraction of the limit or None, css class) per limit."""
        out: list[tuple[str, str, float | None, str]] = []
        pairs = (
            ("fuel", self.fuel_used, "fuel", text.num),
            ("time", self.wall_ms, "wall_ms", text.millis),
            ("memory", self.memory_bytes, "memory_bytes", text.size),
            ("output", self.output_bytes, "output_bytes", text.size),
        )
        for label, used, key, fmt in pairs:
            limit = self.limits.get(key)
            if used is None:
                out.append((label, "-", None, "muted"))
                continue
            if not limit:
                out.append((label, fmt(used), None, "muted"))
                continue
            frac = min(float(used) / float(limit), 1.0)
            cls = "bad" if used >= limit else "warn" if frac >= 0.8 else "ok"
            out.append((label, f"{fmt(used)} / {fmt(limit)}", frac, cls))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "tenant": self.tenant,
            "code": self.code,
            "exit_code": self.exit_code,
            "fuel_used": self.fuel_used,
            "wall_ms": self.wall_ms,
            "memory_bytes": self.memory_bytes,
            "output_bytes": self.output_bytes,
            "output_truncated": self.output_truncated,
            "detail": self.detail,
            "ts": self.ts,
            "audit_seq": self.seq,
            "key_id": self.key_id,
            "module_sha256": self.module_sha256,
            "limits": self.limits,
        }


@dataclass
class TenantView:
    name: str
    present: bool  # a package directory exists under modules/
    verdict: str = "NOT_VERIFIED"
    verdict_reason: str = ""
    verdict_event: str = ""
    verdict_ts: str = ""
    key_id: str = ""
    module_sha256: str = ""
    runs: int = 0
    last_run: RunView | None = None
    limits: dict[str, int] = field(default_factory=dict)
    cordoned: bool = False
    cordon_reason: str = ""
    first_seen: str = ""
    description: str = ""
    output_preview: str = ""

    @property
    def last_code(self) -> str:
        return self.last_run.code if self.last_run else "NO_RUNS"

    @property
    def attention(self) -> bool:
        return (
            self.cordoned
            or code_class(self.verdict) in ("bad", "warn")
            or code_class(self.last_code) in ("bad", "warn")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.name,
            "present": self.present,
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "verdict_event": self.verdict_event,
            "verdict_ts": self.verdict_ts,
            "key_id": self.key_id,
            "module_sha256": self.module_sha256,
            "runs": self.runs,
            "last_run": self.last_run.to_dict() if self.last_run else None,
            "limits": self.limits,
            "cordoned": self.cordoned,
            "cordon_reason": self.cordon_reason,
            "first_seen": self.first_seen,
            "attention": self.attention,
        }


@dataclass
class EventView:
    seq: int | None
    ts: str
    event: str
    tenant: str
    summary: str
    actor: str = ""


@dataclass
class CheckpointView:
    size: int
    root: str
    origin: str
    key_name: str
    verified: bool  # signature checked with the node's public key
    note: str
    behind: int = 0  # log lines not yet covered


@dataclass
class VerifyView:
    mode: str  # full | quick | none
    ok: bool | None
    entries: int
    code: str | None = None
    message: str | None = None
    seq: int | None = None
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    at: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "ok": self.ok,
            "entries": self.entries,
            "code": self.code,
            "error": self.message,
            "seq": self.seq,
            "checks": self.checks,
            "warnings": self.warnings,
            "at": self.at,
        }


@dataclass
class AuditView:
    entries: int
    size_bytes: int
    head: str
    torn_bytes: int
    event_counts: list[tuple[str, int]]
    checkpoint: CheckpointView | None
    checkpoint_error: str | None
    checkpoint_events: int
    verify: VerifyView
    recent: list[EventView]
    last_full: VerifyView | None = None  # the console's latest on-demand full verification


@dataclass
class RunsView:
    recent: list[RunView]
    total: int  # run outcomes in the audit log
    outcome_counts: list[tuple[str, int]]
    source: str  # where the counts and chart series come from
    index_total: int | None
    index_note: str | None
    series: dict[str, list[tuple[dt.datetime, float, float, str]]]  # tenant -> (t, wall, fuel)


@dataclass
class KeyView:
    key_id: str
    name: str
    role: str
    scope: str
    scheme: str
    expires: str


@dataclass
class RevocationView:
    kind: str  # key | module
    subject: str
    reason: str
    revoked_at: str


@dataclass
class TrustView:
    keys: list[KeyView]
    keys_error: str | None
    revocations_version: int
    revocations_issued: str
    revocations_signer: str
    revoked: list[RevocationView]
    revoked_total: int
    revocations_error: str | None


@dataclass
class CordonView:
    tenant: str
    reason: str
    ts: str


@dataclass
class InvalidView:
    name: str  # the directory name as found (untrusted), or "" if only its hash is known
    code: str
    reason: str
    ts: str
    name_sha256: str


@dataclass
class DiffView:
    label: str
    boundary: int  # lines before the boundary
    events_since: int
    runs_since: int
    outcomes_since: list[tuple[str, int]]
    new_tenants: list[str]
    removed_tenants: list[str]
    changed_digests: list[tuple[str, str, str]]
    changed_verdicts: list[tuple[str, str, str]]

    @property
    def empty(self) -> bool:
        return not (
            self.new_tenants
            or self.removed_tenants
            or self.changed_digests
            or self.changed_verdicts
        )


@dataclass
class AufsView:
    """The update channel (TUF): what this node trusts and has installed through it."""

    status: str  # "not configured" | "configured" | "error"
    metadata_versions: dict[str, int] = field(default_factory=dict)
    runtime: str = ""
    trust: dict[str, str] = field(default_factory=dict)  # registry / revocations -> version
    tenants: list[tuple[str, str]] = field(default_factory=list)  # (tenant, version)
    tenants_total: int = 0
    error: str = ""


@dataclass
class NodeView:
    name: str
    key_id: str
    origin: str
    fips: bool
    versions: dict[str, str]


@dataclass
class Snapshot:
    generated: str
    node: NodeView
    tenants: list[TenantView]  # every tenant, by name
    shown: list[TenantView]  # the rows the report shows (problems first), capped
    hidden: int
    hidden_attention: int
    verdict_counts: dict[str, int]
    runs: RunsView
    audit: AuditView
    trust: TrustView
    cordons: list[CordonView]
    cordons_error: str | None
    cordon_events: list[EventView]
    invalid: list[InvalidView]
    diff: DiffView | None
    warnings: list[str]
    aufs: AufsView = field(default_factory=lambda: AufsView("not configured"))

    def tenant(self, name: str) -> TenantView | None:
        for t in self.tenants:
            if t.name == name:
                return t
        return None


# -- helpers ---------------------------------------------------------------------------------


def now_ts() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


def node_view(ws: Workspace) -> NodeView:
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


def latest_checkpoint(ws: Workspace) -> tuple[CheckpointView | None, str | None]:
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


def _tail_unverified(ws: Workspace) -> CheckpointView | None:
    import base64
    import binascii

    try:
        with (ws.state_dir / "audit" / "audit.tail").open("rb") as fh:
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


def manifest_description(ws: Workspace, tenant: str) -> str:
    if not TENANT_ID_RE.fullmatch(tenant):
        return ""
    data = _read_prefix(ws.modules_dir / tenant / "manifest.toml", MANIFEST_CAP + 1)
    if not data or len(data) > MANIFEST_CAP:
        return ""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    return text.clean(doc.get("description", ""), 160)


def output_preview(ws: Workspace, run_id: str) -> str:
    """The start of a run's stdout, for display (run ids from the log are validated first:
    they become a path)."""
    if not RUN_ID_RE.fullmatch(run_id):
        return ""
    data = _read_prefix(ws.state_dir / "runs" / run_id / "stdout", OUTPUT_PREVIEW_BYTES)
    if not data:
        return ""
    return text.clean_block(data.decode("utf-8", "replace"), 160).rstrip()


def _summary(data: dict[str, Any], limit: int = 240) -> str:
    parts = []
    for k, v in data.items():
        if isinstance(v, str):
            shown = v[:12] + "…" if text.is_hex64(v) else v
        elif isinstance(v, dict):
            shown = "{…}" if v else "{}"
        elif isinstance(v, list):
            shown = "[…]" if v else "[]"
        elif type(v) is int:
            shown = str(v)  # what json.dumps gives, without its encoder set-up
        else:
            shown = json.dumps(v)
        parts.append(f"{k}={shown}")
    return text.clean(" ".join(parts), limit)


def event_view(line: bytes) -> EventView | None:
    rec = loads(line)
    if rec is None:
        return None
    d = rec["data"]
    return EventView(
        seq=_int(rec.get("seq")),
        ts=_str(rec.get("ts"), 40),
        event=_str(rec.get("event"), 64),
        tenant=_str(rec.get("tenant"), 200),
        summary=_summary(d),
        actor=_str(d.get("actor"), 100),
    )


# -- the run index (read-only) ---------------------------------------------------------------


def _index_connect(ws: Workspace) -> sqlite3.Connection | None:
    path = ws.state_dir / "nightcore.db"
    if not path.is_file():
        return None
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=2)
    conn.execute("PRAGMA query_only = 1")
    return conn


def query_runs_ro(ws: Workspace, tenant: str | None, limit: int) -> list[dict[str, Any]] | None:
    """Most recent runs from the index, read-only (None without an index)."""
    from nightcore.store.index import recent_runs

    conn = _index_connect(ws)
    if conn is None:
        return None
    try:
        return recent_runs(conn, tenant, limit)
    finally:
        conn.close()


def _runs_view(
    ws: Workspace, scanner: AuditScanner, recent: list[RunView], chart_tenants: int, points: int
) -> tuple[RunsView, list[tuple[str, int]] | None]:
    # Chart the tenants busiest among the recent runs (most recent first on ties).
    busy = Counter(r.tenant for r in recent)
    last_seen = {r.tenant: i for i, r in enumerate(recent)}
    names = sorted(busy, key=lambda t: (-busy[t], -last_seen[t], t))[:chart_tenants]
    series: dict[str, list[tuple[dt.datetime, float, float, str]]] = {}
    since_counts: list[tuple[str, int]] | None = None
    index_total: int | None = None
    note: str | None = None
    counts: list[tuple[str, int]] = []
    source = "index"
    try:
        conn = _index_connect(ws)
    except sqlite3.Error as exc:
        conn = None
        note = f"run index unreadable ({exc})"
    if conn is not None:
        try:
            index_total = int(conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
            counts = [
                (text.clean(c, 40), int(n))
                for c, n in conn.execute(
                    "SELECT code, COUNT(*) FROM runs GROUP BY code ORDER BY 2 DESC, 1"
                )
            ]
            for name in names:
                rows = conn.execute(
                    "SELECT ts, wall_ms, fuel_used, code FROM runs WHERE tenant = ? "
                    "ORDER BY audit_seq DESC LIMIT ?",
                    (name, points),
                ).fetchall()
                pts = []
                for ts, wall, fuel, code in reversed(rows):
                    t = text.parse_ts(ts)
                    if t is not None and isinstance(wall, int | float) and isinstance(fuel, int):
                        pts.append((t, float(wall), float(fuel), str(code)))
                series[name] = pts
            if scanner.boundary_count is not None:
                since_counts = [
                    (text.clean(c, 40), int(n))
                    for c, n in conn.execute(
                        "SELECT code, COUNT(*) FROM runs WHERE audit_seq >= ? "
                        "GROUP BY code ORDER BY 2 DESC, 1",
                        (scanner.boundary_count,),
                    )
                ]
        except sqlite3.Error as exc:
            note = f"run index unreadable ({exc})"
            index_total = None
        finally:
            conn.close()
    if index_total is None:
        source = f"the last {len(recent)} runs in the audit log"
        counts = sorted(Counter(r.code for r in recent).items(), key=lambda kv: (-kv[1], kv[0]))
        series = {}
        for name in names:
            pts = []
            for r in recent:
                t = text.parse_ts(r.ts)
                if r.tenant == name and t and r.wall_ms is not None and r.fuel_used is not None:
                    pts.append((t, r.wall_ms, float(r.fuel_used), r.code))
            series[name] = pts[-points:]
        if note is None:
            note = "no run index (state/nightcore.db); 'nightcore state rebuild' recreates it"
    elif index_total != scanner.run_outcomes:
        note = (
            f"the run index has {index_total:,} runs and the audit log {scanner.run_outcomes:,} "
            "run outcomes (a run in progress, or run 'nightcore state rebuild')"
        )
    view = RunsView(
        recent=recent,
        total=scanner.run_outcomes,
        outcome_counts=counts,
        source=source,
        index_total=index_total,
        index_note=note,
        series=series,
    )
    return view, since_counts


# -- tenants ---------------------------------------------------------------------------------


def _tenant_view(name: str, st: list[Any] | None, present: bool) -> TenantView:
    t = TenantView(name=name, present=present)
    if st is None:
        return t
    t.runs = int(st[RUNS])
    t.first_seen = bytes(st[FIRST_TS]).decode("utf-8", "replace")
    dec = loads(st[DECISION]) if st[DECISION] else None
    out = loads(st[OUTCOME]) if st[OUTCOME] else None
    if dec is not None:
        d = dec["data"]
        t.verdict = _str(d.get("code"), 64) or "?"
        t.verdict_reason = _str(d.get("reason"))
        t.verdict_event = _str(dec.get("event"), 64)
        t.verdict_ts = _str(dec.get("ts"), 40)
        t.key_id = _str(d.get("key_id"), 64)
        t.module_sha256 = _str(d.get("module_sha256"), 64)
        if isinstance(d.get("limits"), dict):
            t.limits = {k: v for k, v in d["limits"].items() if _int(v) is not None}
    if out is not None:
        t.last_run = RunView.from_record(out)
        if t.last_run.limits:
            t.limits = t.last_run.limits
        t.key_id = t.key_id or t.last_run.key_id
        t.module_sha256 = t.module_sha256 or t.last_run.module_sha256
    return t


def _clone(view: TenantView) -> TenantView:
    """A shallow copy (much cheaper than copy.copy): per-snapshot fields are set on it."""
    new = object.__new__(TenantView)
    new.__dict__.update(view.__dict__)
    return new


def _decision_of(line: bytes | None) -> tuple[str, str]:
    """(verdict code, module digest) of a decision line, for --diff."""
    rec = loads(line) if line else None
    if rec is None:
        return "", ""
    d = rec["data"]
    return _str(d.get("code"), 64), _str(d.get("module_sha256"), 64)


def _diff(
    scanner: AuditScanner,
    tenants: dict[str, TenantView],
    modules: set[str],
    label: str,
    since_counts: list[tuple[str, int]] | None,
) -> DiffView:
    before = scanner.before or {}
    boundary = scanner.boundary_count if scanner.boundary_count is not None else scanner.count
    before_names = {k.decode("utf-8", "replace") for k in before}
    new = sorted(n for n in tenants if n not in before_names)
    removed = sorted(n for n in before_names if n not in modules)
    digests: list[tuple[str, str, str]] = []
    verdicts: list[tuple[str, str, str]] = []
    for key, (dec_before, out_before) in before.items():
        name = key.decode("utf-8", "replace")
        now = tenants.get(name)
        st = scanner.tenants.get(key)
        if now is None or st is None:
            continue
        if st[DECISION] is dec_before and st[OUTCOME] is out_before:
            continue  # nothing about this tenant was logged since
        code_before, digest_before = _decision_of(dec_before)
        if not digest_before and out_before:
            rec = loads(out_before)
            digest_before = _str(rec["data"].get("module_sha256"), 64) if rec else ""
        if digest_before and now.module_sha256 and digest_before != now.module_sha256:
            digests.append((name, digest_before, now.module_sha256))
        if code_before and now.verdict not in ("NOT_VERIFIED", code_before):
            verdicts.append((name, code_before, now.verdict))
    return DiffView(
        label=label,
        boundary=boundary,
        events_since=scanner.count - boundary,
        runs_since=scanner.run_outcomes - scanner.boundary_runs,
        outcomes_since=since_counts or [],
        new_tenants=new[:LIST_CAP],
        removed_tenants=removed[:LIST_CAP],
        changed_digests=sorted(digests)[:LIST_CAP],
        changed_verdicts=sorted(verdicts)[:LIST_CAP],
    )


# -- trust -----------------------------------------------------------------------------------


def _trust(ws: Workspace) -> TrustView:
    keys: list[KeyView] = []
    keys_error = None
    registry: Any = None
    try:
        registry = ws.load_registry()
        for k in registry.keys:
            keys.append(
                KeyView(
                    key_id=k.key_id,
                    name=k.name,
                    role=k.role,
                    scope=k.scope,
                    scheme=str(k.key.scheme),
                    expires=k.expires.strftime("%Y-%m-%d %H:%M:%SZ") if k.expires else "",
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


def aufs_view(ws: Workspace) -> AufsView:
    """TUF metadata versions and installed versions, if this node uses AUFS (read-only)."""
    if not (ws.state_dir / "aufs" / "metadata" / "root.json").exists():
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


# -- verification ----------------------------------------------------------------------------


def full_verify(ws: Workspace) -> VerifyView:
    """``nightcore audit verify`` without writing anything (``tlog.verify_log``)."""
    import time

    start = time.perf_counter()
    audit_dir = ws.state_dir / "audit"
    try:
        pem: bytes | None = ws.node_pub_path.read_bytes()
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


def _chain_only(ws: Workspace, start: float) -> VerifyView:  # pragma: no cover - fallback
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


def quick_verify(scanner: AuditScanner, cp: CheckpointView | None) -> VerifyView:
    """What the scan itself established (see :mod:`nightcore.dashboard.scan`)."""
    v = VerifyView(mode="quick", ok=True, entries=scanner.count, at=now_ts())
    covered = 0
    if cp is not None and cp.verified:
        v.checks.append(f"checkpoint {cp.size:,} is signed by the node key")
        if cp.size > scanner.count:
            v.ok, v.code = False, "AUDIT_TRUNCATED"
            v.message = (
                f"the log has {scanner.count:,} lines but checkpoint {cp.size:,} was signed: "
                "lines were removed"
            )
            return v
        root = scanner.root_at(cp.size)
        if root is None:
            v.warnings.append(f"the Merkle root at size {cp.size:,} was not computed")
        elif root.hex() != cp.root:
            v.ok, v.code, v.seq = False, "CHECKPOINT_ROOT_MISMATCH", cp.size
            v.message = (
                f"the log's first {cp.size:,} lines do not have the root signed in checkpoint "
                f"{cp.size:,}: history was rewritten"
            )
            return v
        else:
            covered = cp.size
            v.checks.append(f"Merkle root of lines 0..{cp.size - 1:,} equals the signed root")
    elif cp is not None:
        v.warnings.append("the latest checkpoint's signature could not be checked")
    bad = scanner.checkpoint_mismatch
    if bad is not None:
        v.ok, v.code, v.seq = False, "CHECKPOINT_EVENT_MISMATCH", bad.seq
        v.message = f"checkpoint event at line {bad.seq}: its root is not the log's root"
        return v
    if scanner.chain_error is not None:
        seq, code, message = scanner.chain_error
        v.ok, v.code, v.seq, v.message = False, code, seq, message
        return v
    if scanner.count > covered:
        v.checks.append(
            f"hash chain of lines {covered:,}..{scanner.count - 1:,} (not yet in a checkpoint)"
        )
    if scanner.torn_bytes:
        v.warnings.append(
            f"{scanner.torn_bytes} bytes after the last newline: a write in progress or a torn "
            "tail (the next append moves it aside)"
        )
    v.warnings.append("canonical form not re-checked: 'nightcore audit verify' does everything")
    return v


# -- collect ---------------------------------------------------------------------------------


def _keep_state(ws: Workspace, scanner: AuditScanner) -> None:
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
    ws: Workspace,
    mode: str,
    cp: CheckpointView | None,
    since: Boundary | None = None,
    recent_runs: int = RECENT_RUNS,
) -> AuditScanner:
    quick = mode == "quick"
    start = cp.size if cp is not None and cp.verified else 0
    return AuditScanner(
        ws.state_dir / "audit" / "audit.jsonl",
        chain=quick,
        merkle=quick,
        chain_from=start,
        merkle_sizes=[start] if start else [],
        since=since,
        recent_runs=max(recent_runs, 1),
        snapshot_at=start if start and since is None else None,
    )


def resolve_mode(ws: Workspace, verify: str) -> str:
    if verify not in VERIFY_MODES:
        raise UsageError(f"verify mode must be one of {', '.join(VERIFY_MODES)}")
    if verify != "auto":
        return verify
    try:
        size = (ws.state_dir / "audit" / "audit.jsonl").stat().st_size
    except OSError:
        size = 0
    return "full" if size <= FULL_VERIFY_MAX_BYTES else "quick"


def collect(
    ws: Workspace,
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

    # Verification.
    if verify_view is None:
        if mode == "full":
            verify_view = full_verify(ws)
        elif mode == "quick":
            verify_view = quick_verify(scanner, cp)
        else:
            verify_view = VerifyView(mode="none", ok=None, entries=scanner.count, at=now_ts())
    if cp is not None:
        cp.behind = max(0, scanner.count - cp.size)
    if one_shot and verify_view.ok is not False:
        _keep_state(ws, scanner)

    # Tenants: every package directory with a valid name, and every tenant in the log.
    from nightcore.module.package import discover

    try:
        dirs = discover(ws.modules_dir)
    except OSError as exc:
        dirs = []
        warnings.append(f"modules/ could not be listed: {exc.strerror}")
    modules = {d for d in dirs if TENANT_ID_RE.fullmatch(d)}
    invalid_dirs = [d for d in dirs if d not in modules]
    by_name: dict[str, TenantView] = {}
    cache = scanner.view_cache
    for key, st in scanner.tenants.items():
        name = key.decode("utf-8", "replace")
        hit = cache.get(key)
        if (
            hit is not None
            and hit[0] is st[DECISION]
            and hit[1] is st[OUTCOME]
            and hit[2] == st[RUNS]
        ):
            view = _clone(hit[3])
        else:
            view = _tenant_view(name, st, True)
            cache[key] = (st[DECISION], st[OUTCOME], st[RUNS], _clone(view))
        view.present = name in modules
        by_name[name] = view
    for name in modules:
        if name not in by_name:
            by_name[name] = _tenant_view(name, None, True)
    cordons: list[CordonView] = []
    cordons_error = None
    try:
        from nightcore.runner.cordon import load_cordons

        for tenant, entry in sorted(load_cordons(ws.layout).items()):
            reason = _str(entry.get("reason")) if isinstance(entry, dict) else ""
            cordons.append(CordonView(tenant, reason, _str(entry.get("ts"), 40)))
            t = by_name.get(tenant)
            if t is not None:
                t.cordoned, t.cordon_reason = True, reason
    except NightCoreError as exc:
        cordons_error = _err(exc)
    tenants = sorted(by_name.values(), key=lambda t: t.name)
    ordered = sorted(tenants, key=lambda t: (not t.attention, t.name))
    shown = ordered[: max(0, max_rows)]
    for t in shown:
        if t.present:
            t.description = manifest_description(ws, t.name)
        if t.last_run is not None:
            t.output_preview = output_preview(ws, t.last_run.run_id)
    classes = Counter(code_class(t.verdict) for t in tenants)
    verdict_counts = {
        "total": len(tenants),
        "ok": classes["ok"],
        "denied": classes["bad"],
        "not_verified": classes["muted"],
        "cordoned": sum(1 for t in tenants if t.cordoned),
        "failing": sum(1 for t in tenants if code_class(t.last_code) == "bad"),
        "attention": sum(1 for t in tenants if t.attention),
    }

    # Runs.
    recent = []
    for line in list(scanner.runs)[-recent_runs:]:
        rec = loads(line)
        if rec is not None:
            recent.append(RunView.from_record(rec))
    runs, since_counts = _runs_view(ws, scanner, recent, CHART_TENANTS, CHART_POINTS)

    # Audit.
    events = [e for e in (event_view(x) for x in reversed(scanner.events)) if e]
    cordon_events = [e for e in (event_view(x) for x in reversed(scanner.cordon_events)) if e]
    audit = AuditView(
        entries=scanner.count,
        size_bytes=scanner.size,
        head=scanner.head,
        torn_bytes=scanner.torn_bytes,
        event_counts=sorted(
            ((k.decode("utf-8", "replace"), v) for k, v in scanner.event_counts.items()),
            key=lambda kv: (-kv[1], kv[0]),
        ),
        checkpoint=cp,
        checkpoint_error=cp_error,
        checkpoint_events=scanner.checkpoint_event_count,
        verify=verify_view,
        recent=events,
    )

    invalid: list[InvalidView] = [
        InvalidView(d, "TENANT_NAME_INVALID", "directory under modules/", "", _sha(d))
        for d in invalid_dirs[:LIST_CAP]
    ]
    for line in reversed(scanner.invalid):
        rec = loads(line)
        if rec is None:
            continue
        d = rec["data"]
        invalid.append(
            InvalidView(
                "",
                _str(d.get("code"), 64),
                _str(d.get("reason")),
                _str(rec.get("ts"), 40),
                _str(d.get("dir_name_sha256"), 64),
            )
        )

    diff = None
    if since is not None:
        diff = _diff(scanner, by_name, modules, since.label, since_counts)
        if since.seq is not None and cp is not None and since.seq == cp.size:
            diff.label = f"since signed checkpoint {since.seq:,}"

    return Snapshot(
        generated=now_ts(),
        node=node,
        tenants=tenants,
        shown=shown,
        hidden=len(tenants) - len(shown),
        hidden_attention=sum(1 for t in ordered[len(shown) :] if t.attention),
        verdict_counts=verdict_counts,
        runs=runs,
        audit=audit,
        trust=_trust(ws),
        cordons=cordons,
        cordons_error=cordons_error,
        cordon_events=cordon_events,
        invalid=invalid[: LIST_CAP * 2],
        diff=diff,
        warnings=warnings,
        aufs=aufs_view(ws),
    )


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8", "surrogateescape")).hexdigest()
